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
    speechbrain-mrl export    --model_folder M --onnx model.onnx --check
    speechbrain-mrl package   --recipe_output results/mrl_b2/1986 --scores scores/ \\
        --output_folder hub/ --dry-run

The same option means the same thing in every sub-command: ``--model_folder``
(a model folder or hub id), ``--csv``/``--folder``/``--files``/``--file_list``
(the audio, :mod:`speechbrain_mrl.sources`), ``--index`` (a speaker-index
folder), ``--output_folder`` (a folder the command writes), ``--report`` (a
JSON file of the printed results), ``--device``, ``--batch_size``,
``--num_workers``, ``--precision``. Results are printed in the order the
audio was given. An error prints one line naming the problem and exits with
status 1 (``--debug``: the traceback); third-party log messages are shown
only with ``--verbose``.

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import logging
import math
import sys
import warnings

__all__ = ["build_parser", "main", "run"]

PROG = "speechbrain-mrl"
#: Loggers of libraries whose start-up messages read as failures (FAISS's
#: "Could not load library with AVX512 support", ONNX's rewriter passes).
NOISY_LOGGERS = ("faiss", "faiss.loader", "onnx_ir", "onnxscript", "onnxruntime", "torch.onnx",
                 "speechbrain", "huggingface_hub", "urllib3", "numexpr", "matplotlib")


