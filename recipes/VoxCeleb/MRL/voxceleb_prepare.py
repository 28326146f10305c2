"""Data preparation for the VoxCeleb Matryoshka recipe.

Writes SpeechBrain CSV manifests (``ID,duration,wav,start,stop,spk_id``) from
one or more folders in the VoxCeleb layout (``<spk>/<video>/<utt>.wav``;
VoxCeleb2's ``.m4a`` files are read with torchcodec, wav/flac with soundfile):

* ``train.csv`` / ``dev.csv``: training data and held-out data. With
  ``dev_split="utterance"`` (default) the dev set holds ``split_ratio[1]`` % of
  every training speaker's files; with ``dev_split="speaker"`` it holds every
  file of ``split_ratio[1]`` % of the speakers (a validation set of unseen
  speakers, the right thing for EER-based validation).
* ``enrol.csv`` / ``test.csv``: the files of a VoxCeleb-format trial list
  (``1 id10270/x/00001.wav id10270/y/00002.wav``, paths relative to one of the
  data folders). Speakers of the trial list never appear in train/dev.

Unreadable, empty and too-short files are reported and skipped (their count
is printed); preparation is skipped when the manifests exist and were written
with the same options (``opts_prepare.json``).

Authors
-------
 * speechbrain-mrl developers
"""
import csv
import json
import logging
import os
import pathlib
import random

import soundfile as sf
import torch

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a")
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
OPT_FILE = "opts_prepare.json"
# common sub-folders that hold the speaker folders in the official archives
_AUDIO_SUBDIRS = ("wav", "aac", os.path.join("dev", "aac"), os.path.join("dev", "wav"))


# ----------------------------------------------------------------- audio I/O
def audio_info(path):
    """Returns ``(num_frames, sample_rate)`` of an audio file.

    wav/flac/ogg are read with soundfile, anything else (VoxCeleb2's m4a)
    with torchcodec's ``AudioDecoder``. Raises on unreadable files.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.zeros(1600, dtype="float32"), 16000)
    >>> audio_info(p)
    (1600, 16000)
    """
    path = str(path)
    if path.lower().endswith((".wav", ".flac", ".ogg")):
        info = sf.info(path)
        return int(info.frames), int(info.samplerate)
    from torchcodec.decoders import AudioDecoder

    dec = AudioDecoder(path)
    meta = dec.metadata
    sr = int(meta.sample_rate)
    dur = getattr(meta, "duration_seconds_from_header", None)
    if dur is None or dur <= 0:
        samples = dec.get_all_samples()
        return int(samples.data.shape[-1]), int(samples.sample_rate)
    return int(round(dur * sr)), sr


def read_audio(path, start=0, stop=None, sample_rate=None):
    """Reads ``[start, stop)`` (in samples of the file) as a mono float tensor.

    Arguments
    ---------
    path : str
        Audio file (wav/flac through soundfile, m4a and others through torchcodec).
    start, stop : int
        Sample range (``stop=None``: to the end).
    sample_rate : int, optional
        Resample to this rate when the file has another one.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 waveform.
    """
    path = str(path)
    start = int(start)
    if path.lower().endswith((".wav", ".flac", ".ogg")):
        data, sr = sf.read(
            path, start=start, stop=None if stop is None else int(stop),
            dtype="float32", always_2d=True,
        )
        wav = torch.from_numpy(data).mean(dim=1)
    else:
        from torchcodec.decoders import AudioDecoder

        dec = AudioDecoder(path)
        sr = int(dec.metadata.sample_rate)
        t0 = start / sr
        t1 = None if stop is None else int(stop) / sr
        samples = dec.get_samples_played_in_range(t0, t1)
        wav = samples.data.mean(dim=0).to(torch.float32)
        if stop is not None:
            wav = wav[: int(stop) - start]
    if sample_rate is not None and sr != sample_rate:
        import torchaudio

        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav


# ----------------------------------------------------------------- scanning
def audio_root(folder):
    """The folder holding the speaker folders (``folder`` or its wav/aac sub-folder)."""
    folder = pathlib.Path(folder)
    for sub in _AUDIO_SUBDIRS:
        if (folder / sub).is_dir():
            return folder / sub
    return folder


