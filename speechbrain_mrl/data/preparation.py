"""Helpers every data preparation shares: scanning speaker folders, manifest rows,
trial lists, and the skip-when-unchanged bookkeeping.

Used by :mod:`speechbrain_mrl.data.voxceleb` and
:mod:`speechbrain_mrl.data.speech_commands`.

Authors
-------
 * speechbrain-mrl developers
"""
import csv
import hashlib
import json
import logging
import os
import pathlib
import posixpath
import random
import tarfile

from speechbrain_mrl.data.audio import AudioError, audio_info, load_audio, signal_problem
from speechbrain_mrl.utils.files import write_text_atomic
from speechbrain_mrl.data.manifests import write_trials

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a")
OPT_FILE = "opts_prepare.json"
SKIPPED_FILE = "skipped_files.txt"
# sub-folders that hold the speaker folders in the official archives
_AUDIO_SUBDIRS = ("wav", "aac", os.path.join("dev", "aac"), os.path.join("dev", "wav"))
_NOT_SPEAKERS = ("splits", "_background_noise_")


# ----------------------------------------------------------------- walking
_WARNED_LINKS = set()  # links to folders already named in a warning (each is named once)


def walk_files(folder, extensions=AUDIO_EXTENSIONS):
    """The files below ``folder`` with one of ``extensions``, each folder read once.

    The tree is read as :func:`speechbrain_mrl.data.sources.folder_rows`
    (``--folder``) reads it: ``folder`` itself may be a link, but below it a
    link to a folder is never followed. Its target is either inside the tree,
    read once under its own name, or outside it; and a loop of links (``ln -s
    ..``) cannot make the walk run forever. Each link left out is named in a
    logged warning (once per process). A link to a file is read as the file.
    A folder reached twice (a bind mount) is read once: folders are tracked
    by device and inode.

    Arguments
    ---------
    folder : str or os.PathLike
        The top of the tree.
    extensions : sequence of str
        File extensions to keep (case-insensitive).

    Returns
    -------
    list of str
        The files' paths below ``folder`` (``os.path.join`` of ``folder`` and
        the names; links not resolved), sorted.

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "s1" / "v").mkdir(parents=True)
    >>> (root / "s1" / "v" / "a.wav").touch()
    >>> (root / "s1" / "v" / "loop").symlink_to("..")
    >>> [os.path.relpath(p, root) for p in walk_files(root)]
    ['s1/v/a.wav']
    """
    top = os.fspath(folder)
    exts = tuple(e.lower() for e in extensions)
    files, links, seen = [], [], set()
    pending = [top]
    while pending:
        current = pending.pop()
        try:
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable or gone: left out, as os.walk does
            continue
        for entry in entries:
            path = os.path.join(current, entry.name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(path)
                elif entry.name.lower().endswith(exts) and entry.is_file():
                    files.append(path)
            except OSError:
                continue
    new = sorted(p for p in links if p not in _WARNED_LINKS)
    if new:
        _WARNED_LINKS.update(new)
        logger.warning("%s: %d link(s) to folders not followed (a linked folder inside the data "
                       "folder is read under its own name; none outside it, none twice): %s%s",
                       top, len(new), ", ".join(new[:20]),
                       f" and {len(new) - 20} more" if len(new) > 20 else "")
    return sorted(files)


# ----------------------------------------------------------------- archives
class _RefusedMember(tarfile.FilterError):
    def __init__(self, tarinfo, why):
        super().__init__(f"{why}")
        self.tarinfo = tarinfo


def _outside(path):
    """True for a normalised relative POSIX path that leaves its folder."""
    return path == ".." or path.startswith("../")


def _escape_of(member):
    """Why ``member`` would leave the folder it is extracted into (None: it stays inside)."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or os.path.isabs(member.name):
        return "an absolute path"
    if ".." in name.split("/"):
        return "'..' in its path"
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or os.path.isabs(member.linkname):
            return f"a link to the absolute path {member.linkname!r}"
        # a symlink's target is relative to its folder, a hard link's to the archive's top
        base = posixpath.dirname(name) if member.issym() else ""
        if _outside(posixpath.normpath(posixpath.join(base, target))):
            return f"a link out of the folder (to {member.linkname!r})"
    return None


def _member_filter(member, dest):
    why = _escape_of(member)
    if why:
        raise _RefusedMember(member, why)
    return tarfile.data_filter(member, dest)


def extract_tar(archive, folder):
    """Extracts ``archive`` into ``folder`` (new and empty: see below), refusing any member
    that would leave it.

    A member with an absolute path or ``..`` in its path, or a link to an
    absolute path or out of ``folder``, stops the extraction with a one-line
    :class:`OSError` naming it; then tarfile's ``"data"`` filter checks each
    member as it is written (no device files, no link leaving the folder
    through other links). Give a fresh private folder (e.g.
    :func:`speechbrain_mrl.utils.files.staging_folder`), never a predictable
    path, and delete it when this raises: what was extracted before the
    refused member is left there.

    Arguments
    ---------
    archive : str or os.PathLike
        A tar archive (compressed or not).
    folder : str or os.PathLike
        Where its members go.

    Raises
    ------
    OSError
        A member that would leave ``folder`` (named, in one line).

    Example
    -------
    >>> import io, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with tarfile.open(root / "a.tar", "w") as tar:
    ...     info = tarfile.TarInfo("../up.txt")
    ...     tar.addfile(info, io.BytesIO(b""))
    >>> try:
    ...     extract_tar(root / "a.tar", tempfile.mkdtemp(dir=root))
    ... except OSError as err:
    ...     print(str(err).split(": ", 1)[1])
    archive member '../up.txt' refused ('..' in its path): the archive is not used
    """
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(folder, filter=_member_filter)
        except tarfile.FilterError as err:
            why = " ".join(str(err).split())
            raise OSError(f"{archive}: archive member {err.tarinfo.name!r} refused ({why}): "
                          "the archive is not used") from None


# ----------------------------------------------------------------- scanning
def audio_root(folder):
    """The folder holding the speaker folders (``folder`` or its wav/aac sub-folder).

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "dev" / "aac").mkdir(parents=True)
    >>> audio_root(root).relative_to(root).as_posix()
    'dev/aac'
    """
    folder = pathlib.Path(folder)
    for sub in _AUDIO_SUBDIRS:
        if (folder / sub).is_dir():
            return folder / sub
    return folder


def scan_speakers(folder, extensions=AUDIO_EXTENSIONS):
    """Lists the audio files of every speaker folder under ``folder``.

    Arguments
    ---------
    folder : str or os.PathLike
        A data folder (see :func:`audio_root`).
    extensions : sequence of str
        Audio file extensions to look for (case-insensitive).

    Returns
    -------
    dict of str to list of (str, pathlib.Path)
        ``{spk_id: [(relative_path, absolute_path), ...]}``, sorted;
        ``relative_path`` is relative to :func:`audio_root` (as in trial lists).
        The tree is read by :func:`walk_files`: a link to a folder (a
        speaker folder too) is not followed, but named in a warning.

    Raises
    ------
    FileNotFoundError
        When ``folder`` does not exist.

    Example
    -------
    >>> import tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ("id2/v/1.wav", "id1/v/2.flac", "id1/v/notes.txt"):
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / rel).touch()
    >>> {spk: [rel for rel, _ in items] for spk, items in scan_speakers(root).items()}
    {'id1': ['id1/v/2.flac'], 'id2': ['id2/v/1.wav']}
    """
    root = audio_root(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    out = {}
    for path in walk_files(root, extensions):
        path = pathlib.Path(path)
        rel = path.relative_to(root)
        spk = rel.parts[0]
        if len(rel.parts) < 2 or spk.startswith(".") or spk in _NOT_SPEAKERS:
            continue
        out.setdefault(spk, []).append((rel.as_posix(), path))
    return {spk: sorted(out[spk], key=lambda item: item[1]) for spk in sorted(out)}


# ----------------------------------------------------------------- manifest rows
def make_rows(spk_id, rel, path, min_duration, seg_dur=None, skipped=None):
    """Manifest rows of one file: the whole file, or ``seg_dur``-second segments.

    A file that cannot be read, is empty, shorter than ``min_duration``
    seconds, silent or holds NaN/Inf samples (its mono mix, as embedded:
    :func:`~speechbrain_mrl.data.audio.signal_problem`) gives no row; the reason
    is appended to ``skipped``.

    Arguments
    ---------
    spk_id : str
        Speaker of the file.
    rel : str
        Path relative to the data folder; the row ID is it without extension,
        ``/`` replaced by ``--`` (and ``_<n>`` appended for segments).
    path : str or os.PathLike
        The audio file.
    min_duration : float
        Shortest file (and last segment) kept, in seconds.
    seg_dur : float, optional
        Segment length in seconds (None: one row for the whole file).
    skipped : list, optional
        Receives ``(path, reason)`` of a file that gives no row.

    Returns
    -------
    list of list
        ``[ID, duration, wav, start, stop, spk_id]`` rows.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> p = os.path.join(tempfile.mkdtemp(), "1.wav")
    >>> sf.write(p, 0.1 * np.sin(np.arange(20000, dtype="float32")), 16000)
    >>> for row in make_rows("id1", "id1/v/1.wav", p, 0.2, seg_dur=0.5):
    ...     print(*row[:2], *row[3:])
    id1--v--1_0 0.500 0 8000 id1
    id1--v--1_1 0.500 8000 16000 id1
    id1--v--1_2 0.250 16000 20000 id1
    >>> skipped = []
    >>> make_rows("id1", "id1/v/1.wav", p, 2.0, skipped=skipped), skipped[0][1]
    ([], 'too short (1.250 s < 2.0 s)')
    """
    reason, frames, sr = _check_file(path, min_duration)
    if reason:
        if skipped is not None:
            skipped.append((str(path), reason))
        return []
    base_id = rel.rsplit(".", 1)[0].replace("/", "--")
    duration = frames / sr
    if not seg_dur or duration <= seg_dur:
        return [[base_id, f"{duration:.3f}", str(path), 0, frames, spk_id]]
    seg = int(round(seg_dur * sr))
    bounds = [(i * seg, (i + 1) * seg) for i in range(frames // seg)]
    if (frames - len(bounds) * seg) / sr >= min_duration:
        bounds.append((len(bounds) * seg, frames))
    return [[f"{base_id}_{i}", f"{(stop - start) / sr:.3f}", str(path), start, stop, spk_id]
            for i, (start, stop) in enumerate(bounds)]


def _check_file(path, min_duration):
    """``(reason, frames, sample_rate)``; ``reason`` is None for a usable file.

    A file whose header reads but whose samples do not decode (a truncated
    FLAC) is unreadable too.
    """
    try:
        frames, sr = audio_info(path)
        if frames <= 0:
            return "empty", frames, sr
        if frames / sr < min_duration:
            return f"too short ({frames / sr:.3f} s < {min_duration} s)", frames, sr
        return signal_problem(load_audio(path)[0].mean(dim=1)), frames, sr
    except AudioError as err:
        cause = err.__cause__ or err
        return f"unreadable ({type(cause).__name__}: {cause})", 0, 0


def repeated_id(pairs):
    """The first ID given twice among ``(ID, path)`` pairs: ``(ID, first path, second path)``.

    Arguments
    ---------
    pairs : iterable of (str, str or os.PathLike)
        Row IDs (or utterance IDs) and the files they name.

    Returns
    -------
    tuple or None
        None when every ID is given once.

    Example
    -------
    >>> repeated_id([("a", "x/a.wav"), ("b", "x/b.wav"), ("a", "y/a.flac")])
    ('a', 'x/a.wav', 'y/a.flac')
    """
    first = {}
    for uid, path in pairs:
        if uid in first:
            return uid, first[uid], path
        first[uid] = path
    return None


def check_unique_ids(rows, data):
    """Refuses manifest rows of which two share an ID (a one-line :class:`ValueError`).

    Arguments
    ---------
    rows : iterable of list
        Manifest rows (``ID, duration, wav, ...``).
    data : str
        What was read, named in the error (e.g. the data folders).

    Raises
    ------
    ValueError
        Naming the ID and both files.
    """
    twice = repeated_id((row[0], row[2]) for row in rows)
    if twice:
        uid, first, second = twice
        raise ValueError(f"utterance ID {uid!r} is given to two files under {data}, {first} and "
                         f"{second} (a folder given twice, a file copied into two folders or "
                         "one recording in two formats): remove one of them")


def speaker_of(rel):
    """Speaker id of a trial-list path (its first folder).

    Example
    -------
    >>> speaker_of("id10270/5r0dWxy17C8/00001.wav")
    'id10270'
    """
    return rel.replace("\\", "/").split("/")[0]


def trial_id(rel):
    """The manifest ID of a trial-list path (the path without extension).

    Example
    -------
    >>> trial_id("id10270/5r0dWxy17C8/00001.wav")
    'id10270/5r0dWxy17C8/00001'
    """
    return rel.rsplit(".", 1)[0]


def trial_rows(rel_paths, roots, skipped):
    """Manifest rows of trial-list files, with :func:`trial_id` IDs.

    Arguments
    ---------
    rel_paths : iterable of str
        Trial-list paths, relative to one of ``roots``.
    roots : list of pathlib.Path
        Folders searched in order.
    skipped : list
        Receives ``(path, reason)`` of missing and unusable files.

    Returns
    -------
    dict of str to list
        ``{rel: row}`` for the usable files, in the order of ``rel_paths``.
    """
    out = {}
    for rel in rel_paths:
        path = next((r / rel for r in roots if (r / rel).is_file()), None)
        if path is None:
            skipped.append((rel, "missing"))
            continue
        rows = make_rows(speaker_of(rel), rel, path, 0.0, None, skipped)
        if rows:
            out[rel] = [trial_id(rel)] + rows[0][1:]
    return out


# ----------------------------------------------------------------- trial lists
def make_trials(rows, n_trials, seed=1234, session_of=None, group_of=None):
    """A balanced, seeded trial list among manifest rows (half target trials).

    Arguments
    ---------
    rows : list
        Manifest rows (``ID, duration, wav, start, stop, spk_id``).
    n_trials : int
        Wanted number of trials (fewer if there are not enough distinct pairs).
    seed : int
        Random seed.
    session_of : dict of str to str, optional
        ``{ID: recording session}`` (e.g. a LibriSpeech chapter): target
        trials then pair rows of two different sessions of a speaker, so
        enrolment and test never share a recording (speakers with one
        session give no target trial).
    group_of : dict of str to str, optional
        ``{spk_id: group}`` (e.g. the sex): non-target trials then pair
        speakers of the same group only.

    Returns
    -------
    list of (int, str, str)
        ``(label, enrol_id, test_id)`` with manifest IDs, no repeated pair.

    Example
    -------
    >>> rows = [[f"s{s}_{u}", 1.0, "x", 0, 1, f"s{s}"] for s in range(3) for u in range(2)]
    >>> trials = make_trials(rows, 6, seed=0)
    >>> len(trials), sum(lab for lab, _, _ in trials)
    (6, 3)
    >>> sessions = {r[0]: r[0][-1] for r in rows}  # two sessions of each speaker, one row each
    >>> trials = make_trials(rows, 6, seed=0, session_of=sessions, group_of={"s0": "F"})
    >>> all(sessions[a] != sessions[b] for lab, a, b in trials if lab)
    True
    >>> sorted({(a[:2], b[:2]) for lab, a, b in trials if not lab})  # s1, s2: group None
    [('s1', 's2'), ('s2', 's1')]
    """
    rng = random.Random(seed)
    by_spk = {}
    for r in rows:
        by_spk.setdefault(r[5], []).append(r[0])
    ids = [r[0] for r in rows]
    spk_of = {r[0]: r[5] for r in rows}
    if session_of is None:
        multi = [s for s in sorted(by_spk) if len(by_spk[s]) >= 2]
        n_pos_max = sum(len(by_spk[s]) * (len(by_spk[s]) - 1) // 2 for s in multi)
    else:
        sessions = {}
        for s, spk_ids in by_spk.items():
            for i in spk_ids:
                sessions.setdefault(s, {}).setdefault(session_of[i], []).append(i)
        multi = [s for s in sorted(sessions) if len(sessions[s]) >= 2]
        n_pos_max = sum((len(by_spk[s]) ** 2 - sum(len(v) ** 2 for v in sessions[s].values())) // 2
                        for s in multi)
    n_pos = min(n_trials // 2, n_pos_max)
    n_neg = min(n_trials - n_pos if n_pos < n_trials // 2 else n_trials // 2,
                len(ids) * (len(ids) - 1) // 2 - n_pos_max)

    def target():
        spk = rng.choice(multi)
        if session_of is None:
            return rng.sample(by_spk[spk], 2)
        a, b = rng.sample(sorted(sessions[spk]), 2)
        return rng.choice(sessions[spk][a]), rng.choice(sessions[spk][b])

    def nontarget():
        a, b = rng.sample(ids, 2)
        if spk_of[a] == spk_of[b]:
            return None
        if group_of is not None and group_of.get(spk_of[a]) != group_of.get(spk_of[b]):
            return None
        return a, b

    seen = set()
    max_tries = 50 * n_trials + 100
    trials = [(1, a, b) for a, b in _distinct_pairs(target, n_pos, max_tries, seen)]
    trials += [(0, a, b) for a, b in _distinct_pairs(nontarget, n_neg, max_tries, seen)]
    rng.shuffle(trials)
    return trials


def _distinct_pairs(draw, wanted, max_tries, seen):
    """Up to ``wanted`` pairs from ``draw()`` (None: rejected) not in ``seen`` (updated)."""
    pairs = []
    for _ in range(max_tries):
        if len(pairs) >= wanted:
            break
        pair = draw()
        if pair is None:
            continue
        key = tuple(sorted(pair))
        if key not in seen:
            seen.add(key)
            pairs.append(tuple(pair))
    return pairs


def write_valid_trials(path, dev_csv, n_trials, seed):
    """Writes :func:`make_trials` of the rows of ``dev_csv`` to ``path`` unless it exists.

    Returns
    -------
    bool
        Whether the list was written.
    """
    if os.path.isfile(path):
        return False
    with open(dev_csv, newline="") as f:
        rows = list(csv.reader(f))[1:]
    trials = make_trials(rows, n_trials, seed)
    labels = {lab for lab, _, _ in trials}
    if labels != {0, 1}:
        raise ValueError(
            f"no {'target' if 1 not in labels else 'non-target'} validation trial can be drawn "
            f"from {dev_csv} ({len(rows)} rows of {len({r[5] for r in rows})} speakers; target "
            "trials need 2 files of a speaker, non-target trials 2 speakers): change split_ratio "
            "or dev_split")
    write_trials(path, trials)
    return True


# ----------------------------------------------------------------- skipping
def input_fingerprint(folders, extensions=AUDIO_EXTENSIONS, lists=()):
    """SHA-256 of what a preparation reads: the audio files' paths, sizes and times, and lists.

    Recorded with the manifests, so that a changed trial list or an added,
    removed or rewritten audio file makes the next run prepare again.

    Arguments
    ---------
    folders : list of str
        Data folders (searched recursively for ``extensions`` by :func:`walk_files`,
        as the preparations read them).
    extensions : sequence of str
        Audio file extensions.
    lists : sequence of str or None
        Other files read (e.g. trial lists), hashed by content; None entries are ignored.

    Returns
    -------
    str

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> before = input_fingerprint([d])
    >>> _ = open(os.path.join(d, "a.wav"), "wb").write(b"x")
    >>> before == input_fingerprint([d])
    False
    """
    digest = hashlib.sha256()
    for folder in folders:
        for path in walk_files(folder, extensions):  # as scan_speakers sees them
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    for path in lists:
        if path is not None:
            digest.update(pathlib.Path(path).read_bytes())
    return digest.hexdigest()


def skip(save_folder, files, opts):
    """True when every file exists and ``opts`` equal the saved options.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> save_opts(folder, {"seed": 1, "splits": ("train",)})
    >>> skip(folder, [OPT_FILE], {"seed": 1, "splits": ["train"]}), skip(folder, [], {"seed": 2})
    (True, False)
    """
    opt_path = pathlib.Path(save_folder) / OPT_FILE
    if not all(pathlib.Path(save_folder, f).is_file() for f in files) or not opt_path.is_file():
        return False
    try:
        with open(opt_path) as f:
            return json.load(f) == json.loads(json.dumps(opts))
    except (OSError, ValueError):
        return False


def save_opts(save_folder, opts):
    """Saves the options used (compared by :func:`skip` next time)."""
    write_text_atomic(pathlib.Path(save_folder) / OPT_FILE, json.dumps(opts, indent=1, sort_keys=True))


def report_skipped(skipped, save_folder):
    """Logs/prints the skipped files and writes them to ``skipped_files.txt``."""
    path = write_text_atomic(pathlib.Path(save_folder) / SKIPPED_FILE,
                             "".join(f"{p}\t{why}\n" for p, why in skipped))
    if skipped:
        msg = f"skipped {len(skipped)} unreadable, empty or too-short file(s), listed in {path}"
        for p, why in skipped[:10]:
            logger.warning("skipped %s: %s", p, why)
    else:
        msg = "skipped 0 files"
    logger.info(msg)
    print(msg)


# ----------------------------------------------------------------- train/dev split


# ----------------------------------------------------------------- chart
def write_data_chart(save_folder, manifests):
    """Draws rows per speaker and durations of the prepared ``manifests`` into ``prepared_data.png``.

    Arguments
    ---------
    save_folder : str or os.PathLike
        The preparation's folder.
    manifests : dict of str to (str or list of str)
        ``{name: csv path(s)}`` (see :func:`speechbrain_mrl.data.charts.plot_manifests`).

    Returns
    -------
    pathlib.Path
    """
    from speechbrain_mrl.data.charts import DATA_CHART_FILE, plot_manifests

    return pathlib.Path(plot_manifests(manifests, pathlib.Path(save_folder) / DATA_CHART_FILE))
