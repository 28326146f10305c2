"""Speaker diarization ("who spoke when") with prefix-first clustering of Matryoshka embeddings.

:class:`Diarizer` turns a recording into speaker-labelled segments:

1. **Speech**: Silero VAD (the ``silero-vad`` package, ``pip install
   "speechbrain-mrl[diarization]"``) over the file, read block by block from disk.
2. **Windows**: each speech region is cut into sliding windows (``window`` s,
   every ``hop`` s; a region shorter than a window is one window), embedded in
   batches by :func:`~speechbrain_mrl.inference.embeddings.embed_manifest` as rows
   with ``start``/``stop``: windows are read from disk, so memory grows with the
   recording only by its embeddings.
3. **Clustering**: SpeechBrain's spectral clustering
   (:class:`speechbrain.integrations.alignment.diarization.Spec_Clust_unorm`: cosine
   affinity, p-pruning, unnormalised Laplacian, speaker count by the largest
   eigengap; the pruning fraction chosen per recording by the normalised maximum
   eigengap, NME-SC) or average-linkage agglomerative clustering stopped at the
   model's calibrated threshold, with ``num_speakers`` or
   ``min_speakers``..``max_speakers``.
4. **Prefix-first**: the clustering runs on the first ``coarse_dim`` coordinates
   of the nested embeddings; only the windows whose assignment is uncertain (a
   margin under ``margin`` between their best and second-best centroid, a label
   that differs from a neighbouring window's, or a cluster of under
   ``min_cluster`` of the windows) are re-scored at full size against the
   full-size centroids of the confident windows and reassigned. Clusters whose
   full-size centroids have a cosine of ``merge_threshold`` or more are then
   merged (so that one speaker can be found). ``coarse_dim=0`` does the same at
   full size.
5. **Segments**: windows are merged per speaker and overlapping windows of two
   speakers are split at the middle of their overlap (SpeechBrain's
   ``merge_ssegs_same_speaker`` and ``distribute_overlap``); pauses under
   ``min_gap`` within a speaker's turn are filled; RTTM out.

:func:`diarization_error` scores segments against a reference with
pyannote.metrics (DER and its parts: missed speech, false alarm, confusion).

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import dataclasses
import logging
import math
import time
import warnings

import numpy as np
import torch

from speechbrain_mrl.data.audio import ShortAudioWarning, audio_info, load_audio
from speechbrain_mrl.data.conversations import write_rttm
from speechbrain_mrl.inference.embeddings import embed_manifest

__all__ = ["Diarizer", "Diarization", "SpeechDetector", "sliding_windows", "cluster_windows",
           "segments_from_windows", "calibrated_threshold", "diarization_error", "total_error",
           "plot_diarization", "EXTRA_HINT"]

logger = logging.getLogger(__name__)

#: How to install what diarization needs.
EXTRA_HINT = 'pip install "speechbrain-mrl[diarization]"'
#: Silero VAD's rate and frame.
VAD_RATE, VAD_FRAME = 16000, 512


def _need(module, what):
    """Imports ``module``, or raises one line naming the extra to install."""
    import importlib

    threads = torch.get_num_threads()
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"silero_vad": "silero-vad"}.get(module, "pyannote.metrics")
        raise ImportError(f"{what} needs the {package} package: {EXTRA_HINT}") from None
    finally:
        torch.set_num_threads(threads)  # silero_vad sets one thread for the whole process at import


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _speechbrain_diarization():
    """SpeechBrain's diarization module, imported without resetting NumPy's global random state."""
    state = np.random.get_state()
    try:
        from speechbrain.integrations.alignment import diarization
    finally:
        np.random.set_state(state)
    return diarization


# ------------------------------------------------------------------ speech
class SpeechDetector:
    """Speech regions of an audio file by Silero VAD, read from disk block by block.

    Arguments
    ---------
    threshold : float
        Speech probability from which a frame is speech (Silero's ``threshold``).
    min_speech : float
        Shorter speech regions (seconds) are dropped.
    min_silence : float
        Silences shorter than this (seconds) do not end a region.
    pad : float
        Seconds added on each side of a region.
    block_seconds : float
        Audio read at a time.
    """

    def __init__(self, threshold=0.5, min_speech=0.25, min_silence=0.1, pad=0.03, block_seconds=30.0):
        if not 0 < threshold < 1:
            raise ValueError(f"VAD threshold must be in (0, 1), got {threshold}")
        for name, value in (("min_speech", min_speech), ("min_silence", min_silence), ("pad", pad)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"VAD {name} must be a number of seconds >= 0, got {value}")
        self.threshold, self.min_speech, self.min_silence, self.pad = threshold, min_speech, min_silence, pad
        self.block = int(block_seconds * VAD_RATE) // VAD_FRAME * VAD_FRAME
        self._model = None

    def _load(self):
        if self._model is None:
            silero = _need("silero_vad", "speech detection (Silero VAD)")
            with _threads(1):
                self._model = silero.load_silero_vad()
        return self._model

    def probabilities(self, path):
        """Silero speech probability of every 32-ms frame, and the duration (seconds)."""
        import torchaudio

        model = self._load()
        frames, rate = audio_info(path)
        step = max(1, int(round(self.block * rate / VAD_RATE)))
        probs, rest, total = [], torch.zeros(0), 0
        with torch.no_grad(), _threads(1):  # one thread: the model is small and runs frame by frame
            model.reset_states()
            for start in range(0, frames, step):
                signal, _ = load_audio(path, start, min(start + step, frames))
                x = signal.mean(dim=1)
                if rate != VAD_RATE:
                    x = torchaudio.functional.resample(x, rate, VAD_RATE)
                total += len(x)
                x = torch.cat([rest, x])
                n = len(x) // VAD_FRAME * VAD_FRAME
                if n:  # an empty tensor splits into one empty chunk, which Silero refuses
                    probs.extend(model(chunk, VAD_RATE).item() for chunk in x[:n].split(VAD_FRAME))
                rest = x[n:]
            if len(rest):
                probs.append(model(torch.nn.functional.pad(rest, (0, VAD_FRAME - len(rest))), VAD_RATE).item())
        return probs, total / VAD_RATE

    def __call__(self, path):
        """``(regions, duration)``: speech regions ``[(start, end)]`` and the file's length, in seconds."""
        silero = _need("silero_vad", "speech detection (Silero VAD)")
        probs, duration = self.probabilities(path)
        if not probs:
            return [], duration
        speech = silero.get_speech_timestamps_from_probs(
            probs, sampling_rate=VAD_RATE, threshold=self.threshold,
            min_speech_duration_ms=int(round(self.min_speech * 1000)),
            min_silence_duration_ms=int(round(self.min_silence * 1000)), speech_pad_ms=int(round(self.pad * 1000)),
            audio_length_samples=int(round(duration * VAD_RATE)))
        return [(round(s["start"] / VAD_RATE, 3), round(s["end"] / VAD_RATE, 3)) for s in speech], duration


def sliding_windows(regions, window=1.5, hop=0.75):
    """Windows ``[(start, end)]`` (seconds) over speech regions; the last one of a region ends with it.

    Example
    -------
    >>> sliding_windows([(0.0, 1.0), (2.0, 5.0), (6.0, 7.8)], 1.5, 0.75)
    [(0.0, 1.0), (2.0, 3.5), (2.75, 4.25), (3.5, 5.0), (6.0, 7.5), (6.3, 7.8)]
    """
    out = []
    for a, b in regions:
        if b - a <= window + 1e-9:
            out.append((round(a, 3), round(b, 3)))
            continue
        n = math.ceil((b - a - window) / hop - 1e-9)
        out += [(round(a + i * hop, 3), round(a + i * hop + window, 3)) for i in range(n)]
        out.append((round(b - window, 3), round(b, 3)))
    return out


# ------------------------------------------------------------------ clustering
def _normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centroids(x, labels, k, mask=None):
    """Unit-length mean of the unit-length rows of each cluster (``mask``: rows used, where a cluster has some)."""
    x = _normalise(x)
    out = np.zeros((k, x.shape[1]))
    for c in range(k):
        rows = labels == c
        if mask is not None and (rows & mask).any():
            rows = rows & mask
        if rows.any():
            out[c] = x[rows].mean(axis=0)
    return _normalise(out)


def _relabel(labels):
    """Labels renumbered 0.. in order of first appearance."""
    order = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return np.array([order[lab] for lab in labels.tolist()], dtype=int)


def _spectral(x, k, min_speakers, max_speakers, pval, seed):
    """SpeechBrain's spectral clustering (cosine affinity, eigengap speaker count); deterministic k-means."""
    from sklearn.cluster import k_means

    sb = _speechbrain_diarization()

    class Spectral(sb.Spec_Clust_unorm):
        def cluster_embs(self, emb, k):
            _, self.labels_, _ = k_means(emb, k, random_state=seed, n_init=10)

    # SpeechBrain's eigengap search covers 2 .. max_num_spkrs - 1 speakers
    clust = Spectral(min_num_spkrs=max(2, min_speakers), max_num_spkrs=max_speakers + 1)
    if pval is None:
        pval = _auto_pval(clust, x, min_speakers, max_speakers)
    clust.do_spec_clust(x, k, pval)
    return clust.labels_


#: The p-pruning fractions :func:`_auto_pval` tries.
PVALS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5)


