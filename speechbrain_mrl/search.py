"""Speaker search over Matryoshka embeddings: a small prefix first, the full embedding last.

:class:`SpeakerIndex` holds one vector per enrolled speaker: the mean of the
L2-normalised full-size embeddings of its utterances. The score of a query
against a speaker at size ``d`` is the cosine of their first ``d``
coordinates. A search runs a funnel: FAISS finds a shortlist on the smallest
prefix (exact inner product, or HNSW or IVF for large enrolments), and each
later stage re-ranks the shortlist with a larger prefix, the last with the
full embedding (or ``final_dim``). Open-set identification rejects a best match
that scores under the index's threshold for the size that gave the score
(copied from the model's calibration, or fitted on a trial list with
:func:`calibrate_thresholds`). The extraction cost does not depend on the
prefix size (one pass gives every size); the funnel saves search time and
first-stage memory.

An index is stored as a folder: ``vectors.npy`` (float32 or float16, read
memory-mapped), ``speakers.json`` (IDs and utterance counts) and
``index.json`` (sizes, the model fingerprint, the first-stage settings, the
thresholds),
written into a hidden folder that replaces the old one only once complete.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import pathlib
import shutil
import tempfile

import numpy as np

from speechbrain_mrl.dataio import swap_folder

__all__ = ["SpeakerIndex", "calibrate_thresholds", "cascade_verify", "calibrate_margin",
           "open_set_rates"]

FIRST_STAGES = ("flat", "hnsw", "ivf")

FORMAT_VERSION = 1


def _normalised(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SpeakerIndex:
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
    hnsw_ef : int
        Candidate list size of an HNSW search (at least the shortlist is used):
        larger is slower and finds more of the true shortlist.
    dtype : str
        ``float32`` or ``float16`` storage of the vectors.
    ivf_nprobe : int
        Cells visited per query by the IVF first stage.
    thresholds : dict, optional
        ``{size: cosine}`` open-set thresholds (a best match scoring under the
        threshold of its size is an unknown speaker).

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
                 dtype="float32", ivf_nprobe=128, thresholds=None, hnsw_ef=256):
        mrl_dims = [int(d) for d in mrl_dims]
        if not mrl_dims or mrl_dims != sorted(set(mrl_dims)) or mrl_dims[-1] != int(embed_dim):
            raise ValueError(f"mrl_dims must be increasing and end with embed_dim={embed_dim}, "
                             f"got {mrl_dims}")
        if first_stage not in FIRST_STAGES:
            raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.embed_dim, self.mrl_dims = int(embed_dim), mrl_dims
        self.model_sha256, self.first_stage, self.hnsw_m, self.dtype = (
            model_sha256, first_stage, int(hnsw_m), dtype)
        self.ivf_nprobe, self.hnsw_ef = int(ivf_nprobe), int(hnsw_ef)
        self.thresholds = {}
        self.set_thresholds(thresholds or {})
        self.speakers, self.counts = [], []
        self._vectors = np.zeros((0, self.embed_dim), dtype=dtype)
        self._stage_indexes = {}

    def __len__(self):
        return len(self.speakers)

    def set_thresholds(self, thresholds):
        """Sets the open-set thresholds ``{size: cosine}`` (sizes of ``mrl_dims``)."""
        checked = {}
        for d, t in thresholds.items():
            if int(d) not in self.mrl_dims:
                raise ValueError(f"threshold for size {d}: the index's sizes are {self.mrl_dims}")
            if not np.isfinite(float(t)):
                raise ValueError(f"threshold for size {d} is not a finite number: {t!r}")
            checked[int(d)] = float(t)
        self.thresholds = checked

    # ------------------------------------------------------------ enrolment
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

    def enrol(self, speaker_ids, embeddings, replace=False):
        """Adds speakers from their utterances' full-size embeddings.

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
        x = self._check_embeddings(embeddings)
        ids = [str(s) for s in speaker_ids]
        if len(ids) != x.shape[0]:
            raise ValueError(f"{len(ids)} speaker IDs for {x.shape[0]} embeddings")
        known = set(self.speakers) & set(ids)
        if known and not replace:
            raise ValueError(f"speakers already enrolled: {sorted(known)[:5]} (replace=True to "
                             "re-enrol them)")
        if known:
            self.remove(sorted(known))
        new = list(dict.fromkeys(ids))
        rows = {s: i for i, s in enumerate(new)}
        sums = np.zeros((len(new), self.embed_dim))
        counts = np.zeros(len(new), dtype=np.int64)
        np.add.at(sums, [rows[s] for s in ids], _normalised(x.astype(np.float64)))
        np.add.at(counts, [rows[s] for s in ids], 1)
        means = (sums / counts[:, None]).astype(self.dtype)
        self.speakers += new
        self.counts += counts.tolist()
        self._vectors = np.concatenate([np.asarray(self._vectors), means])
        self._stage_indexes = {}

    @classmethod
    def for_model(cls, model, model_folder=None, **kwargs):
        """An empty index for the sizes of an ``MRLEncoderClassifier``.

        ``model_folder`` (the folder the model was loaded from) records its
        fingerprint, which :meth:`load` then checks; the model's calibrated
        thresholds become the open-set thresholds; ``kwargs`` go to the
        constructor (``first_stage``, ``dtype``, ...).
        """
        from speechbrain_mrl.packaging import model_fingerprint

        sha = model_fingerprint(model_folder) if model_folder is not None else None
        kwargs.setdefault("thresholds", getattr(model, "thresholds", None))
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
        from speechbrain_mrl.dataio import audio_info, check_audio_files
        from speechbrain_mrl.embeddings import embed_manifest

        if int(model.embed_dim) != self.embed_dim or list(model.mrl_dims) != self.mrl_dims:
            raise ValueError(f"the model gives sizes {list(model.mrl_dims)}, the index holds "
                             f"{self.mrl_dims}: use the model the index was built with")
        rows = {str(i): {"wav": str(path)} for i, path in enumerate(files)}
        if not rows:
            raise ValueError("no audio files given")
        check_audio_files(rows, "files")
        for row in rows.values():
            frames, sr = audio_info(row["wav"])
            row["duration"] = frames / sr
        ids, emb = embed_manifest(model.encoder, rows, batch_size=batch_size,
                                  sample_rate=model.sample_rate, min_duration=model.min_duration,
                                  device=model.device)
        order = np.argsort([int(i) for i in ids])
        return emb.numpy()[order]

    def enrol_audio(self, model, speaker_ids, files, replace=False, batch_size=16):
        """:meth:`enrol` from audio files: one speaker ID per file (several files per speaker)."""
        if len(speaker_ids) != len(files):
            raise ValueError(f"{len(speaker_ids)} speaker IDs for {len(files)} files")
        self.enrol(speaker_ids, self.embed_audio(model, files, batch_size), replace=replace)

    def search_audio(self, model, files, k=1, stages=None, shortlist=100, batch_size=16):
        """:meth:`search` with audio files as queries."""
        return self.search(self.embed_audio(model, files, batch_size), k, stages, shortlist)

    def remove(self, speaker_ids):
        """Removes enrolled speakers (an unknown ID is an error, and nothing is removed).

        The vectors of an index loaded from disk are read into memory by the first change.
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
        self._stage_indexes = {}

    # ------------------------------------------------------------ search
    def _stage_index(self, d, kind):
        """The FAISS index of the normalised ``d``-prefixes, ``kind`` one of FIRST_STAGES."""
        if (d, kind) not in self._stage_indexes:
            import faiss

            vectors = _normalised(np.asarray(self._vectors[:, :d], dtype=np.float32))
            vectors = np.ascontiguousarray(vectors)
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            elif kind == "ivf":
                cells = max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
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
        ids : list of list of str
            ``[Q][k]`` speaker IDs, best first.
        scores : numpy.ndarray
            ``[Q, k]`` cosine scores at ``final_dim``.
        """
        if not self.speakers:
            raise ValueError("the index is empty: enrol speakers first")
        q = self._check_embeddings(queries, "queries")
        k = int(k)
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (enrolled speakers), got {k}")
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
        sizes = [min(max(int(s), k), len(self)) for s in sizes]
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
        return [[self.speakers[i] for i in row] for row in candidates], scores

    def identify(self, queries, k=1, stages=None, shortlist=100, final_dim=None, threshold=None):
        """Open-set :meth:`search`: matches scoring under the threshold are dropped.

        Arguments
        ---------
        queries, k, stages, shortlist, final_dim
            As for :meth:`search`.
        threshold : float, optional
            Cosine threshold; default: the index's threshold for ``final_dim``.

        Returns
        -------
        list of list of tuple
            ``[Q]`` lists of ``(speaker, score)``, best first; an empty list is
            an unknown speaker.
        """
        final_dim = self.embed_dim if final_dim is None else int(final_dim)
        if threshold is None:
            if final_dim not in self.thresholds:
                raise ValueError(
                    f"no open-set threshold for size {final_dim} (the index has "
                    f"{sorted(self.thresholds)}): calibrate one (calibrate_thresholds, "
                    "set_thresholds) or pass threshold=")
            threshold = self.thresholds[final_dim]
        ids, scores = self.search(queries, k, stages, shortlist, final_dim)
        return [[(s, float(c)) for s, c in zip(row, sc) if c >= threshold]
                for row, sc in zip(ids, scores)]

    def _rescore(self, q, candidates, d):
        """Cosine at size ``d`` of each query with its candidates (``-1`` marks none)."""
        qn = _normalised(q[:, :d])
        valid = candidates >= 0
        vec = np.asarray(self._vectors[np.where(valid, candidates, 0)][..., :d], dtype=np.float32)
        vec = vec / np.maximum(np.linalg.norm(vec, axis=2, keepdims=True), 1e-12)
        return np.where(valid, np.einsum("qd,qcd->qc", qn, vec), -np.inf)

    # ------------------------------------------------------------ storage
    def save(self, folder):
        """Writes the index folder, replacing an existing one only once the new one is complete."""
        folder = pathlib.Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            np.save(staging / "vectors.npy", np.asarray(self._vectors))
            (staging / "speakers.json").write_text(json.dumps(
                {"speakers": self.speakers, "counts": self.counts}))
            (staging / "index.json").write_text(json.dumps({
                "format_version": FORMAT_VERSION, "embed_dim": self.embed_dim,
                "mrl_dims": self.mrl_dims, "model_sha256": self.model_sha256,
                "first_stage": self.first_stage, "hnsw_m": self.hnsw_m, "dtype": self.dtype,
                "ivf_nprobe": self.ivf_nprobe, "hnsw_ef": self.hnsw_ef,
                "thresholds": {str(d): t for d, t in self.thresholds.items()}}, indent=1))
            swap_folder(staging, folder, folder.parent / f".{folder.name}.old")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder, model_sha256=None):
        """Reads an index folder (vectors memory-mapped); refuses one built with another model.

        Arguments
        ---------
        folder : str or os.PathLike
            Written by :meth:`save`.
        model_sha256 : str, optional
            Fingerprint of the model that will embed the queries: must be the
            index's.

        Returns
        -------
        SpeakerIndex
        """
        folder = pathlib.Path(folder)
        previous = folder.parent / f".{folder.name}.old"
        if not folder.exists() and previous.is_dir():  # killed between the two renames of save
            folder = previous
        try:
            meta = json.loads((folder / "index.json").read_text())
            names = json.loads((folder / "speakers.json").read_text())
            vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder} is not a readable speaker index: {err}") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: unknown index format {meta.get('format_version')!r}")
        if model_sha256 is not None and meta["model_sha256"] != model_sha256:
            raise ValueError(f"{folder} was built with another model (model_sha256 "
                             f"{meta['model_sha256']!r}); embed with that model or enrol again")
        index = cls(meta["embed_dim"], meta["mrl_dims"], meta["model_sha256"],
                    meta["first_stage"], meta["hnsw_m"], meta["dtype"],
                    meta.get("ivf_nprobe", 128), meta.get("thresholds"),
                    meta.get("hnsw_ef", 256))
        if vectors.shape != (len(names["speakers"]), index.embed_dim):
            raise ValueError(f"{folder}: vectors.npy has shape {vectors.shape} for "
                             f"{len(names['speakers'])} speakers of size {index.embed_dim}")
        index.speakers, index.counts = list(names["speakers"]), list(names["counts"])
        index._vectors = vectors
        return index


