"""Matryoshka projection head: pooled statistics -> nested speaker embeddings.

One forward pass gives an ``embed_dim``-dimensional embedding whose prefixes
(the first ``d`` coordinates, for every ``d`` in ``mrl_dims``) are themselves
speaker embeddings.

The head can be initialised from a pretrained ReDimNet's own embedding layer
(``BatchNorm1d`` on pooled statistics -> ``Linear`` -> optional ``BatchNorm1d``)
plus a rotation, see :meth:`MatryoshkaProjection.init_from_embedding_layer`.
After that initialisation the full-size output gives exactly the cosine
scores of the pretrained embedding (a rotation preserves cosine), and its
prefixes are the most informative subspaces of it: by variance
(:func:`pca_rotation`) or, given speaker labels, by speaker discrimination
(:func:`discriminant_rotation`). Training starts from the backbone's accuracy
instead of destroying it.

Authors
-------
 * speechbrain-mrl developers
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mrl.utils.checkpoints import register_safe_hooks
from speechbrain_mrl.model.sizes import is_int, check_target_dim, validate_mrl_dims

__all__ = [
    "MatryoshkaProjection",
    "pca_rotation",
    "discriminant_rotation",
]


def _deterministic_signs(axes):
    """Flips each column so that its largest-magnitude entry is positive."""
    idx = axes.abs().argmax(dim=0)
    signs = torch.sign(axes[idx, torch.arange(axes.shape[1], device=axes.device)])
    signs[signs == 0] = 1.0
    return axes * signs[None, :]


def pca_rotation(embeddings):
    """Orthonormal axes of a set of embeddings, by decreasing variance.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[N, P]`` embeddings (N >= 2).

    Returns
    -------
    torch.Tensor
        ``[P, P]`` rotation whose columns are the principal axes, sorted by
        decreasing variance, each with its largest-magnitude entry positive.

    Example
    -------
    >>> x = torch.tensor([[3.0, 0.1], [-3.0, -0.1], [3.0, -0.1], [-3.0, 0.1]])
    >>> pca_rotation(x)
    tensor([[1., 0.],
            [0., 1.]])
    """
    centred = embeddings - embeddings.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (embeddings.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))  # ascending
    return _deterministic_signs(evecs[:, torch.argsort(evals, descending=True)])


def discriminant_rotation(embeddings, labels, shrinkage=0.1):
    """Orthonormal axes of a set of embeddings, by decreasing speaker discrimination.

    On L2-normalised embeddings (what cosine scoring sees), the within-speaker
    scatter ``S_w`` is shrunk towards a scaled identity,
    ``(1 - shrinkage) S_w + shrinkage * trace(S_w) / P * I``, and the
    directions maximising between-speaker over within-speaker scatter
    (generalised eigenvectors, as in LDA) are orthonormalised in order, so
    the first ``d`` axes span the ``d`` most discriminative directions for
    every ``d``. Axes beyond the discriminant rank (at most
    ``n_speakers - 1``) are completed by the principal axes of the remaining
    subspace. Unlike LDA, the result is a rotation: the full-size cosine
    scores do not change, only the order in which prefixes keep information.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[N, P]`` embeddings.
    labels : torch.Tensor
        ``[N]`` integer speaker labels, at least two speakers.
    shrinkage : float
        In ``[0, 1]``: 0 is plain LDA ordering (needs a non-singular
        within-speaker scatter), 1 ignores the within-speaker scatter
        (principal axes of the speaker means).

    Returns
    -------
    torch.Tensor
        ``[P, P]`` rotation (columns are the axes, each with its
        largest-magnitude entry positive), in the dtype of ``embeddings``.

    Raises
    ------
    ValueError
        On bad shapes, fewer than two speakers, a shrinkage outside
        ``[0, 1]`` or a singular within-speaker scatter with shrinkage 0.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> spk = torch.arange(6).repeat_interleave(20)
    >>> centres = torch.zeros(6, 3)
    >>> centres[:, 2] = torch.linspace(-1, 1, 6)   # speakers differ along axis 2
    >>> x = centres[spk] + 0.05 * torch.randn(120, 3) * torch.tensor([1.0, 8.0, 1.0])
    >>> x[:, 0] += 3.0                             # keeps the norms alike
    >>> rot = discriminant_rotation(x.double(), spk)
    >>> int(rot[:, 0].abs().argmax())    # first axis: the speaker axis, not the noisy one
    2
    >>> bool(torch.allclose(rot.T @ rot, torch.eye(3, dtype=rot.dtype)))
    True
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError("embeddings must be a [N, P] torch.Tensor")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be a [N] tensor with N={embeddings.shape[0]} (one per embedding)"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer speaker labels, got dtype {labels.dtype}")
    if not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    classes, inverse, counts = torch.unique(labels.to(embeddings.device), return_inverse=True,
                                            return_counts=True)
    if len(classes) < 2:
        raise ValueError("a discriminant ordering needs at least two speakers")
    n, p = embeddings.shape
    x = F.normalize(embeddings, dim=1)
    counts = counts.to(x.dtype)
    means = torch.zeros(len(classes), p, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    means = means / counts[:, None]
    within = x - means[inverse]
    between = means - x.mean(dim=0)
    s_within = within.T @ within / n
    s_between = (between * counts[:, None]).T @ between / n
    eye = torch.eye(p, dtype=x.dtype, device=x.device)
    s_within = (1 - shrinkage) * s_within + shrinkage * (s_within.trace() / p) * eye
    chol, info = torch.linalg.cholesky_ex(0.5 * (s_within + s_within.T))
    if info != 0:
        raise ValueError("the within-speaker scatter is singular: use shrinkage > 0 "
                         "or more utterances per speaker")
    whiten = torch.linalg.solve_triangular(chol, eye, upper=False)
    ratios, vecs = torch.linalg.eigh(whiten @ s_between @ whiten.T)
    order = torch.argsort(ratios, descending=True)
    ratios, directions = ratios[order], whiten.T @ vecs[:, order]
    rank = min(int((ratios > 1e-9 * ratios[0].clamp_min(1e-30)).sum()), len(classes) - 1)
    basis, _ = torch.linalg.qr(directions[:, :rank], mode="complete")
    discriminant, complement = basis[:, :rank], basis[:, rank:]
    if complement.shape[1] > 0:
        complement = complement @ pca_rotation(x @ complement)
    return _deterministic_signs(torch.cat([discriminant, complement], dim=1))


@register_safe_hooks
class MatryoshkaProjection(nn.Module):
    """Projection of pooled statistics to nested (Matryoshka) embeddings.

    ``BatchNorm1d(input_size) -> Linear(input_size, embed_dim)``; the first
    ``d`` output coordinates form the size-``d`` embedding.

    Arguments
    ---------
    input_size : int
        Size of the pooled statistics (e.g. ReDimNet's ``pool_dim``).
    embed_dim : int
        Full embedding size (default 256).
    mrl_dims : sequence of int, optional
        Nested sizes: strictly increasing positive ints ending with
        ``embed_dim``. Default: quarters of ``embed_dim``
        (``[64, 128, 192, 256]`` for 256).

    :meth:`forward` and :meth:`all_dims` take ``[B, input_size]`` and give
    ``[B, d]`` (the package's shape convention).

    Example
    -------
    >>> proj = MatryoshkaProjection(input_size=40, embed_dim=16, mrl_dims=[4, 8, 16])
    >>> x = torch.randn(5, 40)
    >>> proj(x).shape
    torch.Size([5, 16])
    >>> proj(x, target_dim=8).shape
    torch.Size([5, 8])
    >>> {d: e.shape[-1] for d, e in proj.all_dims(x).items()}
    {4: 4, 8: 8, 16: 16}
    """

    def __init__(self, input_size, embed_dim=256, mrl_dims=None):
        super().__init__()
        if not is_int(input_size) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        self.input_size = int(input_size)
        self.mrl_dims = validate_mrl_dims(mrl_dims, embed_dim)
        self.embed_dim = int(embed_dim)
        self.norm = nn.BatchNorm1d(self.input_size)
        self.linear = nn.Linear(self.input_size, self.embed_dim)
        #: ordering chosen by :meth:`init_from_embedding_layer` (``"pca"``,
        #: ``"discriminant"``) or None. Not saved in state_dict.
        self.init_ordering = None
        #: variance of the initialisation embeddings along each output axis
        #: (for PCA: its eigenvalues), or None. Not saved in state_dict.
        self.axis_variance = None

    def extra_repr(self):
        """Adds the nested sizes to ``repr``."""
        return f"input_size={self.input_size}, embed_dim={self.embed_dim}, mrl_dims={self.mrl_dims}"

    # ------------------------------------------------------------------ forward
    def _project(self, x):
        """Full-size projection ``[B, embed_dim]`` of pooled statistics ``[B, input_size]``."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"expected pooled statistics of shape [B, {self.input_size}], got {tuple(x.shape)}"
            )
        return self.linear(self.norm(x))

    def forward(self, x, target_dim=None):
        """Embeds pooled statistics and returns the size-``target_dim`` prefix.

        Arguments
        ---------
        x : torch.Tensor
            Pooled statistics ``[B, input_size]``.
        target_dim : int, optional
            Prefix size in ``[1, embed_dim]`` (need not be in ``mrl_dims``,
            though only those sizes are trained). None: full size.

        Returns
        -------
        torch.Tensor
            ``[B, target_dim]``.
        """
        return self._project(x)[:, :check_target_dim(target_dim, self.embed_dim)]

    def all_dims(self, x):
        """Returns every Matryoshka size from one forward pass.

        Arguments
        ---------
        x : torch.Tensor
            Pooled statistics, as in :meth:`forward`.

        Returns
        -------
        dict of int to torch.Tensor
            ``{d: prefix}`` for every ``d`` in ``mrl_dims`` (views of one tensor).
        """
        emb = self._project(x)
        return {d: emb[:, :d] for d in self.mrl_dims}

    # -------------------------------------------------------------- init
    def _checked_stats(self, stats, device):
        """``stats`` as a float64 ``[N, input_size]`` tensor on ``device`` (N >= 2, finite)."""
        if not isinstance(stats, torch.Tensor):
            raise ValueError(f"stats must be a torch.Tensor, got {type(stats).__name__}")
        if stats.dim() != 2 or stats.shape[1] != self.input_size:
            raise ValueError(
                f"stats must have shape [N, {self.input_size}], got {tuple(stats.shape)}"
            )
        if stats.shape[0] < 2:
            raise ValueError(f"stats needs at least 2 rows, got {stats.shape[0]}")
        stats = stats.detach().to(device=device, dtype=torch.float64)
        if not torch.isfinite(stats).all():
            raise ValueError("stats contains NaN or Inf")
        return stats

    @torch.no_grad()
    def init_from_embedding_layer(self, bn, linear, bn2=None, stats=None, labels=None,
                                  shrinkage=0.1):
        """Initialises from a pretrained embedding layer plus a rotation.

        The pretrained layer computes ``e = bn2(linear(bn(s)))`` from pooled
        statistics ``s`` (ReDimNet's ``bn``, ``linear`` and optional ``bn2``).
        ``bn`` is copied into :attr:`norm`; ``bn2`` (its eval-mode affine map)
        and a rotation ``R`` are folded into :attr:`linear`
        (``W' = R^T W``, ``b' = R^T b``). ``R`` is computed in float64 on the
        pretrained embeddings of ``stats`` (eval mode):

        * without ``labels``: :func:`pca_rotation`, principal axes by
          decreasing variance, so each prefix keeps as much of the embedding
          as possible (the PCA truncation of the pretrained embedding);
        * with ``labels`` (one speaker label per row of ``stats``):
          :func:`discriminant_rotation`, axes by decreasing speaker
          discrimination, so each prefix keeps the most speaker information.

        Either way, in eval mode the full-size output equals ``R^T e``:
        identical cosine scores to the pretrained embedding.

        If ``stats`` is None, no rotation is used (``R`` = identity): the
        output is the pretrained embedding itself, unordered.
        If ``embed_dim`` is larger than the pretrained embedding size ``P``,
        output dims ``P..embed_dim-1`` start at exactly zero (weights and
        bias), so the cosine is still preserved; they are free to learn.

        Arguments
        ---------
        bn : torch.nn.BatchNorm1d
            Pretrained normalisation of pooled statistics (``input_size``
            features, with running statistics).
        linear : torch.nn.Linear
            Pretrained projection ``input_size -> P``.
        bn2 : torch.nn.BatchNorm1d, optional
            Pretrained BatchNorm on the embedding (``P`` features).
        stats : torch.Tensor, optional
            Pooled statistics ``[N, input_size]`` (N >= 2) to estimate the
            rotation.
        labels : torch.Tensor, optional
            ``[N]`` integer speaker labels of ``stats`` (at least two
            speakers): discriminant ordering instead of PCA.
        shrinkage : float
            Within-speaker scatter shrinkage of the discriminant ordering
            (see :func:`discriminant_rotation`; default 0.1).

        Returns
        -------
        MatryoshkaProjection
            ``self``, for chaining. :attr:`init_ordering` and
            :attr:`axis_variance` describe the rotation.

        Raises
        ------
        ValueError
            On size mismatches, ``embed_dim < P``, bad ``stats`` or
            ``labels``, or ``labels`` without ``stats``.

        Example
        -------
        >>> _ = torch.manual_seed(0)
        >>> bn, lin = torch.nn.BatchNorm1d(12), torch.nn.Linear(12, 6)
        >>> s = torch.randn(50, 12)
        >>> proj = MatryoshkaProjection(12, embed_dim=8, mrl_dims=[2, 4, 8])
        >>> proj = proj.init_from_embedding_layer(bn, lin, stats=s).eval()
        >>> ref = lin(bn.eval()(s))
        >>> out = proj(s)
        >>> cos = lambda a: torch.nn.functional.normalize(a) @ torch.nn.functional.normalize(a).T
        >>> bool((cos(out) - cos(ref)).abs().max() < 1e-5)
        True
        >>> bool((out[:, 6:] == 0).all())
        True
        """
        if not isinstance(bn, nn.BatchNorm1d):
            raise ValueError(f"bn must be a torch.nn.BatchNorm1d, got {type(bn).__name__}")
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if bn2 is not None and not isinstance(bn2, nn.BatchNorm1d):
            raise ValueError(f"bn2 must be a torch.nn.BatchNorm1d or None, got {type(bn2).__name__}")
        if bn.num_features != self.input_size:
            raise ValueError(
                f"bn has {bn.num_features} features but input_size={self.input_size}"
            )
        if linear.in_features != self.input_size:
            raise ValueError(
                f"linear.in_features={linear.in_features} but input_size={self.input_size}"
            )
        pdim = linear.out_features
        if bn2 is not None and bn2.num_features != pdim:
            raise ValueError(
                f"bn2 has {bn2.num_features} features but linear.out_features={pdim}"
            )
        if pdim > self.embed_dim:
            raise ValueError(
                f"embed_dim={self.embed_dim} is smaller than the pretrained embedding "
                f"size {pdim}; use embed_dim >= {pdim} (a smaller head cannot preserve "
                "the pretrained scores; use a smaller target_dim at inference instead)"
            )
        for name, m in (("bn", bn), ("bn2", bn2)):
            if m is not None and (m.running_mean is None or m.running_var is None):
                raise ValueError(f"{name} must track running statistics (eval-mode affine)")

        f64 = torch.float64
        # first BatchNorm: eval-mode affine map of the pretrained bn
        bn_mean = bn.running_mean.detach().to(f64)
        bn_var = bn.running_var.detach().to(f64)
        bn_scale = 1.0 / torch.sqrt(bn_var + bn.eps)
        if bn.affine:
            bn_scale = bn_scale * bn.weight.detach().to(f64)
            bn_shift = bn.bias.detach().to(f64) - bn_mean * bn_scale
        else:
            bn_shift = -bn_mean * bn_scale

        # linear followed by bn2 (eval), folded: e = W z + b
        weight = linear.weight.detach().to(f64).clone()
        bias = (
            linear.bias.detach().to(f64).clone()
            if linear.bias is not None
            else torch.zeros(pdim, dtype=f64, device=weight.device)
        )
        if bn2 is not None:
            s2 = 1.0 / torch.sqrt(bn2.running_var.detach().to(f64) + bn2.eps)
            if bn2.affine:
                s2 = s2 * bn2.weight.detach().to(f64)
                t2 = bn2.bias.detach().to(f64)
            else:
                t2 = torch.zeros_like(s2)
            bias = s2 * (bias - bn2.running_mean.detach().to(f64)) + t2
            weight = s2[:, None] * weight

        if stats is None:
            if labels is not None:
                raise ValueError("labels were given without stats")
            rot = torch.eye(pdim, dtype=f64, device=weight.device)
            self.init_ordering, self.axis_variance = None, None
        else:
            emb = (self._checked_stats(stats, weight.device) * bn_scale + bn_shift) @ weight.T + bias
            if labels is None:
                rot, self.init_ordering = pca_rotation(emb), "pca"
            else:
                rot = discriminant_rotation(emb, torch.as_tensor(labels), shrinkage)
                self.init_ordering = "discriminant"
            axes = (emb - emb.mean(dim=0)) @ rot
            self.axis_variance = axes.var(dim=0).to(torch.float32).cpu()

        new_w = torch.zeros(self.embed_dim, self.input_size, dtype=f64, device=weight.device)
        new_b = torch.zeros(self.embed_dim, dtype=f64, device=weight.device)
        new_w[:pdim] = rot.T @ weight
        new_b[:pdim] = rot.T @ bias

        # copy bn into self.norm (keeping its own device/dtype)
        norm = self.norm
        norm.eps = bn.eps
        norm.momentum = bn.momentum
        norm.running_mean.copy_(bn.running_mean.detach())
        norm.running_var.copy_(bn.running_var.detach())
        if bn.num_batches_tracked is not None and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.copy_(bn.num_batches_tracked.detach())
        if norm.affine:
            if bn.affine:
                norm.weight.copy_(bn.weight.detach())
                norm.bias.copy_(bn.bias.detach())
            else:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
        elif bn.affine:  # pragma: no cover - norm is always affine here
            raise ValueError("cannot copy an affine bn into a non-affine norm")

        self.linear.weight.copy_(new_w.to(self.linear.weight))
        self.linear.bias.copy_(new_b.to(self.linear.bias))
        return self
