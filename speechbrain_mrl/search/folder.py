"""A :class:`speechbrain_mrl.search.index.SpeakerIndex` stored as a folder: save, load, write locks.

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
killed writers. Where the system swaps two folders in one step (Linux
``renameat2(RENAME_EXCHANGE)``) the folder never stops existing; elsewhere the
previous one waits at ``.<name>.speechbrain-mrl-old`` between two renames. A
save refuses a path that is a file, and refuses to overwrite an index that
another writer saved after this one was loaded (:class:`IndexChangedError`).

A load reads one saved generation, never files of two: it compares the
folder and its ``generation`` before and after reading, reads again when a save
replaced the folder meanwhile, and after a few such tries waits for the writers
(a shared ``flock`` on the lock file, where there is one) and reads once more.

:class:`IndexFolder` holds :meth:`~IndexFolder.save`, :meth:`~IndexFolder.load`
and :meth:`~IndexFolder.writing`; :class:`speechbrain_mrl.search.index.SpeakerIndex`
inherits them. Every public name here is also importable from
:mod:`speechbrain_mrl.search.index`.

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import contextlib
import ctypes
import errno
import json
import os
import pathlib
import random
import shutil
import stat
import sys
import threading
import time
import uuid
import warnings

import numpy as np

from speechbrain_mrl.search.cosine import _normalised
from speechbrain_mrl.utils.files import (_mark, _unmark, aside_folder, full_disk_named, is_staging,
                                         remove_stale_staging, staging_folder, swap_folder)
from speechbrain_mrl.model.sizes import is_int
from speechbrain_mrl.utils.errors import hinted

__all__ = ["IndexFolder", "IndexLockedError", "IndexChangedError", "IndexExistsError"]

#: The kinds of FAISS first stage an index may build and save.
FIRST_STAGES = ("flat", "hnsw", "ivf")

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no stage files, no generation

_FAISS_CLASSES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}

#: Reads of a folder that saves keep replacing before a load waits for the writers' lock.
_FREE_READS = 5
#: Reads under the shared lock before a load gives up (only writers that take no lock, or
#: threads of this process writing, can still replace the folder then).
_LOCKED_READS = 50


class IndexLockedError(RuntimeError):
    """Another writer held an index's lock for longer than the timeout."""


class IndexChangedError(RuntimeError):
    """An index folder changed on disk since this index was loaded from it (another
    writer saved in between); saving would lose that writer's update."""


class IndexExistsError(IndexChangedError):
    """A save would replace an index that this one was not loaded from."""


def _resolved(folder):
    """The folder's path with symlinks resolved (a save replaces the real folder, not the link)."""
    return pathlib.Path(os.path.realpath(os.path.expanduser(os.fspath(folder))))


def _aside(folder):
    """Where :func:`swap_folder` keeps the previous index while it swaps in a new one."""
    return aside_folder(folder)


def _lock_file(folder):
    return folder.parent / f".{folder.name}.lock"


def _open_lock_file(lock):
    """A writable descriptor of the lock file ``lock``, created (with its folder) if needed,
    never through a symlink."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)


def _generation_mark(folder):
    """What tells one saved generation of ``folder`` from another: the folder's device and
    inode, the stat of its ``index.json`` and the generation that records (None: no folder)."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    try:
        meta = json.loads((folder / "index.json").read_text())
        generation = meta.get("generation") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        generation = None
    return st.st_dev, st.st_ino, _stat_token(folder / "index.json"), generation


def _live_folder(target):
    """The folder a load reads: ``target``, or the previous index waiting at ``_aside``
    while a save without an atomic swap moves them (or after a writer killed in between)."""
    return target if target.exists() or not _aside(target).is_dir() else _aside(target)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h
_RENAMEAT2 = []  # the libc function, looked up once ([None]: there is none)


def _exchange(first, second):
    """Swaps two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns
    -------
    bool
        False where the system or the file system cannot (nothing was moved).
    """
    if not _RENAMEAT2:
        function = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
        _RENAMEAT2.append(function)
    function = _RENAMEAT2[0]
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, f"{second} could not be swapped with {first}: {os.strerror(code)}")


