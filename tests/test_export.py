"""Tests of speechbrain_mrl.export (TorchScript and ONNX, onnxruntime parity)."""
import pathlib

import pytest
import soundfile as sf
import torch

from mrl_testutils import MRL_DIMS, speaker_voice, write_tiny_model
from speechbrain_mrl import export as ex
from speechbrain_mrl.inference import MRLEncoderClassifier

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export through the command line (ONNX + TorchScript + parity check)."""
    root = tmp_path_factory.mktemp("export")
    folder, _, _ = write_tiny_model(root / "model")
    onnx_path = ex.main(["--model_folder", str(folder), "--out", str(root / "tiny.onnx"),
                         "--torchscript", str(root / "tiny.pt"), "--check"])
    enc = ex.load_encoder(folder)
    return folder, enc, pathlib.Path(onnx_path), root / "tiny.pt"


def _speechy(batch, seconds, seed=0):
    return torch.stack([speaker_voice(seed + i, i, seconds) for i in range(batch)])


@pytest.mark.parametrize("batch,seconds", [(1, 0.7), (3, 2.3), (5, 1.0)])
def test_onnx_parity_dynamic_axes(exported, batch, seconds):
    _, enc, onnx_path, _ = exported
    wavs = _speechy(batch, seconds, seed=batch)
    assert ex.onnx_parity(enc, onnx_path, wavs) <= 1e-4


def test_onnx_outputs_match_interface(exported):
    import onnxruntime as ort

    folder, _, onnx_path, _ = exported
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [f"embedding_{d}" for d in MRL_DIMS]
    inp = sess.get_inputs()[0]
    assert inp.name == "wavs" and all(isinstance(s, str) for s in inp.shape)  # dynamic axes
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    wavs = _speechy(2, 1.6, seed=7)
    outs = sess.run(None, {"wavs": wavs.numpy()})
    for d, o in zip(MRL_DIMS, outs):
        ref = model.encode_batch(wavs, target_dim=d)[:, 0]
        assert o.shape == (2, d)
        assert float((torch.from_numpy(o) - ref).abs().max()) <= 1e-4


def test_torchscript(exported):
    _, enc, _, ts_path = exported
    ts = torch.jit.load(str(ts_path))
    for batch, seconds in ((1, 0.9), (4, 1.7)):
        wavs = _speechy(batch, seconds, seed=11)
        with torch.no_grad():
            for a, b in zip(ts(wavs), enc.all_dims(wavs).values()):
                assert a.shape == b.shape
                assert float((a - b).abs().max()) <= 1e-5


def test_onnx_parity_real_speech(exported, shared_data):
    _, enc, onnx_path, _ = exported
    files = sorted((shared_data / "librispeech_train_clean_100").rglob("*.flac"))[:1]
    files += sorted((shared_data / "speech_commands").rglob("*.flac"))[:1]
    assert files, "no FLAC files in the shared data"
    for f in files:
        wav, sr = sf.read(str(f), dtype="float32")
        assert sr == 16000
        wav = torch.from_numpy(wav[: 16000 * 8])
        assert ex.onnx_parity(enc, onnx_path, wav.unsqueeze(0)) <= 1e-4


def test_missing_onnx_extra_names_it_and_still_writes_torchscript(tmp_path, monkeypatch):
    """Regression: a bare ModuleNotFoundError, and no file written, without the export extra."""
    import sys

    folder, _, _ = write_tiny_model(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an uninstalled package
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[export\]"'):
        ex.main(["--model_folder", str(folder), "--out", str(tmp_path / "m.onnx"),
                 "--torchscript", str(tmp_path / "m.pt")])
    assert (tmp_path / "m.pt").is_file() and not (tmp_path / "m.onnx").exists()
