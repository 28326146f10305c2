"""ReDimNet speaker-embedding lobe with exact parity to the official models.

ReDimNet (Yakovlev et al., Interspeech 2024, https://arxiv.org/abs/2407.18223)
alternates 2-D convolutional blocks on a ``[channels, time, freq]`` map with
1-D time-context blocks on the same data reshaped to ``[channels * freq,
time]``; every stage starts from a learned softmax-weighted sum of all previous
stage outputs.  Attentive statistics pooling and a linear layer give the
embedding.

This implementation computes the same function as the official ReDimNet
(``IDRnD/ReDimNet``, ``feat_type='pt'``, ``tf_optimized_arch=False``) and
loads its checkpoints (see :mod:`speechbrain_mrl.model.official`), but:

* the whole network works time-major: the 1-D representation is
  ``[B, T, F*C]`` (channel index ``f * C + c`` as in the official model) and
  the 2-D one a channels-last ``[B, C, T, F]`` view of the same memory, so
  switching between them costs no copy, 1x1 convolutions are plain matrix
  products and channel LayerNorms are ``F.layer_norm``;
* in ``eval()`` BatchNorms are folded into the preceding convolutions, the
  q/k/v projections are fused and attention uses PyTorch's fused SDPA;
* it honours relative lengths: padded frames are zeroed before every
  convolution along time, attention ignores padded keys, the frequency-wise
  SE and the pooling statistics use valid frames only, so an utterance in a
  zero-padded batch gets the embedding it gets alone.

``state_dict()`` keys and shapes are exactly the official ones (without the
front end's ``spec.*``; kernels stay in the official ``(freq, time)`` order).
Lengths given to the lobe are relative *frame* lengths; see
:meth:`speechbrain_mrl.model.features.ReDimNetFbank.frame_lengths`.

Authors
-------
 * speechbrain-mrl developers
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mrl.utils.checkpoints import register_safe_hooks
from speechbrain_mrl.model.features import length_mask

__all__ = ["ReDimNet", "REDIMNET_PRESETS", "redimnet_config", "plain_config"]

_CL = torch.channels_last

# Layouts of the published models (model_config of the official releases).
_DEFAULTS = dict(
    F=72,
    C=16,
    block_1d_type="att",
    block_2d_type="convnext_like",
    stages_setup=[
        (1, 2, 1, [(3, 3)], 12),
        (2, 2, 1, [(3, 3)], 12),
        (1, 3, 1, [(3, 3)], 12),
        (2, 4, 1, [(3, 3)], 8),
        (1, 4, 1, [(3, 3)], 8),
        (2, 4, 1, [(3, 3)], 4),
    ],
    group_divisor=4,
    out_channels=None,
    embed_dim=192,
    hop_length=160,
    pooling_func="ASTP",
    feat_type="pt",
    global_context_att=False,
    emb_bn=False,
    spec_params=dict(do_spec_aug=False, freq_mask_width=(0, 6), time_mask_width=(0, 8)),
    tf_optimized_arch=False,
)


def _preset(F_, C, b1d, b2d, stages, gdiv, gca=True):
    cfg = copy.deepcopy(_DEFAULTS)
    cfg.update(
        F=F_,
        C=C,
        block_1d_type=b1d,
        block_2d_type=b2d,
        stages_setup=[(s, n, e, [(3, 3)], r) for s, n, e, r in stages],
        group_divisor=gdiv,
        global_context_att=gca,
    )
    return cfg


#: ReDimNet layouts by name: the official ``b0``..``b6`` and the default ``M``, and ``small``
#: (the demo's CPU-sized backbone).
#: Each entry is an official ``model_config`` dict; a checkpoint's own
#: ``model_config`` always takes precedence over these.
REDIMNET_PRESETS = {
    "b0": _preset(60, 10, "conv+att", "basic_resnet",
                  [(1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10)], 1),
    "b1": _preset(72, 12, "conv+att", "convnext_like",
                  [(1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8)],
                  8, gca=False),
    "b2": _preset(72, 16, "conv+att", "convnext_like",
                  [(1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                   (2, 4, 1, 4)], 4),
    "b3": _preset(72, 16, "conv+att", "basic_resnet_fwse",
                  [(1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16),
                   (2, 8, 1, 16)], 1),
    "b4": _preset(72, 32, "conv+att", "basic_resnet_fwse",
                  [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                   (2, 4, 1, 16)], 1),
    "b5": _preset(72, 32, "conv+att", "basic_resnet_fwse",
                  [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                   (2, 4, 1, 16)], 16),
    "b6": _preset(72, 32, "conv+att", "basic_resnet",
                  [(1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
                   (2, 8, 1, 16)], 32),
    "M": copy.deepcopy(_DEFAULTS),
    # not an official layout: the demo's CPU-sized backbone (0.24 M parameters), for training
    # from scratch on a CPU (scratch_redimnet.yaml --redimnet_preset small)
    "small": _preset(40, 8, "conv", "basic_resnet", [(2, 1, 1, None), (2, 2, 1, None), (2, 2, 1, None)],
                     1, gca=False),
}

BLOCK_1D_TYPES = ("att", "fc", "conv", "conv+att")
BLOCK_2D_TYPES = ("convnext_like", "convnext_like_relu", "basic_resnet", "basic_resnet_fwse")


def redimnet_config(preset="M", **overrides):
    """A full official-style ``model_config``: a preset updated with overrides.

    Arguments
    ---------
    preset : str or dict
        Name in :data:`REDIMNET_PRESETS`, or a (possibly partial) config dict.
    **overrides
        Config entries to replace.

    Returns
    -------
    dict
        Deep copy with every key of the official wrapper's signature.

    Example
    -------
    >>> cfg = redimnet_config("b2", embed_dim=256)
    >>> cfg["C"], cfg["embed_dim"], cfg["block_2d_type"]
    (16, 256, 'convnext_like')
    """
    if isinstance(preset, str):
        if preset not in REDIMNET_PRESETS:
            raise ValueError(
                f"unknown ReDimNet preset {preset!r}; known: {sorted(REDIMNET_PRESETS)}"
            )
        cfg = copy.deepcopy(REDIMNET_PRESETS[preset])
    else:
        cfg = copy.deepcopy(_DEFAULTS)
        cfg.update(copy.deepcopy(dict(preset)))
    cfg.update(copy.deepcopy(overrides))
    return cfg


def plain_config(value):
    """A JSON-ready copy: tuples become lists, tensors and NumPy scalars Python numbers.

    Example
    -------
    >>> plain_config({"stages_setup": [(1, 2, 1, [(3, 3)], 12)], "x": torch.tensor(2)})
    {'stages_setup': [[1, 2, 1, [[3, 3]], 12]], 'x': 2}
    """
    if isinstance(value, dict):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if isinstance(value, torch.Tensor):
        return plain_config(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
class _FoldCache:
    """Caches eval-mode folded weights until any source tensor changes."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, sources, compute):
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return compute()  # graph capture: record the folding ops themselves
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            return compute()  # differentiable path, never cached
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in sources)
        if key != self.key:
            with torch.inference_mode(False), torch.no_grad():
                self.value = compute()
            self.key = key
        return self.value


