"""Speaker search in a Qdrant collection: the Matryoshka funnel as one Qdrant query.

:class:`QdrantSpeakerIndex` has the interface of
:class:`speechbrain_mrl.search.index.SpeakerIndex` (enrol, remove, search, identify,
thresholds, the model fingerprint, the audio helpers) on a Qdrant collection:
a Qdrant server (``qdrant://HOST:PORT/COLLECTION``, or ``qdrant+https://...``;
the API key, if any, from ``$QDRANT_API_KEY``), or qdrant-client's local mode
for tests and small enrolments (``qdrant+local:DIR/COLLECTION``: the folder
``DIR`` holds the collection; one client at a time).

Each speaker is one point: its ID is a UUID derived from the speaker ID (the
ID itself is in the payload, with the utterance count, the norm of the mean
vector and the enrolment order), its vectors are the L2-normalised prefixes of
its mean vector at every size of the model, one named vector ``prefix_<d>``
each (cosine distance), the full size included. A search is one query per
embedding: the first funnel stage is the innermost ``prefetch`` (exact, or
Qdrant's HNSW), each larger stage re-scores the shortlist of the stage inside
it, and the query itself ranks the last shortlist at the final size. Queries
go to Qdrant in batches (``query_batch_points``). The sizes, the model
fingerprint and the open-set thresholds are kept in the collection's metadata
(Qdrant 1.16 or later), so a query from another model is refused as with an
index folder.

Needs the optional extra: ``pip install "speechbrain-mrl[qdrant]"``.

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import json
import os
import pathlib
import re
import sqlite3
import time
import uuid

import numpy as np

from speechbrain_mrl.search.cosine import _normalised
from speechbrain_mrl.search.folder import IndexLockedError
from speechbrain_mrl.search.index import SpeakerIndexBase, _check_dtype
from speechbrain_mrl.utils.errors import hinted

__all__ = ["QdrantSpeakerIndex", "QdrantLocation", "parse_qdrant_location", "EXTRA_HINT"]

EXTRA_HINT = 'pip install "speechbrain-mrl[qdrant]"'
#: The key of the collection metadata that holds the index's settings.
METADATA_KEY = "speechbrain_mrl"
FORMAT_VERSION = 1
#: The first stages a Qdrant index can run: exact search, or Qdrant's HNSW graph.
FIRST_STAGES = ("flat", "hnsw")
SPEAKER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/speechbrain-mrl/speaker")
BATCH = 256  # points per upsert, queries per batch request, points per scroll page

class QdrantLocation(collections.namedtuple("QdrantLocation", ["text", "url", "path", "collection"])):
    """Where a Qdrant collection is: ``url`` (a server) or ``path`` (local mode), and its name;
    written as the user wrote it (``text``)."""

    __slots__ = ()

    def __str__(self):
        return self.text

_SCHEMES = {"qdrant://": "http://", "qdrant+https://": "https://"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def parse_qdrant_location(location):
    """The :class:`QdrantLocation` of an index location, or None for an index folder.

    Arguments
    ---------
    location : str or os.PathLike
        ``qdrant://HOST[:PORT]/COLLECTION`` (HTTP), ``qdrant+https://HOST[:PORT]/COLLECTION``,
        ``qdrant+local:DIR/COLLECTION`` (qdrant-client local mode in folder ``DIR``), or
        anything else: an index folder.

    Returns
    -------
    QdrantLocation or None

    Example
    -------
    >>> parse_qdrant_location("qdrant://localhost:6333/speakers").url
    'http://localhost:6333'
    >>> parse_qdrant_location("qdrant+local:store/speakers")[2:]
    ('store', 'speakers')
    >>> parse_qdrant_location("index/") is None
    True
    """
    if isinstance(location, QdrantLocation):
        return location
    text = os.fspath(location)
    if not isinstance(text, str) or not text.startswith("qdrant"):
        return None
    for scheme, http in _SCHEMES.items():
        if text.startswith(scheme):
            host, _, name = text[len(scheme):].partition("/")
            if not host or not _NAME.match(name):
                break
            return QdrantLocation(text, http + host, None, name)
    if text.startswith("qdrant+local:"):
        rest = text[len("qdrant+local:"):]
        rest = rest[2:] if rest.startswith("//") else rest
        folder, _, name = rest.rstrip("/").rpartition("/")
        if folder and _NAME.match(name):
            return QdrantLocation(text, None, os.path.expanduser(folder), name)
    if text.startswith(("qdrant:", "qdrant+")):
        raise ValueError(f"not a Qdrant index location: {text!r} (give qdrant://HOST:PORT/"
                         "COLLECTION, qdrant+https://HOST:PORT/COLLECTION or "
                         "qdrant+local:DIR/COLLECTION; a collection name is letters, digits, "
                         "'_', '-' and '.')")
    return None


def _qdrant():
    """The ``qdrant_client`` module, or a one-line error naming the extra to install."""
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError:
        raise ImportError(f"a Qdrant speaker index needs qdrant-client: {EXTRA_HINT}") from None
    return qdrant_client, models


def connect(location):
    """A ``QdrantClient`` for a :class:`QdrantLocation` (local mode: the folder is created).

    Raises
    ------
    IndexLockedError
        The local folder is open in another client (local mode allows one at a time).
    ValueError
        qdrant-client cannot load the local folder: it reads its ``meta.json`` and every
        collection's ``storage.sqlite`` whichever collection is asked for, so the message
        names the broken one and what to do (the folder is left as it is).
    """
    qdrant_client, _ = _qdrant()
    if location.url is not None:
        try:
            client = qdrant_client.QdrantClient(url=location.url,
                                                api_key=os.environ.get("QDRANT_API_KEY") or None)
        except Exception as err:  # noqa: BLE001 - named below
            raise _server_error(location, err) from err
        return _ServerClient(client, location)
    if os.path.exists(location.path) and not os.path.isdir(location.path):
        raise ValueError(f"{location.text}: {location.path} is a file, not a folder for Qdrant's "
                         "local mode (give qdrant+local:DIR/COLLECTION with DIR a folder)")
    try:
        return qdrant_client.QdrantClient(path=location.path)
    except Exception as err:  # noqa: BLE001 - named below
        if isinstance(err, RuntimeError) and "already accessed" in str(err):
            raise IndexLockedError(
                f"the Qdrant folder {location.path} of {location.text} is open in another client "
                "(qdrant-client's local mode allows one process and client at a time): close "
                "that one first, or use a Qdrant server for concurrent access") from None
        broken = _broken_local_file(location.path)
        if broken is None and isinstance(err, OSError):
            raise  # a permission or disk fault: the OS error names the file
        raise _local_storage_error(location, err, broken) from err


def _first_line(err):
    """``Type: first line of the message`` of an exception."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _local_storage_error(location, err, broken):
    """A local-mode folder that qdrant-client could not load: which file is broken (``broken``:
    ``(file, problem, remedy)`` or None, unknown) and what to do; the folder is left as it is."""
    start = f"the Qdrant folder {location.path} of {location.text} cannot be opened"
    if broken is None:
        return ValueError(
            f"{start}: qdrant-client failed to load it ({_first_line(err)}); it reads meta.json "
            "and every collection/NAME/storage.sqlite there whichever collection is asked for: "
            "restore the broken file from a backup, or move the broken collection's folder out")
    file, problem, remedy = broken
    return ValueError(f"{start}: {file} is broken ({problem}), and qdrant-client's local mode "
                      f"loads the whole folder to open any collection: {remedy}")


