"""The pieces of the ``speechbrain-mrl`` command line that every sub-command shares.

A job module (:mod:`~speechbrain_mrl.inference.extract`, :mod:`~speechbrain_mrl.cli.search`,
:mod:`~speechbrain_mrl.export.onnx`, :mod:`~speechbrain_mrl.hub.package`) lists its
sub-commands in ``COMMANDS`` (:class:`Command`: help, options, job), built from
the shared options here, so that the same option means the same thing in
every sub-command; :mod:`speechbrain_mrl.cli.main` gathers them into one command.
:func:`run` is the console behaviour: one-line errors, exit status 1,
``--debug`` for the traceback, third-party log noise silenced.

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import collections
import json
import logging
import math
import os
import sys
import warnings

from speechbrain_mrl.utils.errors import cli_message
from speechbrain_mrl.utils.files import write_text_atomic

__all__ = ["Command", "OptionError", "build_parser", "check_option", "load_model", "main", "run"]

#: A sub-command: its one-line help, a function adding its options to a parser, its job,
#: the shared option groups it takes, and ``report(args, result)``: the JSON ``--report``
#: writes (None: the job's result itself).
Command = collections.namedtuple("Command", ["help", "add_arguments", "job", "parents", "report"],
                                 defaults=[(), None])

PROG = "speechbrain-mrl"
#: Loggers of libraries whose start-up messages read as failures (FAISS's
#: "Could not load library with AVX512 support", ONNX's rewriter passes).
NOISY_LOGGERS = ("faiss", "faiss.loader", "onnx_ir", "onnxscript", "onnxruntime", "torch.onnx",
                 "speechbrain", "huggingface_hub", "urllib3", "numexpr", "matplotlib")


class OptionError(ValueError):
    """An option value found wrong only once the job runs (e.g. a size above the model's):
    reported as argparse reports a bad value, with exit status 2."""


def check_option(flag, check, *args):
    """``check(*args)``, its ``ValueError`` re-raised as :class:`OptionError` naming ``flag``."""
    try:
        return check(*args)
    except ValueError as err:
        raise OptionError(f"argument {flag}: {err}") from None


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


def _integer(text, low, meaning=None):
    """``text`` as an integer of at least ``low`` (``meaning``: what the error says it must be)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {meaning or f'at least {low}'}, got {text!r}")
    return value


def positive_int(text):
    """An integer of at least 1."""
    return _integer(text, 1)


def non_negative_int(text):
    """An integer of at least 0."""
    return _integer(text, 0)


def cosine(text):
    """A cosine threshold: a number in [-1, 1]."""
    value = finite_float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine in [-1, 1], got {text!r}")
    return value


def non_negative(text):
    """A finite number of at least 0 (seconds)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


def positive_seconds(text):
    """A finite number of seconds above 0."""
    value = non_negative(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def size_or_zero(text):
    """An embedding size, or 0."""
    return _integer(text, 0, "0 (full size) or a prefix size")


def threshold_or_index(text):
    """A cosine threshold in [-1, 1], or ``index`` (the index's own threshold)."""
    return "index" if text == "index" else cosine(text)


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
def common_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--verbose", action="store_true",
                   help="show informational log messages, third-party ones included")
    p.add_argument("--report", default=None, help="also write the results to this JSON file")
    return p


def model_options():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model_folder", required=True,
                   help="model folder (written by the recipe) or HuggingFace Hub id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch_size", type=positive_int, default=16, help="utterances per batch")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers reading audio")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision of the model")
    p.add_argument("--runtime", default="pytorch", choices=["pytorch", "openvino"],
                   help="openvino: OpenVINO in bf16 on the CPU (fp32 where the CPU has no bf16), "
                        "the fast path on x86; falls back to PyTorch, saying so, without OpenVINO")
    return p


def index_location(text):
    """An index location, parsed once for the whole command (a bad ``qdrant...`` form: exit 2)."""
    from speechbrain_mrl.search.locations import index_location as parse

    try:
        return parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def index_options(lock=False):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--index", required=True, type=index_location,
                   help="speaker index: a folder (FAISS), qdrant://HOST:PORT/COLLECTION (a "
                        "Qdrant server) or qdrant+local:DIR/COLLECTION (Qdrant local mode)")
    if lock:
        p.add_argument("--lock_timeout", type=non_negative, default=60.0,
                       help="seconds to wait for another process writing the index")
    return p


def load_model(args):
    """The ``MRLEncoderClassifier`` of ``--model_folder`` on ``--device`` and ``--runtime``."""
    from speechbrain_mrl.inference.interface import load_model as load

    model = load(args.model_folder, args.device)
    if args.runtime == "openvino":
        from speechbrain_mrl.export.openvino import use_openvino

        logging.getLogger(__name__).info("runtime: %s", use_openvino(model))
    return model


def add_sources(parser, kinds=("csv", "folder", "files", "file_list")):
    help_ = {"csv": "CSV manifest: ID,wav[,start,stop,duration,spk_id]",
             "folder": "every audio file below this folder (speaker: first sub-folder; "
                       "ID: relative path)",
             "files": "audio files (ID: the path)",
             "file_list": "text file with one audio path per line"}
    group = parser.add_mutually_exclusive_group(required=True)
    for kind in kinds:
        group.add_argument(f"--{kind}", nargs="+" if kind == "files" else None, default=None,
                           help=help_[kind])


def build_parser(commands):
    """The ``speechbrain-mrl`` parser of ``commands`` (``{name: Command}``)."""
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common_options()], formatter_class=_HelpFormatter,
        description="Matryoshka ReDimNet speaker embeddings: extraction, verification, search, "
                    "export")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help,
                           parents=[common_options(), *(f() for f in command.parents)],
                           formatter_class=_HelpFormatter)
        command.add_arguments(p)
    return parser


def _own_or_error(record):
    """Log filter: the package's own messages, and other libraries' errors only."""
    return record.name.startswith("speechbrain_mrl") or record.levelno >= logging.ERROR


def quiet_libraries(verbose=False):
    """Silences third-party log messages and warnings unless ``verbose``.

    Without ``verbose`` the root handler passes only this package's messages and other
    libraries' errors, whatever level a library gives its own loggers (SpeechBrain's set
    theirs to INFO when they are created).
    """
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    logging.getLogger("speechbrain_mrl").setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    for handler in logging.getLogger().handlers:
        if verbose:
            handler.removeFilter(_own_or_error)
        else:
            handler.addFilter(_own_or_error)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", module="torch.onnx")


def _plain(value):
    """A JSON value for what ``json`` cannot write itself (paths, NumPy numbers and arrays)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _run_job(command, args):
    """Runs the job; writes its ``--report``; returns its result."""
    result = command.job(args)
    if args.report:
        report = result if command.report is None else command.report(args, result)
        write_text_atomic(args.report, json.dumps(report, indent=1, default=_plain) + "\n")
    return result


def main(commands, argv):
    """Parses ``argv`` and runs the sub-command; returns its result (errors are raised)."""
    args = build_parser(commands).parse_args(argv)
    return _run_job(commands[args.command], args)


def run(commands, argv):
    """Console behaviour: one-line errors and exit status 1 (``--debug``: traceback)."""
    args = build_parser(commands).parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        _run_job(commands[args.command], args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OptionError as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line
        if args.debug:
            raise
        message = "; ".join(line.strip() for line in cli_message(err).strip().splitlines()
                            if line.strip())
        message = message or type(err).__name__
        if isinstance(err, KeyError):
            message = message.strip("'\"")
        print(f"{PROG} {args.command}: error: {message} (--debug shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
