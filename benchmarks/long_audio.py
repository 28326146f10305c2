#!/usr/bin/env python3
"""Long recordings: windowed against one-pass embedding (time, peak memory, cosine, EER).

1. Time and peak memory against duration: real read speech (LibriSpeech
   utterances joined end to end) of ``--durations`` seconds, embedded in one
   pass and in ``--window`` s windows (:meth:`MRLEncoder.pool_windows`), each
   measurement in a fresh process (its peak resident memory, ``ru_maxrss``).
   One-pass runs stop at ``--max_one_pass`` seconds. ``--preset b2`` times a
   full-size ReDimNet (random weights) instead of the model folder.
   ``--openvino_model`` measures that export (ONNX or IR) run by
   :class:`~speechbrain_mrl.export.openvino.OpenVinoEncoder` (bf16 where the
   CPU has it) instead: one pass, or ``--window`` s windows merged as the
   PyTorch model merges them.
2. Cosine between the windowed and the one-pass full-size embedding: of the
   LibriSpeech utterances (1.6-17 s) with short windows, and of the joined
   recordings with the default window.
3. EER of a trial list (e.g. the demo's long validation list) embedded in one
   pass and with short windows.

    python benchmarks/long_audio.py --model_folder results/demo/mrl/model \\
        --librispeech /path/to/shared/data/librispeech_train_clean_100 \\
        --manifests results/demo/data/dev_long.csv --trials results/demo/data/val_long_trials.txt \\
        --output results/long_audio.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from speechbrain_mrl.data.audio import read_audio, read_row_audio
from speechbrain_mrl.utils.files import write_text_atomic
from speechbrain_mrl.data.manifests import read_trial_list
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.export.onnx import load_encoder
from speechbrain_mrl.utils.metrics import error_rates


def reading(folder, seconds, sample_rate=16000):
    """``seconds`` of real speech: the folder's utterances joined, repeated as needed."""
    files = sorted(pathlib.Path(folder).rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no .flac files under {folder}")
    need, pieces, total, i = int(seconds * sample_rate), [], 0, 0
    while total < need:
        piece = read_audio(files[i % len(files)], sample_rate=sample_rate)
        pieces.append(piece)
        total += len(piece)
        i += 1
    return torch.cat(pieces)[:need]


def measure(model_folder, librispeech, seconds, window, threads, preset=None, openvino=None):
    """In this process: time and peak memory of one embedding (window None: one pass)."""
    torch.set_num_threads(threads)
    if openvino:
        import openvino as ov

        from speechbrain_mrl.export.openvino import OpenVinoEncoder, cpu_has_bf16

        precision = "bf16" if cpu_has_bf16(ov.Core()) else "fp32"
        span = 1e6 if window is None else window  # one pass: never windowed
        encoder = OpenVinoEncoder(openvino, precision, threads=threads, long_seconds=span,
                                  window_seconds=span)
    else:
        encoder = MRLEncoder.from_config(preset).eval() if preset else load_encoder(model_folder)
    wav = reading(librispeech, seconds)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if openvino:
        encoder(wav[None])
    else:
        embed(encoder, wav, window)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "window_s": window, "wall_s": wall,
            "peak_rss_MB": peak / 1024, "rss_before_MB": base / 1024}


def embed(encoder, wav, window):
    with torch.inference_mode():
        if window is None:
            return encoder(wav[None])[0]
        return encoder.embed_pooled(encoder.pool_windows(wav, int(window * 16000)))[0]


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_folder", required=True, help="trained model folder")
    p.add_argument("--librispeech", required=True, help="folder of LibriSpeech .flac files")
    p.add_argument("--manifests", nargs="*", default=[],
                   help="manifests holding the --trials list's utterances")
    p.add_argument("--trials", help="trial list scored in one pass and with --short_windows "
                                    "(unset: no EER)")
    p.add_argument("--output", required=True, help="JSON report, rewritten as rows come")
    p.add_argument("--durations", type=float, nargs="+", default=[60, 300, 600, 3600],
                   help="recording lengths (s) timed")
    p.add_argument("--max_one_pass", type=float, default=600,
                   help="longest recording (s) also embedded in one pass")
    p.add_argument("--window", type=float, default=30.0, help="window (s) of the long recordings")
    p.add_argument("--short_windows", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                   help="windows (s) compared with one pass on the utterances and the trial list")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--preset", help="time and memory only, of this ReDimNet preset (random "
                                    "weights, e.g. b2) instead of the model folder")
    p.add_argument("--openvino_model", help="time and memory only, of this export run by "
                                            "OpenVINO (ONNX or IR)")
    p.add_argument("--measure", nargs=2, metavar=("SECONDS", "WINDOW"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure:  # child process of part 1
        window = None if a.measure[1] == "none" else float(a.measure[1])
        print(json.dumps(measure(a.model_folder, a.librispeech, float(a.measure[0]), window,
                                 a.threads, a.preset, a.openvino_model)))
        return None
    torch.set_num_threads(a.threads)
    out = pathlib.Path(a.output)
    report = {"model_folder": a.model_folder, "threads": a.threads, "window_s": a.window,
              "time_memory": [], "cosine": {}, "eer": {}}

    def save():
        write_text_atomic(out, json.dumps(report, indent=1) + "\n")

    for seconds in a.durations:
        for window in ([None] if seconds <= a.max_one_pass else []) + [a.window]:
            cmd = [sys.executable, __file__, "--model_folder", a.model_folder, "--librispeech",
                   a.librispeech, "--output", str(out), "--threads", str(a.threads),
                   *(["--preset", a.preset] if a.preset else []),
                   *(["--openvino_model", a.openvino_model] if a.openvino_model else []),
                   "--measure",
                   str(seconds), "none" if window is None else str(window)]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            report["time_memory"].append(row)
            print(json.dumps(row), flush=True)
            save()
    if a.preset or a.openvino_model:
        return report

    encoder = load_encoder(a.model_folder)
    files = sorted(pathlib.Path(a.librispeech).rglob("*.flac"))
    utterances = [read_audio(f) for f in files]
    for window in a.short_windows:
        values = [cosine(embed(encoder, w, None), embed(encoder, w, window))
                  for w in utterances if len(w) > window * 16000]
        report["cosine"][f"librispeech utterances, {window:g} s windows"] = {
            "n": len(values), "mean": float(np.mean(values)), "min": float(np.min(values))}
    for seconds in [s for s in a.durations if s <= a.max_one_pass]:
        wav = reading(a.librispeech, seconds)
        report["cosine"][f"{seconds:g} s recording, {a.window:g} s windows"] = {
            "n": 1, "mean": cosine(embed(encoder, wav, None), embed(encoder, wav, a.window))}
    print(json.dumps(report["cosine"], indent=1), flush=True)
    save()

    if a.trials:
        rows, (labels, enrol, test), _ = read_trial_list(a.manifests, a.trials)
        labels = torch.as_tensor(labels, dtype=torch.bool)
        for window in [None] + a.short_windows:
            emb = {u: embed(encoder, read_row_audio(r), window) for u, r in rows.items()}
            e = torch.stack([emb[u] for u in enrol])
            t = torch.stack([emb[u] for u in test])
            scores = {}
            for d in encoder.mrl_dims:
                s = torch.nn.functional.cosine_similarity(e[:, :d], t[:, :d])
                scores[d] = 100 * error_rates(s[labels], s[~labels])["EER"]
            name = "one pass" if window is None else f"{window:g} s windows"
            report["eer"][name] = scores
            print(name, " / ".join(f"{v:.2f}" for v in scores.values()), flush=True)
            save()
    return report


if __name__ == "__main__":
    main()
