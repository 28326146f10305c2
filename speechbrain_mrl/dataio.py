"""Audio, manifest and trial-list input/output shared by training, scoring and inference.

One audio reader with one backend policy (:func:`load_audio`): soundfile for
the formats it reads (wav, flac, ogg, ...), torchcodec (FFmpeg) for the rest
(VoxCeleb2's m4a, mp3, ...). Unreadable files raise :class:`AudioError`
naming the file and what each backend said.

Manifests are SpeechBrain CSV files (``ID,duration,wav,start,stop,spk_id``;
``start``/``stop`` in samples of the file). Trial lists are in the VoxCeleb
format (``<1|0> <enrol> <test>`` per line); their entries are file paths
relative to a data folder, or manifest IDs. A path maps to the ID
``<path without extension>`` (or that with ``/`` replaced by ``--``, the
form used for training rows), see :func:`trial_id_candidates`.

Authors
-------
 * speechbrain-mrl developers
"""
import csv
import io
import logging
import os
import pathlib
import shutil
import tempfile
import time
import urllib.request
import warnings

import numpy as np
import soundfile as sf
import torch
import torchaudio

__all__ = [
    "AudioError",
    "CSV_HEADER",
    "audio_info",
    "load_audio",
    "read_audio",
    "read_row_audio",
    "check_waveforms",
    "ShortAudioWarning",
    "warn_short",
    "crop_or_tile",
    "read_manifest",
    "write_manifest",
    "check_audio_files",
    "read_trials",
    "write_trials",
    "trial_id_candidates",
    "resolve_trials",
    "read_trial_list",
    "signal_problem",
    "write_text_atomic",
    "save_torch_atomic",
    "swap_folder",
    "download",
    "AUDIO_EXTENSIONS",
]

logger = logging.getLogger(__name__)

#: Audio file extensions the reader handles (soundfile, then torchcodec/FFmpeg).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".m4a", ".mp3")

#: Columns of the manifests written by the data preparation.
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, silent, NaN/Inf or too short."""


# --------------------------------------------------------------------------- files
def signal_problem(samples):
    """Why audio samples cannot be embedded (NaN/Inf, all zeros), or None.

    Example
    -------
    >>> signal_problem(torch.zeros(4)), signal_problem(torch.ones(4))
    ('all zeros (silence)', None)
    """
    if not torch.isfinite(samples).all():
        return "non-finite samples (NaN/Inf)"
    if not samples.any():
        return "all zeros (silence)"
    return None


def read_trial_list(manifests, trials_path, data_folder=None):
    """A trial list resolved against manifests, and only the rows its trials use.

    Arguments
    ---------
    manifests : list of str or os.PathLike
        CSV manifests holding the trial utterances (e.g. enrol and test).
    trials_path : str or os.PathLike
        VoxCeleb-format trial list.
    data_folder : str, optional
        Replaces ``$data_root`` in the manifests' paths.

    Returns
    -------
    rows : dict
        ``{ID: row}`` of the utterances the trials use.
    trials : tuple
        ``(labels, enrol_ids, test_ids)`` (see :func:`resolve_trials`).
    names : tuple
        The trial list's own ``(enrol, test)`` names.
    """
    rows = {}
    for path in manifests:
        rows.update(read_manifest(path, data_folder))
    labels, enrol, test, names = resolve_trials(read_trials(trials_path), rows,
                                                source=str(trials_path))
    used = set(enrol) | set(test)
    return {k: v for k, v in rows.items() if k in used}, (labels, enrol, test), names


def write_text_atomic(path, text):
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    A reader never sees a half-written file, and a killed writer leaves the
    previous version in place.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def swap_folder(staged, final, aside):
    """Moves the complete folder ``staged`` to ``final``; an existing ``final`` waits at
    ``aside`` until the new one is in place, so a kill never leaves neither of them."""
    staged, final, aside = pathlib.Path(staged), pathlib.Path(final), pathlib.Path(aside)
    if not final.exists():
        os.replace(staged, final)
        return final
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    os.replace(staged, final)
    shutil.rmtree(aside)
    return final


def save_torch_atomic(obj, path):
    """``torch.save`` through a temporary file and a rename (see :func:`write_text_atomic`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def download(url, dest, timeout=None, retries=None, backoff=2.0, hint=""):
    """Downloads ``url`` to ``dest`` through a temporary file, with timeouts and retries.

    Arguments
    ---------
    url : str
        ``http(s)://`` or ``file://`` address.
    dest : str or os.PathLike
        Final path; only a complete download is renamed to it, and no partial
        file is left behind.
    timeout : float, optional
        Seconds to wait to connect and for each read (default
        ``$MRL_DOWNLOAD_TIMEOUT`` or 30).
    retries : int, optional
        Attempts in all (default ``$MRL_DOWNLOAD_RETRIES`` or 3); the wait
        between them grows as ``backoff ** attempt`` s.
    backoff : float
        Base of the exponential wait.
    hint : str
        Added to the error message (e.g. how to pass a local copy instead).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OSError
        Naming the URL and the last error once every attempt failed.
    """
    timeout = float(os.environ.get("MRL_DOWNLOAD_TIMEOUT", 30) if timeout is None else timeout)
    retries = max(1, int(os.environ.get("MRL_DOWNLOAD_RETRIES", 3) if retries is None else retries))
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff ** attempt)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                shutil.copyfileobj(resp, out)
            os.replace(tmp, dest)
            return dest
        except OSError as err:  # URLError, timeouts and resets are OSErrors
            error = err
            logger.warning("download of %s failed (attempt %d of %d): %s", url, attempt + 1,
                           retries, err)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(f"could not download {url} after {retries} attempts ({error})"
                  + (f"; {hint}" if hint else ""))


