"""Simulated conversations from real speech, and RTTM files ("who spoke when").

:func:`simulate_conversation` builds a conversation of 2-6 speakers from
speaker folders (``<speaker>/<file>``, e.g. LibriSpeech readers or Speech
Commands speakers): seeded speaker turns of 1-10 s cut from each speaker's
audio, pauses between them, optionally overlapping turns and background
noise. It writes the mixture (16-bit wav) and its reference RTTM, which is
exact: each reference segment is where one speaker's written audio is
speech (a turn trimmed to its speech, split at pauses of ``min_gap`` s or
more, as NIST's references bridge shorter ones; speech judged by 20-ms frame
energy against the speaker file's own speech level and noise floor), and the
returned :class:`Conversation` lists every piece of audio placed (file,
sample range, gain, position), so that a test can rebuild the mixture.

:func:`read_rttm` and :func:`write_rttm` read and write the NIST RTTM format
(``SPEAKER <file> <chnl> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>``);
segments are ``(start, end, speaker)`` tuples in seconds.

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import math
import os
import pathlib
import random

import numpy as np
import soundfile as sf

from speechbrain_mrl.data.audio import read_audio
from speechbrain_mrl.data.sources import folder_rows
from speechbrain_mrl.utils.files import atomic_output, write_text_atomic

__all__ = ["Conversation", "read_rttm", "write_rttm", "rttm_text", "speaker_files", "speech_spans",
           "simulate_conversation"]

#: Record types of the RTTM format other than ``SPEAKER`` (read and ignored).
OTHER_RTTM_TYPES = frozenset({"SPKR-INFO", "SEGMENT", "NOSCORE", "NO_RT_METADATA", "NON-SPEECH", "NON-LEX",
                              "LEXEME", "FILLER", "EDIT", "IP", "SU", "CB", "A/P", "MISC", "NOSCORE"})

#: A simulated conversation: ``wav`` and ``rttm`` paths, ``rec_id``, ``duration`` (s), the
#: reference ``segments`` ``[(start, end, speaker)]``, the ``speakers``, the ``turns`` placed
#: (dicts: ``speaker``, ``pieces`` of ``(file, start, stop, gain, position)`` in samples at 16 kHz),
#: and ``overlap`` / ``reused`` (seconds of overlapped speech / of a speaker's audio used again).
Conversation = collections.namedtuple(
    "Conversation", ["wav", "rttm", "rec_id", "duration", "segments", "speakers", "turns", "overlap",
                     "reused"])


# ------------------------------------------------------------------ RTTM
def _safe_id(text):
    """A recording or speaker name as one RTTM field (whitespace replaced)."""
    text = "_".join(str(text).split())
    return text or "<NA>"


def rttm_text(segments, rec_id):
    """RTTM lines of ``(start, end, speaker)`` segments, in time order.

    Example
    -------
    >>> print(rttm_text([(1.0, 2.5, "B"), (0.0, 1.25, "A")], "rec1"), end="")
    SPEAKER rec1 1 0.000 1.250 <NA> <NA> A <NA> <NA>
    SPEAKER rec1 1 1.000 1.500 <NA> <NA> B <NA> <NA>
    """
    rec_id = _safe_id(rec_id)
    lines = []
    for start, end, speaker in sorted(segments, key=lambda s: (s[0], s[1], str(s[2]))):
        if not (math.isfinite(start) and math.isfinite(end)) or end < start or start < 0:
            raise ValueError(f"bad segment ({start}, {end}, {speaker!r}) for RTTM {rec_id}")
        lines.append(f"SPEAKER {rec_id} 1 {start:.3f} {end - start:.3f} <NA> <NA> {_safe_id(speaker)} "
                     "<NA> <NA>\n")
    return "".join(lines)


def write_rttm(path, segments, rec_id):
    """Writes ``(start, end, speaker)`` segments as an RTTM file (atomically); returns ``path``.

    An empty list writes an empty file (no speech).

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.rttm")
    >>> read_rttm(write_rttm(p, [(0.5, 2.0, "spk0")], "a"))
    {'a': [(0.5, 2.0, 'spk0')]}
    """
    return write_text_atomic(path, rttm_text(segments, rec_id))


def read_rttm(path):
    """Reads an RTTM file: ``{recording: [(start, end, speaker), ...]}`` in time order.

    Only ``SPEAKER`` records are kept; other NIST record types, blank lines and
    lines starting with ``#`` or ``;`` are skipped. The last two fields may be
    left out.

    Raises
    ------
    ValueError
        One line naming the file and line number of a malformed record (too few
        fields, an unknown record type, an onset or duration that is not a
        finite number, or negative).
    FileNotFoundError
        No such file.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "bad.rttm")
    >>> _ = open(p, "w").write("SPEAKER r 1 0.0 1.0 <NA> <NA> A <NA> <NA>\\nSPEAKER r 1 x 1.0 <NA> <NA> B\\n")
    >>> read_rttm(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
     ...
    ValueError: .../bad.rttm:2: malformed RTTM line (onset 'x' is not a number): 'SPEAKER r 1 x 1.0 <NA> <NA> B'
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RTTM file not found: {path}")
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith((("#", ";"))):
                continue

            def bad(reason, n=n, line=line):
                return ValueError(f"{path}:{n}: malformed RTTM line ({reason}): {line.strip()!r}")

            kind = fields[0].upper()
            if kind in OTHER_RTTM_TYPES:
                continue
            if kind != "SPEAKER":
                raise bad(f"unknown record type {fields[0]!r}, expected SPEAKER")
            if len(fields) < 8:
                raise bad(f"{len(fields)} fields, expected 10: SPEAKER <file> <channel> <onset> "
                          "<duration> <NA> <NA> <speaker> <NA> <NA>")
            values = []
            for name, text in (("onset", fields[3]), ("duration", fields[4])):
                try:
                    value = float(text)
                except ValueError:
                    raise bad(f"{name} {text!r} is not a number") from None
                if not math.isfinite(value) or value < 0:
                    raise bad(f"{name} {text!r} must be a finite number >= 0")
                values.append(value)
            onset, duration = values
            out.setdefault(fields[1], []).append((onset, round(onset + duration, 6), fields[7]))
    return {rec: sorted(segs, key=lambda s: (s[0], s[1], s[2])) for rec, segs in out.items()}


# ------------------------------------------------------------------ speech in a file
def speaker_files(folder, speakers=None):
    """Audio files per speaker of a ``<speaker>/<file>`` folder: ``{speaker: [path, ...]}``.

    Arguments
    ---------
    folder : str or os.PathLike
        Searched recursively; the speaker is the first sub-folder.
    speakers : collection of str, optional
        Keep only these speakers.

    Returns
    -------
    dict
        Sorted by speaker, each list sorted.

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ("s1/a.wav", "s1/b.wav", "s2/c.flac", "top.wav"):
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / rel).touch()
    >>> {spk: [pathlib.Path(p).name for p in files] for spk, files in speaker_files(root).items()}
    {'s1': ['a.wav', 'b.wav'], 's2': ['c.flac']}
    """
    by_speaker = {}
    for row in folder_rows(folder).values():
        spk = row["spk_id"]
        if spk and (speakers is None or spk in speakers):
            by_speaker.setdefault(spk, []).append(row["wav"])
    return {spk: sorted(files) for spk, files in sorted(by_speaker.items())}


def _frame_rms(wav, frame):
    n = len(wav) // frame
    if n == 0:
        return np.zeros(0)
    return np.sqrt(np.mean(wav[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))


def _speech_floor(wav, frame, floor_db, noise_db=10.0):
    """RMS above which a frame is speech.

    ``floor_db`` below the file's 95th-percentile frame RMS (its speech level),
    and ``noise_db`` above its 10th-percentile frame RMS (its noise floor).
    """
    rms = _frame_rms(wav, frame)
    if rms.size == 0:
        return math.inf
    speech, noise = np.percentile(rms, [95, 10])
    return max(float(speech) * 10 ** (floor_db / 20), float(noise) * 10 ** (noise_db / 20), 2.0 / 32768)


def speech_spans(wav, floor, sample_rate=16000, frame_seconds=0.02, min_gap=0.3, min_speech=0.05):
    """Spans of a waveform whose frames are louder than ``floor`` (RMS): ``[(start, stop)]`` samples.

    Arguments
    ---------
    wav : numpy.ndarray
        Mono samples.
    floor : float
        RMS at or below which a frame is a pause.
    sample_rate : int
        Of ``wav``.
    frame_seconds : float
        Frame length.
    min_gap : float
        Pauses shorter than this (seconds) are bridged (kept inside the span).
    min_speech : float
        Spans shorter than this (seconds) are dropped.

    Returns
    -------
    list of (int, int)

    Example
    -------
    >>> x = np.zeros(16000, dtype="float32")
    >>> x[1600:4800] = 0.1; x[6400:8000] = 0.1; x[14400:15000] = 0.1
    >>> speech_spans(x, 0.01)
    [(1600, 8000), (14400, 15040)]
    """
    frame = max(1, int(round(frame_seconds * sample_rate)))
    rms = _frame_rms(np.asarray(wav), frame)
    spans = []
    loud = np.flatnonzero(rms > floor)
    if loud.size == 0:
        return spans
    gap = max(1, int(math.ceil(min_gap * sample_rate / frame)))
    start = prev = int(loud[0])
    for i in loud[1:].tolist():
        if i - prev > gap:
            spans.append((start, prev + 1))
            start = i
        prev = i
    spans.append((start, prev + 1))
    keep = max(1, int(round(min_speech * sample_rate / frame)))
    return [(a * frame, min(b * frame, len(wav))) for a, b in spans if b - a >= keep]


# ------------------------------------------------------------------ the generator
class _Speaker:
    """One speaker's audio material, read turn by turn (cursor through its shuffled files)."""

    def __init__(self, name, files, rng, sample_rate, floor_db, frame):
        self.name, self.files, self.rng = name, list(files), rng
        self.sample_rate, self.floor_db, self.frame = sample_rate, floor_db, frame
        self.order = self.rng.sample(self.files, len(self.files))
        self.index, self.pos, self.used_once = 0, 0, False
        self.cache = {}
        self.gain = 10 ** (rng.uniform(-3.0, 3.0) / 20)  # level differences between speakers

    def audio(self, path):
        if path not in self.cache:
            wav = read_audio(path, sample_rate=self.sample_rate).numpy()
            floor = _speech_floor(wav, self.frame, self.floor_db)
            spans = speech_spans(wav, floor, self.sample_rate, self.frame / self.sample_rate, 0.0, 0.0)
            level = float(np.sqrt(np.mean(np.concatenate([wav[a:b] for a, b in spans]) ** 2))) if spans else 0.0
            self.cache[path] = (wav, floor, spans, level)
        return self.cache[path]

    def take(self, seconds, join_gap, snap):
        """Pieces ``(path, start, stop)`` of speech about ``seconds`` long, and whether reused."""
        need = int(seconds * self.sample_rate)
        pieces, got, reused, tries = [], 0, False, 0
        while got < need and tries < 4 * len(self.order) + 4:
            tries += 1
            path = self.order[self.index]
            wav, floor, spans, _ = self.audio(path)
            if not spans or self.pos >= spans[-1][1]:
                self._next_file()
                continue
            start = max(self.pos, spans[0][0])
            # start at speech: the first loud frame at or after the cursor
            start = next((max(a, start) for a, b in spans if b > start), start)
            stop = min(start + need - got, spans[-1][1])
            if stop < spans[-1][1]:
                stop = self._quiet_point(wav, stop, snap, start)
            # end at speech: trim trailing quiet frames
            inside = [(a, min(b, stop)) for a, b in spans if a < stop and b > start]
            if inside:
                stop = inside[-1][1]
            if stop - start >= int(0.1 * self.sample_rate):
                pieces.append((path, start, stop))
                got += stop - start + int(join_gap * self.sample_rate)
                reused = reused or self.used_once
            self.pos = stop
            if self.pos >= spans[-1][1]:
                self._next_file()
        return pieces, reused

    def _quiet_point(self, wav, target, snap, low):
        """The quietest frame boundary within ``snap`` seconds of ``target`` (a cut between words)."""
        half = int(snap * self.sample_rate)
        a, b = max(low + self.frame, target - half), min(len(wav), target + half)
        if b - a < 2 * self.frame:
            return target
        rms = _frame_rms(wav[a:b], self.frame)
        return a + int(np.argmin(rms)) * self.frame + self.frame // 2

    def _next_file(self):
        self.index += 1
        self.pos = 0
        if self.index >= len(self.order):
            self.order = self.rng.sample(self.files, len(self.files))
            self.index, self.used_once = 0, True


def _noise(rng_np, n, color="pink"):
    """Unit-power background noise: white, or pink (1/f power) shaped in the frequency domain."""
    white = rng_np.standard_normal(n)
    if color == "white" or n < 4:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / np.sqrt(f), n)
    return noise / (noise.std() + 1e-12)


def simulate_conversation(speakers, wav_path, rttm_path=None, seed=0, num_speakers=(2, 6), duration=120.0,
                          turn=(1.0, 10.0), pause=(0.1, 1.0), overlap_prob=0.0, overlap=(0.2, 1.0),
                          noise_snr=None, noise_color="pink", min_gap=0.3, floor_db=-35.0, join_gap=(0.05, 0.25),
                          reuse=True, rec_id=None, sample_rate=16000):
    """Writes a simulated conversation (wav + exact RTTM) from real speech of several speakers.

    Speakers take turns (never twice in a row, every chosen speaker at least
    once) until ``duration`` seconds are filled. A turn is ``turn`` seconds of
    one speaker's audio, read on through the speaker's files (in a seeded
    order; a file shorter than the turn is followed by the next, joined by a
    short gap), starting at speech and cut at the quietest point within 0.3 s
    of its length. Turns are separated by ``pause`` seconds of silence, or,
    with probability ``overlap_prob``, start ``overlap`` seconds before the
    previous turn ends. Each speaker gets a random level (+-3 dB).

    Arguments
    ---------
    speakers : str or os.PathLike or dict
        A ``<speaker>/<file>`` folder, or ``{speaker: [audio files]}`` (:func:`speaker_files`).
    wav_path : str or os.PathLike
        The mixture to write (16-bit PCM wav at ``sample_rate``).
    rttm_path : str or os.PathLike, optional
        The reference RTTM to write (default: ``wav_path`` with ``.rttm``).
    seed : int
        Everything random follows from it.
    num_speakers : int or (int, int)
        Speakers in the conversation, or the range to draw from (inclusive).
    duration : float
        Seconds of conversation to fill (the last turn may run past it).
    turn, pause, overlap, join_gap : (float, float)
        Uniform ranges (seconds) of a turn's length, a pause, an overlap, and the
        gap joining two files within a turn.
    overlap_prob : float
        Probability that a turn overlaps the previous one.
    noise_snr : float, optional
        Background noise at this SNR (dB, against the mean power of the speech);
        None: none.
    noise_color : str
        ``pink`` or ``white``.
    min_gap : float
        Pauses within a speaker's audio shorter than this (seconds) stay inside a
        reference segment; longer ones end it.
    floor_db : float
        A frame quieter than the speaker file's 95th-percentile frame RMS by more
        than this (dB), or within 10 dB of its 10th-percentile frame RMS (its
        noise floor), is a pause.
    reuse : bool
        When a speaker's audio is used up, read it again from the start (its
        seconds are counted in ``reused``); False: the speaker stops speaking, and
        the conversation ends early when fewer than two speakers have audio left.
    rec_id : str, optional
        Recording name in the RTTM (default: the wav file's stem).
    sample_rate : int
        Of the mixture.

    Returns
    -------
    Conversation

    Raises
    ------
    ValueError
        Fewer speakers with audio than asked for, or bad ranges.

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for s in range(3):
    ...     t = np.arange(48000) / 16000
    ...     wav = 0.3 * np.sin(2 * np.pi * (150 + 60 * s) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    ...     (root / f"s{s}").mkdir()
    ...     sf.write(root / f"s{s}" / "a.wav", wav.astype("float32"), 16000)
    >>> conv = simulate_conversation(root, root / "conv.wav", seed=1, num_speakers=2, duration=8.0)
    >>> len(conv.speakers), read_rttm(conv.rttm)[conv.rec_id] == conv.segments
    (2, True)
    """
    rng = random.Random(seed)
    rng_np = np.random.default_rng(seed)
    files = speaker_files(speakers) if isinstance(speakers, (str, os.PathLike)) else dict(speakers)
    files = {spk: list(f) for spk, f in sorted(files.items()) if f}
    lo, hi = (num_speakers, num_speakers) if isinstance(num_speakers, int) else tuple(num_speakers)
    if not 1 <= lo <= hi:
        raise ValueError(f"num_speakers must be a count >= 1 or a range (low, high), got {num_speakers}")
    for name, (a, b) in (("turn", turn), ("pause", pause), ("overlap", overlap), ("join_gap", join_gap)):
        if not 0 <= a <= b:
            raise ValueError(f"{name} must be a range (low, high) of seconds >= 0, got {(a, b)}")
    if turn[1] <= 0 or duration <= 0:
        raise ValueError(f"turn and duration must be positive, got turn={turn}, duration={duration}")
    if len(files) < lo:
        raise ValueError(f"{lo} speakers asked for, but only {len(files)} speakers with audio files")
    count = rng.randint(lo, min(hi, len(files)))
    chosen = sorted(rng.sample(sorted(files), count))
    frame = int(0.02 * sample_rate)
    material = {spk: _Speaker(spk, files[spk], random.Random(rng.random()), sample_rate, floor_db, frame)
                for spk in chosen}
    wav_path = pathlib.Path(wav_path)
    rttm_path = pathlib.Path(rttm_path) if rttm_path else wav_path.with_suffix(".rttm")
    rec_id = _safe_id(rec_id or wav_path.stem)

    turns, heard, reused = [], set(), 0.0
    t, prev_end, prev, exhausted = 0, 0, None, set()
    sr = sample_rate
    while True:
        active = [s for s in chosen if s not in exhausted]
        unheard = [s for s in active if s not in heard]
        if (t >= duration * sr and not unheard) or not active or (len(active) < 2 and prev in active):
            break
        others = [s for s in active if s != prev] or active
        pool = [s for s in others if s in unheard] if unheard and rng.random() < 0.6 else []
        spk = rng.choice(pool or others)
        pieces, was_reused = material[spk].take(rng.uniform(*turn), rng.uniform(*join_gap), 0.3)
        if not pieces or (was_reused and not reuse):
            exhausted.add(spk)
            if not heard and len(exhausted) == len(chosen):
                break
            continue
        audio, layout = [], []
        for path, a, b in pieces:
            if audio:
                audio.append(np.zeros(int(rng.uniform(*join_gap) * sr), dtype=np.float32))
            layout.append((path, a, b, sum(len(x) for x in audio)))
            audio.append(material[spk].audio(path)[0][a:b])
        samples = np.concatenate(audio)
        if turns and rng.random() < overlap_prob:
            ov = int(rng.uniform(*overlap) * sr)
            ov = min(ov, (prev_end - turns[-1]["position"]) // 2, len(samples) // 2)
            start = max(0, prev_end - max(ov, 0))
        else:
            start = prev_end + int(rng.uniform(*pause) * sr) if turns else int(rng.uniform(*pause) * sr)
        # one gain per file keeps the speaker's level; file levels are evened out
        pieces_out = []
        for path, a, b, offset in layout:
            level = material[spk].audio(path)[3]
            gain = material[spk].gain * (0.05 / level if level > 0 else 1.0)
            pieces_out.append((str(path), int(a), int(b), float(gain), int(start + offset)))
        turns.append({"speaker": spk, "position": int(start), "samples": int(len(samples)),
                      "pieces": pieces_out, "reused": bool(was_reused)})
        if was_reused:
            reused += len(samples) / sr
        heard.add(spk)
        prev, prev_end, t = spk, max(prev_end, start + len(samples)), start + len(samples)

    if not turns:
        raise ValueError(f"no speech found in the audio of speakers {chosen}")
    total = max(tr["position"] + tr["samples"] for tr in turns) + int(rng.uniform(*pause) * sr)
    mix = np.zeros(total, dtype=np.float64)
    segments = []
    for tr in turns:
        for path, a, b, gain, pos in tr["pieces"]:
            wav = material[tr["speaker"]].audio(path)[0]
            mix[pos: pos + b - a] += gain * wav[a:b]
        # reference: the turn's speech, pauses of min_gap or more splitting it
        loud = np.zeros(tr["samples"], dtype=bool)
        for path, a, b, gain, pos in tr["pieces"]:
            spans = material[tr["speaker"]].audio(path)[2]
            off = pos - tr["position"]
            for sa, sb in spans:
                lo_, hi_ = max(sa, a), min(sb, b)
                if lo_ < hi_:
                    loud[off + lo_ - a: off + hi_ - a] = True
        for sa, sb in _bridge(loud, int(min_gap * sr), frame):
            segments.append((round((tr["position"] + sa) / sr, 3), round((tr["position"] + sb) / sr, 3),
                             tr["speaker"]))
    speech_power = np.mean(mix[_union_mask(segments, total, sr)] ** 2) if segments else 0.0
    if noise_snr is not None and speech_power > 0:
        mix += _noise(rng_np, total, noise_color) * math.sqrt(speech_power / 10 ** (noise_snr / 10))
    peak = float(np.max(np.abs(mix))) if total else 0.0
    if peak > 0.99:  # one scale for the whole mixture: the reference is unchanged
        mix *= 0.99 / peak
        for tr in turns:
            tr["pieces"] = [(p, a, b, g * 0.99 / peak, pos) for p, a, b, g, pos in tr["pieces"]]
    with atomic_output(wav_path) as tmp:
        sf.write(str(tmp), mix.astype(np.float32), sr, subtype="PCM_16", format="WAV")
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    write_rttm(rttm_path, segments, rec_id)
    return Conversation(str(wav_path), str(rttm_path), rec_id, total / sr, read_rttm(rttm_path).get(rec_id, []),
                        chosen, turns, round(_overlap_seconds(segments), 3), round(reused, 3))


def _bridge(mask, min_gap, frame):
    """Spans ``[(start, stop)]`` of True in ``mask``, gaps shorter than ``min_gap`` samples bridged."""
    idx = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = list(zip(idx[::2].tolist(), idx[1::2].tolist()))
    merged = []
    for a, b in runs:
        if merged and a - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return [(a, b) for a, b in merged if b - a >= frame]


def _union_mask(segments, total, sr):
    mask = np.zeros(total, dtype=bool)
    for start, end, _ in segments:
        mask[int(round(start * sr)): int(round(end * sr))] = True
    return mask


def _overlap_seconds(segments):
    """Seconds during which two or more reference segments are active."""
    events = sorted([(s, 1) for s, _, _ in segments] + [(e, -1) for _, e, _ in segments])
    active, last, total = 0, 0.0, 0.0
    for t, step in events:
        if active >= 2:
            total += t - last
        active += step
        last = t
    return total
