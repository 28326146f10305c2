#!/usr/bin/env python3
"""Training-step time of the demo's backbones, side by side in one run.

Builds each backbone of ``run_demo.py --backbone`` from ``hparams/demo_scratch.yaml``
(the demo's own small ReDimNet, and the ReDimNet2 of about the same size) with
its Matryoshka AAM loss and AdamW, and times whole training steps (features,
forward, loss, backward, optimizer step) on a batch of the demo's shape
(``--batch_size`` 1-s crops of noise), the backbones taking turns round by round so
that whatever else runs on the machine weighs on both alike. Prints parameters,
the median step time and each backbone's ratio to the first.

    python benchmarks/demo_backbone_speed.py --rounds 10

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import torch
from hyperpyyaml import load_hyperpyyaml

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "VoxCeleb" / "MRL"
sys.path.insert(0, str(RECIPE))
from run_demo import DEMO_BACKBONES  # noqa: E402


def build(backbone, folder):
    """The demo's encoder, loss and optimizer for ``backbone`` (no data is read)."""
    overrides = {"data_folder": folder, "output_folder": folder, "n_classes": 350}
    extra = DEMO_BACKBONES[backbone]
    for key, value in zip(extra[::2], extra[1::2]):
        overrides[key.lstrip("-")] = value
    text = "\n".join(f"{k}: {v}" for k, v in overrides.items())
    with open(RECIPE / "hparams" / "demo_scratch.yaml") as f:
        hp = load_hyperpyyaml(f, text)
    modules = torch.nn.ModuleDict({"encoder": hp["encoder"], "loss": hp["loss"]})
    return modules, hp["opt_class"](modules.parameters())


def step(modules, optimizer, wavs, labels):
    """One training step; its seconds."""
    start = time.perf_counter()
    embeddings = modules["encoder"](wavs)
    loss = modules["loss"](embeddings, labels)
    loss = loss[0] if isinstance(loss, tuple) else loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=sorted(DEMO_BACKBONES), choices=sorted(DEMO_BACKBONES),
                   help="backbones to time; ratios are to the first")
    p.add_argument("--batch_size", type=int, default=32, help="crops per step (the demo's batch)")
    p.add_argument("--rounds", type=int, default=10, help="timed steps per backbone (after one warm-up)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    wavs = torch.randn(args.batch_size, 16000) * 0.1
    labels = torch.randint(0, 350, (args.batch_size, 1))
    with tempfile.TemporaryDirectory() as folder:
        built = {b: build(b, folder) for b in args.backbones}
    for modules, optimizer in built.values():
        modules.train()
        step(modules, optimizer, wavs, labels)
    times = {b: [] for b in args.backbones}
    for _ in range(args.rounds):
        for b, (modules, optimizer) in built.items():
            times[b].append(step(modules, optimizer, wavs, labels))
    first = statistics.median(times[args.backbones[0]])
    print(f"{args.rounds} rounds, batch {args.batch_size} x 1 s, {torch.get_num_threads()} threads")
    print("| backbone | encoder parameters | median step s | ratio |\n|---|---:|---:|---:|")
    for b, (modules, _) in built.items():
        median = statistics.median(times[b])
        params = sum(p.numel() for p in modules["encoder"].parameters())
        print(f"| {b} | {params:,} | {median:.3f} | {median / first:.2f} |")


if __name__ == "__main__":
    main()
