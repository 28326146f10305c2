"""Data preparation for VoxCeleb-style speaker folders.

Writes SpeechBrain CSV manifests (``ID,duration,wav,start,stop,spk_id``) from
one or more folders in the VoxCeleb layout (``<spk>/<video>/<utt>.wav``;
VoxCeleb2's ``.m4a`` files are read with torchcodec, wav/flac with soundfile,
see :func:`speechbrain_mrl.data.audio.audio_info`):

* ``train.csv`` / ``dev.csv``: training data and held-out data. With
  ``dev_split="utterance"`` (default) the dev set holds ``split_ratio[1]`` % of
  every training speaker's files; with ``dev_split="speaker"`` it holds every
  file of ``split_ratio[1]`` % of the speakers (a validation set of unseen
  speakers, the right thing for EER-based validation).
* ``enrol.csv`` / ``test.csv``: the files of a VoxCeleb-format trial list
  (``1 id10270/x/00001.wav id10270/y/00002.wav``, paths relative to one of the
  data folders). Speakers of the trial list never appear in train/dev.
* optionally a seeded, balanced validation trial list among the dev rows.

Unreadable, empty and too-short files are reported and skipped (their count
is printed); preparation is skipped when the manifests exist and were written
with the same options (``opts_prepare.json``).

Command line::

    python -m speechbrain_mrl.data.voxceleb DATA [DATA ...] --save_folder OUT

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import os
import pathlib
import random

from speechbrain_mrl.data.preparation import (
    AUDIO_EXTENSIONS,
    SKIPPED_FILE,
    audio_root,
    check_unique_ids,
    scan_speakers,
    make_rows,
    speaker_of,
    trial_rows,
    write_valid_trials,
    input_fingerprint,
    skip,
    save_opts,
    report_skipped,
    write_data_chart,
)
from speechbrain_mrl.data.manifests import read_trials, write_manifest

logger = logging.getLogger(__name__)

def _training_speakers(folders, extensions, test_spks):
    """``{spk: files}`` of all folders, trial-list speakers excluded."""
    speakers = {}
    for folder in folders:
        for spk, items in scan_speakers(folder, extensions).items():
            speakers.setdefault(spk, []).extend(items)
    n_excl = len([s for s in speakers if s in test_spks])
    speakers = {s: v for s, v in speakers.items() if s not in test_spks}
    logger.info("%d training speakers (%d trial-list speakers excluded)", len(speakers), n_excl)
    return speakers


def _dev_files(n_files, rng, split_ratio):
    """Indices of a speaker's files held out for dev (``dev_split="utterance"``)."""
    order = list(range(n_files))
    rng.shuffle(order)
    n_dev = int(n_files * split_ratio[1] / sum(split_ratio))
    if n_files >= 2:
        n_dev = max(n_dev, 1) if split_ratio[1] > 0 else 0
    return set(order[:n_dev])


def n_dev_speakers(n_speakers, split_ratio):
    """Number of speakers held out for validation with ``dev_split="speaker"``.

    ``split_ratio[1]`` % of the speakers, but at least 2 (the fewest that give
    both target and non-target validation trials) when ``split_ratio[1] > 0``.

    Arguments
    ---------
    n_speakers : int
        Training speakers found (trial-list speakers excluded).
    split_ratio : (int, int)
        Train/dev percentages.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        In one line naming the options to change, when fewer than 2 speakers
        would be left for training.

    Example
    -------
    >>> n_dev_speakers(7205, (98, 2)), n_dev_speakers(12, (98, 2)), n_dev_speakers(12, (100, 0))
    (144, 2, 0)
    """
    n_dev = int(round(n_speakers * split_ratio[1] / sum(split_ratio)))
    if split_ratio[1] > 0:
        n_dev = max(n_dev, 2)
    if n_speakers - n_dev < 2:
        raise ValueError(
            f"{n_speakers} speakers are too few for dev_split 'speaker' with split_ratio "
            f"{list(split_ratio)} ({n_dev} held out for validation, at least 2 needed for "
            "training): give more speakers, or --dev_split utterance with a split_ratio that "
            "holds out 2 files of a speaker")
    return n_dev


