"""Data-preparation faults under bad input (issue 28, round three), one section each.

1. One truncated FLAC (its header reads, its samples do not decode) stopped the LibriSpeech
   preparation with a traceback.
2. One utterance found twice (in two readers' folders, or a reader's utterance in two
   training splits) was written into the manifests and found only by the chart.
3. A ``SPEAKERS.TXT`` that is not UTF-8 gave a codec error naming no file.
4. A reader listed twice in ``SPEAKERS.TXT`` with two sexes: the last line won, silently.
5. A Speech Commands preparation with one training speaker wrote an empty validation list
   and exited with status 0.
6. The Speech Commands archive was fetched over plain HTTP without a checksum, and a redirect
   to another host serving another archive was followed and the archive used.

Each test failed on the code before its fix. The downloads are served from 127.0.0.1.
"""
import csv
import hashlib
import http.server
import io
import logging
import shutil
import tarfile
import threading

import pytest
import soundfile as sf

from recipe_data import make_librispeech, make_speech_commands, make_voxceleb, voice, write_wav

from speechbrain_mrl import cli
from speechbrain_mrl.data import librispeech as ls
from speechbrain_mrl.data import speech_commands as sc
from speechbrain_mrl.data import voxceleb as vp
from speechbrain_mrl.utils.download import ChecksumError, RedirectError


def _ids(path):
    with open(path, newline="") as f:
        return [row["ID"] for row in csv.DictReader(f)]


def _truncate(path):
    """Cuts ``path`` in half: the FLAC header still reads, the samples no longer decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _one_line_error(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def libri(tmp_path):
    """3 training and 3 dev-clean readers (2 chapters of 2 utterances each), no test split."""
    readers = make_librispeech(tmp_path / "data", {"train-clean-100": 3, "dev-clean": 3},
                               duration=1.2)
    return tmp_path / "data" / "LibriSpeech", readers


def _prepare(root, save, **kwargs):
    kwargs = {"test_splits": [], "n_valid_trials": 20, **kwargs}
    return ls.prepare_librispeech(root.parent, save, **kwargs)


# ------------------------------------------------------------ 1. a truncated FLAC
def test_truncated_flac_is_skipped_and_named(libri, tmp_path, caplog):
    """Regression: the truncated file's decoding error (AudioError) ended the preparation."""
    root, readers = libri
    bad = _truncate(sorted((root / "train-clean-100").rglob("*.flac"))[0])
    save = tmp_path / "prep"
    with caplog.at_level(logging.WARNING):
        out = _prepare(root, save)
    assert out["n_skipped"] == 1
    listed = (save / "skipped_files.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{bad}\tunreadable")
    assert str(bad) in caplog.text  # named in a warning
    assert bad.stem not in _ids(out["train"]) and len(_ids(out["train"])) == 3 * 4 - 1


def test_nothing_usable_left_still_fails(libri, tmp_path):
    """Every validation file truncated: a one-line error, the skipped files listed."""
    root, _ = libri
    for path in (root / "dev-clean").rglob("*.flac"):
        _truncate(path)
    save = tmp_path / "prep"
    with pytest.raises(ValueError, match=r"^no usable utterance under the valid_splits "
                                         r"\['dev-clean'\] \(12 files skipped, listed in ") as err:
        _prepare(root, save)
    _one_line_error(err)
    assert len((save / "skipped_files.txt").read_text().splitlines()) == 12


# ------------------------------------------------------------ 2. an utterance found twice
def test_utterance_in_two_readers_folders_is_refused(libri, tmp_path):
    """Regression: the copy became a second row of the same ID; the chart found it later."""
    root, readers = libri
    first_reader, other_reader = readers["train-clean-100"][:2]
    src = sorted((root / "train-clean-100" / first_reader).rglob("*.flac"))[0]
    chapter = sorted((root / "train-clean-100" / other_reader).iterdir())[0]
    copy = chapter / src.name
    shutil.copyfile(src, copy)
    save = tmp_path / "prep"
    with pytest.raises(ValueError, match=f"^utterance {src.stem} found twice, ") as err:
        _prepare(root, save)
    message = _one_line_error(err)
    assert str(src) in message and str(copy) in message
    assert "belongs to one reader's chapter folder" in message
    assert not (save / "train.csv").exists()  # refused before anything is written


