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
    rows = []
    for i in range(6):  # generated voices to calibrate the static int8 scales on
        path = root / f"cal{i}.wav"
        sf.write(path, speaker_voice(10 + i, i, 1.0 + 0.1 * i).numpy(), 16000)
        rows.append(f"cal{i},{path}")
    (root / "calibration.csv").write_text("ID,wav\n" + "\n".join(rows) + "\n")
    onnx_path = ex.main(["--model_folder", str(folder), "--onnx", str(root / "tiny.onnx"),
                         "--torchscript", str(root / "tiny.pt"), "--int8",
                         str(root / "tiny.int8.onnx"), "--calibration_csv",
                         str(root / "calibration.csv"), "--check"])
    enc = ex.load_encoder(folder)
    return folder, enc, pathlib.Path(onnx_path), root / "tiny.pt"


def _speechy(batch, seconds, seed=0):
    return torch.stack([speaker_voice(seed + i, i, seconds) for i in range(batch)])


def _mixed(clips):
    """Zero-padded batch of 1-D clips and their relative lengths."""
    longest = max(len(c) for c in clips)
    wavs = torch.stack([torch.nn.functional.pad(c, (0, longest - len(c))) for c in clips])
    return wavs, torch.tensor([len(c) / longest for c in clips])


@pytest.mark.parametrize("batch,seconds", [(1, 0.7), (3, 2.3), (5, 1.0)])
def test_onnx_parity_dynamic_axes(exported, batch, seconds):
    _, enc, onnx_path, _ = exported
    wavs = _speechy(batch, seconds, seed=batch)
    assert ex.onnx_parity(enc, onnx_path, wavs) <= 1e-4


def test_mixed_length_batches_match_each_utterance_alone(exported):
    """ONNX and TorchScript take wav_lens: a padded batch gives each clip's own embeddings."""
    import onnxruntime as ort

    _, enc, onnx_path, ts_path = exported
    clips = [speaker_voice(i, i, s) for i, s in enumerate((2.1, 0.6, 1.3, 0.35))]
    wavs, lens = _mixed(clips)
    assert ex.onnx_parity(enc, onnx_path, wavs, lens) <= 1e-4
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(ts_path))
    batch_onnx = sess.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    with torch.no_grad():
        batch_ts = ts(wavs, lens)
        for i, clip in enumerate(clips):
            alone = enc.all_dims(clip[None], torch.ones(1))
            for d, o, t in zip(MRL_DIMS, batch_onnx, batch_ts):
                assert float((torch.from_numpy(o[i]) - alone[d][0]).abs().max()) <= 1e-4
                assert float((t[i] - alone[d][0]).abs().max()) <= 1e-4


def test_onnx_outputs_match_interface(exported):
    import onnxruntime as ort

    folder, _, onnx_path, _ = exported
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [f"embedding_{d}" for d in MRL_DIMS]
    wav_in, lens_in = sess.get_inputs()
    assert wav_in.name == "wavs" and all(isinstance(s, str) for s in wav_in.shape)  # dynamic axes
    assert lens_in.name == "wav_lens" and lens_in.shape == [wav_in.shape[0]]
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    wavs, lens = _mixed([speaker_voice(7, 0, 1.6), speaker_voice(8, 1, 1.1)])
    outs = sess.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    for d, o in zip(MRL_DIMS, outs):
        ref = model.encode_batch(wavs, lens, target_dim=d)[:, 0]
        assert o.shape == (2, d)
        assert float((torch.from_numpy(o) - ref).abs().max()) <= 1e-4


@pytest.mark.parametrize("static", [True, False])
def test_int8_model_loads_and_scores(exported, static):
    """The quantised models (static: by the command, calibrated; dynamic) run mixed-length
    batches and keep the trial scores."""
    import onnx
    import onnxruntime as ort

    _, enc, onnx_path, _ = exported
    int8 = (onnx_path.with_name("tiny.int8.onnx") if static else
            ex.quantize_onnx(onnx_path, onnx_path.with_name("tiny.dynamic.onnx")))
    assert int8.stat().st_size < onnx_path.stat().st_size
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ("QuantizeLinear" in ops) == static and ("DynamicQuantizeLinear" in ops) != static
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    clips = [speaker_voice(s, u, 1.0 + 0.2 * u) for s in range(3) for u in range(2)]
    wavs, lens = _mixed(clips)
    outs = sess.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    with torch.no_grad():
        ref = enc(wavs, lens)
    full = torch.from_numpy(outs[-1])
    cos = torch.nn.functional.cosine_similarity(full, ref, dim=1)
    assert full.shape == ref.shape and bool((cos > 0.95).all()), cos
    def cosines(e):
        e = torch.nn.functional.normalize(e, dim=1)
        return e @ e.T

    # trial scores kept (an untrained tiny model: the EER on real speech is benchmarked)
    assert float((cosines(full) - cosines(ref)).abs().max()) < 0.1


def test_torchscript(exported):
    _, enc, _, ts_path = exported
    ts = torch.jit.load(str(ts_path))
    for batch, seconds in ((1, 0.9), (4, 1.7)):
        wavs = _speechy(batch, seconds, seed=11)
        with torch.no_grad():
            for a, b in zip(ts(wavs, torch.ones(batch)), enc.all_dims(wavs).values()):
                assert a.shape == b.shape
                assert float((a - b).abs().max()) <= 1e-5


def test_onnx_parity_real_speech(exported, shared_data):
    _, enc, onnx_path, _ = exported
    files = sorted((shared_data / "librispeech_train_clean_100").rglob("*.flac"))[:1]
    files += sorted((shared_data / "speech_commands").rglob("*.flac"))[:1]
    assert files, "no FLAC files in the shared data"
    clips = []
    for f in files:
        wav, sr = sf.read(str(f), dtype="float32")
        assert sr == 16000
        clips.append(torch.from_numpy(wav[: 16000 * 8]))
        assert ex.onnx_parity(enc, onnx_path, clips[-1].unsqueeze(0)) <= 1e-4
    assert ex.onnx_parity(enc, onnx_path, *_mixed(clips)) <= 1e-4  # read speech + a 1-s clip


def test_missing_onnx_extra_names_it_and_still_writes_torchscript(tmp_path, monkeypatch):
    """Regression: a bare ModuleNotFoundError, and no file written, without the export extra."""
    import sys

    folder, _, _ = write_tiny_model(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an uninstalled package
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[export\]"'):
        ex.main(["--model_folder", str(folder), "--onnx", str(tmp_path / "m.onnx"),
                 "--torchscript", str(tmp_path / "m.pt")])
    assert (tmp_path / "m.pt").is_file() and not (tmp_path / "m.onnx").exists()
