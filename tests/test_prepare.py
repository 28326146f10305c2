"""Data preparation of the VoxCeleb MRL recipe and of the demo (generated audio)."""
import csv
import pathlib
import os

import pytest

from recipe_data import make_speech_commands, make_voxceleb, voice, write_wav

from speechbrain_mrl.data.audio import read_audio
from speechbrain_mrl.data.manifests import read_trials
from speechbrain_mrl import cli
from speechbrain_mrl.data import speech_commands
from speechbrain_mrl.data import preparation as common
from speechbrain_mrl.data import voxceleb as vp
from speechbrain_mrl.utils.download import sha256_of


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def vox(tmp_path):
    """Two VoxCeleb-style folders (e.g. vox1 + vox2) with bad files and a trial list."""
    vox1, vox2 = tmp_path / "vox1", tmp_path / "vox2" / "wav"
    make_voxceleb(vox1, speakers=("id10001", "id10002", "id10270", "id10271"))
    make_voxceleb(vox2, speakers=("id20001", "id20002"), ext="flac")
    (vox1 / "id10001" / "vid0" / "bad.wav").write_bytes(b"not audio at all")
    write_wav(vox1 / "id10002" / "vid0" / "empty.wav", voice(0, 0, 0))
    write_wav(vox2 / "id20001" / "vid0" / "short.flac", voice(0, 1600, 0))  # 0.1 s
    (vox2 / "id20002" / "vid1" / "clip.m4a").write_bytes(b"\x00" * 64)  # undecodable m4a
    trials = tmp_path / "trials.txt"
    trials.write_text("1 id10270/vid0/00001.wav id10270/vid1/00002.wav\n"
                      "0 id10270/vid0/00001.wav id10271/vid0/00002.wav\n")
    return tmp_path, [str(vox1), str(tmp_path / "vox2")], trials


