"""Starting a Matryoshka head from a pretrained backbone, and evaluating heads on trials.

The frozen-backbone stage of the recipe starts the head
(:class:`~speechbrain_mrl.model.matryoshka.MatryoshkaProjection`) from the
backbone's own embedding layer plus a rotation, and the per-size AAM
classifiers (:class:`~speechbrain_mrl.training.losses.MatryoshkaAAMLoss`) from speaker
centroids, so training starts from the backbone's accuracy.

Authors
-------
 * speechbrain-mrl developers
"""
import logging

import torch

from speechbrain_mrl.training.losses import class_centroids
from speechbrain_mrl.utils.metrics import id_metrics

__all__ = ["ORDERINGS", "window_rows", "pooled_statistics", "init_head_from_backbone", "evaluate_trials"]

ORDERINGS = ("discriminant", "pca", "identity")

logger = logging.getLogger(__name__)


def window_rows(rows, duration=None, min_duration=2.0, sample_rate=16000):
    """Manifest rows re-cut into ``duration``-second windows of each file's listed audio.

    The rows of one file (e.g. the consecutive segments a data preparation
    cut) are merged into one span, from their first start to their last stop,
    which is cut into consecutive windows; ``duration=None`` gives the whole
    span. Windows (tails included) shorter than ``min_duration`` are left out,
    so files shorter than that give none.

    Arguments
    ---------
    rows : dict of str to dict
        Manifest rows by ID (``wav``, ``start``, ``stop``, ``spk_id``).
    duration : float, optional
        Window length in seconds (None: whole spans).
    min_duration : float
        Shortest window kept, in seconds.
    sample_rate : int
        Sample rate of ``start``/``stop``.

    Returns
    -------
    dict of str to dict
        ``{"<file>@<start>-<stop>": row}`` with ``duration`` (s), ``wav``, ``start``,
        ``stop`` and ``spk_id``.

    Example
    -------
    >>> rows = {f"a_{i}": {"wav": "a.flac", "start": 32000 * i, "stop": 32000 * (i + 1),
    ...                    "spk_id": "s1"} for i in range(5)}
    >>> [(r["start"], r["stop"]) for r in window_rows(rows, 4.0).values()]
    [(0, 64000), (64000, 128000), (128000, 160000)]
    >>> [r["duration"] for r in window_rows(rows).values()]
    [10.0]
    """
    spans = {}
    for r in rows.values():
        start, stop = int(r["start"]), int(r["stop"])
        first, last, spk = spans.get(r["wav"], (start, stop, r["spk_id"]))
        spans[r["wav"]] = (min(first, start), max(last, stop), spk)
    out = {}
    min_len = int(round(min_duration * sample_rate))
    for wav, (first, last, spk) in sorted(spans.items()):
        step = int(round(duration * sample_rate)) if duration else last - first
        for start in range(first, last, step):
            stop = min(start + step, last)
            if stop - start >= min_len:
                out[f"{wav}@{start}-{stop}"] = {"wav": wav, "start": start, "stop": stop, "spk_id": spk,
                                         "duration": (stop - start) / sample_rate}
    return out


@torch.no_grad()
def pooled_statistics(encoder, loader, device="cpu", augment=None):
    """Pooled statistics, speaker labels and IDs of every item of a loader (eval mode).

    Arguments
    ---------
    encoder : MRLEncoder
        Its front end and lobe give the statistics.
    loader : iterable
        Batches with ``id``, ``sig`` (padded waveforms and relative lengths)
        and optionally ``spk_id_encoded``.
    device : str or torch.device
        Where the encoder runs.
    augment : callable, optional
        ``(wavs, lens) -> (wavs, lens)`` applied first (e.g. SpeechBrain's
        ``Augmenter``; its ``replicate_labels`` is used for the labels).

    Returns
    -------
    stats : torch.Tensor
        ``[N, pool_dim]`` on the CPU.
    labels : torch.Tensor or None
        ``[N]`` speaker indices, None when the batches carry none.
    ids : list of str
        Item IDs (of the loader's items).
    """
    encoder.eval()
    stats, labels, ids = [], [], []
    for batch in loader:
        batch = batch.to(device)
        wavs, lens = batch.sig
        if augment is not None:
            wavs, lens = augment(wavs, lens)
        stats.append(encoder.pool_features(wavs, lens).cpu())
        if hasattr(batch, "spk_id_encoded"):
            lab = batch.spk_id_encoded.data.reshape(-1)
            if augment is not None:
                lab = augment.replicate_labels(lab)
            labels.append(lab.cpu())
        ids.extend(batch.id)
    return torch.cat(stats), (torch.cat(labels) if labels else None), ids