def _inplace():
    """True when intermediate tensors may be updated in place (no autograd).

    Large fresh allocations are costly on CPU (page faults), so inference
    reuses each block's own intermediates.
    """
    return not torch.is_grad_enabled()


def _bn_affine(bn):
    """Eval-mode BatchNorm as ``scale, shift``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


def _bn_sources(bn):
    return [bn.weight, bn.bias, bn.running_mean, bn.running_var]


def _mask_2d(x, mask):
    """Zeroes padded frames of a ``[B, C, T, F]`` map (mask ``[B, T]``)."""
    if mask is None:
        return x
    return x * mask[:, None, :, None].to(x.dtype)


def _mask_1d(x, mask):
    """Zeroes padded frames of a time-major ``[B, T, D]`` tensor."""
    if mask is None:
        return x
    return x * mask[:, :, None].to(x.dtype)


def _to2d(x, f, c):
    """``[B, T, f*c]`` -> channels-last view ``[B, c, T, f]``."""
    b, t, _ = x.shape
    return x.reshape(b, t, f, c).permute(0, 3, 1, 2)


def _to1d(x):
    """``[B, c, T, f]`` -> ``[B, T, f*c]`` (no copy for channels-last input)."""
    b, c, t, f = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, t, f * c)


def _pointwise_2d(x, weight, bias):
    """1x1 Conv2d on a ``[B, C, T, F]`` map as a matrix product (channels-last)."""
    y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return y.permute(0, 3, 1, 2)


def _conv2d(x, weight, bias, groups, stride=1):
    """'same' Conv2d on a ``[B, C, T, F]`` map, weight in official (freq, time) order."""
    w = weight.transpose(2, 3)
    kt, kf = w.shape[2], w.shape[3]
    pad = (0, 0) if stride != 1 else (kt // 2, kf // 2)
    x = x.contiguous(memory_format=_CL)
    return F.conv2d(x, w.contiguous(memory_format=_CL), bias, stride=stride,
                    padding=pad, groups=groups)


def _dwconv_time(x, weight, bias, groups):
    """'same' Conv1d along time of a time-major ``[B, T, D]`` tensor."""
    k = weight.shape[-1]
    x4 = x.transpose(1, 2).unsqueeze(2)  # [B, D, 1, T], channels-last memory
    low = (torch.bfloat16, torch.float16)
    if x4.device.type == "cpu" and (x4.dtype in low or weight.dtype in low
                                    or torch.is_autocast_enabled("cpu")):
        # PyTorch 2.11's CPU bf16 depthwise conv2d of this channels-last view never returns
        # for some shapes (16 channels, kernel 19, 41 frames): run it in fp32 (its output in
        # the dtype it had), so fp32 runs take the path they always took, bit for bit
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x4.dtype
        with torch.autocast("cpu", enabled=False):
            y = F.conv2d(x4.float(), weight.unsqueeze(2).float(),
                         None if bias is None else bias.float(), padding=(0, k // 2),
                         groups=groups)
        return y.to(dtype).squeeze(2).transpose(1, 2)
    y = F.conv2d(x4, weight.unsqueeze(2), bias, padding=(0, k // 2), groups=groups)
    return y.squeeze(2).transpose(1, 2)


class _LayerNorm(nn.Module):
    """LayerNorm over channels (official ``channels_first`` LayerNorm, eps 1e-6)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        """Normalises the last dimension."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


# ---------------------------------------------------------------------------
# Attribute names follow the official model wherever they own parameters, so
# that ``state_dict()`` keys are exactly the official ones (minus ``spec.*``).
# ---------------------------------------------------------------------------
class _Slots(nn.Module):
    """Container whose children are named by (possibly sparse) indices."""

    def __init__(self, children):
        super().__init__()
        for name, module in children.items():
            self.add_module(str(name), module)

    def __getitem__(self, name):
        return self._modules[str(name)]


# ---------------------------------------------------------------------------
# 2-D blocks (input and output: channels-last [B, C, T, F])
# ---------------------------------------------------------------------------
class ConvNeXtBlock2d(nn.Module):
    """Grouped 3x3 conv -> BatchNorm -> GELU/ReLU -> 1x1 conv, plus skip.

    Arguments
    ---------
    channels : int
        Number of channels.
    group_divisor : int
        Channels per group of the 3x3 convolution.
    activation : str
        ``'gelu'`` (exact) or ``'relu'``.
    """

    def __init__(self, channels, group_divisor=1, activation="gelu"):
        super().__init__()
        self.groups = channels // group_divisor
        self.dwconvs = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=1, groups=self.groups)]
        )
        self.norm = nn.BatchNorm2d(channels)
        self.pwconv1 = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self._fold = _FoldCache()

    def _folded(self):
        conv = self.dwconvs[0]

        def compute():
            s, t = _bn_affine(self.norm)
            return conv.weight * s[:, None, None, None], conv.bias * s + t

        return self._fold.get([conv.weight, conv.bias] + _bn_sources(self.norm), compute)

    def forward(self, x, mask=None):
        """``x``: channels-last ``[B, C, T, F]``; ``mask``: ``[B, T]`` or None."""
        h = _mask_2d(x, mask)
        if self.training:
            conv = self.dwconvs[0]
            h = self.norm(_conv2d(h, conv.weight, conv.bias, self.groups))
        else:
            w, b = self._folded()
            h = _conv2d(h, w, b, self.groups)
        h = self.act(h)
        out = _pointwise_2d(h, self.pwconv1.weight, self.pwconv1.bias)
        return out.add_(x) if _inplace() else x + out


class FreqSE(nn.Module):
    """Frequency-wise squeeze-excitation: gates each frequency bin.

    Arguments
    ---------
    num_freq : int
        Number of frequency bins.
    hidden : int
        Bottleneck size.
    """

    def __init__(self, num_freq, hidden):
        super().__init__()
        self.squeeze = nn.Linear(num_freq, hidden)
        self.exitation = nn.Linear(hidden, num_freq)  # official spelling (checkpoint keys)

    def forward(self, x, mask=None):
        """``x``: ``[B, C, T, F]``; mean over channels and valid frames."""
        if mask is None:
            s = x.mean(dim=(1, 2))
        else:
            n = mask.to(x.dtype).sum(1, keepdim=True) * x.shape[1]
            s = _mask_2d(x, mask).sum(dim=(1, 2)) / n
        s = torch.sigmoid(self.exitation(F.relu(self.squeeze(s))))[:, None, None, :]
        return x.mul_(s) if _inplace() else x * s


class ResBlock2d(nn.Module):
    """ResNet basic block with grouped + pointwise convs and optional freq-wise SE.

    Arguments
    ---------
    channels : int
        Number of channels.
    num_freq : int
        Number of frequency bins (for the SE).
    group_divisor : int
        Channels per group of the 3x3 convolutions.
    use_se : bool
        Add the frequency-wise squeeze-excitation.
    """

    def __init__(self, channels, num_freq, group_divisor=1, use_se=False):
        super().__init__()
        self.groups = channels // group_divisor
        c = channels
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=self.groups)
        self.conv1pw = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=self.groups)
        self.conv2pw = nn.Conv2d(c, c, 1)
        self.bn2 = nn.BatchNorm2d(c)
        self.se = FreqSE(num_freq, min(64, max(c, 32))) if use_se else None
        self._fold = _FoldCache()

    def _folded(self):
        def compute():
            s1, t1 = _bn_affine(self.bn1)
            s2, t2 = _bn_affine(self.bn2)
            w2 = self.conv2pw.weight.flatten(1) * s2[:, None]
            b2 = self.conv2pw.bias * s2 + t2
            return s1, t1, w2, b2

        srcs = [self.conv2pw.weight, self.conv2pw.bias]
        return self._fold.get(srcs + _bn_sources(self.bn1) + _bn_sources(self.bn2), compute)

    def forward(self, x, mask=None):
        """``x``: channels-last ``[B, C, T, F]``; ``mask``: ``[B, T]`` or None."""
        inplace = _inplace()
        h = _conv2d(_mask_2d(x, mask), self.conv1.weight, None, self.groups)
        h = _pointwise_2d(h, self.conv1pw.weight, self.conv1pw.bias)
        if self.training:
            h = self.bn1(torch.relu(h))
            h = _conv2d(_mask_2d(h, mask), self.conv2.weight, None, self.groups)
            h = self.bn2(_pointwise_2d(h, self.conv2pw.weight, self.conv2pw.bias))
        else:
            s1, t1, w2, b2 = self._folded()
            s1, t1 = s1[:, None, None], t1[:, None, None]
            if inplace:
                h = h.relu_().mul_(s1).add_(t1)
            else:
                h = torch.addcmul(t1, torch.relu(h), s1)
            h = _conv2d(_mask_2d(h, mask), self.conv2.weight, None, self.groups)
            h = _pointwise_2d(h, w2, b2)
        if self.se is not None:
            h = self.se(h, mask)
        if inplace:
            return h.add_(x).relu_()
        return torch.relu(h + x)


class Block2d(nn.Module):
    """Holder of one 2-D block (``conv_block``), as in the official layout."""

    def __init__(self, block_type, channels, num_freq, group_divisor):
        super().__init__()
        if block_type in ("convnext_like", "convnext_like_relu"):
            act = "relu" if block_type == "convnext_like_relu" else "gelu"
            self.conv_block = ConvNeXtBlock2d(channels, group_divisor, act)
        elif block_type in ("basic_resnet", "basic_resnet_fwse"):
            self.conv_block = ResBlock2d(channels, num_freq, group_divisor,
                                         use_se=block_type == "basic_resnet_fwse")
        else:
            raise ValueError(f"unknown block_2d_type {block_type!r}; known: {BLOCK_2D_TYPES}")

    def forward(self, x, mask=None):
        return self.conv_block(x, mask)


class ChannelSqueeze2d(_Slots):
    """Grouped 3x3 conv -> BatchNorm -> act -> 1x1 conv, back to the stage width."""

    def __init__(self, in_channels, out_channels, group_divisor, relu):
        self.groups = out_channels // group_divisor
        super().__init__({
            0: nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=self.groups),
            1: nn.BatchNorm2d(out_channels, eps=1e-6),
            3: nn.Conv2d(out_channels, out_channels, 1),
        })
        self.relu = relu
        self._fold = _FoldCache()

    def forward(self, x, mask=None):
        conv, norm, pw = self[0], self[1], self[3]
        h = _mask_2d(x, mask)
        if self.training:
            h = norm(_conv2d(h, conv.weight, conv.bias, self.groups))
        else:
            def compute():
                s, t = _bn_affine(norm)
                return conv.weight * s[:, None, None, None], conv.bias * s + t

            w, b = self._fold.get([conv.weight, conv.bias] + _bn_sources(norm), compute)
            h = _conv2d(h, w, b, self.groups)
        h = F.relu(h) if self.relu else F.gelu(h)
        return _pointwise_2d(h, pw.weight, pw.bias)


# ---------------------------------------------------------------------------
# 1-D (time-context) blocks, all on time-major [B, T, D]
# ---------------------------------------------------------------------------
class ConvNeXtBlock1d(nn.Module):
    """Depthwise convs along time (one per kernel size) -> BN -> GELU -> 1x1, plus skip.

    Arguments
    ---------
    channels : int
        Number of channels.
    kernel_sizes : list of int
        Odd kernel sizes; their outputs are concatenated.
    """

    def __init__(self, channels, kernel_sizes):
        super().__init__()
        for k in kernel_sizes:
            if k % 2 != 1:
                raise ValueError(f"kernel sizes must be odd, got {k}")
        self.dwconvs = nn.ModuleList(
            nn.Conv1d(channels, channels, k, padding=k // 2, groups=channels)
            for k in kernel_sizes
        )
        n = len(kernel_sizes)
        self.norm = nn.BatchNorm1d(channels * n)
        self.pwconv1 = nn.Conv1d(channels * n, channels, 1)
        self._fold = _FoldCache()

    def _folded(self):
        def compute():
            s, t = _bn_affine(self.norm)
            c = self.pwconv1.out_channels
            out = []
            for i, conv in enumerate(self.dwconvs):
                si, ti = s[i * c:(i + 1) * c], t[i * c:(i + 1) * c]
                out.append((conv.weight * si[:, None, None], conv.bias * si + ti))
            return out

        srcs = [p for conv in self.dwconvs for p in (conv.weight, conv.bias)]
        return self._fold.get(srcs + _bn_sources(self.norm), compute)

    def forward(self, x, mask=None):
        """``x``: ``[B, T, C]``; ``mask``: ``[B, T]`` or None."""
        c = x.shape[-1]
        h = _mask_1d(x, mask)
        if self.training:
            h = torch.cat([_dwconv_time(h, cv.weight, cv.bias, c) for cv in self.dwconvs], -1)
            h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        else:
            outs = [_dwconv_time(h, w, b, c) for w, b in self._folded()]
            h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        h = F.gelu(h)
        out = F.linear(h, self.pwconv1.weight.squeeze(-1), self.pwconv1.bias)
        return out.add_(x) if _inplace() else x + out


class PosEncConv(nn.Module):
    """Depthwise conv along time + LayerNorm, added to the input."""

    def __init__(self, channels, kernel_size):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2,
                              groups=channels)
        self.norm = _LayerNorm(channels)

    def forward(self, x, mask=None):
        """``x``: ``[B, T, C]``; ``mask``: ``[B, T]`` or None."""
        h = _dwconv_time(_mask_1d(x, mask), self.conv.weight, self.conv.bias, x.shape[-1])
        return x + self.norm(h)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with key masking (fused SDPA).

    Arguments
    ---------
    dim : int
        Model width.
    num_heads : int
        Number of heads.
    """

    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self._fold = _FoldCache()

    def _qkv_params(self):
        projs = (self.q_proj, self.k_proj, self.v_proj)

        def compute():
            w = torch.cat([m.weight for m in projs], 0)
            b = torch.cat([m.bias for m in projs], 0)
            return w, b

        return self._fold.get([p for m in projs for p in (m.weight, m.bias)], compute)

    def forward(self, x, mask=None):
        """``x``: ``[B, T, D]``; ``mask``: ``[B, T]`` valid keys or None."""
        b, t, d = x.shape
        h = self.num_heads
        w, bias = self._qkv_params()
        qkv = F.linear(x, w, bias).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Linear -> tanh-approximate GELU -> Linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """Post-norm transformer encoder layer on ``[B, T, D]``.

    Arguments
    ---------
    dim : int
        Model width.
    hidden : int
        Feed-forward width.
    num_heads : int
        Attention heads.
    eps : float
        LayerNorm epsilon.
    """

    def __init__(self, dim, hidden, num_heads=4, eps=1e-6):
        super().__init__()
        self.attention = MultiHeadSelfAttention(dim, num_heads)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.feed_forward = FeedForward(dim, hidden)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x, mask=None):
        x = self.layer_norm(x + self.attention(x, mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class _FCContext(_Slots):
    """1x1 conv -> LayerNorm -> GELU -> 1x1 conv (``block_1d_type='fc'``)."""

    def __init__(self, hidden):
        super().__init__({
            0: nn.Conv1d(hidden, 2 * hidden, 1),
            1: _LayerNorm(2 * hidden),
            3: nn.Conv1d(2 * hidden, hidden, 1),
        })

    def forward(self, x, mask=None):
        h = F.linear(x, self[0].weight.squeeze(-1), self[0].bias)
        h = F.gelu(self[1](h))
        return F.linear(h, self[3].weight.squeeze(-1), self[3].bias)


class TimeContextBlock(nn.Module):
    """ReDimNet 1-D block: reduce width -> time-context module -> expand, plus skip.

    Arguments
    ---------
    dim : int
        Input width (``F * C``).
    hidden : int
        Reduced width.
    block_type : str
        ``'att'``, ``'fc'``, ``'conv'`` or ``'conv+att'``.
    pos_kernel : int
        Kernel of the positional conv (``'att'``).
    """

    def __init__(self, dim, hidden, block_type="att", pos_kernel=59):
        super().__init__()
        if block_type not in BLOCK_1D_TYPES:
            raise ValueError(f"unknown block_1d_type {block_type!r}; known: {BLOCK_1D_TYPES}")
        self.block_type = block_type
        self.red_dim_conv = nn.ModuleList([nn.Conv1d(dim, hidden, 1), _LayerNorm(hidden)])
        if block_type == "fc":
            self.tcm = _FCContext(hidden)
        elif block_type == "conv":
            self.tcm = nn.ModuleList(ConvNeXtBlock1d(hidden, [7, 15, 31]) for _ in range(4))
        elif block_type == "att":
            self.tcm = nn.ModuleList(
                [PosEncConv(hidden, pos_kernel), TransformerLayer(hidden, 2 * hidden)]
            )
        else:  # conv+att
            layers = [ConvNeXtBlock1d(hidden, [k]) for k in (7, 19, 31, 59)]
            self.tcm = nn.ModuleList(layers + [TransformerLayer(hidden, hidden)])
        self.exp_dim_conv = nn.Conv1d(hidden, dim, 1)

    def forward(self, x, mask=None):
        """``x``: time-major ``[B, T, dim]``; ``mask``: ``[B, T]`` or None."""
        red, norm = self.red_dim_conv
        h = norm(F.linear(x, red.weight.squeeze(-1), red.bias))
        if self.block_type == "fc":
            h = self.tcm(h)
        else:
            for layer in self.tcm:
                h = layer(h, mask)
        out = F.linear(h, self.exp_dim_conv.weight.squeeze(-1), self.exp_dim_conv.bias)
        return out.add_(x) if _inplace() else x + out


# ---------------------------------------------------------------------------
# backbone
# ---------------------------------------------------------------------------
class _StageWeights(nn.Module):
    """Softmax-weighted sum of earlier outputs (official ``weigth1d``)."""

    def __init__(self, n, dim):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, n, dim, 1))

    def forward(self, outputs):
        n = self.w.shape[1]
        if n == 1:
            return outputs[0]
        w = torch.softmax(self.w, dim=1)[0, :, :, 0]  # [n, dim or 1]
        acc = outputs[0] * w[0]
        inplace = _inplace()
        for i in range(1, n):
            if inplace:
                acc.addcmul_(outputs[i], w[i])
            else:
                acc = torch.addcmul(acc, outputs[i], w[i])
        return acc


