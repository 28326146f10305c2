#!/usr/bin/env python3
"""EER of every Matryoshka size as a function of the audio duration.

Each utterance of a trial list is cut to its central ``D`` seconds (shorter
ones are kept whole) for each ``D`` of ``--durations``, embedded, and the
trial list scored at every size; the table goes to stdout and a JSON file.

    python benchmarks/duration_accuracy.py --model_folder results/demo/mrl/model \\
        --manifests results/demo/data/enrol.csv results/demo/data/test.csv \\
        --trials results/demo/data/trials_test.txt --durations 0.1 0.2 0.3 0.5 0.75 1.0 \\
        --output results/demo/duration_accuracy.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json

import torch

from speechbrain_mrl.utils.files import write_text_atomic
from trial_options import add_trial_list_options
from speechbrain_mrl.data.manifests import read_trial_list
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.utils.metrics import id_metrics


def central(rows, seconds, sample_rate):
    """The rows cut to their central ``seconds`` (shorter rows unchanged)."""
    n = int(round(seconds * sample_rate))
    out = {}
    for uid, r in rows.items():
        start, stop = int(r["start"]), int(r["stop"])
        if stop - start > n:
            start += (stop - start - n) // 2
            stop = start + n
        out[uid] = dict(r, start=start, stop=stop, duration=(stop - start) / sample_rate)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_trial_list_options(p)
    p.add_argument("--durations", type=float, nargs="+", required=True,
                   help="seconds each utterance is cut to (its centre; shorter ones kept whole)")
    p.add_argument("--output", required=True, help="JSON file to write")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    model = MRLEncoderClassifier.from_hparams(source=a.model_folder, run_opts={"device": "cpu"})
    rows, (labels, enrol, test), _ = read_trial_list(a.manifests, a.trials)
    results = {}
    for seconds in a.durations:
        ids, emb = embed_manifest(model.encoder, central(rows, seconds, model.sample_rate),
                                  batch_size=32, sample_rate=model.sample_rate,
                                  desc=f"{seconds:g} s")
        metrics = id_metrics(dict(zip(ids, emb)), (labels, enrol, test), model.mrl_dims)
        results[f"{seconds:g}"] = {str(d): round(m["EER"], 3) for d, m in metrics.items()}
    print("duration (s) | " + " | ".join(str(d) for d in model.mrl_dims))
    for seconds, eers in results.items():
        print(f"{seconds} | " + " | ".join(f"{v:.2f}" for v in eers.values()))
    write_text_atomic(a.output, json.dumps({"trials": a.trials, "EER": results}, indent=1))


if __name__ == "__main__":
    main()
