"""Speaker search over Matryoshka embeddings: a small prefix first, the full embedding last.

:class:`SpeakerIndex` holds one vector per enrolled speaker: the mean of the
L2-normalised full-size embeddings of its utterances. The score of a query
against a speaker at size ``d`` is the cosine of their first ``d``
coordinates. A search runs a funnel: FAISS finds a shortlist on the smallest
prefix (exact inner product, or HNSW or IVF for large enrolments), and each
later stage re-ranks the shortlist with a larger prefix, the last with the
full embedding (or ``final_dim``). Open-set identification rejects a best match
that scores under the index's threshold for the size that gave the score
(copied from the model's 1:1 verification calibration, or fitted for
identification on a trial list with :func:`calibrate_thresholds`; the index
records which, and warns when 1:1 thresholds are used for 1:N search). The
extraction cost does not depend on the prefix size (one pass gives every
size); the funnel saves search time and first-stage memory. The same interface
on a Qdrant collection (a server, or local mode) is
:class:`speechbrain_mrl.qdrant_index.QdrantSpeakerIndex`; both derive from
:class:`SpeakerIndexBase`, and :func:`speechbrain_mrl.indexes.open_index` opens either.

An index is stored as a folder:

* ``vectors.npy``: the speaker vectors (float32 or float16, read memory-mapped);
* ``speakers.json``: IDs and utterance counts;
* ``stage_<d>_<kind>.faiss``: the FAISS first stage(s) built on the
  ``d``-prefixes (``faiss.write_index``; read memory-mapped, never rebuilt
  unless missing or inconsistent with the vectors);
* ``index.json``: sizes, the model fingerprint, the first-stage settings, the
  thresholds and what they were calibrated for (``thresholds_for``; absent:
  ``verification``), the stage files with their ``ntotal``, and a
  ``generation`` (a new random ID on every save).

A save writes a hidden folder ``.<name>.<8 characters>`` (with the permissions
the umask gives a new folder) that replaces the old one only once complete,
under an exclusive lock (``fcntl.flock`` on ``.<name>.lock`` beside the folder,
see :meth:`SpeakerIndex.writing`); the next save removes such folders left by
killed writers. A save refuses a path that is a file, and refuses to overwrite
an index that another writer saved after this one was loaded
(:class:`IndexChangedError`).

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import contextlib
import json
import os
import pathlib
import random
import shutil
import threading
import time
import uuid
import warnings

import numpy as np

from speechbrain_mrl.sizes import check_threshold, check_thresholds, is_int, validate_mrl_dims
from speechbrain_mrl.files import remove_stale_staging, staging_folder, swap_folder

__all__ = ["SpeakerIndex", "SpeakerIndexBase", "IndexLockedError", "IndexChangedError",
           "IndexExistsError", "calibrate_thresholds", "cascade_verify", "calibrate_margin",
           "open_set_rates"]

FIRST_STAGES = ("flat", "hnsw", "ivf")

#: What open-set thresholds were calibrated for: 1:N identification (a false-alarm rate
#: chosen for it), or 1:1 verification (an equal-error-rate threshold such as the model's).
THRESHOLD_PURPOSES = ("identification", "verification")

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no stage files, no generation

_FAISS_CLASSES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}


class IndexLockedError(RuntimeError):
    """Another writer held an index's lock for longer than the timeout."""


class IndexChangedError(RuntimeError):
    """An index folder changed on disk since this index was loaded from it (another
    writer saved in between); saving would lose that writer's update."""


class IndexExistsError(IndexChangedError):
    """A save would replace an index that this one was not loaded from."""


