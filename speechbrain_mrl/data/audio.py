"""Audio in: one reader, one check of waveforms, one wording of unusable audio.

One audio reader with one backend policy (:func:`load_audio`): soundfile for
the formats it reads (wav, flac, ogg, ...), torchcodec (FFmpeg) for the rest
(VoxCeleb2's m4a, mp3, ...). Unreadable files raise :class:`AudioError`
naming the file and what each backend said. :func:`check_waveforms` validates
a padded batch (shape, lengths, NaN/Inf, silence, PCM integers via
:func:`float_samples`).

Authors
-------
 * speechbrain-mrl developers
"""
import os  # noqa: F401 - used by the doctests
import warnings

import numpy as np  # noqa: F401 - used by the doctests
import soundfile as sf
import torch
import torchaudio

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "SILENCE_RMS", "signal_problem", "audio_info",
           "load_audio", "read_audio", "read_row_audio", "check_waveforms", "float_samples",
           "ShortAudioWarning", "warn_short", "crop_or_tile"]


#: Audio file extensions the reader handles (soundfile, then torchcodec/FFmpeg).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".m4a", ".mp3")


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, silent, NaN/Inf or too short."""


#: RMS (after removing the mean) below which audio counts as silence: 2 LSB of 16-bit PCM
#: (2 / 32768 = 6.1e-5, -84 dBFS). Dithered digital silence stays below it (1-LSB dither:
#: RMS 0.4-1 LSB); the noise floor of a real 16-bit recording (-60 to -70 dBFS, RMS 3e-4
#: to 1e-3) and speech (RMS 1e-2 to 1e-1; the quietest of the 4,482 Speech Commands test
#: clips: 3.7e-3) lie well above it.
SILENCE_RMS = 2.0 / 32768


def signal_problem(samples):
    """Why audio samples cannot be embedded (NaN/Inf, all zeros, silence), or None.

    Silence is a signal whose RMS after removing its mean (a DC offset) is
    below :data:`SILENCE_RMS` (2 LSB of 16-bit PCM): dither, a constant
    offset or denormal-sized samples carry no speaker and would all embed
    alike.

    Arguments
    ---------
    samples : torch.Tensor
        A waveform's samples in [-1, 1] (any shape is taken as one signal).

    Returns
    -------
    str or None

    Example
    -------
    >>> signal_problem(torch.zeros(4)), signal_problem(torch.tensor([0.1, -0.1]))
    ('all zeros (silence)', None)
    >>> signal_problem(torch.tensor([0.3, 0.3 + 1 / 32768]))
    'silence (RMS 1.5e-05 below 6.1e-05 after removing the mean)'
    """
    if not torch.isfinite(samples).all():
        return "non-finite samples (NaN/Inf)"
    if not samples.any():
        return "all zeros (silence)"
    rms = float(samples.detach().float().var(correction=0).sqrt())
    if rms < SILENCE_RMS:
        return f"silence (RMS {rms:.2g} below {SILENCE_RMS:.2g} after removing the mean)"
    return None


def _soundfile_first(path):
    return str(path).lower().endswith((".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"))


def audio_info(path):
    """``(num_frames, sample_rate)`` of an audio file.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.zeros(1600, dtype="float32"), 16000)
    >>> audio_info(p)
    (1600, 16000)
    """
    path = str(path)
    if _soundfile_first(path):
        try:
            info = sf.info(path)
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise AudioError(f"cannot read audio file {path}: {err}") from err
        return int(info.frames), int(info.samplerate)
    try:
        from torchcodec.decoders import AudioDecoder

        dec = AudioDecoder(path)
        sr = int(dec.metadata.sample_rate)
        dur = getattr(dec.metadata, "duration_seconds_from_header", None)
        if dur is None or dur <= 0:
            samples = dec.get_all_samples()
            return int(samples.data.shape[-1]), int(samples.sample_rate)
        return int(round(dur * sr)), sr
    except Exception as err:  # noqa: BLE001
        raise AudioError(f"cannot read audio file {path}: {err}") from err


def load_audio(path, start=0, stop=None):
    """Samples ``[start, stop)`` of a file as time-major ``[T, channels]`` float32.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.
    start, stop : int
        Sample range in the file's own rate (``stop=None``: to the end).

    Returns
    -------
    signal : torch.Tensor
        ``[T, channels]``.
    sample_rate : int
        The file's rate.

    Raises
    ------
    AudioError
        Naming the file and each backend's error.
    """
    path = str(path)
    start = int(start or 0)
    stop = None if stop in (None, "", "None") else int(stop)
    errors = []
    if _soundfile_first(path):
        try:
            data, sr = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
            return torch.from_numpy(data), int(sr)
        except Exception as err:  # noqa: BLE001 - some wav variants need FFmpeg
            errors.append(f"soundfile: {err}")
    try:
        from torchcodec.decoders import AudioDecoder

        dec = AudioDecoder(path)
        sr = int(dec.metadata.sample_rate)
        samples = dec.get_samples_played_in_range(start / sr, None if stop is None else stop / sr)
        data = samples.data.T.to(torch.float32)
        if stop is not None:
            data = data[: stop - start]
        return data, sr
    except Exception as err:  # noqa: BLE001
        errors.append(f"torchcodec: {err}")
    raise AudioError(f"cannot read audio file {path}: " + "; ".join(errors))


def read_audio(path, start=0, stop=None, sample_rate=16000):
    """Mono float waveform ``[T]`` of samples ``[start, stop)``, resampled to ``sample_rate``.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.ones((800, 2), dtype="float32") * [0.5, 0.1], 8000)
    >>> wav = read_audio(p, sample_rate=16000)
    >>> wav.shape, round(float(wav[800]), 4)
    (torch.Size([1600]), 0.3)
    """
    signal, sr = load_audio(path, start, stop)
    wav = signal.mean(dim=1)
    if sample_rate is not None and sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav


def read_row_audio(row, sample_rate=16000):
    """Waveform of a manifest row: its ``wav`` file, samples ``[start, stop)`` where given.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.arange(800, dtype="float32") / 800, 8000)
    >>> read_row_audio({"wav": p, "start": "100", "stop": "300"}, 8000).shape
    torch.Size([200])
    >>> read_row_audio({"wav": p, "start": "", "stop": ""}, 8000).shape
    torch.Size([800])
    """
    stop = row.get("stop")
    return read_audio(row["wav"], int(row.get("start") or 0),
                      int(stop) if stop not in (None, "") else None, sample_rate)


def check_waveforms(wavs, wav_lens=None, min_samples=1, sample_rate=16000):
    """Validates a zero-padded batch; returns it cleaned: ``(wavs [B, T], wav_lens [B])``.

    Channels (``[B, T, C]``) are averaged, a single ``[T]`` waveform becomes a
    batch of one, and samples past each length are set to zero.

    Arguments
    ---------
    wavs : torch.Tensor
        ``[B, T]``, ``[B, T, C]`` or ``[T]``.
    wav_lens : torch.Tensor, optional
        Relative lengths in ``(0, 1]`` (default: all 1).
    min_samples : int
        Shortest valid length.
    sample_rate : int
        Rate of ``wavs`` (for durations in messages).

    Returns
    -------
    tuple of torch.Tensor

    Raises
    ------
    AudioError
        Naming the first bad utterance (its index) and the problem: NaN/Inf,
        too short, all zeros or silence (:func:`signal_problem`); or a bad
        shape or lengths.

    Example
    -------
    >>> w, l = check_waveforms(torch.randn(2, 100), torch.tensor([1.0, 0.5]))
    >>> float(w[1, 60]), l.tolist()
    (0.0, [1.0, 0.5])
    >>> check_waveforms(torch.zeros(1, 100))
    Traceback (most recent call last):
     ...
    speechbrain_mrl.data.audio.AudioError: utterance 0: audio is all zeros (silence); cannot embed
    """
    if not isinstance(wavs, torch.Tensor):
        raise AudioError(f"wavs must be a torch.Tensor, got {type(wavs).__name__} (for a NumPy "
                         "array as soundfile.read returns it: torch.from_numpy(data.T) or "
                         "torch.from_numpy(data)[None] for [1, time, channels])")
    wavs = float_samples(wavs)
    if wavs.dim() == 1:
        wavs = wavs.unsqueeze(0)
    if wavs.dim() == 2 and wavs.shape[1] <= 16 < wavs.shape[0]:  # 16 samples: never a recording
        raise AudioError(f"wavs of shape {tuple(wavs.shape)} look like one channels-last "
                         "recording [time, channels] (as soundfile.read returns it), which would "
                         "be read as that many utterances of a few samples; pass wavs[None] "
                         "([1, time, channels]) or a mono [time] waveform")
    if wavs.dim() == 3:
        if wavs.shape[1] < wavs.shape[2]:
            raise AudioError(f"wavs of shape {tuple(wavs.shape)} look channels-first [batch, "
                             "channels, time]; pass [batch, time] or [batch, time, channels]")
        wavs = wavs.mean(dim=2)
    if wavs.dim() != 2:
        raise AudioError(f"wavs must be [batch, time] (or [batch, time, channels]), got {tuple(wavs.shape)}")
    if wavs.shape[0] == 0 or wavs.shape[1] == 0:
        raise AudioError(f"empty audio: wavs has shape {tuple(wavs.shape)}")
    if wav_lens is None:
        wav_lens = torch.ones(wavs.shape[0])
    wav_lens = torch.as_tensor(wav_lens, dtype=torch.float32).flatten()
    if wav_lens.numel() != wavs.shape[0]:
        raise AudioError(f"wav_lens has {wav_lens.numel()} entries for a batch of {wavs.shape[0]}")
    if not torch.isfinite(wav_lens).all() or (wav_lens <= 0).any() or (wav_lens > 1 + 1e-6).any():
        raise AudioError(f"wav_lens must be relative lengths in (0, 1], got {wav_lens.tolist()}")
    total = wavs.shape[1]
    n = torch.round(wav_lens * total).long().clamp(1, total)
    x = wavs.detach()
    valid = torch.arange(total, device=x.device)[None, :] < n.to(x.device)[:, None]
    bad_value = (~torch.isfinite(x) & valid).any(dim=1).cpu()
    for i in range(wavs.shape[0]):
        if bool(bad_value[i]):
            raise AudioError(f"utterance {i}: audio contains NaN or Inf values")
        if int(n[i]) < min_samples:
            raise AudioError(f"utterance {i}: audio too short ({int(n[i]) / sample_rate:.3f} s < "
                             f"minimum {min_samples / sample_rate:.3f} s)")
        problem = signal_problem(x[i, :int(n[i])])
        if problem:
            raise AudioError(f"utterance {i}: audio is {problem}; cannot embed")
    if not bool(valid.all()):
        wavs = wavs.masked_fill(~valid, 0.0)
    return wavs.float(), wav_lens


#: Integer sample types and the full scale that maps them to [-1, 1).
_INTEGER_FULL_SCALE = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}


def float_samples(wavs):
    """Waveforms as float samples in [-1, 1]: PCM integers are scaled, other types refused.

    Example
    -------
    >>> float_samples(torch.tensor([16384, -32768], dtype=torch.int16)).tolist()
    [0.5, -1.0]
    >>> float_samples(torch.tensor([128, 255], dtype=torch.uint8)).tolist()
    [0.0, 0.9921875]
    >>> float_samples(torch.tensor([1, 2]))
    Traceback (most recent call last):
     ...
    speechbrain_mrl.data.audio.AudioError: waveform samples of type torch.int64 are not audio samples: pass float samples in [-1, 1] or PCM int16/int32/int8/uint8
    """
    if wavs.is_floating_point():
        return wavs
    if wavs.dtype in _INTEGER_FULL_SCALE:
        return wavs.float() / _INTEGER_FULL_SCALE[wavs.dtype]
    if wavs.dtype == torch.uint8:
        return (wavs.float() - 128.0) / 128.0
    raise AudioError(f"waveform samples of type {wavs.dtype} are not audio samples: pass float "
                     "samples in [-1, 1] or PCM int16/int32/int8/uint8")


class ShortAudioWarning(UserWarning):
    """Audio the model embeds but shorter than its reliable duration (accuracy falls)."""


def warn_short(wav_lens, total, short_samples, sample_rate=16000, names=None):
    """Warns (:class:`ShortAudioWarning`) when utterances are shorter than ``short_samples``.

    Arguments
    ---------
    wav_lens : torch.Tensor
        Relative lengths ``[B]`` of a batch of ``total`` samples.
    total : int
        Padded length of the batch.
    short_samples : int
        Length below which embeddings are less reliable (0: never warn).
    sample_rate : int
        For the durations in the message.
    names : list of str, optional
        Utterance names for the message (default: batch indices).

    Returns
    -------
    int
        How many utterances were short.

    Example
    -------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_short(torch.tensor([1.0, 0.25]), 16000, 8000)
    1
    >>> print(caught[0].message)
    1 utterance(s) shorter than 0.500 s (1: 0.250 s): embeddings of clips this short are less reliable (see the model card's accuracy by duration)
    """
    n = torch.round(torch.as_tensor(wav_lens, dtype=torch.float32).flatten() * total).long()
    short = [i for i, v in enumerate(n.tolist()) if v < short_samples]
    if short:
        shown = ", ".join(f"{names[i] if names else i}: {int(n[i]) / sample_rate:.3f} s"
                          for i in short[:5])
        warnings.warn(f"{len(short)} utterance(s) shorter than {short_samples / sample_rate:.3f} s "
                      f"({shown}{', ...' if len(short) > 5 else ''}): embeddings of clips this "
                      "short are less reliable (see the model card's accuracy by duration)",
                      ShortAudioWarning, stacklevel=3)
    return len(short)


def crop_or_tile(sig, n):
    """The first ``n`` samples of ``sig``, repeating a shorter signal to fill them.

    Example
    -------
    >>> crop_or_tile(torch.tensor([1.0, 2.0]), 5)
    tensor([1., 2., 1., 2., 1.])
    """
    if sig.shape[0] >= n:
        return sig[:n]
    if sig.shape[0] == 0:
        return torch.zeros(n)
    reps = -(-n // sig.shape[0])
    return sig.repeat(reps)[:n]