# ------------------------------------------------------------------ value checks
def finite_float(text):
    """A finite number (``nan``/``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def rate(low_open=True, high_open=True):
    """A type for a rate in ``(0, 1)`` (``high_open=False``: ``(0, 1]``)."""
    def parse(text):
        value = finite_float(text)
        if value < 0 or value > 1 or (low_open and value == 0) or (high_open and value == 1):
            bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a rate in {bounds}, got {text!r}")
        return value
    parse.__name__ = "rate"
    return parse


def positive_int(text):
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def threshold_or_index(text):
    """A finite cosine threshold, or ``index`` (the index's own threshold)."""
    return "index" if text == "index" else finite_float(text)


def size_list(text):
    """A comma-separated list of sizes: ``64`` or ``32,128``."""
    try:
        return [positive_int(d) for d in text.split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


class _HelpFormatter(argparse.HelpFormatter):
    """Help with every option's default: ``none``/``off`` spelled out, unless the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or not action.option_strings or "default" in text
                or action.default is argparse.SUPPRESS):
            return text
        if action.default is None:
            default = "none"
        elif isinstance(action.default, bool):
            default = "on" if action.default else "off"
        elif isinstance(action.default, list):
            default = " ".join(map(str, action.default)) or "none"
        else:
            default = action.default
        return f"{text} (default: {default})".replace("%", "%%")


# ------------------------------------------------------------------ shared options
def _common():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--verbose", action="store_true",
                   help="show informational log messages, third-party ones included")
    return p


def _model():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model_folder", required=True,
                   help="model folder (written by the recipe) or HuggingFace Hub id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch_size", type=positive_int, default=16, help="utterances per batch")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers reading audio")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision of the model")
    return p


def _report():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--report", default=None, help="also write the results to this JSON file")
    return p


def _index(lock=False):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--index", required=True, help="speaker-index folder")
    if lock:
        p.add_argument("--lock_timeout", type=finite_float, default=60.0,
                       help="seconds to wait for another process writing the index")
    return p


def _add_sources(parser, kinds=("csv", "folder", "files", "file_list")):
    help_ = {"csv": "CSV manifest: ID,wav[,start,stop,duration,spk_id]",
             "folder": "every audio file below this folder (speaker: first sub-folder; "
                       "ID: relative path)",
             "files": "audio files (ID: the path)",
             "file_list": "text file with one audio path per line"}
    group = parser.add_mutually_exclusive_group(required=True)
    for kind in kinds:
        group.add_argument(f"--{kind}", nargs="+" if kind == "files" else None, default=None,
                           help=help_[kind])


def _sub(sub, name, help_, parents):
    return sub.add_parser(name, help=help_, description=help_, parents=[_common(), *parents],
                          formatter_class=_HelpFormatter)


# ------------------------------------------------------------------ sub-commands
def _extract_parser(sub):
    p = _sub(sub, "extract", "embed audio into resumable shards (every size from one pass)",
             [_model()])
    _add_sources(p)
    p.add_argument("--output_folder", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--shard_size", type=positive_int, default=10000, help="utterances per shard")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="storage of the embeddings")


def _enrol_parser(sub):
    p = _sub(sub, "enrol", "enrol speakers into a speaker index (created if absent)",
             [_model(), _index(lock=True)])
    _add_sources(p)
    p.add_argument("--replace", action="store_true",
                   help="re-enrol speakers that are already in the index")
    p.add_argument("--first_stage", choices=["flat", "hnsw", "ivf"], default=None,
                   help="FAISS first stage of a new index (default flat); on an existing index "
                        "it must match unless --rebuild")
    p.add_argument("--dtype", choices=["float32", "float16"], default=None,
                   help="vector storage of a new index (default float32); on an existing index "
                        "it must match unless --rebuild")
    p.add_argument("--rebuild", action="store_true",
                   help="change an existing index's --first_stage/--dtype")


def _search_options(p):
    p.add_argument("--stages", type=positive_int, nargs="*", default=None,
                   help="funnel prefix sizes before the final size, e.g. 64 or 32 128 (none "
                        "given: exact search; default: 64, or the smallest size)")
    p.add_argument("--shortlist", type=positive_int, default=100,
                   help="candidates kept after each funnel stage")


def _identify_parser(sub):
    p = _sub(sub, "identify", "top-k enrolled speakers of each recording",
             [_model(), _index(), _report()])
    _add_sources(p)
    p.add_argument("--k", type=positive_int, default=5, help="speakers returned per recording")
    _search_options(p)
    p.add_argument("--final_dim", type=positive_int, default=None,
                   help="size of the last ranking and the scores (default: full size)")
    p.add_argument("--threshold", type=threshold_or_index, default=None,
                   help="open set: a cosine threshold, or 'index' (the index's threshold for "
                        "--final_dim); matches under it are dropped")


def _verify_parser(sub):
    p = _sub(sub, "verify", "are two recordings of the same speaker?", [_model(), _report()])
    p.add_argument("enrol_file", help="first recording")
    p.add_argument("test_file", help="second recording")
    p.add_argument("--target_dim", type=positive_int, default=None,
                   help="embedding size (default: full size)")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="cosine threshold (default: the model's calibrated one for --target_dim)")


def _evaluate_parser(sub):
    p = _sub(sub, "evaluate", "identification accuracy of a labelled list, per funnel",
             [_model(), _index(), _report()])
    _add_sources(p, ("csv", "folder"))
    _search_options(p)
    p.add_argument("--funnels", type=size_list, nargs="*", default=[],
                   help="funnels besides exact search, e.g. 64 32,128")
    p.add_argument("--far", type=rate(), default=0.01,
                   help="false-alarm rate of the open-set evaluation (queries of speakers who "
                        "are not enrolled)")


def _calibrate_parser(sub):
    p = _sub(sub, "calibrate", "fit the index's open-set thresholds on a trial list",
             [_model(), _index(lock=True)])
    p.add_argument("--csv", nargs="+", required=True,
                   help="manifests of the trial list's utterances")
    p.add_argument("--trials", required=True, help="trial list (<1|0> <enrol ID> <test ID>)")
    p.add_argument("--false_alarm", type=rate(), default=None,
                   help="threshold at this false-alarm rate of the different-speaker trials "
                        "(default: the equal error rate)")


def _cascade_parser(sub):
    p = _sub(sub, "cascade", "cascade verification: a small prefix, the full size near its threshold",
             [_model(), _report()])
    p.add_argument("--csv", nargs="+", required=True,
                   help="manifests of the evaluated trials' utterances (e.g. enrol and test)")
    p.add_argument("--trials", required=True, help="evaluated trial list")
    p.add_argument("--calibration_csv", nargs="+", required=True,
                   help="manifests of the calibration trials' utterances")
    p.add_argument("--calibration_trials", required=True,
                   help="trial list the margin is calibrated on")
    p.add_argument("--small_dim", type=positive_int, default=64, help="size of the first decision")
    p.add_argument("--agreement", type=rate(high_open=False), nargs="+", default=[0.999],
                   help="share of calibration trials that must get the full-size decision")


def _export_parser(sub):
    p = _sub(sub, "export", "export the model to ONNX (and TorchScript, int8 ONNX)", [])
    p.add_argument("--model_folder", required=True, help="model folder written by the recipe")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--torchscript", default=None, help="also write a TorchScript file here")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset")
    p.add_argument("--int8", default=None, help="also write an int8 ONNX model here (static with "
                                                "--calibration_csv, else dynamic)")
    p.add_argument("--calibration_csv", default=None,
                   help="manifest of real speech for static int8 scales")
    p.add_argument("--calibration_clips", type=positive_int, default=64,
                   help="clips of --calibration_csv used")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime with PyTorch on random audio (max abs difference)")


def _package_parser(sub):
    from speechbrain_mrl.hub import add_arguments

    p = _sub(sub, "package", "package a trained model for the HuggingFace Hub (and upload it)", [])
    add_arguments(p)


BUILDERS = {"extract": _extract_parser, "enrol": _enrol_parser, "identify": _identify_parser,
            "verify": _verify_parser, "evaluate": _evaluate_parser,
            "calibrate": _calibrate_parser, "cascade": _cascade_parser,
            "export": _export_parser, "package": _package_parser}


def build_parser():
    """The ``speechbrain-mrl`` argument parser (a sub-parser per job)."""
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_common()], formatter_class=_HelpFormatter,
        description="Matryoshka ReDimNet speaker embeddings: extraction, verification, search, "
                    "export")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for build in BUILDERS.values():
        build(sub)
    return parser


# ------------------------------------------------------------------ dispatch
def _job(command):
    """The function that runs ``command`` (imported on use: ``--help`` stays fast)."""
    if command == "extract":
        from speechbrain_mrl.extract import run_extract as job
    elif command == "export":
        from speechbrain_mrl.export import run_export as job
    elif command == "package":
        from speechbrain_mrl.hub import run_package as job
    else:
        from speechbrain_mrl import search_cli

        job = getattr(search_cli, command)
    return job


def quiet_libraries(verbose=False):
    """Silences third-party log messages and warnings unless ``verbose``."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    logging.getLogger("speechbrain_mrl").setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", module="torch.onnx")


def main(argv=None):
    """Parses ``argv`` and runs the sub-command; returns its result (errors are raised)."""
    args = build_parser().parse_args(argv)
    return _job(args.command)(args)


def run(argv=None):
    """Console entry point: one-line errors and exit status 1 (``--debug``: traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        _job(args.command)(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line
        if args.debug:
            raise
        message = "; ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
        message = message or type(err).__name__
        if isinstance(err, KeyError):
            message = message.strip("'\"")
        print(f"{PROG} {args.command}: error: {message} (--debug shows the traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