class ReDimNetStage(_Slots):
    """One ReDimNet stage: weighted input sum, frequency stride, 2-D blocks, 1-D block.

    Children are named by their index in the official ``nn.Sequential``:
    ``0`` input weights, ``2`` strided conv, ``3..`` 2-D blocks, then the
    optional channel squeeze and the optional time-context block.
    """

    def __init__(self, index, F_, C, f, c, stride, num_blocks, conv_exp, att_block_red,
                 block_1d_type, block_2d_type, group_divisor):
        if stride not in (1, 2, 3):
            raise ValueError(f"stage stride must be 1, 2 or 3, got {stride}")
        if f % stride:
            raise ValueError(f"frequency size {f} is not divisible by stride {stride}")
        n = index + 1
        weights = _StageWeights(n, F_ * C if n > 1 else 1)
        weights.w.requires_grad_(n > 1)
        out_c = stride * c
        wide = int(out_c * conv_exp)
        children = {0: weights, 2: nn.Conv2d(c, wide, (stride, 1), stride=(stride, 1))}
        idx = 3
        for _ in range(num_blocks):
            children[idx] = Block2d(block_2d_type, wide, f // stride, group_divisor)
            idx += 1
        squeeze_idx = None
        if conv_exp != 1:
            relu = "relu" in block_1d_type and "relu" in block_2d_type
            children[idx] = ChannelSqueeze2d(wide, out_c, group_divisor, relu)
            squeeze_idx = idx
            idx += 1
        idx += 1  # the official to1d reshape
        tc_idx = None
        if att_block_red is not None:
            children[idx] = TimeContextBlock(F_ * C, (F_ * C) // att_block_red, block_1d_type)
            tc_idx = idx
        super().__init__(children)
        self.f, self.c, self.stride = f, c, stride
        self._block_idx = list(range(3, 3 + num_blocks))
        self._squeeze_idx, self._tc_idx = squeeze_idx, tc_idx

    def forward(self, outputs, mask=None):
        x = _to2d(self[0](outputs), self.f, self.c)
        down = self[2]
        if self.stride == 1:
            x = _pointwise_2d(x, down.weight, down.bias)
        else:
            x = _conv2d(x, down.weight, down.bias, 1, stride=(1, self.stride))
        for i in self._block_idx:
            x = self[i](x, mask)
        if self._squeeze_idx is not None:
            x = self[self._squeeze_idx](x, mask)
        x = _to1d(x)
        if self._tc_idx is not None:
            x = self[self._tc_idx](x, mask)
        return x


class ReDimNetBackbone(nn.Module):
    """Stem + stages + final weighted sum (+ optional 1x1 projection ``mfa``).

    Maps features ``[B, T, F]`` to time-major ``[B, T, D]`` with
    ``D = out_channels or F * C``. Arguments as in :class:`ReDimNet`.
    """

    def __init__(self, F=72, C=16, block_1d_type="att", block_2d_type="convnext_like",
                 stages_setup=None, group_divisor=4, out_channels=None, feat_agg_dropout=0.0):
        super().__init__()
        if block_1d_type not in BLOCK_1D_TYPES:
            raise ValueError(f"unknown block_1d_type {block_1d_type!r}; known: {BLOCK_1D_TYPES}")
        if block_2d_type not in BLOCK_2D_TYPES:
            raise ValueError(f"unknown block_2d_type {block_2d_type!r}; known: {BLOCK_2D_TYPES}")
        stages_setup = _DEFAULTS["stages_setup"] if stages_setup is None else stages_setup
        self.F, self.C = F, C
        self.feat_agg_dropout = float(feat_agg_dropout)
        self.stem = nn.ModuleList([nn.Conv2d(1, C, 3, padding=1), _LayerNorm(C)])
        f, c = F, C
        self.num_stages = len(stages_setup)
        for i, setup in enumerate(stages_setup):
            if len(setup) != 5:
                raise ValueError(
                    "each stages_setup entry must be (stride, num_blocks, conv_exp, "
                    f"kernel_sizes, att_block_red), got {setup!r}"
                )
            stride, num_blocks, conv_exp, _kernel_sizes, att_red = setup
            stage = ReDimNetStage(i, F, C, f, c, stride, num_blocks, conv_exp, att_red,
                                  block_1d_type, block_2d_type, group_divisor)
            self.add_module(f"stage{i}", stage)
            c, f = c * stride, f // stride
        self.fin_wght1d = _StageWeights(self.num_stages + 1, F * C)
        self.out_dim = F * C
        self.mfa = None
        if out_channels is not None:
            self.mfa = nn.ModuleList([nn.Conv1d(F * C, out_channels, 1),
                                      nn.BatchNorm1d(out_channels)])
            self.out_dim = out_channels

    def forward(self, feats, mask=None):
        """``feats``: ``[B, T, F]``; ``mask``: ``[B, T]`` valid frames or None."""
        conv, norm = self.stem
        x = _mask_1d(feats, mask).unsqueeze(1)  # [B, 1, T, F]
        x = _conv2d(x, conv.weight, conv.bias, 1)
        x = norm(x.permute(0, 2, 3, 1))  # [B, T, F, C]
        b, t = x.shape[:2]
        outputs = [x.reshape(b, t, -1)]
        for i in range(self.num_stages):
            out = getattr(self, f"stage{i}")(outputs, mask)
            if self.training and self.feat_agg_dropout > 0:
                out = F.dropout(out, p=self.feat_agg_dropout, training=True)
            outputs.append(out)
        x = self.fin_wght1d(outputs)
        if self.mfa is not None:
            proj, bn = self.mfa
            x = F.linear(x, proj.weight.squeeze(-1), proj.bias)
            x = bn(x.transpose(1, 2)).transpose(1, 2)
        return x


class ASTP(nn.Module):
    """Attentive statistics pooling (optionally with global context), length-aware.

    Arguments
    ---------
    in_dim : int
        Input width.
    bottleneck_dim : int
        Attention bottleneck.
    global_context_att : bool
        The attention also sees the utterance mean and std.
    """

    def __init__(self, in_dim, bottleneck_dim=128, global_context_att=False):
        super().__init__()
        self.in_dim = in_dim
        self.global_context_att = global_context_att
        self.linear1 = nn.Conv1d(in_dim * (3 if global_context_att else 1), bottleneck_dim, 1)
        self.linear2 = nn.Conv1d(bottleneck_dim, in_dim, 1)
        self.out_dim = 2 * in_dim

    def forward(self, x, mask=None):
        """``x``: time-major ``[B, T, D]`` -> ``[B, 2 * D]`` (weighted mean, std)."""
        w1 = self.linear1.weight.squeeze(-1)
        d = self.in_dim
        if self.global_context_att:
            if mask is None:
                mean = x.mean(dim=1, keepdim=True)
                var = x.var(dim=1, keepdim=True)
            else:
                m = mask[:, :, None].to(x.dtype)
                n = m.sum(dim=1, keepdim=True)
                mean = (x * m).sum(dim=1, keepdim=True) / n
                var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
            std = torch.sqrt(var + 1e-7)
            ctx = F.linear(mean, w1[:, d:2 * d]) + F.linear(std, w1[:, 2 * d:], self.linear1.bias)
            h = F.linear(x, w1[:, :d]) + ctx
        else:
            h = F.linear(x, w1, self.linear1.bias)
        logits = F.linear(torch.tanh(h), self.linear2.weight.squeeze(-1), self.linear2.bias)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, :, None], float("-inf"))
        alpha = torch.softmax(logits, dim=1)
        mean = (alpha * x).sum(dim=1)
        var = (alpha * x * x).sum(dim=1) - mean * mean
        std = torch.sqrt(var.clamp(min=1e-7))
        return torch.cat([mean, std], dim=1)


