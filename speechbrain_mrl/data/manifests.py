"""Manifests and trial lists.

Manifests are SpeechBrain CSV files (``ID,duration,wav,start,stop,spk_id``;
``start``/``stop`` in samples of the file). Trial lists are in the VoxCeleb
format (``<1|0> <enrol> <test>`` per line); their entries are file paths
relative to a data folder, or manifest IDs. A path maps to the ID
``<path without extension>`` (or that with ``/`` replaced by ``--``, the
form used for training rows), see :func:`trial_id_candidates`.

Authors
-------
 * speechbrain-mrl developers
"""
import csv
import io
import logging
import os
import re

import numpy as np

from speechbrain_mrl.utils.files import write_text_atomic

__all__ = ["CSV_HEADER", "read_manifest", "check_audio_files", "write_manifest", "read_trials",
           "write_trials", "trial_id_candidates", "resolve_trials", "read_trial_list"]

logger = logging.getLogger(__name__)

#: Columns of the manifests written by the data preparation.
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]



def read_manifest(csv_path, data_folder=None):
    r"""Manifest rows ``{ID: row}`` (``$data_root`` in paths replaced by ``data_folder``).

    SpeechBrain's CSV format (``load_data_csv``: an ``ID`` column, ``$name`` placeholders); a
    UTF-8 byte-order mark is accepted. A malformed file is a ``ValueError`` naming the file
    and the line: no ``ID`` column, a row of more or fewer fields than the header, an ID
    given twice, a placeholder without a value, text that is not UTF-8.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(path, "w").write("ID,wav\nu1,$data_root/a.wav\nu1,b.wav\n")
    >>> read_manifest(path, "/data")
    Traceback (most recent call last):
     ...
    ValueError: .../m.csv, line 3: ID 'u1' is given twice (first on line 2)
    """
    replacements = {"data_root": str(data_folder)} if data_folder else {}
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            lines = list(csv.reader(f, skipinitialspace=True))
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not lines or "ID" not in lines[0]:
        raise ValueError(f"{csv_path}, line 1: no 'ID' column (header: {','.join(lines[0]) if lines else 'empty'})")
    header, rows, first_line = lines[0], {}, {}
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise ValueError(f"{csv_path}, line {number}: {len(fields)} fields where the header "
                             f"has {len(header)} ({','.join(header)})")
        row = dict(zip(header, fields))
        uid = row.pop("ID")
        if uid in rows:
            raise ValueError(f"{csv_path}, line {number}: ID {uid!r} is given twice (first on "
                             f"line {first_line[uid]})")
        for key, value in row.items():
            try:
                row[key] = _PLACEHOLDER.sub(lambda match: str(replacements[match[1]]), value)
            except KeyError as err:
                raise ValueError(f"{csv_path}, line {number}: {value!r} needs ${err.args[0]} "
                                 "(give the data folder)") from None
        rows[uid], first_line[uid] = row, number
    return rows


#: A ``$name`` placeholder in a manifest value (SpeechBrain's ``load_data_csv`` syntax).
_PLACEHOLDER = re.compile(r"\$([\w.]+)")


def check_audio_files(rows, what="manifest"):
    """Raises ``FileNotFoundError`` listing the rows whose ``wav`` file does not exist.

    Checking every path before any audio is embedded means a long run cannot
    fail at its last batch on a missing file.

    Example
    -------
    >>> check_audio_files({"u1": {"wav": "/no/such.wav"}}, "enrol")
    Traceback (most recent call last):
     ...
    FileNotFoundError: enrol: 1 of 1 audio files do not exist, e.g. u1: /no/such.wav
    """
    missing = [(uid, row["wav"]) for uid, row in rows.items() if not os.path.isfile(row["wav"])]
    if missing:
        shown = ", ".join(f"{uid}: {wav}" for uid, wav in missing[:3])
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(rows)} audio files do not exist, "
                                f"e.g. {shown}")