def _train_dev_rows(speakers, split_ratio, dev_split, seg_dur, min_duration,
                    max_files_per_speaker, seed, skipped):
    """``(train_rows, dev_rows)`` of the training speakers (see :func:`prepare_voxceleb`)."""
    rng = random.Random(seed)
    spk_list = sorted(speakers)
    dev_spks = set()
    if dev_split == "speaker":
        n_dev = n_dev_speakers(len(spk_list), split_ratio)
        dev_spks = set(random.Random(seed).sample(spk_list, n_dev))
    train_rows, dev_rows = [], []
    for spk in spk_list:
        items = speakers[spk]
        if max_files_per_speaker and len(items) > max_files_per_speaker:
            items = sorted(rng.sample(items, max_files_per_speaker))
        spk_seg_dur = None if spk in dev_spks else seg_dur
        rows_per_file = [make_rows(spk, rel, p, min_duration, spk_seg_dur, skipped) for rel, p in items]
        rows_per_file = [r for r in rows_per_file if r]
        if dev_split == "speaker":
            dev_idx = set(range(len(rows_per_file))) if spk in dev_spks else set()
        else:
            dev_idx = _dev_files(len(rows_per_file), rng, split_ratio)
        for i, r in enumerate(rows_per_file):
            (dev_rows if i in dev_idx else train_rows).extend(r)
    return train_rows, dev_rows


# ----------------------------------------------------------------- main
def _output_files(splits, valid_trials):
    """The manifests written for ``splits``; checks that ``valid_trials`` has a dev split."""
    if valid_trials is not None and "dev" not in splits:
        raise ValueError("valid_trials needs the 'dev' split")
    files = [f"{s}.csv" for s in ("train", "dev") if s in splits]
    return files + (["enrol.csv", "test.csv"] if "test" in splits else [])


def prepare_voxceleb(
    data_folder,
    save_folder,
    verification_pairs_file=None,
    splits=None,
    split_ratio=(90, 10),
    dev_split="utterance",
    seg_dur=None,
    min_duration=0.5,
    max_files_per_speaker=None,
    extensions=AUDIO_EXTENSIONS,
    seed=1234,
    valid_trials=None,
    n_valid_trials=20000,
    valid_trials_seed=1986,
    skip_prep=False,
):
    """Prepares VoxCeleb-style CSV manifests.

    Arguments
    ---------
    data_folder : str or list of str
        One or more folders (e.g. VoxCeleb1 dev and VoxCeleb2 dev), each with
        speaker folders directly or under ``wav/``, ``aac/`` or ``dev/aac/``.
    save_folder : str
        Where the CSV files go.
    verification_pairs_file : str, optional
        VoxCeleb-format trial list; its speakers are excluded from train/dev,
        its files form ``enrol.csv``/``test.csv`` (needed for the ``test`` split).
    splits : sequence of str, optional
        Subset of ``train``, ``dev``, ``test``; default: ``train`` and
        ``dev``, plus ``test`` when a trial list is given.
    split_ratio : (int, int)
        Train/dev percentages.
    dev_split : str
        ``utterance`` (dev = held-out files of training speakers) or
        ``speaker`` (dev = all files of held-out speakers).
    seg_dur : float, optional
        Cut training files into segments of this many seconds (None: one row
        per file; random crops are taken at training time).
    min_duration : float
        Files shorter than this (seconds) are skipped.
    max_files_per_speaker : int, optional
        Cap per speaker (seeded choice), for quick experiments.
    extensions : sequence of str
        Audio file extensions to look for.
    seed : int
        Seed of the split.
    valid_trials : str, optional
        Validation trial list to write (needs the ``dev`` split): a balanced
        list among the dev rows (:func:`make_trials`), written when the file
        does not exist yet, also when the preparation itself is skipped.
    n_valid_trials : int
        Size of the validation trial list.
    valid_trials_seed : int
        Seed of the validation trial list.
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Paths of the manifests (and of ``valid_trials`` when given); after a
        preparation (not skipped), ``n_skipped``: the number of skipped files.

    Raises
    ------
    FileNotFoundError
        When a data folder does not exist.
    ValueError
        For a bad ``dev_split``, a ``test`` split without
        ``verification_pairs_file``, ``valid_trials`` without ``dev`` split, a
        malformed trial list, fewer than 2 training speakers, or two files
        with one ID (:func:`~speechbrain_mrl.data.preparation.check_unique_ids`).
    """
    if skip_prep:
        if valid_trials is not None:  # the manifests are the user's; the list may still be missing
            write_valid_trials(valid_trials, pathlib.Path(save_folder) / "dev.csv", n_valid_trials,
                               valid_trials_seed)
        return {}
    folders = [data_folder] if isinstance(data_folder, (str, os.PathLike)) else list(data_folder)
    folders = [str(pathlib.Path(f)) for f in folders]
    save_folder = pathlib.Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    if splits is None:
        splits = ["train", "dev"] + (["test"] if verification_pairs_file else [])
    splits = list(splits)
    opts = {
        "data_folder": folders,
        "verification_pairs_file": None if verification_pairs_file is None else str(verification_pairs_file),
        "splits": splits,
        "split_ratio": list(split_ratio),
        "dev_split": dev_split,
        "seg_dur": seg_dur,
        "min_duration": min_duration,
        "max_files_per_speaker": max_files_per_speaker,
        "extensions": list(extensions),
        "seed": seed,
    }
    files = _output_files(splits, valid_trials)
    out = {f.split(".")[0]: str(save_folder / f) for f in files}
    state = dict(opts, inputs_sha256=input_fingerprint(folders, extensions,
                                                       [verification_pairs_file]))
    if skip(save_folder, files, state):
        logger.info("Skipping preparation, completed in previous run.")
    else:
        out["n_skipped"] = _prepare(save_folder, **opts)
        write_data_chart(save_folder, {"train": out.get("train"), "validation": out.get("dev"),
                                       "test": [out[k] for k in ("enrol", "test") if k in out]})
        if valid_trials is not None and os.path.isfile(valid_trials):
            os.remove(valid_trials)  # drawn from the dev set just replaced
        save_opts(save_folder, state)
    if valid_trials is not None:
        write_valid_trials(valid_trials, out["dev"], n_valid_trials, valid_trials_seed)
        out["valid_trials"] = str(valid_trials)
    return out