def _check_config(cfg):
    """Raises NotImplementedError / ValueError for configs this code cannot build."""
    if cfg.get("feat_type", "pt") not in ("pt", "pt_mel"):
        raise NotImplementedError(
            f"feat_type={cfg.get('feat_type')!r} is not supported (only 'pt')"
        )
    if cfg.get("tf_optimized_arch", False):
        raise NotImplementedError("tf_optimized_arch=True is not supported")
    if cfg.get("pooling_func", "ASTP") != "ASTP":
        raise NotImplementedError(
            f"pooling_func={cfg.get('pooling_func')!r} is not supported (only 'ASTP')"
        )
    if cfg.get("num_classes") is not None:
        raise NotImplementedError("the official classification head (num_classes) is not "
                                  "supported")
    if cfg.get("block_1d_type", "att") not in BLOCK_1D_TYPES:
        raise ValueError(f"unknown block_1d_type {cfg.get('block_1d_type')!r}; "
                         f"known: {BLOCK_1D_TYPES}")
    if cfg.get("block_2d_type", "convnext_like") not in BLOCK_2D_TYPES:
        raise ValueError(f"unknown block_2d_type {cfg.get('block_2d_type')!r}; "
                         f"known: {BLOCK_2D_TYPES}")


class PooledEmbeddingLobe(nn.Module):
    """What every lobe shares after its pooling: the embedding layer (``bn``, ``linear``,
    optional ``bn2``, set by the subclass) and ``forward`` = ``embed(pool_features(...))``."""

    @property
    def min_frames(self):
        """Fewest feature frames :meth:`pool_features` embeds.

        Two when the pooling's attention sees the utterance's standard deviation
        (``global_context_att``: an unbiased variance over one frame is NaN), else one;
        :class:`~speechbrain_mrl.model.redimnet2.ReDimNet2` also needs its time stride.
        ``MRLEncoder.min_samples`` turns it into samples through the front end.
        """
        return 2 if self.pool.global_context_att else 1

    def embed(self, stats):
        """Embedding layer: ``bn -> linear (-> bn2)`` on pooled statistics ``[B, pool_dim]``."""
        x = self.linear(self.bn(stats))
        if self.bn2 is not None:
            x = self.bn2(x)
        return x

    def forward(self, feats, lengths=None):
        """Features ``[B, T, F]`` (+ relative lengths ``[B]``) -> embeddings ``[B, embed_dim]``."""
        return self.embed(self.pool_features(feats, lengths))


