#!/usr/bin/env python3
"""Speaker search at 10k-1M enrolled speakers: accuracy, latency and memory of each funnel.

Real speakers (the manifests' speakers, embedded by a trained model) are enrolled
with a few utterances each and identified with the rest. Simulated distractor
speakers fill the index up to each scale: vectors drawn from a Gaussian fitted
(mean and full covariance of the full-size vector) to the speaker means of
``--fit_manifest`` (the training speakers), so every prefix keeps the real
statistics. The distractors are simulated; the queries are real speech.

For each scale and method (exact full-size search, and funnels with an exact or
approximate first stage) it reports top-1 accuracy over the real queries, the
latency per query in batches of 1 and of ``--batch`` queries (``--threads``
threads), and the in-RAM size of the index searched first. Writes a JSON report
and a plot (accuracy against latency).

    python benchmarks/search_scale.py --model_folder results/demo/mrl/model \\
        --manifests results/demo/data/test.csv results/demo/data/dev_long.csv \\
        --fit_manifest results/demo/data/train.csv --output results/search_scale.json

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

from speechbrain_mrl.utils.files import atomic_output, write_text_atomic
from speechbrain_mrl.data.manifests import read_manifest
from speechbrain_mrl.search.index import SpeakerIndex


def embed(model_folder, manifests, cache):
    """``(ids, speakers, embeddings)`` of the manifests' rows, cached in ``cache`` (npz)."""
    cache = pathlib.Path(cache)
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return list(saved["ids"]), list(saved["speakers"]), saved["embeddings"]
    from speechbrain_mrl.inference.embeddings import embed_manifest
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier

    model = MRLEncoderClassifier.from_hparams(source=model_folder)
    rows = {}
    for path in manifests:
        rows.update(read_manifest(path))
    ids, emb = embed_manifest(model.encoder, rows, batch_size=16, sample_rate=model.sample_rate,
                              min_duration=model.min_duration)
    speakers = [rows[u]["spk_id"] for u in ids]
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.array(ids), speakers=np.array(speakers), embeddings=emb.numpy())
    os.replace(tmp, cache)
    return ids, speakers, emb.numpy()


def speaker_means(speakers, emb):
    """Mean of the L2-normalised embeddings of each speaker: ``[S, D]``."""
    names = sorted(set(speakers))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    position = {s: i for i, s in enumerate(names)}
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, [position[s] for s in speakers], unit)
    counts = np.bincount([position[s] for s in speakers], minlength=len(names))
    return sums / counts[:, None]


