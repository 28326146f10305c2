"""Regression tests of the audio-input, trial-list, download and preparation faults."""
import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from mrl_testutils import TINY_CONFIG, speaker_voice, speech_like, write_tiny_model
from recipe_data import make_voxceleb

from speechbrain_mrl.data.audio import AudioError, check_waveforms, signal_problem
from speechbrain_mrl.data.preparation import make_rows
from speechbrain_mrl.utils.download import download
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.data.manifests import read_trial_list, write_manifest, write_trials

LSB = 1 / 32768  # one step of 16-bit PCM


def dither(seed, n=16000, offset=0.0):
    """1-LSB digital silence: int16 samples in {-1, 0, 1} (plus a DC offset), as float."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(-1, 2, n).astype("float32") * LSB + offset)


def pcm16(wav):
    """``wav`` as a 16-bit PCM recording stores it."""
    return torch.round(wav * 32768).clamp(-32768, 32767) / 32768


NEAR_SILENT = {
    "dither": dither(0),
    "dc_offset": torch.full((16000,), 0.25),
    "dc_offset_and_dither": dither(1, offset=-0.1),
    "denormal_sized": torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 1e-30,
}


# ------------------------------------------------------------------ near-silent input
@pytest.mark.parametrize("name", sorted(NEAR_SILENT))
def test_near_silent_input_is_unusable(name):
    """Regression: dither, a DC offset or 1e-30 samples were embedded like speech."""
    wav = NEAR_SILENT[name]
    assert signal_problem(wav).startswith("silence (RMS ")
    with pytest.raises(AudioError, match=r"^utterance 1: audio is silence \(RMS .* below 6.1e-05"):
        check_waveforms(torch.stack([speech_like(1.0), wav]))
    assert signal_problem(torch.zeros(100)) == "all zeros (silence)"  # wording kept


def test_speech_and_quiet_recordings_stay_usable():
    """The floor (2 LSB) is far below speech and below a quiet real recording."""
    speech = speech_like(1.0)
    assert 0.05 < float(speech.std()) < 0.2 and signal_problem(speech) is None
    for rms in (1e-3, 3e-4):  # quiet speech, 16-bit, on a DC offset: still embedded
        quiet = pcm16(speech * (rms / float(speech.std())) + 0.01)
        assert signal_problem(quiet) is None, rms
    wavs, _ = check_waveforms(torch.stack([speech, pcm16(speech * 3e-3)]))
    assert wavs.shape == (2, 16000)


def test_real_speech_stays_usable(shared_data):
    """Every clip of the quietest Speech Commands speaker (RMS down to 3.7e-3), also 20 dB down."""
    clips = sorted((shared_data / "speech_commands" / "1cb788bc").glob("*.flac"))
    assert clips
    for clip in clips:
        wav = torch.from_numpy(sf.read(str(clip), dtype="float32")[0])
        assert signal_problem(wav) is None, clip
        assert signal_problem(pcm16(wav / 10)) is None, clip


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _, _ = write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})


def test_dithered_silences_are_not_verified(model, tmp_path):
    """Regression: two different dithered silences verified as the same speaker."""
    with pytest.raises(AudioError, match=r"utterance 0: audio is silence \(RMS"):
        model.verify_batch(dither(2)[None], dither(3)[None])
    path = tmp_path / "dither.wav"
    sf.write(str(path), dither(4).numpy(), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"dither\.wav: audio is silence \(RMS"):
        model.encode_file(path)
    voice = speaker_voice(0, 0, 1.0)
    score, _ = model.verify_batch(voice[None], speaker_voice(0, 1, 1.0)[None])  # speech: scored
    assert score.shape[0] == 1


def test_manifest_embedding_and_preparation_refuse_dither(tmp_path):
    """The manifest embedding path names the silent row; preparation skips the file."""
    rows = {}
    for uid, wav in (("spk0--a", speaker_voice(0, 0, 0.5)), ("spk1--b", dither(5, 8000, 0.02))):
        path = tmp_path / f"{uid}.wav"
        sf.write(str(path), wav.numpy(), 16000, subtype="PCM_16")
        rows[uid] = {"wav": str(path), "start": 0, "stop": len(wav), "duration": len(wav) / 16000}
    with pytest.raises(AudioError, match=r"utterance spk1--b \(.*\): silence \(RMS"):
        embed_manifest(MRLEncoder.from_config(TINY_CONFIG), rows, batch_size=2)
    skipped = []
    assert make_rows("spk1", "spk1/v/b.wav", rows["spk1--b"]["wav"], 0.1, skipped=skipped) == []
    assert skipped[0][1].startswith("silence (RMS ")


# ------------------------------------------------------------------ trial lists
def test_trial_list_refuses_one_id_for_two_files(tmp_path):
    """Regression: the test manifest's row silently replaced the enrol row of the same ID."""
    enrol, test, trials = tmp_path / "enrol.csv", tmp_path / "test.csv", tmp_path / "trials.txt"
    write_trials(trials, [(1, "spk1/a", "spk1/b"), (0, "spk1/a", "spk2/c")])
    write_manifest(enrol, [["spk1/a", 1.0, "/data/enrol/a.wav", "", "", "spk1"]])
    write_manifest(test, [["spk1/a", 1.0, "/data/test/a.wav", "", "", "spk1"],
                          ["spk1/b", 1.0, "/data/b.wav", "", "", "spk1"],
                          ["spk2/c", 1.0, "/data/c.wav", "", "", "spk2"]])
    with pytest.raises(ValueError, match=r"^ID 'spk1/a' names different audio in two manifests: "
                                         r"/data/enrol/a.wav in .*enrol.csv and /data/test/a.wav "
                                         r"in .*test.csv; give each recording its own ID$"):
        read_trial_list([enrol, test], trials)
    # the same recording listed in both manifests is one utterance
    write_manifest(enrol, [["spk1/a", 1.0, "/data/test/a.wav", "", "", "spk1"]])
    rows, (labels, enrol_ids, test_ids), _ = read_trial_list([enrol, test], trials)
    assert sorted(rows) == ["spk1/a", "spk1/b", "spk2/c"] and labels.tolist() == [1, 0]
    # one file, two sample ranges: two recordings
    write_manifest(enrol, [["spk1/a", 1.0, "/data/test/a.wav", "0", "8000", "spk1"]])
    with pytest.raises(ValueError, match=r"/data/test/a.wav \[0:8000\] in .*enrol.csv and "
                                         r"/data/test/a.wav in"):
        read_trial_list([enrol, test], trials)