def _auto_pval(clust, x, min_speakers, max_speakers):
    """The pruning fraction with the clearest eigengap for its sparsity (NME-SC's ``p / g_p`` criterion).

    T. J. Park et al., "Auto-Tuning Spectral Clustering for Speaker Diarization Using
    Normalized Maximum Eigengap", IEEE SPL 2020: for each fraction ``p`` kept, the
    largest gap ``g_p`` among the Laplacian's first eigenvalues, normalised by its
    largest eigenvalue; the fraction minimising ``p / g_p`` wins.
    """
    import scipy.linalg

    n = len(x)
    sim = clust.get_sim_mat(x)
    best, chosen = np.inf, PVALS[-1]
    lo, hi = max(2, min_speakers), min(max_speakers, n - 1)
    for p in PVALS:
        if int(p * n) < 2:
            continue
        pruned = clust.p_pruning(sim.copy(), p)
        lap = clust.get_laplacian(0.5 * (pruned + pruned.T))
        lam = scipy.linalg.eigh(lap, eigvals_only=True)
        gaps = np.diff(lam[: hi + 1])[lo - 1:]  # gap after the k-th eigenvalue, k = lo..hi
        if gaps.size == 0 or lam[-1] <= 0:
            continue
        ratio = p / (gaps.max() / lam[-1] + 1e-10)
        if ratio < best:
            best, chosen = ratio, p
    return chosen


