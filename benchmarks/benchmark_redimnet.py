#!/usr/bin/env python
"""CPU inference speed of the ReDimNet encoder (front end included).

Prints utterances per second, the real-time factor (wall seconds per second
of audio) and the CPU real-time factor (CPU seconds of all threads per second
of audio; steadier on a busy machine) for each preset, batch size and
utterance duration.  With
``--official_repo PATH`` (your own checkout of https://github.com/IDRnD/ReDimNet)
the official model is built from the same config, loaded with identical
weights, checked to give the same embeddings, and timed side by side. ReDimNet2
presets (``r2-b0`` .. ``r2-b6``) are timed against the official ReDimNet2 code with
``--official_repo2 PATH`` (a folder holding the ``redimnet2`` package of
https://github.com/PalabraAI/redimnet2). ``--flops`` prints the multiply-accumulates of
one 3-s utterance for each variant (``torch.utils.flop_counter``; no timing).

With ``--onnx_dir`` the ONNX Runtime fp32 export and its static int8
quantisation, and OpenVINO on the same file in fp32 and bf16, are timed beside
them (same weights; each through its package wrapper, input checks included).
``--model_folder`` adds a trained model folder (row name ``model``).

Reproducibility: every measurement is ``--rounds`` rounds of interleaved
calls; each path's figure is the median over the rounds of its median call,
and the spread is the range of the per-round medians. ONNX Runtime runs with
``session.intra_op.allow_spinning=0``: its threads otherwise keep spinning
after a call and slow the call that follows (PyTorch, in the rotation),
which once made our b2 batch-1 time read 0.95x the official one where it is
about 0.55x.

Example::

    python benchmarks/benchmark_redimnet.py --variants b0 b2 b6 M --batch_sizes 1 16 \\
        --durations 3 10 --threads 2 --official_repo /path/to/ReDimNet --onnx_dir onnx/ \\
        --output speed.json
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import torch

from speechbrain_mrl.utils.files import write_text_atomic

from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.official import official_state_dict


def random_encoder(variant, seed=0):
    """Encoder of a preset with random but realistic weights (BN statistics too)."""
    torch.manual_seed(seed)
    if variant.startswith("r2-"):
        from speechbrain_mrl.model.official2 import redimnet2_encoder

        enc = redimnet2_encoder(variant)
    else:
        enc = MRLEncoder.from_config(variant)
    with torch.no_grad():
        for mod in enc.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.9, 1.1)
                mod.bias.uniform_(-0.1, 0.1)
        for name, p in enc.named_parameters():
            if name.endswith(".w"):
                p.normal_(0, 0.5)
    return enc.eval()


def official_model(repo, encoder):
    """The official ``ReDimNetWrap`` (or ``ReDimNet2Wrap``) with ``encoder``'s config and weights."""
    if repo not in sys.path:
        sys.path.insert(0, repo)
    if type(encoder.embedding_model).__name__ == "ReDimNet2":
        import contextlib
        import io

        from redimnet2.redimnet2 import ReDimNet2Wrap  # noqa: E402  (user's checkout)

        from speechbrain_mrl.model.official2 import official2_state_dict

        with contextlib.redirect_stdout(io.StringIO()):  # the official code prints its layout
            model = ReDimNet2Wrap(**encoder.model_config)
        model.load_state_dict(official2_state_dict(encoder))
        return model.eval()
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from redimnet.model import ReDimNetWrap  # noqa: E402  (user's checkout)

    model = ReDimNetWrap(**encoder.model_config)
    model.load_state_dict(official_state_dict(encoder))
    return model.eval()


def time_rounds(fns, wav, rounds, min_time, min_reps, max_time=60.0):
    """:func:`time_calls` ``rounds`` times: per function ``(wall, cpu, wall_low, wall_high)``,
    the medians over the rounds and the range of the rounds' wall medians."""
    runs = [time_calls(fns, wav, min_time, min_reps, max_time) for _ in range(rounds)]
    out = []
    for i in range(len(fns)):
        walls = [r[i][0] for r in runs]
        out.append((statistics.median(walls), statistics.median(r[i][1] for r in runs),
                    min(walls), max(walls)))
    return out