def test_reader_utterance_in_two_training_splits_is_refused(libri, tmp_path):
    """Regression: a reader copied into train-clean-360 gave each of its utterances twice."""
    root, readers = libri
    reader = readers["train-clean-100"][0]
    shutil.copytree(root / "train-clean-100" / reader, root / "train-clean-360" / reader)
    save = tmp_path / "prep"
    with pytest.raises(ValueError, match=f"^utterance {reader}-[0-9-]+ found twice, ") as err:
        _prepare(root, save, train_splits=["train-clean-100", "train-clean-360"])
    message = _one_line_error(err)
    assert f"reader {reader} has it in the splits train-clean-100 and train-clean-360" in message
    assert "/train-clean-100/" in message and "/train-clean-360/" in message
    assert not (save / "train.csv").exists()
    # a reader's other utterances in a second split are no duplicate: they train together
    for path in (root / "train-clean-360" / reader).rglob("*.flac"):
        path.rename(path.with_name(path.name.replace("-000", "-100")))
    out = _prepare(root, save, train_splits=["train-clean-100", "train-clean-360"])
    ids = _ids(out["train"])
    assert len(ids) == len(set(ids)) == 3 * 4 + 4


def test_voxceleb_recording_in_two_formats_is_refused(tmp_path):
    """Regression: ``00001.wav`` and ``00001.flac`` gave one ID to two rows (in train.csv and
    dev.csv, unnoticed, or twice in train.csv, found by the chart)."""
    make_voxceleb(tmp_path / "vox")
    wav = tmp_path / "vox" / "id10001" / "vid0" / "00001.wav"
    flac = write_wav(wav.with_suffix(".flac"), voice(0, 19200, 5))
    with pytest.raises(ValueError, match="^utterance ID 'id10001--vid0--00001' is given to two "
                                         "files under ") as err:
        vp.prepare_voxceleb(tmp_path / "vox", tmp_path / "prep")
    message = _one_line_error(err)
    assert str(wav) in message and str(flac) in message


# ------------------------------------------------------------ 3., 4. SPEAKERS.TXT
def test_speakers_txt_not_utf8_is_named(libri, tmp_path):
    """Regression: a Latin-1 name gave "'utf-8' codec can't decode byte 0xe9", no file named."""
    root, _ = libri
    speakers = root / "SPEAKERS.TXT"
    speakers.write_bytes(speakers.read_bytes() + "9999 | F | train-other-500 | 1.00 | Ren\xe9e\n"
                         .encode("latin-1"))
    with pytest.raises(ValueError, match=r"SPEAKERS\.TXT:8: not UTF-8 text \(0xe9, byte 40 of the "
                                         r"line\): save the file as UTF-8$") as err:
        _prepare(root, tmp_path / "prep")
    assert _one_line_error(err).startswith(str(speakers))


def test_reader_with_two_sexes_is_refused(libri, tmp_path):
    """Regression: the last of two lines giving a reader two sexes won, silently."""
    root, readers = libri
    reader = readers["dev-clean"][0]  # listed on line 5
    speakers = root / "SPEAKERS.TXT"
    original = speakers.read_text()
    sex = ls.read_speakers(speakers)[reader]["sex"]
    other = {"F": "M", "M": "F"}[sex]
    speakers.write_text(original + f"{reader} | {other} | dev-clean | 3.00 | Someone Else\n")
    with pytest.raises(ValueError, match=rf"SPEAKERS\.TXT: reader {reader} is listed twice with "
                                         r"two sexes, on line 5 \('.*'\) and line 8 "
                                         r"\('.*Someone Else'\): keep one line$") as err:
        _prepare(root, tmp_path / "prep", same_sex_nontarget=True)
    assert _one_line_error(err).startswith(str(speakers))
    # the same sex twice is accepted
    speakers.write_text(original + f"{reader} | {sex} | dev-clean | 3.00 | Same Reader\n")
    assert ls.read_speakers(speakers)[reader]["sex"] == sex
    _prepare(root, tmp_path / "prep", same_sex_nontarget=True)


