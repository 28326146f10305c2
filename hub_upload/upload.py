#!/usr/bin/env python3
"""Builds a HuggingFace Hub folder from a trained model and uploads it.

A thin script over ``speechbrain-mrl package`` (same options; ``--help`` lists them)::

    python hub_upload/upload.py --recipe_output results/mrl_b2/1986 --scores results/scoring_b2 \\
        --output_folder hub/mrl-redimnet-b2 --repo_id user/mrl-redimnet-b2

The folder receives the model files, ``calibration.json``, ``results.json``, this folder's
``custom_interface.py`` and the model card rendered from ``model_card.md``; the token comes
from ``HF_TOKEN``. ``--dry_run`` writes the folder and lists what would be uploaded.
"""
import sys

from speechbrain_mrl import cli

if __name__ == "__main__":
    cli.run(["package", *sys.argv[1:]])