def _normalised(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _ivf_cells(n):
    """Number of IVF cells for ``n`` speakers: about ``4 sqrt(n)``, at least 39 points each."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def _resolved(folder):
    """The folder's path with symlinks resolved (a save replaces the real folder, not the link)."""
    return pathlib.Path(os.path.realpath(os.path.expanduser(os.fspath(folder))))


def _aside(folder):
    """Where :func:`swap_folder` keeps the previous index while it swaps in a new one."""
    return folder.parent / f".{folder.name}.old"


def _lock_file(folder):
    return folder.parent / f".{folder.name}.lock"


def _stat_token(path):
    """What changes when a save replaces ``path``: device, inode, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


# ------------------------------------------------------------ write locks
# One flock per index folder and process (a second flock on another descriptor of the same
# file would wait for the first forever); threads of the process take turns through an RLock.
_LOCK_GUARD = threading.Lock()
_THREAD_LOCKS = {}  # resolved folder -> threading.RLock
_HELD = {}  # resolved folder -> [file descriptor, depth]
_JITTER = random.Random()  # not the caller's random state


def _forget_locks_in_child():
    """A forked child holds none of its parent's locks (they stay the parent's)."""
    global _LOCK_GUARD
    _LOCK_GUARD = threading.Lock()
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)  # closing a copy keeps the parent's flock
    _HELD.clear()
    _THREAD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _locked_error(folder, lock, timeout):
    return IndexLockedError(
        f"the speaker index {folder} is being written by another writer (lock file {lock} "
        f"still held after {timeout} s): wait for that writer to finish and try again "
        "(the lock ends with its process; deleting the lock file does not help)")


@contextlib.contextmanager
def _write_lock(folder, timeout):
    import fcntl

    folder = _resolved(folder)
    key, lock = str(folder), _lock_file(folder)
    deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))

    def left():
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    with _LOCK_GUARD:
        turn = _THREAD_LOCKS.setdefault(key, threading.RLock())
    if not turn.acquire(timeout=-1 if deadline is None else left()):
        raise _locked_error(folder, lock, timeout)
    try:
        if key in _HELD:  # this thread holds it already (writing() around save())
            _HELD[key][1] += 1
        else:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                if deadline is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if not left():
                                raise _locked_error(folder, lock, timeout) from None
                            time.sleep(min(left(), _JITTER.uniform(0.002, 0.02)))
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = [fd, 1]
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                fd = _HELD.pop(key)[0]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
    finally:
        turn.release()


class SpeakerIndexBase:
    """What every speaker index shares, whatever stores its vectors.

    The sizes and the model fingerprint, the open-set thresholds, the checks of
    embeddings and of funnel settings, speaker means, open-set identification
    and the audio helpers. :class:`SpeakerIndex` (FAISS, a folder) and
    :class:`speechbrain_mrl.qdrant_index.QdrantSpeakerIndex` (a Qdrant collection)
    add the storage and the search itself: ``__len__``, ``enrol``, ``remove``,
    ``search``, ``_location``. An index is a context manager that :meth:`close`
    ends (a no-op for an index folder; the client of a Qdrant collection).
    """

    def _init_common(self, embed_dim, mrl_dims, model_sha256, thresholds, thresholds_for):
        self.embed_dim, self.mrl_dims = int(embed_dim), validate_mrl_dims(mrl_dims, embed_dim)
        self.model_sha256 = model_sha256
        self.thresholds, self.thresholds_for = {}, "identification"
        self.set_thresholds(thresholds or {}, thresholds_for)

    def _location(self):
        """Where the index is stored, as a user would name it (None: in memory only)."""
        return None

    def close(self):
        """Releases what the index holds open (nothing for an index folder)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _refuse_other_model(where, recorded, wanted):
        """Raises unless ``wanted`` (None: any) is the recorded model fingerprint."""
        if wanted is not None and recorded != wanted:
            raise ValueError(f"{where} was built with another model (model_sha256 "
                             f"{recorded!r}); embed with that model or enrol again")

    def set_thresholds(self, thresholds, thresholds_for="identification"):
        """Sets the open-set thresholds ``{size: cosine}`` (sizes of ``mrl_dims``).

        Arguments
        ---------
        thresholds : dict
            ``{size: cosine}``.
        thresholds_for : str
            ``identification``: fitted for 1:N search (e.g. by
            :func:`calibrate_thresholds` with ``false_alarm``); ``verification``:
            1:1 thresholds (an equal error rate), which :meth:`identify` warns about.
        """
        if thresholds_for not in THRESHOLD_PURPOSES:
            raise ValueError(f"thresholds_for must be one of {THRESHOLD_PURPOSES}, got "
                             f"{thresholds_for!r}")
        self.thresholds = check_thresholds(thresholds, self.mrl_dims, "open-set thresholds")
        self.thresholds_for = thresholds_for

    def thresholds_caveat(self):
        """Why the open-set thresholds are unfit for 1:N search, and how to calibrate ones
        that are (None: they were calibrated for identification).

        Example
        -------
        >>> index = SpeakerIndex(8, [4, 8], thresholds={8: 0.3}, thresholds_for="verification")
        >>> index.thresholds_caveat().split(" (an")[0]
        'the speaker index (in memory) holds 1:1 verification thresholds'
        >>> index.set_thresholds({8: 0.6})
        >>> index.thresholds_caveat() is None
        True
        """
        if self.thresholds_for == "identification":
            return None
        location = self._location()
        where, folder = (location, location) if location else ("(in memory)", "FOLDER")
        n = max(len(self), 1)
        return (f"the speaker index {where} holds 1:1 verification thresholds (an equal error "
                f"rate), not thresholds for 1:N search: each query meets all {len(self)} "
                "enrolled speakers, so far more unknown speakers are accepted; calibrate "
                "identification thresholds on a trial list with speechbrain-mrl calibrate "
                f"--index {folder} --false_alarm RATE (RATE: the share of unknown speakers to "
                f"accept divided by {n}, e.g. {0.01 / n:.2g} for 1%), or with "
                "calibrate_thresholds(..., false_alarm=RATE) and set_thresholds")

    def _check_embeddings(self, embeddings, what="embeddings"):
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"{what} must be [N, {self.embed_dim}], got {list(x.shape)}")
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"{what}: rows {np.flatnonzero(bad)[:5].tolist()} hold NaN/Inf")
        zero = ~x.any(axis=1)
        if zero.any():
            raise ValueError(f"{what}: rows {np.flatnonzero(zero)[:5].tolist()} are all zeros")
        return x

    def _checked_enrolment(self, speaker_ids, embeddings):
        """``(ids, embeddings float32 [N, D])`` of an enrolment, checked."""
        x = self._check_embeddings(embeddings)
        ids = [str(s) for s in speaker_ids]
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} speaker IDs for {x.shape[0]} embeddings")
        return ids, x

    def _speaker_means(self, ids, x):
        """``(speakers in first-seen order, utterance counts, float64 means of the
        L2-normalised rows)`` of an enrolment."""
        new = list(dict.fromkeys(ids))
        rows = {s: i for i, s in enumerate(new)}
        sums = np.zeros((len(new), self.embed_dim))
        counts = np.zeros(len(new), dtype=np.int64)
        np.add.at(sums, [rows[s] for s in ids], _normalised(x.astype(np.float64)))
        np.add.at(counts, [rows[s] for s in ids], 1)
        return new, counts.tolist(), sums / counts[:, None]

    def _funnel_plan(self, queries, k, stages, shortlist, final_dim, n_speakers):
        """Checks a search's settings: ``(queries float32, k, stages, shortlist size per
        stage, final_dim)``; ``stages`` ``[]`` is exact search at ``final_dim``."""
        if not n_speakers:
            raise ValueError("the index is empty: enrol speakers first")
        q = self._check_embeddings(queries, "queries")
        k = int(k)
        if not 1 <= k <= n_speakers:
            raise ValueError(f"k must be in [1, {n_speakers}] (enrolled speakers), got {k}")
        final_dim = self.embed_dim if final_dim is None else int(final_dim)
        if final_dim not in self.mrl_dims:
            raise ValueError(f"final_dim must be one of the sizes {self.mrl_dims}, got {final_dim}")
        smaller = [d for d in self.mrl_dims if d < final_dim]
        if stages is None:
            stages = [64] if 64 in smaller else smaller[:1]
        stages = [int(d) for d in stages]
        if stages != sorted(set(stages)) or any(d not in smaller for d in stages):
            raise ValueError(f"stages must be increasing sizes of {smaller} (below the final "
                             f"size {final_dim}), got {stages}")
        sizes = list(shortlist) if isinstance(shortlist, (list, tuple)) else [shortlist] * len(stages)
        if len(sizes) != len(stages):
            raise ValueError(f"one shortlist size per stage: {len(stages)} stages, {sizes}")
        sizes = [min(max(int(s), k), n_speakers) for s in sizes]
        return q, k, stages, sizes, final_dim

    @classmethod
    def for_model(cls, model, model_folder=None, **kwargs):
        """An empty index for the sizes of an ``MRLEncoderClassifier``.

        ``model_folder`` (the folder the model was loaded from) records its
        fingerprint, which opening the index then checks; the model's calibrated
        (1:1 verification) thresholds become the open-set thresholds, unless
        ``thresholds`` is given; ``kwargs`` go to the constructor
        (``first_stage``, ``dtype``, ``location``, ...).
        """
        from speechbrain_mrl.packaging import model_fingerprint

        sha = model_fingerprint(model_folder) if model_folder is not None else None
        if "thresholds" not in kwargs:
            kwargs.update(thresholds=getattr(model, "thresholds", None),
                          thresholds_for="verification")
        return cls(model.embed_dim, model.mrl_dims, model_sha256=sha, **kwargs)

    def embed_audio(self, model, files, batch_size=16):
        """Full-size embeddings ``[N, embed_dim]`` of audio files, in their order.

        Arguments
        ---------
        model : MRLEncoderClassifier
            A model of this index's sizes.
        files : list of str or os.PathLike
            Audio files (any rate or channel count the model's reader takes).
        batch_size : int
            Files per batch (padded and bucketed by length).

        Returns
        -------
        numpy.ndarray
        """
        from speechbrain_mrl.manifests import check_audio_files
        from speechbrain_mrl.embeddings import embed_manifest
        from speechbrain_mrl.sources import read_sources

        if int(model.embed_dim) != self.embed_dim or list(model.mrl_dims) != self.mrl_dims:
            raise ValueError(f"the model gives sizes {list(model.mrl_dims)}, the index holds "
                             f"{self.mrl_dims}: use the model the index was built with")
        if not files:
            raise ValueError("no audio files given")
        rows = {str(i): next(iter(read_sources(files=[path]).values()))
                for i, path in enumerate(files)}
        check_audio_files(rows, "files")
        _, emb = embed_manifest(model.encoder, rows, batch_size=batch_size, progress=False,
                                **model.embedding_options())
        return emb.numpy()

    def enrol_audio(self, model, speaker_ids, files, replace=False, batch_size=16):
        """:meth:`enrol` from audio files: one speaker ID per file (several files per speaker)."""
        if len(speaker_ids) != len(files):
            raise ValueError(f"{len(speaker_ids)} speaker IDs for {len(files)} files")
        self.enrol(speaker_ids, self.embed_audio(model, files, batch_size), replace=replace)

    def search_audio(self, model, files, k=1, stages=None, shortlist=100, batch_size=16):
        """:meth:`search` with audio files as queries."""
        return self.search(self.embed_audio(model, files, batch_size), k, stages, shortlist)

    def identify(self, queries, k=1, stages=None, shortlist=100, final_dim=None, threshold=None):
        """Open-set :meth:`search`: matches scoring under the threshold are dropped.

        Arguments
        ---------
        queries, k, stages, shortlist, final_dim
            As for :meth:`search`.
        threshold : float, optional
            Cosine threshold (a finite number); default: the index's threshold
            for ``final_dim`` (:meth:`open_set_threshold`; a warning when it is a
            1:1 verification threshold, see :meth:`thresholds_caveat`).

        Returns
        -------
        list of list of tuple
            ``[Q]`` lists of ``(speaker, score)``, best first; an empty list is
            an unknown speaker. Places the first stage left empty are dropped.
        """
        final_dim = self.embed_dim if final_dim is None else int(final_dim)
        if threshold is None:
            threshold, caveat = self.open_set_threshold(final_dim), self.thresholds_caveat()
            if caveat:
                warnings.warn(caveat, UserWarning, stacklevel=2)
        threshold = check_threshold(threshold)
        ids, scores = self.search(queries, k, stages, shortlist, final_dim)
        return [[(s, float(c)) for s, c in zip(row, sc) if s is not None and c >= threshold]
                for row, sc in zip(ids, scores)]

    def open_set_threshold(self, final_dim=None):
        """The index's open-set threshold for size ``final_dim`` (default: full size).

        Raises
        ------
        ValueError
            The index has no threshold for that size.
        """
        final_dim = self.embed_dim if final_dim is None else int(final_dim)
        if final_dim not in self.thresholds:
            raise ValueError(
                f"no open-set threshold for size {final_dim} (the index has "
                f"{sorted(self.thresholds)}): calibrate one (calibrate_thresholds, "
                "set_thresholds) or pass threshold=")
        return self.thresholds[final_dim]