def _prepare(save_folder, data_folder, verification_pairs_file, splits, split_ratio, dev_split,
             seg_dur, min_duration, max_files_per_speaker, extensions, seed):
    """Writes the manifests of :func:`prepare_voxceleb` (arguments: its saved options).

    Returns the number of skipped files.
    """
    if dev_split not in ("utterance", "speaker"):
        raise ValueError(f"dev_split must be 'utterance' or 'speaker', got {dev_split!r}")
    if "test" in splits and verification_pairs_file is None:
        raise ValueError("the 'test' split needs verification_pairs_file")
    trials = read_trials(verification_pairs_file) if verification_pairs_file else []
    test_spks = {speaker_of(p) for _, a, b in trials for p in (a, b)}
    skipped = []
    if "train" in splits or "dev" in splits:
        speakers = _training_speakers(data_folder, extensions, test_spks)
        if not speakers:
            raise ValueError(f"no training speaker folders with {list(extensions)} files under "
                             f"{data_folder} (trial-list speakers excluded)")
        if len(speakers) < 2:
            raise ValueError(f"only 1 training speaker ({next(iter(speakers))}) under "
                             f"{data_folder} (trial-list speakers excluded): training and "
                             "validation need at least 2 speakers; give more speaker folders")
        train_rows, dev_rows = _train_dev_rows(speakers, split_ratio, dev_split, seg_dur, min_duration,
                                               max_files_per_speaker, seed, skipped)
        check_unique_ids(train_rows + dev_rows, data_folder)
        for split, rows in (("train", train_rows), ("dev", dev_rows)):
            if split in splits and not rows:
                report_skipped(skipped, save_folder)
                raise ValueError(
                    f"the {split} split is empty ({len(speakers)} training speakers, split_ratio "
                    f"{list(split_ratio)}, dev_split {dev_split!r}, {len(skipped)} files skipped, "
                    f"listed in {save_folder / SKIPPED_FILE}); give more data or another split_ratio")
        if "train" in splits:
            write_manifest(save_folder / "train.csv", train_rows)
        if "dev" in splits:
            write_manifest(save_folder / "dev.csv", dev_rows)
    if "test" in splits:
        roots = [audio_root(f) for f in data_folder]
        for name, col in (("enrol.csv", 1), ("test.csv", 2)):
            rows = trial_rows(sorted({t[col] for t in trials}), roots, skipped)
            if not rows:
                report_skipped(skipped, save_folder)
                raise ValueError(f"none of the {name[:-4]} files of {verification_pairs_file} is "
                                 f"under {data_folder} (paths are relative to a data folder, e.g. "
                                 f"id10270/5r0dWxy17C8/00001.wav)")
            write_manifest(save_folder / name, rows.values())
    report_skipped(skipped, save_folder)
    return len(skipped)