def _swap_in(staging, target):
    """Puts the complete folder ``staging`` in place of the index folder ``target``.

    Where :func:`_exchange` can, ``target`` never stops existing (a reader always finds a
    complete index there) and the previous index, now at ``staging``, is removed; it carries
    the staging marker from just before the swap, so a writer killed before removing it
    leaves a folder the next save removes. Elsewhere :func:`swap_folder` moves them.
    """
    if target.is_dir() and not target.is_symlink():
        _mark(target)
        try:
            swapped = _exchange(staging, target)
        finally:
            _unmark(target)  # after the swap: the new index (which came with the marker)
        if swapped:
            shutil.rmtree(staging, ignore_errors=True)
            if is_staging(_aside(target)):  # the previous folder of a killed swap_folder
                shutil.rmtree(_aside(target), ignore_errors=True)
            return target
    return swap_folder(staging, target, _aside(target))


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
            try:
                fd = _open_lock_file(lock)
            except OSError:
                if lock.is_symlink():
                    raise OSError(f"the lock file {lock} of the speaker index {folder} is a "
                                  "symbolic link: refused (a lock is never taken through a link; "
                                  "remove it)") from None
                raise
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


@contextlib.contextmanager
def _read_lock(folder, timeout):
    """A shared ``flock`` on the index's lock file: no writer that locks replaces the folder
    until the block ends. Nothing is locked where this process writes the folder already (a
    second flock of the process would wait for its own), or where there is no lock file to
    open for reading (none was ever taken: the caller's reads check the generation anyway)."""
    import fcntl

    lock = _lock_file(folder)
    if str(folder) in _HELD:
        yield False
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        yield False
        return
    try:
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise _locked_error(folder, lock, timeout) from None
                time.sleep(_JITTER.uniform(0.002, 0.02))
        yield True
    finally:
        os.close(fd)  # ends the flock


