#!/usr/bin/env python3
"""Peak memory and real-time factor of diarizing long recordings (10, 30, 60 minutes).

A recording of ``--minutes`` minutes is built on disk: simulated conversations
(:func:`speechbrain_mrl.data.conversations.simulate_conversation`, 2-6 held-out
LibriSpeech readers, ``--conversation_seconds`` each, seeds 0, 1, ...) written
one after the other into one 16-bit wav and cut at the length (the shorter
recordings are the start of the longer ones). Each recording is diarized by
:class:`~speechbrain_mrl.inference.diarization.Diarizer` (the shipped model, or
``--random_preset``'s randomly initialised ReDimNet: speed and memory only) with
each ``--methods`` clustering, each in a fresh process, which reports its peak
resident memory (``ru_maxrss``) after loading the model and diarizing a 30-s
warm-up clip, and after diarizing the recording: the growth is what the
recording's length costs. Beside it: the size of the window embeddings
(``windows x embed_dim`` float32) and of one ``windows x windows`` float64
matrix (the cosine affinities of spectral clustering; agglomerative clustering
keeps the condensed half), the seconds of VAD, embedding and clustering and the
real-time factor. ``--tracemalloc`` adds a second run per recording and
method under :mod:`tracemalloc` (the peak of what Python and NumPy allocated;
its times are not reported, tracing slows the run).

    flock /work/runs/heavy.lock python benchmarks/diarization_memory.py --data_folder /path/to/shared/data \\
        --minutes 10 30 60 --output results/diarization_memory.json

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
import tempfile
import time

import soundfile as sf
import torch

from speechbrain_mrl.data.conversations import simulate_conversation
from speechbrain_mrl.inference.diarization import Diarizer
from speechbrain_mrl.inference.interface import load_model
from speechbrain_mrl.utils.files import write_text_atomic

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from diarization import SPEED_ONLY, held_out_speakers, random_weights_model  # noqa: E402

RATE = 16000
WARM_UP_SECONDS = 30.0


def conversations_for(data_folder, seconds, conversation_seconds, work):
    """Wav files of simulated conversations (seeds 0, 1, ...) lasting at least ``seconds`` together."""
    speakers = held_out_speakers(data_folder, "librispeech")
    files, total, seed = [], 0.0, 0
    while total < seconds:
        conv = simulate_conversation(speakers, work / f"part{seed}.wav", seed=seed, num_speakers=(2, 6),
                                     duration=conversation_seconds, overlap_prob=0.1)
        files.append(conv.wav)
        total += conv.duration
        seed += 1
    return files


def write_recording(path, parts, seconds, block=RATE * 60):
    """The first ``seconds`` of the ``parts`` played one after the other, as a 16-bit wav, block by block."""
    left = int(round(seconds * RATE))
    with sf.SoundFile(str(path), "w", RATE, 1, subtype="PCM_16", format="WAV") as out:
        for part in parts:
            with sf.SoundFile(part) as f:
                if f.samplerate != RATE:
                    raise ValueError(f"{part}: {f.samplerate} Hz, not {RATE}")
                while left > 0:
                    data = f.read(min(block, left), dtype="float32")
                    if not len(data):
                        break
                    out.write(data)
                    left -= len(data)
            if left <= 0:
                break
    return path


def peak_rss_mb():
    """The process's peak resident memory so far (MiB; ``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args):
    """In this process: diarize ``args.measure``'s recording with its method; a JSON-ready dict."""
    wav, method, warm = args.measure
    torch.set_num_threads(args.threads)
    model = load_model(args.model_folder)
    if args.random_preset:
        model = random_weights_model(args.random_preset, model, pathlib.Path(wav).parent)
    diarizer = Diarizer(model, coarse_dim=args.coarse_dim, method=method)
    diarizer.diarize(warm)  # imports, first calls and buffers out of the growth
    before = peak_rss_mb()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    t = time.perf_counter()
    result = diarizer.diarize(wav)
    wall = time.perf_counter() - t
    row = {"minutes": round(result.duration / 60, 2), "method": method, "coarse_dim": args.coarse_dim,
           "windows": result.windows, "speakers_found": result.num_speakers,
           "embeddings_MB": round(result.windows * int(model.embed_dim) * 4 / 2 ** 20, 2),
           "windows_squared_float64_MB": round(result.windows ** 2 * 8 / 2 ** 20, 1)}
    if args.tracemalloc:
        row["tracemalloc_peak_MB"] = round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1)
        return row
    row.update({"rss_before_MB": round(before, 1), "peak_rss_MB": round(peak_rss_mb(), 1),
                "growth_MB": round(peak_rss_mb() - before, 1), "wall_s": round(wall, 2),
                "timings": {k: round(v, 2) for k, v in result.timings.items()},
                "real_time_factor": round(result.timings["total"] / result.duration, 5)})
    return row