def _broken_local_file(folder):
    """``(file, problem, remedy)`` of the first file of a local-mode folder that cannot be
    read: ``meta.json``, then each listed collection's ``storage.sqlite``; None if all read.
    Only reads (SQLite opened read-only): the folder is not repaired."""
    meta_file = os.path.join(folder, "meta.json")
    try:
        names = _local_collections(meta_file)
    except OSError:
        return None  # missing: qdrant-client writes one; unreadable: its OS error says so
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return (meta_file, _first_line(err), "restore it from a backup (it lists the folder's "
                "collections: without it none is found)")
    base = os.path.realpath(os.path.join(folder, "collection"))
    for name in names:
        storage = os.path.join(folder, "collection", name, "storage.sqlite")
        if not os.path.realpath(storage).startswith(base + os.sep) or not os.path.isfile(storage):
            continue  # qdrant-client refuses or creates it
        problem = _sqlite_problem(storage)
        if problem is not None:
            collection = os.path.dirname(storage)
            return (storage, problem, f"move the folder {collection} out of {folder} (collection "
                    f"{name!r} then opens empty) or restore it from a backup")
    return None


def _local_collections(meta_file):
    """The collection names a local-mode ``meta.json`` lists (raises if it is not one)."""
    with open(meta_file, "rb") as file:
        meta = json.loads(file.read())
    collections, aliases = meta["collections"], meta["aliases"]
    if not isinstance(collections, dict) or not isinstance(aliases, dict):
        raise TypeError("'collections' and 'aliases' must be objects")
    if not all(isinstance(config, dict) for config in collections.values()):
        raise TypeError("a collection's configuration is not an object")
    return list(collections)


