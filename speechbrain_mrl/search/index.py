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
:class:`speechbrain_mrl.search.qdrant.QdrantSpeakerIndex`; both derive from
:class:`SpeakerIndexBase`, and :func:`speechbrain_mrl.search.locations.open_index` opens either.

The index folder (its files, the atomic save, the write lock) is
:mod:`speechbrain_mrl.search.folder`; the threshold and cascade calibration is
:mod:`speechbrain_mrl.search.thresholds`. Every name of both is importable from here too.

Authors
-------
 * speechbrain-mrl developers
"""
import warnings

import numpy as np

from speechbrain_mrl.search.cosine import _normalised, _prefix_cosine  # noqa: F401 (re-exported)
from speechbrain_mrl.search.folder import (  # noqa: F401 (re-exported)
    _FAISS_CLASSES, _HELD, _JITTER, _THREAD_LOCKS, FIRST_STAGES, FORMAT_VERSION,
    READABLE_VERSIONS, IndexChangedError, IndexExistsError, IndexFolder, IndexLockedError, _aside,
    _check_folder, _forget_locks_in_child, _lock_file, _locked_error, _read_json, _resolved,
    _stat_token, _write_lock)
from speechbrain_mrl.model.sizes import check_threshold, check_thresholds, validate_mrl_dims
from speechbrain_mrl.search.thresholds import (  # noqa: F401 (re-exported)
    _check_rate, _check_size, _score_at_rate, _trial_sides, calibrate_margin,
    calibrate_thresholds, cascade_verify, open_set_rates)
from speechbrain_mrl.utils.errors import hinted

__all__ = ["SpeakerIndex", "SpeakerIndexBase", "IndexLockedError", "IndexChangedError",
           "IndexExistsError", "calibrate_thresholds", "cascade_verify", "calibrate_margin",
           "open_set_rates"]

#: What open-set thresholds were calibrated for: 1:N identification (a false-alarm rate
#: chosen for it), or 1:1 verification (an equal-error-rate threshold such as the model's).
THRESHOLD_PURPOSES = ("identification", "verification")


def _ivf_cells(n):
    """Number of IVF cells for ``n`` speakers: about ``4 sqrt(n)``, at least 39 points each."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


class SpeakerIndexBase:
    """What every speaker index shares, whatever stores its vectors.

    The sizes and the model fingerprint, the open-set thresholds, the checks of
    embeddings and of funnel settings, speaker means, open-set identification
    and the audio helpers. :class:`SpeakerIndex` (FAISS, a folder) and
    :class:`speechbrain_mrl.search.qdrant.QdrantSpeakerIndex` (a Qdrant collection)
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
        if wanted is not None and recorded is None:
            raise ValueError(f"{where} records no model fingerprint (it was built without a "
                             "model folder), so queries of this model cannot be checked against "
                             "it: enrol again through the model")
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

    def check_search(self, k=1, stages=None, shortlist=100, final_dim=None):
        """Raises what :meth:`search` would raise for these settings, before any query exists
        (an empty index, ``k``, ``stages``, ``final_dim``): the commands check them before
        embedding the audio."""
        self._funnel_plan(np.ones((1, self.embed_dim), np.float32), k, stages, shortlist,
                          final_dim, len(self))

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
    def for_model(cls, model, model_folder=None, model_sha256=None, **kwargs):
        """An empty index for the sizes of an ``MRLEncoderClassifier``.

        ``model_folder`` (the folder the model was loaded from) records its
        fingerprint, which opening the index then checks (``model_sha256``: that
        fingerprint, when the caller has it already); the model's calibrated
        (1:1 verification) thresholds become the open-set thresholds, unless
        ``thresholds`` is given; ``kwargs`` go to the constructor
        (``first_stage``, ``dtype``, ``location``, ...).
        """
        from speechbrain_mrl.model.folder import model_fingerprint

        sha = model_sha256
        if sha is None and model_folder is not None:
            sha = model_fingerprint(model_folder)
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
        from speechbrain_mrl.data.manifests import check_audio_files
        from speechbrain_mrl.inference.embeddings import embed_manifest
        from speechbrain_mrl.data.sources import read_sources

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
            problem = (f"no open-set threshold for size {final_dim} (the index has "
                       f"{sorted(self.thresholds)})")
            raise hinted(ValueError(f"{problem}: calibrate one (calibrate_thresholds, "
                                    "set_thresholds) or pass threshold="),
                         f"{problem}: run 'speechbrain-mrl calibrate' on the index, or give "
                         "--threshold a number")
        return self.thresholds[final_dim]


class SpeakerIndex(IndexFolder, SpeakerIndexBase):
    """Enrolled speakers, searched with a Matryoshka funnel.

    Arguments
    ---------
    embed_dim : int
        Full embedding size.
    mrl_dims : list of int
        Nested sizes of the model (the sizes a funnel may use).
    model_sha256 : str, optional
        Fingerprint of the model the embeddings come from
        (:func:`speechbrain_mrl.model.folder.model_fingerprint`); recorded, and
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
            problem = f"the speaker index {where} has {have}, not the requested {asked}"
            flags = " ".join(f"--{n} {v}" for n, v in differ.items())
            raise hinted(ValueError(f"{problem}: rebuild it with index.rebuild({args}) (then save), "
                                    "or leave the setting out to keep the index's"),
                         f"{problem}: add --rebuild to rebuild it with {flags}, or leave the "
                         "option out to keep the index's")

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
        self.add_speaker_means(*self._speaker_means(ids, x))

    def add_speaker_means(self, speakers, counts, means):
        """Appends speakers that are not enrolled, with their counts and mean vectors."""
        means = np.asarray(means).astype(self.dtype)
        before = len(self)
        self.speakers += list(speakers)
        self.counts += [int(c) for c in counts]
        self._vectors = np.concatenate([np.asarray(self._vectors), means])
        self._add_to_stages(means, before)

    def speaker_means(self):
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

    def _ensure_default_stage(self):
        if len(self):
            self._stage_index(*self._default_first())


def _check_first_stage(first_stage):
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")


def _check_dtype(dtype):
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
