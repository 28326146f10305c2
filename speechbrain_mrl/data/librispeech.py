"""Data preparation for LibriSpeech (the official layout) for speaker verification.

Reads the official layout, ``LibriSpeech/<split>/<reader>/<chapter>/<reader>-<chapter>-<utt>.flac``
with ``LibriSpeech/SPEAKERS.TXT`` (``ID | SEX | SUBSET | MINUTES | NAME``, comment
lines start with ``;``), and writes SpeechBrain CSV manifests
(``ID,duration,wav,start,stop,spk_id``; the ID is the utterance's,
``1272-128104-0000``, plus ``_<n>`` for a segment; ``spk_id`` the reader's):

* ``train.csv``: every utterance of the training splits (any of
  ``train-clean-100``, ``train-clean-360``, ``train-other-500``), optionally
  cut into ``seg_dur``-second segments;
* ``dev.csv`` and ``val_trials.txt``: the validation list, drawn from the
  ``valid_splits`` (default ``dev-clean``);
* ``enrol.csv``, ``test.csv`` and ``test_trials.txt``: the test list, drawn
  from the ``test_splits`` (default ``test-clean``).

The trial lists are seeded and balanced (:func:`~speechbrain_mrl.data.preparation.make_trials`):
target trials pair two different chapters of a reader, so enrolment and test
never share a recording session (nor a recording); non-target trials pair
two readers, of the same sex with ``same_sex_nontarget`` (from
``SPEAKERS.TXT``). With ``trial_seg_dur`` the trial utterances are cut into
fixed-length segments first. Readers of the trial splits never train (the
official splits are speaker-disjoint; a reader found in both is left out of
training and logged), and the validation and test lists must not share a
reader. An utterance found twice (in two readers' or chapters' folders, or
in two splits) is refused before any audio is read. Unreadable (a truncated
FLAC too), empty and too-short files are skipped (the first ten named in
warnings) and listed in ``skipped_files.txt``; the preparation is skipped
when its outputs exist and neither the options nor the input files
(:func:`~speechbrain_mrl.data.preparation.input_fingerprint`) changed.
``prepared_data.png`` charts the rows per reader and the durations.

With ``download=True``, missing splits are downloaded from OpenSLR (resource 12)
with their SHA-256 checked, resumably, and extracted.

Command line::

    python -m speechbrain_mrl.data.librispeech DATA --save_folder OUT \\
        --train_splits train-clean-100 train-clean-360 [--download]

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import os
import pathlib
import shutil

from speechbrain_mrl.data.preparation import (
    SKIPPED_FILE,
    extract_tar,
    input_fingerprint,
    make_rows,
    make_trials,
    repeated_id,
    report_skipped,
    save_opts,
    skip,
    walk_files,
    write_data_chart,
)
from speechbrain_mrl.utils.download import ChecksumError, download, sha256_of
from speechbrain_mrl.utils.files import remove_stale_staging, staging_folder
from speechbrain_mrl.data.manifests import write_manifest, write_trials

logger = logging.getLogger(__name__)

OPENSLR_URL = "https://www.openslr.org/resources/12"
TRAIN_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500")
TRIAL_SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other")
SPEAKERS_FILE = "SPEAKERS.TXT"
#: SHA-256 of the official archives ``<split>.tar.gz``, as listed in the
#: ``_CHECKSUMS`` table of torchaudio 2.11's ``torchaudio/datasets/librispeech.py``.
SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
OUTPUTS = {"train": "train.csv", "dev": "dev.csv", "valid_trials": "val_trials.txt",
           "enrol": "enrol.csv", "test": "test.csv", "test_trials": "test_trials.txt"}


# ----------------------------------------------------------------- layout
def librispeech_root(data_folder):
    """The folder holding the split folders: ``data_folder/LibriSpeech`` or ``data_folder``.

    Example
    -------
    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> librispeech_root(folder) == folder
    True
    >>> (folder / "LibriSpeech").mkdir()
    >>> librispeech_root(folder).name
    'LibriSpeech'
    """
    folder = pathlib.Path(data_folder)
    return folder / "LibriSpeech" if (folder / "LibriSpeech").is_dir() else folder


def read_speakers(path):
    """The readers of a ``SPEAKERS.TXT``: ``{reader: {"sex", "subset", "minutes", "name"}}``.

    Arguments
    ---------
    path : str or os.PathLike
        The file (lines ``ID | SEX | SUBSET | MINUTES | NAME``; lines starting
        with ``;`` are comments; a name may itself hold ``|``).

    Returns
    -------
    dict of str to dict

    Raises
    ------
    ValueError
        Naming the file and line of a line that is not in that format or not
        UTF-8 text, and of a reader listed twice with two sexes (listed twice
        with one sex, the last line is kept).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), SPEAKERS_FILE)
    >>> _ = open(path, "w").write(";ID |SEX| SUBSET |MINUTES| NAME\\n"
    ...                          "14   | F | train-clean-360  | 25.03 | Kristin LeMoine\\n"
    ...                          "60   | M | train-clean-100  | 20.18 | |CBW|Simon\\n")
    >>> read_speakers(path)["60"]
    {'sex': 'M', 'subset': 'train-clean-100', 'minutes': 20.18, 'name': '|CBW|Simon'}
    """
    speakers, first_line = {}, {}
    for n, line in _text_lines(path):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        reader, entry = _speaker_entry(path, n, line)
        if reader in speakers and speakers[reader]["sex"] != entry["sex"]:
            m, other = first_line[reader]
            raise ValueError(f"{path}: reader {reader} is listed twice with two sexes, on line "
                             f"{m} ({other!r}) and line {n} ({line.strip()!r}): keep one line")
        speakers[reader] = entry
        first_line.setdefault(reader, (n, line.strip()))
    return speakers


def _text_lines(path):
    """``(number, line)`` of a UTF-8 text file; a line that is not UTF-8 is named in a ValueError."""
    for n, raw in enumerate(pathlib.Path(path).read_bytes().splitlines(), 1):
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{n}: not UTF-8 text ({raw[err.start]:#04x}, byte "
                             f"{err.start + 1} of the line): save the file as UTF-8") from None


def _speaker_entry(path, n, line):
    """``(reader, {"sex", "subset", "minutes", "name"})`` of line ``n`` of a ``SPEAKERS.TXT``."""
    parts = [p.strip() for p in line.split("|", 4)]
    try:
        if len(parts) != 5 or parts[1] not in ("F", "M"):
            raise ValueError
        return parts[0], {"sex": parts[1], "subset": parts[2], "minutes": float(parts[3]),
                          "name": parts[4]}
    except ValueError:
        raise ValueError(f"{path}:{n}: expected 'ID | SEX (F or M) | SUBSET | MINUTES | "
                         f"NAME', got {line.strip()!r}") from None


def scan_split(split_folder):
    """The utterances of one split: ``{reader: [(chapter, file name, path), ...]}``, sorted.

    Example
    -------
    >>> import tempfile
    >>> split = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ("84/121123/84-121123-0001.flac", "84/121550/84-121550-0000.flac"):
    ...     (split / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     (split / rel).touch()
    >>> [(c, name) for c, name, _ in scan_split(split)["84"]]
    [('121123', '84-121123-0001.flac'), ('121550', '84-121550-0000.flac')]
    """
    split_folder = pathlib.Path(split_folder)
    out = {}
    for path in walk_files(split_folder, (".flac",)):  # as input_fingerprint reads the split
        path = pathlib.Path(path)
        parts = path.relative_to(split_folder).parts
        if len(parts) == 3 and path.suffix == ".flac" and not parts[0].startswith("."):
            out.setdefault(parts[0], []).append((parts[1], path.name, path))
    return {reader: sorted(out[reader], key=lambda item: item[2]) for reader in sorted(out)}


# ----------------------------------------------------------------- download
def download_librispeech(data_folder, splits, url=OPENSLR_URL):
    """Downloads and extracts the official archives of the ``splits`` missing under ``data_folder``.

    Each ``<url>/<split>.tar.gz`` is downloaded into ``data_folder`` (resumed
    after an interruption, its SHA-256 checked against :data:`SHA256`),
    extracted through a temporary folder into ``data_folder/LibriSpeech/<split>``
    (with the archive's ``SPEAKERS.TXT`` and other notes when missing), then
    removed. An archive already in ``data_folder`` is checked and used.

    Arguments
    ---------
    data_folder : str or os.PathLike
        Where ``LibriSpeech/`` is (or goes).
    splits : sequence of str
        Names of :data:`TRAIN_SPLITS` and :data:`TRIAL_SPLITS`.
    url : str
        The folder of the archives (OpenSLR's resource 12, or a mirror).

    Returns
    -------
    pathlib.Path
        ``data_folder/LibriSpeech``.

    Raises
    ------
    ValueError
        For an unknown split.
    OSError
        When a download fails or its checksum differs
        (:class:`~speechbrain_mrl.utils.download.ChecksumError`).
    """
    root = pathlib.Path(data_folder) / "LibriSpeech"
    for split in splits:
        if split not in SHA256:
            raise ValueError(f"unknown LibriSpeech split {split!r}; one of {sorted(SHA256)}")
        if (root / split).is_dir():
            continue
        archive = pathlib.Path(data_folder) / f"{split}.tar.gz"
        if archive.is_file():  # put there by the user: checked as a download is
            if sha256_of(archive) != SHA256[split]:
                raise ChecksumError(f"{archive}: its SHA-256 is not that of the official "
                                    f"{split}.tar.gz ({SHA256[split]}); remove it")
        else:
            logger.info("downloading %s/%s.tar.gz", url, split)
            download(f"{url}/{split}.tar.gz", archive, sha256=SHA256[split], resume=True,
                     hint=f"or put the archive at {archive} yourself")
        _extract_split(archive, root, split)
        archive.unlink()
    return root


def _extract_split(archive, root, split):
    """Extracts ``LibriSpeech/<split>`` (and the notes) of ``archive`` into ``root``.

    Through a fresh private folder beside ``root/<split>`` (made by
    :func:`tempfile.mkdtemp`, never a predictable path a planted link could
    take), removed afterwards, as the one of an extraction killed before
    (:func:`~speechbrain_mrl.utils.files.remove_stale_staging`). A member
    leaving it is refused (:func:`~speechbrain_mrl.data.preparation.extract_tar`).
    """
    remove_stale_staging(root / split)
    tmp = staging_folder(root / split)
    try:
        extract_tar(archive, tmp)
        src = tmp / "LibriSpeech"
        if not (src / split).is_dir() or (src / split).is_symlink():
            raise OSError(f"{archive} holds no LibriSpeech/{split}/ folder")
        for note in src.glob("*.TXT"):
            if note.is_file() and not note.is_symlink() and not (root / note.name).exists():
                os.replace(note, root / note.name)
        os.replace(src / split, root / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------- manifests
def _rows(speakers, min_duration, seg_dur, max_files_per_speaker, skipped):
    """Manifest rows of ``{reader: [(chapter, name, path)]}`` and ``{row ID: chapter}``."""
    rows, chapter_of = [], {}
    for reader in sorted(speakers):
        items = speakers[reader]
        if max_files_per_speaker:
            items = items[:max_files_per_speaker]
        for chapter, name, path in items:
            for row in make_rows(reader, name, path, min_duration, seg_dur, skipped):
                rows.append(row)
                chapter_of[row[0]] = chapter
    return rows, chapter_of


def _trial_list(name, rows, chapter_of, n_trials, seed, sex_of):
    """A seeded trial list among ``rows``, target trials across chapters (:func:`make_trials`)."""
    trials = make_trials(rows, n_trials, seed, session_of=chapter_of, group_of=sex_of)
    labels = {lab for lab, _, _ in trials}
    if labels != {0, 1}:
        missing = "target" if 1 not in labels else "non-target"
        raise ValueError(
            f"no {missing} {name} trial can be drawn from {len(rows)} rows of "
            f"{len({r[5] for r in rows})} readers (target trials need a reader with two "
            "chapters, non-target trials two readers" + (" of the same sex" if sex_of else "")
            + f"): give other {name}_splits")
    return trials


def _merge(found, splits):
    """``{reader: [(chapter, name, path)]}`` of the ``splits`` (:func:`scan_split` results)."""
    speakers = {}
    for split in splits:
        for reader, items in found[split].items():
            speakers.setdefault(reader, []).extend(items)
    return speakers


def prepare_librispeech(
    data_folder,
    save_folder,
    train_splits=("train-clean-100",),
    valid_splits=("dev-clean",),
    test_splits=("test-clean",),
    seg_dur=None,
    min_duration=1.0,
    max_files_per_speaker=None,
    trial_seg_dur=None,
    n_valid_trials=20000,
    n_test_trials=20000,
    same_sex_nontarget=False,
    seed=1234,
    download=False,
    url=OPENSLR_URL,
    skip_prep=False,
):
    """Prepares LibriSpeech manifests and trial lists (see the module's description).

    Arguments
    ---------
    data_folder : str or os.PathLike
        The folder holding ``LibriSpeech/`` (or that folder itself).
    save_folder : str or os.PathLike
        Where the manifests and trial lists go.
    train_splits : sequence of str
        Training splits, any of :data:`TRAIN_SPLITS`.
    valid_splits : sequence of str
        Splits of the validation list (``dev.csv``, ``val_trials.txt``),
        any of :data:`TRIAL_SPLITS`.
    test_splits : sequence of str
        Splits of the test list (``enrol.csv``, ``test.csv``,
        ``test_trials.txt``); empty: no test list.
    seg_dur : float, optional
        Cut training utterances into segments of this many seconds (None:
        one row per utterance; random crops are taken at training time).
    min_duration : float
        Utterances (and last segments) shorter than this (seconds) are skipped.
    max_files_per_speaker : int, optional
        The first utterances of each reader only (training), for quick runs.
    trial_seg_dur : float, optional
        Cut the trial utterances into segments of this many seconds (None:
        whole utterances).
    n_valid_trials, n_test_trials : int
        Sizes of the trial lists (fewer when there are not enough pairs).
    same_sex_nontarget : bool
        Non-target trials pair readers of the same sex only (``SPEAKERS.TXT``).
    seed : int
        Seed of the trial lists (the test list uses ``seed + 1``).
    download : bool
        Download the missing splits (:func:`download_librispeech`).
    url : str
        Where the archives are (OpenSLR by default).
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Paths of the outputs (:data:`OUTPUTS` keys present); after a
        preparation (not skipped), ``n_skipped``: the number of skipped files.

    Raises
    ------
    FileNotFoundError
        When a split is missing and ``download`` is False.
    ValueError
        For a segment length that is not positive, an unknown or repeated
        split, validation and test lists sharing a reader, an utterance found
        twice, a ``SPEAKERS.TXT`` that is not UTF-8, malformed or gives a
        reader two sexes (:func:`read_speakers`), a ``same_sex_nontarget``
        list with a reader absent from ``SPEAKERS.TXT``, a list with no usable
        utterance, or a list without target or non-target trials.
    """
    if skip_prep:
        return {}
    for name, value in (("seg_dur", seg_dur), ("trial_seg_dur", trial_seg_dur)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    train_splits, valid_splits, test_splits = (list(s or []) for s in (train_splits, valid_splits,
                                                                        test_splits))
    _check_splits(train_splits, valid_splits, test_splits)
    splits = train_splits + valid_splits + test_splits
    root = librispeech_root(data_folder)
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing and download:
        root = download_librispeech(data_folder, missing, url)
    elif missing:
        raise FileNotFoundError(
            f"LibriSpeech split(s) {', '.join(missing)} not found under {root} (the official "
            f"layout: LibriSpeech/<split>/<reader>/<chapter>/*.flac); download them with "
            f"download=True (--download), or from {OPENSLR_URL}")
    save_folder = pathlib.Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    opts = {"data_folder": str(root), "train_splits": train_splits, "valid_splits": valid_splits,
            "test_splits": test_splits, "seg_dur": seg_dur, "min_duration": min_duration,
            "max_files_per_speaker": max_files_per_speaker, "trial_seg_dur": trial_seg_dur,
            "n_valid_trials": n_valid_trials, "n_test_trials": n_test_trials,
            "same_sex_nontarget": same_sex_nontarget, "seed": seed}
    names = {k: v for k, v in OUTPUTS.items()
             if test_splits or k not in ("enrol", "test", "test_trials")}
    out = {k: str(save_folder / v) for k, v in names.items()}
    speakers_txt = root / SPEAKERS_FILE
    state = dict(opts, inputs_sha256=input_fingerprint(
        [str(root / s) for s in splits], lists=[speakers_txt if speakers_txt.is_file() else None]))
    if skip(save_folder, list(names.values()), state):
        logger.info("Skipping preparation, completed in previous run.")
        return out
    out["n_skipped"] = _prepare(root, save_folder, **{k: v for k, v in opts.items()
                                                       if k != "data_folder"})
    save_opts(save_folder, state)
    return out


def _check_splits(train_splits, valid_splits, test_splits):
    """Refuses unknown splits, a split used twice and an empty training or validation set."""
    for name, given, allowed in (("train_splits", train_splits, TRAIN_SPLITS),
                                 ("valid_splits", valid_splits, TRIAL_SPLITS),
                                 ("test_splits", test_splits, TRIAL_SPLITS)):
        unknown = [s for s in given if s not in allowed]
        if unknown:
            raise ValueError(f"{name}: unknown split(s) {unknown}; any of {list(allowed)}")
        if name != "test_splits" and not given:
            raise ValueError(f"{name} is empty; give one or more of {list(allowed)}")
    used = train_splits + valid_splits + test_splits
    twice = sorted({s for s in used if used.count(s) > 1})
    if twice:
        raise ValueError(f"split(s) {twice} given twice: each split serves training, validation "
                         "or test, not two of them")


def _prepare(root, save_folder, train_splits, valid_splits, test_splits, seg_dur, min_duration,
             max_files_per_speaker, trial_seg_dur, n_valid_trials, n_test_trials,
             same_sex_nontarget, seed):
    """Writes the outputs of :func:`prepare_librispeech`; returns the number of skipped files."""
    info = read_speakers(root / SPEAKERS_FILE) if (root / SPEAKERS_FILE).is_file() else {}
    if not info:
        logger.warning("%s not found: reader sex and subset unknown", root / SPEAKERS_FILE)
    found = {split: scan_split(root / split) for split in train_splits + valid_splits + test_splits}
    lists = {"valid": _merge(found, valid_splits), "test": _merge(found, test_splits)}
    shared = sorted(set(lists["valid"]) & set(lists["test"]))
    if shared:
        raise ValueError(f"valid_splits {valid_splits} and test_splits {test_splits} share "
                         f"{len(shared)} reader(s), e.g. {shared[:5]}: the lists must be "
                         "speaker-disjoint")
    train = _merge(found, train_splits)
    held_out = sorted(set(train) & (set(lists["valid"]) | set(lists["test"])))
    if held_out:
        logger.warning("%d reader(s) of the trial splits also in the training splits, left out "
                       "of training: %s", len(held_out), held_out[:10])
        train = {r: v for r, v in train.items() if r not in held_out}
    _check_unique_utterances(root, [train, lists["valid"], lists["test"]])
    _check_subsets(info, found)
    skipped = []
    train_rows, _ = _rows(train, min_duration, seg_dur, max_files_per_speaker, skipped)
    if len({r[5] for r in train_rows}) < 2:
        report_skipped(skipped, save_folder)
        raise ValueError(f"{len(train_rows)} training rows of {len({r[5] for r in train_rows})} "
                         f"reader(s) in {train_splits} ({len(skipped)} files skipped, listed in "
                         f"{save_folder / SKIPPED_FILE}): training needs at least 2 readers")
    write_manifest(save_folder / OUTPUTS["train"], train_rows)
    for name, list_splits, n_trials, list_seed in (("valid", valid_splits, n_valid_trials, seed),
                                                   ("test", test_splits, n_test_trials, seed + 1)):
        if not lists[name]:
            if name == "valid":
                raise ValueError(f"no utterance under the valid_splits {valid_splits}")
            continue
        rows, chapter_of = _rows(lists[name], min_duration, trial_seg_dur, None, skipped)
        if not rows:
            report_skipped(skipped, save_folder)
            raise ValueError(f"no usable utterance under the {name}_splits {list_splits} "
                             f"({len(skipped)} files skipped, listed in "
                             f"{save_folder / SKIPPED_FILE})")
        sex_of = None
        if same_sex_nontarget:
            unknown = sorted({r[5] for r in rows} - set(info))
            if unknown:
                raise ValueError(f"same_sex_nontarget needs the sex of every reader: "
                                 f"{len(unknown)} {name} reader(s) not in {root / SPEAKERS_FILE}, "
                                 f"e.g. {unknown[:5]}")
            sex_of = {r[5]: info[r[5]]["sex"] for r in rows}
        trials = _trial_list(name, rows, chapter_of, n_trials, list_seed, sex_of)
        if name == "valid":
            write_manifest(save_folder / OUTPUTS["dev"], rows)
            write_trials(save_folder / OUTPUTS["valid_trials"], trials)
        else:
            by_id = {r[0]: r for r in rows}
            for side, col in (("enrol", 1), ("test", 2)):
                write_manifest(save_folder / OUTPUTS[side],
                               [by_id[i] for i in sorted({t[col] for t in trials})])
            write_trials(save_folder / OUTPUTS["test_trials"], trials)
        logger.info("%s list: %d trials among %d rows of %d readers", name, len(trials), len(rows),
                    len(lists[name]))
    logger.info("training: %d rows of %d readers (%s)", len(train_rows),
                len({r[5] for r in train_rows}), ", ".join(train_splits))
    report_skipped(skipped, save_folder)
    write_data_chart(save_folder, {
        "train": save_folder / OUTPUTS["train"], "validation": save_folder / OUTPUTS["dev"],
        "test": [save_folder / OUTPUTS["enrol"], save_folder / OUTPUTS["test"]]})
    return len(skipped)


def _check_unique_utterances(root, lists):
    """Refuses an utterance found twice in ``lists`` (``{reader: [(chapter, name, path)]}``).

    Its ID, the file name, would name two rows: a copy in another reader's or
    chapter's folder, or a reader's utterance in two splits (overlapping
    copies of the splits), is refused before any audio is read.
    """
    twice = repeated_id((name.rsplit(".", 1)[0], path) for speakers in lists
                        for items in speakers.values() for _, name, path in items)
    if not twice:
        return
    uid, first, second = twice
    a, b = (pathlib.Path(p).relative_to(root).parts for p in (first, second))
    if a[1:] == b[1:]:
        why = (f"reader {a[1]} has it in the splits {a[0]} and {b[0]}, which must not overlap: "
               "remove one copy")
    else:
        why = "an utterance belongs to one reader's chapter folder: remove the misplaced copy"
    raise ValueError(f"utterance {uid} found twice, {first} and {second}: {why}")


def _check_subsets(info, found):
    """Logs readers found under another split than their ``SPEAKERS.TXT`` subset."""
    if not info:
        return
    moved = [(reader, split, info[reader]["subset"]) for split, readers in found.items()
             for reader in readers if reader in info and info[reader]["subset"] != split]
    unknown = sorted({r for readers in found.values() for r in readers} - set(info))
    if moved:
        logger.warning("%d reader(s) found under another split than their %s subset, e.g. %s",
                       len(moved), SPEAKERS_FILE, moved[:5])
    if unknown:
        logger.warning("%d reader(s) not in %s, e.g. %s", len(unknown), SPEAKERS_FILE, unknown[:5])
