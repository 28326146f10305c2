#!/usr/bin/env python3
"""Long recordings through every command: time, peak memory and the embedding each gives.

A recording of each ``--durations`` seconds (real read speech: LibriSpeech
utterances joined end to end) is embedded by ``encode_file`` and by the
``speechbrain-mrl`` commands ``extract``, ``enrol``, ``identify`` and
``verify``, each in a fresh process whose wall time and peak resident memory
(``wait4``'s ``ru_maxrss``) are recorded (``--repeats``: the median time). The embeddings of ``encode_file``,
``extract`` and ``enrol`` (the enrolled vector, L2-normalised) are compared.

    python benchmarks/long_audio_commands.py --model_folder results/demo/mrl/model \\
        --librispeech /path/to/shared/data/librispeech_train_clean_100 \\
        --durations 600 3600 --output results/long_audio_commands.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

from speechbrain_mrl.utils.files import write_text_atomic

ENCODE_FILE = """
import sys, numpy as np
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
model = MRLEncoderClassifier.from_hparams(source=sys.argv[1], run_opts={"device": "cpu"})
np.save(sys.argv[3], model.encode_file(sys.argv[2])[0, 0].numpy())
"""


def timed(cmd, env):
    """``(wall seconds, peak RSS in GB)`` of a command run in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024 ** 2


def joined_speech(librispeech, seconds, path, sample_rate=16000):
    """Writes ``seconds`` of LibriSpeech utterances joined end to end to ``path``."""
    files = sorted(pathlib.Path(librispeech).rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no .flac files under {librispeech}")
    need, pieces, total, i = int(seconds * sample_rate), [], 0, 0
    while total < need:
        data, rate = sf.read(files[i % len(files)], dtype="float32")
        if rate != sample_rate:
            raise ValueError(f"{files[i % len(files)]} is not {sample_rate} Hz")
        pieces.append(data)
        total += len(data)
        i += 1
    sf.write(path, np.concatenate(pieces)[:need], sample_rate, subtype="PCM_16")


def measure(model_folder, librispeech, seconds, work, env, repeats=1):
    """Every command on one recording of ``seconds``; returns the row of the report."""
    from speechbrain_mrl.inference.extract import load_embeddings
    from speechbrain_mrl.search.index import SpeakerIndex

    speakers = work / "speakers"
    (speakers / "reader").mkdir(parents=True)
    long = speakers / "reader" / f"joined_{int(seconds)}s.wav"
    joined_speech(librispeech, seconds, long)
    short = work / "short.wav"
    joined_speech(librispeech, 5, short)
    cli = [shutil.which("speechbrain-mrl") or "speechbrain-mrl"]
    model = ["--model_folder", str(model_folder)]
    row = {"seconds": seconds}
    runs = {
        "encode_file": [sys.executable, "-c", ENCODE_FILE, str(model_folder), str(long),
                        str(work / "encode_file.npy")],
        "extract": [*cli, "extract", *model, "--files", str(long), "--output_folder",
                    str(work / "extract")],
        "enrol": [*cli, "enrol", *model, "--folder", str(speakers), "--index", "INDEX"],
        "identify": [*cli, "identify", *model, "--index", str(work / "index"), "--files", str(long)],
        "verify": [*cli, "verify", *model, str(long), str(short)],
    }
    for name, cmd in runs.items():
        times, peaks = [], []
        for i in range(repeats):  # each enrol builds a new index; the last one is "index"
            index = work / ("index" if i == repeats - 1 else f"index_{i}")
            wall, peak = timed([str(index) if w == "INDEX" else w for w in cmd], env)
            times.append(wall)
            peaks.append(peak)
        wall, peak = sorted(times)[len(times) // 2], max(peaks)
        row[name] = {"seconds": round(wall, 2), "peak_rss_gb": round(peak, 3),
                     "all_seconds": [round(t, 2) for t in times]}
        print(f"{seconds:.0f} s recording, {name}: median {wall:.1f} s of {repeats}, "
              f"peak {peak:.2f} GB", flush=True)
    ref = np.load(work / "encode_file.npy")
    _, emb, _ = load_embeddings(work / "extract")
    index = SpeakerIndex.load(work / "index")
    enrolled = np.asarray(index._vectors[index.speakers.index("reader")], dtype=np.float32)
    row["max_abs_difference"] = {
        "extract": float(np.abs(emb[0] - ref).max()),
        "enrol (normalised)": float(np.abs(enrolled - ref / np.linalg.norm(ref)).max())}
    for name in ("extract", "enrol", "identify", "verify"):
        row[name]["time_vs_encode_file"] = round(row[name]["seconds"] / row["encode_file"]["seconds"], 2)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_folder", required=True, help="model folder")
    p.add_argument("--librispeech", required=True, help="folder of 16 kHz LibriSpeech .flac files")
    p.add_argument("--durations", type=float, nargs="+", default=[600, 3600],
                   help="recording lengths in seconds")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each process")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each command; the median time and the highest peak are kept")
    p.add_argument("--output", required=True, help="JSON report")
    args = p.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for seconds in args.durations:
        with tempfile.TemporaryDirectory() as work:
            rows.append(measure(args.model_folder, args.librispeech, seconds, pathlib.Path(work), env,
                                args.repeats))
        write_text_atomic(args.output, json.dumps({"model_folder": str(args.model_folder),
                                                   "threads": args.threads, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