class IndexFolder:
    """Mixin: a speaker index saved to and loaded from a folder (see the module docstring).

    :class:`speechbrain_mrl.search.index.SpeakerIndex` gives the index itself: its
    constructor, ``__len__``, ``speakers``, ``counts``, the vectors, the FAISS
    first stages and ``_ensure_default_stage`` (build the default stage).
    """

    @staticmethod
    def check_writable(folder):
        """Raises ``OSError`` naming the file when an index cannot be saved at ``folder``.

        Opens (creating it if needed) the lock file a save takes and checks that the
        folder beside it takes new entries; meant to run before audio is embedded.
        """
        target = _resolved(folder)
        _check_folder(target)
        lock = _lock_file(target)
        try:
            os.close(_open_lock_file(lock))
            if not os.access(lock.parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as err:
            what = lock if lock.exists() or lock.is_symlink() else lock.parent
            raise OSError(err.errno, f"the speaker index {target} cannot be saved: {what} is not "
                          f"writable ({err.strerror or err})") from None

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
        >>> from speechbrain_mrl.search.index import SpeakerIndex
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

    def _check_target(self, target, overwrite):
        """Refuses a save that would lose another writer's update (nothing written yet)."""
        _check_folder(target)
        present = target if target.exists() else _aside(target)
        exists = present.is_dir() and any(present.iterdir())
        if exists and overwrite and not (present / "index.json").exists():
            problem = f"{target} exists and is not a speaker index (no index.json)"
            raise hinted(ValueError(f"{problem}: it is not replaced, even with overwrite=True"),
                         f"{problem}: it is not replaced, even with --overwrite")
        if overwrite:
            return
        if str(target) not in self._known:
            if exists:
                problem = f"{target} already holds a speaker index that this one was not loaded from"
                raise hinted(IndexExistsError(
                    f"{problem}: load it and add to it (SpeakerIndex.load), or pass "
                    "overwrite=True to replace it"),
                    f"{problem}: enrol into it, or add --overwrite to replace it")
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
                with full_disk_named(target):
                    stages = self._write_files(staging, generation)
                _swap_in(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._origin = (target, generation)
            self._known[str(target)] = generation
            self._stage_files = {(s["d"], s["kind"]): (target / s["file"],
                                                       _stat_token(target / s["file"]))
                                 for s in stages}
        return given

    def _write_files(self, staging, generation):
        """Writes the index's files into the folder ``staging``; the stage files' entries."""
        import faiss

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
        return stages

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
    def load(cls, folder, model_sha256=None, mmap=True, lock_timeout=60.0):
        """Reads an index folder; refuses one built with another model.

        The vectors are memory-mapped, and so are the saved FAISS first stages
        (``mmap``); a stage file that is missing, unreadable, or does not match
        the vectors is left out with a warning and built again on first use.
        Every other file is checked, and a bad one is named. The files read
        are those of one save: a save by another writer while this reads is
        noticed (the folder and its generation are compared before and after)
        and the folder read again; when saves keep replacing it, the load waits
        for the writers' lock (shared) and reads it once more.

        Arguments
        ---------
        folder : str or os.PathLike
            Written by :meth:`save`.
        model_sha256 : str, optional
            Fingerprint of the model that will embed the queries: must be the
            index's.
        mmap : bool
            Memory-map the FAISS stage files (False: read them into memory).
        lock_timeout : float, optional
            Seconds to wait for a writer when saves keep replacing the folder
            (None: no limit).

        Returns
        -------
        SpeakerIndex

        Raises
        ------
        ValueError
            A missing or bad file (named), or an index of another model.
        IndexLockedError
            Saves kept replacing the folder and a writer held its lock for
            ``lock_timeout`` seconds.
        """
        target = _resolved(folder)
        _check_folder(target)
        for _ in range(_FREE_READS):
            read = cls._read_one_generation(target, model_sha256, mmap)
            if read is not None:
                return _accepted(target, *read)
            time.sleep(_JITTER.uniform(0.002, 0.02))
        with _read_lock(target, lock_timeout):  # saves keep replacing it: wait for the writers
            for _ in range(_LOCKED_READS):
                read = cls._read_one_generation(target, model_sha256, mmap)
                if read is not None:
                    return _accepted(target, *read)
                time.sleep(_JITTER.uniform(0.002, 0.02))
        raise ValueError(f"{target} kept being replaced while it was read "
                         f"({_FREE_READS + _LOCKED_READS} tries): a writer that takes no lock "
                         "saves it without pause?")

    @classmethod
    def _read_one_generation(cls, target, model_sha256, mmap):
        """``(index, stage problems)`` read from one generation of ``target``, or None when a
        save replaced the folder during the reading. An error of a reading that no save
        disturbed is raised."""
        source = _live_folder(target)
        before = _generation_mark(source)
        problems = []
        try:
            index = cls._read(source, model_sha256, mmap, problems)
        except (OSError, ValueError):
            if _live_folder(target) == source and _generation_mark(source) == before:
                raise
            return None
        if _live_folder(target) != source or _generation_mark(source) != before:
            return None
        return index, problems

    @classmethod
    def _read(cls, folder, model_sha256, mmap, problems):
        """One reading of ``folder`` (see :meth:`load`); the stage files that cannot be used
        are appended to ``problems`` (warned about once the reading is kept)."""
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
            block = vectors[start:start + (1 << 16)]
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                rows = (start + np.flatnonzero(bad)[:5]).tolist()
                raise ValueError(f"{where}: rows {rows} (speakers "
                                 f"{[speakers[r] for r in rows]}) hold NaN/Inf")
            zero = ~block.any(axis=1)
            if zero.any():  # a mean of unit embeddings has a direction: all-zero is damage
                rows = (start + np.flatnonzero(zero)[:5]).tolist()
                raise ValueError(f"{where}: rows {rows} (speakers "
                                 f"{[speakers[r] for r in rows]}) are all zero: the file is "
                                 "damaged; enrol those speakers again")
        index.speakers, index.counts = list(speakers), list(counts)
        index._vectors = vectors
        index._read_stages(folder, meta.get("stages", []), mmap, problems)
        return index

    def _read_stages(self, folder, entries, mmap, problems):
        """Reads the saved first stages that match the vectors; appends why the others cannot
        be used to ``problems``."""
        import faiss

        if not isinstance(entries, list):
            problems.append(f"{folder / 'index.json'}: 'stages' is not a list; the first "
                            "stages will be built again")
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
                problems.append(f"{shown}: {problem}; this first stage will be built again "
                                "on first use (and saved by the next save)")
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


def _accepted(target, index, problems):
    """The index a load keeps, known by ``target``; warns about its unusable stage files."""
    for problem in problems:
        warnings.warn(problem, RuntimeWarning, stacklevel=3)
    index._origin = (target, index._origin[1])
    index._known = {str(target): index._origin[1]}
    return index


def _check_folder(folder):
    """Refuses an index path that is a file (or anything else but a folder), naming it (one
    ``stat``: a folder a save replaces at that moment is not taken for a file)."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return
    if not stat.S_ISDIR(mode):
        raise ValueError(f"{folder} is a file, not a speaker index folder: give a folder path "
                         "(the file is left as it is)")


def _read_json(path):
    """The JSON value of a file of an index folder; a ValueError naming it if unreadable."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path} is missing: {path.parent} is not a (complete) speaker index") \
            from err
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON: {err}") from err
