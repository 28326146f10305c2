"""Multi-size additive-angular-margin (AAM) loss for Matryoshka embeddings.

For every nested size ``d`` in ``mrl_dims``, the prefix ``emb[..., :d]`` goes
through a cosine classifier and SpeechBrain's
:class:`speechbrain.nnet.losses.AdditiveAngularMargin` wrapped in
:class:`speechbrain.nnet.losses.LogSoftmaxWrapper`; the per-size losses are
combined with per-size weights.

Authors
-------
 * speechbrain-mrl developers
"""
import math

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from torch import nn

from speechbrain_mrl.utils.checkpoints import register_safe_hooks
from speechbrain_mrl.model.sizes import is_int, validate_mrl_dims

__all__ = ["MatryoshkaAAMLoss", "set_aam_margin", "class_centroids"]


def set_aam_margin(aam, margin):
    """Sets the margin of an ``AdditiveAngularMargin`` in place.

    SpeechBrain precomputes ``cos_m``, ``sin_m``, ``th`` and ``mm`` in the
    constructor, so assigning ``aam.margin`` alone has no effect; this keeps
    them consistent.

    Arguments
    ---------
    aam : speechbrain.nnet.losses.AdditiveAngularMargin
        The module to change.
    margin : float
        New margin (radians).

    Example
    -------
    >>> aam = AdditiveAngularMargin(margin=0.2, scale=30.0)
    >>> set_aam_margin(aam, 0.0)
    >>> aam.margin, aam.cos_m, aam.sin_m
    (0.0, 1.0, 0.0)
    """
    margin = float(margin)
    aam.margin = margin
    aam.cos_m = math.cos(margin)
    aam.sin_m = math.sin(margin)
    aam.th = math.cos(math.pi - margin)
    aam.mm = math.sin(math.pi - margin) * margin


@torch.no_grad()
def class_centroids(embeddings, targets, n_classes):
    """Mean embedding of every class (for :meth:`MatryoshkaAAMLoss.init_classifiers_from_centroids`).

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[N, D]`` or ``[N, 1, D]`` embeddings.
    targets : torch.Tensor
        ``[N]`` or ``[N, 1]`` integer labels in ``[0, n_classes)``.
    n_classes : int
        Number of classes.

    Returns
    -------
    centroids : torch.Tensor
        ``[n_classes, D]``; all-zero rows for classes without samples.
    counts : torch.Tensor
        ``[n_classes]`` number of samples per class.

    Example
    -------
    >>> c, n = class_centroids(torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]),
    ...                        torch.tensor([0, 0, 2]), 3)
    >>> c
    tensor([[2., 1.],
            [0., 0.],
            [0., 5.]])
    >>> n
    tensor([2, 0, 1])
    """
    if embeddings.dim() == 3 and embeddings.shape[1] == 1:
        embeddings = embeddings[:, 0, :]
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [N, D] or [N, 1, D], got {tuple(embeddings.shape)}")
    targets = _check_targets(targets, embeddings.shape[0], n_classes)
    sums = torch.zeros(n_classes, embeddings.shape[1], dtype=torch.float64, device=embeddings.device)
    sums.index_add_(0, targets, embeddings.detach().to(torch.float64))
    counts = torch.bincount(targets, minlength=n_classes)
    centroids = sums / counts.clamp_min(1)[:, None].to(sums)
    return centroids.to(embeddings.dtype), counts


def _check_n_classes(n_classes):
    if not is_int(n_classes) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")


def _check_targets(targets, batch, n_classes):
    """Validates labels ``[B]`` / ``[B, 1]`` and returns them as long ``[B]``."""
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    if targets.dim() == 2 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(
            f"targets must have shape [{batch}] or [{batch}, 1] (integer labels), "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        if not torch.equal(targets, targets.round()):
            raise ValueError("targets must hold integer class labels")
    elif targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"targets must hold integer class labels, got dtype {targets.dtype}")
    targets = targets.long()
    if batch > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"targets must be in [0, {n_classes - 1}] (n_classes={n_classes}), "
                f"got values in [{lo}, {hi}]"
            )
    return targets