# ------------------------------------------------------------------ downloads
PAYLOAD = bytes(range(256)) * 40


@pytest.fixture
def server():
    """A local HTTP server: /full/ serves PAYLOAD, /trickle/ one byte every 0.25 s (for at
    most 8 s), /short/ announces 100 bytes and closes after 10."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            kind = self.path.split("/")[1]
            self.send_response(200)
            self.send_header("Content-Length", {"full": len(PAYLOAD), "trickle": 1000,
                                                "short": 100}[kind])
            self.end_headers()
            if kind == "full":
                self.wfile.write(PAYLOAD)
            elif kind == "short":
                self.wfile.write(b"x" * 10)
            else:
                start = time.monotonic()
                try:
                    while not stop.wait(0.25) and time.monotonic() - start < 8:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                except OSError:  # the client gave up
                    pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_from_a_trickling_server_is_bounded(server, tmp_path, monkeypatch):
    """Regression: a byte every few seconds, each read within the timeout, never ended."""
    monkeypatch.setenv("MRL_DOWNLOAD_TIMEOUT", "3")
    monkeypatch.setenv("MRL_DOWNLOAD_TOTAL_TIMEOUT", "1")
    monkeypatch.setenv("MRL_DOWNLOAD_RETRIES", "3")
    start = time.monotonic()
    with pytest.raises(OSError, match=r"trickle/m.pt after 1 attempts \(incomplete after the "
                                      r"total timeout of 1 s"):
        download(f"{server}/trickle/m.pt", tmp_path / "c" / "m.pt")
    assert 1 <= time.monotonic() - start < 3  # no retry: the time is up
    assert not list((tmp_path / "c").iterdir())  # the temporary file was removed


def test_download_cut_short_is_not_kept(server, tmp_path):
    """Regression: a server closing after 10 of 100 bytes gave a 10-byte 'complete' file."""
    with pytest.raises(OSError, match=r"after 2 attempts \(connection closed after 10 of 100 "
                                      r"bytes\)"):
        download(f"{server}/short/m.pt", tmp_path / "m.pt", retries=2, backoff=0.01)
    assert not list(tmp_path.iterdir())
    assert download(f"{server}/full/m.pt", tmp_path / "m.pt").read_bytes() == PAYLOAD


def test_killed_download_leftovers_are_removed(server, tmp_path, monkeypatch):
    """Regression: a download killed mid-transfer left its temporary file for good."""
    dest = tmp_path / "m.pt"
    code = "import sys; from speechbrain_mrl.utils.download import download; download(*sys.argv[1:])"
    env = dict(os.environ, MRL_DOWNLOAD_TIMEOUT="2", MRL_DOWNLOAD_TOTAL_TIMEOUT="30")
    proc = subprocess.Popen([sys.executable, "-c", code, f"{server}/trickle/m.pt", str(dest)],
                            env=env)
    try:
        deadline = time.monotonic() + 20
        while not any(tmp_path.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # mid-transfer
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (left,) = tmp_path.iterdir()  # a hard kill cannot clean up
    assert left.name.startswith(".m.") and left.name.endswith(".tmp.pt")
    old = time.time() - 60  # older than the timeouts: no live download writes it
    os.utime(left, (old, old))
    _, live = tempfile.mkstemp(dir=tmp_path, prefix=".m.", suffix=".tmp.pt")  # a running one
    monkeypatch.setenv("MRL_DOWNLOAD_TOTAL_TIMEOUT", "10")
    assert download(f"{server}/full/m.pt", dest, timeout=2).read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, os.path.basename(live)])


# ------------------------------------------------------------------ preparation
def test_one_speaker_preparation_fails_from_the_command_line(tmp_path):
    """Regression: one speaker folder gave train/dev manifests of one speaker and exit status 0."""
    make_voxceleb(tmp_path / "data", speakers=("id10001",))
    for extra in ([], ["--valid_trials", str(tmp_path / "out" / "valid.txt")]):
        done = subprocess.run([sys.executable, "-m", "speechbrain_mrl.cli", "prepare-voxceleb",
                               str(tmp_path / "data"), "--save_folder", str(tmp_path / "out"),
                               *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1].startswith(
            "speechbrain-mrl prepare-voxceleb: error: only 1 training speaker (id10001) under ")
        assert "need at least 2 speakers" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out" / "train.csv").exists()


@pytest.mark.parametrize("text, message", [
    ("ID,wav\nu1,a.wav,extra\n", r"m\.csv, line 2: 3 fields where the header has 2"),
    ("ID,wav\nu1,a.wav\nu1,b.wav\n", r"m\.csv, line 3: ID 'u1' is given twice \(first on line 2\)"),
    ("wav,spk_id\na.wav,s\n", r"m\.csv, line 1: no 'ID' column"),
    ("ID,wav\nu1,$data_root/a.wav\n", r"m\.csv, line 2: .* needs \$data_root"),
])
def test_a_malformed_manifest_is_named_with_its_line(tmp_path, text, message):
    """Regression (issue 28): an extra column, a duplicate ID or a missing ID column gave a
    message without the file or line; a UTF-8 byte-order mark was refused."""
    from speechbrain_mrl.data.manifests import read_manifest

    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(path)
    path.write_text("\ufeffID,wav\nu1,a.wav\n", encoding="utf-8")
    assert read_manifest(path) == {"u1": {"wav": "a.wav"}}
