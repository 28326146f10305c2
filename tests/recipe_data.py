"""Tiny generated datasets and configs for the recipe tests (recipes/VoxCeleb/MRL)."""
import pathlib
import sys

import numpy as np
import soundfile as sf

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MRL"
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

SR = 16000

# a tiny ReDimNet (fast on CPU) as a yaml flow mapping for command-line overrides
TINY_REDIMNET = (
    "{F: 16, C: 4, block_1d_type: conv, block_2d_type: basic_resnet, "
    "stages_setup: [[2, 1, 1, [[3, 3]], null], [2, 1, 1, [[3, 3]], null]], "
    "group_divisor: 1, embed_dim: 16, hop_length: 160, spec_params: {}}"
)


def voice(spk_index, n_samples, seed):
    """A speaker-dependent harmonic signal with noise (learnable 'speaker' identity)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SR
    f0 = 90.0 + 23.0 * spk_index
    sig = sum((0.5 / k) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) for k in range(1, 6))
    sig = sig * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    return (0.3 * sig + 0.02 * rng.standard_normal(n_samples)).astype("float32")


def write_wav(path, data, sr=SR):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr)
    return path


def make_voxceleb(root, speakers=("id10001", "id10002", "id10003", "id10004"), videos=2,
                  utts=2, duration=1.2, ext="wav"):
    """``<root>/<spk>/<video>/<utt>.<ext>`` files; returns their relative paths."""
    rels = []
    for s, spk in enumerate(speakers):
        for v in range(videos):
            for u in range(utts):
                rel = f"{spk}/vid{v}/{u + 1:05d}.{ext}"
                write_wav(pathlib.Path(root) / rel, voice(s, int(duration * SR), hash(rel) % 1000))
                rels.append(rel)
    return rels


def make_flat_speakers(root, n_speakers=12, utts=4, duration=1.2, ext="flac"):
    """``<root>/<spk>/<utt>.<ext>`` files (no session folders); returns ``root``."""
    root = pathlib.Path(root)
    for s in range(n_speakers):
        for u in range(utts):
            write_wav(root / f"spk{s:02d}" / f"utt{u}.{ext}", voice(s, int(duration * SR), 10 * s + u))
    return root


def make_speech_commands(root, n_train=8, n_test=4, clips=6, duration=0.5, libri=2, libri_long=2):
    """A miniature copy of the demo data layout (speech_commands + splits + trials, librispeech).

    ``libri`` readers of 3.5 s (training) and ``libri_long`` readers of 12.5 s
    (three 4-s segments: the long-utterance validation list).
    """
    import random

    root = pathlib.Path(root)
    sc = root / "speech_commands"
    spks = [f"{i:08x}" for i in range(1, n_train + n_test + 1)]
    files = {}
    for i, spk in enumerate(spks):
        for c in range(clips):
            rel = f"{spk}/word_{c}.flac"
            write_wav(sc / rel, voice(i, int(duration * SR), i * 100 + c))
            files.setdefault(spk, []).append(rel)
    (sc / "splits").mkdir(parents=True, exist_ok=True)
    (sc / "splits" / "train_speakers.txt").write_text("".join(s + "\n" for s in spks[:n_train]))
    (sc / "splits" / "test_speakers.txt").write_text("".join(s + "\n" for s in spks[n_train:]))
    rng = random.Random(0)
    test = spks[n_train:]
    trials = set()
    while len(trials) < 60:
        a = rng.choice(test)
        same = rng.random() < 0.5
        b = a if same else rng.choice([s for s in test if s != a])
        x, y = rng.choice(files[a]), rng.choice(files[b])
        if x != y:
            trials.add((int(a == b), x, y))
    (sc / "splits" / "trials_test.txt").write_text(
        "".join(f"{lab} {x} {y}\n" for lab, x, y in sorted(trials)))
    for r in range(libri):
        write_wav(root / "librispeech_train_clean_100" / f"{100 + r}" / f"{100 + r}-1-0001.flac",
                  voice(n_train + n_test + r, int(3.5 * SR), 7 + r))
    for r in range(libri_long):
        write_wav(root / "librispeech_train_clean_100" / f"{300 + r}" / f"{300 + r}-1-0001.flac",
                  voice(n_train + n_test + libri + r, int(12.5 * SR), 70 + r))
    return root


def scratch_overrides(data, out, n_classes, epochs=1, extra=()):
    """Command-line overrides of demo_scratch.yaml for a few-second run."""
    return [
        str(RECIPE / "hparams" / "demo_scratch.yaml"),
        "--data_folder", str(data), "--output_folder", str(out / "scratch"),
        "--prep_folder", str(out / "data"), "--redimnet_config", TINY_REDIMNET,
        "--embed_dim", "16", "--mrl_dims", "[4, 8, 16]", "--n_classes", str(n_classes),
        "--batch_size", "8", "--number_of_epochs", str(epochs), "--n_val_speakers", "2", "--n_valid_trials", "20",
        "--ckpt_interval_minutes", "0", "--noprogressbar", "--device", "cpu", *extra,
    ]


def mrl_overrides(data, out, n_classes, backbone, extra=()):
    """Command-line overrides of demo_mrl.yaml for a few-second run."""
    return [
        str(RECIPE / "hparams" / "demo_mrl.yaml"),
        "--data_folder", str(data), "--output_folder", str(out / "mrl"),
        "--prep_folder", str(out / "data"), "--pretrained_backbone", str(backbone),
        "--embed_dim", "16", "--mrl_dims", "[4, 8, 16]", "--n_classes", str(n_classes),
        "--batch_size", "8", "--number_of_epochs", "1", "--n_val_speakers", "2",
        "--n_valid_trials", "20", "--ckpt_interval_minutes", "0", "--noprogressbar",
        "--device", "cpu", *extra,
    ]


def demo_args(data, out, n_classes):
    """run_demo.py arguments for a few-second end-to-end run on tiny data."""
    common = (f"--n_classes {n_classes} --batch_size 8 --n_val_speakers 2 --n_valid_trials 20 "
              "--ckpt_interval_minutes 0 --device cpu --embed_dim 16 --mrl_dims '[4, 8, 16]' ")
    return ["--data_folder", str(data), "--output_folder", str(out),
            "--scratch_epochs", "1", "--mrl_epochs", "1", "--train_test",
            "--scratch_overrides", common + f"--redimnet_config '{TINY_REDIMNET}'",
            "--mrl_overrides", common]


def make_librispeech(root, splits=None, chapters=2, utts=2, duration=1.5):
    """``<root>/LibriSpeech/<split>/<reader>/<chapter>/<reader>-<chapter>-<utt>.flac`` + SPEAKERS.TXT.

    ``splits``: ``{split: number of readers}`` (default 4 training readers,
    4 dev-clean and 4 test-clean readers). Reader IDs are unique across
    splits; sexes alternate F/M. Returns ``{split: [reader, ...]}``.
    """
    splits = splits or {"train-clean-100": 4, "dev-clean": 4, "test-clean": 4}
    base = pathlib.Path(root) / "LibriSpeech"
    readers, lines, index = {}, [";ID  |SEX| SUBSET           |MINUTES| NAME\n"], 0
    for split, n in splits.items():
        for _ in range(n):
            reader = str(100 + 17 * index)
            for c in range(chapters):
                chapter = str(1000 + 10 * index + c)
                for u in range(utts):
                    write_wav(base / split / reader / chapter / f"{reader}-{chapter}-{u:04d}.flac",
                              voice(index, int(duration * SR), 31 * index + 7 * c + u))
            lines.append(f"{reader:<5}| {'FM'[index % 2]} | {split:<16} | 25.03 | Reader {reader}\n")
            readers.setdefault(split, []).append(reader)
            index += 1
    (base / "SPEAKERS.TXT").write_text("".join(lines))
    return readers