def scan_speakers(folder, extensions=AUDIO_EXTENSIONS):
    """Lists the audio files of every speaker folder under ``folder``.

    Returns
    -------
    dict of str to list of (str, pathlib.Path)
        ``{spk_id: [(relative_path, absolute_path), ...]}``, sorted;
        ``relative_path`` is relative to :func:`audio_root` (as in trial lists).
    """
    root = audio_root(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    exts = tuple(e.lower() for e in extensions)
    out = {}
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if spk_dir.name.startswith(".") or spk_dir.name in ("splits", "_background_noise_"):
            continue
        files = sorted(
            p for p in spk_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts
        )
        if files:
            out[spk_dir.name] = [(p.relative_to(root).as_posix(), p) for p in files]
    return out


def make_rows(spk_id, rel, path, min_duration, seg_dur=None, skipped=None):
    """Manifest rows of one file: whole file, or ``seg_dur``-second segments.

    A file that cannot be read, is empty or shorter than ``min_duration``
    seconds gives no row; the reason is appended to ``skipped``.
    """
    try:
        frames, sr = audio_info(path)
    except Exception as err:  # noqa: BLE001 - any decoder error means unreadable
        if skipped is not None:
            skipped.append((str(path), f"unreadable ({type(err).__name__}: {err})"))
        return []
    if frames <= 0:
        if skipped is not None:
            skipped.append((str(path), "empty"))
        return []
    duration = frames / sr
    if duration < min_duration:
        if skipped is not None:
            skipped.append((str(path), f"too short ({duration:.3f} s < {min_duration} s)"))
        return []
    base_id = rel.rsplit(".", 1)[0].replace("/", "--")
    if not seg_dur or duration <= seg_dur:
        return [[base_id, f"{duration:.3f}", str(path), 0, frames, spk_id]]
    seg = int(round(seg_dur * sr))
    rows = []
    n_seg = frames // seg
    for i in range(n_seg):
        rows.append([f"{base_id}_{i}", f"{seg / sr:.3f}", str(path), i * seg, (i + 1) * seg, spk_id])
    rest = frames - n_seg * seg
    if rest / sr >= min_duration:  # keep a long-enough tail
        rows.append([f"{base_id}_{n_seg}", f"{rest / sr:.3f}", str(path), n_seg * seg, frames, spk_id])
    return rows


def write_csv(path, rows):
    """Writes manifest rows with the SpeechBrain header."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows(rows)
    os.replace(tmp, path)


def read_trials(path):
    """Reads a VoxCeleb-format trial list: ``[(label, enrol, test), ...]``."""
    trials = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{n}: expected '<label> <enrol> <test>', got {line!r}")
            trials.append((int(parts[0]), parts[1], parts[2]))
    return trials


def speaker_of(rel):
    """Speaker id of a trial-list path (its first folder)."""
    return rel.replace("\\", "/").split("/")[0]


def make_trials(rows, n_trials, seed=1234):
    """A balanced, seeded trial list among manifest rows (half target trials).

    Arguments
    ---------
    rows : list
        Manifest rows (``ID, duration, wav, start, stop, spk_id``).
    n_trials : int
        Wanted number of trials (fewer if there are not enough distinct pairs).
    seed : int
        Random seed.

    Returns
    -------
    list of (int, str, str)
        ``(label, enrol_id, test_id)`` with manifest IDs, no repeated pair.
    """
    rng = random.Random(seed)
    by_spk = {}
    for r in rows:
        by_spk.setdefault(r[5], []).append(r[0])
    spks = sorted(by_spk)
    multi = [s for s in spks if len(by_spk[s]) >= 2]
    ids = [r[0] for r in rows]
    spk_of = {r[0]: r[5] for r in rows}
    n_pos_max = sum(len(by_spk[s]) * (len(by_spk[s]) - 1) // 2 for s in multi)
    n_pos = min(n_trials // 2, n_pos_max)
    n_neg = min(n_trials - n_pos if n_pos < n_trials // 2 else n_trials // 2,
                len(ids) * (len(ids) - 1) // 2 - n_pos_max)
    seen = set()
    trials = []
    tries = 0
    while sum(t[0] for t in trials) < n_pos and tries < 50 * n_trials + 100:
        tries += 1
        s = rng.choice(multi)
        a, b = rng.sample(by_spk[s], 2)
        key = tuple(sorted((a, b)))
        if key not in seen:
            seen.add(key)
            trials.append((1, a, b))
    tries = 0
    n_got_neg = 0
    while n_got_neg < n_neg and tries < 50 * n_trials + 100 and len(spks) >= 2:
        tries += 1
        a, b = rng.sample(ids, 2)
        if spk_of[a] == spk_of[b]:
            continue
        key = tuple(sorted((a, b)))
        if key not in seen:
            seen.add(key)
            trials.append((0, a, b))
            n_got_neg += 1
    rng.shuffle(trials)
    return trials


def write_trials(path, trials):
    """Writes ``(label, enrol, test)`` tuples in the VoxCeleb format."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for lab, a, b in trials:
            f.write(f"{lab} {a} {b}\n")


# ----------------------------------------------------------------- skipping
def skip(save_folder, files, opts):
    """True when every file exists and ``opts`` equal the saved options."""
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
    with open(pathlib.Path(save_folder) / OPT_FILE, "w") as f:
        json.dump(opts, f, indent=1, sort_keys=True)


def report_skipped(skipped, save_folder):
    """Logs/prints the skipped files and writes them to ``skipped_files.txt``."""
    path = pathlib.Path(save_folder) / "skipped_files.txt"
    with open(path, "w") as f:
        for p, why in skipped:
            f.write(f"{p}\t{why}\n")
    if skipped:
        msg = f"skipped {len(skipped)} unreadable, empty or too-short file(s), listed in {path}"
        for p, why in skipped[:10]:
            logger.warning("skipped %s: %s", p, why)
    else:
        msg = "skipped 0 files"
    logger.info(msg)
    print(msg)


# ----------------------------------------------------------------- main
def prepare_voxceleb(
    data_folder,
    save_folder,
    verification_pairs_file=None,
    splits=("train", "dev", "test"),
    split_ratio=(90, 10),
    dev_split="utterance",
    seg_dur=None,
    min_duration=0.5,
    max_files_per_speaker=None,
    extensions=AUDIO_EXTENSIONS,
    seed=1234,
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
    splits : sequence of str
        Subset of ``train``, ``dev``, ``test``.
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
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Paths of the written files and the number of skipped files.
    """
    if skip_prep:
        return {}
    folders = [data_folder] if isinstance(data_folder, (str, os.PathLike)) else list(data_folder)
    folders = [str(pathlib.Path(f)) for f in folders]
    save_folder = pathlib.Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
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
    files = []
    if "train" in splits:
        files.append("train.csv")
    if "dev" in splits:
        files.append("dev.csv")
    if "test" in splits:
        files += ["enrol.csv", "test.csv"]
    out = {f.split(".")[0]: str(save_folder / f) for f in files}
    if skip(save_folder, files, opts):
        logger.info("Skipping preparation, completed in previous run.")
        return out
    if dev_split not in ("utterance", "speaker"):
        raise ValueError(f"dev_split must be 'utterance' or 'speaker', got {dev_split!r}")
    if "test" in splits and verification_pairs_file is None:
        raise ValueError("the 'test' split needs verification_pairs_file")

    trials = read_trials(verification_pairs_file) if verification_pairs_file else []
    test_spks = {speaker_of(p) for _, a, b in trials for p in (a, b)}
    skipped = []
    rng = random.Random(seed)

    if "train" in splits or "dev" in splits:
        speakers = {}
        for folder in folders:
            for spk, items in scan_speakers(folder, extensions).items():
                speakers.setdefault(spk, []).extend(items)
        n_excl = len([s for s in speakers if s in test_spks])
        speakers = {s: v for s, v in speakers.items() if s not in test_spks}
        logger.info("%d training speakers (%d trial-list speakers excluded)", len(speakers), n_excl)
        spk_list = sorted(speakers)
        dev_spks = set()
        if dev_split == "speaker":
            n_dev = int(round(len(spk_list) * split_ratio[1] / sum(split_ratio)))
            dev_spks = set(random.Random(seed).sample(spk_list, n_dev))
        train_rows, dev_rows = [], []
        for spk in spk_list:
            items = speakers[spk]
            if max_files_per_speaker and len(items) > max_files_per_speaker:
                items = sorted(rng.sample(items, max_files_per_speaker))
            rows_per_file = [make_rows(spk, rel, p, min_duration, None if spk in dev_spks else seg_dur,
                                       skipped) for rel, p in items]
            rows_per_file = [r for r in rows_per_file if r]
            if dev_split == "speaker":
                target = dev_rows if spk in dev_spks else train_rows
                for r in rows_per_file:
                    target.extend(r)
                continue
            order = list(range(len(rows_per_file)))
            rng.shuffle(order)
            n_dev = int(len(order) * split_ratio[1] / sum(split_ratio))
            if len(order) >= 2:
                n_dev = max(n_dev, 1) if split_ratio[1] > 0 else 0
            dev_idx = set(order[:n_dev])
            for i, r in enumerate(rows_per_file):
                (dev_rows if i in dev_idx else train_rows).extend(r)
        if "train" in splits:
            write_csv(save_folder / "train.csv", train_rows)
        if "dev" in splits:
            write_csv(save_folder / "dev.csv", dev_rows)

    if "test" in splits:
        enrol_paths = sorted({a for _, a, _ in trials})
        test_paths = sorted({b for _, _, b in trials})
        roots = [audio_root(f) for f in folders]
        for name, paths in (("enrol.csv", enrol_paths), ("test.csv", test_paths)):
            rows = []
            for rel in paths:
                path = next((r / rel for r in roots if (r / rel).is_file()), None)
                if path is None:
                    skipped.append((rel, "missing"))
                    continue
                r = make_rows(speaker_of(rel), rel, path, 0.0, None, skipped)
                if r:
                    r[0][0] = trial_id(rel)
                    rows.extend(r)
            write_csv(save_folder / name, rows)

    report_skipped(skipped, save_folder)
    save_opts(save_folder, opts)
    out["n_skipped"] = len(skipped)
    return out


def trial_id(rel):
    """The manifest ID of a trial-list path (path without extension)."""
    return rel.rsplit(".", 1)[0]


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_folder", nargs="+")
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--verification_pairs_file")
    parser.add_argument("--dev_split", default="utterance")
    parser.add_argument("--seg_dur", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    splits = ["train", "dev"] + (["test"] if args.verification_pairs_file else [])
    print(prepare_voxceleb(args.data_folder, args.save_folder, args.verification_pairs_file,
                           splits=splits, dev_split=args.dev_split, seg_dur=args.seg_dur))
