"""Open-set thresholds and 1:1 cascades calibrated on verification trial lists.

:func:`calibrate_thresholds` fits a cosine threshold per prefix size (the
equal-error-rate one, or one at a chosen false-alarm rate, for
:meth:`speechbrain_mrl.search.index.SpeakerIndex.set_thresholds`);
:func:`cascade_verify` decides trials on a small prefix and escalates those
near its threshold to the full size, with the margin from
:func:`calibrate_margin`; :func:`open_set_rates` measures open-set
identification at a false-alarm rate. Every name here is also importable from
:mod:`speechbrain_mrl.search.index`. No torch import at module level.

Authors
-------
 * speechbrain-mrl developers
"""
import numpy as np

from speechbrain_mrl.search.cosine import _prefix_cosine
from speechbrain_mrl.model.sizes import is_int

__all__ = ["calibrate_thresholds", "cascade_verify", "calibrate_margin", "open_set_rates"]


def _score_at_rate(scores, rate):
    """The score that at most ``rate`` of ``scores`` lie above (the ``floor(rate * n) + 1``-th
    largest), or None when the rate allows every score."""
    ranked = np.sort(np.asarray(scores))[::-1]
    allowed = int(np.floor(rate * len(ranked) + 1e-9))
    return float(ranked[allowed]) if allowed < len(ranked) else None


