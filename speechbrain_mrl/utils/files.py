"""Files the package writes: complete or not at all, never through a link, as the umask says.

:func:`atomic_output` is the one way a file is written: into an exclusively
created temporary file beside the target (a symlink planted at its name is
never followed), with the permissions the umask gives a new file, renamed over
the target only once complete (a file or link at the target is replaced, not
written through). :func:`staging_folder` and :func:`swap_folder` do the same
for whole folders. A folder this code stages (or moves aside) carries the file
:data:`STAGING_MARKER`, and the cleanup removes only folders that carry it:
never a folder of the user's, however it is named.

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import errno
import glob
import os
import pathlib
import re
import shutil
import stat
import tempfile

__all__ = ["atomic_output", "full_disk_named", "write_text_atomic", "save_torch_atomic",
           "staging_folder", "remove_stale_staging", "swap_folder", "current_umask"]


def current_umask():
    """The process's umask, read without changing it where the system tells it.

    Example
    -------
    >>> old = os.umask(0o027)
    >>> oct(current_umask())
    '0o27'
    >>> _ = os.umask(old)
    """
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = pathlib.Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:"))
                   .split()[1], 8)
    umask = os.umask(0)  # no /proc: set and restore it
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_output(path):
    """A temporary file next to ``path``, renamed to ``path`` when the block completes.

    The temporary file is created exclusively (:func:`tempfile.mkstemp`: a
    symlink planted at its name is never written through) with the
    permissions the umask gives a new file, and removed if the block fails.
    A file or symlink at ``path`` is replaced, never written through, and
    stays as it was until the new file is complete.

    Arguments
    ---------
    path : str or os.PathLike
        The file to write (its folder is created if needed).

    Yields
    ------
    pathlib.Path
        The temporary file (empty) for the block to write.

    Example
    -------
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_output(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("complete")
    >>> [p.name for p in folder.iterdir()], (folder / "a.txt").read_text()
    (['a.txt'], 'complete')
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                               suffix=f".tmp{path.suffix}")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        with full_disk_named(path):
            yield pathlib.Path(tmp)
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def full_disk_named(path):
    """Turns a full disk met while the block writes ``path`` into one ``OSError`` naming it.

    Libraries report a full disk without the file (NumPy: ``896000 requested and
    499680 written``; FAISS: a ``RuntimeError`` from ``fwrite``): an ``OSError`` with
    ``ENOSPC``/``EDQUOT``, or an ``OSError``/``RuntimeError`` raised while less than
    1 MiB is left beside ``path``, becomes ``OSError(ENOSPC)`` naming ``path`` (a file
    or a folder being written) and the space left. Other errors pass unchanged.

    Example
    -------
    >>> with full_disk_named("/tmp/x.npy"):
    ...     raise OSError(errno.ENOSPC, "896000 requested and 499680 written")
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] /tmp/x.npy could not be written: the disk is full, ... bytes free (...)
    """
    try:
        yield
    except (OSError, RuntimeError) as err:
        path = pathlib.Path(path)
        try:
            free = shutil.disk_usage(path if path.is_dir() else path.parent).free
        except OSError:
            free = None
        errno_full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if not errno_full and (free is None or free >= (1 << 20)):
            raise
        left = "" if free is None else f", {free} bytes free"
        raise OSError(errno.ENOSPC, f"{path} could not be written: the disk is full{left} "
                                    f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def write_text_atomic(path, text):
    """Writes ``text`` to ``path`` through :func:`atomic_output`.

    A reader never sees a half-written file, and a killed writer leaves the
    previous version in place.

    Example
    -------
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_text_atomic(folder / "a.txt", "hello").read_text()
    'hello'
    """
    path = pathlib.Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)
    return path


def save_torch_atomic(obj, path):
    """``torch.save`` through :func:`atomic_output`."""
    import torch

    path = pathlib.Path(path)
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return path


#: The file inside every folder :func:`staging_folder` makes and :func:`swap_folder` moves
#: aside (a name no user picks): :func:`remove_stale_staging` and :func:`swap_folder` delete
#: a folder only when it carries it (not in ``__all__``: a name for the callers of this module).
STAGING_MARKER = ".speechbrain-mrl-staging"


def _mark(folder):
    """Puts :data:`STAGING_MARKER` in ``folder`` (never through a link planted at its name)."""
    fd = os.open(pathlib.Path(folder) / STAGING_MARKER,
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666 & ~current_umask())
    with os.fdopen(fd, "w") as f:
        f.write("a folder speechbrain-mrl stages or keeps aside while it saves; a save removes "
                "it once it is stale\n")


def _unmark(folder):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pathlib.Path(folder) / STAGING_MARKER)


