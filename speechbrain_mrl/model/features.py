"""Log-mel front end of ReDimNet, numerically identical to the official one.

The official ReDimNet models (IDRnD/ReDimNet, ``feat_type='pt'``) compute
features as: pre-emphasis (coefficient 0.97, first sample from a one-sample
reflect pad) -> power spectrogram (``n_fft=512``, Hamming window of 400
samples, hop from the config, centred frames with reflect padding) -> HTK mel
filterbank (20-7600 Hz, no normalisation) -> ``log(x + 1e-6)`` -> mean
normalisation over time.

:class:`ReDimNetFbank` reproduces this and adds padding awareness: with
relative lengths, each utterance of a zero-padded batch is reflect-padded at
its own end, normalised over its own valid frames only, and its padded frames
are set to zero, so it gives the same features as when run alone.

Features are returned time-major, ``[batch, frames, n_mels]`` (SpeechBrain's
layout), which is also what :class:`speechbrain_mrl.model.redimnet.ReDimNet` expects.

Authors
-------
 * speechbrain-mrl developers
"""
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

__all__ = ["ReDimNetFbank", "relative_frame_lengths", "length_mask"]


def relative_frame_lengths(wav_lens, num_samples, hop_length):
    """Relative valid-frame lengths of a padded batch of waveforms.

    A waveform of ``L`` samples gives ``1 + L // hop_length`` centred frames.

    Arguments
    ---------
    wav_lens : torch.Tensor or None
        Relative waveform lengths in ``(0, 1]`` (SpeechBrain convention).
    num_samples : int
        Padded waveform length ``T``.
    hop_length : int
        Frame shift in samples.

    Returns
    -------
    torch.Tensor or None
        ``(1 + L // hop) / (1 + T // hop)`` per utterance (exact frame ratio).

    Example
    -------
    >>> relative_frame_lengths(torch.tensor([1.0, 0.5]), 32000, 160)
    tensor([1.0000, 0.5025])
    """
    if wav_lens is None:
        return None
    samples = _abs_lengths(wav_lens, num_samples)
    total = 1 + num_samples // hop_length
    return (1 + torch.div(samples, hop_length, rounding_mode="floor")).float() / total


def _abs_lengths(rel_lens, total):
    """Absolute lengths (int64, in [1, total]) from relative ones."""
    lens = torch.round(rel_lens.detach().float() * total).long()
    return lens.clamp(1, total)


