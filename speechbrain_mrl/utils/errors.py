"""Errors whose advice has a Python form and a command-line form.

A library error says what to do in Python (``pass overwrite=True``); the same error
reaching ``speechbrain-mrl`` should name the flag (``--overwrite``). :func:`hinted`
attaches the command-line wording, which the command prints instead.
"""

__all__ = ["hinted", "cli_message"]


def hinted(error, cli_message):
    """``error`` carrying ``cli_message``: its whole text as the command line words it.

    Example
    -------
    >>> err = hinted(ValueError("x exists: pass overwrite=True"), "x exists: add --overwrite")
    >>> str(err), cli_message(err)
    ('x exists: pass overwrite=True', 'x exists: add --overwrite')
    """
    error.cli_message = cli_message
    return error


def cli_message(error):
    """The command-line wording of ``error`` (its own text when it has none)."""
    return getattr(error, "cli_message", None) or str(error)
