#!/usr/bin/env python3
"""Cascade verification on a trial list: agreement with full-size decisions and escalation.

Calibrates the margin on one scored list (e.g. the validation trials) and applies it to
another (e.g. the test trials). Both come from ``speaker_verification_cosine.py`` runs
with ``--save_embeddings=True``; the thresholds are the model's ``calibration.json``.

    python benchmarks/cascade_verification.py --model_folder results/demo/mrl/model \\
        --calibration results/scoring_valid --test results/scoring_test --small_dim 64
"""
import argparse
import json
import pathlib

import numpy as np
import torch

from speechbrain_mrl.dataio import read_trials, resolve_trials
from speechbrain_mrl.search import calibrate_margin, cascade_verify


def trial_embeddings(scoring_folder):
    """``(enrol [T, D], test [T, D], labels)`` of a scoring run's trial list."""
    folder = pathlib.Path(scoring_folder)
    saved = torch.load(folder / "embeddings.pt", weights_only=True)
    info = json.loads((folder / "scoring_info.json").read_text())
    index = {u: i for i, u in enumerate(saved["ids"])}
    labels, enrol, test, _ = resolve_trials(read_trials(info["trials"]), index, info["trials"])
    emb = saved["embeddings"].numpy()
    return emb[[index[i] for i in enrol]], emb[[index[i] for i in test]], labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_folder", required=True)
    p.add_argument("--calibration", required=True, help="scoring folder of the calibration list")
    p.add_argument("--test", required=True, help="scoring folder of the evaluation list")
    p.add_argument("--small_dim", type=int, default=64)
    p.add_argument("--agreement", type=float, nargs="+", default=[0.999, 0.99])
    a = p.parse_args(argv)
    thresholds = json.loads((pathlib.Path(a.model_folder) / "calibration.json").read_text())["thresholds"]
    full_dim = max(int(d) for d in thresholds)
    small_thr, full_thr = thresholds[str(a.small_dim)], thresholds[str(full_dim)]
    cal_e, cal_t, _ = trial_embeddings(a.calibration)
    test_e, test_t, labels = trial_embeddings(a.test)
    full = np.einsum("nd,nd->n", *(x / np.linalg.norm(x, axis=1, keepdims=True)
                                   for x in (test_e, test_t))) > full_thr
    print(f"| target agreement | margin | escalated (calibration) | escalated (test) | "
          f"agreement with {full_dim}-d (test) | error rate cascade / {full_dim}-d (test) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for agreement in a.agreement:
        margin, cal_escalated = calibrate_margin(cal_e, cal_t, a.small_dim, small_thr, full_thr,
                                                 agreement)
        decisions, escalated = cascade_verify(test_e, test_t, a.small_dim, small_thr, full_thr, margin)
        err_c, err_f = np.mean(decisions != labels.astype(bool)), np.mean(full != labels.astype(bool))
        print(f"| {agreement} | {margin:.4f} | {cal_escalated:.1%} | {escalated.mean():.1%} | "
              f"{np.mean(decisions == full):.2%} | {err_c:.2%} / {err_f:.2%} |")


if __name__ == "__main__":
    main()