def _sqlite_problem(file):
    """Why an SQLite file cannot be read (opened read-only), or None."""
    try:
        connection = sqlite3.connect(pathlib.Path(file).resolve().as_uri() + "?mode=ro",
                                     uri=True)
        try:
            answer = connection.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as err:
        return _first_line(err)
    return None if answer == "ok" else f"SQLite quick_check: {answer}"


def _server_error(location, err):
    """A connection, protocol or address fault of a Qdrant server, naming the server."""
    return ConnectionError(f"Qdrant server {location.url} ({location.text}) failed: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                           "(is a Qdrant server listening there?)")


class _ServerClient:
    """A ``QdrantClient`` of a server whose transport faults (refused connection, an answer
    that is not Qdrant's, a bad address) name the server; Qdrant's own answers pass as they are."""

    _TRANSPORT = ("httpx", "httpcore", "urllib3", "json", "qdrant_client.http.exceptions")

    def __init__(self, client, location):
        self._client, self._location = client, location

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            try:
                return attribute(*args, **kwargs)
            except Exception as err:
                transport = (isinstance(err, OSError)
                             or type(err).__module__.startswith(self._TRANSPORT))
                if not transport or type(err).__name__ == "UnexpectedResponse":
                    raise
                raise _server_error(self._location, err) from err

        return call


def speaker_point_id(speaker):
    """The Qdrant point ID of a speaker ID: a UUID derived from it (the same everywhere).

    Example
    -------
    >>> speaker_point_id("alice") == speaker_point_id("alice") != speaker_point_id("bob")
    True
    """
    return str(uuid.uuid5(SPEAKER_NAMESPACE, str(speaker)))


def _vector_name(d):
    return f"prefix_{int(d)}"


def _check_first_stage(first_stage):
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"a Qdrant speaker index's first_stage must be one of {FIRST_STAGES} "
                         f"(exact or Qdrant's HNSW), got {first_stage!r}")