def _agglomerative(x, k, threshold):
    """Average-linkage clustering on cosine distance: ``k`` clusters, or stopping below cosine ``threshold``."""
    from sklearn.cluster import AgglomerativeClustering

    if k is not None:
        return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit(x).labels_
    return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                   distance_threshold=1.0 - threshold).fit(x).labels_


def _merge_close(full, labels, threshold, min_speakers):
    """Merges the two clusters with the closest full-size centroids while their cosine >= ``threshold``."""
    k = labels.max() + 1
    while k > max(1, min_speakers):
        cent = _centroids(full, labels, k)
        sim = cent @ cent.T
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[a, b] < threshold:
            break
        labels = np.where(labels == max(a, b), min(a, b), labels)
        labels = np.unique(labels, return_inverse=True)[1]
        k -= 1
    return labels


def _neighbours_differ(labels, windows, hop):
    """Windows whose label differs from that of a window next to them in time (a speaker change)."""
    change = np.zeros(len(labels), dtype=bool)
    for i in range(len(labels) - 1):
        if windows[i + 1][0] - windows[i][1] <= hop and labels[i] != labels[i + 1]:
            change[i] = change[i + 1] = True
    return change


def _reassign(full, x, labels, windows, hop, margin, min_cluster, keep_at_least=1):
    """Uncertain windows re-scored at full size against the full-size centroids of the confident ones.

    Uncertain: a margin under ``margin`` between the cosines of the window (in
    ``x``, the clustered vectors) to its own and to the next centroid, a label
    that differs from a neighbouring window's, or a cluster of fewer than
    ``min_cluster`` (a fraction of the windows) windows, which is dissolved
    (the ``keep_at_least`` largest clusters are always kept). Returns
    ``(labels, windows re-scored)``.
    """
    n, k = len(labels), labels.max() + 1
    if k < 2:
        return labels, 0
    sizes = np.bincount(labels, minlength=k)
    keep = sizes >= max(2, min_cluster * n)
    keep[np.argsort(-sizes, kind="stable")[:keep_at_least]] = True
    uncertain = ~keep[labels]
    sims = x @ _centroids(x, labels, k).T
    own = sims[np.arange(n), labels]
    sims[np.arange(n), labels] = -np.inf
    uncertain |= own - sims.max(axis=1) < margin
    if windows is not None:
        uncertain |= _neighbours_differ(labels, windows, hop)
    if not uncertain.any():
        return labels, 0
    cent = _centroids(full, labels, k, mask=~uncertain)
    scores = full[uncertain] @ cent.T
    scores[:, ~keep] = -np.inf
    labels = labels.copy()
    labels[uncertain] = np.argmax(scores, axis=1)
    return np.unique(labels, return_inverse=True)[1], int(uncertain.sum())


#: Windows clustered together at most (15 minutes of speech at the default hop): a longer
#: recording is clustered in blocks of consecutive windows, whose speakers are then linked.
BLOCK_WINDOWS = 1200