class SpeakerIndex(SpeakerIndexBase):
    """Enrolled speakers, searched with a Matryoshka funnel.

    Arguments
    ---------
    embed_dim : int
        Full embedding size.
    mrl_dims : list of int
        Nested sizes of the model (the sizes a funnel may use).
    model_sha256 : str, optional
        Fingerprint of the model the embeddings come from
        (:func:`speechbrain_mrl.packaging.model_fingerprint`); recorded, and
        checked by :meth:`load`.
    first_stage : str
        ``flat`` (exact inner product), ``hnsw`` (approximate graph search) or
        ``ivf`` (approximate, inverted lists over about ``4 sqrt(N)`` k-means
        cells): the approximate ones are for large enrolments.
    hnsw_m : int
        Graph degree of the HNSW first stage.
    dtype : str
        ``float32`` or ``float16`` storage of the vectors.
    ivf_nprobe : int
        Cells visited per query by the IVF first stage.
    thresholds : dict, optional
        ``{size: cosine}`` open-set thresholds (a best match scoring under the
        threshold of its size is an unknown speaker).
    hnsw_ef : int
        Candidate list size of an HNSW search (at least the shortlist is used):
        larger is slower and finds more of the true shortlist.
    thresholds_for : str
        What ``thresholds`` were calibrated for (:data:`THRESHOLD_PURPOSES`):
        ``identification`` (1:N, at a chosen false-alarm rate) or
        ``verification`` (1:1, such as the model's; :meth:`identify` then warns).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> index = SpeakerIndex(embed_dim=8, mrl_dims=[4, 8])
    >>> centres = np.repeat(rng.standard_normal((3, 8)), 2, axis=0)   # 3 speakers, 2 utterances
    >>> emb = (centres + 0.1 * rng.standard_normal((6, 8))).astype("float32")
    >>> index.enrol(["a", "a", "b", "b", "c", "c"], emb)
    >>> len(index), index.speakers
    (3, ['a', 'b', 'c'])
    >>> ids, scores = index.search(emb[:1], k=2, stages=[4], shortlist=3)
    >>> ids[0], bool(scores[0, 0] > scores[0, 1])
    (['a', 'c'], True)
    """

    def __init__(self, embed_dim, mrl_dims, model_sha256=None, first_stage="flat", hnsw_m=32,
                 dtype="float32", ivf_nprobe=128, thresholds=None, hnsw_ef=256,
                 thresholds_for="identification"):
        _check_first_stage(first_stage)
        _check_dtype(dtype)
        self._init_common(embed_dim, mrl_dims, model_sha256, thresholds, thresholds_for)
        self.first_stage, self.hnsw_m, self.dtype = first_stage, int(hnsw_m), dtype
        self.ivf_nprobe, self.hnsw_ef = int(ivf_nprobe), int(hnsw_ef)
        self.speakers, self.counts = [], []
        self._vectors = np.zeros((0, self.embed_dim), dtype=dtype)
        self._stage_indexes = {}  # (d, kind) -> FAISS index of the normalised d-prefixes
        self._mapped = set()  # keys of stage indexes memory-mapped from a file (read-only)
        self._stage_files = {}  # key -> (path, stat token) of the unchanged file it was read from
        self._origin = None  # (resolved folder, generation) this index was loaded from/saved to
        self._known = {}  # resolved folder -> generation it had when loaded from or saved to

    def __len__(self):
        return len(self.speakers)

    def _location(self):
        return str(self._origin[0]) if self._origin else None

    @property
    def generation(self):
        """The ``generation`` of the folder this index was loaded from or last saved to.

        None for an index that was neither (or one loaded from a format-1 folder).
        :meth:`save` refuses to write over a folder whose generation has changed.

        Example
        -------
        >>> SpeakerIndex(8, [4, 8]).generation is None
        True
        """
        return None if self._origin is None else self._origin[1]

    # ------------------------------------------------------------ settings
    def check_settings(self, first_stage=None, dtype=None, hnsw_m=None):
        """Raises if requested settings differ from this index's (None: any is fine).

        Use it before adding to an existing index with settings given again by
        a user (e.g. on a command line): changing them needs :meth:`rebuild`.

        Arguments
        ---------
        first_stage : str, optional
            Requested FAISS first stage (``flat``, ``hnsw`` or ``ivf``).
        dtype : str, optional
            Requested vector storage, ``float32`` or ``float16``.
        hnsw_m : int, optional
            Requested HNSW graph degree (compared only for an HNSW first stage).

        Raises
        ------
        ValueError
            Naming each differing setting, its value in the index, and how to rebuild.

        Example
        -------
        >>> index = SpeakerIndex(8, [4, 8], first_stage="flat")
        >>> index.check_settings(first_stage="flat", dtype="float32")
        >>> index.check_settings(first_stage="hnsw")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the speaker index (in memory) has first_stage='flat', not the requested ...
        """
        if first_stage is not None:
            _check_first_stage(first_stage)
        if dtype is not None:
            _check_dtype(dtype)
        wanted = {"first_stage": first_stage, "dtype": dtype,
                  "hnsw_m": None if hnsw_m is None else int(hnsw_m)}
        if (first_stage or self.first_stage) != "hnsw":
            wanted["hnsw_m"] = None
        differ = {name: value for name, value in wanted.items()
                  if value is not None and getattr(self, name) != value}
        if differ:
            where = str(self._origin[0]) if self._origin else "(in memory)"
            have = " and ".join(f"{n}={getattr(self, n)!r}" for n in differ)
            asked = " and ".join(repr(v) for v in differ.values())
            args = ", ".join(f"{n}={v!r}" for n, v in differ.items())
            raise ValueError(f"the speaker index {where} has {have}, not the requested {asked}: "
                             f"rebuild it with index.rebuild({args}) (then save), or leave the "
                             "setting out to keep the index's")

    def rebuild(self, first_stage=None, dtype=None, hnsw_m=None):
        """Changes the first stage or the storage of the vectors (None: unchanged).

        The FAISS first stages are dropped and built again on first use (or by
        :meth:`save`, which writes only the new stage files). ``float32`` to
        ``float16`` rounds the stored vectors.

        Arguments
        ---------
        first_stage : str, optional
            ``flat``, ``hnsw`` or ``ivf``.
        dtype : str, optional
            ``float32`` or ``float16``.
        hnsw_m : int, optional
            HNSW graph degree.

        Returns
        -------
        SpeakerIndex
            This index.

        Example
        -------
        >>> index = SpeakerIndex(8, [4, 8])
        >>> index.enrol(["a", "b"], np.eye(8, dtype="float32")[:2])
        >>> index.rebuild(first_stage="hnsw", dtype="float16").first_stage
        'hnsw'
        >>> index.check_settings(first_stage="hnsw", dtype="float16")
        >>> str(np.asarray(index._vectors).dtype)
        'float16'
        """
        if first_stage is not None:
            _check_first_stage(first_stage)
            self.first_stage = first_stage
        if dtype is not None:
            _check_dtype(dtype)
            self.dtype = dtype
            self._vectors = np.asarray(self._vectors).astype(dtype)
        if hnsw_m is not None:
            self.hnsw_m = int(hnsw_m)
        self._drop_stages()
        return self

    def _drop_stages(self):
        self._stage_indexes, self._mapped, self._stage_files = {}, set(), {}

    # ------------------------------------------------------------ enrolment
    def enrol(self, speaker_ids, embeddings, replace=False):
        """Adds speakers from their utterances' full-size embeddings.

        New speakers are added to the FAISS first stages already built (or
        loaded); re-enrolling a speaker (``replace``) drops them, to be built
        again on first use.

        Arguments
        ---------
        speaker_ids : list of str
            Speaker of each row of ``embeddings`` (several rows per speaker are
            averaged after L2 normalisation).
        embeddings : array-like
            ``[N, embed_dim]``.
        replace : bool
            Re-enrol speakers that are already in the index (their old
            utterances are dropped); without it, an enrolled ID is an error.
        """
        ids, x = self._checked_enrolment(speaker_ids, embeddings)
        known = set(self.speakers) & set(ids)
        if known and not replace:
            raise ValueError(f"speakers already enrolled: {sorted(known)[:5]} (replace=True to "
                             "re-enrol them)")
        if known:
            self.remove(sorted(known))
        self._put(*self._speaker_means(ids, x))

    def _put(self, speakers, counts, means):
        """Appends speakers that are not enrolled, with their counts and mean vectors."""
        means = np.asarray(means).astype(self.dtype)
        before = len(self)
        self.speakers += list(speakers)
        self.counts += [int(c) for c in counts]
        self._vectors = np.concatenate([np.asarray(self._vectors), means])
        self._add_to_stages(means, before)

    def _export(self):
        """``(speakers, counts, mean vectors float32 [N, D])`` in enrolment order."""
        return list(self.speakers), list(self.counts), np.asarray(self._vectors, np.float32)

    def _add_to_stages(self, rows, before):
        """Adds ``rows`` (stored dtype) to each built first stage that holds the ``before``
        previous speakers; drops the others (and IVF ones with far too few cells)."""
        import faiss

        for key, stage in list(self._stage_indexes.items()):
            d, kind = key
            self._stage_files.pop(key, None)
            too_few_cells = kind == "ivf" and stage.nlist < _ivf_cells(len(self)) // 2
            if stage.ntotal != before or too_few_cells:
                del self._stage_indexes[key]
                self._mapped.discard(key)
                continue
            if key in self._mapped:  # a memory-mapped index is read-only: copy it into memory
                stage = faiss.deserialize_index(faiss.serialize_index(stage))
                self._mapped.discard(key)
            stage.add(np.ascontiguousarray(_normalised(np.asarray(rows[:, :d], dtype=np.float32))))
            self._stage_indexes[key] = stage

    def remove(self, speaker_ids):
        """Removes enrolled speakers (an unknown ID is an error, and nothing is removed).

        The vectors of an index loaded from disk are read into memory by the
        first change; the FAISS first stages are built again on first use.
        """
        ids = [str(s) for s in speaker_ids]
        unknown = sorted(set(ids) - set(self.speakers))
        if unknown:
            raise KeyError(f"speakers not enrolled: {unknown[:5]}")
        gone = set(ids)
        keep = [i for i, s in enumerate(self.speakers) if s not in gone]
        self.speakers = [self.speakers[i] for i in keep]
        self.counts = [self.counts[i] for i in keep]
        self._vectors = np.asarray(self._vectors)[keep]
        self._drop_stages()

    # ------------------------------------------------------------ search
    def _default_first(self):
        """``(d, kind)`` of the first stage that :meth:`search` uses with ``stages=None``."""
        smaller = self.mrl_dims[:-1]
        if smaller:
            return (64 if 64 in smaller else smaller[0]), self.first_stage
        return self.embed_dim, "flat"

    def _stage_index(self, d, kind):
        """The FAISS index of the normalised ``d``-prefixes, ``kind`` one of FIRST_STAGES."""
        if (d, kind) not in self._stage_indexes:
            import faiss

            vectors = _normalised(np.asarray(self._vectors[:, :d], dtype=np.float32))
            vectors = np.ascontiguousarray(vectors)
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            elif kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, _ivf_cells(len(vectors)),
                                           faiss.METRIC_INNER_PRODUCT)
                index.cp.min_points_per_centroid = 1  # small enrolments: no warning, few cells
                index.train(vectors)
            else:
                index = faiss.IndexFlatIP(d)
            index.add(vectors)
            self._stage_indexes[d, kind] = index
        return self._stage_indexes[d, kind]

    def stage_bytes(self, d, kind=None):
        """In-RAM size in bytes of the FAISS index searched first on the ``d``-prefixes.

        ``kind``: one of ``FIRST_STAGES`` (default: this index's ``first_stage``).
        """
        import faiss

        index = self._stage_index(int(d), kind or self.first_stage)
        return int(faiss.serialize_index(index).nbytes)

    def search(self, queries, k=1, stages=None, shortlist=100, final_dim=None):
        """Top-``k`` speakers of each query: the funnel ``stages`` then ``final_dim``.

        Arguments
        ---------
        queries : array-like
            ``[Q, embed_dim]`` full-size query embeddings.
        k : int
            Speakers returned per query.
        stages : list of int, optional
            Prefix sizes of the funnel before the full size, increasing, each in
            ``mrl_dims``; the first runs in FAISS over every speaker, each later
            one re-ranks the shortlist. ``[]``: exact full-size search. Default:
            ``[64]``, or the smallest size when 64 is not one of the model's.
        shortlist : int or list of int
            Candidates kept after each stage.
        final_dim : int, optional
            Size of the last ranking and of the returned scores (default: the
            full size); larger than every stage.

        Returns
        -------
        ids : list of list of str or None
            ``[Q][k]`` speaker IDs, best first. An approximate first stage
            (IVF visiting few cells, HNSW) may find fewer than ``k`` candidates:
            the missing places at the end of a row are None, with score ``-inf``.
        scores : numpy.ndarray
            ``[Q, k]`` cosine scores at ``final_dim``.
        """
        q, k, stages, sizes, final_dim = self._funnel_plan(queries, k, stages, shortlist,
                                                           final_dim, len(self))
        if stages:
            first, first_kind, later = stages[0], self.first_stage, stages[1:] + [final_dim]
        else:  # exact search at the final size
            first, first_kind, later, sizes = final_dim, "flat", [], [k]
        head = np.ascontiguousarray(_normalised(q[:, :first]))
        stage = self._stage_index(first, first_kind)
        if first_kind == "hnsw":
            stage.hnsw.efSearch = self.hnsw_ef
        elif first_kind == "ivf":
            stage.nprobe = min(self.ivf_nprobe, stage.nlist)
        candidates = stage.search(head, sizes[0])[1]
        for d, size in zip(later, sizes[1:] + [k]):
            scores = self._rescore(q, candidates, d)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :size]
            candidates = np.take_along_axis(candidates, order, axis=1)
        scores = self._rescore(q, candidates, final_dim)
        # FAISS marks "no result" with -1: never let it index the last speaker
        return [[self.speakers[i] if i >= 0 else None for i in row] for row in candidates], scores

    def _rescore(self, q, candidates, d):
        """Cosine at size ``d`` of each query with its candidates (``-1`` marks none)."""
        qn = _normalised(q[:, :d])
        valid = candidates >= 0
        vec = np.asarray(self._vectors[np.where(valid, candidates, 0)][..., :d], dtype=np.float32)
        vec = vec / np.maximum(np.linalg.norm(vec, axis=2, keepdims=True), 1e-12)
        return np.where(valid, np.einsum("qd,qcd->qc", qn, vec), -np.inf)

    # ------------------------------------------------------------ storage
    @classmethod
    def writing(cls, folder, timeout=60.0):
        """Context manager: this process alone writes the index ``folder`` until it ends.

        An exclusive ``fcntl.flock`` on ``.<name>.lock`` beside the folder (its
        real path, symlinks resolved: a save replaces the folder itself). Hold
        it around *load, change, save* so that no other writer's update is
        lost; :meth:`save` inside it does not lock again (the lock is held per
        process and folder; threads of one process take turns). The lock ends
        with its process; the lock file stays. Not for network file systems
        whose ``flock`` is not shared between machines.

        Arguments
        ---------
        folder : str or os.PathLike
            The index folder (it may not exist yet).
        timeout : float, optional
            Seconds to wait for another writer; None: wait as long as it takes.

        Yields
        ------
        pathlib.Path
            The folder's resolved path.

        Raises
        ------
        IndexLockedError
            After ``timeout`` seconds, naming the folder and the lock file.

        Example
        -------
        >>> import tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with SpeakerIndex.writing(root / "idx", timeout=10):
        ...     index = SpeakerIndex(8, [4, 8])
        ...     index.enrol(["a"], np.ones((1, 8)))
        ...     _ = index.save(root / "idx")
        >>> sorted(p.name for p in root.iterdir())
        ['.idx.lock', 'idx']
        >>> shutil.rmtree(root)
        """
        return _write_lock(folder, timeout)

    def _ensure_default_stage(self):
        if len(self):
            self._stage_index(*self._default_first())

    def _check_target(self, target, overwrite):
        """Refuses a save that would lose another writer's update (nothing written yet)."""
        _check_folder(target)
        present = target if target.exists() else _aside(target)
        exists = present.is_dir() and any(present.iterdir())
        if exists and overwrite and not (present / "index.json").exists():
            raise ValueError(f"{target} exists and is not a speaker index (no index.json): "
                             "it is not replaced, even with overwrite=True")
        if overwrite:
            return
        if str(target) not in self._known:
            if exists:
                raise IndexExistsError(
                    f"{target} already holds a speaker index that this one was not loaded "
                    "from: load it and add to it (SpeakerIndex.load), or pass overwrite=True "
                    "to replace it")
            return
        if not exists:
            raise IndexChangedError(f"{target} was removed after this index read or wrote it: "
                                    "save with overwrite=True to write it again")
        try:
            meta = json.loads((present / "index.json").read_text())
            on_disk = meta.get("generation") if isinstance(meta, dict) else "unreadable"
        except (OSError, ValueError):
            on_disk = "unreadable"
        seen = self._known[str(target)]
        if on_disk != seen:
            raise IndexChangedError(
                f"{target} was saved by another writer after this index read or wrote it "
                f"(generation {seen!r}, now {on_disk!r}): nothing was written. Load "
                "it again and repeat the change, inside SpeakerIndex.writing(folder) to keep "
                "other writers out (or overwrite=True to drop their update)")

    def save(self, folder, overwrite=False, lock_timeout=60.0):
        """Writes the index folder, replacing an existing one only once the new one is complete.

        The FAISS first stages built so far are written too (the default one,
        used by :meth:`search` with ``stages=None``, is built first if needed),
        so that :meth:`load` does not build them again. The folder's real path
        is written (a symlink to it stays a link). The save holds the folder's
        write lock (:meth:`writing`), unless this process holds it already.

        Arguments
        ---------
        folder : str or os.PathLike
            Index folder.
        overwrite : bool
            Replace the folder whatever it holds: an index this one was not
            loaded from, or one saved by another writer since this one was
            loaded (their update is lost).
        lock_timeout : float, optional
            Seconds to wait for another writer's lock (None: no limit).

        Returns
        -------
        pathlib.Path
            ``folder``.

        Raises
        ------
        IndexExistsError
            ``folder`` holds an index this one was not loaded from (and not
            ``overwrite``).
        IndexChangedError
            Another writer saved ``folder`` after this index was loaded from it
            (and not ``overwrite``): load it again and repeat the change.
        IndexLockedError
            Another writer held the lock for ``lock_timeout`` seconds.
        """
        import faiss

        given = pathlib.Path(folder)
        target = _resolved(given)
        _check_folder(target)  # before the lock file is made beside it
        self._ensure_default_stage()  # before the lock: a large HNSW takes minutes to build
        with self.writing(target, timeout=lock_timeout):
            self._check_target(target, overwrite)
            remove_stale_staging(target)
            generation = uuid.uuid4().hex
            staging = staging_folder(target)
            try:
                np.save(staging / "vectors.npy", np.asarray(self._vectors))
                (staging / "speakers.json").write_text(json.dumps(
                    {"speakers": self.speakers, "counts": self.counts}))
                stages = []
                for (d, kind), stage in sorted(self._stage_indexes.items()):
                    if stage.ntotal != len(self):
                        continue
                    name = f"stage_{d}_{kind}.faiss"
                    if not self._link_stage_file((d, kind), staging / name):
                        faiss.write_index(stage, str(staging / name))
                    stages.append({"file": name, "d": d, "kind": kind, "ntotal": int(stage.ntotal)})
                (staging / "index.json").write_text(json.dumps({
                    "format_version": FORMAT_VERSION, "generation": generation,
                    "embed_dim": self.embed_dim, "mrl_dims": self.mrl_dims,
                    "model_sha256": self.model_sha256, "first_stage": self.first_stage,
                    "hnsw_m": self.hnsw_m, "dtype": self.dtype, "ivf_nprobe": self.ivf_nprobe,
                    "hnsw_ef": self.hnsw_ef, "speakers": len(self), "stages": stages,
                    "thresholds": {str(d): t for d, t in self.thresholds.items()},
                    "thresholds_for": self.thresholds_for}, indent=1))
                swap_folder(staging, target, _aside(target))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._origin = (target, generation)
            self._known[str(target)] = generation
            self._stage_files = {(s["d"], s["kind"]): (target / s["file"],
                                                       _stat_token(target / s["file"]))
                                 for s in stages}
        return given

    def _link_stage_file(self, key, dest):
        """Hard-links the unchanged file a stage was read from (no rewrite); False if it cannot."""
        path, token = self._stage_files.get(key, (None, None))
        if path is None or token is None or _stat_token(path) != token:
            return False
        try:
            os.link(path, dest)
        except OSError:
            return False
        return True

    @classmethod
    def load(cls, folder, model_sha256=None, mmap=True):
        """Reads an index folder; refuses one built with another model.

        The vectors are memory-mapped, and so are the saved FAISS first stages
        (``mmap``); a stage file that is missing, unreadable, or does not match
        the vectors is left out with a warning and built again on first use.
        Every other file is checked, and a bad one is named. A save by another
        writer while this reads is noticed, and the folder read again.

        Arguments
        ---------
        folder : str or os.PathLike
            Written by :meth:`save`.
        model_sha256 : str, optional
            Fingerprint of the model that will embed the queries: must be the
            index's.
        mmap : bool
            Memory-map the FAISS stage files (False: read them into memory).

        Returns
        -------
        SpeakerIndex

        Raises
        ------
        ValueError
            A missing or bad file (named), or an index of another model.
        """
        target = _resolved(folder)
        _check_folder(target)

        def where():  # the previous index waits beside the folder while a save swaps them
            return target if target.exists() or not _aside(target).is_dir() else _aside(target)

        failure = None
        for _ in range(10):
            source = where()
            before = _stat_token(source / "index.json")
            try:
                index = cls._read(source, model_sha256, mmap)
            except (OSError, ValueError) as err:
                if where() == source and _stat_token(source / "index.json") == before:
                    raise
                failure = err  # a writer replaced the folder while this read it
            else:
                if where() == source and _stat_token(source / "index.json") == before:
                    index._origin = (target, index._origin[1])
                    index._known = {str(target): index._origin[1]}
                    return index
                failure = None
            time.sleep(0.01)
        if failure is not None:
            raise failure
        raise ValueError(f"{folder} kept changing while it was read (10 tries): another process "
                         "saves it without pause?")

    @classmethod
    def _read(cls, folder, model_sha256, mmap):
        """One reading of ``folder`` (see :meth:`load`)."""
        meta = _read_json(folder / "index.json")
        where = folder / "index.json"
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: not a JSON object but {type(meta).__name__}")
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{where}: unknown index format {meta.get('format_version')!r}")
        for key in ("embed_dim", "mrl_dims", "dtype", "first_stage"):
            if key not in meta:
                raise ValueError(f"{where} has no {key!r}: not a complete speaker index")
        if not is_int(meta["embed_dim"]) or not isinstance(meta["mrl_dims"], list) or not all(
                is_int(d) for d in meta["mrl_dims"]):
            raise ValueError(f"{where}: embed_dim {meta['embed_dim']!r} and mrl_dims "
                             f"{meta['mrl_dims']!r} must be an integer and a list of integers")
        generation = meta.get("generation")
        if generation is not None and not isinstance(generation, str):
            raise ValueError(f"{where}: generation must be a string, got {generation!r}")
        cls._refuse_other_model(folder, meta.get("model_sha256"), model_sha256)
        try:
            index = cls(meta["embed_dim"], meta["mrl_dims"], meta.get("model_sha256"),
                        meta["first_stage"], meta.get("hnsw_m", 32), meta["dtype"],
                        meta.get("ivf_nprobe", 128), meta.get("thresholds"),
                        meta.get("hnsw_ef", 256), meta.get("thresholds_for", "verification"))
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where}: {err}") from err
        index._origin = (folder, generation)

        where = folder / "speakers.json"
        names = _read_json(where)
        if not isinstance(names, dict) or not isinstance(names.get("speakers"), list) or \
                not isinstance(names.get("counts"), list):
            raise ValueError(f"{where}: must be a JSON object with the lists 'speakers' and "
                             "'counts'")
        speakers, counts = names["speakers"], names["counts"]
        if not set(map(type, speakers)) <= {str}:
            odd = [s for s in speakers if not isinstance(s, str)]
            raise ValueError(f"{where}: speaker IDs must be strings, got {odd[:3]!r}")
        if len(set(speakers)) != len(speakers):
            twice = sorted(s for s, n in collections.Counter(speakers).items() if n > 1)
            raise ValueError(f"{where}: speaker IDs listed more than once: {twice[:5]}")
        if len(counts) != len(speakers) or not set(map(type, counts)) <= {int} or (
                counts and min(counts) < 1):
            raise ValueError(f"{where}: 'counts' must hold one positive integer per speaker "
                             f"({len(speakers)}), got {len(counts)} entries")

        where = folder / "vectors.npy"
        try:
            vectors = np.load(where, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: not a readable array: {err}") from err
        if vectors.dtype != np.dtype(index.dtype):
            raise ValueError(f"{where} holds {vectors.dtype} vectors, index.json says "
                             f"{index.dtype!r}")
        if vectors.shape != (len(speakers), index.embed_dim):
            raise ValueError(f"{where} has shape {vectors.shape} for {len(speakers)} speakers "
                             f"of size {index.embed_dim}")
        for start in range(0, len(vectors), 1 << 16):
            bad = ~np.isfinite(vectors[start:start + (1 << 16)]).all(axis=1)
            if bad.any():
                rows = (start + np.flatnonzero(bad)[:5]).tolist()
                raise ValueError(f"{where}: rows {rows} (speakers "
                                 f"{[speakers[r] for r in rows]}) hold NaN/Inf")
        index.speakers, index.counts = list(speakers), list(counts)
        index._vectors = vectors
        index._read_stages(folder, meta.get("stages", []), mmap)
        return index

    def _read_stages(self, folder, entries, mmap):
        """Reads the saved first stages that match the vectors; warns about the others."""
        import faiss

        if not isinstance(entries, list):
            warnings.warn(f"{folder / 'index.json'}: 'stages' is not a list; the first stages "
                          "will be built again", RuntimeWarning, stacklevel=4)
            return
        for entry in entries:
            problem, path = self._stage_problem(folder, entry), None
            if problem is None:
                path = folder / entry["file"]
                token = _stat_token(path)
                try:
                    stage = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
                except Exception as err:  # FAISS raises RuntimeError on a bad file
                    problem = f"not a readable FAISS index ({str(err).splitlines()[0][:200]})"
                else:
                    problem = self._stage_mismatch(stage, entry["d"], entry["kind"])
            if problem is not None:
                name = entry.get("file", "?") if isinstance(entry, dict) else "?"
                shown = path or folder / str(name)
                warnings.warn(f"{shown}: {problem}; this first stage will be built again on "
                              "first use (and saved by the next save)", RuntimeWarning,
                              stacklevel=4)
                continue
            key = (entry["d"], entry["kind"])
            self._stage_indexes[key] = stage
            if mmap:
                self._mapped.add(key)
            if token is not None and _stat_token(path) == token:
                self._stage_files[key] = (path, token)

    def _stage_problem(self, folder, entry):
        """Why an index.json stage entry cannot be used (None: it may be read)."""
        if not isinstance(entry, dict):
            return f"stage entry {entry!r} is not a JSON object"
        d, kind, ntotal = entry.get("d"), entry.get("kind"), entry.get("ntotal")
        if not is_int(d) or d not in self.mrl_dims or kind not in FIRST_STAGES:
            return f"stage entry {entry!r}: size or kind unknown to this index"
        if entry.get("file") != f"stage_{d}_{kind}.faiss":
            return f"stage entry {entry!r}: unexpected file name"
        if ntotal != len(self):
            return f"holds {ntotal!r} vectors, the index {len(self)} speakers"
        if not (folder / entry["file"]).is_file():
            return "missing"
        return None

    def _stage_mismatch(self, stage, d, kind):
        """Why a FAISS index read from a file does not serve as the stage (None: it does)."""
        import faiss

        if type(stage).__name__ != _FAISS_CLASSES[kind]:
            return f"a {type(stage).__name__}, not the {_FAISS_CLASSES[kind]} of kind {kind!r}"
        if stage.d != d or stage.metric_type != faiss.METRIC_INNER_PRODUCT:
            return f"size {stage.d} and metric {stage.metric_type}, not {d} and inner product"
        if stage.ntotal != len(self):
            return f"holds {stage.ntotal} vectors, the index {len(self)} speakers"
        if not len(self):
            return None
        rows = sorted({0, len(self) // 2, len(self) - 1})
        want = _normalised(np.asarray(self._vectors[rows, :d], dtype=np.float32))
        if kind == "ivf":  # no direct map: each vector is in the cell searched first
            stage.nprobe = 1
            found = stage.search(np.ascontiguousarray(want), 1)[0][:, 0]
            if not np.all(found > 1 - 1e-4):
                return "does not hold the index's vectors (spot check)"
        elif not np.allclose(stage.reconstruct_batch(np.array(rows, dtype=np.int64)), want,
                             atol=1e-5):
            return "does not hold the index's vectors (spot check)"
        return None


def _check_folder(folder):
    """Refuses an index path that is a file (or anything else but a folder), naming it."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a speaker index folder: give a folder path "
                         "(the file is left as it is)")


def _check_first_stage(first_stage):
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")


def _check_dtype(dtype):
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")


def _read_json(path):
    """The JSON value of a file of an index folder; a ValueError naming it if unreadable."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path} is missing: {path.parent} is not a (complete) speaker index") \
            from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON: {err}") from err


def _prefix_cosine(a, b, d):
    return np.einsum("nd,nd->n", _normalised(a[:, :d]), _normalised(b[:, :d]))


def _score_at_rate(scores, rate):
    """The score that at most ``rate`` of ``scores`` lie above (the ``floor(rate * n) + 1``-th
    largest), or None when the rate allows every score."""
    ranked = np.sort(np.asarray(scores))[::-1]
    allowed = int(np.floor(rate * len(ranked) + 1e-9))
    return float(ranked[allowed]) if allowed < len(ranked) else None


def _check_rate(value, name, allow_one=False):
    """A rate in ``(0, 1)`` (``allow_one``: ``(0, 1]``) as a float; anything else is refused."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not (0.0 < rate < 1.0 or (allow_one and rate == 1.0)):
        raise ValueError(f"{name} must be in (0, {'1]' if allow_one else '1)'}, got {value!r}")
    return rate


def _trial_sides(enrol, test):
    """The two sides of a trial list as float32 ``[T, D]`` arrays; refuses NaN/Inf rows."""
    enrol, test = np.asarray(enrol, np.float32), np.asarray(test, np.float32)
    if enrol.shape != test.shape or enrol.ndim != 2:
        raise ValueError(f"enrol and test must be [T, D] alike, got {enrol.shape} and {test.shape}")
    for side, x in (("enrol", enrol), ("test", test)):
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"{side} embeddings: trials {np.flatnonzero(bad)[:5].tolist()} hold "
                             "NaN/Inf")
    return enrol, test


def _check_size(d, embed_dim, name):
    """``d`` as an int in ``[1, embed_dim]``; anything else is refused."""
    if not (is_int(d) or isinstance(d, np.integer)) or not 1 <= d <= embed_dim:
        raise ValueError(f"{name} must be an integer in [1, {embed_dim}] (the embedding size), "
                         f"got {d!r}")
    return int(d)


def calibrate_thresholds(enrol, test, labels, dims, false_alarm=None):
    """Cosine threshold per prefix size from a verification trial list.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    labels : array-like of bool
        ``[T]``, True for same-speaker trials.
    dims : list of int
        Prefix sizes to calibrate, each in ``[1, D]``.
    false_alarm : float, optional
        None: the equal-error-rate threshold. Otherwise the lowest threshold
        at which at most this fraction of the different-speaker trials score
        above it (for 1:N search against N speakers, a query meets about N
        different-speaker comparisons: aim accordingly lower).

    Returns
    -------
    dict
        ``{size: threshold}`` (score > threshold: accepted).

    Raises
    ------
    ValueError
        Mismatched shapes, NaN/Inf embeddings (naming the trials), a size
        outside ``[1, D]``, or trials of one label only.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((400, 8))
    >>> same = np.arange(400) < 200
    >>> b = np.where(same[:, None], a + 0.5 * rng.standard_normal((400, 8)),
    ...              rng.standard_normal((400, 8)))
    >>> thr = calibrate_thresholds(a, b, same, [4, 8], false_alarm=0.05)
    >>> scores = _prefix_cosine(a, b, 8)
    >>> bool(np.mean(scores[~same] > thr[8]) <= 0.05)
    True
    """
    import torch

    from speechbrain_mrl.metrics import error_rates

    if false_alarm is not None:
        false_alarm = _check_rate(false_alarm, "false_alarm")
    enrol, test = _trial_sides(enrol, test)
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != (len(enrol),):
        raise ValueError(f"labels must be [T] = [{len(enrol)}] (one per trial), got "
                         f"{list(labels.shape)}")
    dims = [_check_size(d, enrol.shape[1], "each size of dims") for d in dims]
    if labels.all() or not labels.any():
        raise ValueError("calibration needs same-speaker and different-speaker trials")
    out = {}
    for d in dims:
        scores = _prefix_cosine(enrol, test, d)
        if false_alarm is None:
            out[d] = error_rates(torch.from_numpy(scores[labels]),
                                 torch.from_numpy(scores[~labels]))["EER_threshold"]
        else:
            highest = _score_at_rate(scores[~labels], false_alarm)
            out[d] = -1.0 if highest is None else highest
    return out


def cascade_verify(enrol, test, small_dim, small_threshold, full_threshold, margin):
    """1:1 decisions from a small prefix, escalated to the full size near its threshold.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    small_dim : int
        Prefix size of the first decision, in ``[1, D]``.
    small_threshold, full_threshold : float
        Cosine thresholds at ``small_dim`` and at full size.
    margin : float
        Trials whose small-prefix score is within ``margin`` of ``small_threshold``
        are decided at full size.

    Returns
    -------
    decisions : numpy.ndarray
        ``[T]`` bool, True: same speaker.
    escalated : numpy.ndarray
        ``[T]`` bool, the trials decided at full size.

    Example
    -------
    >>> a = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> b = np.array([[1.0, 0.1, 0.0], [0.1, 1.0, 0.0]])
    >>> cascade_verify(a, b, 2, 0.5, 0.5, margin=0.1)
    (array([ True, False]), array([False, False]))
    """
    enrol, test = _trial_sides(enrol, test)
    small = _prefix_cosine(enrol, test, _check_size(small_dim, enrol.shape[1], "small_dim"))
    escalated = np.abs(small - small_threshold) < margin
    decisions = small > small_threshold
    if escalated.any():
        full = _prefix_cosine(enrol[escalated], test[escalated], enrol.shape[1])
        decisions[escalated] = full > full_threshold
    return decisions, escalated


def calibrate_margin(enrol, test, small_dim, small_threshold, full_threshold, agreement=0.999):
    """The smallest :func:`cascade_verify` margin whose decisions equal full-size ones on
    at least ``agreement`` of the calibration trials.

    Returns
    -------
    margin : float
    escalated_fraction : float
        Fraction of the calibration trials decided at full size with it.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((500, 16)), rng.standard_normal((500, 16))
    >>> margin, escalated = calibrate_margin(a, b, 4, 0.0, 0.0, agreement=1.0)
    >>> bool((cascade_verify(a, b, 4, 0.0, 0.0, margin)[0]
    ...       == (_prefix_cosine(a, b, 16) > 0.0)).all())
    True
    """
    agreement = _check_rate(agreement, "agreement", allow_one=True)
    enrol, test = _trial_sides(enrol, test)
    small = _prefix_cosine(enrol, test, _check_size(small_dim, enrol.shape[1], "small_dim"))
    full = _prefix_cosine(enrol, test, enrol.shape[1]) > full_threshold
    distance = np.abs(small - small_threshold)
    wrong = np.sort(distance[(small > small_threshold) != full])[::-1]
    allowed = int(np.floor((1.0 - agreement) * len(small) + 1e-9))
    margin = float(np.nextafter(wrong[allowed], np.inf)) if len(wrong) > allowed else 0.0
    return margin, float(np.mean(distance < margin))



def open_set_rates(top_ids, top_scores, truth, enrolled, far=0.01):
    """Open-set identification: detection-and-identification rate at a false-alarm rate.

    The threshold is set on the queries of speakers who are not enrolled: at most
    ``far`` of them may score at or above it with their best match. A query of an
    enrolled speaker counts as found when its best match is right and scores at or
    above the threshold.

    Arguments
    ---------
    top_ids : list of str
        Best-matching speaker per query.
    top_scores : array-like
        Its score per query.
    truth : list of str
        True speaker per query.
    enrolled : array-like of bool
        Whether each query's speaker is enrolled.
    far : float
        Target false-alarm rate.

    Returns
    -------
    dict
        ``threshold``, ``far`` (measured), ``dir`` (detection and identification rate).

    Example
    -------
    >>> r = open_set_rates(["a", "b", "a", "b"], [0.9, 0.8, 0.3, 0.6], ["a", "c", "x", "y"],
    ...                    [True, True, False, False], far=0.5)
    >>> r["dir"], r["far"]
    (0.5, 0.5)
    """
    far = _check_rate(far, "far")
    scores = np.asarray(top_scores, dtype=np.float64)
    enrolled = np.asarray(enrolled, dtype=bool)
    if enrolled.all() or not enrolled.any():
        raise ValueError("open-set rates need queries of enrolled and of unknown speakers")
    highest = _score_at_rate(scores[~enrolled], far)
    threshold = -np.inf if highest is None else float(np.nextafter(highest, np.inf))
    right = np.array([i == t for i, t in zip(top_ids, truth)])
    found = right & (scores >= threshold) & enrolled
    return {"threshold": threshold, "far": float(np.mean(scores[~enrolled] >= threshold)),
            "dir": float(found.sum() / enrolled.sum())}
