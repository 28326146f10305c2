#!/usr/bin/env python3
"""PyTorch vs ONNX Runtime fp32/int8 vs OpenVINO fp32/bf16: EER per size and throughput, side by side.

Exports the model folder to ONNX (fp32; int8 dynamic, and int8 static with
scales calibrated on ``--calibration_csv``, e.g. the training list),
scores a trial list at every size through the three paths (utterances
batched with their lengths), and times batches of ``--seconds`` of audio
(batch 1 and ``--batch``), alternating the paths so that they share the
machine's state. ONNX Runtime and OpenVINO run through the package's wrappers
(:class:`~speechbrain_mrl.export.onnx.OnnxEncoder`,
:class:`~speechbrain_mrl.export.openvino.OpenVinoEncoder`; OpenVINO on the
fp32 ONNX file, ``--no_openvino`` leaves it out). Writes a JSON report.

    python benchmarks/onnx_int8.py --model_folder results/demo/mrl/model \\
        --manifests results/demo/data/enrol.csv results/demo/data/test.csv \\
        --trials results/demo/data/trials_test.txt --calibration_csv results/demo/data/train.csv \\
        --output results/demo/onnx_int8.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np
import torch

from speechbrain_mrl.export import onnx as ex
from speechbrain.utils.data_utils import batch_pad_right

from speechbrain_mrl.data.audio import read_row_audio
from speechbrain_mrl.utils.files import write_text_atomic
from trial_options import add_trial_list_options
from speechbrain_mrl.data.manifests import read_trial_list
from speechbrain_mrl.utils.metrics import id_metrics


def batches(rows, batch_size, sample_rate):
    """``(ids, wavs [B, T], wav_lens [B])`` over the rows, sorted by duration."""
    ids = sorted(rows, key=lambda u: float(rows[u]["duration"]))
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        clips = [read_row_audio(rows[u], sample_rate) for u in chunk]
        yield (chunk, *batch_pad_right(clips))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_trial_list_options(p, model_help="trained model folder to export")
    p.add_argument("--calibration_csv", required=True,
                   help="real speech for the static int8 scales (not the trial list's)")
    p.add_argument("--output", required=True,
                   help="JSON report (the ONNX files are written beside it)")
    p.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads")
    p.add_argument("--seconds", type=float, default=3.0, help="utterance length of the timed batches")
    p.add_argument("--batch", type=int, default=16, help="the larger timed batch (batch 1 is timed too)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per path and batch (median kept)")
    p.add_argument("--no_openvino", action="store_true", help="leave the OpenVINO paths out")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    out = pathlib.Path(a.output)
    encoder = ex.load_encoder(a.model_folder)
    fp32 = ex.export_onnx(encoder, out.with_suffix(".fp32.onnx"))
    int8 = {"onnx_int8_dynamic": ex.quantize_onnx(fp32, out.with_suffix(".int8_dynamic.onnx")),
            "onnx_int8_static": ex.quantize_onnx(fp32, out.with_suffix(".int8_static.onnx"),
                                                 ex.calibration_waveforms(a.calibration_csv))}
    runtimes = {name: ex.OnnxEncoder(path, threads=a.threads)
                for name, path in (("onnx_fp32", fp32), *int8.items())}
    if not a.no_openvino:
        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        for precision in ("fp32", "bf16"):
            runtimes[f"openvino_{precision}"] = OpenVinoEncoder(fp32, precision, threads=a.threads)
    full = f"embedding_{encoder.mrl_dims[-1]}"

    def run(name, wavs, lens):
        if name == "pytorch_fp32":
            with torch.no_grad():
                return encoder(wavs, lens).numpy()
        return runtimes[name](wavs, lens)[full]

    names = ["pytorch_fp32", *runtimes]
    rows, (labels, enrol, test), _ = read_trial_list(a.manifests, a.trials)
    emb = {n: {} for n in names}
    for ids, wavs, lens in batches(rows, 32, 16000):
        for n in names:
            emb[n].update(zip(ids, torch.from_numpy(np.asarray(run(n, wavs, lens)))))
    dims = encoder.mrl_dims
    eer = {n: {str(d): round(m["EER"], 3) for d, m in
               id_metrics(emb[n], (labels, enrol, test), dims).items()} for n in names}
    speed = {}
    g = torch.Generator().manual_seed(0)
    for batch in (1, a.batch):
        wavs = 0.1 * torch.randn(batch, int(a.seconds * 16000), generator=g)
        lens = torch.ones(batch)
        times = {n: [] for n in names}
        for n in names:
            run(n, wavs, lens)  # warm-up
        for _ in range(a.repeats):
            for n in names:
                t = time.perf_counter()
                run(n, wavs, lens)
                times[n].append(time.perf_counter() - t)
        speed[f"batch{batch}"] = {n: round(batch / float(np.median(t)), 2)
                                  for n, t in times.items()}
    report = {"EER": eer, "utterances_per_s": speed, "seconds": a.seconds, "threads": a.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "trials": a.trials, "onnx_bytes": {"fp32": fp32.stat().st_size,
                                                 **{n: f.stat().st_size for n, f in int8.items()}}}
    print(json.dumps(report, indent=1))
    write_text_atomic(out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
