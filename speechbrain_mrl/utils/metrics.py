"""Speaker-verification metrics and cosine scoring of nested (Matryoshka) embeddings.

Used by the training recipe (validation/test, :func:`prefix_metrics`) and the
scoring script (:func:`score_trials`, :func:`verification_metrics`), so that
both report the same numbers.

EER and minDCF follow the definitions of ``speechbrain.utils.metric_stats``
(thresholds are the unique scores and the midpoints between them; a trial is
accepted when its score is above the threshold; ``c_miss = c_fa = 1``).
:func:`verification_metrics` calls the toolkit's ``EER`` / ``minDCF`` up to
``toolkit_max_trials`` trials and the equivalent sorted computation
(:func:`error_rates`, ``O(N log N)``) above, where the toolkit's quadratic
loops would be too slow.

Score normalisation: symmetric s-norm (whole cohort) and adaptive s-norm
(as-norm, the ``topk`` closest cohort entries of each utterance), with a cohort
of utterances or of speaker means (:func:`cohort_matrix`).

Authors
-------
 * speechbrain-mrl developers
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from speechbrain.utils.metric_stats import EER, minDCF
from tqdm import tqdm

__all__ = [
    "P_TARGETS",
    "NORMS",
    "error_rates",
    "verification_metrics",
    "prefix_metrics",
    "id_metrics",
    "cohort_statistics",
    "normalise",
    "cohort_groups",
    "cohort_matrix",
    "score_trials",
]

#: Priors of the reported minDCF values.
P_TARGETS = (0.01, 0.05)
#: Score normalisations :func:`score_trials` can run.
NORMS = ("s-norm", "as-norm")


# --------------------------------------------------------------------------- metrics
def error_rates(positive_scores, negative_scores, p_targets=P_TARGETS):
    """EER and minDCF with the definitions of ``speechbrain.utils.metric_stats``.

    Thresholds are the unique scores and the midpoints between them; a trial
    is accepted when its score is above the threshold. Computed by sorting
    (``O(N log N)`` time, ``O(N)`` memory) instead of the toolkit's
    quadratic loops; the numbers are the same.

    Arguments
    ---------
    positive_scores, negative_scores : torch.Tensor
        Target and non-target scores.
    p_targets : tuple of float
        Priors of the minDCF (``c_miss = c_fa = 1``).

    Returns
    -------
    dict
        ``EER`` (fraction), ``EER_threshold``, ``minDCF@<p>``, ``minDCF@<p>_threshold``.

    Example
    -------
    >>> pos, neg = torch.tensor([0.6, 0.7, 0.8, 0.5]), torch.tensor([0.4, 0.3, 0.55, 0.1])
    >>> r = error_rates(pos, neg)
    >>> round(r["EER"], 4) == round(EER(pos, neg)[0], 4), r["minDCF@0.01"] == minDCF(pos, neg)[0]
    (True, True)
    """
    pos = positive_scores.detach().float().flatten().cpu()
    neg = negative_scores.detach().float().flatten().cpu()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"need target and non-target trials, got {pos.numel()} and {neg.numel()}")
    thr = torch.unique(torch.cat([pos, neg]))  # sorted
    thr = torch.sort(torch.cat([thr, (thr[:-1] + thr[1:]) / 2]))[0]
    pos_s, neg_s = torch.sort(pos)[0], torch.sort(neg)[0]
    frr = torch.searchsorted(pos_s, thr, right=True).float() / pos.numel()
    far = (neg.numel() - torch.searchsorted(neg_s, thr, right=True)).float() / neg.numel()
    i = int(torch.argmin((far - frr).abs()))
    out = {"EER": float((far[i].item() + frr[i].item()) / 2), "EER_threshold": float(thr[i])}
    for p in p_targets:
        c_det = frr * p + far * (1 - p)
        j = int(torch.argmin(c_det))
        out[f"minDCF@{p:g}"] = float(c_det[j])
        out[f"minDCF@{p:g}_threshold"] = float(thr[j])
    return out


def verification_metrics(scores, labels, toolkit_max_trials=5000):
    """EER (%) and minDCF of one score set.

    Arguments
    ---------
    scores : array-like
        ``[N]`` trial scores.
    labels : array-like
        ``[N]`` labels (1 or True: target, 0 or False: non-target).
    toolkit_max_trials : int
        Up to this many trials the metrics come from
        ``speechbrain.utils.metric_stats.EER`` / ``minDCF``; above, from
        :func:`error_rates` (same numbers, ``O(N log N)``).

    Returns
    -------
    dict
        ``EER`` (%), ``minDCF@<p>`` (normalised: divided by ``min(p, 1 - p)``, the cost
        of the best system that always or never accepts, as NIST and wespeaker report it)
        and ``minDCF@<p>_unnormalized`` (as ``speechbrain.utils.metric_stats.minDCF``
        returns it) for ``p`` in :data:`P_TARGETS`, ``EER_threshold``,
        ``n_trials``, ``n_target``, ``metric_backend``.

    Raises
    ------
    ValueError
        Scores and labels of different lengths, NaN/Inf scores (saying how
        many), or a list without target or without non-target trials.

    Example
    -------
    >>> m = verification_metrics([0.9, 0.4, 0.5, 0.2], [1, 1, 0, 0])
    >>> m["EER"], round(m["minDCF@0.01"], 4), m["n_target"], m["metric_backend"]
    (50.0, 0.5, 2, 'speechbrain.utils.metric_stats')
    >>> verification_metrics([0.9, float("nan"), 0.1], [1, 0, 0])
    Traceback (most recent call last):
     ...
    ValueError: 1 of 3 scores are NaN or Inf
    """
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
    labels = torch.as_tensor(labels).flatten()
    if labels.numel() != scores.numel():
        raise ValueError(f"{scores.numel()} scores for {labels.numel()} labels")
    n_bad = int((~torch.isfinite(scores)).sum())
    if n_bad:
        raise ValueError(f"{n_bad} of {scores.numel()} scores are NaN or Inf")
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"need target and non-target trials, got {pos.numel()} target and "
                         f"{neg.numel()} non-target")
    if scores.numel() <= toolkit_max_trials:
        eer, eer_thr = EER(pos, neg)
        res = {"EER": eer, "EER_threshold": eer_thr}
        for p in P_TARGETS:
            dcf, dcf_thr = minDCF(pos, neg, p_target=p)
            res[f"minDCF@{p:g}"] = dcf
            res[f"minDCF@{p:g}_threshold"] = dcf_thr
        backend = "speechbrain.utils.metric_stats"
    else:
        res = error_rates(pos, neg)
        backend = "sorted"
    out = {"EER": 100.0 * res["EER"]}
    for p in P_TARGETS:  # normalised by the cost of the best trivial system, as NIST reports it
        out[f"minDCF@{p:g}"] = res[f"minDCF@{p:g}"] / min(p, 1 - p)
    for p in P_TARGETS:
        out[f"minDCF@{p:g}_unnormalized"] = res[f"minDCF@{p:g}"]
    out["EER_threshold"] = res["EER_threshold"]
    out["n_trials"] = int(scores.numel())
    out["n_target"] = int(pos.numel())
    out["metric_backend"] = backend
    return out


def prefix_metrics(embeddings, labels, enrol_idx, test_idx, dims, toolkit_max_trials=5000):
    """EER, its threshold and minDCF (p_target 0.01) of cosine scoring at every prefix size.

    The score of a trial at size ``d`` is the cosine of the L2-normalised
    first ``d`` coordinates of its two embeddings; the metrics are those of
    :func:`verification_metrics`. With the output of
    :func:`speechbrain_mrl.data.manifests.resolve_trials` and ``index = {ID: row}``::

        labels, enrol_ids, test_ids, _ = resolve_trials(trials, index)
        prefix_metrics(emb, labels, [index[i] for i in enrol_ids],
                       [index[i] for i in test_ids], dims)

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[N, D]`` full-size embeddings.
    labels : array-like
        ``[T]`` trial labels (1/True target, 0/False non-target).
    enrol_idx, test_idx : array-like of int
        ``[T]`` rows of ``embeddings`` of each trial's enrol and test utterance.
    dims : list of int
        Prefix sizes (at most ``D``).
    toolkit_max_trials : int
        See :func:`verification_metrics`.

    Returns
    -------
    dict of int to dict
        ``{d: {"EER": %, "threshold": EER threshold, "minDCF": minDCF@0.01}}``.

    Raises
    ------
    ValueError
        As :func:`verification_metrics`, or a size larger than ``D``.

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.5], [0.0, 1.0, 0.0], [0.1, 0.9, -0.5]])
    >>> m = prefix_metrics(emb, [1, 0, 1, 0], [0, 0, 2, 2], [1, 2, 3, 1], [2, 3])
    >>> {d: (v["EER"], v["minDCF"]) for d, v in m.items()}
    {2: (0.0, 0.0), 3: (0.0, 0.0)}
    """
    mat = torch.as_tensor(embeddings).detach().float().cpu()
    if mat.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got {tuple(mat.shape)}")
    ia = torch.as_tensor(enrol_idx, dtype=torch.long)
    ib = torch.as_tensor(test_idx, dtype=torch.long)
    labels = torch.as_tensor(labels)
    out = {}
    for d in dims:
        if not 1 <= int(d) <= mat.shape[1]:
            raise ValueError(f"prefix size {d} is not in [1, {mat.shape[1]}]")
        e = F.normalize(mat[:, :int(d)], dim=1)
        m = verification_metrics((e[ia] * e[ib]).sum(dim=1), labels, toolkit_max_trials)
        out[int(d)] = {"EER": m["EER"], "threshold": float(m["EER_threshold"]),
                       "minDCF": float(m["minDCF@0.01"])}
    return out


def id_metrics(embeddings, trials, dims):
    """:func:`prefix_metrics` of a trial list given ``{ID: embedding}``.

    Arguments
    ---------
    embeddings : dict of str to torch.Tensor
        Full-size embedding per utterance ID.
    trials : tuple
        ``(labels, enrol_ids, test_ids)`` as :func:`speechbrain_mrl.data.manifests.resolve_trials`
        returns them (without the names).
    dims : list of int
        Prefix sizes.

    Returns
    -------
    dict of int to dict
        As :func:`prefix_metrics`.

    Example
    -------
    >>> emb = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.9, 0.1]), "c": torch.tensor([0.0, 1.0])}
    >>> id_metrics(emb, ([1, 0], ["a", "a"], ["b", "c"]), [2])[2]["EER"]
    0.0
    """
    labels, enrol, test = trials
    ids = sorted(embeddings)
    index = {i: n for n, i in enumerate(ids)}
    mat = torch.stack([embeddings[i].float().flatten() for i in ids])
    return prefix_metrics(mat, labels, [index[i] for i in enrol], [index[i] for i in test], dims)


# --------------------------------------------------------------------------- normalisation
def cohort_statistics(emb, cohort, topk=300, chunk=4096, device="cpu"):
    """Per-utterance mean/std of its cosine scores against a cohort.

    Arguments
    ---------
    emb : torch.Tensor
        ``[N, d]`` L2-normalised utterance embeddings.
    cohort : torch.Tensor
        ``[M, d]`` L2-normalised cohort embeddings.
    topk : int
        Size of the adaptive cohort (the ``topk`` closest cohort entries).
    chunk : int
        Utterances per matrix product.
    device : str
        Where the products run.

    Returns
    -------
    dict of str to torch.Tensor
        ``mean``, ``std`` (whole cohort) and ``mean_top``, ``std_top``
        (adaptive cohort), each ``[N]`` on the CPU.

    Example
    -------
    >>> st = cohort_statistics(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), topk=1)
    >>> st["mean"].tolist(), st["mean_top"].tolist(), st["std_top"].tolist()
    ([0.5], [1.0], [0.0])
    """
    k = max(1, min(int(topk), cohort.shape[0]))
    coh = cohort.to(device)
    stats = {"mean": [], "std": [], "mean_top": [], "std_top": []}
    for i in range(0, emb.shape[0], chunk):
        s = emb[i:i + chunk].to(device) @ coh.T
        top = torch.topk(s, k, dim=1).values
        stats["mean"].append(s.mean(1).cpu())
        stats["std"].append(s.std(1, unbiased=cohort.shape[0] > 1).cpu())
        stats["mean_top"].append(top.mean(1).cpu())
        stats["std_top"].append(top.std(1, unbiased=k > 1).cpu())
    return {key: torch.cat(v) for key, v in stats.items()}


def normalise(scores, e_idx, t_idx, stats, kind, eps=1e-8):
    """Symmetric score normalisation: ``s-norm`` (whole cohort) or ``as-norm`` (top-k).

    Arguments
    ---------
    scores : torch.Tensor
        ``[T]`` raw cosine scores.
    e_idx, t_idx : torch.Tensor
        ``[T]`` rows of ``stats`` of each trial's enrol and test utterance.
    stats : dict of str to torch.Tensor
        As :func:`cohort_statistics` returns.
    kind : str
        ``"s-norm"`` or ``"as-norm"``.
    eps : float
        Lower bound of the standard deviations.

    Returns
    -------
    torch.Tensor
        ``0.5 * (z_enrol + z_test)``.

    Example
    -------
    >>> st = {"mean": torch.tensor([0.1, 0.3]), "std": torch.tensor([0.1, 0.2])}
    >>> normalise(torch.tensor([0.5]), torch.tensor([0]), torch.tensor([1]), st, "s-norm")
    tensor([2.5000])
    """
    sfx = "" if kind == "s-norm" else "_top"
    mu, sd = stats["mean" + sfx], stats["std" + sfx]
    ze = (scores - mu[e_idx]) / sd[e_idx].clamp_min(eps)
    zt = (scores - mu[t_idx]) / sd[t_idx].clamp_min(eps)
    return 0.5 * (ze + zt)


def cohort_groups(ids, rows, cohort_type="speaker"):
    """Speaker index per cohort utterance (``speaker`` cohort) or None (``utterance``).

    Arguments
    ---------
    ids : list of str
        Cohort utterance IDs, in the order of the cohort embeddings.
    rows : dict
        Manifest rows ``{ID: {"spk_id": .., ...}}``.
    cohort_type : str
        ``"speaker"`` (cohort of speaker means) or ``"utterance"``.

    Returns
    -------
    torch.Tensor or None
        ``[M]`` speaker indices (speakers in sorted order).

    Example
    -------
    >>> cohort_groups(["a", "b", "c"], {"a": {"spk_id": "s2"}, "b": {"spk_id": "s1"},
    ...                                 "c": {"spk_id": "s2"}})
    tensor([1, 0, 1])
    """
    if cohort_type == "utterance":
        return None
    if cohort_type != "speaker":
        raise ValueError(f"cohort_type must be 'speaker' or 'utterance', got {cohort_type!r}")
    spk = [rows[i].get("spk_id") for i in ids]
    if any(s in (None, "") for s in spk):
        raise ValueError("cohort_type=speaker needs a spk_id column in train_csv")
    pos = {s: i for i, s in enumerate(sorted(set(spk)))}
    return torch.as_tensor([pos[s] for s in spk], dtype=torch.long)


def cohort_matrix(cohort, d, groups=None):
    """L2-normalised size-``d`` cohort: utterances, or speaker means of normalised prefixes.

    Arguments
    ---------
    cohort : torch.Tensor
        ``[M, D]`` full-size cohort utterance embeddings.
    d : int
        Prefix size.
    groups : torch.Tensor, optional
        ``[M]`` speaker index per utterance (:func:`cohort_groups`).

    Returns
    -------
    torch.Tensor
        ``[M, d]`` or ``[n_speakers, d]``.

    Example
    -------
    >>> c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    >>> cohort_matrix(c, 2, torch.tensor([0, 1, 0]))
    tensor([[1., 0.],
            [0., 1.]])
    """
    c = F.normalize(cohort[:, :d].float(), dim=1)
    if groups is None:
        return c
    n = int(groups.max()) + 1
    sums = torch.zeros(n, d).index_add_(0, groups, c)
    return F.normalize(sums, dim=1)


# --------------------------------------------------------------------------- scoring
def score_trials(emb, index, labels, enrol_ids, test_ids, dims, cohort=None, cohort_groups=None,
                 norms=NORMS, topk=300, chunk_size=200000, device="cpu", score_dir=None, progress=True,
                 names=None):
    """Scores a trial list for every size (cosine and, with a cohort, s-norm / as-norm).

    Arguments
    ---------
    emb : torch.Tensor
        ``[N, D]`` full-size utterance embeddings (rows of ``index``).
    index : dict of str to int
        Utterance ID -> row of ``emb``.
    labels : numpy.ndarray
        Trial labels (1 target, 0 non-target).
    enrol_ids, test_ids : list of str
        Utterance IDs per trial.
    dims : list of int
        Sizes to score (prefixes of ``emb``).
    cohort : torch.Tensor, optional
        ``[M, D]`` full-size cohort utterance embeddings.
    cohort_groups : torch.Tensor, optional
        ``[M]`` speaker index per cohort utterance: the cohort is then the
        speaker means (per size, of normalised prefixes); None: utterances.
    norms : tuple of str
        Normalisations to run when a cohort is given.
    topk : int
        Adaptive s-norm cohort size.
    chunk_size : int
        Trials per chunk (bounds memory for million-trial lists).
    device : str
        Where scoring runs.
    score_dir : pathlib.Path, optional
        Where to write ``scores_<dim>[_<norm>].txt`` (``enrol test label score``).
    progress : bool
        Show progress bars.
    names : dict, optional
        ``{ID: name}`` written in the score files (e.g. the trial-list paths);
        default: the IDs.

    Returns
    -------
    dict of int to dict of str to numpy.ndarray
        ``{dim: {"cosine": scores, "s-norm": .., "as-norm": ..}}``.

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> s = score_trials(emb, {"a": 0, "b": 1, "c": 2}, np.array([1, 0]), ["a", "a"], ["b", "c"],
    ...                  [1, 2], progress=False)
    >>> s[1]["cosine"].tolist(), [round(float(x), 4) for x in s[2]["cosine"]]
    ([1.0, 0.0], [0.7071, 0.0])
    """
    e_idx = torch.as_tensor([index[i] for i in enrol_ids], dtype=torch.long)
    t_idx = torch.as_tensor([index[i] for i in test_ids], dtype=torch.long)
    n = len(labels)
    names = names or {}
    kinds = ["cosine"] + (list(norms) if cohort is not None else [])
    out = {}
    for d in dims:
        u = F.normalize(emb[:, :d].float(), dim=1)
        stats = None
        if cohort is not None:
            c = cohort_matrix(cohort, d, cohort_groups)
            stats = cohort_statistics(u, c, topk=topk, device=device)
        u_dev = u.to(device)
        res = {k: np.empty(n, dtype=np.float32) for k in kinds}
        files = {}
        try:
            if score_dir is not None:
                for k in kinds:
                    name = f"scores_{d}.txt" if k == "cosine" else f"scores_{d}_{k}.txt"
                    files[k] = open(pathlib.Path(score_dir) / name, "w")
            bar = tqdm(range(0, n, chunk_size), desc=f"scoring size {d}", disable=not progress,
                       dynamic_ncols=True)
            for a in bar:
                b = min(a + chunk_size, n)
                ei, ti = e_idx[a:b], t_idx[a:b]
                s = (u_dev[ei.to(device)] * u_dev[ti.to(device)]).sum(1).cpu()
                res["cosine"][a:b] = s.numpy()
                for k in kinds[1:]:
                    res[k][a:b] = normalise(s, ei, ti, stats, k).numpy()
                if files:
                    pairs = [(names.get(enrol_ids[j], enrol_ids[j]),
                              names.get(test_ids[j], test_ids[j]), int(labels[j]))
                             for j in range(a, b)]
                for k, fh in files.items():
                    col = res[k]
                    fh.writelines(f"{e} {t} {lab} {col[a + i]:.6f}\n"
                                  for i, (e, t, lab) in enumerate(pairs))
        finally:
            for fh in files.values():
                fh.close()
        out[d] = res
    return out
