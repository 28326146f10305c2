"""ReDimNet2 speaker-embedding lobe with exact parity to the official models.

ReDimNet2 ("Scaling Speaker Verification via Time-Pooled Dimension
Reshaping", official code and weights: ``PalabraAI/redimnet2``, MIT) keeps
ReDimNet's alternation of 2-D blocks on a ``[channels, freq, time]`` map and
1-D blocks on the same data reshaped to ``[channels * freq, time]``, but every
stage also pools over time: a strided convolution shrinks time by the stage's
cumulative time stride (and frequency by its frequency stride), the 2-D and
1-D blocks run at that rate, and the stage output is repeated back to the
full frame rate before the learned weighted sums that feed the next stages.
Options: frequency position embeddings, grouped ("compressed") time-pooling
convolutions, GroupNorm on every aggregated map (``agg_gnorm``), a second,
2-D-only output per stage (``dual_agg``), and a final 2-D or 1-D projection
before attentive statistics pooling.

This module computes the same function as the official ``ReDimNet2Wrap``
(without its front end, see :func:`redimnet2_frontend`), time-major like
:mod:`speechbrain_mrl.model.redimnet`, whose blocks it reuses (2-D ResNet and
ConvNeXt-like blocks, the 1-D time-context blocks, ASTP). It honours relative
frame lengths: the valid frames of each utterance are cut to a multiple of the
total time stride (as the official model cuts a lone input), padded frames are
zeroed before every convolution along time, attention ignores them, and the
time-pooled GroupNorms, the frequency-wise SE and the pooling use valid
frames only, so an utterance in a zero-padded batch gets the embedding it
gets alone.

``state_dict()`` keys and shapes are exactly the official ones without the
front end's ``spec.*``.

Authors
-------
 * speechbrain-mrl developers
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mrl.utils.checkpoints import register_safe_hooks
from speechbrain_mrl.model.features import ReDimNetFbank, building_graph
from speechbrain_mrl.model.features_tf import NormalizedReDimNetFbank, TFMelFbank
from speechbrain_mrl.model.redimnet import (
    ASTP,
    PooledEmbeddingLobe,
    BLOCK_1D_TYPES,
    BLOCK_2D_TYPES,
    ConvNeXtBlock2d,
    ResBlock2d,
    TimeContextBlock,
    _bn_affine,
    _bn_sources,
    _conv2d,
    _FoldCache,
    _LayerNorm,
    _mask_1d,
    _mask_2d,
    _pointwise_2d,
    _Slots,
    _StageWeights,
    _to1d,
    _to2d,
    plain_config,
)

__all__ = ["ReDimNet2", "REDIMNET2_PRESETS", "redimnet2_config", "redimnet2_frontend",
           "redimnet2_frontend_args", "check_redimnet2_config", "is_redimnet2_config"]

#: Keyword arguments of the official ``ReDimNet2Wrap`` and the values used when absent.
#: (The official default ``causal=False`` builds nothing: ``'none'`` is the buildable one.)
_DEFAULTS = dict(
    F=72,
    C=24,
    causal="none",
    spec_in_channels=1,
    out_channels=None,
    block_1d_type="conv+att",
    block_2d_type="basic_resnet",
    compress_tconvs=True,
    return_2d_output=False,
    use_freq_pos_enc=False,
    fm_weigthing_type="NC",
    stages_setup=[
        [[1, 1], 2, 4, [[3, 3]], 24],
        [[2, 1], 3, 3, [[3, 3]], 24],
        [[1, 2], 4, 2, [[3, 3]], 24],
        [[2, 1], 5, 1, [[3, 3]], 24],
        [[1, 2], 4, 1, [[3, 3]], 24],
        [[2, 1], 3, 1, [[3, 3]], 24],
    ],
    group_divisor=1,
    dual_agg=False,
    agg_gnorm=False,
    embed_dim=192,
    num_classes=None,
    feat_agg_dropout=0.0,
    head_activation=None,
    hop_length=160,
    pooling_func="ASTP",
    pad_right_samples=None,
    before_pool_offset=None,
    feat_type="pt",
    global_context_att=True,
    emb_bn=False,
    spec_params=dict(do_spec_aug=False, freq_mask_width=[0, 6], time_mask_width=[0, 8]),
    return_all_outputs=False,
)

# the spec_params each official front end takes (hop_length and n_mels come from the config)
_PT_SPEC = {"sample_rate", "n_fft", "win_length", "f_min", "f_max", "do_spec_aug", "norm_signal",
            "do_preemph", "spec_norm", "freq_start_bin", "num_apply_spec_aug",
            "freq_mask_width", "time_mask_width"}
_TF_SPEC = {"sample_rate", "n_fft", "win_length", "f_min", "f_max", "do_spec_aug", "norm_signal",
            "do_preemph", "freq_start_bin", "freq_mask_width", "time_mask_width", "eps"}


def _preset(C, out_channels, blocks, exps, reds, kernels=None, strides=None, **extra):
    strides = strides or [(1, 1), (2, 1), (1, 2), (2, 1), (1, 2), (2, 1)]
    kernels = kernels or [[(3, 3)]] * len(strides)
    cfg = dict(
        F=72, causal="none", embed_dim=192, hop_length=160, pooling_func="ASTP", feat_type="pt",
        global_context_att=True, emb_bn=False, block_1d_type="conv+att",
        block_2d_type="basic_resnet", group_divisor=1,
        spec_params=dict(do_spec_aug=False, freq_mask_width=(0, 6), time_mask_width=(0, 8)),
        C=C, out_channels=out_channels,
        stages_setup=[(s, n, e, k, r) for s, n, e, k, r in zip(strides, blocks, exps, kernels, reds)],
    )
    cfg.update(extra)
    return cfg


#: ReDimNet2 layouts ``r2-b0``..``r2-b6``: the official ``model_config`` of the best-known
#: public layouts of those sizes (F=72, 192-d, ``pt`` front end). A checkpoint's own
#: ``model_config`` always takes precedence (the released B0-B3 and B5 files may differ).
REDIMNET2_PRESETS = {
    "r2-b0": _preset(12, 64, [2, 3, 4, 5, 4, 3], [2, 1, 1, 1, 1, 1], [36, 36, 36, 36, 18, 18]),
    "r2-b1": _preset(16, 64, [2, 3, 4, 5, 4, 3], [2, 1, 1, 1, 1, 1], [32, 32, 32, 32, 16, 16]),
    "r2-b2": _preset(20, 64, [2, 3, 4, 5, 4, 3], [2, 1, 1, 1, 1, 1], [40, 30, 30, 20, 20, 10],
                     kernels=[[(3, 5)]] * 4 + [[(3, 7)]] * 2,
                     strides=[(1, 1), (2, 1), (1, 2), (3, 1), (1, 2), (2, 1)]),
    "r2-b3": _preset(24, 64, [2, 3, 4, 5, 4, 3], [2, 1, 1, 1, 1, 1], [36, 36, 36, 36, 18, 18]),
    "r2-b4": _preset(32, None, [2, 3, 4, 5, 4, 3], [4, 3, 2, 1, 1, 1], [24] * 6),
    "r2-b5": _preset(48, 256, [2, 3, 4, 5, 4, 3], [4, 3, 2, 1, 1, 1], [48, 48, 48, 48, 32, 32]),
    "r2-b6": _preset(64, 224, [3, 4, 5, 5, 4, 3], [3, 2, 2, 1, 0.75, 0.5],
                     [64, 64, 48, 48, 32, 24], return_2d_output=True),
}


def redimnet2_config(preset="r2-b2", **overrides):
    """A full official-style ReDimNet2 ``model_config``: a preset updated with overrides.

    Arguments
    ---------
    preset : str or dict
        Name in :data:`REDIMNET2_PRESETS`, or a (possibly partial) ``model_config``.
    **overrides
        Config entries to replace.

    Returns
    -------
    dict
        Deep copy with every keyword of the official ``ReDimNet2Wrap`` (lists for tuples).

    Example
    -------
    >>> cfg = redimnet2_config("r2-b0", embed_dim=256)
    >>> cfg["C"], cfg["embed_dim"], cfg["stages_setup"][1][0], cfg["causal"]
    (12, 256, [2, 1], 'none')
    """
    cfg = copy.deepcopy(_DEFAULTS)
    if isinstance(preset, str):
        if preset not in REDIMNET2_PRESETS:
            raise ValueError(f"unknown ReDimNet2 preset {preset!r}; known: {sorted(REDIMNET2_PRESETS)}")
        preset = REDIMNET2_PRESETS[preset]
    cfg.update(copy.deepcopy(dict(preset)))
    cfg.update(copy.deepcopy(overrides))
    return plain_config(cfg)


def _stages(stages_setup, F_):
    """Checked ``(sf, st, num_blocks, conv_exp, kernel_sizes, att_block_red)`` per stage."""
    out = []
    f = F_
    for i, setup in enumerate(stages_setup):
        if not isinstance(setup, (list, tuple)) or len(setup) != 5:
            raise ValueError(f"stages_setup[{i}] must be (stride, num_blocks, conv_exp, kernel_sizes, "
                             f"att_block_red), got {setup!r}")
        stride, num_blocks, conv_exp, kernel_sizes, att_red = setup
        if not isinstance(stride, (list, tuple)) or len(stride) != 2:
            raise ValueError(f"stages_setup[{i}] stride must be a (freq, time) pair, got {stride!r}")
        sf, st = (int(s) for s in stride)
        if sf < 1 or st < 1:
            raise ValueError(f"stages_setup[{i}] strides must be positive, got {stride!r}")
        if f % sf:
            raise ValueError(f"stages_setup[{i}]: frequency size {f} is not divisible by stride {sf}")
        f //= sf
        kernels = [tuple(int(v) for v in (k if isinstance(k, (list, tuple)) else (k, k)))
                   for k in kernel_sizes]
        if not kernels or any(len(k) != 2 or k[0] % 2 == 0 or k[1] % 2 == 0 for k in kernels):
            raise ValueError(f"stages_setup[{i}] kernel_sizes must be odd (freq, time) pairs, "
                             f"got {kernel_sizes!r}")
        out.append((sf, st, int(num_blocks), conv_exp, kernels, att_red))
    return out


def check_redimnet2_config(cfg):
    """Raises a one-line ValueError naming the first option of ``cfg`` this code cannot build.

    Refused: keywords the official ``ReDimNet2Wrap`` does not take, values the official code
    cannot build (``causal`` other than ``'none'``, ``fm_weigthing_type='N'``, unknown block
    types, ...) and official options this lobe does not implement (``feat_type`` other than
    ``pt``/``tf``, ``pooling_func`` other than ``ASTP``, ``pad_right_samples``,
    ``before_pool_offset``, ``return_all_outputs``, ``group_divisor=None``, ...).

    Example
    -------
    >>> check_redimnet2_config(redimnet2_config("r2-b0"))
    >>> check_redimnet2_config(redimnet2_config("r2-b0", causal="full"))
    Traceback (most recent call last):
    ...
    ValueError: causal='full' is not supported: the official ReDimNet2 builds only causal='none'
    """
    unknown = sorted(set(cfg) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown ReDimNet2 option(s) {unknown}: not keywords of the official ReDimNet2Wrap")

    def refuse(key, why):
        raise ValueError(f"{key}={cfg.get(key)!r} is not supported: {why}")

    if cfg.get("causal", "none") != "none":
        refuse("causal", "the official ReDimNet2 builds only causal='none'")
    if cfg.get("fm_weigthing_type", "NC") != "NC":
        refuse("fm_weigthing_type", "the official ReDimNet2 builds only 'NC'")
    if cfg.get("spec_in_channels", 1) != 1:
        refuse("spec_in_channels", "the log-mel front ends give one channel")
    if cfg.get("block_1d_type") not in BLOCK_1D_TYPES:
        refuse("block_1d_type", f"known: {BLOCK_1D_TYPES}")
    if cfg.get("block_2d_type") not in BLOCK_2D_TYPES:
        refuse("block_2d_type", f"known: {BLOCK_2D_TYPES}")
    gdiv = cfg.get("group_divisor")
    if isinstance(gdiv, bool) or not isinstance(gdiv, int) or gdiv < 1:
        refuse("group_divisor", "a positive int is needed (None, ungrouped blocks, is not implemented)")
    if cfg.get("pooling_func", "ASTP") != "ASTP":
        refuse("pooling_func", "only 'ASTP'")
    for key in ("pad_right_samples", "before_pool_offset"):
        if cfg.get(key) is not None:
            refuse(key, "only None")
    if cfg.get("return_all_outputs", False):
        refuse("return_all_outputs", "only False")
    feat_type = cfg.get("feat_type", "pt")
    if feat_type not in ("pt", "pt_mel", "tf", "tf_mel"):
        refuse("feat_type", "only 'pt' (torchaudio-style) and 'tf' (TF-style) log-mels")
    spec = dict(cfg.get("spec_params") or {})
    allowed = _PT_SPEC if feat_type.startswith("pt") else _TF_SPEC
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ValueError(f"spec_params {extra} are not options of the official {feat_type!r} front end")
    if not spec.get("do_preemph", True):
        raise ValueError("spec_params do_preemph=False is not supported")
    if spec.get("spec_norm", "mn") != "mn":
        raise ValueError(f"spec_params spec_norm={spec['spec_norm']!r} is not supported (only 'mn')")
    _stages(cfg.get("stages_setup") or [], int(cfg.get("F", 72)))


def is_redimnet2_config(config):
    """Whether a preset name or ``model_config`` describes a ReDimNet2 (else a ReDimNet).

    ReDimNet2: the ``r2-*`` presets (:data:`REDIMNET2_PRESETS`), and configs holding
    ``causal``, a keyword of every official ReDimNet2 ``model_config`` (and of every
    config :func:`redimnet2_config` writes) that ReDimNet's never holds, or whose stages
    stride as ``(freq, time)`` pairs (ReDimNet's strides are one number).

    Arguments
    ---------
    config : str or dict
        Preset name or (possibly partial) ``model_config``.

    Returns
    -------
    bool

    Example
    -------
    >>> is_redimnet2_config("r2-b2"), is_redimnet2_config("b2"), is_redimnet2_config(dict(causal="none"))
    (True, False, True)
    >>> is_redimnet2_config(dict(F=16, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)]))
    True
    """
    if isinstance(config, str):
        return config in REDIMNET2_PRESETS
    config = dict(config or {})
    stages = config.get("stages_setup") or []
    return "causal" in config or any(
        isinstance(s, (list, tuple)) and s and isinstance(s[0], (list, tuple)) for s in stages)


def redimnet2_frontend_args(config):
    """``(class, kwargs)`` of the front end of a ReDimNet2 ``model_config``.

    :func:`redimnet2_frontend` builds ``class(**kwargs)``; a model folder's
    ``hyperparams.yaml`` names the same class and arguments.

    Returns
    -------
    tuple
        ``ReDimNetFbank``, ``NormalizedReDimNetFbank`` or ``TFMelFbank``, and its keyword
        arguments (``n_mels``, ``hop_length``, then the ``spec_params`` it takes).

    Example
    -------
    >>> cls, kwargs = redimnet2_frontend_args(redimnet2_config("r2-b0", feat_type="tf"))
    >>> cls.__name__, kwargs["n_mels"], kwargs["hop_length"]
    ('TFMelFbank', 72, 160)
    """
    cfg = redimnet2_config(config)
    check_redimnet2_config(cfg)
    spec = dict(cfg.get("spec_params") or {})
    spec.pop("do_preemph", None)  # only True (checked)
    kwargs = dict(n_mels=int(cfg["F"]), hop_length=int(cfg["hop_length"]))
    if cfg["feat_type"] in ("tf", "tf_mel"):
        return TFMelFbank, dict(kwargs, **spec)
    spec.pop("spec_norm", None)  # only 'mn' (checked)
    if spec.pop("norm_signal", False):
        return NormalizedReDimNetFbank, dict(kwargs, **spec)
    return ReDimNetFbank, dict(kwargs, **spec)


def redimnet2_frontend(config):
    """The front end of a ReDimNet2 ``model_config`` (its ``feat_type`` and ``spec_params``).

    Returns
    -------
    ReDimNetFbank or NormalizedReDimNetFbank or TFMelFbank

    Example
    -------
    >>> type(redimnet2_frontend(redimnet2_config("r2-b0"))).__name__
    'ReDimNetFbank'
    >>> cfg = redimnet2_config("r2-b0", feat_type="tf", spec_params=dict(norm_signal=True))
    >>> type(redimnet2_frontend(cfg)).__name__
    'TFMelFbank'
    """
    cls, kwargs = redimnet2_frontend_args(config)
    return cls(**kwargs)


# ---------------------------------------------------------------------------
# blocks not in ReDimNet
# ---------------------------------------------------------------------------
class ConvNeXtBlock2dK(ConvNeXtBlock2d):
    """ReDimNet's 2-D ConvNeXt-like block with any odd ``(freq, time)`` kernels.

    One kernel: :class:`~speechbrain_mrl.model.redimnet.ConvNeXtBlock2d` with
    that kernel. Several: their grouped convolutions are concatenated before
    the BatchNorm, the activation and the 1x1 convolution back to ``channels``.
    """

    def __init__(self, channels, kernel_sizes, group_divisor=1, activation="gelu"):
        super().__init__(channels, group_divisor, activation)
        n = len(kernel_sizes)
        self.dwconvs = nn.ModuleList(
            nn.Conv2d(channels, channels, tuple(k), padding=(k[0] // 2, k[1] // 2), groups=self.groups)
            for k in kernel_sizes
        )
        if n > 1:
            self.norm = nn.BatchNorm2d(channels * n)
            self.pwconv1 = nn.Conv2d(channels * n, channels, 1)

    def forward(self, x, mask=None):
        """``x``: channels-last ``[B, C, T, F]``; ``mask``: ``[B, T]`` or None."""
        if len(self.dwconvs) == 1:
            return super().forward(x, mask)
        h = _mask_2d(x, mask)
        h = torch.cat([_conv2d(h, c.weight, c.bias, self.groups) for c in self.dwconvs], dim=1)
        h = self.act(self.norm(h))
        return x + _pointwise_2d(h, self.pwconv1.weight, self.pwconv1.bias)


class _ConvBlock2d(nn.Module):
    """Holder of one 2-D block (official ``ConvBlock2d``: a ``conv_block`` child)."""

    def __init__(self, block_type, channels, num_freq, group_divisor, kernel_sizes):
        super().__init__()
        if block_type in ("convnext_like", "convnext_like_relu"):
            act = "relu" if block_type == "convnext_like_relu" else "gelu"
            self.conv_block = ConvNeXtBlock2dK(channels, kernel_sizes, group_divisor, act)
        else:  # the ResNet blocks are 3x3 whatever kernel_sizes says, as in the official code
            self.conv_block = ResBlock2d(channels, num_freq, group_divisor,
                                         use_se=block_type == "basic_resnet_fwse")

    def forward(self, x, mask=None):
        return self.conv_block(x, mask)


class _FreqEncoder(nn.Module):
    """Learned embedding of each frequency bin, added to the 2-D map (``use_freq_pos_enc``)."""

    def __init__(self, channels, bins):
        super().__init__()
        self.freq_embedder = nn.Embedding(bins, channels)

    def forward(self, x):
        """``x``: time-major 1-D view ``[B, T, f * c]`` (index ``f_i * c + c_i``)."""
        return x + self.freq_embedder.weight.reshape(-1)


class _Squeeze2d(_Slots):
    """1x1 conv + BatchNorm (eps 1e-6) from the widened stage back to its channel count."""

    def __init__(self, in_channels, out_channels):
        super().__init__({0: nn.Conv2d(in_channels, out_channels, 1),
                          1: nn.BatchNorm2d(out_channels, eps=1e-6)})
        self._fold = _FoldCache()

    def forward(self, x):
        conv, norm = self[0], self[1]
        if self.training:
            return norm(_pointwise_2d(x, conv.weight, conv.bias))

        def compute():
            s, t = _bn_affine(norm)
            return conv.weight.flatten(1) * s[:, None], conv.bias * s + t

        w, b = self._fold.get([conv.weight, conv.bias] + _bn_sources(norm), compute)
        return _pointwise_2d(x, w, b)


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm over channels ``[D]`` and valid frames of a time-major ``[B, T, D]`` tensor.

    Channel ``d`` is in group ``d // (D / num_groups)``, as ``nn.GroupNorm`` on
    ``[B, D, T]``; statistics use the frames where ``mask`` is True only.

    Example
    -------
    >>> gn = MaskedGroupNorm(2, 8)
    >>> x = torch.randn(1, 5, 8)
    >>> ref = torch.nn.functional.group_norm(x.transpose(1, 2), 2, gn.weight, gn.bias, gn.eps)
    >>> bool(torch.allclose(gn(x), ref.transpose(1, 2), atol=1e-5))
    True
    """

    def forward(self, x, mask=None):
        b, t, d = x.shape
        g = self.num_groups
        xg = x.reshape(b, t, g, d // g)
        if mask is None:
            mean = xg.mean(dim=(1, 3), keepdim=True)
            var = (xg - mean).pow(2).mean(dim=(1, 3), keepdim=True)
        else:
            m = mask[:, :, None, None].to(x.dtype)
            n = m.sum(dim=1, keepdim=True) * (d // g)
            mean = (xg * m).sum(dim=(1, 3), keepdim=True) / n
            var = ((xg - mean) * m).pow(2).sum(dim=(1, 3), keepdim=True) / n
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(b, t, d)
        return torch.addcmul(self.bias, y, self.weight) if self.affine else y


def _upsample(x, factor):
    """Nearest-neighbour upsampling along time of ``[B, T, D]``."""
    return x if factor == 1 else x.repeat_interleave(factor, dim=1)


class ReDimNet2Stage(_Slots):
    """The part of a ReDimNet2 stage up to its 1-D output at the pooled frame rate.

    Children are named by their index in the official ``nn.Sequential``: ``0``
    input weights, (``2`` frequency embedding,) the time/frequency-pooling conv,
    the 2-D blocks, the optional channel squeeze, then (without ``dual_agg``)
    the optional 1-D block and the optional GroupNorm.
    """

    def __init__(self, n_inputs, F_, C, f, c, sf, stt, num_blocks, conv_exp, kernel_sizes,
                 att_block_red, block_1d_type, block_2d_type, group_divisor, use_freq_pos_enc,
                 compress_tconvs, tail, agg_gnorm):
        weights = _StageWeights(n_inputs, F_ * C)
        weights.w.requires_grad_(n_inputs > 1)
        children = {0: weights}
        idx = 2  # 1: the official to2d reshape
        pos_idx = None
        if use_freq_pos_enc:
            children[idx] = _FreqEncoder(c, f)
            pos_idx = idx
            idx += 1
        out_c = sf * c
        wide = int(out_c * conv_exp)
        groups = math.gcd(int(c), wide) if compress_tconvs else 1
        children[idx] = nn.Conv2d(c, wide, (sf, stt), stride=(sf, stt), groups=groups)
        pool_idx = idx
        idx += 1
        block_idx = []
        for _ in range(num_blocks):
            children[idx] = _ConvBlock2d(block_2d_type, wide, f // sf, group_divisor, kernel_sizes)
            block_idx.append(idx)
            idx += 1
        squeeze_idx = None
        if conv_exp != 1:
            children[idx] = _Squeeze2d(wide, out_c)
            squeeze_idx = idx
            idx += 1
        idx += 1  # the official to1d reshape
        tc_idx = gn_idx = None
        if tail:  # the 1-D block, the upsampling and the GroupNorm belong to this Sequential
            if att_block_red is not None:
                children[idx] = TimeContextBlock(F_ * C, (F_ * C) // att_block_red, block_1d_type)
                tc_idx = idx
                idx += 1
            idx += 1  # the official Upsample
            if agg_gnorm:
                children[idx] = MaskedGroupNorm(C, C * F_)
                gn_idx = idx
        super().__init__(children)
        self.f, self.c, self.sf, self.stt, self.groups = f, c, sf, stt, groups
        self._pos_idx, self._pool_idx, self._block_idx = pos_idx, pool_idx, block_idx
        self._squeeze_idx, self._tc_idx, self._gn_idx = squeeze_idx, tc_idx, gn_idx

    def forward(self, outputs, mask=None):
        """Weighted full-rate inputs -> ``[B, T / stt, F * C]`` (``mask`` at that rate)."""
        x = self[0](outputs)
        if self._pos_idx is not None:
            x = self[self._pos_idx](x)
        conv = self[self._pool_idx]
        x = _conv2d(_to2d(x, self.f, self.c), conv.weight, conv.bias, self.groups,
                    stride=(self.stt, self.sf))
        for i in self._block_idx:
            x = self[i](x, mask)
        if self._squeeze_idx is not None:
            x = self[self._squeeze_idx](x)
        x = _to1d(x)
        if self._tc_idx is not None:
            x = self[self._tc_idx](x, mask)
        if self._gn_idx is not None:
            x = self[self._gn_idx](x, mask)
        return x


class _UpNorm(_Slots):
    """Official ``Upsample`` (+ ``GroupNorm``) of a dual stage: only the norm has weights."""

    def __init__(self, groups, channels):
        super().__init__({1: MaskedGroupNorm(groups, channels)})

    def forward(self, x, mask=None):
        return self[1](x, mask)


class ReDimNet2Backbone(nn.Module):
    """Stem, time-pooling stages, final weighted sum and optional projection ``head``.

    Maps features ``[B, T, F]`` (``T`` a multiple of :attr:`time_stride`) to
    time-major ``[B, T, out_dim]``. Arguments as in :class:`ReDimNet2`.
    """

    def __init__(self, F=72, C=24, stages_setup=None, block_1d_type="conv+att",
                 block_2d_type="basic_resnet", group_divisor=1, out_channels=None,
                 return_2d_output=False, use_freq_pos_enc=False, compress_tconvs=True,
                 dual_agg=False, agg_gnorm=False):
        super().__init__()
        stages = _stages(_DEFAULTS["stages_setup"] if stages_setup is None else stages_setup, F)
        self.F, self.C = F, C
        self.agg_gnorm = bool(agg_gnorm)
        self.stem = nn.ModuleList([nn.Conv2d(1, C, 3, padding=1), _LayerNorm(C)])
        if agg_gnorm:
            self.stem_gnorm = MaskedGroupNorm(C, C * F)
        f, c, stt, n_outputs = F, C, 1, 1
        self.num_stages = len(stages)
        self._dual, self._stt = [], []
        for i, (sf, st, num_blocks, conv_exp, kernels, att_red) in enumerate(stages):
            stt *= st
            dual = bool(dual_agg) and att_red is not None
            stage = ReDimNet2Stage(n_outputs, F, C, f, c, sf, stt, num_blocks, conv_exp, kernels,
                                   att_red, block_1d_type, block_2d_type, group_divisor,
                                   use_freq_pos_enc, compress_tconvs, not dual, agg_gnorm)
            if dual:
                self.add_module(f"stage{i}_pre", stage)
                self.add_module(f"stage{i}_1d", TimeContextBlock(F * C, (F * C) // att_red, block_1d_type))
                if agg_gnorm:
                    self.add_module(f"stage{i}_up_2d", _UpNorm(C, C * F))
                    self.add_module(f"stage{i}_up_1d", _UpNorm(C, C * F))
                n_outputs += 2
            else:
                self.add_module(f"stage{i}", stage)
                n_outputs += 1
            self._dual.append(dual)
            self._stt.append(stt)
            c, f = c * sf, f // sf
        self.fin_wght1d = _StageWeights(n_outputs, F * C)
        self.fin_wght1d.w.requires_grad_(n_outputs > 1)
        #: Product of the stages' time strides: inputs are cut to a multiple of it.
        self.time_stride = stt
        self.freq_stride = F // f
        self.return_2d_output = bool(return_2d_output)
        self.f_out, self.c_out = f, c
        self.head = None
        if return_2d_output:
            if out_channels is not None:
                self.head = nn.Conv2d(c, out_channels, 1)
            self.out_dim = f * (c if out_channels is None else out_channels)
        else:
            if out_channels is not None:
                self.head = nn.Conv1d(F * C, out_channels, 1)
            self.out_dim = F * C if out_channels is None else out_channels

    def _stage(self, i, outputs, masks):
        stt = self._stt[i]
        mask = masks.get(stt)
        if not self._dual[i]:
            return [_upsample(getattr(self, f"stage{i}")(outputs, mask), stt)]
        x = getattr(self, f"stage{i}_pre")(outputs, mask)
        x1 = getattr(self, f"stage{i}_1d")(x, mask)
        if self.agg_gnorm:
            x = getattr(self, f"stage{i}_up_2d")(x, mask)
            x1 = getattr(self, f"stage{i}_up_1d")(x1, mask)
        return [_upsample(x, stt), _upsample(x1, stt)]

    def forward(self, feats, valid=None):
        """``feats``: ``[B, T, F]``; ``valid``: valid frames ``[B]`` (multiples of
        :attr:`time_stride`) or None."""
        t = feats.shape[1]
        masks = {}
        if valid is not None:
            for r in {1, *self._stt}:
                masks[r] = torch.arange(t // r, device=feats.device)[None, :] < (valid // r)[:, None]
        mask = masks.get(1)
        conv, norm = self.stem
        x = _conv2d(_mask_1d(feats, mask).unsqueeze(1), conv.weight, conv.bias, 1)
        x = norm(x.permute(0, 2, 3, 1))  # [B, T, F, C]
        b = x.shape[0]
        x = x.reshape(b, t, -1)
        if self.agg_gnorm:
            x = self.stem_gnorm(x, mask)
        outputs = [x]
        for i in range(self.num_stages):
            outputs.extend(self._stage(i, outputs, masks))
        x = self.fin_wght1d(outputs)
        if self.return_2d_output:
            x = x.reshape(b, t, self.f_out, self.c_out)
            if self.head is not None:
                x = F.linear(x, self.head.weight.flatten(1), self.head.bias)
            x = x.transpose(2, 3).reshape(b, t, -1)  # official [B, c, f, T] -> [B, c * f, T]
        elif self.head is not None:
            x = F.linear(x, self.head.weight.squeeze(-1), self.head.bias)
        return x


@register_safe_hooks
class ReDimNet2(PooledEmbeddingLobe):
    """ReDimNet2 speaker-embedding lobe (log-mel features -> embedding).

    Built from the keyword arguments of the official ``ReDimNet2Wrap`` (the
    ``model_config`` of the released checkpoints, see :data:`REDIMNET2_PRESETS`);
    front-end keys (``feat_type``, ``hop_length``, ``spec_params``) are checked
    and kept in :attr:`model_config` (:func:`redimnet2_frontend` builds the front
    end). ``state_dict()`` keys are the official ones without ``spec.*``.
    Options this code cannot build raise a one-line ValueError naming them
    (:func:`check_redimnet2_config`).

    Arguments
    ---------
    F : int
        Number of mel bands.
    C : int
        Base channel count.
    causal : str
        Only ``'none'``.
    out_channels : int or None
        Width of the final 1x1 projection (per frequency bin with ``return_2d_output``).
    block_1d_type : str
        ``'att'``, ``'fc'``, ``'conv'`` or ``'conv+att'``.
    block_2d_type : str
        ``'convnext_like'``, ``'convnext_like_relu'``, ``'basic_resnet'`` or ``'basic_resnet_fwse'``.
    compress_tconvs : bool
        Grouped time/frequency-pooling convolutions (``gcd`` of their widths).
    return_2d_output : bool
        Project and pool the final map per frequency bin (channel-major flattening).
    use_freq_pos_enc : bool
        Add a learned embedding per frequency bin at every stage input.
    stages_setup : list
        Per stage ``((freq_stride, time_stride), num_blocks, conv_exp, kernel_sizes, att_block_red)``.
    group_divisor : int
        Channels per group of the grouped 2-D convolutions.
    dual_agg : bool
        Stages with a 1-D block also output their 2-D branch.
    agg_gnorm : bool
        GroupNorm (``C`` groups) on the stem and on every stage output.
    embed_dim : int
        Embedding size.
    global_context_att : bool
        ASTP attention also sees the utterance mean and std.
    emb_bn : bool
        BatchNorm on the embedding.
    **options
        The other ``ReDimNet2Wrap`` keywords (``feat_type``, ``hop_length``,
        ``spec_params``, ``pooling_func``, ``spec_in_channels``, ``fm_weigthing_type``,
        ``num_classes``, ``feat_agg_dropout``, ``head_activation`` (the last three
        unused, as in the official code), ...).

    Example
    -------
    >>> cfg = dict(F=16, C=4, stages_setup=[((1, 1), 1, 2, [(3, 3)], 4), ((2, 2), 1, 1, [(3, 3)], None)],
    ...            embed_dim=8, out_channels=24)
    >>> model = ReDimNet2(**cfg).eval()
    >>> feats = torch.randn(2, 50, 16)
    >>> model(feats).shape, model.pool_dim, model.time_stride
    (torch.Size([2, 8]), 48, 2)
    >>> full = model(feats[:1, :30])
    >>> padded = torch.cat([feats[:1, :30], torch.zeros(1, 20, 16)], dim=1)
    >>> batched = model(torch.cat([padded, feats[1:]]), torch.tensor([0.6, 1.0]))
    >>> bool(torch.allclose(batched[0], full[0], atol=1e-5))
    True
    >>> sum(p.numel() for p in ReDimNet2.from_preset("r2-b0").parameters())
    703060
    """

    def __init__(self, **config):
        super().__init__()
        cfg = redimnet2_config(config)
        check_redimnet2_config(cfg)
        self.model_config = cfg
        self.F, self.C = int(cfg["F"]), int(cfg["C"])
        self.embed_dim = int(cfg["embed_dim"])
        self.backbone = ReDimNet2Backbone(
            self.F, self.C, cfg["stages_setup"], cfg["block_1d_type"], cfg["block_2d_type"],
            int(cfg["group_divisor"]), cfg["out_channels"], cfg["return_2d_output"],
            cfg["use_freq_pos_enc"], cfg["compress_tconvs"], cfg["dual_agg"], cfg["agg_gnorm"])
        self.time_stride = self.backbone.time_stride
        self.pool = ASTP(self.backbone.out_dim, global_context_att=bool(cfg["global_context_att"]))
        self.pool_dim = self.pool.out_dim
        self.bn = nn.BatchNorm1d(self.pool_dim)
        self.linear = nn.Linear(self.pool_dim, self.embed_dim)
        self.bn2 = nn.BatchNorm1d(self.embed_dim) if cfg["emb_bn"] else None

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds a preset of :data:`REDIMNET2_PRESETS` (``r2-b0``..``r2-b6``)."""
        return cls(**redimnet2_config(name, **overrides))

    @property
    def min_frames(self):
        """Fewest feature frames :meth:`pool_features` embeds: at least its :attr:`time_stride`
        (and the pooling's own minimum, :attr:`~speechbrain_mrl.model.redimnet.PooledEmbeddingLobe.min_frames`)."""
        return max(int(self.time_stride), super().min_frames)

    def valid_frames(self, lengths, num_frames):
        """Valid frames ``[B]`` of each utterance, cut to a multiple of :attr:`time_stride`.

        Arguments
        ---------
        lengths : torch.Tensor or None
            Relative frame lengths in ``(0, 1]``.
        num_frames : int
            Padded frame count (before the cut).

        Returns
        -------
        torch.Tensor or None
            None when every utterance fills the (cut) batch.
        """
        if lengths is None:
            return None
        s = self.time_stride
        total = (num_frames // s) * s
        n = torch.round(lengths.detach().float() * num_frames).long().clamp(1, num_frames)
        n = (torch.div(n, s, rounding_mode="floor") * s).clamp(min=s)
        if not building_graph() and bool((n >= total).all()):
            return None
        return n

    def pool_features(self, feats, lengths=None):
        """Backbone + attentive statistics pooling.

        Arguments
        ---------
        feats : torch.Tensor
            Features ``[B, T, F]``.
        lengths : torch.Tensor, optional
            Relative frame lengths ``[B]`` in ``(0, 1]``.

        Returns
        -------
        torch.Tensor
            Pooled statistics ``[B, pool_dim]`` (before ``bn``).
        """
        if feats.dim() != 3 or feats.shape[-1] != self.F:
            raise ValueError(f"expected features [B, T, {self.F}], got {tuple(feats.shape)}")
        t = feats.shape[1]
        s = self.time_stride
        if t < s:
            raise ValueError(f"{t} frames are too few: ReDimNet2 needs at least {s} (its time stride)")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=feats.device)
        valid = self.valid_frames(lengths, t)
        feats = feats[:, :t - t % s]  # (t // s) * s, in a form torch.export can bound
        x = self.backbone(feats, valid)
        mask = None
        if valid is not None:
            mask = torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None]
        return self.pool(x, mask)

