"""One way to open, create, update and copy a speaker index, wherever it is stored.

A location is an index folder (:class:`speechbrain_mrl.search.index.SpeakerIndex`,
FAISS: the default) or a Qdrant collection
(:class:`speechbrain_mrl.search.qdrant.QdrantSpeakerIndex`):
``qdrant://HOST:PORT/COLLECTION`` (a server, ``qdrant+https://`` for TLS) or
``qdrant+local:DIR/COLLECTION`` (qdrant-client's local mode in folder ``DIR``).
The search commands' ``--index`` takes any of them. Both kinds of index have
the same search interface and are context managers (closing a Qdrant client).

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import os
import pathlib

import numpy as np
from tqdm import tqdm

from speechbrain_mrl.search.qdrant import BATCH, parse_qdrant_location
from speechbrain_mrl.search.index import SpeakerIndex

__all__ = ["index_location", "open_index", "index_exists", "index_for_model", "check_writable",
           "writing_index", "copy_index"]

#: The settings of an index folder that a Qdrant copy keeps, so that a copy back restores them.
FAISS_SETTINGS = ("first_stage", "dtype", "hnsw_m", "ivf_nprobe", "hnsw_ef")
#: Speakers written to a Qdrant collection between two updates of :func:`copy_index`'s progress.
COPY_CHUNK = BATCH
#: Seconds before :func:`copy_index`'s progress bar appears: a quick copy shows none.
PROGRESS_DELAY = 2.0


def _qdrant_index():
    from speechbrain_mrl.search.qdrant import QdrantSpeakerIndex

    return QdrantSpeakerIndex


def _not_found(location):
    return FileNotFoundError(f"speaker index not found: {location} (create it with "
                             "'speechbrain-mrl enrol')")


def index_location(location):
    """A location parsed once: a :class:`~speechbrain_mrl.search.qdrant.QdrantLocation`, or the
    index folder's path. Every function here takes either form.

    Raises
    ------
    ValueError
        A ``qdrant...`` location of no known form.

    Example
    -------
    >>> str(index_location("qdrant+local:store/speakers")), index_location("idx/")
    ('qdrant+local:store/speakers', PosixPath('idx'))
    """
    return parse_qdrant_location(location) or pathlib.Path(location)


def index_exists(location):
    """Whether ``location`` holds a speaker index (a folder or a Qdrant collection).

    Example
    -------
    >>> index_exists("no/such/index")
    False
    """
    qdrant = parse_qdrant_location(location)
    if qdrant is None:
        return pathlib.Path(location).exists()
    if qdrant.path is not None and not os.path.isdir(qdrant.path):
        return False
    from speechbrain_mrl.search.qdrant import connect

    client = connect(qdrant)
    try:
        return client.collection_exists(qdrant.collection)
    finally:
        client.close()


def open_index(location, model_sha256=None, mmap=True):
    """The speaker index at ``location``, checked against the model fingerprint.

    Arguments
    ---------
    location : str or os.PathLike
        An index folder, ``qdrant://HOST:PORT/COLLECTION`` or ``qdrant+local:DIR/COLLECTION``.
    model_sha256 : str, optional
        Fingerprint of the model that embeds the queries: must be the index's.
    mmap : bool
        Memory-map an index folder's files (see ``SpeakerIndex.load``).

    Returns
    -------
    SpeakerIndex or QdrantSpeakerIndex

    Raises
    ------
    FileNotFoundError
        Nothing at ``location``.
    ValueError
        An index of another model, or a bad index (named).
    ImportError
        A Qdrant location without qdrant-client installed (naming the extra).

    Example
    -------
    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> index = SpeakerIndex(8, [4, 8], model_sha256="abc")
    >>> index.enrol(["a", "b"], np.eye(8, dtype="float32")[:2])
    >>> _ = index.save(folder)
    >>> with open_index(folder, model_sha256="abc") as index:
    ...     index.speakers
    ['a', 'b']
    """
    qdrant = parse_qdrant_location(location)
    if qdrant is not None:
        return _qdrant_index().open(qdrant, model_sha256)
    if not pathlib.Path(location).exists():
        raise _not_found(location)
    return SpeakerIndex.load(location, model_sha256, mmap=mmap)


def index_for_model(location, model, model_sha256=None, **settings):
    """A new, empty index at ``location`` for the sizes of an ``MRLEncoderClassifier``.

    An index folder is written by its first save; a Qdrant collection is created
    now. ``model_sha256`` is the model folder's fingerprint (recorded; opening checks it);
    ``settings`` go to the index class (``first_stage``, ``dtype``, ...).
    """
    qdrant = parse_qdrant_location(location)
    if qdrant is None:
        return SpeakerIndex.for_model(model, model_sha256=model_sha256, **settings)
    settings = dict(settings)
    _check_qdrant_dtype(location, settings.pop("dtype", None))
    return _qdrant_index().for_model(model, model_sha256=model_sha256, location=qdrant, **settings)


def _check_qdrant_dtype(location, dtype):
    if dtype not in (None, "float32"):
        raise ValueError(f"{location} would store float32 vectors: --dtype float16 needs an "
                         "index folder")


def check_writable(location, dtype=None):
    """Raises before any audio is embedded when a new index could not be written at ``location``.

    An index folder: its lock file must open and its parent folder take new entries
    (``OSError`` naming the file); a Qdrant collection stores float32 vectors only
    (``ValueError`` for ``dtype="float16"``).
    """
    if parse_qdrant_location(location) is not None:
        _check_qdrant_dtype(location, dtype)
    else:
        SpeakerIndex.check_writable(location)


@contextlib.contextmanager
def writing_index(location, model_sha256=None, create=None, lock_timeout=60.0):
    """Context manager: the index at ``location``, to change; the change is kept at the end.

    An index folder is loaded under its write lock (``SpeakerIndex.writing``) and
    saved when the block ends without an error; a Qdrant collection takes each
    change at once (a server orders concurrent writers itself) and its client is
    closed at the end.

    Arguments
    ---------
    location : str or os.PathLike
        Where the index is.
    model_sha256 : str, optional
        Fingerprint the index must have.
    create : callable, optional
        ``create()`` gives a new index when there is none at ``location`` (None: an error).
    lock_timeout : float
        Seconds to wait for another writer of an index folder.

    Example
    -------
    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> with writing_index(folder, create=lambda: SpeakerIndex(8, [4, 8])) as index:
    ...     index.enrol(["a"], np.ones((1, 8)))
    >>> SpeakerIndex.load(folder).speakers
    ['a']
    """
    qdrant = parse_qdrant_location(location)
    exists = index_exists(location)
    if not exists and create is None:
        raise _not_found(location)
    if qdrant is not None:
        with (open_index(qdrant, model_sha256) if exists else create()) as index:
            yield index
        return
    with SpeakerIndex.writing(location, timeout=lock_timeout):
        # looked at again under the lock: another first writer may have created it meanwhile
        index = SpeakerIndex.load(location, model_sha256) if index_exists(location) else create()
        yield index
        index.save(location)


def copy_index(source, dest, overwrite=False, lock_timeout=60.0, progress=False):
    """Copies a speaker index between an index folder and a Qdrant collection (or any two
    locations), then reads the copy back and checks it equals the source.

    Checked: the speaker IDs in enrolment order, the utterance counts, the
    vectors (to float32 rounding, or float16 when either side stores float16),
    the sizes, the model fingerprint and the thresholds. An index folder copied
    to Qdrant keeps its FAISS settings in the collection, so a copy back has them.
    A folder copy appears whole or not at all (staged); a collection is marked complete
    only after its last speaker, and an incomplete one (a copy killed midway) is refused
    when opened. With ``overwrite`` the old collection is dropped first: killed midway,
    neither the old one nor an usable copy remains (copy to a new name to keep the old one
    until the copy is done).

    Arguments
    ---------
    source, dest : str or os.PathLike
        Locations (see :func:`open_index`); ``dest`` must not hold an index
        unless ``overwrite``.
    overwrite : bool
        Replace an index at ``dest``.
    lock_timeout : float
        Seconds to wait for another writer of a destination folder.
    progress : bool
        Show a progress bar of the speakers written (on stderr, once the copy has taken
        ``PROGRESS_DELAY`` seconds; a collection's speakers are written ``COPY_CHUNK`` at a time).

    Returns
    -------
    dict
        ``speakers``, ``max_abs_difference`` (vectors), ``tolerance``, ``source``, ``dest``.

    Raises
    ------
    ValueError
        The copy does not equal the source (naming what differs), or ``dest`` exists.

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> index = SpeakerIndex(8, [4, 8], model_sha256="abc", thresholds={8: 0.5})
    >>> index.enrol(["a", "b"], np.eye(8, dtype="float32")[:2])
    >>> _ = index.save(root / "index")
    >>> copy_index(root / "index", f"qdrant+local:{root}/store/speakers")["speakers"]
    2
    >>> copy_index(f"qdrant+local:{root}/store/speakers", root / "back")["speakers"]
    2
    >>> SpeakerIndex.load(root / "back", model_sha256="abc").thresholds
    {8: 0.5}
    """
    if str(source) == str(dest):
        raise ValueError(f"copy_index: the source and the destination are both {source}")
    with open_index(source) as src:
        speakers, counts, vectors = src.speaker_means()
        common = dict(embed_dim=src.embed_dim, mrl_dims=src.mrl_dims,
                      model_sha256=src.model_sha256, thresholds=src.thresholds,
                      thresholds_for=src.thresholds_for)
        if isinstance(src, SpeakerIndex):
            faiss = {name: getattr(src, name) for name in FAISS_SETTINGS}
        else:
            faiss = dict(src.faiss_settings)
        qdrant_settings = {"first_stage": getattr(src, "first_stage", "hnsw"),
                           "hnsw_ef": getattr(src, "hnsw_ef", 256)}
    qdrant = parse_qdrant_location(dest)
    if qdrant is not None:
        if qdrant_settings["first_stage"] not in ("flat", "hnsw"):
            qdrant_settings["first_stage"] = "hnsw"  # an IVF first stage: the graph instead
        with _qdrant_index()(**common, location=qdrant, overwrite=overwrite, complete=False,
                             faiss_settings=faiss, **qdrant_settings) as copy:
            _write_speakers(copy, speakers, counts, vectors, COPY_CHUNK, progress)
            copy.mark_complete()
    else:
        copy = SpeakerIndex(**common, **faiss)
        _write_speakers(copy, speakers, counts, vectors, max(len(speakers), 1), progress)
        copy.save(dest, overwrite=overwrite, lock_timeout=lock_timeout)
    with open_index(dest) as check:
        got = check.speaker_means()
        meta = dict(embed_dim=check.embed_dim, mrl_dims=check.mrl_dims,
                    model_sha256=check.model_sha256, thresholds=check.thresholds,
                    thresholds_for=check.thresholds_for)
        half = "float16" in (faiss.get("dtype"), getattr(check, "dtype", None))
    tolerance = 1e-3 if half else 1e-5
    problems = []
    if got[0] != speakers:
        problems.append("speaker IDs or their order")
    if got[1] != counts:
        problems.append("utterance counts")
    difference = float(np.abs(got[2] - vectors).max()) if len(vectors) else 0.0
    if got[2].shape != vectors.shape or difference > tolerance:
        problems.append(f"vectors (max abs difference {difference:.2g} > {tolerance:g})")
    problems += [f"{name} ({meta[name]!r}, not {value!r})" for name, value in common.items()
                 if meta[name] != value]
    if problems:
        raise ValueError(f"the copy {dest} of {source} differs from it: {', '.join(problems)}")
    return {"source": str(source), "dest": str(dest), "speakers": len(speakers),
            "max_abs_difference": difference, "tolerance": tolerance}


def _write_speakers(copy, speakers, counts, vectors, chunk, progress):
    """Adds the speakers to the new index ``copy``, ``chunk`` at a time, counting them in a
    progress bar on stderr when ``progress`` (see :func:`copy_index`)."""
    with tqdm(total=len(speakers), desc="copy-index", unit="speaker", dynamic_ncols=True,
              delay=PROGRESS_DELAY, disable=not progress) as bar:
        for start in range(0, len(speakers), chunk):
            stop = min(start + chunk, len(speakers))
            copy.add_speaker_means(speakers[start:stop], counts[start:stop], vectors[start:stop])
            bar.update(stop - start)
