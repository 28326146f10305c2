#!/usr/bin/env python3
"""A saved speaker index answers its first query in a fresh process without rebuilding.

Builds a :class:`~speechbrain_mrl.search.index.SpeakerIndex` of ``--speakers``
simulated speakers (random unit 256-d vectors, Matryoshka sizes
64/128/192/256) with an HNSW first stage, saves it, then times in fresh
processes: loading it and answering the first query (64-d funnel, shortlist
100, top 5), and, for comparison, the same with the saved FAISS stage files
removed (the first query then rebuilds the graph, as every process did
before the stage was saved).

    python benchmarks/index_reload.py --speakers 1000000 --folder /tmp/idx_1m \\
        --output results/index_reload.json

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
import time

import numpy as np

from speechbrain_mrl.utils.files import write_text_atomic

FIRST_QUERY = """
import sys, time, json
import numpy as np
start = time.perf_counter()
from speechbrain_mrl.search.index import SpeakerIndex
index = SpeakerIndex.load(sys.argv[1])
loaded = time.perf_counter()
q = np.random.default_rng(1).standard_normal((1, index.embed_dim)).astype("float32")
ids, scores = index.search(q, k=5, stages=[64], shortlist=100)
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "first_query_s": done - loaded,
                  "total_s": done - start, "top1": ids[0][0]}))
"""


def fresh_process_query(folder, env):
    """Timings of load + first query in a new Python process (imports included in total_s)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FIRST_QUERY, str(folder)], capture_output=True,
                         text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main(argv=None):
    from speechbrain_mrl.search.index import SpeakerIndex

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--speakers", type=int, default=1_000_000, help="enrolled speakers")
    p.add_argument("--folder", required=True, help="where the index is written")
    p.add_argument("--output", required=True, help="JSON report")
    p.add_argument("--no_rebuild_run", action="store_true",
                   help="skip the comparison run without the saved FAISS stage")
    args = p.parse_args(argv)
    env = dict(os.environ)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.speakers, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SpeakerIndex(256, [64, 128, 192, 256], first_stage="hnsw")
    start = time.perf_counter()
    index.enrol([f"spk{i:08d}" for i in range(args.speakers)], vectors)
    enrolled = time.perf_counter() - start
    folder = pathlib.Path(args.folder)
    if folder.exists():
        shutil.rmtree(folder)
    start = time.perf_counter()
    index.save(folder)
    saved = time.perf_counter() - start
    report = {"speakers": args.speakers, "enrol_s": enrolled, "save_s (builds the HNSW stage)": saved,
              "folder_bytes": sum(f.stat().st_size for f in folder.iterdir()),
              "saved": fresh_process_query(folder, env)}
    print(json.dumps(report, indent=1), flush=True)
    if not args.no_rebuild_run:
        for stage in folder.glob("*.faiss"):
            stage.unlink()
        report["without_saved_stage"] = fresh_process_query(folder, env)
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
