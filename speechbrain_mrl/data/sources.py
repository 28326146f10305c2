"""The one reader of audio sources: manifest, folder, files or file list -> manifest rows.

Every command that takes audio (extraction, enrolment, identification,
calibration, verification) reads it with :func:`read_sources`, from exactly
one of:

- a CSV manifest (``--csv``): ``ID, wav`` and optionally ``start, stop``
  (samples), ``duration`` (seconds) and ``spk_id``; its IDs are kept;
- a folder (``--folder``): every audio file below it, searched recursively.
  The ID is the file's path relative to the folder, extension included
  (``spk1/a.flac`` and ``spk1/a.wav`` are two utterances, as in VoxCeleb trial
  lists); the speaker is the first sub-folder (``spk1``), so both the flat
  ``<speaker>/<utt>.flac`` and the VoxCeleb ``<speaker>/<video>/<utt>.wav``
  layouts work;
- files (``--files``): the ID is the path as given;
- a file list (``--file_list``): a text file with one audio path per line (as
  given, relative to the working directory; blank lines and lines starting
  with ``#`` are ignored); the ID is the path.

IDs are unique and stable: the same source gives the same IDs, and two files
never share one (a path given twice is an error).

File names must be UTF-8 (IDs, speakers and every output are UTF-8 text): a
source holding a name that is not (e.g. a Latin-1 ``é``, the byte 0xE9, which
Python keeps as a surrogate escape) is refused before any audio is read,
naming the file by its bytes.

Authors
-------
 * speechbrain-mrl developers
"""
import os
import pathlib

from speechbrain_mrl.data.audio import AUDIO_EXTENSIONS, AudioError, audio_info
from speechbrain_mrl.data.manifests import read_manifest

__all__ = ["read_sources", "folder_rows"]


def folder_rows(folder):
    """Rows of every audio file below ``folder``: ``{relative path: {"wav", "spk_id"}}``.

    Arguments
    ---------
    folder : str or os.PathLike
        Searched recursively; hidden files and folders are left out.

    Returns
    -------
    dict

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ("s1/a.flac", "s1/a.wav", "s2/v1/b.wav", "top.wav", "s2/notes.txt"):
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / rel).touch()
    >>> {uid: row["spk_id"] for uid, row in folder_rows(root).items()}
    {'s1/a.flac': 's1', 's1/a.wav': 's1', 's2/v1/b.wav': 's2', 'top.wav': ''}
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder not found: {folder}")
    rows = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()
                and not any(part.startswith(".") for part in rel.parts)):
            rows[rel.as_posix()] = {"wav": str(path),
                                    "spk_id": rel.parts[0] if len(rel.parts) > 1 else ""}
    return rows


def _file_rows(paths, what):
    rows = {}
    for path in paths:
        path = str(path)
        if path in rows:
            raise ValueError(f"{what}: {path} is given twice")
        rows[path] = {"wav": path}
    return rows


def _list_paths(file_list):
    path = pathlib.Path(file_list)
    if not path.is_file():
        raise FileNotFoundError(f"file list not found: {file_list}")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")  # names as the disk has them
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _not_utf8(text):
    """Whether ``text`` holds surrogate escapes: bytes of a name that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse_names_not_utf8(rows, source):
    """Refuses rows whose ID, file or speaker is not UTF-8, naming the first file's bytes."""
    bad = [row["wav"] for uid, row in rows.items()
           if any(_not_utf8(str(v)) for v in (uid, row["wav"], row.get("spk_id", "")))]
    if bad:
        shown = os.fsencode(source).decode("utf-8", "backslashreplace")
        raise ValueError(f"{shown}: {len(bad)} of {len(rows)} audio file names are not UTF-8, "
                         f"e.g. {os.fsencode(bad[0])!r}: rename them to UTF-8 (e.g. convmv -f "
                         "latin1 -t utf-8); nothing was embedded")


def read_sources(csv=None, folder=None, files=None, file_list=None, data_folder=None,
                 need_speakers=False):
    """Manifest rows of exactly one audio source (see the module docstring).

    Arguments
    ---------
    csv : str or os.PathLike, optional
        A CSV manifest.
    folder : str or os.PathLike, optional
        A folder (every audio file below it; speaker: first sub-folder).
    files : list of str, optional
        Audio files.
    file_list : str or os.PathLike, optional
        A text file with one audio path per line.
    data_folder : str, optional
        Replaces ``$data_root`` in a manifest's paths.
    need_speakers : bool
        Every row must have a speaker (``spk_id`` column, or a sub-folder).

    Returns
    -------
    dict
        ``{ID: {"wav", "start", "stop", "duration", "spk_id", ...}}`` in the
        source's order; ``duration`` (seconds) is read from the file's header
        where the manifest does not give it (0 for a file that cannot be read,
        which the embedding path then reports).

    Raises
    ------
    ValueError
        Not exactly one source, no audio, an ID given twice, a file name
        that is not UTF-8, or a missing speaker with ``need_speakers``.
    FileNotFoundError
        A missing manifest, folder or file list.

    Example
    -------
    >>> import tempfile
    >>> import numpy as np, soundfile as sf
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "s1").mkdir()
    >>> sf.write(root / "s1" / "a.wav", np.ones(8000, dtype="float32"), 16000)
    >>> rows = read_sources(folder=root, need_speakers=True)
    >>> rows["s1/a.wav"]["spk_id"], rows["s1/a.wav"]["duration"]
    ('s1', 0.5)
    """
    given = {name: value for name, value in
             (("--csv", csv), ("--folder", folder), ("--files", files), ("--file_list", file_list))
             if value not in (None, [], ())}
    if len(given) != 1:
        raise ValueError("give exactly one audio source: --csv, --folder, --files or --file_list"
                         + (f" (got {', '.join(given)})" if given else ""))
    if csv is not None:
        if not pathlib.Path(csv).is_file():
            raise FileNotFoundError(f"manifest not found: {csv}")
        rows = read_manifest(csv, data_folder)
        if rows and "wav" not in next(iter(rows.values())):
            raise ValueError(f"{csv}: a manifest needs the columns ID and wav")
    elif folder is not None:
        rows = folder_rows(folder)
    elif files:
        rows = _file_rows(files, "--files")
    else:
        rows = _file_rows(_list_paths(file_list), str(file_list))
    source = next(iter(given.values()))
    if not rows:
        raise ValueError(f"no audio in {source}")
    _refuse_names_not_utf8(rows, "--files" if files else source)
    if need_speakers:
        missing = [uid for uid, row in rows.items() if not row.get("spk_id")]
        if missing:
            raise ValueError(f"{source}: no speaker for {len(missing)} files, e.g. {missing[:3]} "
                             "(give a spk_id column, or put each speaker's files in a sub-folder)")
    for row in rows.values():
        if not row.get("duration"):
            try:
                frames, rate = audio_info(row["wav"])
                row["duration"] = frames / rate
            except (AudioError, OSError):
                row["duration"] = 0.0
        else:
            row["duration"] = float(row["duration"])
    return rows
