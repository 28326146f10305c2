#!/usr/bin/env python3
"""One funnel query on three engines: FAISS, qdrant-client's local mode and Qdrant Edge.

Random unit vectors (``--n`` speakers of ``--dim``), the ``--stage``-d prefix
funnel (shortlist ``--shortlist``, top ``--k``), queries near enrolled vectors.
FAISS: :class:`speechbrain_mrl.search.index.SpeakerIndex` (exact first stage, numpy
re-rank). qdrant-client local mode:
:class:`speechbrain_mrl.search.qdrant.QdrantSpeakerIndex` (one query with a
``prefetch``). Qdrant Edge (``qdrant-edge-py``, Qdrant's engine in-process):
an ``EdgeShard`` with the same two named cosine vectors and the same one-query
funnel, exact (``SearchParams(exact=True)``) and, after ``optimize()``, with
its HNSW index. Reports the median latency of a single query, the time to load
the vectors, and how many queries' top-k equal the FAISS funnel's.

    python benchmarks/qdrant_engines.py --n 100000 --output engines.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

from speechbrain_mrl.utils.files import write_text_atomic
from speechbrain_mrl.search.index import SpeakerIndex


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_ms(fn, queries, repeats):
    fn(queries[0])
    times = []
    for q in queries[:repeats]:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def edge_engine(vectors, names, stage, root):
    """An EdgeShard with the prefix and full vectors; returns ``(search(q, k, shortlist,
    exact), optimise())``."""
    import qdrant_edge as qe

    dim = vectors.shape[1]
    config = qe.EdgeConfig(vectors={
        f"prefix_{stage}": qe.EdgeVectorParams(size=stage, distance=qe.Distance.Cosine),
        f"prefix_{dim}": qe.EdgeVectorParams(  # no graph: the full size only re-scores
            size=dim, distance=qe.Distance.Cosine,
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000))})
    shard = qe.EdgeShard.create(str(root), config)
    for start in range(0, len(vectors), 1000):
        shard.update(qe.UpdateOperation.upsert_points([
            qe.Point(id=i, vector={f"prefix_{stage}": vectors[i, :stage].tolist(),
                                   f"prefix_{dim}": vectors[i].tolist()},
                     payload={"speaker": names[i]})
            for i in range(start, min(start + 1000, len(vectors)))]))
    shard.flush()

    def search(q, k, shortlist, exact):
        params = qe.SearchParams(exact=exact, hnsw_ef=None if exact else 256)
        request = qe.QueryRequest(
            limit=k, query=qe.Query.Nearest(q.tolist(), using=f"prefix_{dim}"),
            prefetches=[qe.Prefetch(limit=shortlist, params=params, query=qe.Query.Nearest(
                q[:stage].tolist(), using=f"prefix_{stage}"))],
            with_payload=True)
        return [p.payload["speaker"] for p in shard.query(request)]

    return shard, search


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="enrolled speakers (random unit vectors)")
    p.add_argument("--dim", type=int, default=256, help="full vector size")
    p.add_argument("--stage", type=int, default=64, help="first-stage (prefetch) prefix size")
    p.add_argument("--shortlist", type=int, default=100, help="candidates the first stage keeps")
    p.add_argument("--k", type=int, default=5, help="answers per query")
    p.add_argument("--queries", type=int, default=200, help="queries compared with FAISS")
    p.add_argument("--repeats", type=int, default=20, help="queries timed per engine")
    p.add_argument("--local_mode", action="store_true",
                   help="also qdrant-client local mode (slow: about 0.6 s a query at 100k)")
    p.add_argument("--output", required=True, help="JSON report, rewritten after each engine")
    p.add_argument("--seed", type=int, default=0, help="seed of the vectors and queries")
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    vectors = unit(rng.standard_normal((a.n, a.dim))).astype(np.float32)
    names = [f"s{i:07d}" for i in range(a.n)]
    picks = rng.choice(a.n, a.queries, replace=False)
    queries = unit(vectors[picks] + 0.05 * rng.standard_normal((a.queries, a.dim)))
    queries = queries.astype(np.float32)
    dims = sorted({a.stage, a.dim})
    report = {"n": a.n, "dim": a.dim, "stage": a.stage, "shortlist": a.shortlist, "k": a.k,
              "queries": a.queries, "engines": {}}

    t = time.perf_counter()
    faiss_index = SpeakerIndex(a.dim, dims)
    faiss_index.enrol(names, vectors)
    faiss_index.search(queries[:1], k=a.k, stages=[a.stage], shortlist=a.shortlist)  # builds
    load = time.perf_counter() - t
    want = faiss_index.search(queries, k=a.k, stages=[a.stage], shortlist=a.shortlist)[0]
    report["engines"]["FAISS (SpeakerIndex, flat first stage)"] = {
        "load_s": load, "ms_per_query": median_ms(lambda q: faiss_index.search(
            q[None], k=a.k, stages=[a.stage], shortlist=a.shortlist), queries, a.repeats),
        "same_topk_as_faiss": 1.0, "same_top1_as_faiss": 1.0,
        "top1_is_source": float(np.mean([w[0] == names[i] for w, i in zip(want, picks)]))}

    def record(name, load_s, search):
        got = [search(q) for q in queries]
        row = {"load_s": load_s, "ms_per_query": median_ms(search, queries, a.repeats),
               "same_topk_as_faiss": float(np.mean([g == w for g, w in zip(got, want)])),
               "same_top1_as_faiss": float(np.mean([g[0] == w[0] for g, w in zip(got, want)])),
               "top1_is_source": float(np.mean([g[0] == names[i] for g, i in zip(got, picks)]))}
        report["engines"][name] = row
        print(name, json.dumps(row), flush=True)
        write_text_atomic(a.output, json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        shard, search = edge_engine(vectors, names, a.stage, pathlib.Path(root) / "edge")
        load = time.perf_counter() - t
        record("Qdrant Edge, exact prefetch", load,
               lambda q: search(q, a.k, a.shortlist, exact=True))
        t = time.perf_counter()
        shard.optimize()
        record("Qdrant Edge, HNSW prefetch (after optimize)", load + time.perf_counter() - t,
               lambda q: search(q, a.k, a.shortlist, exact=False))
        record("Qdrant Edge, exact prefetch (after optimize)", load,
               lambda q: search(q, a.k, a.shortlist, exact=True))
        info = shard.info()
        report["edge_indexed_vectors"] = info.indexed_vectors_count
        report["edge_segments"] = info.segments_count
        write_text_atomic(a.output, json.dumps(report, indent=1) + "\n")
        shard.close()
        if a.local_mode:
            from speechbrain_mrl.search.qdrant import QdrantSpeakerIndex

            t = time.perf_counter()
            index = QdrantSpeakerIndex(a.dim, dims, location=f"qdrant+local:{root}/local/spk")
            index.enrol(names, vectors)
            load = time.perf_counter() - t
            with index:
                def one(q):
                    return index.search(q[None], k=a.k, stages=[a.stage],
                                        shortlist=a.shortlist)[0][0]

                record("qdrant-client local mode", load, one)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
