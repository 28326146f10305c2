"""The nested sizes of a Matryoshka embedding and the per-size thresholds, each checked here.

:func:`validate_mrl_dims` (the sizes), :func:`check_target_dim` (a requested
size) and :func:`check_thresholds` (cosine thresholds per size) are the one
check of each value, shared by the head, the loss, the interface, the model
folder and the speaker index. No torch import: a speaker index loads without it.

Authors
-------
 * speechbrain-mrl developers
"""
import math
import numbers

__all__ = ["default_mrl_dims", "validate_mrl_dims", "check_target_dim", "check_threshold",
           "check_thresholds", "is_int"]


def default_mrl_dims(embed_dim):
    """Default nested sizes: quarters of ``embed_dim`` (64/128/192/256 for 256).

    Arguments
    ---------
    embed_dim : int
        Full embedding size.

    Returns
    -------
    list of int
        Sorted, unique, positive sizes ending with ``embed_dim``.

    Example
    -------
    >>> default_mrl_dims(256)
    [64, 128, 192, 256]
    >>> default_mrl_dims(2)
    [1, 2]
    """
    dims = sorted({(embed_dim * k) // 4 for k in (1, 2, 3, 4)} - {0})
    return dims


def validate_mrl_dims(mrl_dims, embed_dim):
    """Check and return the nested sizes as a list of int.

    Arguments
    ---------
    mrl_dims : sequence of int or None
        Strictly increasing positive ints whose last element equals
        ``embed_dim``. ``None`` gives :func:`default_mrl_dims`.
    embed_dim : int
        Full embedding size.

    Returns
    -------
    list of int
        The validated sizes.

    Raises
    ------
    ValueError
        If a size is not a positive int, the list is empty, unsorted, has
        duplicates, exceeds ``embed_dim`` or does not end with ``embed_dim``.

    Example
    -------
    >>> validate_mrl_dims([8, 16, 32], 32)
    [8, 16, 32]
    >>> validate_mrl_dims([16, 8, 32], 32)
    Traceback (most recent call last):
      ...
    ValueError: mrl_dims must be sorted in increasing order, got [16, 8, 32]
    """
    if not is_int(embed_dim) or embed_dim <= 0:
        raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
    if mrl_dims is None:
        return default_mrl_dims(int(embed_dim))
    dims = list(mrl_dims)
    if len(dims) == 0:
        raise ValueError("mrl_dims must not be empty")
    for d in dims:
        if not is_int(d):
            raise ValueError(f"mrl_dims must hold ints, got {d!r} in {dims}")
        if d <= 0:
            raise ValueError(f"mrl_dims must be positive, got {d} in {dims}")
        if d > embed_dim:
            raise ValueError(
                f"mrl_dims must not exceed embed_dim={embed_dim}, got {d} in {dims}"
            )
    dims = [int(d) for d in dims]
    if len(set(dims)) != len(dims):
        raise ValueError(f"mrl_dims must not contain duplicates, got {dims}")
    if dims != sorted(dims):
        raise ValueError(f"mrl_dims must be sorted in increasing order, got {dims}")
    if dims[-1] != embed_dim:
        raise ValueError(
            f"the last element of mrl_dims must equal embed_dim={embed_dim}, got {dims}"
        )
    return dims


def is_int(value):
    """True for Python/NumPy integers and 0-d integer tensors; False for bools and floats."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if hasattr(value, "is_floating_point") and hasattr(value, "dim"):  # a torch.Tensor
        return (value.dim() == 0 and not value.is_floating_point() and not value.is_complex()
                and str(value.dtype) != "torch.bool")
    return False


def check_target_dim(target_dim, embed_dim):
    """``target_dim`` as an int in ``[1, embed_dim]`` (None: ``embed_dim``).

    Raises
    ------
    ValueError
        For a non-integer (floats and bools included) or out-of-range size.

    Example
    -------
    >>> import torch
    >>> check_target_dim(None, 16), check_target_dim(torch.tensor(4), 16)
    (16, 4)
    >>> check_target_dim(17, 16)
    Traceback (most recent call last):
     ...
    ValueError: target_dim must be in [1, 16] (embed_dim), got 17
    """
    if target_dim is None:
        return int(embed_dim)
    if not is_int(target_dim):
        raise ValueError(f"target_dim must be an int or None, got {target_dim!r}")
    target_dim = int(target_dim)
    if target_dim <= 0 or target_dim > embed_dim:
        raise ValueError(f"target_dim must be in [1, {embed_dim}] (embed_dim), got {target_dim}")
    return target_dim


def check_threshold(value, name="threshold"):
    """One cosine threshold as a float in [-1, 1]: NaN/Inf, booleans, non-numbers and values
    no cosine can reach refused.

    Arguments
    ---------
    value : number or 1-element tensor/array
        The threshold.
    name : str
        What it is, for the message.

    Returns
    -------
    float

    Example
    -------
    >>> check_threshold(0.5)
    0.5
    >>> check_threshold(float("inf"))
    Traceback (most recent call last):
     ...
    ValueError: threshold must be a finite number, got inf
    >>> check_threshold(5)
    Traceback (most recent call last):
     ...
    ValueError: threshold must be a cosine in [-1, 1], got 5.0
    """
    number = value
    if not isinstance(number, numbers.Real) and hasattr(number, "item"):  # a tensor or array
        size = number.numel() if hasattr(number, "numel") else getattr(number, "size", 1)
        number = number.item() if size == 1 else None
    if (isinstance(number, bool) or type(number).__name__ == "bool_"
            or not isinstance(number, numbers.Real) or not math.isfinite(number)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not -1.0 <= float(number) <= 1.0:
        raise ValueError(f"{name} must be a cosine in [-1, 1], got {float(number)!r}")
    return float(number)


def check_thresholds(thresholds, mrl_dims, source="thresholds"):
    """The one check of per-size cosine thresholds: ``{int size: finite float}``, sorted.

    Arguments
    ---------
    thresholds : dict or None
        ``{size: threshold}`` (keys may be strings, as in JSON); None: ``{}``.
    mrl_dims : list of int
        The sizes a threshold may be given for.
    source : str
        Where the thresholds come from (a file name), for the messages.

    Returns
    -------
    dict of int to float

    Raises
    ------
    ValueError
        Naming ``source``: not a mapping, a size not in ``mrl_dims``, a value
        that is not a finite number (NaN, Infinity, strings, booleans).

    Example
    -------
    >>> check_thresholds({"8": 0.4, 4: 0.3}, [4, 8])
    {4: 0.3, 8: 0.4}
    >>> check_thresholds({4: float("nan")}, [4, 8], "calibration.json")
    Traceback (most recent call last):
     ...
    ValueError: calibration.json: the threshold for size 4 must be a finite number, got nan
    """
    if thresholds is None:
        return {}
    if not isinstance(thresholds, dict):
        raise ValueError(f"{source}: thresholds must be a mapping {{size: threshold}}, got "
                         f"{type(thresholds).__name__}")
    out = {}
    for size, value in thresholds.items():
        try:
            d = int(size)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: threshold key {size!r} is not an embedding size") from None
        if isinstance(size, bool) or d not in mrl_dims:
            raise ValueError(f"{source}: a threshold is given for size {size!r}, which is not one "
                             f"of the sizes {list(mrl_dims)}")
        out[d] = check_threshold(value, f"{source}: the threshold for size {d}")
    return dict(sorted(out.items()))
