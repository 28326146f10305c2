#!/usr/bin/env python3
"""Speaker diarization on simulated conversations: DER, speaker count, clustering time, real-time factor.

``--conversations`` seeded conversations (2-6 speakers, turns of 1-10 s, pauses,
``--overlap_prob`` overlapping turns) are built from real speech by
:func:`speechbrain_mrl.data.conversations.simulate_conversation`, from speakers the
shipped model never trained on: LibriSpeech readers held out of the demo's
training (long turns; each reader has one 2-17 s utterance, so a two-minute
conversation reads some of it again: the JSON gives the share) and, with
``--variant sc``, the Speech Commands test speakers (1-s words). Each
conversation is diarized once through Silero VAD and the window embeddings (one
pass gives every size); then clustered at full size (``coarse_dim=0``) and
prefix-first at each ``--dims`` size, each timed ``--repeats`` times (the
fastest kept). Reported per configuration: DER at collar 0.25 s (NIST, each
side) and 0 (missed speech, false alarm, confusion), the share of conversations
whose speaker count is right, clustering seconds and speed-up over full size,
windows re-scored at full size, and the real-time factor end to end (VAD +
embedding + clustering over the audio's duration). ``--scaling`` also times the
clustering alone on longer recordings (windows pooled from all conversations).

    flock /work/runs/heavy.lock python benchmarks/diarization.py --data_folder /path/to/shared/data \\
        --conversations 10 --duration 120 --output results/diarization.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import platform
import tempfile
import time

import numpy as np
import torch

from speechbrain_mrl.data.conversations import simulate_conversation, speaker_files
from speechbrain_mrl.data.speech_commands import long_val_rows
from speechbrain_mrl.inference.diarization import (Diarizer, cluster_windows, diarization_error,
                                                   segments_from_windows, sliding_windows, total_error)
from speechbrain_mrl.inference.interface import load_model
from speechbrain_mrl.utils.files import write_text_atomic


def held_out_speakers(data_folder, variant):
    """``{speaker: files}`` the shipped model did not train on."""
    data_folder = pathlib.Path(data_folder)
    if variant == "librispeech":
        libri = data_folder / "librispeech_train_clean_100"
        # the demo's preparation holds these 60 readers out of training (prepare_demo, seed 1234)
        held = {row[5][len("libri"):] for row in long_val_rows(libri, 60, 4.0, 1234)}
        return speaker_files(libri, held)
    sc = data_folder / "speech_commands"
    test = set((sc / "splits" / "test_speakers.txt").read_text().split())
    return speaker_files(sc, test)


def timed_clustering(emb, windows, options, min_gap, repeats):
    """Labels, windows re-scored, segments and the fastest of ``repeats`` clustering times (segments included)."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        labels, rescored = cluster_windows(emb, windows, **options)
        segments = segments_from_windows(windows, [f"spk{lab}" for lab in labels.tolist()], min_gap=min_gap)
        best = min(best, time.perf_counter() - t)
    return labels, rescored, segments, best


def summarise(rows):
    """Per configuration: DER (collar 0.25 and 0), speaker-count accuracy, clustering time, RTF."""
    out = {}
    configs = list(rows[0]["configs"])
    duration = sum(r["duration"] for r in rows)
    front = sum(r["vad_s"] + r["embedding_s"] for r in rows)
    for name in configs:
        full_time = sum(r["configs"][name.split("_")[0] + "_full"]["clustering_s"] for r in rows)
        cs = [r["configs"][name] for r in rows]
        clustering = sum(c["clustering_s"] for c in cs)
        out[name] = {
            "der_collar_0.25": total_error([c["der_collar_0.25"] for c in cs]),
            "der_collar_0": total_error([c["der_collar_0"] for c in cs]),
            "speaker_count_right": float(np.mean([c["num_speakers"] == r["num_speakers"]
                                                  for c, r in zip(cs, rows)])),
            "speaker_count_error_mean": float(np.mean([c["num_speakers"] - r["num_speakers"]
                                                       for c, r in zip(cs, rows)])),
            "clustering_s": round(clustering, 5),
            "clustering_speedup_over_full": round(full_time / clustering, 3) if clustering else None,
            "rescored_share": round(sum(c["rescored"] for c in cs) / max(1, sum(r["windows"] for r in rows)), 4),
            "real_time_factor": round((front + clustering) / duration, 5),
        }
    return out


