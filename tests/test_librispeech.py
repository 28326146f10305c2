"""LibriSpeech: preparation of the official layout, trial lists, download, and the recipe."""
import csv
import hashlib
import http.server
import io
import json
import os
import pathlib
import tarfile
import threading

import pytest

from recipe_data import ROOT, TINY_REDIMNET, make_librispeech, voice, write_wav

from speechbrain_mrl import cli
from speechbrain_mrl.data import librispeech as ls
from speechbrain_mrl.utils.download import ChecksumError, download
from speechbrain_mrl.data.manifests import read_trials

LIBRI_RECIPE = ROOT / "recipes" / "LibriSpeech" / "MRL"
VOX_RECIPE = ROOT / "recipes" / "VoxCeleb" / "MRL"


def read_csv(path):
    with open(path) as f:
        return {r["ID"]: r for r in csv.DictReader(f)}


def chapter(uid):
    """The chapter of a manifest ID (``<reader>-<chapter>-<utt>[_<segment>]``)."""
    return uid.split("-")[1]


def recording(uid):
    """The utterance (recording) of a manifest ID, segment number left out."""
    return uid.split("_")[0]


@pytest.fixture
def libri(tmp_path):
    readers = make_librispeech(tmp_path / "data", {"train-clean-100": 4, "dev-clean": 4,
                                                  "test-clean": 4, "test-other": 2},
                               duration=2.2)
    train_dir = tmp_path / "data" / "LibriSpeech" / "train-clean-100"
    r0 = readers["train-clean-100"][0]
    first_chapter = sorted((train_dir / r0).iterdir())[0]
    (first_chapter / f"{r0}-{first_chapter.name}-0099.flac").write_bytes(b"not audio")
    write_wav(first_chapter / f"{r0}-{first_chapter.name}-0098.flac", voice(0, 4000, 1))  # 0.25 s
    return tmp_path, readers


def test_prepare_official_layout(libri):
    tmp, readers = libri
    save = tmp / "prep"
    out = ls.prepare_librispeech(tmp / "data", save, test_splits=["test-clean", "test-other"],
                                 n_valid_trials=40, n_test_trials=60)
    assert out["n_skipped"] == 2
    skipped = (save / "skipped_files.txt").read_text()
    assert "-0099.flac\tunreadable" in skipped and "-0098.flac\ttoo short" in skipped
    train, dev = read_csv(out["train"]), read_csv(out["dev"])
    enrol, test = read_csv(out["enrol"]), read_csv(out["test"])
    assert {r["spk_id"] for r in train.values()} == set(readers["train-clean-100"])
    assert len(train) == 4 * 2 * 2 and f"{readers['train-clean-100'][1]}-1010-0001" in train
    assert {r["spk_id"] for r in dev.values()} == set(readers["dev-clean"])
    assert {r["spk_id"] for r in {**enrol, **test}.values()} <= set(
        readers["test-clean"] + readers["test-other"])
    rows = {**dev, **enrol, **test}
    for key, manifests in (("valid_trials", dev), ("test_trials", {**enrol, **test})):
        trials = read_trials(out[key])
        assert {lab for lab, _, _ in trials} == {0, 1}
        for lab, a, b in trials:
            assert a in manifests and b in manifests
            same_reader = rows[a]["spk_id"] == rows[b]["spk_id"]
            assert same_reader == bool(lab)
            assert recording(a) != recording(b) and rows[a]["wav"] != rows[b]["wav"]
            if lab:  # target trials across chapters: never the same recording session
                assert chapter(a) != chapter(b)
        # speaker-disjoint from training
        assert not {rows[i]["spk_id"] for _, a, b in trials for i in (a, b)} & {
            r["spk_id"] for r in train.values()}
    assert not {r["spk_id"] for r in dev.values()} & {r["spk_id"] for r in test.values()}
    assert read_trials(out["valid_trials"]) == read_trials(out["valid_trials"])  # seeded
    assert (save / "prepared_data.png").read_bytes()[:4] == b"\x89PNG"