def write_manifest(path, rows, header=CSV_HEADER):
    """Writes manifest rows (lists in ``header`` order) atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


def read_trials(path):
    """Reads a VoxCeleb-format trial list: ``[(label, enrol, test), ...]``.

    Raises
    ------
    ValueError
        Naming the file and line of a malformed entry, or an empty list.

    Example
    -------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = write_trials(p, [(1, "a/1.wav", "a/2.wav"), (0, "a/1.wav", "b/1.wav")])
    >>> read_trials(p)
    [(1, 'a/1.wav', 'a/2.wav'), (0, 'a/1.wav', 'b/1.wav')]
    """
    trials = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected '<1|0> <enrol> <test>', got {line.strip()!r}")
            trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise ValueError(f"trial list {path} is empty")
    return trials


def write_trials(path, trials):
    """Writes ``(label, enrol, test)`` tuples in the VoxCeleb format (atomically)."""
    return write_text_atomic(path, "".join(f"{lab} {a} {b}\n" for lab, a, b in trials))


def trial_id_candidates(path):
    """Manifest IDs a trial-list entry may have, most likely first.

    Example
    -------
    >>> trial_id_candidates("id10270/5r0dWxy17C8/00001.wav")
    ['id10270/5r0dWxy17C8/00001', 'id10270--5r0dWxy17C8--00001', 'id10270/5r0dWxy17C8/00001.wav']
    """
    path = path.replace("\\", "/")
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    return list(dict.fromkeys([stem, stem.replace("/", "--"), path]))


def resolve_trials(trials, known_ids, source="trial list"):
    """Maps the entries of a trial list to manifest IDs.

    Arguments
    ---------
    trials : list of (int, str, str)
        As :func:`read_trials` returns.
    known_ids : collection of str
        IDs of the manifests that hold the trial utterances.
    source : str
        Name used in error messages (e.g. the trial-list path).

    Returns
    -------
    labels : numpy.ndarray
        ``int8`` labels.
    enrol_ids, test_ids : list of str
        Manifest IDs per trial.
    names : dict of str to str
        ``{ID: entry as written in the trial list}``.

    Raises
    ------
    ValueError
        Naming the entries that are in no manifest (a test on a subset of the
        list would be reported as if it were the whole list), a pair listed as
        both target and non-target, or a list that lacks target or non-target
        trials. Repeated trials are counted and logged.

    Example
    -------
    >>> labels, e, t, names = resolve_trials([(1, "a/1.wav", "a/2.wav"), (0, "a/1.wav", "b/1.wav")],
    ...                                      {"a/1", "a/2", "b--1"})
    >>> labels.tolist(), e, t
    ([1, 0], ['a/1', 'a/1'], ['a/2', 'b--1'])
    """
    known_ids = set(known_ids)
    cache, names, missing = {}, {}, []

    def resolve(entry):
        if entry not in cache:
            cache[entry] = next((c for c in trial_id_candidates(entry) if c in known_ids), None)
            if cache[entry] is None:
                missing.append(entry)
            else:
                names.setdefault(cache[entry], entry)
        return cache[entry]

    labels, enrol, test = [], [], []
    for lab, a, b in trials:
        labels.append(int(lab))
        enrol.append(resolve(a))
        test.append(resolve(b))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{source}: {len(missing)} entries are in no manifest (tried the IDs "
                         f"of trial_id_candidates), e.g. {shown}")
    seen, n_duplicates = {}, 0
    for lab, a, b in zip(labels, enrol, test):
        pair = (a, b) if a <= b else (b, a)
        if pair in seen and seen[pair] != lab:
            raise ValueError(f"{source}: the trial {names[a]!r} {names[b]!r} is listed as both "
                             "target and non-target")
        n_duplicates += pair in seen
        seen[pair] = lab
    if n_duplicates:
        logger.warning("%s: %d of %d trials repeat another trial (counted twice in the metrics)",
                       source, n_duplicates, len(labels))
    labels = np.asarray(labels, dtype=np.int8)
    n_target = int(labels.sum())
    if n_target == 0 or n_target == len(labels):
        raise ValueError(f"{source}: a trial list needs both target and non-target trials, got "
                         f"{n_target} target of {len(labels)}")
    return labels, enrol, test, names


def read_trial_list(manifests, trials_path, data_folder=None):
    """A trial list resolved against manifests, and only the rows its trials use.

    Arguments
    ---------
    manifests : list of str or os.PathLike, or dict
        CSV manifests holding the trial utterances (e.g. enrol and test), or their
        ``{ID: row}`` rows.
    trials_path : str or os.PathLike
        VoxCeleb-format trial list.
    data_folder : str, optional
        Replaces ``$data_root`` in the manifests' paths.

    Returns
    -------
    rows : dict
        ``{ID: row}`` of the utterances the trials use.
    trials : tuple
        ``(labels, enrol_ids, test_ids)`` (see :func:`resolve_trials`).
    names : tuple
        The trial list's own ``(enrol, test)`` names.

    Raises
    ------
    ValueError
        When two manifests give one ID to different audio (another file or
        sample range), naming the ID and both; the same row in both is fine.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name, wav in (("enrol", "a.wav"), ("test", "b.wav")):
    ...     _ = write_manifest(os.path.join(d, f"{name}.csv"), [["u1", 1.0, wav, "", "", "s"]])
    >>> read_trial_list([os.path.join(d, "enrol.csv"), os.path.join(d, "test.csv")], "t.txt")
    Traceback (most recent call last):
     ...
    ValueError: ID 'u1' names different audio in two manifests: a.wav in .../enrol.csv and b.wav in .../test.csv; give each recording its own ID
    """
    rows, source = {}, {}
    if isinstance(manifests, dict):  # rows already read (e.g. from --folder)
        rows, manifests = dict(manifests), []
    for path in manifests:
        for uid, row in read_manifest(path, data_folder).items():
            if uid in rows and _audio_of(rows[uid]) != _audio_of(row):
                raise ValueError(f"ID {uid!r} names different audio in two manifests: "
                                 f"{_describe(rows[uid])} in {source[uid]} and {_describe(row)} "
                                 f"in {path}; give each recording its own ID")
            rows[uid], source[uid] = row, path
    labels, enrol, test, names = resolve_trials(read_trials(trials_path), rows,
                                                source=str(trials_path))
    used = set(enrol) | set(test)
    return {k: v for k, v in rows.items() if k in used}, (labels, enrol, test), names


def _audio_of(row):
    """The audio a manifest row points at: ``(real path, start, stop)``."""
    stop = row.get("stop")
    return os.path.realpath(row["wav"]), int(row.get("start") or 0), int(stop) if stop else None


def _describe(row):
    """A manifest row's file, with its sample range when one is given."""
    start, stop = row.get("start") or "", row.get("stop") or ""
    return row["wav"] + (f" [{start}:{stop}]" if start or stop else "")
