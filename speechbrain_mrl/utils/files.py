"""Files the package writes: complete or not at all, never through a link, as the umask says.

:func:`atomic_output` is the one way a file is written: into an exclusively
created temporary file beside the target (a symlink planted at its name is
never followed), with the permissions the umask gives a new file, renamed over
the target only once complete (a file or link at the target is replaced, not
written through). :func:`staging_folder` and :func:`swap_folder` do the same
for whole folders.

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import glob
import os
import pathlib
import re
import shutil
import tempfile

__all__ = ["atomic_output", "write_text_atomic", "save_torch_atomic", "staging_folder", "remove_stale_staging",
           "swap_folder", "current_umask"]


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
        yield pathlib.Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


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


def staging_folder(final):
    """A new empty hidden folder ``.<name>.<8 random characters>`` beside the folder ``final``,
    with the permissions the umask gives a new folder (not :func:`tempfile.mkdtemp`'s 0o700).

    Fill it, then move it into place with :func:`swap_folder`.

    Example
    -------
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> old = os.umask(0o022)
    >>> staged = staging_folder(root / "index")
    >>> _ = os.umask(old)
    >>> staged.name.startswith(".index."), oct(staged.stat().st_mode & 0o777)
    (True, '0o755')
    >>> shutil.rmtree(root)
    """
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    os.chmod(staged, 0o777 & ~current_umask())
    return staged


def remove_stale_staging(folder):
    """Removes the staging folders of ``folder`` that killed writers left behind.

    Call it where no live writer can be staging ``folder`` (e.g. holding its
    write lock). A staging folder is named as :func:`staging_folder` names it
    (``.<name>.`` and 8 characters of :func:`tempfile.mkdtemp`); a lock file
    and a previous folder waiting at ``.<name>.old`` are not.

    Example
    -------
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> stale, aside = staging_folder(root / "m"), root / ".m.old"
    >>> aside.mkdir()
    >>> remove_stale_staging(root / "m")
    >>> stale.exists(), aside.exists()
    (False, True)
    >>> shutil.rmtree(root)
    """
    name = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}")
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        if name.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def swap_folder(staged, final, aside):
    """Moves the complete folder ``staged`` to ``final``; an existing ``final`` waits at
    ``aside`` until the new one is in place, so a kill never leaves neither of them.

    Raises
    ------
    NotADirectoryError
        ``final`` or ``aside`` is a file or a link, not a folder (nothing is moved).
    """
    staged, final, aside = pathlib.Path(staged), pathlib.Path(final), pathlib.Path(aside)
    for path in (final, aside):
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            raise NotADirectoryError(f"{path} is a file or link, not a folder: nothing was "
                                     f"written over it (move it away to write {final})")
    if not final.exists():
        os.replace(staged, final)
        return final
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    os.replace(staged, final)
    shutil.rmtree(aside)
    return final