def is_staging(path):
    """True for a folder (not a link) holding :data:`STAGING_MARKER`: made by this module.

    Example
    -------
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / ".m.backup_1").mkdir()
    >>> is_staging(staging_folder(root / "m")), is_staging(root / ".m.backup_1")
    (True, False)
    >>> shutil.rmtree(root)
    """
    path = pathlib.Path(path)
    try:
        return (not path.is_symlink() and path.is_dir()
                and stat.S_ISREG(os.lstat(path / STAGING_MARKER).st_mode))
    except OSError:
        return False


def aside_folder(final):
    """Where :func:`swap_folder` keeps the previous ``final`` until the new one is in place:
    ``.<name>.speechbrain-mrl-old`` beside it (a name no user picks; it carries the marker).

    Example
    -------
    >>> aside_folder("/data/index").name
    '.index.speechbrain-mrl-old'
    """
    final = pathlib.Path(final)
    return final.parent / f".{final.name}.speechbrain-mrl-old"


def staging_folder(final):
    """A new empty hidden folder ``.<name>.<8 random characters>`` beside the folder ``final``,
    with the permissions the umask gives a new folder (not :func:`tempfile.mkdtemp`'s 0o700),
    holding only the marker :data:`STAGING_MARKER` (so that a killed writer's folder is known
    for this module's, and removed by :func:`remove_stale_staging`).

    Fill it, then move it into place with :func:`swap_folder` (which removes the marker).

    Example
    -------
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> old = os.umask(0o022)
    >>> staged = staging_folder(root / "index")
    >>> _ = os.umask(old)
    >>> staged.name.startswith(".index."), oct(staged.stat().st_mode & 0o777)
    (True, '0o755')
    >>> [p.name for p in staged.iterdir()] == [STAGING_MARKER]
    True
    >>> shutil.rmtree(root)
    """
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    _mark(staged)
    os.chmod(staged, 0o777 & ~current_umask())
    return staged


def remove_stale_staging(folder):
    """Removes the staging folders of ``folder`` that killed writers left behind.

    Call it where no live writer can be staging ``folder`` (e.g. holding its
    write lock). A staging folder is named as :func:`staging_folder` names it
    (``.<name>.`` and 8 characters of :func:`tempfile.mkdtemp`) and carries
    :data:`STAGING_MARKER`; a folder of the user's (``.<name>.20261207``,
    ``.<name>.backup_1``, ``.<name>.old``), a lock file and the previous folder
    waiting at :func:`aside_folder` are left alone.

    Example
    -------
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> stale, users = staging_folder(root / "m"), [root / ".m.old", root / ".m.20261207"]
    >>> for folder in users:
    ...     folder.mkdir()
    >>> remove_stale_staging(root / "m")
    >>> stale.exists(), [folder.exists() for folder in users]
    (False, [True, True])
    >>> shutil.rmtree(root)
    """
    folder = pathlib.Path(folder)
    name = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}")
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        if name.fullmatch(path.name) and is_staging(path):
            shutil.rmtree(path, ignore_errors=True)


def swap_folder(staged, final, aside):
    """Moves the complete folder ``staged`` to ``final``; an existing ``final`` waits at
    ``aside`` (:func:`aside_folder`) until the new one is in place, so a kill never leaves
    neither of them.

    The folder moved aside carries :data:`STAGING_MARKER` (written into ``final`` just
    before the move), and ``final`` is left without it. A folder already at ``aside`` is
    deleted only when it carries the marker (the previous folder of a killed swap).

    Raises
    ------
    NotADirectoryError
        ``final`` or ``aside`` is a file or a link, not a folder (nothing is moved).
    FileExistsError
        A folder without the marker is at ``aside`` (nothing is moved).
    """
    staged, final, aside = pathlib.Path(staged), pathlib.Path(final), pathlib.Path(aside)
    for path in (final, aside):
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            raise NotADirectoryError(f"{path} is a file or link, not a folder: nothing was "
                                     f"written over it (move it away to write {final})")
    if os.path.lexists(aside) and not is_staging(aside):
        raise FileExistsError(f"{aside} is a folder that speechbrain-mrl did not make: nothing "
                              f"was written over it (move it away to write {final})")
    if not final.exists():
        os.replace(staged, final)
        _unmark(final)
        if is_staging(aside):  # the previous folder of a killed swap: superseded now
            shutil.rmtree(aside, ignore_errors=True)
        return final
    shutil.rmtree(aside, ignore_errors=True)
    _mark(final)
    try:
        os.replace(final, aside)
    except BaseException:
        _unmark(final)
        raise
    os.replace(staged, final)
    _unmark(final)
    shutil.rmtree(aside)
    return final