def building_graph():
    """True while tracing or exporting: graphs keep the length-masked path for every batch."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def length_mask(lengths, max_len):
    """Boolean mask ``[B, max_len]`` of valid steps, or None if all are valid.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths in ``(0, 1]``.
    max_len : int
        Padded length.

    Returns
    -------
    torch.Tensor or None
        ``mask[b, t]`` is True for valid steps; None when ``lengths`` is None
        or every sequence is full (so callers can skip masking work).

    Example
    -------
    >>> length_mask(torch.tensor([1.0, 0.5]), 4)
    tensor([[ True,  True,  True,  True],
            [ True,  True, False, False]])
    >>> length_mask(torch.tensor([1.0, 1.0]), 4) is None
    True
    """
    if lengths is None:
        return None
    n = _abs_lengths(lengths.to(torch.float32), max_len).to(lengths.device)
    if not building_graph() and bool((n >= max_len).all()):
        return None
    return torch.arange(max_len, device=n.device)[None, :] < n[:, None]


class ReDimNetFbank(nn.Module):
    """Log-mel filterbank of the official ReDimNet (``feat_type='pt'``).

    Arguments
    ---------
    n_mels : int
        Number of mel bands (ReDimNet's ``F``).
    hop_length : int
        Frame shift in samples.
    sample_rate : int
        Sampling rate in Hz.
    n_fft : int
        FFT size.
    win_length : int
        Hamming window length.
    f_min, f_max : float
        Mel filterbank range in Hz.
    preemphasis : float
        Pre-emphasis coefficient.
    do_spec_aug : bool
        Apply SpecAugment-style masking (training mode only).
    freq_mask_width, time_mask_width : tuple of int
        ``(low, high)`` range of mask widths (``high`` exclusive).
    num_apply_spec_aug : int
        How many times the masking is applied.
    freq_start_bin : int
        Lowest mel band a frequency mask may start at.
    **unused
        Other official ``spec_params`` entries are accepted only with their
        default values (e.g. ``norm_signal=False``, ``spec_norm='mn'``).

    Buffers ``preemph_filter`` ``[1, 1, 2]``, ``window`` ``[win_length]`` and
    ``mel_fb`` ``[n_fft // 2 + 1, n_mels]`` hold the official
    ``spec.torchfbank.{1.flipped_filter, 2.spectrogram.window,
    2.mel_scale.fb}`` values.

    Example
    -------
    >>> fbank = ReDimNetFbank(n_mels=60)
    >>> wavs = torch.randn(2, 16000)
    >>> feats = fbank(wavs, torch.tensor([1.0, 0.5]))
    >>> feats.shape
    torch.Size([2, 101, 60])
    >>> alone = fbank(wavs[1:, :8000])
    >>> bool((feats[1, :51] - alone[0]).abs().max() < 1e-4)
    True
    >>> bool((feats[1, 51:] == 0).all())
    True
    """

    def __init__(
        self,
        n_mels=72,
        hop_length=160,
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        f_min=20.0,
        f_max=7600.0,
        preemphasis=0.97,
        do_spec_aug=False,
        freq_mask_width=(0, 6),
        time_mask_width=(0, 8),
        num_apply_spec_aug=1,
        freq_start_bin=0,
        **unused,
    ):
        super().__init__()
        supported = {"norm_signal": False, "do_preemph": True, "spec_norm": "mn"}
        for key, value in unused.items():
            if key not in supported or value != supported[key]:
                raise NotImplementedError(
                    f"ReDimNetFbank does not support spec_params {key}={value!r}"
                )
        self.n_mels = int(n_mels)
        self.hop_length = int(hop_length)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.do_spec_aug = bool(do_spec_aug)
        self.freq_mask_width = tuple(int(v) for v in freq_mask_width)
        self.time_mask_width = tuple(int(v) for v in time_mask_width)
        self.num_apply_spec_aug = int(num_apply_spec_aug)
        self.freq_start_bin = int(freq_start_bin)
        self.register_buffer(
            "preemph_filter", torch.tensor([[[-float(preemphasis), 1.0]]])
        )
        self.register_buffer("window", torch.hamming_window(self.win_length))
        fb = torchaudio.functional.melscale_fbanks(
            self.n_fft // 2 + 1,
            f_min=float(f_min),
            f_max=float(f_max),
            n_mels=self.n_mels,
            sample_rate=self.sample_rate,
            norm=None,
            mel_scale="htk",
        )
        self.register_buffer("mel_fb", fb)
        #: Compute the spectrogram as a convolution with DFT rows instead of
        #: ``torch.stft`` (set by the graph export; see :meth:`_power_matmul`).
        self.stft_as_matmul = False
        self.register_buffer("dft_basis", self._dft_basis(), persistent=False)

    def extra_repr(self):
        return (
            f"n_mels={self.n_mels}, hop_length={self.hop_length}, n_fft={self.n_fft}, "
            f"win_length={self.win_length}, do_spec_aug={self.do_spec_aug}"
        )

    def num_frames(self, num_samples):
        """Number of frames for ``num_samples`` samples."""
        return 1 + int(num_samples) // self.hop_length

    def frame_lengths(self, wav_lens, num_samples):
        """Relative frame lengths for relative waveform lengths (see
        :func:`relative_frame_lengths`)."""
        return relative_frame_lengths(wav_lens, num_samples, self.hop_length)

    def _preemphasis(self, x):
        # y[t] = x[t] - coef * x[t - 1], with x[-1] := x[1] (reflect pad).
        w_prev = self.preemph_filter[0, 0, 0]
        w_cur = self.preemph_filter[0, 0, 1]
        prev = torch.cat([x[:, 1:2], x[:, :-1]], dim=1)
        return x * w_cur + prev * w_prev

    def _power_matmul(self, x):
        """Power spectrogram ``[B, frames, n_fft // 2 + 1]`` of centre-padded ``x`` as one
        strided convolution with windowed cosine and sine rows (a real DFT).

        The same frames as ``torch.stft`` (the window centred in ``n_fft``),
        in plain convolution and arithmetic that graph runtimes read (OpenVINO
        cannot read an ONNX ``STFT`` of dynamic length); equal to the FFT's
        power to float rounding (features within about 2e-4).
        """
        bins = self.n_fft // 2 + 1
        offset = (self.n_fft - self.win_length) // 2
        # trimmed by the window's zero margins: the same frame count as the STFT
        x = x[:, offset:x.shape[1] - (self.n_fft - self.win_length - offset)].unsqueeze(1)
        spec = F.conv1d(x, self.dft_basis.to(x.dtype), stride=self.hop_length).transpose(1, 2)
        return spec[..., :bins].pow(2) + spec[..., bins:].pow(2)

    def _dft_basis(self):
        """``[2 * (n_fft // 2 + 1), 1, win_length]``: windowed cosine then sine rows.

        Built from the Hamming window of ``__init__`` (official checkpoints
        hold the same window); not saved in ``state_dict``.
        """
        offset = (self.n_fft - self.win_length) // 2
        n = torch.arange(self.win_length, dtype=torch.float64) + offset
        k = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)[:, None]
        phase = 2 * torch.pi * k * n / self.n_fft
        window = self.window.double()
        return torch.cat([torch.cos(phase) * window, torch.sin(phase) * window]).float()[:, None]

    def _centre_pad(self, x, samples):
        """Reflect-pads each waveform by ``n_fft // 2`` around its own valid part."""
        pad = self.n_fft // 2
        if samples is None:
            return F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        total = x.shape[1]
        pos = torch.arange(-pad, total + pad, device=x.device)[None, :]
        last = (samples - 1)[:, None]
        idx = pos.abs()
        idx = torch.where(idx > last, 2 * last - idx, idx)
        idx = idx.clamp(0, total - 1)
        return torch.gather(x, 1, idx)

    def forward(self, wavs, wav_lens=None):
        """Computes normalised log-mel features.

        Arguments
        ---------
        wavs : torch.Tensor
            Waveforms ``[B, T]`` (or ``[T]``) at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            Relative lengths ``[B]`` in ``(0, 1]``; None means all full.

        Returns
        -------
        torch.Tensor
            Features ``[B, 1 + T // hop_length, n_mels]`` in the input dtype;
            frames beyond each utterance's length are zero.
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(wavs.shape)}")
        in_dtype = wavs.dtype
        total = wavs.shape[1]
        samples = None
        if wav_lens is not None:
            samples = _abs_lengths(wav_lens.to(wavs.device), total)
            if not building_graph() and bool((samples >= total).all()):
                samples = None
        with torch.no_grad(), torch.autocast(wavs.device.type, enabled=False):
            x = self._preemphasis(wavs.float())
            x = self._centre_pad(x, samples)
            if self.stft_as_matmul:
                power = self._power_matmul(x)
            else:
                spec = torch.stft(
                    x,
                    n_fft=self.n_fft,
                    hop_length=self.hop_length,
                    win_length=self.win_length,
                    window=self.window,
                    center=False,
                    normalized=False,
                    onesided=True,
                    return_complex=True,
                )
                power = spec.abs().pow(2.0).transpose(1, 2)
            feats = torch.matmul(power, self.mel_fb)
            feats = torch.log(feats + 1e-6)
            if samples is None:
                feats = feats - feats.mean(dim=1, keepdim=True)
            else:
                n_frames = feats.shape[1]
                valid = 1 + torch.div(samples, self.hop_length, rounding_mode="floor")
                mask = torch.arange(n_frames, device=feats.device)[None, :] < valid[:, None]
                mask = mask.unsqueeze(-1).to(feats.dtype)
                mean = (feats * mask).sum(dim=1, keepdim=True) / valid[:, None, None]
                feats = (feats - mean) * mask
            if self.training and self.do_spec_aug:
                for _ in range(self.num_apply_spec_aug):
                    feats = self._spec_augment(feats, samples)
        return feats.to(in_dtype)

    def _spec_augment(self, feats, samples):
        """Zeroes one random time band and one random mel band per utterance."""
        batch, n_frames, n_mels = feats.shape
        dev = feats.device
        if samples is None:
            valid = torch.full((batch,), n_frames, device=dev)
        else:
            valid = 1 + torch.div(samples, self.hop_length, rounding_mode="floor")
        for dim, (lo, hi), size in (
            (1, self.time_mask_width, valid),
            (2, self.freq_mask_width, torch.full((batch,), n_mels, device=dev)),
        ):
            if hi <= lo:
                continue
            width = torch.randint(lo, hi, (batch,), device=dev)
            start_lo = self.freq_start_bin if dim == 2 else 0
            span = (size - width - start_lo).clamp(min=1)
            start = start_lo + (torch.rand(batch, device=dev) * span).long()
            axis = torch.arange(feats.shape[dim], device=dev)[None, :]
            band = (axis >= start[:, None]) & (axis < (start + width)[:, None])
            band = band.unsqueeze(2) if dim == 1 else band.unsqueeze(1)
            feats = feats.masked_fill(band, 0.0)
        return feats
