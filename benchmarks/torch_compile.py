"""Does ``torch.compile`` pay for the encoder on CPU? Eager and compiled calls, interleaved.

Times ``MRLEncoder`` (random weights, front end included) eager against
``torch.compile(encoder)`` on the same input, calls alternating, and checks that
the outputs agree. Compilation time is reported apart.

    python benchmarks/torch_compile.py --variant b2 --batch 1 --seconds 3 --threads 2
"""
import argparse
import json
import statistics
import time

import torch

from speechbrain_mrl import MatryoshkaProjection, MRLEncoder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", default="b2", help="ReDimNet preset")
    p.add_argument("--batch", type=int, default=1, help="utterances per call")
    p.add_argument("--seconds", type=float, default=3.0, help="utterance length")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--calls", type=int, default=15, help="timed calls per path")
    p.add_argument("--mode", default="default", help="torch.compile mode")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    encoder = MRLEncoder.from_config(a.variant)
    encoder.mrl_head = MatryoshkaProjection(encoder.pool_dim, embed_dim=256)
    encoder.eval()
    wavs = torch.randn(a.batch, int(16000 * a.seconds))
    lens = torch.ones(a.batch)
    compiled = torch.compile(encoder, mode=a.mode, dynamic=False)
    with torch.inference_mode():
        start = time.perf_counter()
        out_c = compiled(wavs, lens)
        compile_s = time.perf_counter() - start
        out_e = encoder(wavs, lens)
        times = {"eager": [], "compiled": []}
        for _ in range(2):  # warm-up
            encoder(wavs, lens), compiled(wavs, lens)
        for _ in range(a.calls):
            for name, fn in (("eager", encoder), ("compiled", compiled)):
                t = time.perf_counter()
                fn(wavs, lens)
                times[name].append(time.perf_counter() - t)
    eager, comp = (statistics.median(times[k]) for k in ("eager", "compiled"))
    report = {"variant": a.variant, "batch": a.batch, "seconds": a.seconds, "threads": a.threads,
              "mode": a.mode, "compile_s": round(compile_s, 1),
              "eager_ms": round(1000 * eager, 2), "compiled_ms": round(1000 * comp, 2),
              "speedup": round(eager / comp, 3),
              "max_abs_diff": float((out_c - out_e).abs().max())}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