@register_safe_hooks
class MatryoshkaAAMLoss(nn.Module):
    """Additive-angular-margin softmax loss at every Matryoshka size.

    ``total = sum_d w_d * L_d`` where ``L_d`` is SpeechBrain's
    ``LogSoftmaxWrapper(AdditiveAngularMargin(margin, scale))`` (mean
    cross-entropy over the batch) on the cosine logits of the size-``d``
    prefix. With ``normalize_weights=True`` (default) the weights are divided
    by their sum, so the total is a weighted *mean* of the per-size losses and
    has the magnitude of a single AAM loss whatever the number of sizes; the
    default weights are equal (``1 / len(mrl_dims)`` each).

    A size with weight 0 is still computed for logging but without gradient.

    Arguments
    ---------
    n_classes : int or None
        Number of training speakers; None: not known yet (the classifiers are
        created by :meth:`set_n_classes`, e.g. once the training speakers are
        counted, before the first forward pass or checkpoint load).
    embed_dim : int
        Full embedding size (default 256).
    mrl_dims : sequence of int, optional
        Nested sizes (validated as in
        :class:`speechbrain_mrl.model.matryoshka.MatryoshkaProjection`); default
        quarters of ``embed_dim``.
    margin : float
        AAM margin (radians) once warm-up is over (default 0.2).
    scale : float
        AAM scale (default 30).
    weights : sequence of float, optional
        Non-negative per-size weights, one per ``mrl_dims`` entry, not all
        zero. Default equal.
    normalize_weights : bool
        Divide the weights by their sum (default True).
    shared_classifier : bool
        False (default): one cosine classifier
        (:class:`speechbrain.lobes.models.ECAPA_TDNN.Classifier`) per size,
        in :attr:`classifiers` keyed by ``str(d)``. True: one weight matrix
        ``[n_classes, embed_dim]`` (:attr:`classifier`) whose first ``d``
        columns classify the size-``d`` prefix.
    margin_warmup_epochs : int
        Linear margin warm-up length (default 0: full margin at once). After
        ``on_epoch_start(epoch)`` (epochs counted from 1, as SpeechBrain's
        epoch counter does) the margin is
        ``margin * min(1, (epoch - 1) / margin_warmup_epochs)``: 0 in epoch 1,
        full from epoch ``margin_warmup_epochs + 1``. Before any call the
        margin is that of epoch 1.
    easy_margin : bool
        Passed to ``AdditiveAngularMargin``.

    Example
    -------
    >>> loss_fn = MatryoshkaAAMLoss(n_classes=5, embed_dim=8, mrl_dims=[2, 4, 8])
    >>> emb = torch.randn(6, 1, 8, requires_grad=True)
    >>> labels = torch.tensor([[0], [1], [2], [3], [4], [0]])
    >>> total, per_dim = loss_fn(emb, labels)
    >>> total.backward()
    >>> sorted(per_dim)
    [2, 4, 8]
    >>> bool(total > 0)
    True
    """

    def __init__(
        self,
        n_classes,
        embed_dim=256,
        mrl_dims=None,
        margin=0.2,
        scale=30.0,
        weights=None,
        normalize_weights=True,
        shared_classifier=False,
        margin_warmup_epochs=0,
        easy_margin=False,
    ):
        super().__init__()
        if n_classes is not None:
            _check_n_classes(n_classes)
        self.mrl_dims = validate_mrl_dims(mrl_dims, embed_dim)
        self.embed_dim = int(embed_dim)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not is_int(margin_warmup_epochs) or margin_warmup_epochs < 0:
            raise ValueError(
                f"margin_warmup_epochs must be an int >= 0, got {margin_warmup_epochs!r}"
            )
        self.base_margin = float(margin)
        self.scale = float(scale)
        self.margin_warmup_epochs = int(margin_warmup_epochs)
        self.shared_classifier = bool(shared_classifier)

        if weights is None:
            weights = [1.0] * len(self.mrl_dims)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.mrl_dims):
            raise ValueError(
                f"weights must have one entry per mrl_dims entry ({len(self.mrl_dims)}), "
                f"got {len(weights)}"
            )
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all zero, got {weights}")
        if normalize_weights:
            total = sum(weights)
            weights = [w / total for w in weights]
        self.normalize_weights = bool(normalize_weights)
        #: effective per-size weights ``{d: w}`` (after normalisation)
        self.weights = dict(zip(self.mrl_dims, weights))

        self.n_classes = self.classifier = self.classifiers = None
        if n_classes is not None:
            self.set_n_classes(n_classes)

        self.aam = AdditiveAngularMargin(margin=self.base_margin, scale=self.scale, easy_margin=easy_margin)
        self.log_softmax = LogSoftmaxWrapper(self.aam)
        self.on_epoch_start(1)

    def extra_repr(self):
        """Adds the main settings to ``repr``."""
        return (
            f"n_classes={self.n_classes}, embed_dim={self.embed_dim}, mrl_dims={self.mrl_dims}, "
            f"margin={self.margin:.4g}/{self.base_margin:.4g}, scale={self.scale}, "
            f"weights={self.weights}, shared_classifier={self.shared_classifier}"
        )

    def set_n_classes(self, n_classes):
        """Creates the classifiers of a loss built with ``n_classes=None``.

        On a loss that has them already, only checks that ``n_classes`` is its
        number of classes. The new classifiers are on the CPU, as in the
        constructor.

        Arguments
        ---------
        n_classes : int
            Number of training speakers (>= 2).

        Returns
        -------
        MatryoshkaAAMLoss
            ``self``.

        Raises
        ------
        ValueError
            For an invalid number, or one other than the loss's.

        Example
        -------
        >>> loss_fn = MatryoshkaAAMLoss(None, embed_dim=8, mrl_dims=[4, 8])
        >>> tuple(loss_fn.set_n_classes(5).classifier_weight(4).shape)
        (5, 4)
        >>> loss_fn.set_n_classes(6)
        Traceback (most recent call last):
        ...
        ValueError: this loss has n_classes=5, got 6
        """
        _check_n_classes(n_classes)
        if self.n_classes is not None:
            if int(n_classes) != self.n_classes:
                raise ValueError(f"this loss has n_classes={self.n_classes}, got {n_classes}")
            return self
        self.n_classes = int(n_classes)
        if self.shared_classifier:
            self.classifier = Classifier(input_size=self.embed_dim, out_neurons=self.n_classes)
        else:
            self.classifiers = nn.ModuleDict(
                {str(d): Classifier(input_size=d, out_neurons=self.n_classes) for d in self.mrl_dims}
            )
        return self

    def _require_classes(self):
        if self.n_classes is None:
            raise RuntimeError("the loss has no classifiers yet: call set_n_classes(n) first")

    # ------------------------------------------------------------ margin
    @property
    def margin(self):
        """The AAM margin in use now (after warm-up scheduling)."""
        return self.aam.margin

    def margin_at_epoch(self, epoch):
        """Margin used during ``epoch`` (counted from 1).

        Example
        -------
        >>> m = MatryoshkaAAMLoss(3, embed_dim=4, mrl_dims=[2, 4], margin=0.2,
        ...                       margin_warmup_epochs=2)
        >>> [round(m.margin_at_epoch(e), 3) for e in (1, 2, 3, 4)]
        [0.0, 0.1, 0.2, 0.2]
        """
        if self.margin_warmup_epochs == 0:
            return self.base_margin
        frac = min(1.0, max(0.0, (float(epoch) - 1.0) / self.margin_warmup_epochs))
        return self.base_margin * frac

    def on_epoch_start(self, epoch):
        """Sets the margin for ``epoch`` (counted from 1); returns it.

        Call it from ``Brain.on_stage_start`` for the TRAIN stage.
        """
        margin = self.margin_at_epoch(epoch)
        set_aam_margin(self.aam, margin)
        return margin

    # ------------------------------------------------------------ classifiers
    def classifier_weight(self, dim):
        """The (unnormalised) classifier weight ``[n_classes, dim]`` for size ``dim``."""
        if dim not in self.weights:
            raise ValueError(f"dim must be one of mrl_dims={self.mrl_dims}, got {dim!r}")
        self._require_classes()
        if self.shared_classifier:
            return self.classifier.weight[:, :dim]
        return self.classifiers[str(dim)].weight

    def cosine_logits(self, embeddings, dim):
        """Cosine between the size-``dim`` prefix and each class weight, ``[B, n_classes]``.

        Computed in float32 even under autocast: at scale 30 the rounding of
        a half-precision cosine would add noticeable logit noise.
        """
        emb = self._check_embeddings(embeddings)
        weight = self.classifier_weight(dim)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            x = F.normalize(emb[:, :dim].float(), dim=1)
            w = F.normalize(weight.float(), dim=1)
            return F.linear(x, w)

    @torch.no_grad()
    def init_classifiers_from_centroids(self, centroids):
        """Sets every size's classifier to the L2-normalised prefixes of class centroids.

        For size ``d`` the weight becomes ``normalize(centroids[:, :d])``; with
        ``shared_classifier`` the shared matrix becomes ``centroids`` (each
        slice is L2-normalised in the forward pass anyway). Rows that are all
        zero or not finite (classes without samples, see
        :func:`class_centroids`) keep their current weights.

        With a head initialised from a pretrained backbone this makes the
        initial loss low, so random classifiers do not push destructive
        gradients into the head and backbone.

        Arguments
        ---------
        centroids : torch.Tensor
            ``[n_classes, embed_dim]`` mean (full-size) embedding per class.

        Returns
        -------
        MatryoshkaAAMLoss
            ``self``.
        """
        self._require_classes()
        if not isinstance(centroids, torch.Tensor):
            centroids = torch.as_tensor(centroids)
        if centroids.dim() != 2 or tuple(centroids.shape) != (self.n_classes, self.embed_dim):
            raise ValueError(
                f"centroids must have shape [{self.n_classes}, {self.embed_dim}] "
                f"(n_classes, embed_dim), got {tuple(centroids.shape)}"
            )
        centroids = centroids.detach().to(torch.float64)
        valid = torch.isfinite(centroids).all(dim=1) & (centroids.abs().sum(dim=1) > 0)
        if self.shared_classifier:
            w = self.classifier.weight
            w[valid] = F.normalize(centroids[valid], dim=1).to(w)
        else:
            for d in self.mrl_dims:
                w = self.classifiers[str(d)].weight
                prefix = centroids[:, :d]
                ok = valid & (prefix.abs().sum(dim=1) > 0)
                w[ok] = F.normalize(prefix[ok], dim=1).to(w)
        return self

    # ------------------------------------------------------------ forward
    def _check_embeddings(self, embeddings):
        if not isinstance(embeddings, torch.Tensor):
            raise ValueError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() == 3 and embeddings.shape[1] == 1:
            embeddings = embeddings[:, 0, :]
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"embeddings must have shape [B, {self.embed_dim}] or [B, 1, {self.embed_dim}] "
                f"(embed_dim={self.embed_dim}), got {tuple(embeddings.shape)}"
            )
        return embeddings

    def forward(self, embeddings, targets, length=None):
        """Computes the weighted multi-size AAM loss.

        Arguments
        ---------
        embeddings : torch.Tensor
            Full-size embeddings ``[B, embed_dim]`` or ``[B, 1, embed_dim]``.
        targets : torch.Tensor
            Integer speaker labels ``[B]`` or ``[B, 1]`` in ``[0, n_classes)``.
        length : torch.Tensor, optional
            Ignored (SpeechBrain's signature).

        Returns
        -------
        total : torch.Tensor
            Scalar weighted loss.
        per_dim : dict of int to torch.Tensor
            ``{d: L_d}`` detached scalar per-size losses, for logging.
        """
        emb = self._check_embeddings(embeddings)
        self._require_classes()
        targets = _check_targets(targets, emb.shape[0], self.n_classes).to(emb.device)
        labels = targets.unsqueeze(1)  # [B, 1] as LogSoftmaxWrapper expects
        total = None
        per_dim = {}
        for d in self.mrl_dims:
            w = self.weights[d]
            if w == 0:
                with torch.no_grad():
                    loss_d = self.log_softmax(self.cosine_logits(emb, d).unsqueeze(1), labels)
            else:
                loss_d = self.log_softmax(self.cosine_logits(emb, d).unsqueeze(1), labels)
                total = w * loss_d if total is None else total + w * loss_d
            per_dim[d] = loss_d.detach()
        return total, per_dim
