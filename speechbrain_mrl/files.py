"""Files the package writes: complete or not at all, never through a link, as the umask says.

:func:`atomic_output` is the one way a file is written: into an exclusively
created temporary file beside the target (a symlink planted at its name is
never followed), with the permissions the umask gives a new file, renamed over
the target only once complete (a file or link at the target is replaced, not
written through). :func:`swap_folder` does the same for whole folders.

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import os
import pathlib
import shutil
import tempfile

__all__ = ["atomic_output", "write_text_atomic", "save_torch_atomic", "swap_folder"]


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
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
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


def swap_folder(staged, final, aside):
    """Moves the complete folder ``staged`` to ``final``; an existing ``final`` waits at
    ``aside`` until the new one is in place, so a kill never leaves neither of them."""
    staged, final, aside = pathlib.Path(staged), pathlib.Path(final), pathlib.Path(aside)
    if not final.exists():
        os.replace(staged, final)
        return final
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    os.replace(staged, final)
    shutil.rmtree(aside)
    return final