@register_safe_hooks
class ReDimNet(PooledEmbeddingLobe):
    """ReDimNet speaker-embedding lobe (log-mel features -> embedding).

    Built from the keyword arguments of the official ``ReDimNetWrap``
    (``model_config`` of the released checkpoints); front-end keys
    (``hop_length``, ``spec_params``, ``feat_type``) are accepted, checked and
    kept in :attr:`model_config`.  ``state_dict()`` keys are the official ones
    without ``spec.*``.

    Arguments
    ---------
    F : int
        Number of mel bands.
    C : int
        Base channel count.
    block_1d_type : str
        ``'att'``, ``'fc'``, ``'conv'`` or ``'conv+att'``.
    block_2d_type : str
        ``'convnext_like'``, ``'convnext_like_relu'``, ``'basic_resnet'`` or
        ``'basic_resnet_fwse'``.
    stages_setup : list
        Per stage ``(stride, num_blocks, conv_exp, kernel_sizes, att_block_red)``.
    group_divisor : int
        Channels per group of the grouped 3x3 convolutions.
    out_channels : int or None
        Width of the optional 1x1 projection before pooling.
    embed_dim : int
        Embedding size.
    hop_length : int
        Frame shift of the front end (kept in the config).
    pooling_func : str
        Only ``'ASTP'``.
    feat_type : str
        Only ``'pt'``.
    global_context_att : bool
        ASTP attention also sees the utterance mean and std.
    emb_bn : bool
        BatchNorm on the embedding.
    spec_params : dict
        Front-end options (kept in the config).
    tf_optimized_arch : bool
        Only False.
    feat_agg_dropout : float
        Dropout on stage outputs (training only).
    **extra
        Other official wrapper keys with neutral values (``num_classes=None``,
        ``class_dropout``, ``head_activation``, ``return_all_outputs``).

    Example
    -------
    >>> cfg = dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4), (2, 1, 2, [(3, 3)], None)],
    ...            group_divisor=2, embed_dim=8, global_context_att=True)
    >>> model = ReDimNet(**cfg).eval()
    >>> feats = torch.randn(2, 50, 16)
    >>> model(feats).shape
    torch.Size([2, 8])
    >>> model.pool_features(feats).shape, model.pool_dim
    (torch.Size([2, 128]), 128)
    >>> full = model(feats[:1, :30])
    >>> padded = torch.cat([feats[:1, :30], torch.zeros(1, 20, 16)], dim=1)
    >>> batched = model(torch.cat([padded, feats[1:]]), torch.tensor([0.6, 1.0]))
    >>> bool(torch.allclose(batched[0], full[0], atol=1e-5))
    True
    >>> ReDimNet.from_preset("b0").model_config["C"]
    10
    """

    def __init__(self, F=72, C=16, block_1d_type="att", block_2d_type="convnext_like",
                 stages_setup=None, group_divisor=4, out_channels=None, embed_dim=192,
                 hop_length=160, pooling_func="ASTP", feat_type="pt", global_context_att=False,
                 emb_bn=False, spec_params=None, tf_optimized_arch=False, feat_agg_dropout=0.0,
                 **extra):
        super().__init__()
        if stages_setup is None:
            stages_setup = copy.deepcopy(_DEFAULTS["stages_setup"])
        if spec_params is None:
            spec_params = copy.deepcopy(_DEFAULTS["spec_params"])
        self.model_config = copy.deepcopy(dict(
            F=F, C=C, block_1d_type=block_1d_type, block_2d_type=block_2d_type,
            stages_setup=stages_setup, group_divisor=group_divisor, out_channels=out_channels,
            embed_dim=embed_dim, hop_length=hop_length, pooling_func=pooling_func,
            feat_type=feat_type, global_context_att=global_context_att, emb_bn=emb_bn,
            spec_params=spec_params, tf_optimized_arch=tf_optimized_arch, **extra,
        ))
        if feat_agg_dropout:
            self.model_config["feat_agg_dropout"] = feat_agg_dropout
        _check_config(self.model_config)
        self.F, self.C = int(F), int(C)
        self.embed_dim = int(embed_dim)
        self.backbone = ReDimNetBackbone(self.F, self.C, block_1d_type, block_2d_type,
                                         stages_setup, group_divisor, out_channels,
                                         feat_agg_dropout)
        self.pool = ASTP(self.backbone.out_dim, global_context_att=global_context_att)
        self.pool_dim = self.pool.out_dim
        self.bn = nn.BatchNorm1d(self.pool_dim)
        self.linear = nn.Linear(self.pool_dim, self.embed_dim)
        self.bn2 = nn.BatchNorm1d(self.embed_dim) if emb_bn else None

    @classmethod
    def from_preset(cls, name, **overrides):
        """Builds a preset of :data:`REDIMNET_PRESETS` (``b0``..``b6``, ``M``)."""
        return cls(**redimnet_config(name, **overrides))

    def pool_features(self, feats, lengths=None):
        """Backbone + attentive statistics pooling.

        Arguments
        ---------
        feats : torch.Tensor
            Features ``[B, T, F]``.
        lengths : torch.Tensor, optional
            Relative lengths ``[B]`` in ``(0, 1]``.

        Returns
        -------
        torch.Tensor
            Pooled statistics ``[B, pool_dim]`` (before ``bn``).
        """
        if feats.dim() != 3 or feats.shape[-1] != self.F:
            raise ValueError(f"expected features [B, T, {self.F}], got {tuple(feats.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=feats.device)
        mask = length_mask(lengths, feats.shape[1])
        x = self.backbone(feats, mask)
        return self.pool(x, mask)

