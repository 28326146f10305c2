#!/usr/bin/env python3
"""Cosine speaker verification of Matryoshka embeddings, every size at once.

Computes each enrol/test utterance's embedding once (one forward pass gives
all Matryoshka sizes), scores a VoxCeleb-format trial list
(``<1|0> <enrol path> <test path>``) with cosine similarity and, when a
cohort of training utterances is given, with s-norm and adaptive s-norm
(top-k cohort), and reports EER and minDCF (p_target 0.01 and 0.05) per size.

Run::

    python speaker_verification_cosine.py hparams/verification.yaml \\
        --model_folder=results/mrl_b2/model --enrol_csv=data/enrol.csv \\
        --test_csv=data/test.csv --trials=data/veri_test2.txt \\
        --train_csv=data/train.csv --output_folder=results/scoring_b2 --device=cuda:0

    # the official ReDimNet embedding (no Matryoshka head), for side-by-side tables
    python speaker_verification_cosine.py hparams/verification.yaml \\
        --official_checkpoint=b2-vox2-ptn.pt ... --output_folder=results/scoring_official

A thin call to :func:`speechbrain_mrl.inference.scoring.score_trial_list` (the same as
``speechbrain-mrl score``) with SpeechBrain-style hyperparameters. Outputs in
``output_folder``: ``results.json``
(``{"<dim>": {"EER": %, "minDCF@0.01": .., "minDCF@0.05": .., "s-norm": {..}, "as-norm": {..}}}``),
``results.md``, ``scores_<dim>.txt`` (``enrol test label score``, with the
paths of the trial list; plus ``scores_<dim>_s-norm.txt`` /
``scores_<dim>_as-norm.txt``), ``scoring_info.json`` and, with ``save_embeddings``, ``embeddings.pt``
(``{"ids", "embeddings" [N, D] full size, "dims", "model"}``).

See the function for the ID convention, the metrics and the memory bounds.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_mrl.inference.scoring import score_trial_list

#: hparams keys that name an argument of score_trial_list differently
RENAMED = {"train_csv": "cohort_csv", "dims": "sizes"}
#: hparams keys that are not scoring options
NOT_OPTIONS = {"enrol_csv", "test_csv", "__set_seed"}


def run(hparams, device="cpu"):
    """Scores the trial list of loaded hyperparameters; returns the results dict."""
    options = {RENAMED.get(k, k): v for k, v in hparams.items() if k not in NOT_OPTIONS}
    return score_trial_list(manifests=[hparams["enrol_csv"], hparams["test_csv"]], device=device,
                            **options)


def main(argv=None):
    """Command-line entry point (SpeechBrain-style: yaml file + overrides)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    device = run_opts["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu")
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return run(hparams, device)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