# ------------------------------------------------------------ 5. one Speech Commands speaker
def test_one_speaker_speech_commands_is_refused(tmp_path, capsys):
    """Regression: one training speaker gave an empty dev.csv and val_trials.txt, status 0."""
    for n_train in (1, 3):
        data = make_speech_commands(tmp_path / f"data{n_train}", n_train=n_train, clips=3,
                                    libri=0, libri_long=0)
        save = tmp_path / f"prep{n_train}"
        with pytest.raises(ValueError, match=rf"train_speakers\.txt: {n_train} training "
                                             r"speaker\(s\) found besides the test speakers, at "
                                             r"least 4 needed \(2 for the validation list, 2 to "
                                             r"train\)$"):
            sc.prepare_demo(data, save, n_val_speakers=2, n_val_trials=20)
        assert not (save / "dev.csv").exists() and not (save / "val_trials.txt").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["prepare-demo", "--data_folder", str(tmp_path / "data1"), "--save_folder",
                 str(tmp_path / "prep1")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "1 training speaker(s) found besides the test speakers, at least 4 needed" in err


def test_speech_commands_validation_without_usable_clips_is_refused(tmp_path):
    """Enough speakers listed, but none of their clips usable: no empty validation list."""
    data = make_speech_commands(tmp_path / "data", n_train=4, clips=3, libri=0, libri_long=0)
    train = (data / "speech_commands" / "splits" / "train_speakers.txt").read_text().split()
    for spk in train:
        for path in (data / "speech_commands" / spk).iterdir():
            _truncate(path)
    with pytest.raises(ValueError, match=r"^the validation list has usable clips of 0 speaker\(s\), "
                                         r"at least 2 needed \(12 files skipped, listed in "):
        sc.prepare_demo(data, tmp_path / "prep", n_val_speakers=2, n_val_trials=20)
    assert not (tmp_path / "prep" / "val_trials.txt").exists()


# ------------------------------------------------------------ 6. the Speech Commands download
class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` ({path: bytes}) and ``redirects`` ({path: location}); each request's
    path goes to ``requests``."""

    files, redirects, requests = {}, {}, []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path in self.files:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.files[self.path])))
            self.end_headers()
            self.wfile.write(self.files[self.path])
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    """Two local servers (two hosts as a redirect sees them: two ports), each with its own
    files, redirects and request log."""
    started = []
    for _ in range(2):
        handler = type("Handler", (ArchiveHandler,), {"files": {}, "redirects": {},
                                                       "requests": []})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append((httpd, handler))
    yield [(f"http://127.0.0.1:{httpd.server_address[1]}", handler) for httpd, handler in started]
    for httpd, _ in started:
        httpd.shutdown()
        httpd.server_close()


def _sc_archive(speakers):
    """A Speech Commands test-set archive (``<word>/<speaker>_nohash_<n>.wav``) in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for s, spk in enumerate(speakers):
            for word in ("yes", "no"):
                wav = io.BytesIO()
                sf.write(wav, voice(s, 8000, len(word)), 16000, format="WAV")
                info = tarfile.TarInfo(f"{word}/{spk}_nohash_0.wav")
                info.size = len(wav.getvalue())
                tar.addfile(info, io.BytesIO(wav.getvalue()))
    return buf.getvalue()


NAME = "/speech_commands_test_set_v0.02.tar.gz"


def test_speech_commands_archive_is_https_and_pinned():
    """Regression: ``http://`` and no checksum. The pin is TensorFlow Datasets' (url_checksums)."""
    assert sc.SC_URL.startswith("https://") and sc.SC_URL.endswith(NAME)
    assert sc.SC_SHA256 == "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df"


def test_speech_commands_redirect_to_another_host_is_refused(servers, tmp_path, monkeypatch):
    """Regression: a redirect to another host serving another archive was followed and used."""
    (official, official_log), (other, other_log) = servers
    evil = _sc_archive([f"{i:04x}eeee" for i in range(8)])
    other_log.files[NAME] = evil
    official_log.redirects[NAME] = other + NAME
    # refused even if it matched (raising=False: the code before the fix had no pin)
    monkeypatch.setattr(sc, "SC_SHA256", hashlib.sha256(evil).hexdigest(), raising=False)
    data = tmp_path / "data"
    with pytest.raises(RedirectError, match=f"redirects to {other}{NAME}: a redirect to another "
                                            r"host \(or to plain HTTP\) is refused$"):
        sc.download_speech_commands(data, n_trials=20, url=official + NAME)
    assert official_log.requests == [NAME] and other_log.requests == []  # not retried, not fetched
    assert not list(data.iterdir())


def test_speech_commands_archive_checksum(servers, tmp_path, monkeypatch):
    """Another archive at the address is refused and not kept; a same-host redirect is followed;
    an archive put in the data folder is checked the same way."""
    (url, log), _ = servers
    good = _sc_archive([f"{i:04x}abcd" for i in range(8)])
    log.files[NAME] = _sc_archive([f"{i:04x}eeee" for i in range(8)])
    monkeypatch.setattr(sc, "SC_SHA256", hashlib.sha256(good).hexdigest())
    data = tmp_path / "data"
    with pytest.raises(ChecksumError, match="SHA-256 is .*expected "):
        sc.download_speech_commands(data, n_trials=20, url=url + NAME)
    assert log.requests == [NAME] and not [p for p in data.rglob("*") if p.is_file()]
    log.files["/moved" + NAME], log.redirects[NAME] = good, "/moved" + NAME
    sc_folder = sc.download_speech_commands(data, n_trials=20, url=url + NAME)
    assert log.requests[1:] == [NAME, "/moved" + NAME]
    assert sorted(p.name for p in sc_folder.iterdir() if p.name != "splits") == [
        f"{i:04x}abcd" for i in range(8)]
    # an archive in the data folder (its extracted copy gone) is checked before it is used
    shutil.rmtree(data / "speech_commands_raw")
    (data / NAME[1:]).write_bytes(log.files[NAME])
    with pytest.raises(ChecksumError, match=f"{NAME[1:]}: its SHA-256 is not that of the "
                                            "official speech_commands_test_set_v0.02.tar.gz"):
        sc.download_speech_commands(data, n_trials=20, url=url + NAME)
    assert not (data / "speech_commands_raw").exists()