# --------------------------------------------------------------------------- audio
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
        too short, all zeros; or a bad shape or lengths.

    Example
    -------
    >>> w, l = check_waveforms(torch.ones(2, 100), torch.tensor([1.0, 0.5]))
    >>> float(w[1, 60]), l.tolist()
    (0.0, [1.0, 0.5])
    >>> check_waveforms(torch.zeros(1, 100))
    Traceback (most recent call last):
     ...
    speechbrain_mrl.dataio.AudioError: utterance 0: audio is all zeros (silence); cannot embed
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
    silent = ~((x != 0) & valid).any(dim=1).cpu()
    for i in range(wavs.shape[0]):
        if bool(bad_value[i]):
            raise AudioError(f"utterance {i}: audio contains NaN or Inf values")
        if int(n[i]) < min_samples:
            raise AudioError(f"utterance {i}: audio too short ({int(n[i]) / sample_rate:.3f} s < "
                             f"minimum {min_samples / sample_rate:.3f} s)")
        if bool(silent[i]):
            raise AudioError(f"utterance {i}: audio is all zeros (silence); cannot embed")
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
    speechbrain_mrl.dataio.AudioError: waveform samples of type torch.int64 are not audio samples: pass float samples in [-1, 1] or PCM int16/int32/int8/uint8
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


# --------------------------------------------------------------------------- manifests
def read_manifest(csv_path, data_folder=None):
    """Manifest rows ``{ID: row}`` (``$data_root`` in paths replaced by ``data_folder``)."""
    from speechbrain.dataio.dataio import load_data_csv

    replacements = {"data_root": str(data_folder)} if data_folder else {}
    return load_data_csv(str(csv_path), replacements=replacements)


def check_audio_files(rows, what="manifest"):
    """Raises ``FileNotFoundError`` listing the rows whose ``wav`` file does not exist.

    Checking every path before any audio is embedded means a long run cannot
    fail at its last batch on a missing file.

    Example
    -------
    >>> check_audio_files({"u1": {"wav": "/no/such.wav"}}, "enrol")
    Traceback (most recent call last):
     ...
    FileNotFoundError: enrol: 1 of 1 audio files do not exist, e.g. u1: /no/such.wav
    """
    missing = [(uid, row["wav"]) for uid, row in rows.items() if not os.path.isfile(row["wav"])]
    if missing:
        shown = ", ".join(f"{uid}: {wav}" for uid, wav in missing[:3])
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(rows)} audio files do not exist, "
                                f"e.g. {shown}")