def _prefix_cosine(a, b, d):
    return np.einsum("nd,nd->n", _normalised(a[:, :d]), _normalised(b[:, :d]))


def _score_at_rate(scores, rate):
    """The score that at most ``rate`` of ``scores`` lie above (the ``floor(rate * n) + 1``-th
    largest), or None when the rate allows every score."""
    ranked = np.sort(np.asarray(scores))[::-1]
    allowed = int(np.floor(rate * len(ranked) + 1e-9))
    return float(ranked[allowed]) if allowed < len(ranked) else None


def calibrate_thresholds(enrol, test, labels, dims, false_alarm=None):
    """Cosine threshold per prefix size from a verification trial list.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    labels : array-like of bool
        ``[T]``, True for same-speaker trials.
    dims : list of int
        Prefix sizes to calibrate.
    false_alarm : float, optional
        None: the equal-error-rate threshold. Otherwise the lowest threshold
        at which at most this fraction of the different-speaker trials score
        above it (for 1:N search against N speakers, a query meets about N
        different-speaker comparisons: aim accordingly lower).

    Returns
    -------
    dict
        ``{size: threshold}`` (score > threshold: accepted).

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

    enrol, test = np.asarray(enrol, np.float32), np.asarray(test, np.float32)
    labels = np.asarray(labels, dtype=bool)
    if enrol.shape != test.shape or enrol.ndim != 2 or labels.shape != (len(enrol),):
        raise ValueError(f"enrol, test and labels must be [T, D], [T, D] and [T], got "
                         f"{enrol.shape}, {test.shape} and {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError("calibration needs same-speaker and different-speaker trials")
    out = {}
    for d in dims:
        scores = _prefix_cosine(enrol, test, int(d))
        if false_alarm is None:
            out[int(d)] = error_rates(torch.from_numpy(scores[labels]),
                                      torch.from_numpy(scores[~labels]))["EER_threshold"]
        else:
            highest = _score_at_rate(scores[~labels], false_alarm)
            out[int(d)] = -1.0 if highest is None else highest
    return out


def cascade_verify(enrol, test, small_dim, small_threshold, full_threshold, margin):
    """1:1 decisions from a small prefix, escalated to the full size near its threshold.

    Arguments
    ---------
    enrol, test : array-like
        ``[T, embed_dim]`` full-size embeddings of each trial's two sides.
    small_dim : int
        Prefix size of the first decision.
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
    enrol, test = np.asarray(enrol, np.float32), np.asarray(test, np.float32)
    if enrol.shape != test.shape or enrol.ndim != 2:
        raise ValueError(f"enrol and test must be [T, D] alike, got {enrol.shape} and {test.shape}")
    small = _prefix_cosine(enrol, test, small_dim)
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
    enrol, test = np.asarray(enrol, np.float32), np.asarray(test, np.float32)
    small = _prefix_cosine(enrol, test, small_dim)
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