def test_trial_segments_and_same_sex(libri):
    tmp, readers = libri
    out = ls.prepare_librispeech(tmp / "data", tmp / "prep", trial_seg_dur=1.0, min_duration=0.5,
                                 same_sex_nontarget=True, n_valid_trials=200, n_test_trials=200)
    sex = ls.read_speakers(tmp / "data" / "LibriSpeech" / "SPEAKERS.TXT")
    dev = read_csv(out["dev"])
    # 2.2-s utterances in 1-s segments: two of 1 s and a 0.2-s tail (too short, left out)
    assert all(float(r["duration"]) == 1.0 for r in dev.values()) and len(dev) == 4 * 2 * 2 * 2
    trials = read_trials(out["valid_trials"])
    assert {lab for lab, _, _ in trials} == {0, 1}
    for lab, a, b in trials:
        assert recording(a) != recording(b)  # two segments of one recording are never paired
        if lab:
            assert chapter(a) != chapter(b)
        else:
            assert sex[dev[a]["spk_id"]]["sex"] == sex[dev[b]["spk_id"]]["sex"]
    # a reader missing from SPEAKERS.TXT cannot be given a same-sex non-target trial
    speakers = tmp / "data" / "LibriSpeech" / "SPEAKERS.TXT"
    speakers.write_text("".join(line for line in speakers.read_text().splitlines(True)
                                if not line.startswith(readers["dev-clean"][0] + " ")))
    with pytest.raises(ValueError, match=rf"same_sex_nontarget .*{readers['dev-clean'][0]}"):
        ls.prepare_librispeech(tmp / "data", tmp / "prep", same_sex_nontarget=True)


def test_prepare_again_only_when_inputs_or_options_change(libri):
    tmp, readers = libri
    save = tmp / "prep"
    kwargs = dict(n_valid_trials=20, n_test_trials=20)
    ls.prepare_librispeech(tmp / "data", save, **kwargs)
    mtime = os.path.getmtime(save / "train.csv")
    out = ls.prepare_librispeech(tmp / "data", save, **kwargs)  # nothing changed: skipped
    assert "n_skipped" not in out and os.path.getmtime(save / "train.csv") == mtime
    ls.prepare_librispeech(tmp / "data", save, seg_dur=1.0, **kwargs)  # an option changed
    train = read_csv(save / "train.csv")
    assert all(float(r["duration"]) <= 1.0 for r in train.values())
    mtime = os.path.getmtime(save / "train.csv")
    reader = readers["train-clean-100"][2]
    write_wav(tmp / "data" / "LibriSpeech" / "train-clean-100" / reader / "1020" /
              f"{reader}-1020-0005.flac", voice(2, 32000, 5))  # an added utterance
    ls.prepare_librispeech(tmp / "data", save, seg_dur=1.0, **kwargs)
    assert os.path.getmtime(save / "train.csv") != mtime
    assert f"{reader}-1020-0005_0" in read_csv(save / "train.csv")
    mtime = os.path.getmtime(save / "train.csv")
    speakers = tmp / "data" / "LibriSpeech" / "SPEAKERS.TXT"
    speakers.write_text(speakers.read_text() + "9999 | F | train-other-500  | 1.00 | New\n")
    ls.prepare_librispeech(tmp / "data", save, seg_dur=1.0, **kwargs)
    assert os.path.getmtime(save / "train.csv") != mtime
    assert ls.prepare_librispeech(tmp / "data", save, skip_prep=True) == {}