def write_manifest(path, rows, header=CSV_HEADER):
    """Writes manifest rows (lists in ``header`` order) atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


# --------------------------------------------------------------------------- trials
def read_trials(path):
    """Reads a VoxCeleb-format trial list: ``[(label, enrol, test), ...]``.

    Raises
    ------
    ValueError
        Naming the file and line of a malformed entry, or an empty list.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = write_trials(p, [(1, "a/1.wav", "a/2.wav"), (0, "a/1.wav", "b/1.wav")])
    >>> read_trials(p)
    [(1, 'a/1.wav', 'a/2.wav'), (0, 'a/1.wav', 'b/1.wav')]
    """
    trials = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected '<1|0> <enrol> <test>', got {line.strip()!r}")
            trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise ValueError(f"trial list {path} is empty")
    return trials


def write_trials(path, trials):
    """Writes ``(label, enrol, test)`` tuples in the VoxCeleb format (atomically)."""
    return write_text_atomic(path, "".join(f"{lab} {a} {b}\n" for lab, a, b in trials))


def trial_id_candidates(path):
    """Manifest IDs a trial-list entry may have, most likely first.

    Example
    -------
    >>> trial_id_candidates("id10270/5r0dWxy17C8/00001.wav")
    ['id10270/5r0dWxy17C8/00001', 'id10270--5r0dWxy17C8--00001', 'id10270/5r0dWxy17C8/00001.wav']
    """
    path = path.replace("\\", "/")
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    return list(dict.fromkeys([stem, stem.replace("/", "--"), path]))


def resolve_trials(trials, known_ids, source="trial list"):
    """Maps the entries of a trial list to manifest IDs.

    Arguments
    ---------
    trials : list of (int, str, str)
        As :func:`read_trials` returns.
    known_ids : collection of str
        IDs of the manifests that hold the trial utterances.
    source : str
        Name used in error messages (e.g. the trial-list path).

    Returns
    -------
    labels : numpy.ndarray
        ``int8`` labels.
    enrol_ids, test_ids : list of str
        Manifest IDs per trial.
    names : dict of str to str
        ``{ID: entry as written in the trial list}``.

    Raises
    ------
    ValueError
        Naming the entries that are in no manifest (a test on a subset of the
        list would be reported as if it were the whole list), a pair listed as
        both target and non-target, or a list that lacks target or non-target
        trials. Repeated trials are counted and logged.

    Example
    -------
    >>> labels, e, t, names = resolve_trials([(1, "a/1.wav", "a/2.wav"), (0, "a/1.wav", "b/1.wav")],
    ...                                      {"a/1", "a/2", "b--1"})
    >>> labels.tolist(), e, t
    ([1, 0], ['a/1', 'a/1'], ['a/2', 'b--1'])
    """
    known_ids = set(known_ids)
    cache, names, missing = {}, {}, []

    def resolve(entry):
        if entry not in cache:
            cache[entry] = next((c for c in trial_id_candidates(entry) if c in known_ids), None)
            if cache[entry] is None:
                missing.append(entry)
            else:
                names.setdefault(cache[entry], entry)
        return cache[entry]

    labels, enrol, test = [], [], []
    for lab, a, b in trials:
        labels.append(int(lab))
        enrol.append(resolve(a))
        test.append(resolve(b))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{source}: {len(missing)} entries are in no manifest (tried the IDs "
                         f"of trial_id_candidates), e.g. {shown}")
    seen, n_duplicates = {}, 0
    for lab, a, b in zip(labels, enrol, test):
        pair = (a, b) if a <= b else (b, a)
        if pair in seen and seen[pair] != lab:
            raise ValueError(f"{source}: the trial {names[a]!r} {names[b]!r} is listed as both "
                             "target and non-target")
        n_duplicates += pair in seen
        seen[pair] = lab
    if n_duplicates:
        logger.warning("%s: %d of %d trials repeat another trial (counted twice in the metrics)",
                       source, n_duplicates, len(labels))
    labels = np.asarray(labels, dtype=np.int8)
    n_target = int(labels.sum())
    if n_target == 0 or n_target == len(labels):
        raise ValueError(f"{source}: a trial list needs both target and non-target trials, got "
                         f"{n_target} target of {len(labels)}")
    return labels, enrol, test, names
