"""``speechbrain-mrl``: one command line, a sub-command per job.

::

    speechbrain-mrl extract   --model_folder M --folder wavs/ --output_folder emb/
    speechbrain-mrl enrol     --model_folder M --folder speakers/ --index idx/
    speechbrain-mrl identify  --model_folder M --index idx/ --files a.wav b.wav
    speechbrain-mrl verify    --model_folder M a.wav b.wav --target_dim 128
    speechbrain-mrl evaluate  --model_folder M --index idx/ --csv queries.csv
    speechbrain-mrl calibrate --model_folder M --index idx/ --csv utts.csv --trials trials.txt
    speechbrain-mrl cascade   --model_folder M --csv test.csv --trials t.txt \\
        --calibration_csv dev.csv --calibration_trials v.txt --small_dim 64
    speechbrain-mrl copy-index idx/ qdrant://localhost:6333/speakers
    speechbrain-mrl export    --model_folder M --onnx model.onnx --check
    speechbrain-mrl package   --recipe_output results/mrl_b2/1986 --scores scores/ \\
        --output_folder hub/ --dry_run

The same option means the same thing in every sub-command: ``--model_folder``
(a model folder or hub id), ``--csv``/``--folder``/``--files``/``--file_list``
(the audio, :mod:`speechbrain_mrl.data.sources`), ``--index`` (a speaker-index
folder or a Qdrant collection), ``--output_folder`` (a folder the command
writes), ``--report`` (a JSON file of the printed results), ``--device``, ``--batch_size``,
``--num_workers``, ``--precision``. Results are printed in the order the
audio was given. An error prints one line naming the problem and exits with
status 1 (``--debug``: the traceback); third-party log messages are shown
only with ``--verbose``.

Authors
-------
 * speechbrain-mrl developers
"""
import sys

from speechbrain_mrl.cli import diarize, export, extract, options, package, prepare, score, search

__all__ = ["COMMANDS", "build_parser", "main", "run"]

#: Every sub-command, in the order ``--help`` lists them.
COMMANDS = {**extract.COMMANDS,
            **{name: search.COMMANDS[name]
               for name in ("enrol", "identify", "verify", "evaluate", "calibrate", "cascade")},
            **score.COMMANDS, **diarize.COMMANDS, "copy-index": search.COMMANDS["copy-index"],
            **export.COMMANDS, **package.COMMANDS, **prepare.COMMANDS}


def build_parser():
    """The ``speechbrain-mrl`` argument parser (a sub-parser per job)."""
    return options.build_parser(COMMANDS)


def main(argv=None):
    """Parses ``argv`` and runs the sub-command; returns its result (errors are raised)."""
    return options.main(COMMANDS, sys.argv[1:] if argv is None else argv)


def run(argv=None):
    """Console entry point: one-line errors and exit status 1 (``--debug``: traceback)."""
    options.run(COMMANDS, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":  # pragma: no cover
    run()