class QdrantSpeakerIndex(SpeakerIndexBase):
    """Enrolled speakers in a Qdrant collection, searched with the Matryoshka funnel.

    The constructor creates the collection; :meth:`open` opens an existing one.
    Every change is written to the collection at once (there is no save).

    Arguments
    ---------
    embed_dim : int
        Full embedding size.
    mrl_dims : list of int
        Nested sizes of the model: one named vector each.
    model_sha256 : str, optional
        Fingerprint of the model the embeddings come from; :meth:`open` checks it.
    thresholds : dict, optional
        ``{size: cosine}`` open-set thresholds.
    thresholds_for : str
        ``identification`` or ``verification`` (see ``SpeakerIndex``).
    location : str or QdrantLocation
        The collection (see :func:`parse_qdrant_location`).
    first_stage : str
        ``flat``: the first funnel stage is an exact search; ``hnsw``: Qdrant's
        HNSW graph (``hnsw_ef`` candidates). Local mode always searches exactly.
    hnsw_ef : int
        HNSW candidate list size of the first stage.
    overwrite : bool
        Replace an existing collection of that name (otherwise an error).
    faiss_settings : dict, optional
        The settings of the index folder this one was copied from (kept for a copy back).
    sizes : list of int, optional
        The sizes stored as named vectors (default: every size of ``mrl_dims``);
        the full size is always one. A funnel may use only these.
    vector_options : dict, optional
        ``{size: {argument: value}}``: more arguments of the ``VectorParams`` of a
        size (``on_disk``, ``hnsw_config``, ``quantization_config``, ``datatype``).
        Default: no HNSW graph for the full size (``m=0``: it only re-scores).
    collection_options : dict, optional
        More arguments of ``QdrantClient.create_collection``: ``shard_number``,
        ``replication_factor``, ``quantization_config``, ... (server only).

    Example
    -------
    >>> import tempfile
    >>> store = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> centres = np.repeat(rng.standard_normal((3, 8)), 2, axis=0)   # 3 speakers, 2 utterances
    >>> emb = (centres + 0.1 * rng.standard_normal((6, 8))).astype("float32")
    >>> with QdrantSpeakerIndex(8, [4, 8], location=f"qdrant+local:{store}/speakers") as index:
    ...     index.enrol(["a", "a", "b", "b", "c", "c"], emb)
    ...     ids, scores = index.search(emb[:1], k=2, stages=[4], shortlist=3)
    >>> len(ids[0]), ids[0][0]
    (2, 'a')
    >>> with QdrantSpeakerIndex.open(f"qdrant+local:{store}/speakers") as index:
    ...     index.speakers
    ['a', 'b', 'c']
    """

    def __init__(self, embed_dim, mrl_dims, model_sha256=None, thresholds=None,
                 thresholds_for="identification", *, location, first_stage="hnsw", hnsw_ef=256,
                 overwrite=False, faiss_settings=None, sizes=None, vector_options=None,
                 collection_options=None, complete=True):
        _check_first_stage(first_stage)
        self._client, self._next_seq = None, 0
        self._init_common(embed_dim, mrl_dims, model_sha256, thresholds, thresholds_for)
        self.sizes = self._checked_sizes(self.mrl_dims if sizes is None else sizes)
        self.first_stage, self.hnsw_ef = first_stage, int(hnsw_ef)
        self.faiss_settings = dict(faiss_settings or {})
        self.complete = bool(complete)
        self.location = _as_location(location)
        _, models = _qdrant()
        if vector_options is None:
            vector_options = {self.embed_dim: {"hnsw_config": models.HnswConfigDiff(m=0)}}
        client = connect(self.location)
        try:
            name = self.location.collection
            if client.collection_exists(name):
                if not overwrite:
                    raise hinted(ValueError(f"{self.location.text} already exists: open it "
                                            "(QdrantSpeakerIndex.open or open_index) and add to "
                                            "it, or pass overwrite=True to replace it"),
                                 f"{self.location.text} already exists: enrol into it, or add "
                                 "--overwrite to replace it")
                client.delete_collection(name)
            client.create_collection(
                name, vectors_config={
                    _vector_name(d): models.VectorParams(size=d, distance=models.Distance.COSINE,
                                                         **vector_options.get(d, {}))
                    for d in self.sizes},
                metadata={METADATA_KEY: self._metadata()}, **(collection_options or {}))
        except BaseException:
            client.close()
            raise
        self._client = client

    @classmethod
    def open(cls, location, model_sha256=None):
        """Opens the speaker index in an existing collection; refuses one of another model.

        Arguments
        ---------
        location : str or QdrantLocation
            The collection (see :func:`parse_qdrant_location`).
        model_sha256 : str, optional
            Fingerprint of the model that will embed the queries: must be the index's.

        Returns
        -------
        QdrantSpeakerIndex

        Raises
        ------
        FileNotFoundError
            No such collection.
        ValueError
            A collection that is not a speaker index, or one of another model.
        """
        location = _as_location(location)
        if location.path is not None and not os.path.isdir(location.path):
            raise FileNotFoundError(f"speaker index not found: {location.text} (no folder "
                                    f"{location.path})")
        client = connect(location)
        try:
            if not client.collection_exists(location.collection):
                raise FileNotFoundError(f"speaker index not found: {location.text} (no "
                                        f"collection {location.collection!r})")
            info = client.get_collection(location.collection)
            meta = (info.config.metadata or {}).get(METADATA_KEY)
            if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{location.text} is not a speaker index of this version (its "
                                 f"collection metadata has no {METADATA_KEY!r} of format "
                                 f"{FORMAT_VERSION})")
            if meta.get("complete") is False:
                raise hinted(ValueError(
                    f"{location.text} is an incomplete copy (its copy_index stopped before the "
                    "end): copy it again with overwrite=True"),
                    f"{location.text} is an incomplete copy (its copy-index stopped before the "
                    "end): copy it again with --overwrite")
            cls._refuse_other_model(location.text, meta.get("model_sha256"), model_sha256)
            index = cls.__new__(cls)
            index._client, index._next_seq = None, 0
            try:
                index._init_common(meta["embed_dim"], meta["mrl_dims"], meta.get("model_sha256"),
                                   {int(d): t for d, t in meta.get("thresholds", {}).items()},
                                   meta.get("thresholds_for", "verification"))
                _check_first_stage(meta.get("first_stage"))
                index.sizes = index._checked_sizes(meta.get("sizes", index.mrl_dims))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise ValueError(f"{location.text}: bad speaker-index metadata: {err}") from err
            vectors = info.config.params.vectors
            for d in index.sizes:
                params = vectors.get(_vector_name(d)) if isinstance(vectors, dict) else None
                if params is None or params.size != d or params.distance.name != "COSINE":
                    raise ValueError(f"{location.text}: the collection has no cosine vector "
                                     f"{_vector_name(d)!r} of size {d}")
        except BaseException:
            client.close()
            raise
        index.first_stage, index.hnsw_ef = meta["first_stage"], int(meta.get("hnsw_ef", 256))
        index.faiss_settings = dict(meta.get("faiss") or {})
        index.complete = True  # an incomplete copy was refused above
        index.location, index._client = location, client
        return index

    # ------------------------------------------------------------ bookkeeping
    def _location(self):
        return self.location.text

    def _checked_sizes(self, sizes):
        sizes = sorted({int(d) for d in sizes} | {self.embed_dim})
        if any(d not in self.mrl_dims for d in sizes):
            raise ValueError(f"sizes must be sizes of {self.mrl_dims}, got {sizes}")
        return sizes

    def close(self):
        """Closes the client (a local-mode folder can then be opened by another one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live_client(self):
        if self._client is None:
            raise ValueError(f"the speaker index {self.location.text} is closed")
        return self._client

    def _metadata(self):
        return {"format_version": FORMAT_VERSION, "embed_dim": self.embed_dim,
                "mrl_dims": self.mrl_dims, "model_sha256": self.model_sha256,
                "thresholds": {str(d): t for d, t in self.thresholds.items()},
                "thresholds_for": self.thresholds_for, "first_stage": self.first_stage,
                "hnsw_ef": self.hnsw_ef, "sizes": self.sizes, "faiss": self.faiss_settings,
                "complete": self.complete}

    def mark_complete(self):
        """Records that the collection holds every speaker it was created for (a copy opened
        before this is refused, see :meth:`open`)."""
        self.complete = True
        self._write_metadata()

    def _write_metadata(self):
        self._live_client().update_collection(self.location.collection,
                                              metadata={METADATA_KEY: self._metadata()})

    def set_thresholds(self, thresholds, thresholds_for="identification"):
        """Sets the open-set thresholds and writes them to the collection."""
        super().set_thresholds(thresholds, thresholds_for)
        if getattr(self, "_client", None) is not None:
            self._write_metadata()

    def check_settings(self, first_stage=None, dtype=None, hnsw_m=None):
        """Raises if requested settings differ from this index's (None: any is fine).

        ``dtype`` must be ``float32`` (a collection stores float32 vectors); ``hnsw_m``
        is Qdrant's (set with ``collection_options``), not checked here.
        """
        if dtype is not None:
            _check_dtype(dtype)
            if dtype != "float32":
                raise ValueError(f"{self.location.text} stores float32 vectors, not {dtype} "
                                 "(a float16 index needs an index folder)")
        if first_stage is not None:
            _check_first_stage(first_stage)
            if first_stage != self.first_stage:
                problem = (f"the speaker index {self.location.text} has first_stage="
                           f"{self.first_stage!r}, not the requested {first_stage!r}")
                raise hinted(ValueError(f"{problem}: rebuild it with index.rebuild(first_stage="
                                        f"{first_stage!r}), or leave the setting out to keep the "
                                        "index's"),
                             f"{problem}: add --rebuild to rebuild it with --first_stage "
                             f"{first_stage}, or leave the option out to keep the index's")

    def rebuild(self, first_stage=None, dtype=None, hnsw_m=None):
        """Changes the first stage (nothing is rebuilt: Qdrant keeps its HNSW graphs)."""
        self.check_settings(dtype=dtype)
        if first_stage is not None:
            _check_first_stage(first_stage)
            self.first_stage = first_stage
            self._write_metadata()
        return self

    # ------------------------------------------------------------ speakers
    def __len__(self):
        return self._live_client().count(self.location.collection, exact=True).count

    def _scroll(self, vectors=False):
        """Every speaker point, in enrolment order."""
        client, records, offset = self._live_client(), [], None
        while True:
            page, offset = client.scroll(
                self.location.collection, limit=4 * BATCH, offset=offset, with_payload=True,
                with_vectors=[_vector_name(self.embed_dim)] if vectors else False)
            records += page
            if offset is None:
                break
        return sorted(records, key=lambda r: (r.payload["seq"], r.payload["speaker"]))

    @property
    def speakers(self):
        """Speaker IDs in enrolment order (reads every point: for small and mid-size indexes)."""
        return [r.payload["speaker"] for r in self._scroll()]

    @property
    def counts(self):
        """Utterances enrolled per speaker, in the order of :attr:`speakers`."""
        return [int(r.payload["count"]) for r in self._scroll()]

    def speaker_means(self):
        """``(speakers, counts, mean vectors float32 [N, D])`` in enrolment order."""
        records = self._scroll(vectors=True)
        full = _vector_name(self.embed_dim)
        means = np.array([np.asarray(r.vector[full], np.float64) * r.payload["norm"]
                          for r in records], dtype=np.float32).reshape(-1, self.embed_dim)
        return ([r.payload["speaker"] for r in records],
                [int(r.payload["count"]) for r in records], means)

    def _enrolled(self, speakers):
        """The speakers of ``speakers`` that are enrolled."""
        client, found = self._live_client(), set()
        for start in range(0, len(speakers), 4 * BATCH):
            chunk = [speaker_point_id(s) for s in speakers[start:start + 4 * BATCH]]
            found |= {r.payload["speaker"] for r in client.retrieve(
                self.location.collection, chunk, with_payload=["speaker"], with_vectors=False)}
        return found

    def enrol(self, speaker_ids, embeddings, replace=False):
        """Adds speakers from their utterances' full-size embeddings (see ``SpeakerIndex.enrol``).

        ``replace`` re-enrols speakers that are enrolled: each one's point is
        overwritten with the mean of the new utterances.
        """
        ids, x = self._checked_enrolment(speaker_ids, embeddings)
        known = self._enrolled(list(dict.fromkeys(ids)))
        if known and not replace:
            raise ValueError(f"speakers already enrolled: {sorted(known)[:5]} (replace=True to "
                             "re-enrol them)")
        self.add_speaker_means(*self._speaker_means(ids, x))

    def add_speaker_means(self, speakers, counts, means):
        """Writes speakers with their counts and mean vectors (points of the same IDs are
        overwritten), in enrolment order after those enrolled."""
        _, models = _qdrant()
        means = np.asarray(means, dtype=np.float64)
        norms = np.linalg.norm(means, axis=1)
        first = max(time.time_ns(), self._next_seq)  # later calls: later, whatever the clock
        self._next_seq = first + len(speakers)
        client = self._live_client()
        for start in range(0, len(speakers), BATCH):
            rows = range(start, min(start + BATCH, len(speakers)))
            prefixes = {d: _normalised(means[rows.start:rows.stop, :d]).astype(np.float32)
                        for d in self.sizes}
            client.upsert(self.location.collection, wait=True, points=[models.PointStruct(
                id=speaker_point_id(speakers[i]),
                vector={_vector_name(d): prefixes[d][i - rows.start].tolist()
                        for d in self.sizes},
                payload={"speaker": str(speakers[i]), "count": int(counts[i]),
                         "norm": float(norms[i]), "seq": first + i}) for i in rows])

    def remove(self, speaker_ids):
        """Removes enrolled speakers (an unknown ID is an error, and nothing is removed)."""
        _, models = _qdrant()
        ids = list(dict.fromkeys(str(s) for s in speaker_ids))
        unknown = sorted(set(ids) - self._enrolled(ids))
        if unknown:
            raise KeyError(f"speakers not enrolled: {unknown[:5]}")
        for start in range(0, len(ids), 4 * BATCH):
            chunk = [speaker_point_id(s) for s in ids[start:start + 4 * BATCH]]
            self._live_client().delete(self.location.collection, wait=True,
                                       points_selector=models.PointIdsList(points=chunk))

    # ------------------------------------------------------------ search
    def funnel_request(self, query, k, stages, sizes, final_dim):
        """The Qdrant ``QueryRequest`` of one query embedding (``[embed_dim]``): the first of
        ``stages`` innermost, each later one re-scoring the one inside, ``final_dim`` last."""
        _, models = _qdrant()
        if self.location.path is not None:
            first = None  # local mode always searches exactly (and warns about parameters)
        elif self.first_stage == "flat":
            first = models.SearchParams(exact=True)
        else:
            first = models.SearchParams(hnsw_ef=max(self.hnsw_ef, sizes[0] if sizes else k))
        prefetch = None
        for d, size in zip(stages, sizes):
            prefetch = models.Prefetch(
                query=_normalised(query[None, :d])[0].tolist(), using=_vector_name(d),
                limit=size, prefetch=prefetch, params=first if prefetch is None else None)
        return models.QueryRequest(
            query=_normalised(query[None, :final_dim])[0].tolist(), using=_vector_name(final_dim),
            limit=k, prefetch=prefetch, params=first if prefetch is None else None,
            with_payload=["speaker"])

    def search(self, queries, k=1, stages=None, shortlist=100, final_dim=None):
        """Top-``k`` speakers of each query through the funnel, as ``SpeakerIndex.search``.

        Returns
        -------
        ids : list of list of str or None
            ``[Q][k]`` speaker IDs, best first (None where an approximate first
            stage found fewer than ``k``, with score ``-inf``).
        scores : numpy.ndarray
            ``[Q, k]`` cosine scores at ``final_dim``.
        """
        q, k, stages, sizes, final_dim = self._funnel_plan(queries, k, stages, shortlist,
                                                           final_dim, len(self))
        missing = sorted(set(stages + [final_dim]) - set(self.sizes))
        if missing:
            raise ValueError(f"{self.location.text} stores the sizes {self.sizes}, not {missing}: "
                             "search with those, or copy the index to a collection with them")
        ids = []
        scores = np.full((len(q), k), -np.inf)
        for start in range(0, len(q), BATCH):
            requests = [self.funnel_request(row, k, stages, sizes, final_dim)
                        for row in q[start:start + BATCH]]
            answers = self._live_client().query_batch_points(self.location.collection, requests)
            for row, answer in enumerate(answers, start):
                found = answer.points[:k]
                ids.append([p.payload["speaker"] for p in found] + [None] * (k - len(found)))
                scores[row, :len(found)] = [p.score for p in found]
        return ids, scores


def _as_location(location):
    parsed = parse_qdrant_location(location)
    if parsed is None:
        raise ValueError(f"not a Qdrant index location: {os.fspath(location)!r} (give "
                         "qdrant://HOST:PORT/COLLECTION or qdrant+local:DIR/COLLECTION)")
    return parsed
