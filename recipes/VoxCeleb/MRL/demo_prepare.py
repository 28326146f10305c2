"""Data preparation for the end-to-end demo (real speech, CPU-sized).

Speaker verification data from the Speech Commands v0.02 *test* set regrouped
by speaker (``<data_folder>/speech_commands/<speaker>/<word>_<n>.<ext>``),
plus, optionally, LibriSpeech excerpts as extra training speakers
(``<data_folder>/librispeech_train_clean_100/<reader>/<utt>.flac``, cut into
``libri_seg_dur``-second segments).

With a local copy holding ``speech_commands/splits/`` the fixed speaker split
(``train_speakers.txt``/``test_speakers.txt``) and trial list
(``trials_test.txt``) are used. Without a local copy (``download=True``) the
official archive ``speech_commands_test_set_v0.02.tar.gz`` is downloaded,
regrouped by speaker, and -- as the fixed split and trials are not part of the
archive -- a seeded speaker split (75 % train / 25 % test, seed ``seed``) and a
balanced 20,000-trial list are generated and written to ``splits/``, so
numbers are not comparable with the ones obtained on the fixed split.

Outputs in ``save_folder``: ``train.csv`` (train speakers minus the
validation speakers, plus LibriSpeech segments), ``dev.csv`` (all clips of
``n_val_speakers`` held-out train speakers) with ``val_trials.txt`` (a seeded
trial list among them, used for validation EER and threshold calibration),
``enrol.csv``/``test.csv`` and ``trials_test.txt`` (the test trial list with
absolute-path-free IDs as in the local copy).

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import os
import pathlib
import random
import shutil
import sys
import tarfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import voxceleb_prepare as vp  # noqa: E402

logger = logging.getLogger(__name__)

SC_URL = "http://download.tensorflow.org/data/speech_commands_test_set_v0.02.tar.gz"
SC_DIR = "speech_commands"
LIBRI_DIR = "librispeech_train_clean_100"


def download_speech_commands(data_folder, seed=17, n_trials=20000, url=None):
    """Downloads the Speech Commands test set and regroups it by speaker.

    The archive (``url``, default :data:`SC_URL`; downloaded once, kept in
    ``data_folder``) holds ``<word>/<speaker>_nohash_<n>.wav``; the result is
    ``<data_folder>/speech_commands/<speaker>/<word>_<n>.wav`` plus a seeded
    ``splits/`` folder (see the module docstring).
    """
    url = url or SC_URL
    data_folder = pathlib.Path(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)
    archive = data_folder / os.path.basename(url)
    if not archive.is_file():
        logger.info("downloading %s", url)
        tmp = archive.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        os.replace(tmp, archive)
    raw = data_folder / "speech_commands_raw"
    if not raw.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(raw, filter="data")
    regroup_speech_commands(raw, data_folder / SC_DIR)
    make_splits(data_folder / SC_DIR, seed=seed, n_trials=n_trials)
    return data_folder / SC_DIR


def regroup_speech_commands(raw, out):
    """``<word>/<spk>_nohash_<n>.wav`` -> ``<spk>/<word>_<n>.wav`` (copies)."""
    raw, out = pathlib.Path(raw), pathlib.Path(out)
    for wav in sorted(raw.glob("*/*.wav")):
        word = wav.parent.name
        if word.startswith("_"):
            continue  # _background_noise_
        spk, _, n = wav.stem.partition("_nohash_")
        dest = out / spk / f"{word}_{n}.wav"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wav, dest)


def make_splits(sc_folder, seed=17, test_fraction=0.25, n_trials=20000):
    """Seeded speaker split and balanced trial list written to ``splits/``."""
    sc_folder = pathlib.Path(sc_folder)
    splits = sc_folder / "splits"
    splits.mkdir(exist_ok=True)
    speakers = vp.scan_speakers(sc_folder)
    spks = sorted(speakers)
    rng = random.Random(seed)
    test = sorted(rng.sample(spks, int(round(len(spks) * test_fraction))))
    train = sorted(set(spks) - set(test))
    (splits / "train_speakers.txt").write_text("".join(s + "\n" for s in train))
    (splits / "test_speakers.txt").write_text("".join(s + "\n" for s in test))
    rows = [[rel, 1.0, str(p), 0, 0, s] for s in test for rel, p in speakers[s]]
    vp.write_trials(splits / "trials_test.txt", vp.make_trials(rows, n_trials, seed=seed))


def _read_list(path):
    return [line.strip() for line in open(path) if line.strip()]


def prepare_demo(
    data_folder,
    save_folder,
    use_librispeech=True,
    libri_seg_dur=2.0,
    n_val_speakers=20,
    n_val_trials=3000,
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
        Train speakers held out for validation (EER, threshold calibration).
    n_val_trials : int
        Size of the validation trial list.
    min_duration : float
        Shorter files are reported and skipped.
    seed : int
        Seed of the validation split/trials.
    download : bool
        Download the Speech Commands test archive when no local copy exists.
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Paths of the manifests and trial lists.
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
    if skip_prep:
        return out
    sc = data_folder / SC_DIR
    if not (sc / "splits" / "trials_test.txt").is_file():
        if not download:
            raise FileNotFoundError(
                f"{sc}/splits/trials_test.txt not found; give a local copy or download=True"
            )
        download_speech_commands(data_folder)
    libri = data_folder / LIBRI_DIR
    use_libri = bool(use_librispeech) and libri.is_dir()
    opts = {
        "data_folder": str(data_folder), "use_librispeech": use_libri,
        "libri_seg_dur": libri_seg_dur, "n_val_speakers": n_val_speakers,
        "n_val_trials": n_val_trials, "min_duration": min_duration, "seed": seed,
    }
    files = [os.path.basename(p) for p in out.values()]
    save_folder.mkdir(parents=True, exist_ok=True)
    if vp.skip(save_folder, files, opts):
        logger.info("Skipping preparation, completed in previous run.")
        return out

    train_spks = _read_list(sc / "splits" / "train_speakers.txt")
    trials = vp.read_trials(sc / "splits" / "trials_test.txt")
    test_spks = {vp.speaker_of(p) for _, a, b in trials for p in (a, b)}
    train_spks = [s for s in train_spks if s not in test_spks]
    rng = random.Random(seed)
    val_spks = set(rng.sample(sorted(train_spks), min(n_val_speakers, len(train_spks) // 2)))
    speakers = vp.scan_speakers(sc)
    skipped = []
    train_rows, dev_rows = [], []
    for spk in sorted(train_spks):
        for rel, path in speakers.get(spk, []):
            rows = vp.make_rows(spk, rel, path, min_duration, None, skipped)
            (dev_rows if spk in val_spks else train_rows).extend(rows)
    if use_libri:
        for spk, items in vp.scan_speakers(libri).items():
            if spk in test_spks:
                continue
            for rel, path in items:
                train_rows.extend(vp.make_rows("libri" + spk, "libri/" + rel, path,
                                               min_duration, libri_seg_dur, skipped))
    vp.write_csv(out["train"], train_rows)
    vp.write_csv(out["dev"], dev_rows)
    vp.write_trials(out["val_trials"], vp.make_trials(dev_rows, n_val_trials, seed=seed))

    # enrol/test: the files of the test trial list, IDs = paths without extension
    ids = {}
    for name, col in (("enrol", 1), ("test", 2)):
        rows = []
        for rel in sorted({t[col] for t in trials}):
            r = vp.make_rows(vp.speaker_of(rel), rel, sc / rel, 0.0, None, skipped)
            if r:
                r[0][0] = vp.trial_id(rel)
                ids[rel] = r[0][0]
                rows.extend(r)
        vp.write_csv(out[name], rows)
    kept = [(lab, ids[a], ids[b]) for lab, a, b in trials if a in ids and b in ids]
    if len(kept) < len(trials):
        logger.warning("%d trials dropped (unreadable files)", len(trials) - len(kept))
    vp.write_trials(out["test_trials"], [(lab, a, b) for lab, a, b in kept])
    vp.report_skipped(skipped, save_folder)
    vp.save_opts(save_folder, opts)
    logger.info("demo data: %d train rows (%d speakers), %d dev rows (%d speakers), %d test trials",
                len(train_rows), len({r[5] for r in train_rows}), len(dev_rows), len(val_spks), len(kept))
    return out


if __name__ == "__main__":  # pragma: no cover
    import argparse

    p = argparse.ArgumentParser(description="Prepare the demo data")
    p.add_argument("--data_folder", required=True)
    p.add_argument("--save_folder", required=True)
    p.add_argument("--download", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(prepare_demo(a.data_folder, a.save_folder, download=a.download))
