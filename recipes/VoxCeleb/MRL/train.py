#!/usr/bin/env python3
"""Trains Matryoshka speaker embeddings on a ReDimNet backbone, on VoxCeleb-style speaker folders.

The hparams file names the data preparation (``prepare_data``:
:func:`speechbrain_mrl.data.voxceleb.prepare_voxceleb`, or the demo's
:func:`speechbrain_mrl.data.speech_commands.prepare_demo`), run on the
main process; the training (:class:`speechbrain_mrl.training.brain.MRLBrain`) is
shared with the other recipes (:mod:`speechbrain_mrl.training.brain`).

Usage::

    python train.py hparams/mrl_b2.yaml --data_folder /path/to/voxceleb
    torchrun --nproc_per_node=4 train.py hparams/mrl_b2.yaml --data_folder ...

Authors
-------
 * speechbrain-mrl developers
"""
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_mrl.training.brain import check_options, train_and_evaluate, training_command


def main(argv):
    """Checks the options, prepares the data (main process), trains and evaluates."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    check_options(hparams)
    command = training_command(hparams_file, overrides)  # before any work: it cannot fail late
    if hparams["prepare_data"] is not None:  # null: the manifests are already there
        run_on_main(hparams["prepare_data"])
    return train_and_evaluate(hparams, run_opts, command)


if __name__ == "__main__":
    main(sys.argv[1:])
