#!/usr/bin/env python3
"""What per-shard re-scoring costs: the Matryoshka funnel on S shards, merged, against one index.

A sharded Qdrant collection runs a query's whole funnel (the 64-d prefetch, the
full-size re-score) on every shard and merges the shards' answers by their final
score. This benchmark does the same with S exact FAISS funnels
(:class:`speechbrain_mrl.search.index.SpeakerIndex`, ``first_stage="flat"``, one per
shard: qdrant-client's local mode is too slow for 100k-1M speakers, see
docs/search_backends.md), for S = 1, 4, 16, and a per-shard shortlist from the
single index's down to a few, and reports top-1 / top-5 accuracy over real
queries and how often the merged top-1 equals the single index's. At a smaller
scale it checks the FAISS shards against S real Qdrant collections (local mode):
the same merged answers.

It also measures Qdrant-style quantisation of the first-stage prefix on the
single index (simulated in numpy, as Qdrant computes it: scalar int8 over the
0.99 quantile range, binary sign bits with a symmetric or a float query), with
and without re-scoring an oversampled shortlist at float32.

Speakers: as ``benchmarks/search_scale.py`` (real speakers of the manifests,
embedded by the model, plus simulated distractors drawn from a Gaussian fitted
to the training speakers' means).

    python benchmarks/qdrant_sharding.py --model_folder results/demo/mrl/model \\
        --manifests results/demo/data/test.csv results/demo/data/dev_long.csv \\
        --fit_manifest results/demo/data/train.csv --output docs/qdrant_sharding.json \\
        --cache_folder results/qdrant_sharding

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from speechbrain_mrl.utils.files import write_text_atomic
from speechbrain_mrl.search.index import SpeakerIndex

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from search_scale import embed, speaker_means, split  # noqa: E402  (the same speakers)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build(names, vectors, shard_of, n_shards):
    """One exact-funnel index per shard (each speaker's vector enrolled as one row: the
    search only sees its prefixes' directions)."""
    shards = []
    for s in range(n_shards):
        rows = np.flatnonzero(shard_of == s)
        index = SpeakerIndex(vectors.shape[1], MRL_DIMS)
        index.enrol([names[i] for i in rows], vectors[rows])
        shards.append(index)
    return shards


def merged_search(shards, queries, k, stages, shortlist):
    """The funnel on every shard, the answers merged by final score: ``(ids [Q][k], scores)``."""
    ids, scores = [], []
    for index in shards:
        kk = min(k, shortlist, len(index))  # a shard's answers are at most its shortlist
        found, sc = index.search(queries, k=kk, stages=stages, shortlist=shortlist)
        ids.append(np.array(found, dtype=object))
        scores.append(sc)
    ids, scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def accuracy(top, truth):
    """Top-1 and top-5 accuracy (top-5 over the answers there are, when fewer than 5)."""
    return {"top1": float(np.mean(top[:, 0] == truth)),
            "top5": float(np.mean((top[:, :5] == truth[:, None]).any(axis=1)))}


# ------------------------------------------------------------------ quantisation
def scalar_int8(x, quantile=0.99):
    """Qdrant's scalar quantisation: the values' ``quantile`` range mapped to 256 levels;
    the dequantised vectors."""
    lo, hi = np.quantile(x, [(1 - quantile) / 2, 1 - (1 - quantile) / 2])
    step = (hi - lo) / 255
    return (lo + np.round((np.clip(x, lo, hi) - lo) / step) * step).astype(np.float32)


def quantised_top1(first_q, first_db, first_exact_q, first_exact_db, full_q, full_db, names,
                   shortlist, settings, batch=64):
    """Top-1 speaker per query for each ``(oversampling, rescore)`` of ``settings``: the
    first stage on quantised prefixes (``oversampling x shortlist`` candidates re-scored at
    float32 when ``rescore``), then the full size."""
    widest = shortlist * max(o for o, _ in settings)
    out = {setting: [] for setting in settings}
    for start in range(0, len(first_q), batch):
        q = slice(start, start + batch)
        approx = first_q[q] @ first_db.T
        cand = np.argpartition(-approx, widest, axis=1)[:, :widest]
        cand = np.take_along_axis(cand, np.argsort(-np.take_along_axis(approx, cand, 1), axis=1,
                                                   kind="stable"), 1)  # best first
        for oversampling, rescore in settings:
            pool = cand[:, :shortlist * oversampling if rescore else shortlist]
            if rescore:
                exact = np.einsum("qd,qcd->qc", first_exact_q[q], first_exact_db[pool])
                keep = np.argpartition(-exact, shortlist - 1, axis=1)[:, :shortlist]
                pool = np.take_along_axis(pool, keep, 1)
            final = np.einsum("qd,qcd->qc", full_q[q], full_db[pool])
            out[oversampling, rescore].append(
                np.take_along_axis(pool, final.argmax(1)[:, None], 1)[:, 0])
    names = np.array(names, dtype=object)
    return {setting: names[np.concatenate(rows)] for setting, rows in out.items()}


def quantisation_rows(names, vectors, queries, truth, stage, shortlist):
    d = stage
    db, q = unit(vectors[:, :d]).astype(np.float32), unit(queries[:, :d]).astype(np.float32)
    full_db, full_q = unit(vectors).astype(np.float32), unit(queries).astype(np.float32)
    signs_db = np.where(db > 0, 1.0, -1.0).astype(np.float32)
    signs_q = np.where(q > 0, 1.0, -1.0).astype(np.float32)
    kinds = {"float32": (q, db, 4 * d), "scalar int8 (quantile 0.99)": (q, scalar_int8(db), d),
             "binary, 1-bit query": (signs_q, signs_db, d / 8),
             "binary, float query": (q, signs_db, d / 8)}
    rows = []
    for name, (qq, dd, nbytes) in kinds.items():
        settings = [(1, False)] if name == "float32" else [(1, False), (1, True), (2, True),
                                                          (4, True), (8, True)]
        t = time.perf_counter()
        tops = quantised_top1(qq, dd, q, db, full_q, full_db, names, shortlist, settings)
        for (oversampling, rescore), top in tops.items():
            rows.append({"first_stage": name, "bytes_per_speaker": nbytes,
                         "oversampling": oversampling, "rescore": rescore,
                         "top1": float(np.mean(top == truth)),
                         "seconds_all_settings": time.perf_counter() - t})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------ Qdrant cross-check
def qdrant_check(names, vectors, shard_of, n_shards, queries, stages, shortlist, store):
    """The merged answers of S local Qdrant collections (one funnel query each)."""
    from speechbrain_mrl.search.qdrant import QdrantSpeakerIndex

    ids, scores = [], []
    for s in range(n_shards):
        rows = np.flatnonzero(shard_of == s)
        with QdrantSpeakerIndex(vectors.shape[1], MRL_DIMS, first_stage="flat",
                                location=f"qdrant+local:{store}/s{n_shards}_{s}") as index:
            index.enrol([names[i] for i in rows], vectors[rows])
            found, sc = index.search(queries, k=min(5, shortlist, len(rows)), stages=stages,
                                     shortlist=shortlist)
        ids.append(np.array(found, dtype=object))
        scores.append(sc)
    ids, scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


MRL_DIMS = None


def main(argv=None):
    global MRL_DIMS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_folder", required=True, help="trained model folder (with model_info.json)")
    p.add_argument("--manifests", nargs="+", required=True, help="real speakers (spk_id column)")
    p.add_argument("--fit_manifest", required=True,
                   help="speakers whose means the distractor Gaussian is fitted to")
    p.add_argument("--output", required=True, help="JSON report")
    p.add_argument("--cache_folder", required=True, help="where the embeddings are cached")
    p.add_argument("--scales", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="enrolled speakers (real ones plus simulated distractors)")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16],
                   help="shard counts S; speakers go to shards at random")
    p.add_argument("--stage", type=int, default=64, help="first-stage prefix size")
    p.add_argument("--shortlist", type=int, default=100, help="shortlist of the single index")
    p.add_argument("--shard_shortlists", type=int, nargs="+", default=[100, 50, 20, 10, 5, 2],
                   help="per-shard shortlists tried")
    p.add_argument("--n_enrol", type=int, default=3,
                   help="enrolment utterances per real speaker (at most half of its own)")
    p.add_argument("--qdrant_scale", type=int, default=10_000,
                   help="enrolment of the cross-check against local Qdrant collections (0: none)")
    p.add_argument("--qdrant_queries", type=int, default=200,
                   help="real queries of the cross-check against local Qdrant collections")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the distractors, the shards and the cross-check's queries")
    p.add_argument("--threads", type=int, default=2, help="FAISS threads")
    a = p.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(a.threads)
    cache = pathlib.Path(a.cache_folder)
    cache.mkdir(parents=True, exist_ok=True)
    ids, speakers, emb = embed(a.model_folder, a.manifests, cache / "real.npz")
    _, fit_speakers, fit_emb = embed(a.model_folder, [a.fit_manifest], cache / "fit.npz")
    means = speaker_means(fit_speakers, fit_emb)
    mu, cov = means.mean(0), np.cov(means, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    enrol, query = split(ids, speakers, a.n_enrol)
    real = sorted({speakers[i] for i in enrol})
    real_vectors = speaker_means([speakers[i] for i in enrol], emb[enrol]).astype(np.float32)
    queries, truth = emb[query], np.array([speakers[i] for i in query], dtype=object)
    info = json.loads((pathlib.Path(a.model_folder) / "model_info.json").read_text())
    MRL_DIMS, embed_dim = info["mrl_dims"], info["embed_dim"]
    stages = [a.stage]
    report = {"model_folder": str(a.model_folder), "real_speakers": len(real),
              "real_queries": len(query), "stage": a.stage, "shortlist": a.shortlist,
              "engine": "one exact FAISS funnel (SpeakerIndex, flat) per shard, merged by final "
                        "score", "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "threads": a.threads, "rows": [], "quantisation": [],
              "qdrant_check": []}
    out = pathlib.Path(a.output)

    def save():
        write_text_atomic(out, json.dumps(report, indent=1) + "\n")

    rng = np.random.default_rng(a.seed)
    scales = sorted(set(a.scales) | ({a.qdrant_scale} if a.qdrant_scale else set()))
    for n in scales:
        sim = (mu + rng.standard_normal((n - len(real), embed_dim)) @ chol.T).astype(np.float32)
        names = real + [f"sim{i:08d}" for i in range(len(sim))]
        vectors = np.concatenate([real_vectors, sim])
        del sim
        shard_rng = np.random.default_rng(a.seed + 1)
        if n in a.scales:
            whole = build(names, vectors, np.zeros(n, int), 1)[0]
            t = time.perf_counter()
            exact = np.array(whole.search(queries, k=5, stages=[])[0], dtype=object)
            single, _ = whole.search(queries, k=5, stages=stages, shortlist=a.shortlist)
            single = np.array(single, dtype=object)
            print(f"{n}: single index searched in {time.perf_counter() - t:.1f} s", flush=True)
            base = {"enrolled": n, **{f"single_{k}": v for k, v in accuracy(single, truth).items()},
                    **{f"exact_{k}": v for k, v in accuracy(exact, truth).items()}}
            del whole
            for n_shards in a.shards:
                shard_of = shard_rng.integers(0, n_shards, n)
                shards = build(names, vectors, shard_of, n_shards)
                for per_shard in a.shard_shortlists:
                    if per_shard > a.shortlist or (n_shards == 1 and per_shard != a.shortlist):
                        continue
                    t = time.perf_counter()
                    top, _ = merged_search(shards, queries, 5, stages, per_shard)
                    row = {**base, "shards": n_shards, "per_shard_shortlist": per_shard,
                           **accuracy(top, truth),
                           "same_top1_as_single": float(np.mean(top[:, 0] == single[:, 0])),
                           "same_top1_as_exact": float(np.mean(top[:, 0] == exact[:, 0])),
                           "seconds": time.perf_counter() - t}
                    report["rows"].append(row)
                    print(json.dumps(row), flush=True)
                    save()
                del shards
            report["quantisation"] += [{"enrolled": n, **r} for r in quantisation_rows(
                names, vectors, queries, truth, a.stage, a.shortlist)]
            save()
        if n == a.qdrant_scale:
            pick = np.random.default_rng(a.seed + 2).choice(len(queries), a.qdrant_queries,
                                                             replace=False)
            with tempfile.TemporaryDirectory() as store:
                for n_shards in a.shards:
                    shard_of = np.random.default_rng(a.seed + 3).integers(0, n_shards, n)
                    for per_shard in sorted({a.shortlist, min(a.shard_shortlists)}):
                        t = time.perf_counter()
                        got, got_scores = qdrant_check(names, vectors, shard_of, n_shards,
                                                       queries[pick], stages, per_shard,
                                                       pathlib.Path(store) / f"{per_shard}")
                        seconds = time.perf_counter() - t
                        want, want_scores = merged_search(build(names, vectors, shard_of, n_shards),
                                                          queries[pick], 5, stages, per_shard)
                        row = {"enrolled": n, "shards": n_shards, "per_shard_shortlist": per_shard,
                               "queries": len(pick), "same_top5": float(np.mean(
                                   [list(g) == list(w) for g, w in zip(got, want)])),
                               "max_score_difference": float(
                                   np.abs(got_scores - want_scores).max()),
                               "top1_qdrant": float(np.mean(got[:, 0] == truth[pick])),
                               "top1_faiss": float(np.mean(want[:, 0] == truth[pick])),
                               "qdrant_seconds": seconds}
                        report["qdrant_check"].append(row)
                        print(json.dumps(row), flush=True)
                        save()
        del vectors
    save()
    print_tables(report)
    return report


def print_tables(report):
    print("| enrolled | shards | per-shard shortlist | top-1 % | top-5 % | top-1 = one index |"
          " top-1 = exact |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['enrolled']:,} | {r['shards']} | {r['per_shard_shortlist']} | "
              f"{100 * r['top1']:.2f} | {100 * r['top5']:.2f} | "
              f"{100 * r['same_top1_as_single']:.2f} | {100 * r['same_top1_as_exact']:.2f} |")
    print("\n| enrolled | first stage | bytes/speaker | oversampling | re-score | top-1 % |")
    print("|---:|---|---:|---:|---|---:|")
    for r in report["quantisation"]:
        print(f"| {r['enrolled']:,} | {r['first_stage']} | {r['bytes_per_speaker']:g} | "
              f"{r['oversampling']} | {'yes' if r['rescore'] else 'no'} | {100 * r['top1']:.2f} |")


if __name__ == "__main__":
    main()
