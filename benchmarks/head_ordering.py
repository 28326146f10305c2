#!/usr/bin/env python3
"""Sweeps closed-form Matryoshka head orderings of a frozen backbone on the validation lists.

Pooled statistics are computed once (and cached next to the output) for:
the training items cropped as the head initialisation sees them (first
``--crop`` seconds), the training readers' audio cut into longer windows
(``--window_durations``, ``0`` = whole utterance), the Speech Commands
validation clips and the long-utterance validation segments. Each ordering is
then a rotation of the backbone's embedding, scored at every prefix size on
both validation lists (never on a test list).

    python benchmarks/head_ordering.py --backbone results/demo/scratch/backbone.pt \\
        --prep_folder results/demo/data --output results/demo/head_ordering.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib

import torch

from speechbrain_mrl.data.audio import crop_or_tile, read_audio
from speechbrain_mrl.utils.files import save_torch_atomic, write_text_atomic
from speechbrain_mrl.data.manifests import read_manifest, read_trials, resolve_trials
from speechbrain_mrl.training.head_init import window_rows
from speechbrain_mrl.model.matryoshka import discriminant_rotation, pca_rotation
from speechbrain_mrl.utils.metrics import id_metrics
from speechbrain_mrl.model.official import load_official_redimnet

SR = 16000
DIMS = [8, 16, 32, 64, 128, 192]


@torch.no_grad()
def pooled(encoder, rows, crop=None, batch_size=32):
    """``(stats [N, pool_dim], ids)`` of manifest rows (first ``crop`` seconds when given)."""
    rows = sorted(rows.items(), key=lambda r: float(r[1]["duration"]))
    stats, ids = [], []
    for i in range(0, len(rows), batch_size):
        wavs = []
        for uid, r in rows[i:i + batch_size]:
            start, stop = int(r["start"]), int(r["stop"])
            if crop:
                n = int(round(crop * SR))
                wavs.append(crop_or_tile(read_audio(r["wav"], start, min(stop, start + n), SR), n))
            else:
                wavs.append(read_audio(r["wav"], start, stop, SR))
            ids.append(uid)
        longest = max(len(w) for w in wavs)
        lens = torch.tensor([len(w) / longest for w in wavs])
        batch = torch.stack([torch.nn.functional.pad(w, (0, longest - len(w))) for w in wavs])
        stats.append(encoder.pool_features(batch, lens))
    return torch.cat(stats), ids


def total_over_within_rotation(x, labels, shrinkage):
    """Ordering by total over shrunk within-speaker scatter: LDA at 0, PCA at 1 (exploration)."""
    x = torch.nn.functional.normalize(x, dim=1)
    classes, inverse = torch.unique(labels, return_inverse=True)
    means = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means /= torch.bincount(inverse).to(x.dtype)[:, None]
    within = x - means[inverse]
    s_w = within.T @ within / len(x)
    centred = x - x.mean(0)
    s_t = centred.T @ centred / len(x)
    p = x.shape[1]
    s_w = (1 - shrinkage) * s_w + shrinkage * s_w.trace() / p * torch.eye(p, dtype=x.dtype)
    whiten = torch.linalg.inv(torch.linalg.cholesky(s_w))
    vals, vecs = torch.linalg.eigh(whiten @ s_t @ whiten.T)
    directions = whiten.T @ vecs[:, torch.argsort(vals, descending=True)]
    return torch.linalg.qr(directions)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", required=True, help="official-format ReDimNet checkpoint")
    p.add_argument("--prep_folder", required=True, help="the demo's data folder (manifests, trials)")
    p.add_argument("--output", required=True, help="JSON results (the stats cache goes beside it)")
    p.add_argument("--crop", type=float, default=1.0, help="crop of the training items (s)")
    p.add_argument("--window_durations", type=float, nargs="*", default=[4.0, 8.0, 0.0],
                   help="windows (s) the training readers' audio is cut into for the long fits "
                        "(0: whole utterance)")
    p.add_argument("--shrinkages", type=float, nargs="*", default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
                   help="shrinkages of the within-speaker scatter (towards identity) tried for the "
                        "disc and tot orderings")
    a = p.parse_args(argv)
    prep, out = pathlib.Path(a.prep_folder), pathlib.Path(a.output)
    torch.set_num_threads(2)
    encoder = load_official_redimnet(a.backbone).eval()
    cache = out.with_suffix(".stats.pt")
    train_rows = read_manifest(prep / "train.csv")
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
    else:
        data = {}
        for name, rows, crop in (
                ["train", train_rows, a.crop],
                ["valid", read_manifest(prep / "dev.csv"), None],
                ["valid_long", read_manifest(prep / "dev_long.csv"), None],
                *[[f"win{d:g}", window_rows(train_rows, d or None), None]
                  for d in a.window_durations]):
            stats, ids = pooled(encoder, rows, crop)
            data[name] = {"stats": stats, "ids": ids,
                          "spk": [rows[i]["spk_id"] for i in ids]}
            print(f"{name}: {len(ids)} items", flush=True)
        save_torch_atomic(data, cache)
    model = encoder.embedding_model
    emb = {k: model.embed(v["stats"]).double() for k, v in data.items()}
    speakers = sorted({s for v in data.values() for s in v["spk"]})
    index = {s: n for n, s in enumerate(speakers)}
    labels = {k: torch.tensor([index[s] for s in v["spk"]]) for k, v in data.items()}
    trials = {}
    for name, manifest, tl in (("valid", "dev.csv", "val_trials.txt"),
                               ("valid_long", "dev_long.csv", "val_long_trials.txt")):
        lab, enrol, test, _ = resolve_trials(read_trials(prep / tl), read_manifest(prep / manifest), tl)
        trials[name] = (lab, enrol, test)

    def evaluate(rot):
        res = {}
        for name in trials:
            e = (emb[name] @ rot).float()
            m = id_metrics(dict(zip(data[name]["ids"], e)), trials[name], DIMS)
            res[name] = {d: round(m[d]["EER"], 3) for d in DIMS}
        return res

    windows = [f"win{d:g}" for d in a.window_durations]
    fit_sets = {"1s": ["train"], "1s+long": ["train"] + windows, "long": windows}
    results = {"pca": evaluate(pca_rotation(emb["train"]))}
    for set_name, keys in fit_sets.items():
        x = torch.cat([emb[k] for k in keys])
        y = torch.cat([labels[k] for k in keys])
        for s in a.shrinkages:
            results[f"disc[{set_name}] s={s:g}"] = evaluate(discriminant_rotation(x, y, s))
            results[f"tot[{set_name}] s={s:g}"] = evaluate(total_over_within_rotation(x, y, s))
    header = f"{'ordering':<26}" + "".join(f"{d:>7}" for d in DIMS)
    for name in trials:
        print(f"\n{name} EER %\n{header}")
        for key, r in results.items():
            print(f"{key:<26}" + "".join(f"{r[name][d]:7.2f}" for d in DIMS))
    write_text_atomic(out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
