#!/usr/bin/env python
"""CPU inference speed of the ReDimNet encoder (front end included).

Prints utterances per second, the real-time factor (wall seconds per second
of audio) and the CPU real-time factor (CPU seconds of all threads per second
of audio; steadier on a busy machine) for each preset, batch size and
utterance duration.  With
``--official-repo PATH`` (your own checkout of https://github.com/IDRnD/ReDimNet)
the official model is built from the same config, loaded with identical
weights, checked to give the same embeddings, and timed side by side.

Example::

    python benchmarks/benchmark_redimnet.py --variants b0 b2 b6 --batch-sizes 1 16 \\
        --durations 3 10 --threads 2 --official-repo /path/to/ReDimNet
"""
import argparse
import statistics
import sys
import time
import warnings

import torch

from speechbrain_mrl.encoder import MRLEncoder
from speechbrain_mrl.official import official_state_dict


def random_encoder(variant, seed=0):
    """Encoder of a preset with random but realistic weights (BN statistics too)."""
    torch.manual_seed(seed)
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
    """The official ``ReDimNetWrap`` with ``encoder``'s config and weights."""
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from redimnet.model import ReDimNetWrap  # noqa: E402  (user's checkout)

    model = ReDimNetWrap(**encoder.model_config)
    model.load_state_dict(official_state_dict(encoder))
    return model.eval()


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2", "b6"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--durations", nargs="+", type=float, default=[3.0, 10.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="minimum seconds of timed calls per measurement")
    parser.add_argument("--min-reps", type=int, default=3,
                        help="minimum number of timed calls per measurement")
    parser.add_argument("--max-time", type=float, default=60.0,
                        help="stop repeating after this many seconds (at least one call)")
    parser.add_argument("--official-repo", default=None,
                        help="path of a checkout of IDRnD/ReDimNet to compare with")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu only, fp32, eval, inference_mode")

    header = f"{'variant':8} {'batch':>5} {'dur_s':>6} {'utt/s':>8} {'RTF':>7} {'cpuRTF':>7}"
    if args.official_repo:
        header += (f" | {'off utt/s':>9} {'off RTF':>8} {'off cpuRTF':>10}"
                   f" | {'speedup':>7} {'cpu speedup':>11} {'max|diff|':>9}")
    print(header)
    for variant in args.variants:
        ours = random_encoder(variant)
        official = official_model(args.official_repo, ours) if args.official_repo else None
        for batch in args.batch_sizes:
            for dur in args.durations:
                gen = torch.Generator().manual_seed(1)
                wav = torch.randn(batch, int(round(dur * 16000)), generator=gen) * 0.1
                fns = [ours] if official is None else [ours, official]
                timings = time_calls(fns, wav, args.min_time, args.min_reps, args.max_time)
                audio = batch * dur
                (wall, cpu) = timings[0]
                line = (f"{variant:8} {batch:5d} {dur:6.1f} {batch / wall:8.2f} "
                        f"{wall / audio:7.4f} {cpu / audio:7.4f}")
                if official is not None:
                    (o_wall, o_cpu) = timings[1]
                    with torch.inference_mode():
                        diff = (ours(wav[:2]) - official(wav[:2])).abs().max().item()
                    line += (f" | {batch / o_wall:9.2f} {o_wall / audio:8.4f} {o_cpu / audio:10.4f}"
                             f" | {o_wall / wall:6.2f}x {o_cpu / cpu:10.2f}x {diff:9.1e}")
                print(line, flush=True)


if __name__ == "__main__":
    main()