def run_child(args, wav, method, warm, tracing=False):
    """One measurement in a fresh process (its own peak memory)."""
    cmd = [sys.executable, __file__, "--data_folder", args.data_folder, "--model_folder", args.model_folder,
           "--output", args.output, "--threads", str(args.threads), "--coarse_dim", str(args.coarse_dim),
           *(["--random_preset", args.random_preset] if args.random_preset else []),
           *(["--tracemalloc"] if tracing else []), "--measure", str(wav), method, str(warm)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measurement of {wav} ({method}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_folder", required=True, help="folder with librispeech_train_clean_100/")
    p.add_argument("--model_folder", default="speechbrain-mrl/demo-sc", help="model folder or shipped name")
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60], help="recording lengths")
    p.add_argument("--conversation_seconds", type=float, default=300.0, help="length of each conversation joined")
    p.add_argument("--methods", nargs="+", default=["spectral", "ahc"], choices=["spectral", "ahc"],
                   help="clusterings to run, each in its own process per recording")
    p.add_argument("--coarse_dim", type=int, default=32, help="prefix clustered first (0: full size)")
    p.add_argument("--random_preset", help="a randomly initialised ReDimNet of this preset (e.g. b2) instead "
                                           "of the model: speed and memory only")
    p.add_argument("--tracemalloc", action="store_true", help="also measure each under tracemalloc")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--work_folder", default=None, help="where the recordings go (unset: a temporary one)")
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--measure", nargs=3, metavar=("WAV", "METHOD", "WARM_UP"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.measure:  # a child process
        print(json.dumps(measure(args)))
        return None
    report = {"command": "python benchmarks/diarization_memory.py " + " ".join(argv or sys.argv[1:]),
              "model": f"{args.random_preset} ({SPEED_ONLY})" if args.random_preset else args.model_folder,
              "threads": args.threads, "settings": {k: v for k, v in vars(args).items() if k != "measure"},
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.work_folder or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        parts = conversations_for(args.data_folder, 60 * max(args.minutes), args.conversation_seconds, work)
        warm = write_recording(work / "warm_up.wav", parts, WARM_UP_SECONDS)
        print(f"{len(parts)} conversations simulated in {time.perf_counter() - t:.0f} s", flush=True)
        for minutes in sorted(args.minutes):
            wav = write_recording(work / f"recording_{minutes:g}min.wav", parts, 60 * minutes)
            for method in args.methods:
                row = run_child(args, wav, method, warm)
                if args.tracemalloc:
                    row["tracemalloc_peak_MB"] = run_child(args, wav, method, warm, True)["tracemalloc_peak_MB"]
                report["runs"].append(row)
                print(f"  {minutes:g} min, {method}: {row['windows']} windows, peak RSS {row['peak_rss_MB']:.0f} MB "
                      f"(+{row['growth_MB']:.0f} over {row['rss_before_MB']:.0f} after warm-up; embeddings "
                      f"{row['embeddings_MB']:.1f} MB, windows^2 float64 {row['windows_squared_float64_MB']:.0f} MB"
                      + (f", tracemalloc peak {row['tracemalloc_peak_MB']:.0f} MB" if args.tracemalloc else "")
                      + f"); VAD {row['timings']['vad']:.1f} s, embedding {row['timings']['embedding']:.1f} s, "
                      f"clustering {row['timings']['clustering']:.1f} s; RTF {row['real_time_factor']:.4f}",
                      flush=True)
                write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(f"written {args.output}")
    return report


if __name__ == "__main__":
    main()