def test_prepare_errors(libri, capsys):
    tmp, readers = libri
    with pytest.raises(FileNotFoundError, match="train-clean-360 not found .*download=True"):
        ls.prepare_librispeech(tmp / "data", tmp / "p", train_splits=["train-clean-360"])
    with pytest.raises(ValueError, match=r"split\(s\) \['dev-clean'\] given twice"):
        ls.prepare_librispeech(tmp / "data", tmp / "p", test_splits=["dev-clean"])
    with pytest.raises(ValueError, match="trial_seg_dur must be a positive number"):
        ls.prepare_librispeech(tmp / "data", tmp / "p", trial_seg_dur=0)
    with pytest.raises(ValueError, match="train_splits: unknown split"):
        ls.prepare_librispeech(tmp / "data", tmp / "p", train_splits=["dev-clean"])
    # a reader in both the validation and the test splits
    src = tmp / "data" / "LibriSpeech" / "dev-clean" / readers["dev-clean"][0]
    dest = tmp / "data" / "LibriSpeech" / "test-other" / readers["dev-clean"][0]
    dest.mkdir(parents=True)
    first = sorted(src.iterdir())[0]
    first.rename(dest / first.name)
    with pytest.raises(ValueError, match="share 1 reader"):
        ls.prepare_librispeech(tmp / "data", tmp / "p", test_splits=["test-clean", "test-other"])
    # the command line: one line on error, status 1
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["prepare-librispeech", str(tmp / "data"), "--save_folder", str(tmp / "p"),
                 "--train_splits", "train-clean-360"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "error: LibriSpeech split(s) train-clean-360 not found" in err


def test_command_line(libri, capsys):
    tmp, _ = libri
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare-librispeech", "--help"])
    assert exit_info.value.code == 0 and "--same_sex_nontarget" in capsys.readouterr().out
    out = cli.main(["prepare-librispeech", str(tmp / "data" / "LibriSpeech"), "--save_folder",
                    str(tmp / "p"), "--test_splits", "--n_valid_trials", "10"])
    assert set(out) == {"train", "dev", "valid_trials", "n_skipped"}
    assert len(read_trials(out["valid_trials"])) == 10


# ---------------------------------------------------------------- download
class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` ({path: bytes}) with HTTP Range support; ``cut``: bytes sent before
    the first response is cut short; every request's Range header goes to ``ranges``."""

    files, ranges, cut = {}, [], None

    def do_GET(self):  # noqa: N802 (http.server's name)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if type(self).cut is not None:
            body, type(self).cut = body[:type(self).cut], None  # the connection drops
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files, RangeHandler.ranges, RangeHandler.cut = {}, [], None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler
    httpd.shutdown()
    httpd.server_close()


def archive_of(folder, split):
    """The official archive layout of one split: ``LibriSpeech/<split>/...`` and the notes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder / "LibriSpeech" / split, arcname=f"LibriSpeech/{split}")
        tar.add(folder / "LibriSpeech" / "SPEAKERS.TXT", arcname="LibriSpeech/SPEAKERS.TXT")
    return buf.getvalue()


def test_download_and_prepare_through_a_local_server(tmp_path, server, monkeypatch):
    url, handler = server
    src = tmp_path / "src"
    make_librispeech(src, {"train-clean-100": 3, "dev-clean": 3})
    for split in ("train-clean-100", "dev-clean"):
        data = archive_of(src, split)
        handler.files[f"/{split}.tar.gz"] = data
        monkeypatch.setitem(ls.SHA256, split, hashlib.sha256(data).hexdigest())
    data = tmp_path / "data"
    out = ls.prepare_librispeech(data, tmp_path / "prep", test_splits=[], n_valid_trials=20,
                                 download=True, url=url)
    assert sorted(p.name for p in (data / "LibriSpeech").iterdir()) == [
        "SPEAKERS.TXT", "dev-clean", "train-clean-100"]
    assert not list(data.glob("*.tar.gz")) and not list(data.glob(".*"))  # archives removed
    assert len({r["spk_id"] for r in read_csv(out["train"]).values()}) == 3
    # a split that is there is not downloaded again
    handler.ranges.clear()
    ls.download_librispeech(data, ["train-clean-100"], url)
    assert handler.ranges == []


def test_download_checksum_mismatch_is_refused(tmp_path, server, monkeypatch):
    url, handler = server
    make_librispeech(tmp_path / "src", {"dev-clean": 2})
    handler.files["/dev-clean.tar.gz"] = archive_of(tmp_path / "src", "dev-clean")
    monkeypatch.setitem(ls.SHA256, "dev-clean", "0" * 64)
    with pytest.raises(ChecksumError, match="SHA-256 is .*expected 0000"):
        ls.download_librispeech(tmp_path / "data", ["dev-clean"], url)
    assert len(handler.ranges) == 1  # refused at once, not retried
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # nothing kept
    # an archive put there by hand is checked the same way, and left for the user to remove
    (tmp_path / "data" / "dev-clean.tar.gz").write_bytes(handler.files["/dev-clean.tar.gz"])
    with pytest.raises(ChecksumError, match="dev-clean.tar.gz: its SHA-256 is not"):
        ls.download_librispeech(tmp_path / "data", ["dev-clean"], url)
    assert len(handler.ranges) == 1 and not (tmp_path / "data" / "LibriSpeech").exists()


def test_download_resumes_after_a_cut(tmp_path, server):
    url, handler = server
    data = os.urandom(300_000)
    handler.files["/a.tar.gz"] = data
    sha = hashlib.sha256(data).hexdigest()
    handler.cut = 100_000  # the first response stops after 100 kB
    dest = download(f"{url}/a.tar.gz", tmp_path / "a.tar.gz", sha256=sha, resume=True,
                    retries=2, backoff=0.01)
    assert dest.read_bytes() == data
    assert handler.ranges == [None, "bytes=100000-"]  # the second attempt asked for the rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]
    # across runs: a part file left by a killed download is continued
    (tmp_path / ".b.tar.gz.part").write_bytes(data[:123_456])
    handler.files["/b.tar.gz"] = data
    handler.ranges.clear()
    download(f"{url}/b.tar.gz", tmp_path / "b.tar.gz", sha256=sha, resume=True)
    assert handler.ranges == ["bytes=123456-"] and (tmp_path / "b.tar.gz").read_bytes() == data
    # a complete part file (killed before the rename): the server has nothing more to send
    (tmp_path / ".c.tar.gz.part").write_bytes(data)
    handler.files["/c.tar.gz"] = data
    download(f"{url}/c.tar.gz", tmp_path / "c.tar.gz", sha256=sha, resume=True)
    assert (tmp_path / "c.tar.gz").read_bytes() == data
    # a corrupted part file fails the checksum and is removed: the next run starts afresh
    (tmp_path / ".d.tar.gz.part").write_bytes(b"x" * 1000)
    handler.files["/d.tar.gz"] = data
    with pytest.raises(ChecksumError):
        download(f"{url}/d.tar.gz", tmp_path / "d.tar.gz", sha256=sha, resume=True)
    assert not (tmp_path / ".d.tar.gz.part").exists()
    download(f"{url}/d.tar.gz", tmp_path / "d.tar.gz", sha256=sha, resume=True)
    assert (tmp_path / "d.tar.gz").read_bytes() == data


# ---------------------------------------------------------------- the recipe
def _tree(path):
    from test_recipe import _hparams_tree

    return _hparams_tree(path)


DATA_KEYS = {"datasets", "data_folder", "download", "train_splits", "valid_splits", "test_splits",
             "verification_file", "split_ratio", "dev_split", "trial_seg_dur", "same_sex_nontarget",
             "n_test_trials", "test_trials", "prepare_data"}


@pytest.mark.parametrize("name", ["mrl_b0", "mrl_b2", "mrl_b6", "mrl_M", "scratch_redimnet"])
def test_hparams_agree_with_the_voxceleb_files(name):
    """The same keys in the same order with the same values, the data section aside."""
    libri, vox = _tree(LIBRI_RECIPE / "hparams" / f"{name}.yaml"), _tree(
        VOX_RECIPE / "hparams" / f"{name}.yaml")
    assert [k for k in libri if k not in DATA_KEYS] == [k for k in vox if k not in DATA_KEYS]
    assert {k: v for k, v in libri.items() if k not in DATA_KEYS} == {
        k: v for k, v in vox.items() if k not in DATA_KEYS}
    assert libri["prepare_data"][0] == (
        "!name:speechbrain_mrl.data.librispeech.prepare_librispeech")
    args = libri["prepare_data"][1]
    import inspect

    assert set(args) <= set(inspect.signature(ls.prepare_librispeech).parameters)
    assert libri["datasets"] == ["librispeech"]
    # the mrl_*.yaml files are the same text but for the backbone's name
    if name.startswith("mrl_") and name != "mrl_b2":
        backbone = name.split("_")[1]
        text = (LIBRI_RECIPE / "hparams" / f"{name}.yaml").read_text()
        for old, new in ((f"{backbone}-vox2-ptn", "b2-vox2-ptn"), (f"ReDimNet-{backbone}\n",
                                                                    "ReDimNet-b2\n"),
                         (f"mrl_{backbone}", "mrl_b2")):
            text = text.replace(old, new)
        assert text == (LIBRI_RECIPE / "hparams" / "mrl_b2.yaml").read_text()
    # every key is used by the training code or the file itself
    import re

    from speechbrain.core import RunOptions

    from speechbrain_mrl.training import brain as training

    source = (LIBRI_RECIPE / "train.py").read_text() + pathlib.Path(training.__file__).read_text()
    text = (LIBRI_RECIPE / "hparams" / f"{name}.yaml").read_text()
    keys = re.findall(r"^([A-Za-z_][A-Za-z0-9_]*):", text, re.M)
    run_opts = set(RunOptions().as_dict())
    assert not [k for k in keys if not k.startswith("__") and k not in run_opts
                and f"<{k}" not in text and not re.search(rf"\b{k}\b", source)]


def test_recipe_trains_from_scratch_then_the_head(tmp_path, monkeypatch, no_network):
    """The README's commands on a generated tree (tiny network, one epoch): both stages run."""
    import importlib.util
    import yaml

    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.official import save_official_checkpoint

    spec = importlib.util.spec_from_file_location("libri_train", LIBRI_RECIPE / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    make_librispeech(tmp_path / "data", {"train-clean-100": 4, "dev-clean": 3, "test-clean": 3})
    monkeypatch.chdir(tmp_path)
    tiny = ["--data_folder", str(tmp_path / "data"), "--train_splits", "[train-clean-100]",
            "--number_of_epochs", "2", "--batch_size", "4", "--num_workers", "0",
            "--crop_duration", "1.0", "--ckpt_interval_minutes", "0", "--device", "cpu",
            "--noprogressbar", "--n_valid_trials", "30", "--n_test_trials", "30"]
    res = train.main([str(LIBRI_RECIPE / "hparams" / "scratch_redimnet.yaml"), *tiny,
                      "--redimnet_preset", "b0"])
    out = tmp_path / "results" / "scratch_redimnet" / "1986"
    assert res["n_classes"] == 4 and set(res["valid"]) == set(res["test"]) == {192}
    assert (out / "backbone.pt").is_file() and (out / "training_curves.png").is_file()
    rows = json.loads((out / "train_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]["train_loss_per_size"]) == {"64", "128", "192"}
    assert (out / "save" / "prepared_data.png").is_file()
    backbone = save_official_checkpoint(MRLEncoder.from_config(yaml.safe_load(TINY_REDIMNET)),
                                        tmp_path / "tiny.pt")
    res = train.main([str(LIBRI_RECIPE / "hparams" / "mrl_b2.yaml"), *tiny,
                      "--pretrained_backbone", str(backbone), "--embed_dim", "16",
                      "--mrl_dims", "[8, 16]", "--init_crops_per_speaker", "2",
                      "--init_augment_passes", "0", "--init_window_durations", "[]"])
    out = tmp_path / "results" / "mrl_b2" / "1986"
    assert set(res["test"]) == set(res["test_pca"]) == {8, 16}
    info = json.loads((out / "model" / "model_info.json").read_text())["extra_info"]
    assert info["datasets"] == ["librispeech"]
    assert info["training_data"]["preparation"] == (
        "speechbrain_mrl.data.librispeech.prepare_librispeech")
    assert info["training_data"]["train"] == {"speakers": 4, "utterances": 16}
    rows = json.loads((out / "train_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[0]["train_loss"] is None
