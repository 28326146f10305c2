"""Front ends of ReDimNet2 beyond :class:`~speechbrain_mrl.model.features.ReDimNetFbank`.

ReDimNet2 (``PalabraAI/redimnet2``) has two log-mel front ends:

* ``feat_type='pt'``: the torchaudio-style filterbank of ReDimNet, which
  :class:`~speechbrain_mrl.model.features.ReDimNetFbank` computes; with
  ``norm_signal=True`` each waveform is first scaled to zero mean and unit
  (biased) standard deviation, which :class:`NormalizedReDimNetFbank` adds;
* ``feat_type='tf'``: a TensorFlow-style filterbank, :class:`TFMelFbank`:
  optional signal normalisation (eps 1e-8) -> pre-emphasis (0.97) -> frames of
  ``win_length`` samples every ``hop_length`` samples, the signal zero-padded
  by ``hop_length // 2`` on both sides, each frame multiplied with a symmetric
  Hamming window and projected on the cosines and sines of the first
  ``n_fft // 2`` DFT bins -> power, clipped to ``[eps, 1 / eps]`` -> a
  triangular mel matrix (``n_fft // 2`` bins spread from 0 Hz to the Nyquist
  frequency, bands from ``f_min`` to ``f_max``), clipped again -> ``log(x + eps)``
  -> mean normalisation over time.

Both honour relative lengths the way ``ReDimNetFbank`` does: an utterance in a
zero-padded batch gets the features it gets alone (its own statistics, its own
end), and its padded frames are zero.

Authors
-------
 * speechbrain-mrl developers
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mrl.model.features import ReDimNetFbank, building_graph

__all__ = ["TFMelFbank", "NormalizedReDimNetFbank", "normalize_signal", "tf_mel_matrix",
           "tf_dft_kernels"]


def _valid_samples(wav_lens, total, device):
    """Absolute valid lengths ``[B]`` (int64, in ``[1, total]``), or None when all are full."""
    if wav_lens is None:
        return None
    samples = torch.round(wav_lens.detach().to(device).float() * total).long().clamp(1, total)
    if not building_graph() and bool((samples >= total).all()):
        return None
    return samples


def normalize_signal(wavs, samples=None, eps=1e-8):
    """Zero mean, unit (biased) standard deviation per waveform, over its valid samples.

    Arguments
    ---------
    wavs : torch.Tensor
        ``[B, T]`` waveforms.
    samples : torch.Tensor, optional
        Valid lengths ``[B]`` in samples (None: all ``T``).
    eps : float
        Added to the standard deviation.

    Returns
    -------
    torch.Tensor
        ``(x - mean) / (std + eps)``; samples past each length are zero.

    Example
    -------
    >>> x = torch.randn(2, 100)
    >>> y = normalize_signal(x, torch.tensor([100, 60]))
    >>> bool(torch.allclose(y[1, :60], normalize_signal(x[1:, :60])[0], atol=1e-5))
    True
    >>> bool((y[1, 60:] == 0).all())
    True
    """
    if samples is None:
        mean = wavs.mean(dim=1, keepdim=True)
        std = wavs.std(dim=1, keepdim=True, unbiased=False)
        return (wavs - mean) / (std + eps)
    valid = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < samples[:, None])
    valid = valid.to(wavs.dtype)
    count = samples[:, None].to(wavs.dtype)
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / (var.sqrt() + eps) * valid


def _hz_to_mel(hz):
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def tf_mel_matrix(n_mels=72, n_fft=512, sample_rate=16000, f_min=20.0, f_max=7600.0):
    """The TF-style mel matrix ``[n_mels, n_fft // 2, 1]`` (the official ``melbanks_pt``).

    Triangles with edges evenly spaced in mel between ``f_min`` and ``f_max``,
    evaluated at ``n_fft // 2`` bins whose first is 0 Hz (a zero row) and the
    others spread evenly up to the Nyquist frequency.

    Example
    -------
    >>> tf_mel_matrix(n_mels=40).shape
    torch.Size([40, 256, 1])
    """
    bins = n_fft // 2
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64))),
                           float(_hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64))),
                           n_mels + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    freqs = torch.linspace(0.0, float(sample_rate // 2), bins, dtype=torch.float64)
    mel = _hz_to_mel(freqs)[1:, None]
    rising = (mel - lower) / (centre - lower)
    falling = (upper - mel) / (upper - centre)
    tri = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights = torch.cat([torch.zeros(1, n_mels, dtype=torch.float64), tri]).float()
    return weights.t().contiguous()[:, :, None]


def tf_dft_kernels(win_length=400, n_fft=512):
    """Windowed DFT rows ``(real, imag)``, each ``[n_fft // 2, 1, win_length]``.

    Row ``k`` holds ``cos(2 pi k n / n_fft) * w[n]`` (``sin`` for the imaginary
    part) for ``n < win_length``, ``w`` a symmetric Hamming window, rounded as
    the official code rounds them (each factor to float32, then their product).

    Example
    -------
    >>> re, im = tf_dft_kernels()
    >>> re.shape, bool(im[0].abs().max() == 0)
    (torch.Size([256, 1, 400]), True)
    """
    if n_fft < win_length:
        raise ValueError(f"n_fft={n_fft} must be at least win_length={win_length}")
    window = torch.hamming_window(win_length, periodic=False, dtype=torch.float64).float()
    k = torch.arange(n_fft // 2, dtype=torch.float64)[:, None]
    n = torch.arange(win_length, dtype=torch.float64)[None, :]
    phase = 2 * math.pi * k * n / n_fft
    real = torch.cos(phase).float() * window
    imag = torch.sin(phase).float() * window
    return real[:, None, :].contiguous(), imag[:, None, :].contiguous()


def _spec_augment(feats, valid, freq_mask_width, time_mask_width, freq_start_bin):
    """Zeroes one random band of valid frames and one random band of mel bins per utterance."""
    batch, _, n_mels = feats.shape
    dev = feats.device
    for dim, (lo, hi), size, start_lo in (
        (1, time_mask_width, valid, 0),
        (2, freq_mask_width, torch.full((batch,), n_mels, device=dev), freq_start_bin),
    ):
        if hi <= lo:
            continue
        width = torch.randint(lo, hi, (batch,), device=dev)
        span = (size - width - start_lo).clamp(min=1)
        start = start_lo + (torch.rand(batch, device=dev) * span).long()
        axis = torch.arange(feats.shape[dim], device=dev)[None, :]
        band = (axis >= start[:, None]) & (axis < (start + width)[:, None])
        feats = feats.masked_fill(band.unsqueeze(2) if dim == 1 else band.unsqueeze(1), 0.0)
    return feats


class TFMelFbank(nn.Module):
    """TF-style log-mel front end of ReDimNet2 (``feat_type='tf'``), padding-aware.

    Arguments
    ---------
    n_mels : int
        Number of mel bands (the model's ``F``).
    hop_length : int
        Frame shift in samples.
    sample_rate : int
        Sampling rate in Hz.
    n_fft : int
        DFT size (``n_fft // 2`` bins are kept).
    win_length : int
        Frame (and Hamming window) length.
    f_min, f_max : float
        Mel band range in Hz.
    do_spec_aug : bool
        SpecAugment-style masking in training mode.
    norm_signal : bool
        Scale each waveform to zero mean and unit standard deviation first.
    do_preemph : bool
        Pre-emphasis (only True: the official state dict then holds its filter).
    freq_start_bin : int
        Lowest mel band a frequency mask may start at.
    freq_mask_width, time_mask_width : tuple of int
        ``(low, high)`` range of mask widths (``high`` exclusive).
    eps : float
        Floor of the power and mel values, added before the log, and added
        to the standard deviation of the signal normalisation.

    Buffers ``preemph_filter`` ``[1, 1, 2]``, ``real_kernel`` and ``imag_kernel``
    ``[n_fft // 2, 1, win_length]`` and ``mel_fb`` ``[n_mels, n_fft // 2, 1]``
    hold the official ``spec.torchfbank.{1.flipped_filter, 2.real_kernel_pt,
    2.image_kernel_pt, 2.melbanks_pt}`` (see :data:`OFFICIAL_KEYS`).

    Example
    -------
    >>> fbank = TFMelFbank(n_mels=40, norm_signal=True)
    >>> wavs = torch.randn(2, 16000)
    >>> feats = fbank(wavs, torch.tensor([1.0, 0.5]))
    >>> feats.shape, fbank.num_frames(16000), fbank.num_frames(8000)
    (torch.Size([2, 99, 40]), 99, 49)
    >>> alone = fbank(wavs[1:, :8000])
    >>> bool((feats[1, :49] - alone[0]).abs().max() < 1e-4), bool((feats[1, 49:] == 0).all())
    (True, True)
    """

    #: Official ``spec.*`` key -> buffer name.
    OFFICIAL_KEYS = {
        "spec.torchfbank.1.flipped_filter": "preemph_filter",
        "spec.torchfbank.2.real_kernel_pt": "real_kernel",
        "spec.torchfbank.2.image_kernel_pt": "imag_kernel",
        "spec.torchfbank.2.melbanks_pt": "mel_fb",
    }

    def __init__(self, n_mels=80, hop_length=160, sample_rate=16000, n_fft=512, win_length=400,
                 f_min=20, f_max=7600, do_spec_aug=False, norm_signal=False, do_preemph=True,
                 freq_start_bin=0, freq_mask_width=(0, 8), time_mask_width=(0, 10), eps=1e-8):
        super().__init__()
        if not do_preemph:
            raise ValueError("TFMelFbank supports only do_preemph=True")
        self.n_mels = int(n_mels)
        self.hop_length = int(hop_length)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.norm_signal = bool(norm_signal)
        self.eps = float(eps)
        self.do_spec_aug = bool(do_spec_aug)
        self.freq_start_bin = int(freq_start_bin)
        self.freq_mask_width = tuple(int(v) for v in freq_mask_width)
        self.time_mask_width = tuple(int(v) for v in time_mask_width)
        self.register_buffer("preemph_filter", torch.tensor([[[-0.97, 1.0]]]))
        real, imag = tf_dft_kernels(self.win_length, self.n_fft)
        self.register_buffer("real_kernel", real)
        self.register_buffer("imag_kernel", imag)
        self.register_buffer("mel_fb", tf_mel_matrix(self.n_mels, self.n_fft, self.sample_rate,
                                                     f_min, f_max))

    def extra_repr(self):
        return (f"n_mels={self.n_mels}, hop_length={self.hop_length}, n_fft={self.n_fft}, "
                f"win_length={self.win_length}, norm_signal={self.norm_signal}")

    def num_frames(self, num_samples):
        """Number of frames for ``num_samples`` samples (at least 1)."""
        pad = self.hop_length // 2
        return max(1, (int(num_samples) + 2 * pad - self.win_length) // self.hop_length + 1)

    def _frames(self, samples):
        pad = self.hop_length // 2
        n = torch.div(samples + 2 * pad - self.win_length, self.hop_length, rounding_mode="floor")
        return (n + 1).clamp(min=1)

    def frame_lengths(self, wav_lens, num_samples):
        """Relative valid-frame lengths for relative waveform lengths (None stays None)."""
        if wav_lens is None:
            return None
        samples = torch.round(wav_lens.detach().float() * num_samples).long().clamp(1, num_samples)
        if building_graph():  # num_frames' int() and max() would fix a symbolic length
            pad = self.hop_length // 2
            total = (num_samples + 2 * pad - self.win_length) // self.hop_length + 1
        else:
            total = self.num_frames(num_samples)
        return self._frames(samples).float() / total

    def forward(self, wavs, wav_lens=None):
        """Normalised log-mel features ``[B, frames, n_mels]`` (padded frames zero).

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms ``[B, T]`` (or ``[T]``).
        wav_lens : torch.Tensor, optional
            Relative lengths ``[B]`` in ``(0, 1]``.

        Returns
        -------
        torch.Tensor
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(wavs.shape)}")
        in_dtype = wavs.dtype
        total = wavs.shape[1]
        samples = _valid_samples(wav_lens, total, wavs.device)
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            x = wavs.float()
            if samples is not None:
                valid = (torch.arange(total, device=x.device)[None, :] < samples[:, None]).float()
            if self.norm_signal:
                x = normalize_signal(x, samples, self.eps)
            elif samples is not None:
                x = x * valid
            # pre-emphasis, the sample before the first one mirrored (reflect padding)
            prev = torch.cat([x[:, 1:2], x[:, :-1]], dim=1)
            x = x * self.preemph_filter[0, 0, 1] + prev * self.preemph_filter[0, 0, 0]
            if samples is not None:
                x = x * valid  # the first padded sample saw the last valid one
            x = x.unsqueeze(1)
            pad = self.hop_length // 2
            real = F.conv1d(x, self.real_kernel, stride=self.hop_length, padding=pad)
            imag = F.conv1d(x, self.imag_kernel, stride=self.hop_length, padding=pad)
            power = (torch.square(real) + torch.square(imag)).clip(self.eps, 1 / self.eps)
            mel = F.conv1d(power, self.mel_fb).clip(self.eps, 1 / self.eps)
            feats = torch.log(mel + self.eps).transpose(1, 2)  # [B, frames, n_mels]
            if samples is None:
                feats = feats - feats.mean(dim=1, keepdim=True)
                frames = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
            else:
                frames = self._frames(samples)
                mask = (torch.arange(feats.shape[1], device=feats.device)[None, :]
                        < frames[:, None]).unsqueeze(-1).to(feats.dtype)
                mean = (feats * mask).sum(dim=1, keepdim=True) / frames[:, None, None]
                feats = (feats - mean) * mask
            if self.training and self.do_spec_aug:
                feats = _spec_augment(feats, frames, self.freq_mask_width, self.time_mask_width,
                                      self.freq_start_bin)
        return feats.to(in_dtype)


class NormalizedReDimNetFbank(ReDimNetFbank):
    """:class:`~speechbrain_mrl.model.features.ReDimNetFbank` after signal normalisation.

    The ``feat_type='pt'`` front end with ``spec_params['norm_signal']=True``:
    each waveform is scaled to zero mean and unit (biased) standard deviation
    over its valid samples (``eps`` 1e-6 added to the deviation) before the
    usual log-mel features. Arguments as ``ReDimNetFbank`` (``norm_signal`` is
    accepted and must be True); the state dict is the same.

    Example
    -------
    >>> fbank = NormalizedReDimNetFbank(n_mels=40)
    >>> wavs = torch.randn(2, 16000)
    >>> bool(torch.allclose(fbank(wavs * 3), fbank(wavs), atol=1e-4))
    True
    """

    def __init__(self, *args, norm_signal=True, signal_eps=1e-6, **kwargs):
        if not norm_signal:
            raise ValueError("NormalizedReDimNetFbank is the norm_signal=True front end")
        super().__init__(*args, **kwargs)
        self.signal_eps = float(signal_eps)

    def forward(self, wavs, wav_lens=None):
        """As :meth:`ReDimNetFbank.forward`, on normalised waveforms."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        samples = _valid_samples(wav_lens, wavs.shape[-1], wavs.device) if wavs.dim() == 2 else None
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            normed = normalize_signal(wavs.float(), samples, self.signal_eps).to(wavs.dtype)
        return super().forward(normed, wav_lens)