def time_calls(fns, wav, min_time, min_reps, max_time=60.0, max_warmup_samples=16000 * 60):
    """Median wall and CPU seconds per call of each function, calls interleaved.

    Each function is first warmed up once (on the input itself when it holds
    at most ``max_warmup_samples`` samples, else on a 1 s slice); then the
    functions are called in turn (so slow drifts of a shared machine hit them
    alike) until ``min_time`` seconds have passed and every one ran
    ``min_reps`` times (or at least once after ``max_time`` seconds).
    CPU time (all threads of this process) is less sensitive than wall time to
    other processes competing for the cores.

    Returns
    -------
    list of (wall_seconds, cpu_seconds), one per function.
    """
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    warm = wav if wav.numel() <= max_warmup_samples else wav[:, :16000]
    with torch.inference_mode():
        for fn in fns:
            fn(warm)
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            reps = min(len(t) for t in walls)
            if reps >= 1 and elapsed >= min_time and (reps >= min_reps or elapsed >= max_time):
                break
            for fn, wall, cpu in zip(fns, walls, cpus):
                c0, t0 = time.process_time(), time.perf_counter()
                fn(wav)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


def onnx_paths(encoder, variant, folder, calibration, threads, openvino=True):
    """``{name: fn(wav)}``: ONNX Runtime fp32 and static int8, OpenVINO fp32 and bf16."""
    from speechbrain_mrl.export import onnx as ex

    folder = pathlib.Path(folder)
    fp32 = folder / f"{variant}.fp32.onnx"
    int8 = folder / f"{variant}.int8_static.onnx"
    if not fp32.is_file():
        ex.export_onnx(encoder, fp32)
    if not int8.is_file():
        ex.quantize_onnx(fp32, int8, calibration)
    paths = {}
    for name, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        paths[name] = ex.OnnxEncoder(path, threads=threads)
    if openvino:
        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        for precision in ("fp32", "bf16"):
            paths[f"openvino_{precision}"] = OpenVinoEncoder(fp32, precision, threads=threads)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["b0", "b2", "b6"],
                        help="ReDimNet presets to time (random weights), e.g. b0 b2 M, or r2-b0 .. "
                             "r2-b6 for ReDimNet2")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 16],
                        help="utterances per call")
    parser.add_argument("--durations", nargs="+", type=float, default=[3.0, 10.0],
                        help="seconds of audio per utterance")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch (and ONNX Runtime / OpenVINO) threads")
    parser.add_argument("--min_time", type=float, default=2.0,
                        help="minimum seconds of timed calls per measurement")
    parser.add_argument("--min_reps", type=int, default=3,
                        help="minimum number of timed calls per measurement")
    parser.add_argument("--max_time", type=float, default=60.0,
                        help="stop repeating after this many seconds (at least one call)")
    parser.add_argument("--official_repo2", default=None,
                        help="folder holding the official redimnet2 package (for r2-* variants)")
    parser.add_argument("--flops", action="store_true",
                        help="only count the multiply-accumulates of a 3-s utterance per variant")
    parser.add_argument("--official_repo", default=None,
                        help="path of a checkout of IDRnD/ReDimNet to compare with")
    parser.add_argument("--onnx_dir", default=None,
                        help="also time ONNX Runtime fp32 and static int8 exports (written here) "
                             "and OpenVINO fp32/bf16 on the fp32 export")
    parser.add_argument("--no_openvino", action="store_true",
                        help="with --onnx_dir, leave OpenVINO out")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of interleaved calls per measurement (spread reported)")
    parser.add_argument("--model_folder", default=None,
                        help="also time this trained model folder (row name 'model'; no "
                             "official counterpart)")
    parser.add_argument("--calibration_csv", default=None,
                        help="manifest of real speech for the static int8 scales (unset: random "
                             "noise)")
    parser.add_argument("--output", default=None,
                        help="JSON report, rewritten after each row (unset: print only)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu only, fp32, eval, inference_mode")
    calibration = None
    if args.onnx_dir:
        from speechbrain_mrl.export.onnx import calibration_waveforms

        calibration = (calibration_waveforms(args.calibration_csv) if args.calibration_csv else
                       [0.1 * torch.randn(48000, generator=torch.Generator().manual_seed(i))
                        for i in range(16)])
    report = {"torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "rows": []}
    variants = list(args.variants) + (["model"] if args.model_folder else [])
    if args.flops:
        return count_macs(variants, args.output)
    for variant in variants:
        if variant == "model":
            from speechbrain_mrl.export.onnx import load_encoder

            ours = load_encoder(args.model_folder)
        else:
            ours = random_encoder(variant)
        paths = {"pytorch": ours}
        repo = args.official_repo2 if variant.startswith("r2-") else args.official_repo
        if repo and variant != "model":
            paths["official"] = official_model(repo, ours)
        if args.onnx_dir:
            paths.update(onnx_paths(ours, variant, args.onnx_dir, calibration, args.threads,
                                    not args.no_openvino))
        for batch in args.batch_sizes:
            for dur in args.durations:
                gen = torch.Generator().manual_seed(1)
                wav = torch.randn(batch, int(round(dur * 16000)), generator=gen) * 0.1
                timings = time_rounds(list(paths.values()), wav, args.rounds, args.min_time,
                                      args.min_reps, args.max_time)
                row = {"variant": variant, "batch": batch, "seconds": dur, "rounds": args.rounds}
                for name, (wall, cpu, low, high) in zip(paths, timings):
                    row[name] = {"utt_per_s": batch / wall, "rtf": wall / (batch * dur),
                                 "cpu_rtf": cpu / (batch * dur),
                                 "spread": [batch / high, batch / low]}
                if "official" in paths:
                    with torch.inference_mode():
                        row["max_abs_diff"] = float((ours(wav[:2]) - paths["official"](wav[:2]))
                                                    .abs().max())
                    for name in paths:
                        row[name]["time_vs_official"] = (row["official"]["utt_per_s"]
                                                         / row[name]["utt_per_s"])
                if "onnx_fp32" in paths:
                    for name in paths:
                        row[name]["speed_vs_onnx_fp32"] = (row[name]["utt_per_s"]
                                                           / row["onnx_fp32"]["utt_per_s"])
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                if args.output:
                    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print_table(report)
    return report


def count_macs(variants, output=None):
    """Multiply-accumulates (GMACs) and parameters of each variant on one 3-s utterance."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for variant in variants:
        encoder = random_encoder(variant)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            encoder(torch.randn(1, 48000) * 0.1)
        rows.append({"variant": variant, "gmacs_3s": counter.get_total_flops() / 2e9,
                     "params_m": sum(p.numel() for p in encoder.parameters()) / 1e6})
        print(f"| {variant} | {rows[-1]['params_m']:.2f} M | {rows[-1]['gmacs_3s']:.3f} GMACs |",
              flush=True)
    if output:
        write_text_atomic(output, json.dumps({"macs_per_3s_utterance": rows}, indent=1) + "\n")
    return rows


def print_table(report):
    """The report as a markdown table: utterances/s, and time relative to the official code."""
    names = [n for n in ("official", "pytorch", "onnx_fp32", "onnx_int8", "openvino_fp32",
                         "openvino_bf16") if any(n in r for r in report["rows"])]
    print("| variant | batch | audio (s) | " + " | ".join(f"{n} utt/s" for n in names) + " |")
    print("|---|---:|---:|" + "---:|" * len(names))
    for r in report["rows"]:
        cells = []
        for n in names:
            if n not in r:
                cells.append("")
                continue
            low, high = r[n]["spread"]
            cell = f"{r[n]['utt_per_s']:.2f} ({low:.3g}-{high:.3g})"
            if "time_vs_official" in r[n] and n != "official":
                cell += f", {r[n]['time_vs_official']:.2f}x official time"
            if "speed_vs_onnx_fp32" in r[n] and n.startswith("openvino"):
                cell += f", {r[n]['speed_vs_onnx_fp32']:.2f}x ORT fp32 speed"
            cells.append(cell)
        print(f"| {r['variant']} | {r['batch']} | {r['seconds']:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