def split(ids, speakers, n_enrol):
    """Enrolment and query rows: each speaker's first ``min(n_enrol, n // 2)`` utterances enrol."""
    by_speaker = {}
    for i in sorted(range(len(ids)), key=lambda i: ids[i]):
        by_speaker.setdefault(speakers[i], []).append(i)
    enrol, query = [], []
    for rows in by_speaker.values():
        n = max(1, min(n_enrol, len(rows) // 2))
        enrol += rows[:n]
        query += rows[n:]
    return np.array(enrol), np.array(query)


def timed(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({r["enrolled"] for r in report["rows"]})
    fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 4), squeeze=False)
    for ax, n in zip(axes[0], scales):
        for r in (r for r in report["rows"] if r["enrolled"] == n):
            ax.scatter(r["ms_per_query_batch1"], 100 * r["top1"], label=r["method"])
        ax.set_xscale("log")
        ax.set_xlabel("latency per query, batch 1 (ms, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{n:,} enrolled ({report['real_speakers']} real)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_folder", required=True, help="trained model folder (with model_info.json)")
    p.add_argument("--manifests", nargs="+", required=True, help="real speakers (spk_id column)")
    p.add_argument("--fit_manifest", required=True,
                   help="speakers whose means the distractor Gaussian is fitted to")
    p.add_argument("--output", required=True, help="JSON report (the plot goes beside it)")
    p.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="enrolled speakers (real ones plus simulated distractors)")
    p.add_argument("--n_enrol", type=int, default=3,
                   help="enrolment utterances per real speaker (at most half of its own)")
    p.add_argument("--funnels", nargs="+", default=["64", "32", "32,128"],
                   help="exact-first-stage funnels, e.g. 64 32,128")
    p.add_argument("--approximate", nargs="+", default=["64:hnsw:256", "64:ivf:32"],
                   help="approximate first stages SIZE:KIND:SETTING (HNSW efSearch, IVF nprobe)")
    p.add_argument("--shortlist", type=int, default=100, help="candidates each first stage keeps")
    p.add_argument("--batch", type=int, default=1000, help="queries per batch of the batched timing")
    p.add_argument("--single_queries", type=int, default=100,
                   help="queries timed one at a time (batch 1)")
    p.add_argument("--threads", type=int, default=2, help="FAISS threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the distractors and the batched queries")
    a = p.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    out = pathlib.Path(a.output)
    ids, speakers, emb = embed(a.model_folder, a.manifests, out.with_suffix(".real.npz"))
    fit_ids, fit_speakers, fit_emb = embed(a.model_folder, [a.fit_manifest],
                                           out.with_suffix(".fit.npz"))
    del fit_ids
    means = speaker_means(fit_speakers, fit_emb)
    mu, cov = means.mean(0), np.cov(means, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    enrol, query = split(ids, speakers, a.n_enrol)
    real = sorted({speakers[i] for i in enrol})
    queries, truth = emb[query], np.array([speakers[i] for i in query])
    info = json.loads((pathlib.Path(a.model_folder) / "model_info.json").read_text())
    mrl_dims, embed_dim = info["mrl_dims"], info["embed_dim"]
    methods = [("exact full size", "flat", [], None)]
    methods += [(f"{f.replace(',', '->')}->full (flat)", "flat", [int(d) for d in f.split(",")], None)
                for f in a.funnels]
    for spec in a.approximate:
        size, kind, setting = spec.split(":")
        name = "efSearch" if kind == "hnsw" else "nprobe"
        methods.append((f"{size}->full ({kind}, {name} {setting})", kind, [int(size)], int(setting)))
    rng = np.random.default_rng(a.seed)
    batch_queries = queries[rng.choice(len(queries), a.batch, replace=len(queries) < a.batch)]
    report = {"model_folder": str(a.model_folder), "real_speakers": len(real),
              "real_enrol_utterances": len(enrol), "real_queries": len(query),
              "fit_speakers": len(means), "threads": a.threads, "shortlist": a.shortlist,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "rows": []}
    for n in a.scales:
        n_sim = n - len(real)
        if n_sim < 0:
            raise ValueError(f"scale {n} is below the {len(real)} real speakers")
        index = SpeakerIndex(embed_dim, mrl_dims)
        index.enrol([speakers[i] for i in enrol], emb[enrol])
        for start in range(0, n_sim, 100_000):
            count = min(100_000, n_sim - start)
            sim = (mu + rng.standard_normal((count, embed_dim)) @ chol.T).astype(np.float32)
            index.enrol([f"sim{start + i:07d}" for i in range(count)], sim)
        full_bytes = len(index) * embed_dim * 4
        for name, kind, stages, setting in methods:
            index.first_stage = kind
            if kind == "hnsw":
                index.hnsw_ef = setting
            elif kind == "ivf":
                index.ivf_nprobe = setting
            t = time.perf_counter()
            first_bytes = index.stage_bytes(stages[0] if stages else embed_dim,
                                            kind if stages else "flat")
            build_s = time.perf_counter() - t  # zero when an earlier method built the same index

            def run(q, stages=stages, index=index):
                return index.search(q, k=1, stages=stages, shortlist=a.shortlist)

            found = np.concatenate([np.array(run(queries[i:i + a.batch])[0])[:, 0]
                                    for i in range(0, len(queries), a.batch)])
            single = [queries[i:i + 1] for i in range(a.single_queries)]
            batch1 = timed(lambda: [run(q) for q in single], 3) / len(single)
            batchn = timed(lambda: run(batch_queries), 3) / len(batch_queries)
            row = {"enrolled": len(index), "method": name, "top1": float(np.mean(found == truth)),
                   "ms_per_query_batch1": 1e3 * batch1, f"ms_per_query_batch{a.batch}": 1e3 * batchn,
                   "first_stage_MB": first_bytes / 2**20, "full_float32_MB": full_bytes / 2**20,
                   "first_stage_build_s": build_s}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            write_text_atomic(out, json.dumps(report, indent=1) + "\n")
        del index
    plot(report, out.with_suffix(".png"))
    print_table(report, a.batch)
    return report


def print_table(report, batch):
    exact = {r["enrolled"]: r for r in report["rows"] if r["method"] == "exact full size"}
    print(f"| enrolled | method | top-1 % | ms/query (batch 1) | speed-up | ms/query (batch {batch}) "
          f"| speed-up | first-stage index MB | vs full float32 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        e = exact[r["enrolled"]]
        b = f"ms_per_query_batch{batch}"
        print(f"| {r['enrolled']:,} | {r['method']} | {100 * r['top1']:.2f} | "
              f"{r['ms_per_query_batch1']:.2f} | {e['ms_per_query_batch1'] / r['ms_per_query_batch1']:.1f}x | "
              f"{r[b]:.3f} | {e[b] / r[b]:.1f}x | {r['first_stage_MB']:.0f} | "
              f"{r['full_float32_MB'] / r['first_stage_MB']:.1f}x smaller |")


if __name__ == "__main__":
    main()
