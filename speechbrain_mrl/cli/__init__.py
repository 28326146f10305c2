"""The ``speechbrain-mrl`` command: every parser and entry point of the package.

Nothing below ``cli`` parses arguments; each job module takes plain values.
"""
from speechbrain_mrl.cli.main import COMMANDS, build_parser, main, run

__all__ = ["COMMANDS", "build_parser", "main", "run"]