def _check_rate(value, name, allow_one=False):
    """A rate in ``(0, 1)`` (``allow_one``: ``(0, 1]``) as a float; anything else is refused."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not (0.0 < rate < 1.0 or (allow_one and rate == 1.0)):
        raise ValueError(f"{name} must be in (0, {'1]' if allow_one else '1)'}, got {value!r}")
    return rate


def _trial_sides(enrol, test):
    """The two sides of a trial list as float32 ``[T, D]`` arrays; refuses NaN/Inf rows."""
    enrol, test = np.asarray(enrol, np.float32), np.asarray(test, np.float32)
    if enrol.shape != test.shape or enrol.ndim != 2:
        raise ValueError(f"enrol and test must be [T, D] alike, got {enrol.shape} and {test.shape}")
    for side, x in (("enrol", enrol), ("test", test)):
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"{side} embeddings: trials {np.flatnonzero(bad)[:5].tolist()} hold "
                             "NaN/Inf")
    return enrol, test


def _check_size(d, embed_dim, name):
    """``d`` as an int in ``[1, embed_dim]``; anything else is refused."""
    if not (is_int(d) or isinstance(d, np.integer)) or not 1 <= d <= embed_dim:
        raise ValueError(f"{name} must be an integer in [1, {embed_dim}] (the embedding size), "
                         f"got {d!r}")
    return int(d)


def calibrate_thresholds(enrol, test, labels, dims, false_alarm=None):
    """Cosine threshold per prefix size from a verification trial list.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    labels : array-like of bool
        ``[T]``, True for same-speaker trials.
    dims : list of int
        Prefix sizes to calibrate, each in ``[1, D]``.
    false_alarm : float, optional
        None: the equal-error-rate threshold. Otherwise the lowest threshold
        at which at most this fraction of the different-speaker trials score
        above it (for 1:N search against N speakers, a query meets about N
        different-speaker comparisons: aim accordingly lower).

    Returns
    -------
    dict
        ``{size: threshold}`` (score > threshold: accepted).

    Raises
    ------
    ValueError
        Mismatched shapes, NaN/Inf embeddings (naming the trials), a size
        outside ``[1, D]``, or trials of one label only.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((400, 8))
    >>> same = np.arange(400) < 200
    >>> b = np.where(same[:, None], a + 0.5 * rng.standard_normal((400, 8)),
    ...              rng.standard_normal((400, 8)))
    >>> thr = calibrate_thresholds(a, b, same, [4, 8], false_alarm=0.05)
    >>> scores = _prefix_cosine(a, b, 8)
    >>> bool(np.mean(scores[~same] > thr[8]) <= 0.05)
    True
    """
    import torch

    from speechbrain_mrl.utils.metrics import error_rates

    if false_alarm is not None:
        false_alarm = _check_rate(false_alarm, "false_alarm")
    enrol, test = _trial_sides(enrol, test)
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != (len(enrol),):
        raise ValueError(f"labels must be [T] = [{len(enrol)}] (one per trial), got "
                         f"{list(labels.shape)}")
    dims = [_check_size(d, enrol.shape[1], "each size of dims") for d in dims]
    if labels.all() or not labels.any():
        raise ValueError("calibration needs same-speaker and different-speaker trials")
    out = {}
    for d in dims:
        scores = _prefix_cosine(enrol, test, d)
        if false_alarm is None:
            out[d] = error_rates(torch.from_numpy(scores[labels]),
                                 torch.from_numpy(scores[~labels]))["EER_threshold"]
        else:
            highest = _score_at_rate(scores[~labels], false_alarm)
            out[d] = -1.0 if highest is None else highest
    return out


def cascade_verify(enrol, test, small_dim, small_threshold, full_threshold, margin):
    """1:1 decisions from a small prefix, escalated to the full size near its threshold.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    small_dim : int
        Prefix size of the first decision, in ``[1, D]``.
    small_threshold, full_threshold : float
        Cosine thresholds at ``small_dim`` and at full size.
    margin : float
        Trials whose small-prefix score is within ``margin`` of ``small_threshold``
        are decided at full size.

    Returns
    -------
    decisions : numpy.ndarray
        ``[T]`` bool, True: same speaker.
    escalated : numpy.ndarray
        ``[T]`` bool, the trials decided at full size.

    Example
    -------
    >>> a = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> b = np.array([[1.0, 0.1, 0.0], [0.1, 1.0, 0.0]])
    >>> cascade_verify(a, b, 2, 0.5, 0.5, margin=0.1)
    (array([ True, False]), array([False, False]))
    """
    enrol, test = _trial_sides(enrol, test)
    small = _prefix_cosine(enrol, test, _check_size(small_dim, enrol.shape[1], "small_dim"))
    escalated = np.abs(small - small_threshold) < margin
    decisions = small > small_threshold
    if escalated.any():
        full = _prefix_cosine(enrol[escalated], test[escalated], enrol.shape[1])
        decisions[escalated] = full > full_threshold
    return decisions, escalated


def calibrate_margin(enrol, test, small_dim, small_threshold, full_threshold, agreement=0.999):
    """The smallest :func:`cascade_verify` margin whose decisions equal full-size ones on
    at least ``agreement`` of the calibration trials.

    Returns
    -------
    margin : float
    escalated_fraction : float
        Fraction of the calibration trials decided at full size with it.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((500, 16)), rng.standard_normal((500, 16))
    >>> margin, escalated = calibrate_margin(a, b, 4, 0.0, 0.0, agreement=1.0)
    >>> bool((cascade_verify(a, b, 4, 0.0, 0.0, margin)[0]
    ...       == (_prefix_cosine(a, b, 16) > 0.0)).all())
    True
    """
    agreement = _check_rate(agreement, "agreement", allow_one=True)
    enrol, test = _trial_sides(enrol, test)
    small = _prefix_cosine(enrol, test, _check_size(small_dim, enrol.shape[1], "small_dim"))
    full = _prefix_cosine(enrol, test, enrol.shape[1]) > full_threshold
    distance = np.abs(small - small_threshold)
    wrong = np.sort(distance[(small > small_threshold) != full])[::-1]
    allowed = int(np.floor((1.0 - agreement) * len(small) + 1e-9))
    margin = float(np.nextafter(wrong[allowed], np.inf)) if len(wrong) > allowed else 0.0
    return margin, float(np.mean(distance < margin))


def open_set_rates(top_ids, top_scores, truth, enrolled, far=0.01):
    """Open-set identification: detection-and-identification rate at a false-alarm rate.

    The threshold is set on the queries of speakers who are not enrolled: at most
    ``far`` of them may score at or above it with their best match. A query of an
    enrolled speaker counts as found when its best match is right and scores at or
    above the threshold.

    Arguments
    ---------
    top_ids : list of str
        Best-matching speaker per query.
    top_scores : array-like
        Its score per query.
    truth : list of str
        True speaker per query.
    enrolled : array-like of bool
        Whether each query's speaker is enrolled.
    far : float
        Target false-alarm rate.

    Returns
    -------
    dict
        ``threshold``, ``far`` (measured), ``dir`` (detection and identification rate).

    Example
    -------
    >>> r = open_set_rates(["a", "b", "a", "b"], [0.9, 0.8, 0.3, 0.6], ["a", "c", "x", "y"],
    ...                    [True, True, False, False], far=0.5)
    >>> r["dir"], r["far"]
    (0.5, 0.5)
    """
    far = _check_rate(far, "far")
    scores = np.asarray(top_scores, dtype=np.float64)
    enrolled = np.asarray(enrolled, dtype=bool)
    if enrolled.all() or not enrolled.any():
        raise ValueError("open-set rates need queries of enrolled and of unknown speakers")
    highest = _score_at_rate(scores[~enrolled], far)
    threshold = -np.inf if highest is None else float(np.nextafter(highest, np.inf))
    right = np.array([i == t for i, t in zip(top_ids, truth)])
    found = right & (scores >= threshold) & enrolled
    return {"threshold": threshold, "far": float(np.mean(scores[~enrolled] >= threshold)),
            "dir": float(found.sum() / enrolled.sum())}