@torch.no_grad()
def init_head_from_backbone(encoder, loss, loader, device="cpu", ordering="discriminant",
                            shrinkage=0.1, augment=None, augment_passes=0, long_loader=None):
    """Starts ``encoder.mrl_head`` from the backbone and ``loss``'s classifiers from centroids.

    The head copies the backbone's embedding layer with a rotation of its
    output (every full-size cosine score is kept): ``ordering="pca"`` orders
    the axes by variance of the clean crops of ``loader``;
    ``"discriminant"`` by speaker discrimination, estimated on the clean
    crops plus ``augment_passes`` passes of them through ``augment`` (plus
    the longer windows of ``long_loader``: within-speaker scatter measured on
    short crops alone is dominated by what is said, which long utterances
    average out);
    ``"identity"`` keeps the backbone's own axis order (for a backbone
    trained end to end with the per-size loss, whose prefixes are nested
    already).

    Arguments
    ---------
    encoder : MRLEncoder
        With the Matryoshka head to initialise.
    loss : MatryoshkaAAMLoss
        Its classifiers start at the speaker centroids of the head's embeddings.
    loader : iterable
        Training crops with speaker labels.
    device : str or torch.device
        Where the encoder runs.
    ordering : str
        ``discriminant``, ``pca`` or ``identity``.
    shrinkage : float
        Within-speaker scatter shrinkage of the discriminant ordering.
    augment : callable, optional
        Waveform augmentation of the extra passes.
    augment_passes : int
        Extra augmented passes (discriminant ordering only).
    long_loader : iterable, optional
        Longer windows of the training speakers' audio, with speaker labels
        (e.g. :func:`window_rows`), added to the discriminant fit.

    Returns
    -------
    dict
        State dict of the PCA-ordered head (PCA truncation of the backbone
        embedding: the baseline a Matryoshka head must beat), on the CPU.
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    stats, labels, _ = pooled_statistics(encoder, loader, device)
    model, head = encoder.embedding_model, encoder.mrl_head
    layer = (model.bn, model.linear, model.bn2)
    head.init_from_embedding_layer(*layer, stats=stats)
    pca_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    n_rows = stats.shape[0]
    if ordering == "discriminant":
        passes = [pooled_statistics(encoder, loader, device, augment)[:2]
                  for _ in range(augment_passes)]
        if long_loader is not None:
            passes.append(pooled_statistics(encoder, long_loader, device)[:2])
        all_stats = torch.cat([stats] + [s for s, _ in passes])
        all_labels = torch.cat([labels] + [lab for _, lab in passes])
        head.init_from_embedding_layer(*layer, stats=all_stats, labels=all_labels,
                                       shrinkage=shrinkage)
        n_rows = all_stats.shape[0]
    elif ordering == "identity":
        head.init_from_embedding_layer(*layer)
    head.eval()
    emb = head(stats.to(device)).cpu()
    centroids, counts = class_centroids(emb, labels, loss.n_classes)
    loss.init_classifiers_from_centroids(centroids)
    logger.info("head initialised from the backbone (%s ordering on %d crops); %d/%d speaker "
                "centroids", ordering, n_rows, int((counts > 0).sum()), loss.n_classes)
    return pca_state


@torch.no_grad()
def evaluate_trials(encoder, loaders, trials, device="cpu", heads=()):
    """Metrics of a trial list for the encoder and its baselines, from one backbone pass.

    Arguments
    ---------
    encoder : MRLEncoder
        The model; with a Matryoshka head, the baselines below are computed too.
    loaders : list of iterable
        Batches of the trial utterances (``id``, ``sig``).
    trials : tuple
        ``(labels, enrol_ids, test_ids)``.
    device : str or torch.device
        Where the encoder runs.
    heads : list of (str, dict)
        ``(name, head_state_dict)``: the head with other weights (e.g. the PCA one).

    Returns
    -------
    dict of str to dict
        ``test`` for the encoder, plus, with a head, ``test_backbone`` (the
        backbone's own embedding) and one entry per name of ``heads``; each
        ``{size: {"EER", "threshold", "minDCF"}}``.
    """
    stats, ids = [], []
    for loader in loaders:
        s, _, i = pooled_statistics(encoder, loader, device)
        stats.append(s)
        ids.extend(i)
    stats = torch.cat(stats)

    def metrics(embed, dims):
        emb = torch.cat([embed(chunk.to(device)).cpu() for chunk in stats.split(4096)])
        return id_metrics(dict(zip(ids, emb)), trials, dims)

    out = {"test": metrics(encoder.embed_pooled, encoder.mrl_dims)}
    if encoder.mrl_head is None:
        return out
    model = encoder.embedding_model
    out["test_backbone"] = metrics(model.embed, [model.embed_dim])
    trained = {k: v.clone() for k, v in encoder.mrl_head.state_dict().items()}
    for name, state in heads:
        encoder.mrl_head.load_state_dict(state)
        out[name] = metrics(encoder.embed_pooled, encoder.mrl_dims)
    encoder.mrl_head.load_state_dict(trained)
    return out
