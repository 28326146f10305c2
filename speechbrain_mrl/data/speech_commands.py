"""Data preparation for the end-to-end demo (real speech, CPU-sized).

Speaker verification data from the Speech Commands v0.02 *test* set regrouped
by speaker (``<data_folder>/speech_commands/<speaker>/<word>_<n>.<ext>``),
plus, optionally, LibriSpeech excerpts as extra training speakers
(``<data_folder>/librispeech_train_clean_100/<reader>/<utt>.flac``, cut into
``libri_seg_dur``-second segments), of which ``n_long_val_readers`` readers
are held out of training for a long-utterance validation list.

With a local copy holding ``speech_commands/splits/`` the fixed speaker split
(``train_speakers.txt``/``test_speakers.txt``) and trial list
(``trials_test.txt``) are used. Without a local copy (``download=True``) the
official archive ``speech_commands_test_set_v0.02.tar.gz`` is downloaded
(over HTTPS, its SHA-256 checked), regrouped by speaker, and -- as the fixed
split and trials are not part of the archive -- a seeded speaker split (75 %
train / 25 % test, seed ``seed``) and a balanced 20,000-trial list are
generated and written to ``splits/``, so numbers are not comparable with the
ones obtained on the fixed split.

Outputs in ``save_folder``: ``train.csv`` (train speakers minus the
validation speakers, plus LibriSpeech segments), ``dev.csv`` (all clips of
``n_val_speakers`` held-out train speakers, at most half of them and at least
two: fewer than four train speakers are refused) with ``val_trials.txt`` (a
seeded trial list among them, used for validation EER and threshold calibration),
``enrol.csv``/``test.csv`` and ``trials_test.txt`` (the test trial list with
absolute-path-free IDs as in the local copy).

With LibriSpeech, ``dev_long.csv`` holds the held-out readers' utterances cut
into disjoint ``long_val_segment_dur``-second segments (readers with at least
three of them), and ``val_long_trials.txt`` every same-reader pair of
different segments (enrolment and test never share audio) plus cross-reader
pairs: the long read speech validation list beside the 1-s clip list. Its
readers are never in ``train.csv``.

Command line::

    python -m speechbrain_mrl.data.speech_commands --data_folder DATA --save_folder OUT [--download]

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import os
import pathlib
import random
import shutil

from speechbrain_mrl.utils.download import ChecksumError, download, sha256_of
from speechbrain_mrl.utils.files import (aside_folder, remove_stale_staging, staging_folder,
                                         swap_folder, write_text_atomic)
from speechbrain_mrl.data.manifests import read_trials, write_manifest, write_trials
from speechbrain_mrl.data.preparation import (
    AUDIO_EXTENSIONS,
    SKIPPED_FILE,
    check_unique_ids,
    extract_tar,
    input_fingerprint,
    make_rows,
    make_trials,
    report_skipped,
    save_opts,
    scan_speakers,
    skip,
    speaker_of,
    trial_id,
    trial_rows,
    write_data_chart,
)

logger = logging.getLogger(__name__)

#: The official test set archive, over HTTPS from the Google Cloud Storage bucket that
#: ``download.tensorflow.org`` serves.
SC_URL = ("https://storage.googleapis.com/download.tensorflow.org/data/"
          "speech_commands_test_set_v0.02.tar.gz")
#: SHA-256 of ``speech_commands_test_set_v0.02.tar.gz`` (112,563,277 bytes), as listed in
#: TensorFlow Datasets' ``tensorflow_datasets/url_checksums/speech_commands.txt``.
SC_SHA256 = "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df"
SC_DIR = "speech_commands"
LIBRI_DIR = "librispeech_train_clean_100"


# ----------------------------------------------------------------- download
def download_speech_commands(data_folder, seed=17, n_trials=20000, url=None):
    """Downloads the Speech Commands test set and regroups it by speaker.

    The archive (``url``, default :data:`SC_URL`; downloaded once, kept in
    ``data_folder``; its SHA-256 checked against :data:`SC_SHA256`, also when
    it was put there by hand; a redirect to another host refused) holds
    ``<word>/<speaker>_nohash_<n>.wav``; the result is
    ``<data_folder>/speech_commands/<speaker>/<word>_<n>.wav`` plus a seeded
    ``splits/`` folder (see the module docstring).

    Arguments
    ---------
    data_folder : str or os.PathLike
        Where the archive, its extracted copy and ``speech_commands/`` go.
    seed : int
        Seed of the speaker split and of the trial list.
    n_trials : int
        Size of the test trial list.
    url : str, optional
        Archive address (default :data:`SC_URL`).

    Returns
    -------
    pathlib.Path
        ``<data_folder>/speech_commands``.

    Raises
    ------
    OSError
        When the download fails, is redirected to another host
        (:class:`~speechbrain_mrl.utils.download.RedirectError`) or its
        checksum differs (:class:`~speechbrain_mrl.utils.download.ChecksumError`).
    """
    url = url or SC_URL
    data_folder = pathlib.Path(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)
    raw = data_folder / "speech_commands_raw"
    if not raw.is_dir():
        _extract(_fetch_archive(url, data_folder / os.path.basename(url)), raw)
    regroup_speech_commands(raw, data_folder / SC_DIR)
    make_splits(data_folder / SC_DIR, seed=seed, n_trials=n_trials)
    return data_folder / SC_DIR


def _fetch_archive(url, archive):
    """``archive``, downloaded from ``url`` unless there; its SHA-256 checked either way."""
    if archive.is_file():  # downloaded before or put there by the user: checked as a download is
        if sha256_of(archive) != SC_SHA256:
            raise ChecksumError(f"{archive}: its SHA-256 is not that of the official "
                                f"speech_commands_test_set_v0.02.tar.gz ({SC_SHA256}); remove it")
        return archive
    logger.info("downloading %s", url)
    return download(url, archive, sha256=SC_SHA256, resume=True, same_host=True,
                    hint=f"or put the archive at {archive} yourself")


def _extract(archive, folder):
    """Extracts ``archive`` into ``folder`` through a temporary folder and a rename.

    The temporary folder is fresh and private (made by :func:`tempfile.mkdtemp`
    beside ``folder``, never a predictable path a planted link could take);
    one left by a killed extraction is removed
    (:func:`~speechbrain_mrl.utils.files.remove_stale_staging`). A member
    leaving it is refused (:func:`~speechbrain_mrl.data.preparation.extract_tar`).
    """
    remove_stale_staging(folder)
    tmp = staging_folder(folder)
    try:
        extract_tar(archive, tmp)
        swap_folder(tmp, folder, aside_folder(folder))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def regroup_speech_commands(raw, out):
    """``<word>/<spk>_nohash_<n>.wav`` -> ``<spk>/<word>_<n>.wav`` (copies).

    The ``_background_noise_`` folder is left out; existing copies are kept.

    Example
    -------
    >>> import tempfile
    >>> raw, out = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
    >>> (raw / "yes").mkdir()
    >>> _ = (raw / "yes" / "0a1b2c3d_nohash_1.wav").write_bytes(b"RIFF")
    >>> regroup_speech_commands(raw, out)
    >>> [p.relative_to(out).as_posix() for p in out.rglob("*.wav")]
    ['0a1b2c3d/yes_1.wav']
    """
    raw, out = pathlib.Path(raw), pathlib.Path(out)
    for wav in sorted(raw.glob("*/*.wav")):
        word = wav.parent.name
        if word.startswith("_"):
            continue
        spk, _, n = wav.stem.partition("_nohash_")
        dest = out / spk / f"{word}_{n}.wav"
        if not dest.is_file():
            _copy_atomic(wav, dest)


def _copy_atomic(src, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def make_splits(sc_folder, seed=17, test_fraction=0.25, n_trials=20000):
    """Seeded speaker split and balanced trial list written to ``splits/``.

    Arguments
    ---------
    sc_folder : str or os.PathLike
        The ``speech_commands`` folder (``<speaker>/<word>_<n>.wav``).
    seed : int
        Seed of the split and of the trials.
    test_fraction : float
        Share of the speakers in the test set.
    n_trials : int
        Size of the trial list (among the test speakers' files).
    """
    sc_folder = pathlib.Path(sc_folder)
    splits = sc_folder / "splits"
    speakers = scan_speakers(sc_folder)
    spks = sorted(speakers)
    rng = random.Random(seed)
    test = sorted(rng.sample(spks, int(round(len(spks) * test_fraction))))
    train = sorted(set(spks) - set(test))
    write_text_atomic(splits / "train_speakers.txt", "".join(s + "\n" for s in train))
    write_text_atomic(splits / "test_speakers.txt", "".join(s + "\n" for s in test))
    rows = [[rel, 1.0, str(p), 0, 0, s] for s in test for rel, p in speakers[s]]
    write_trials(splits / "trials_test.txt", make_trials(rows, n_trials, seed=seed))


# ----------------------------------------------------------------- manifests
def _read_list(path):
    return [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def long_val_rows(libri, n_readers, seg_dur, seed):
    """Rows of ``n_readers`` seeded LibriSpeech readers cut into ``seg_dur``-second segments.

    Only readers whose audio gives at least three segments (the last one at
    least ``seg_dur / 2`` long) are drawn, so every reader has several
    same-reader trials on disjoint audio.

    Arguments
    ---------
    libri : pathlib.Path
        ``<reader>/<utterance>.flac`` folder.
    n_readers : int
        Readers to hold out (fewer if not enough are long enough).
    seg_dur : float
        Segment length in seconds.
    seed : int
        Seed of the draw.

    Returns
    -------
    list of list
        Manifest rows; speaker IDs are ``libri<reader>`` as in training.
        Unusable files are left out here and reported by the training scan.

    Raises
    ------
    ValueError
        When fewer than two readers are long enough.
    """
    by_reader = {}
    for spk, items in sorted(scan_speakers(libri).items()):
        rows = [row for rel, path in items
                for row in make_rows("libri" + spk, "libri/" + rel, path, seg_dur / 2, seg_dur)]
        if len(rows) >= 3:
            by_reader[spk] = rows
    if len(by_reader) < 2:
        raise ValueError(
            f"n_long_val_readers={n_readers} but only {len(by_reader)} LibriSpeech reader(s) in "
            f"{libri} have three {seg_dur}-s segments: a long-utterance list needs two or more "
            f"(set n_long_val_readers to 0 to go without it)")
    chosen = random.Random(seed).sample(sorted(by_reader), min(n_readers, len(by_reader)))
    return [row for spk in sorted(chosen) for row in by_reader[spk]]


def _train_dev_rows(sc, libri, train_spks, val_spks, test_spks, min_duration, libri_seg_dur,
                    skipped):
    """``(train_rows, dev_rows)``: Speech Commands speakers, then LibriSpeech segments.

    ``test_spks`` are left out (Speech Commands test speakers and held-out readers).
    """
    speakers = scan_speakers(sc)
    train_rows, dev_rows = [], []
    for spk in sorted(train_spks):
        for rel, path in speakers.get(spk, []):
            rows = make_rows(spk, rel, path, min_duration, None, skipped)
            (dev_rows if spk in val_spks else train_rows).extend(rows)
    if libri is not None:
        for spk, items in scan_speakers(libri).items():
            if "libri" + spk in test_spks:
                continue
            for rel, path in items:
                train_rows.extend(make_rows("libri" + spk, "libri/" + rel, path,
                                            min_duration, libri_seg_dur, skipped))
    return train_rows, dev_rows


def _validation_speakers(train_spks, n_val_speakers, seed, listed):
    """The seeded validation speakers: ``n_val_speakers``, at most half of ``train_spks``, at
    least 2; refuses fewer than 4 training speakers (one line, naming ``listed``)."""
    if len(train_spks) < 4:
        raise ValueError(f"{listed}: {len(train_spks)} training speaker(s) found besides the test "
                         "speakers, at least 4 needed (2 for the validation list, 2 to train)")
    n_val = max(2, min(n_val_speakers, len(train_spks) // 2))
    return set(random.Random(seed).sample(sorted(train_spks), n_val))


def _write_test(sc, trials, out, skipped):
    """Writes enrol/test manifests and the test trials with manifest IDs; returns the trials kept."""
    found = set()
    for name, col in (("enrol", 1), ("test", 2)):
        rows = trial_rows(sorted({t[col] for t in trials}), [sc], skipped)
        write_manifest(out[name], rows.values())
        found.update(rows)
    kept = [(lab, trial_id(a), trial_id(b)) for lab, a, b in trials if a in found and b in found]
    if len(kept) < len(trials):
        logger.warning("%d trials dropped (unreadable files)", len(trials) - len(kept))
    write_trials(out["test_trials"], kept)
    return kept


def prepare_demo(
    data_folder,
    save_folder,
    use_librispeech=True,
    libri_seg_dur=2.0,
    n_val_speakers=20,
    n_val_trials=3000,
    n_long_val_readers=60,
    long_val_segment_dur=4.0,
    n_long_val_trials=10000,
    min_duration=0.3,
    seed=1234,
    download=False,
    skip_prep=False,
):
    """Prepares the demo manifests (see the module docstring).

    Arguments
    ---------
    data_folder : str
        Folder holding ``speech_commands/`` (and optionally
        ``librispeech_train_clean_100/``).
    save_folder : str
        Output folder.
    use_librispeech : bool
        Add the LibriSpeech readers as training speakers (if present).
    libri_seg_dur : float
        Segment length (s) the LibriSpeech utterances are cut into.
    n_val_speakers : int
        Train speakers held out for validation (EER, threshold calibration):
        at most half of them, and at least 2 (non-target trials pair two).
    n_val_trials : int
        Size of the validation trial list.
    n_long_val_readers : int
        LibriSpeech readers held out of training for the long-utterance
        validation list (0: none, every reader trains).
    long_val_segment_dur : float
        Segment length (s) of the long-utterance validation list.
    n_long_val_trials : int
        Size of the long-utterance validation list (every target pair is
        kept; the rest are non-target pairs).
    min_duration : float
        Shorter files are reported and skipped.
    seed : int
        Seed of the validation split/trials.
    download : bool
        Download the Speech Commands test archive when no local copy exists.
    skip_prep : bool
        Do nothing (the paths are returned all the same).

    Returns
    -------
    dict
        Paths of the manifests (``train``, ``dev``, ``enrol``, ``test``, and
        ``dev_long`` with LibriSpeech) and trial lists (``val_trials``,
        ``test_trials``, and ``val_long_trials`` with LibriSpeech).

    Raises
    ------
    FileNotFoundError
        Without a local copy of the split and ``download=False``.
    ValueError
        With fewer than 4 training speakers (2 validate, 2 train), a
        validation list of fewer than 2 speakers with usable clips, or two
        files with one ID (:func:`~speechbrain_mrl.data.preparation.check_unique_ids`).
    """
    data_folder = pathlib.Path(data_folder)
    save_folder = pathlib.Path(save_folder)
    out = {
        "train": str(save_folder / "train.csv"),
        "dev": str(save_folder / "dev.csv"),
        "enrol": str(save_folder / "enrol.csv"),
        "test": str(save_folder / "test.csv"),
        "val_trials": str(save_folder / "val_trials.txt"),
        "test_trials": str(save_folder / "trials_test.txt"),
    }
    libri = data_folder / LIBRI_DIR
    use_libri = bool(use_librispeech) and libri.is_dir()
    long_val = use_libri and n_long_val_readers > 0
    if long_val:
        out["dev_long"] = str(save_folder / "dev_long.csv")
        out["val_long_trials"] = str(save_folder / "val_long_trials.txt")
    if skip_prep:
        return out
    sc = data_folder / SC_DIR
    if not (sc / "splits" / "trials_test.txt").is_file():
        if not download:
            raise FileNotFoundError(
                f"{sc}/splits/trials_test.txt not found; give a local copy or download=True"
            )
        download_speech_commands(data_folder)
    opts = {
        "data_folder": str(data_folder), "use_librispeech": use_libri,
        "libri_seg_dur": libri_seg_dur, "n_val_speakers": n_val_speakers,
        "n_val_trials": n_val_trials, "min_duration": min_duration, "seed": seed,
    }
    if long_val:
        opts.update(n_long_val_readers=n_long_val_readers, n_long_val_trials=n_long_val_trials,
                    long_val_segment_dur=long_val_segment_dur)
    files = [os.path.basename(p) for p in out.values()]
    save_folder.mkdir(parents=True, exist_ok=True)
    splits = sc / "splits"
    opts["inputs_sha256"] = input_fingerprint(
        [sc] + ([libri] if use_libri else []), AUDIO_EXTENSIONS,
        [splits / "trials_test.txt", splits / "train_speakers.txt"])
    if skip(save_folder, files, opts):
        logger.info("Skipping preparation, completed in previous run.")
        return out

    trials = read_trials(sc / "splits" / "trials_test.txt")
    test_spks = {speaker_of(p) for _, a, b in trials for p in (a, b)}
    train_spks = [s for s in _read_list(sc / "splits" / "train_speakers.txt") if s not in test_spks]
    val_spks = _validation_speakers(train_spks, n_val_speakers, seed, splits / "train_speakers.txt")
    skipped, held_out = [], set(test_spks)
    if long_val:
        long_rows = long_val_rows(libri, n_long_val_readers, long_val_segment_dur, seed)
        held_out.update(r[5] for r in long_rows)
        write_manifest(out["dev_long"], long_rows)
        write_trials(out["val_long_trials"], make_trials(long_rows, n_long_val_trials, seed=seed))
    train_rows, dev_rows = _train_dev_rows(sc, libri if use_libri else None, train_spks, val_spks,
                                           held_out, min_duration, libri_seg_dur, skipped)
    check_unique_ids(train_rows + dev_rows, data_folder)
    if len({r[5] for r in dev_rows}) < 2:
        report_skipped(skipped, save_folder)
        raise ValueError(f"the validation list has usable clips of {len({r[5] for r in dev_rows})} "
                         f"speaker(s), at least 2 needed ({len(skipped)} files skipped, listed in "
                         f"{save_folder / SKIPPED_FILE})")
    write_manifest(out["train"], train_rows)
    write_manifest(out["dev"], dev_rows)
    write_trials(out["val_trials"], make_trials(dev_rows, n_val_trials, seed=seed))
    kept = _write_test(sc, trials, out, skipped)
    report_skipped(skipped, save_folder)
    write_data_chart(save_folder, {"train": out["train"], "validation": out["dev"],
                                   "long validation": out.get("dev_long"),
                                   "test": [out["enrol"], out["test"]]})
    save_opts(save_folder, opts)
    logger.info("demo data: %d train rows (%d speakers), %d dev rows (%d speakers), %d test trials",
                len(train_rows), len({r[5] for r in train_rows}), len(dev_rows), len(val_spks), len(kept))
    return out