def cluster_windows(embeddings, windows=None, coarse_dim=32, num_speakers=None, min_speakers=1, max_speakers=10,
                    method="spectral", pval=None, merge_threshold=0.7, ahc_threshold=0.45, margin=0.05,
                    min_cluster=0.06, hop=0.75, seed=1234, block_windows=BLOCK_WINDOWS):
    """Speaker labels of window embeddings: prefix-first clustering, uncertain windows re-scored at full size.

    Arguments
    ---------
    embeddings : array-like
        ``[N, D]`` full-size Matryoshka embeddings, in time order.
    windows : list of (float, float), optional
        The windows' ``(start, end)`` seconds (for speaker changes; None: margins only).
    coarse_dim : int
        Prefix size clustered first (0, or ``D`` and above: cluster at full size).
    num_speakers : int, optional
        The number of speakers when known.
    min_speakers, max_speakers : int
        Range of the estimated number of speakers.
    method : str
        ``spectral`` (SpeechBrain's, eigengap speaker count) or ``ahc`` (average linkage, cosine).
    pval : float, optional
        Fraction of each row of the affinity matrix kept (spectral); None: chosen
        per recording by the normalised maximum eigengap (NME-SC).
    merge_threshold : float
        Clusters whose full-size centroids have a cosine at least this are merged
        (down to ``min_speakers``; not with ``num_speakers``).
    ahc_threshold : float
        Agglomerative clustering (without ``num_speakers``) merges clusters while
        their average cosine is at least this (at the clustered size).
    margin : float
        A window whose cosine to its own prefix centroid exceeds that to the next
        one by less than this is uncertain (re-scored at full size).
    min_cluster : float
        Without ``num_speakers``, clusters of fewer windows than this fraction
        are dissolved: their windows are re-scored against the others.
    hop : float
        Windows less than this apart (seconds) are neighbours.
    seed : int
        Seed of k-means.
    block_windows : int
        More windows than this are clustered in blocks of consecutive windows (each
        as above, with at most ``max_speakers``), whose clusters are then linked by
        their full-size centroids, the same merging as within a recording: memory
        stays that of one block (the clustering holds windows x windows matrices)
        however long the recording. 0: one block.

    Returns
    -------
    labels : numpy.ndarray
        ``[N]`` speaker indices 0.. in order of first appearance.
    rescored : int
        Windows re-scored at full size.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((2, 64))
    >>> emb = np.repeat(centres, 20, axis=0) + 0.3 * rng.standard_normal((40, 64))
    >>> labels, rescored = cluster_windows(emb, coarse_dim=16)
    >>> labels.tolist() == [0] * 20 + [1] * 20
    True
    """
    full = _normalise(embeddings)
    n, dim = full.shape if full.ndim == 2 else (0, 0)
    if n == 0:
        return np.zeros(0, dtype=int), 0
    if num_speakers is not None and num_speakers < 1:
        raise ValueError(f"num_speakers must be at least 1, got {num_speakers}")
    if not 1 <= min_speakers <= max_speakers:
        raise ValueError(f"need 1 <= min_speakers <= max_speakers, got {min_speakers}, {max_speakers}")
    if method not in ("spectral", "ahc"):
        raise ValueError(f"method must be 'spectral' or 'ahc', got {method!r}")
    if coarse_dim < 0:
        raise ValueError(f"coarse_dim must be 0 (full size) or a prefix size, got {coarse_dim}")
    if block_windows < 0:
        raise ValueError(f"block_windows must be 0 (one block) or a number of windows, got {block_windows}")
    k = None if num_speakers is None else min(int(num_speakers), n)
    if k == 1 or n == 1:
        return np.zeros(n, dtype=int), 0
    if block_windows and n > block_windows:
        blocks = -(-n // block_windows)
        size = -(-n // blocks)  # blocks of even size
        labels, rescored = [], 0
        for start in range(0, n, size):
            part, part_rescored = cluster_windows(
                full[start:start + size], None if windows is None else windows[start:start + size],
                coarse_dim, None, 1, k or max_speakers, method, pval, merge_threshold, ahc_threshold, margin,
                min_cluster, hop, seed, block_windows=0)
            labels.append(part + (labels[-1].max() + 1 if labels else 0))
            rescored += part_rescored
        return _merged(full, np.concatenate(labels), k, min_speakers, max_speakers, merge_threshold), rescored
    prefix = 0 < coarse_dim < dim
    x = _normalise(full[:, :coarse_dim]) if prefix else full
    few = n < 2 * max(2, min_speakers, k or 0) + 2  # too few windows for spectral clustering
    if method == "spectral" and not few:
        labels = _spectral(x, k, min_speakers, max_speakers, pval, seed)
    else:
        labels = _agglomerative(x, None, ahc_threshold)
        if k is not None and labels.max() + 1 < k:  # fewer clusters than speakers: cut the tree at k
            labels = _agglomerative(x, k, ahc_threshold)
    labels = np.unique(np.asarray(labels), return_inverse=True)[1]
    labels, rescored = _reassign(full, x, labels, windows, hop, margin, min_cluster,
                                 keep_at_least=k or min_speakers)
    return _merged(full, labels, k, min_speakers, max_speakers, merge_threshold), rescored


def _merged(full, labels, k, min_speakers, max_speakers, merge_threshold):
    """Clusters merged by their full-size centroids: down to ``k`` speakers when known, else while
    two are as close as ``merge_threshold`` (not below ``min_speakers``), then down to ``max_speakers``."""
    if k is not None:
        labels = _merge_close(full, labels, -np.inf, k)
    else:
        labels = _merge_close(full, labels, merge_threshold if merge_threshold is not None else np.inf,
                              min_speakers)
        labels = _merge_close(full, labels, -np.inf, max_speakers)
    return _relabel(labels)


def segments_from_windows(windows, labels, rec_id="rec", min_gap=0.0):
    """Speaker segments from labelled windows: same-speaker windows merged, overlaps split at their middle.

    Uses SpeechBrain's ``merge_ssegs_same_speaker`` and ``distribute_overlap``;
    then a pause shorter than ``min_gap`` seconds between two segments of the
    same speaker is filled (as NIST references bridge pauses under 0.3 s).

    Example
    -------
    >>> segments_from_windows([(0.0, 1.5), (0.75, 2.25), (1.5, 3.0), (3.2, 4.0)], ["a", "a", "b", "b"])
    [(0.0, 1.875, 'a'), (1.875, 3.0, 'b'), (3.2, 4.0, 'b')]
    >>> segments_from_windows([(0.0, 1.5), (0.75, 2.25), (1.5, 3.0), (3.2, 4.0)], ["a", "a", "b", "b"], min_gap=0.3)
    [(0.0, 1.875, 'a'), (1.875, 4.0, 'b')]
    """
    if len(windows) == 0:
        return []
    sb = _speechbrain_diarization()
    lol = sorted(([rec_id, float(s), float(e), str(lab)] for (s, e), lab in zip(windows, labels)),
                 key=lambda r: (r[1], r[2]))
    if len(lol) > 1:
        lol = sb.merge_ssegs_same_speaker(lol)
    if len(lol) > 1:
        lol = sb.distribute_overlap(lol)
    out = []
    for _, s, e, spk in lol:
        if e - s <= 1e-6:
            continue
        if out and out[-1][2] == spk and s - out[-1][1] < min_gap:
            out[-1] = (out[-1][0], max(out[-1][1], e), spk)
        else:
            out.append((s, e, spk))
    return [(round(s, 3), round(e, 3), spk) for s, e, spk in out]


# ------------------------------------------------------------------ the diarizer
@dataclasses.dataclass
class Diarization:
    """What :meth:`Diarizer.diarize` found in one recording.

    Attributes
    ----------
    rec_id : str
        Recording name (RTTM ``file`` field).
    segments : list of (float, float, str)
        ``(start, end, speaker)`` in seconds, in time order.
    centroids : dict
        ``{speaker: full-size unit-length mean embedding}`` (NumPy arrays).
    duration : float
        Length of the recording (seconds).
    speech : list of (float, float)
        Speech regions found by the VAD.
    windows : int
        Windows embedded.
    rescored : int
        Windows re-scored at full size.
    timings : dict
        Seconds spent in ``vad``, ``embedding``, ``clustering`` and in ``total``.
    message : str
        Why the result is empty (no speech), else ``""``.
    """

    rec_id: str
    segments: list
    centroids: dict
    duration: float
    speech: list
    windows: int = 0
    rescored: int = 0
    timings: dict = dataclasses.field(default_factory=dict)
    message: str = ""

    @property
    def num_speakers(self):
        """Speakers found."""
        return len({spk for _, _, spk in self.segments})

    def write_rttm(self, path):
        """Writes the segments as an RTTM file (atomically); returns the path."""
        return write_rttm(path, self.segments, self.rec_id)

    def summary(self):
        """A JSON-ready summary (no embeddings)."""
        return {"rec_id": self.rec_id, "duration": round(self.duration, 3), "num_speakers": self.num_speakers,
                "speakers": sorted({s for _, _, s in self.segments}), "segments": len(self.segments),
                "speech_seconds": round(sum(e - s for s, e in self.speech), 3), "windows": self.windows,
                "rescored": self.rescored, "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "real_time_factor": round(self.timings.get("total", 0.0) / self.duration, 5) if self.duration else None,
                "message": self.message}


#: Added to a size's calibrated verification threshold to stop agglomerative clustering
#: (tuned on simulated LibriSpeech conversations, apart from the benchmark's).
AHC_OFFSET = 0.09


def calibrated_threshold(thresholds, size, offset=AHC_OFFSET, default=0.45):
    """The cosine at which clusters of size-``size`` embeddings stay apart: calibrated threshold + ``offset``.

    Arguments
    ---------
    thresholds : dict or None
        ``{size: cosine threshold}`` (a model's ``thresholds``); the size nearest
        to ``size`` (by ratio) is used.
    size : int
        The clustered embedding size.
    offset : float
        Added to the threshold.
    default : float
        Without thresholds.

    Example
    -------
    >>> calibrated_threshold({32: 0.38, 192: 0.32}, 48), calibrated_threshold(None, 48)
    (0.47, 0.45)
    """
    if not thresholds:
        return default
    nearest = min(thresholds, key=lambda d: (abs(math.log(d / size)), d))
    return round(float(thresholds[nearest]) + offset, 6)


class Diarizer:
    """Who spoke when in a recording, with an :class:`~speechbrain_mrl.inference.interface.MRLEncoderClassifier`.

    Arguments
    ---------
    model : MRLEncoderClassifier
        The embedding model (:func:`~speechbrain_mrl.inference.interface.load_model`).
    num_speakers : int, optional
        The number of speakers when known (else estimated).
    min_speakers, max_speakers : int
        Range of the estimated number of speakers.
    coarse_dim : int
        Prefix size clustered first; 0 clusters at full size (see the module docstring).
    window, hop : float
        Sliding windows over speech (seconds).
    vad_threshold, vad_min_speech, vad_min_silence, vad_pad : float
        Silero VAD settings (:class:`SpeechDetector`).
    method : str
        ``spectral`` (SpeechBrain's, the default) or ``ahc`` (:func:`cluster_windows`).
    pval, merge_threshold, margin, min_cluster : float
        Clustering settings (:func:`cluster_windows`).
    ahc_threshold : float, optional
        Average cosine at which agglomerative clustering stops; None: the model's
        calibrated verification threshold at the clustered size plus
        :data:`AHC_OFFSET` (0.45 without calibration).
    min_gap : float
        Pauses shorter than this (seconds) between two segments of one speaker are
        filled (NIST references bridge pauses under 0.3 s).
    batch_size, num_workers : int
        Embedding batches and DataLoader workers.
    precision : str
        ``fp32``, ``fp16`` or ``bf16``.
    progress : bool
        Show a progress bar while embedding.
    block_windows : int
        Longer recordings are clustered in blocks of this many windows, then linked
        (:func:`cluster_windows`; 0: one block).

    Example
    -------
    >>> from speechbrain_mrl.inference.interface import load_model
    >>> diarizer = Diarizer(load_model("speechbrain-mrl/demo-sc"), coarse_dim=32)  # doctest: +SKIP
    >>> result = diarizer.diarize("meeting.wav")                                   # doctest: +SKIP
    >>> result.segments[:2]                                                        # doctest: +SKIP
    [(0.27, 9.54, 'spk0'), (9.54, 13.9, 'spk1')]
    """

    def __init__(self, model, num_speakers=None, min_speakers=1, max_speakers=10, coarse_dim=32, window=1.5,
                 hop=0.75, vad_threshold=0.5, vad_min_speech=0.25, vad_min_silence=0.1, vad_pad=0.03,
                 method="spectral", pval=None, merge_threshold=0.7, ahc_threshold=None, margin=0.05,
                 min_cluster=0.06, min_gap=0.3, batch_size=32, num_workers=0, precision="fp32", progress=False,
                 block_windows=BLOCK_WINDOWS):
        embed_dim = int(model.embed_dim)
        if num_speakers is not None and num_speakers < 1:
            raise ValueError(f"num_speakers must be at least 1, got {num_speakers}")
        if not 1 <= min_speakers <= max_speakers:
            raise ValueError(f"need 1 <= min_speakers <= max_speakers, got {min_speakers} and {max_speakers}")
        if not 0 <= coarse_dim <= embed_dim:
            raise ValueError(f"coarse_dim must be 0 (full size) or a prefix size from 1 to the model's "
                             f"{embed_dim}, got {coarse_dim}")
        if not (math.isfinite(window) and window > 0 and math.isfinite(hop) and 0 < hop <= window):
            raise ValueError(f"need window > 0 and 0 < hop <= window, got window={window}, hop={hop}")
        if method not in ("spectral", "ahc"):
            raise ValueError(f"method must be 'spectral' or 'ahc', got {method!r}")
        if pval is not None and not 0 < pval <= 1:
            raise ValueError(f"pval must be in (0, 1] (or None: chosen per recording), got {pval}")
        self.model = model
        self.vad = SpeechDetector(vad_threshold, vad_min_speech, vad_min_silence, vad_pad)
        self.window, self.hop, self.min_gap = float(window), float(hop), float(min_gap)
        size = coarse_dim if 0 < coarse_dim < embed_dim else embed_dim
        if ahc_threshold is None:
            ahc_threshold = calibrated_threshold(getattr(model, "thresholds", None), size)
        self.cluster_options = dict(
            coarse_dim=int(coarse_dim), num_speakers=num_speakers, min_speakers=int(min_speakers),
            max_speakers=int(max_speakers), method=method, pval=pval, merge_threshold=merge_threshold,
            ahc_threshold=float(ahc_threshold), margin=float(margin), min_cluster=float(min_cluster), hop=self.hop,
            block_windows=int(block_windows))
        self.batch_size, self.num_workers, self.precision = int(batch_size), int(num_workers), precision
        self.progress = progress

    def embed_windows(self, path, windows):
        """Full-size embeddings of the ``windows`` of a file: ``(windows kept, [N, D] array)``.

        Windows the model cannot embed (too short, silent) are left out, and logged.
        """
        _, rate = audio_info(path)
        rows = {f"w{i:07d}": {"wav": str(path), "start": int(round(s * rate)), "stop": int(round(e * rate)),
                              "duration": e - s} for i, (s, e) in enumerate(windows)}
        skipped = []
        with warnings.catch_warnings():  # short windows (a short speech region) are expected here
            warnings.simplefilter("ignore", ShortAudioWarning)
            ids, emb = embed_manifest(self.model.encoder, rows, batch_size=self.batch_size,
                                      num_workers=self.num_workers, precision=self.precision, skipped=skipped,
                                      desc="windows", progress=self.progress, **self.model.embedding_options())
        if skipped:
            logger.info("%s: %d of %d windows not embedded (e.g. %s)", path, len(skipped), len(rows),
                        skipped[0][2])
        keep = [int(u[1:]) for u in ids]
        return [windows[i] for i in keep], emb.numpy()

    def diarize(self, path, rec_id=None):
        """Diarizes one audio file.

        Arguments
        ---------
        path : str or os.PathLike
            Audio file (any rate; resampled).
        rec_id : str, optional
            Recording name (default: the file's stem).

        Returns
        -------
        Diarization
            Empty segments, with a ``message``, when the file holds no speech.
        """
        import pathlib

        rec_id = rec_id or pathlib.Path(path).stem
        t0 = time.perf_counter()
        regions, duration = self.vad(path)
        t1 = time.perf_counter()
        windows = sliding_windows(regions, self.window, self.hop)
        windows, emb = self.embed_windows(path, windows) if windows else ([], np.zeros((0, 0)))
        t2 = time.perf_counter()
        labels, rescored = cluster_windows(emb, windows, **self.cluster_options)
        names = [f"spk{lab}" for lab in labels.tolist()]
        segments = segments_from_windows(windows, names, rec_id, self.min_gap)
        centroids = {}
        if len(labels):
            cent = _centroids(emb, labels, labels.max() + 1)
            centroids = {f"spk{c}": cent[c].astype(np.float32) for c in range(len(cent))}
        t3 = time.perf_counter()
        message = ""
        if not regions:
            message = f"no speech found in {path} (Silero VAD, threshold {self.vad.threshold})"
        elif not windows:
            message = f"no speech the model can embed in {path} ({len(regions)} speech regions, all unusable)"
        if message:
            logger.warning("%s", message)
        return Diarization(rec_id, segments, centroids, duration, regions, len(windows), rescored,
                           {"vad": t1 - t0, "embedding": t2 - t1, "clustering": t3 - t2, "total": t3 - t0},
                           message)


# ------------------------------------------------------------------ scoring
def _annotation(segments, uri):
    core = _need("pyannote.core", "diarization scoring")
    ann = core.Annotation(uri=uri)
    for i, (start, end, speaker) in enumerate(segments):
        if end > start:
            ann[core.Segment(float(start), float(end)), i] = str(speaker)
    return ann


def diarization_error(reference, hypothesis, collar=0.25, skip_overlap=False, duration=None):
    """Diarization error rate of ``hypothesis`` against ``reference`` (pyannote.metrics), and its parts.

    Arguments
    ---------
    reference, hypothesis : list of (float, float, str)
        ``(start, end, speaker)`` segments in seconds.
    collar : float
        Seconds forgiven on each side of every reference boundary, as NIST's
        md-eval and SpeechBrain's AMI recipe count it (pyannote's own ``collar``
        is the collar's whole width: twice this).
    skip_overlap : bool
        Leave out regions where reference speakers overlap.
    duration : float, optional
        Length of the recording: the scored region is ``[0, duration]`` (default:
        up to the last segment's end).

    Returns
    -------
    dict
        ``der``, ``missed``, ``false_alarm``, ``confusion``: fractions of the
        scored reference speech (None when there is none); ``total``,
        ``missed_seconds``, ``false_alarm_seconds``, ``confusion_seconds``: seconds.

    Example
    -------
    >>> ref = [(0.0, 10.0, "A"), (10.0, 20.0, "B")]
    >>> hyp = [(0.0, 12.0, "x"), (12.0, 19.0, "y"), (21.0, 22.0, "y")]
    >>> e = diarization_error(ref, hyp, collar=0.0, duration=25.0)
    >>> round(e["der"], 4), e["missed_seconds"], e["false_alarm_seconds"], e["confusion_seconds"]
    (0.2, 1.0, 1.0, 2.0)
    """
    core = _need("pyannote.core", "diarization scoring")
    metrics = _need("pyannote.metrics.diarization", "diarization scoring")
    if not (math.isfinite(collar) and collar >= 0):
        raise ValueError(f"collar must be a number of seconds >= 0, got {collar}")
    end = max([e for _, e, _ in list(reference) + list(hypothesis)] + [0.0])
    end = max(end, float(duration or 0.0))
    metric = metrics.DiarizationErrorRate(collar=2 * collar, skip_overlap=skip_overlap)
    if end <= 0:
        parts = {"total": 0.0, "missed detection": 0.0, "false alarm": 0.0, "confusion": 0.0}
    else:
        uem = core.Timeline([core.Segment(0.0, end)])
        parts = metric(_annotation(reference, "rec"), _annotation(hypothesis, "rec"), uem=uem, detailed=True)
    return _rates(parts["total"], parts["missed detection"], parts["false alarm"], parts["confusion"])


def _rates(total, missed, false_alarm, confusion):
    def rate(x):
        return x / total if total > 0 else None

    return {"der": rate(missed + false_alarm + confusion), "missed": rate(missed),
            "false_alarm": rate(false_alarm), "confusion": rate(confusion), "total": round(total, 4),
            "missed_seconds": round(missed, 4), "false_alarm_seconds": round(false_alarm, 4),
            "confusion_seconds": round(confusion, 4)}


def total_error(errors):
    """The DER of several recordings together (their seconds summed), from :func:`diarization_error` results.

    Example
    -------
    >>> a = {"total": 10.0, "missed_seconds": 1.0, "false_alarm_seconds": 0.0, "confusion_seconds": 1.0}
    >>> b = {"total": 30.0, "missed_seconds": 0.0, "false_alarm_seconds": 2.0, "confusion_seconds": 0.0}
    >>> total_error([a, b])["der"]
    0.1
    """
    errors = list(errors)
    return _rates(sum(e["total"] for e in errors), sum(e["missed_seconds"] for e in errors),
                  sum(e["false_alarm_seconds"] for e in errors), sum(e["confusion_seconds"] for e in errors))


# ------------------------------------------------------------------ picture
def plot_diarization(path, segments, reference=None, duration=None, title=""):
    """Draws a timeline PNG: one coloured row per speaker (and the reference's rows below, when given).

    Arguments
    ---------
    path : str or os.PathLike
        The PNG to write (atomically).
    segments : list of (float, float, str)
        The speakers found.
    reference : list of (float, float, str), optional
        The reference segments.
    duration : float, optional
        Length of the time axis (default: the last segment's end).
    title : str
        Figure title.

    Returns
    -------
    str or os.PathLike
        ``path``.

    Example
    -------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.png")
    >>> open(plot_diarization(p, [(0, 1, "spk0"), (1, 2.5, "spk1")], [(0, 1.2, "A")]), "rb").read(4)
    b'\\x89PNG'
    """
    from speechbrain_mrl.data.charts import figure, save_figure

    panels = [("found", segments)] + ([("reference", reference)] if reference is not None else [])
    rows = max(1, max(len({s for _, _, s in segs}) for _, segs in panels))
    end = duration or max([e for _, segs in panels for _, e, _ in segs] + [1.0])
    fig, axes = figure(len(panels), 1, panel_size=(min(40.0, 6.0 + end / 15.0), 0.9 + 0.35 * rows), legend_rows=0)
    for ax, (name, segs) in zip(axes, panels):
        speakers = sorted({s for _, _, s in segs})
        for row, spk in enumerate(speakers):
            spans = [(s, e - s) for s, e, who in segs if who == spk]
            ax.broken_barh(spans, (row - 0.4, 0.8), color=f"C{row % 10}")
        ax.set_yticks(range(len(speakers)), speakers)
        ax.set_ylim(-0.6, max(len(speakers), 1) - 0.4)
        ax.set_xlim(0, end)
        ax.set_title(f"{title} {name}".strip(), fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    return save_figure(fig, path)