def run_variant(args, variant, model, work):
    speakers = held_out_speakers(args.data_folder, variant)
    print(f"{variant}: {len(speakers)} held-out speakers", flush=True)
    diarizer = Diarizer(model, coarse_dim=0)
    configs = {f"{m}_{name}": (m, dim) for m in args.methods
               for name, dim in {"full": 0, **{f"prefix{d}": d for d in args.dims}}.items()}
    rows = []
    for i in range(args.conversations):
        seed = args.seed + i
        conv = simulate_conversation(speakers, work / f"{variant}{seed}.wav", seed=seed, num_speakers=(2, 6),
                                     duration=args.duration, overlap_prob=args.overlap_prob,
                                     noise_snr=args.noise_snr)
        t0 = time.perf_counter()
        regions, duration = diarizer.vad(conv.wav)
        t1 = time.perf_counter()
        windows, emb = diarizer.embed_windows(conv.wav, sliding_windows(regions, diarizer.window, diarizer.hop))
        t2 = time.perf_counter()
        row = {"seed": seed, "num_speakers": len(conv.speakers), "duration": round(duration, 3),
               "speech_s": round(sum(e - s for s, e, _ in conv.segments), 3), "overlap_s": conv.overlap,
               "reused_s": conv.reused, "windows": len(windows), "vad_s": round(t1 - t0, 4),
               "embedding_s": round(t2 - t1, 4), "configs": {}}
        for name, (method, dim) in configs.items():
            # the agglomerative threshold (and spectral's fallback for few windows) follows the clustered size
            options = dict(Diarizer(model, coarse_dim=dim, method=method).cluster_options)
            labels, rescored, segments, seconds = timed_clustering(emb, windows, options, diarizer.min_gap,
                                                                   args.repeats)
            row["configs"][name] = {
                "num_speakers": int(labels.max() + 1) if len(labels) else 0, "rescored": rescored,
                "clustering_s": round(seconds, 5),
                "der_collar_0.25": diarization_error(conv.segments, segments, 0.25, duration=duration),
                "der_collar_0": diarization_error(conv.segments, segments, 0.0, duration=duration)}
        rows.append(row)
        print(f"  {variant} {seed}: {row['num_speakers']} speakers, {duration:.0f} s, {len(windows)} windows; "
              + ", ".join(f"{n} {100 * c['der_collar_0.25']['der']:.2f} % ({c['num_speakers']} spk, "
                          f"{1000 * c['clustering_s']:.1f} ms)" for n, c in row["configs"].items())
              + f"; VAD {row['vad_s']:.2f} s, embedding {row['embedding_s']:.2f} s", flush=True)
        rows[-1]["_emb"] = emb  # for --scaling, dropped before writing
    return rows


def scaling(args, model, rows):
    """Clustering time alone against the number of windows (pooled real window embeddings)."""
    pool = np.concatenate([r.pop("_emb") for r in rows])
    rng = np.random.default_rng(0)
    out = []
    for n in args.scaling:
        emb = pool[rng.choice(len(pool), n, replace=n > len(pool))]
        emb = emb + 1e-3 * rng.standard_normal(emb.shape)  # repeated windows are not identical
        windows = [(0.75 * i, 0.75 * i + 1.5) for i in range(n)]
        entry = {"windows": n}
        for method in args.methods:
            for name, dim in {"full": 0, **{f"prefix{d}": d for d in args.dims}}.items():
                options = dict(Diarizer(model, coarse_dim=dim, method=method).cluster_options)
                options.pop("num_speakers")
                t = time.perf_counter()
                labels, _ = cluster_windows(emb, windows, **options)
                entry[f"{method}_{name}_s"] = round(time.perf_counter() - t, 4)
        out.append(entry)
        print("  scaling", entry, flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_folder", required=True,
                   help="folder with librispeech_train_clean_100/ and speech_commands/")
    p.add_argument("--model_folder", default="speechbrain-mrl/demo-sc", help="model folder or shipped name")
    p.add_argument("--variant", nargs="+", default=["librispeech", "sc"], choices=["librispeech", "sc"],
                   help="speakers: held-out LibriSpeech readers, Speech Commands test speakers")
    p.add_argument("--conversations", type=int, default=50, help="conversations per variant")
    p.add_argument("--duration", type=float, default=120.0, help="seconds per conversation")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the first conversation (the defaults were tuned on seeds 1000 and up)")
    p.add_argument("--overlap_prob", type=float, default=0.1, help="probability that a turn overlaps")
    p.add_argument("--noise_snr", type=float, default=None, help="background noise SNR in dB (default none)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64], help="prefix sizes clustered first")
    p.add_argument("--methods", nargs="+", default=["spectral", "ahc"], choices=["spectral", "ahc"],
                   help="clusterings to run (each at full size and at every --dims prefix)")
    p.add_argument("--repeats", type=int, default=3, help="clustering timings per configuration (fastest kept)")
    p.add_argument("--scaling", type=int, nargs="*", default=[], help="also time clustering on N windows")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--work_folder", default=None, help="where the conversations go (default: a temporary one)")
    p.add_argument("--output", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = load_model(args.model_folder)
    load_s = time.perf_counter() - t
    warm = np.random.default_rng(0).standard_normal((40, 32))  # imports and first calls out of the timings
    for method in ("spectral", "ahc"):
        segments_from_windows([(0.0, 1.0)], [cluster_windows(warm, method=method, coarse_dim=8)[0][0]])
    report = {"command": "python benchmarks/diarization.py " + " ".join(argv or __import__("sys").argv[1:]),
              "model": args.model_folder, "model_load_s": round(load_s, 3),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("output",)}, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.work_folder or tmp)
        work.mkdir(parents=True, exist_ok=True)
        all_rows = []
        for variant in args.variant:
            rows = run_variant(args, variant, model, work)
            all_rows += rows
            summary = summarise(rows)
            report["variants"][variant] = {"summary": summary, "conversations": rows,
                                           "reused_share": round(sum(r["reused_s"] for r in rows)
                                                                 / sum(r["duration"] for r in rows), 3)}
            print(f"{variant} (collar 0.25 s):")
            for name, s in summary.items():
                d = s["der_collar_0.25"]
                print(f"  {name}: DER {100 * d['der']:.2f} % (missed {100 * d['missed']:.2f}, false alarm "
                      f"{100 * d['false_alarm']:.2f}, confusion {100 * d['confusion']:.2f}); collar 0: "
                      f"{100 * s['der_collar_0']['der']:.2f} %; count right {100 * s['speaker_count_right']:.0f} %; "
                      f"clustering {s['clustering_s']:.3f} s (x{s['clustering_speedup_over_full']}); "
                      f"re-scored {100 * s['rescored_share']:.0f} %; RTF {s['real_time_factor']:.4f}", flush=True)
        if args.scaling:
            report["scaling"] = scaling(args, model, all_rows)
        for row in all_rows:
            row.pop("_emb", None)
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(f"written {args.output}")
    return report


if __name__ == "__main__":
    main()
