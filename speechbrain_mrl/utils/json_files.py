"""JSON files in and out: standard JSON only, and errors that name the file.

``json.dumps`` writes NaN and Infinity, which other JSON readers refuse; ``json.loads``
errors do not say which file was broken.
"""
import json
import math

__all__ = ["read_json", "dumps"]


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value, indent=1):
    """Standard JSON text of ``value``, NaN and Inf written as ``null``.

    Example
    -------
    >>> dumps({"loss": float("nan"), "eer": [1.5, float("inf")]}, indent=None)
    '{"loss": null, "eer": [1.5, null]}'
    """
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def read_json(path):
    """The JSON in ``path``; a broken file is a ValueError naming it.

    Example
    -------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = path.write_text("{not json")
    >>> read_json(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
     ...
    ValueError: .../results.json is not valid JSON (Expecting property name ...: line 1 column 2 (char 1))
    """
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