def test_prepare_voxceleb(vox, capsys):
    tmp, folders, trials = vox
    save = tmp / "prep"
    out = vp.prepare_voxceleb(folders, save, trials, split_ratio=(75, 25), min_duration=0.5)
    assert "skipped 4 unreadable, empty or too-short file(s)" in capsys.readouterr().out
    assert out["n_skipped"] == 4
    skipped = (save / "skipped_files.txt").read_text()
    for name, why in (("bad.wav", "unreadable"), ("empty.wav", "empty"),
                      ("short.flac", "too short"), ("clip.m4a", "unreadable")):
        assert any(name in line and why in line for line in skipped.splitlines()), name
    train, dev = read_csv(save / "train.csv"), read_csv(save / "dev.csv")
    assert list(train[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    spks = {r["spk_id"] for r in train + dev}
    # both folders used, trial speakers never in training
    assert spks == {"id10001", "id10002", "id20001", "id20002"}
    # utterance split: every speaker in train, a quarter of its files in dev
    assert {r["spk_id"] for r in train} == spks and len(dev) == 4 and len(train) == 12
    assert not {r["ID"] for r in train} & {r["ID"] for r in dev}
    enrol, test = read_csv(save / "enrol.csv"), read_csv(save / "test.csv")
    assert [r["ID"] for r in enrol] == ["id10270/vid0/00001"]
    assert {r["ID"] for r in test} == {"id10270/vid1/00002", "id10271/vid0/00002"}
    row = train[0]
    assert int(row["stop"]) - int(row["start"]) == 19200 and float(row["duration"]) == 1.2
    assert (save / "prepared_data.png").read_bytes()[:4] == b"\x89PNG"  # the data's chart


def test_prepare_skip_if_prepared_and_options(vox):
    tmp, folders, trials = vox
    save = tmp / "prep"
    vp.prepare_voxceleb(folders, save, trials)
    mtime = os.path.getmtime(save / "train.csv")
    out = vp.prepare_voxceleb(folders, save, trials)  # same options: skipped
    assert os.path.getmtime(save / "train.csv") == mtime and "n_skipped" not in out
    vp.prepare_voxceleb(folders, save, trials, dev_split="speaker", split_ratio=(50, 50),
                        seg_dur=0.5, min_duration=0.3)  # other options: prepared again
    train, dev = read_csv(save / "train.csv"), read_csv(save / "dev.csv")
    assert not {r["spk_id"] for r in train} & {r["spk_id"] for r in dev}
    assert len({r["spk_id"] for r in dev}) == 2
    # 1.2-s training files cut into 0.5-s segments (the 0.2-s tail is too short)
    assert all(int(r["stop"]) - int(r["start"]) == 8000 for r in train)
    assert vp.prepare_voxceleb(folders, save, trials, skip_prep=True) == {}


def test_prepare_voxceleb_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        vp.prepare_voxceleb(tmp_path / "missing", tmp_path / "out", splits=["train"])
    make_voxceleb(tmp_path / "v", speakers=("id1", "id2"))
    with pytest.raises(ValueError, match="verification_pairs_file"):
        vp.prepare_voxceleb(tmp_path / "v", tmp_path / "out", splits=["train", "dev", "test"])
    out = vp.prepare_voxceleb(tmp_path / "v", tmp_path / "out2")  # no trial list: no test split
    assert sorted(out) == ["dev", "n_skipped", "train"]
    bad = tmp_path / "bad_trials.txt"
    bad.write_text("1 only_one_path\n")
    with pytest.raises(ValueError, match="expected"):
        read_trials(bad)


def test_prepare_voxceleb_valid_trials(vox):
    """Validation trials written once among the dev rows, kept on a skipped re-run."""
    tmp, folders, trials = vox
    save, vt = tmp / "prep", tmp / "prep" / "val_trials.txt"
    kwargs = dict(dev_split="speaker", split_ratio=(50, 50), valid_trials=vt, n_valid_trials=20)
    out = vp.prepare_voxceleb(folders, save, trials, **kwargs)
    assert out["valid_trials"] == str(vt)
    dev = read_csv(save / "dev.csv")
    spk = {r["ID"]: r["spk_id"] for r in dev}
    listed = read_trials(vt)
    assert len(listed) == 20 and sum(lab for lab, _, _ in listed) == 10
    assert all(a in spk and b in spk and (spk[a] == spk[b]) == bool(lab) for lab, a, b in listed)
    train_spks = {r["spk_id"] for r in read_csv(save / "train.csv")}
    assert len({spk[i] for _, a, b in listed for i in (a, b)}) == 2 and not set(spk.values()) & train_spks
    # the list train.py wrote before: make_trials of dev.csv's rows with the training seed
    rows = [list(r.values()) for r in dev]
    assert listed == common.make_trials(rows, 20, 1986)
    text, mtime = vt.read_text(), os.path.getmtime(vt)
    out = vp.prepare_voxceleb(folders, save, trials, **kwargs)  # skipped: file kept as is
    assert "n_skipped" not in out and os.path.getmtime(vt) == mtime
    vt.unlink()
    out = vp.prepare_voxceleb(folders, save, trials, **kwargs)  # skipped: missing list written again
    assert "n_skipped" not in out and vt.read_text() == text
    vt.unlink()
    assert vp.prepare_voxceleb(folders, save, trials, skip_prep=True, **kwargs) == {}
    assert vt.read_text() == text  # skip_prep: the user's manifests, the list still written
    with pytest.raises(ValueError, match="'dev' split"):
        vp.prepare_voxceleb(folders, save, trials, splits=["train"], valid_trials=vt)


def test_prepare_command_lines(vox, capsys):
    tmp, folders, trials = vox
    cli.main(["prepare-voxceleb", *folders, "--save_folder", str(tmp / "prep"),
              "--verification_pairs_file", str(trials), "--dev_split", "speaker", "--valid_trials",
              str(tmp / "prep" / "val.txt")])
    assert "'n_skipped': 4" in capsys.readouterr().out
    assert (tmp / "prep" / "test.csv").is_file() and read_trials(tmp / "prep" / "val.txt")
    data = make_speech_commands(tmp / "data")
    cli.main(["prepare-demo", "--data_folder", str(data), "--save_folder", str(tmp / "demo")])
    assert (tmp / "demo" / "val_trials.txt").is_file()


def test_make_trials_balanced():
    rows = [[f"s{s}_{u}", 1.0, "x", 0, 1, f"s{s}"] for s in range(5) for u in range(4)]
    trials = common.make_trials(rows, 40, seed=3)
    assert len(trials) == 40 and sum(t[0] for t in trials) == 20
    assert len({tuple(sorted(t[1:])) for t in trials}) == 40
    spk = {r[0]: r[5] for r in rows}
    assert all((spk[a] == spk[b]) == bool(lab) for lab, a, b in trials)
    assert trials == common.make_trials(rows, 40, seed=3)


def test_prepare_demo(tmp_path):
    data = make_speech_commands(tmp_path / "data")
    bad = data / "speech_commands" / "00000001" / "word_9.flac"
    bad.write_bytes(b"garbage")
    out = speech_commands.prepare_demo(data, tmp_path / "prep", n_val_speakers=2, n_val_trials=20,
                                    libri_seg_dur=1.0)
    train, dev = read_csv(out["train"]), read_csv(out["dev"])
    test_spks = set((data / "speech_commands/splits/test_speakers.txt").read_text().split())
    assert not test_spks & {r["spk_id"] for r in train + dev}
    assert len({r["spk_id"] for r in dev}) == 2
    assert not {r["spk_id"] for r in dev} & {r["spk_id"] for r in train}
    libri = [r for r in train if r["spk_id"].startswith("libri")]
    # 3.5 s -> 3 x 1 s + a 0.5-s tail (>= min_duration)
    assert sorted(float(r["duration"]) for r in libri) == [0.5] * 2 + [1.0] * 6
    assert "word_9.flac" in (tmp_path / "prep" / "skipped_files.txt").read_text()
    trials = read_trials(out["test_trials"])
    ids = {r["ID"] for r in read_csv(out["enrol"]) + read_csv(out["test"])}
    assert len(trials) == 60 and all(a in ids and b in ids for _, a, b in trials)
    assert len(read_trials(out["val_trials"])) == 20
    mtime = os.path.getmtime(out["train"])
    speech_commands.prepare_demo(data, tmp_path / "prep", n_val_speakers=2, n_val_trials=20,
                              libri_seg_dur=1.0)
    assert os.path.getmtime(out["train"]) == mtime


def test_demo_regroup_and_seeded_split(tmp_path):
    raw = tmp_path / "raw"
    for word in ("yes", "no"):
        for spk in ("aaaa1111", "bbbb2222", "cccc3333", "dddd4444"):
            for n in range(2):
                write_wav(raw / word / f"{spk}_nohash_{n}.wav", voice(0, 8000, n))
    write_wav(raw / "_background_noise_" / "noise.wav", voice(0, 8000, 0))
    sc = tmp_path / "speech_commands"
    speech_commands.regroup_speech_commands(raw, sc)
    assert sorted(p.name for p in (sc / "aaaa1111").iterdir()) == [
        "no_0.wav", "no_1.wav", "yes_0.wav", "yes_1.wav"]
    speech_commands.make_splits(sc, seed=17, n_trials=20)
    test = (sc / "splits" / "test_speakers.txt").read_text().split()
    assert len(test) == 1
    with pytest.raises(FileNotFoundError):
        speech_commands.prepare_demo(tmp_path / "nowhere", tmp_path / "p")


def test_prepare_demo_downloads_archive(tmp_path, monkeypatch, no_network):
    """download=True without a local copy: archive fetched (file:// here), extracted, regrouped."""
    import tarfile

    raw = tmp_path / "archive_src"
    spks = [f"{i:04x}abcd" for i in range(8)]
    for word in ("yes", "no", "up"):
        for s, spk in enumerate(spks):
            for n in range(2):
                write_wav(raw / word / f"{spk}_nohash_{n}.wav", voice(s, 8000, n))
    write_wav(raw / "_background_noise_" / "noise.wav", voice(0, 8000, 0))
    archive = tmp_path / "served" / "speech_commands_test_set_v0.02.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(raw, arcname=".")
    monkeypatch.setattr(speech_commands, "SC_URL", archive.as_uri())
    monkeypatch.setattr(speech_commands, "SC_SHA256", sha256_of(archive))
    data = tmp_path / "data"
    out = speech_commands.prepare_demo(data, tmp_path / "prep", n_val_speakers=1, n_val_trials=10,
                                    download=True)
    sc = data / "speech_commands"
    assert sorted(p.name for p in sc.iterdir() if p.name != "splits") == spks
    assert sorted(p.name for p in (sc / spks[0]).iterdir()) == [
        "no_0.wav", "no_1.wav", "up_0.wav", "up_1.wav", "yes_0.wav", "yes_1.wav"]
    test_spks = (sc / "splits" / "test_speakers.txt").read_text().split()
    assert len(test_spks) == 2
    trials = read_trials(out["test_trials"])
    assert trials and {lab for lab, _, _ in trials} == {0, 1}
    assert all(common.speaker_of(p) in test_spks for _, a, b in trials for p in (a, b))
    assert not {r["spk_id"] for r in read_csv(out["train"])} & set(test_spks)
    # the archive is kept: a second preparation elsewhere does not download again
    monkeypatch.setattr(speech_commands, "SC_URL", (tmp_path / "gone" / archive.name).as_uri())
    (data / "speech_commands" / "splits" / "trials_test.txt").unlink()
    speech_commands.prepare_demo(data, tmp_path / "prep2", n_val_speakers=1, n_val_trials=10,
                              download=True)
    assert (data / "speech_commands" / "splits" / "trials_test.txt").is_file()


def test_long_validation_list_holds_out_readers(tmp_path):
    """Long-utterance validation: held-out readers only, disjoint segments, all target pairs."""
    data = make_speech_commands(tmp_path / "data", libri=2, libri_long=0)
    libri = data / "librispeech_train_clean_100"
    for r, seconds in enumerate((13.0, 9.0, 12.5, 5.0)):  # 3, 2 (+0.5 s tail), 3, 1 segments
        write_wav(libri / f"{200 + r}" / f"{200 + r}-1-0001.flac",
                  voice(30 + r, int(seconds * 16000), 50 + r))
    out = speech_commands.prepare_demo(data, tmp_path / "prep", n_val_speakers=2, n_val_trials=20,
                                       n_long_val_readers=5, long_val_segment_dur=4.0,
                                       n_long_val_trials=30)
    long_rows = read_csv(out["dev_long"])
    assert {r["spk_id"] for r in long_rows} == {"libri200", "libri202"}  # >= 3 segments each
    by_spk = {}
    for r in long_rows:
        by_spk.setdefault(r["spk_id"], []).append((int(r["start"]), int(r["stop"])))
    for spans in by_spk.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no shared audio
    train_spks = {r["spk_id"] for r in read_csv(out["train"])}
    assert not train_spks & set(by_spk) and {"libri201", "libri203"} <= train_spks
    trials = read_trials(out["val_long_trials"])
    spk = {r["ID"]: r["spk_id"] for r in long_rows}
    assert all(lab == int(spk[a] == spk[b]) and a != b for lab, a, b in trials)
    assert sum(lab for lab, _, _ in trials) == 3 + 3  # every same-reader pair
    assert len(trials) == 15  # 6 segments: every pair, as fewer than 30 exist
    none = speech_commands.prepare_demo(data, tmp_path / "prep0", n_val_speakers=2,
                                        n_val_trials=20, n_long_val_readers=0)
    assert "dev_long" not in none
    assert {"libri200", "libri202"} <= {r["spk_id"] for r in read_csv(none["train"])}
    with pytest.raises(ValueError, match="n_long_val_readers=5 but only 0 LibriSpeech reader"):
        speech_commands.prepare_demo(data, tmp_path / "prep1", n_val_speakers=2, n_val_trials=20,
                                     n_long_val_readers=5, long_val_segment_dur=6.0)


def test_prepare_demo_real_data(shared_data, tmp_path):
    out = speech_commands.prepare_demo(shared_data, tmp_path / "prep")
    train = read_csv(out["train"])
    long_rows = read_csv(out["dev_long"])
    held_out = {r["spk_id"] for r in long_rows}
    assert len(held_out) == 60 and not held_out & {r["spk_id"] for r in train}
    assert len({r["spk_id"] for r in train}) == 159 + 251 - 60
    assert all(2.0 <= float(r["duration"]) <= 4.0 for r in long_rows)
    assert len(read_trials(out["test_trials"])) == 20000
    trials = read_trials(out["val_long_trials"])
    assert len(trials) == 10000 and sum(lab for lab, _, _ in trials) > 250


def encode_m4a(path, data):
    """Writes ``data`` (16 kHz mono) as AAC in an .m4a file with torchcodec (needs FFmpeg)."""
    import torch

    try:
        from torchcodec.encoders import AudioEncoder

        path.parent.mkdir(parents=True, exist_ok=True)
        AudioEncoder(torch.from_numpy(data)[None], sample_rate=16000).to_file(str(path))
    except (ImportError, RuntimeError, OSError) as err:
        if os.environ.get("MRL_REQUIRE_FFMPEG"):
            raise
        pytest.skip(f"torchcodec cannot encode m4a here (FFmpeg libraries missing? "
                    f"apt-get install ffmpeg): {err}")


def test_prepare_voxceleb2_m4a(tmp_path):
    """VoxCeleb2 layout (dev/aac/<spk>/<video>/<utt>.m4a) decoded through torchcodec."""
    import numpy as np

    root = tmp_path / "vox2"
    clips = {}
    for s, spk in enumerate(("id00012", "id00015")):
        for v in range(2):
            rel = f"{spk}/vid{v}/00001.m4a"
            clips[rel] = voice(s, 24000, 10 * s + v)  # 1.5 s
            encode_m4a(root / "dev" / "aac" / rel, clips[rel])
    save = tmp_path / "prep"
    out = vp.prepare_voxceleb(str(root), save, splits=["train", "dev"], split_ratio=(50, 50),
                              seg_dur=1.0, min_duration=0.3)
    assert out["n_skipped"] == 0
    rows = read_csv(save / "train.csv") + read_csv(save / "dev.csv")
    assert {r["spk_id"] for r in rows} == {"id00012", "id00015"}
    assert sorted({r["wav"] for r in rows}) == sorted(str(root / "dev" / "aac" / r) for r in clips)
    assert len(rows) == 8  # 1.5 s files in 1-s segments: [0, 1) and the 0.5-s tail [1, 1.5)
    for r in rows:
        start, stop = int(r["start"]), int(r["stop"])
        src = clips[os.path.relpath(r["wav"], root / "dev" / "aac")][start:stop]
        sig = read_audio(r["wav"], start, stop, 16000)
        assert abs(sig.shape[0] - src.shape[0]) <= 1024  # AAC frame granularity
        n = min(sig.shape[0], src.shape[0])
        corr = np.corrcoef(sig[:n].numpy(), src[:n])[0, 1]
        assert corr > 0.95, corr


def test_prepare_rejects_nan_and_silent_audio(vox):
    """Regression: NaN-valued wavs reached training and poisoned the checkpoints."""
    import numpy as np
    import soundfile as sf

    tmp, folders, trials = vox
    bad = pathlib.Path(folders[0]) / "id10001" / "vidx"
    bad.mkdir()
    sf.write(str(bad / "nan.wav"), np.full(16000, np.nan, dtype="float32"), 16000, subtype="FLOAT")
    write_wav(bad / "zero.wav", np.zeros(16000, dtype="float32"))
    save = tmp / "prep_bad"
    out = vp.prepare_voxceleb(folders, save, trials, min_duration=0.5)
    listed = (save / "skipped_files.txt").read_text()
    assert "nan.wav\tnon-finite samples (NaN/Inf)" in listed
    assert "zero.wav\tall zeros (silence)" in listed
    assert out["n_skipped"] >= 2
    rows = open(out["train"]).read() + open(out["dev"]).read()
    assert "nan.wav" not in rows and "zero.wav" not in rows


def test_prepare_again_when_trials_or_files_change(vox):
    """Regression: a rewritten trial list or an added speaker folder left stale manifests."""
    tmp, folders, trials = vox
    save = tmp / "prep_change"
    vt = save / "val.txt"
    opts = dict(valid_trials=vt, n_valid_trials=10, split_ratio=(50, 50))  # 2 dev files a speaker
    vp.prepare_voxceleb(folders, save, trials, **opts)
    assert "n_skipped" not in vp.prepare_voxceleb(folders, save, trials, **opts)
    original = trials.read_text()
    # same file, other speakers: id10001 becomes a test speaker and must leave training
    trials.write_text("1 id10001/vid0/00001.wav id10001/vid1/00001.wav\n"
                      "0 id10001/vid0/00001.wav id10002/vid0/00001.wav\n")
    try:
        out = vp.prepare_voxceleb(folders, save, trials, **opts)
        assert "n_skipped" in out
        assert "id10001" not in open(out["train"]).read() + open(out["dev"]).read()
    finally:
        trials.write_text(original)
    vp.prepare_voxceleb(folders, save, trials, **opts)
    write_wav(pathlib.Path(folders[0]) / "id10999" / "v" / "00001.wav", voice(9, 20000, 1))
    out = vp.prepare_voxceleb(folders, save, trials, **opts)
    assert "n_skipped" in out  # a new speaker folder: prepared again
    assert "id10999" in open(out["train"]).read() + open(out["dev"]).read()


def test_prepare_errors_name_the_cause(tmp_path):
    """Regression: an empty folder or too few speakers ended in an IndexError inside SpeechBrain,
    and a trial list of absent speakers gave empty manifests with a warning only."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no training speaker folders"):
        vp.prepare_voxceleb(tmp_path / "empty", tmp_path / "o1")
    make_voxceleb(tmp_path / "two", speakers=("id1", "id2"))
    with pytest.raises(ValueError, match="^2 speakers are too few for dev_split 'speaker' .*"
                                         "--dev_split utterance with a split_ratio"):
        vp.prepare_voxceleb(tmp_path / "two", tmp_path / "o2", dev_split="speaker",
                            split_ratio=(90, 10))
    with pytest.raises(ValueError, match="the dev split is empty .*2 training speakers"):
        vp.prepare_voxceleb(tmp_path / "two", tmp_path / "o2", dev_split="speaker",
                            split_ratio=(100, 0))
    trials = tmp_path / "t.txt"
    trials.write_text("1 id9/v/1.wav id9/v/2.wav\n0 id9/v/1.wav id8/v/1.wav\n")
    with pytest.raises(ValueError, match="none of the enrol files of .*t.txt is under"):
        vp.prepare_voxceleb(tmp_path / "two", tmp_path / "o3", trials)
    trials.write_text("yes id1/vid0/00001.wav id2/vid0/00001.wav\n")
    with pytest.raises(ValueError, match=r"t.txt:1: expected '<1\|0> <enrol> <test>'"):
        vp.prepare_voxceleb(tmp_path / "two", tmp_path / "o4", trials)


def test_few_speakers_get_a_validation_split(tmp_path):
    """Regression: 12 speakers with the recipes' split_ratio [98, 2] gave an empty dev split."""
    speakers = [f"spk{i:02d}" for i in range(12)]
    make_voxceleb(tmp_path / "v", speakers=speakers, videos=1, utts=3)
    save, vt = tmp_path / "prep", tmp_path / "prep" / "val_trials.txt"
    vp.prepare_voxceleb(tmp_path / "v", save, split_ratio=(98, 2), dev_split="speaker",
                        valid_trials=vt, n_valid_trials=100)
    dev_spks = {r["spk_id"] for r in read_csv(save / "dev.csv")}
    train_spks = {r["spk_id"] for r in read_csv(save / "train.csv")}
    assert len(dev_spks) == 2 and len(train_spks) == 10 and not dev_spks & train_spks
    labels = [lab for lab, _, _ in read_trials(vt)]
    assert 0 in labels and 1 in labels  # target and non-target trials: an EER can be computed
    # speakers with one file each: no target trial, said in one line with the options to change
    make_voxceleb(tmp_path / "one", speakers=speakers, videos=1, utts=1)
    with pytest.raises(ValueError, match=r"^no target validation trial .*change split_ratio or "
                                         r"dev_split$"):
        vp.prepare_voxceleb(tmp_path / "one", tmp_path / "p2", split_ratio=(98, 2),
                            dev_split="speaker", valid_trials=tmp_path / "p2" / "vt.txt")
