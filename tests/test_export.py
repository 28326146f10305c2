"""Tests of speechbrain_mrl.export.onnx (TorchScript and ONNX, onnxruntime parity)."""
import contextlib
import copy
import importlib.util
import io
import json
import os
import pathlib
import re
import resource
import shutil
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from mrl_testutils import MRL_DIMS, speaker_voice, write_tiny_model
from speechbrain_mrl.export import onnx as ex
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl import cli


def _export(argv):
    """``speechbrain-mrl export ARGV``; returns the job's result."""
    return cli.main(["export", *argv])

pytest.importorskip("onnxruntime", reason='ONNX export needs the export extra: pip install -e ".[export]"')
pytest.importorskip("onnxscript", reason='ONNX export needs the export extra: pip install -e ".[export]"')


#: Whether the OpenVINO runtime is installed (the ``openvino`` extra; the test extra has it).
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
#: Output names of the ``exported`` fixture, each a symlink to a victim file before the export.
OUTPUTS = ["tiny.onnx", "tiny.pt", "tiny.int8.onnx"] + (["tiny.xml", "tiny.bin"] if HAVE_OPENVINO
                                                          else [])
#: The fixed temporary name the int8 export once wrote through (a symlink planted there).
OLD_TMP = ".tiny.int8.onnx.tmp"
#: What the ``exported`` fixture's command printed and warned.
EXPORT_RUN = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export through the command line (ONNX + TorchScript + static int8 + parity check),
    over symlinks planted at the output paths; its printed lines and warnings are kept."""
    root = tmp_path_factory.mktemp("export")
    folder, _, _ = write_tiny_model(root / "model")
    rows = []
    for i in range(6):  # generated voices to calibrate the static int8 scales on
        path = root / f"cal{i}.wav"
        sf.write(path, speaker_voice(10 + i, i, 1.0 + 0.1 * i).numpy(), 16000)
        rows.append(f"cal{i},{path}")
    sf.write(root / "silent.wav", np.zeros(16000, dtype="float32"), 16000)
    rows.append(f"silent,{root / 'silent.wav'}")  # left out of the calibration, with a warning
    (root / "calibration.csv").write_text("ID,wav\n" + "\n".join(rows) + "\n")
    (root / "victims").mkdir()
    for name in OUTPUTS + [OLD_TMP]:
        (root / "victims" / name).write_text("not to be overwritten")
        (root / name).symlink_to(root / "victims" / name)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = _export(["--model_folder", str(folder), "--onnx", str(root / "tiny.onnx"),
                             "--torchscript", str(root / "tiny.pt"), "--int8",
                             str(root / "tiny.int8.onnx"), "--calibration_csv",
                             str(root / "calibration.csv"), "--check",
                             *(["--openvino", str(root / "tiny.xml")] if HAVE_OPENVINO else [])])
    enc = ex.load_encoder(folder)
    EXPORT_RUN.update(printed=printed.getvalue(), warnings=[str(w.message) for w in caught])
    return folder, enc, pathlib.Path(written["onnx"]), root / "tiny.pt"


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
        _export(["--model_folder", str(folder), "--onnx", str(tmp_path / "m.onnx"),
                 "--torchscript", str(tmp_path / "m.pt")])
    assert (tmp_path / "m.pt").is_file() and not (tmp_path / "m.onnx").exists()


def test_export_replaces_planted_symlinks_with_files_following_the_umask(exported):
    """Regression: the ONNX, TorchScript and int8 files were written through a symlink at the
    output path (and int8 through one at its fixed temporary name ``.<name>.tmp``)."""
    root = exported[2].parent
    umask = os.umask(0)
    os.umask(umask)
    for name in OUTPUTS:
        assert not (root / name).is_symlink() and (root / name).stat().st_size > 1000
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o666 & ~umask
    assert (root / OLD_TMP).is_symlink()  # left alone: never a name the export writes
    for victim in (root / "victims").iterdir():
        assert victim.read_text() == "not to be overwritten", victim.name
    assert not [p.name for p in root.glob(".*") if p.name != OLD_TMP]  # no temporary file left


def test_export_prints_the_input_lengths_the_graph_supports(exported):
    """Regression: the graph's quadratic memory in the input length was not said anywhere."""
    note = ex.input_length_note(exported[1])
    assert note in EXPORT_RUN["printed"].splitlines()
    assert "grow with its square" in note and "GB per utterance at 60 s" in note
    assert "window audio longer than about 60 s outside the graph" in note


def test_failing_writes_keep_the_previous_files(exported, tmp_path):
    """Regression: a write failing mid-way (a full disk; here the file size limit) left a truncated
    ONNX / TorchScript file at the output path, destroying the previous export."""
    _, enc, onnx_path, ts_path = exported
    previous = {tmp_path / "m.onnx": onnx_path, tmp_path / "m.pt": ts_path,
                tmp_path / "m.int8.onnx": onnx_path.with_name("tiny.int8.onnx")}
    for dest, src in previous.items():
        shutil.copyfile(src, dest)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limits[1]))  # every output is larger
    try:
        with pytest.raises(OSError):
            ex.export_onnx(enc, tmp_path / "m.onnx")
        with pytest.raises(OSError):
            ex.export_torchscript(enc, tmp_path / "m.pt")
        with pytest.raises(Exception):  # onnxruntime reads back the truncated model it wrote
            ex.quantize_onnx(onnx_path, tmp_path / "m.int8.onnx")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    for dest, src in previous.items():
        assert dest.read_bytes() == src.read_bytes(), dest.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in previous)


def test_check_refuses_a_model_giving_nan(exported, tmp_path):
    """Regression: ``export --check`` of a NaN-producing model printed "max abs difference: nan"
    and succeeded. Here the weights are finite but a BatchNorm variance is negative."""
    folder = shutil.copytree(exported[0], tmp_path / "nan_model")
    head = torch.load(folder / "mrl_head.ckpt", weights_only=True)
    head["norm.running_var"][:] = -1.0
    torch.save(head, folder / "mrl_head.ckpt")
    with pytest.raises(ValueError, match=rf"model {re.escape(str(folder))}: .*difference is nan"):
        _export(["--model_folder", str(folder), "--onnx", str(tmp_path / "nan.onnx"), "--check"])
    head["linear.weight"][0, 0] = float("inf")  # NaN/Inf weights: refused before any export
    torch.save(head, folder / "mrl_head.ckpt")
    with pytest.raises(ValueError, match=rf"model {re.escape(str(folder))}: NaN/Inf values in"):
        ex.load_encoder(folder)


def test_onnx_parity_is_nan_when_one_output_is_nan(exported):
    """Regression: Python's max() over the outputs' differences dropped a NaN that was not first."""
    _, enc, onnx_path, _ = exported
    broken = copy.deepcopy(enc)
    with torch.no_grad():
        broken.mrl_head.linear.weight[-1] = float("nan")  # only the full-size output's last column
    wavs = _speechy(2, 1.0)
    assert all(bool(e.isnan().any()) == (d == MRL_DIMS[-1])
               for d, e in broken.all_dims(wavs).items())
    assert np.isnan(ex.onnx_parity(broken, onnx_path, wavs))


def _calibration_csv(folder, clips):
    """A manifest of ``{ID: waveform}`` written as float WAV files (NaN kept)."""
    rows = []
    for uid, wav in clips.items():
        sf.write(folder / f"{uid}.wav", wav.numpy(), 16000, subtype="FLOAT")
        rows.append(f"{uid},{folder / f'{uid}.wav'}")
    (folder / "cal.csv").write_text("ID,wav\n" + "\n".join(rows) + "\n")
    return folder / "cal.csv"


def test_static_int8_calibration_refuses_nan_and_silent_clips(exported, tmp_path):
    """Regression: a NaN clip failed deep in onnxruntime ("AssertionError: scale issue"), and
    silent clips were calibrated on without a word (cosine 0.19 to fp32 on silence alone)."""
    voice = speaker_voice(1, 0, 1.0)
    nan = voice.clone()
    nan[100] = float("nan")
    manifest = _calibration_csv(tmp_path, {"a_voice": voice, "b_nan": nan})
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}: calibration clip b_nan "
                                         r"\(.*b_nan.wav\) has NaN/Inf samples"):
        ex.calibration_waveforms(manifest)
    manifest = _calibration_csv(tmp_path, {"s1": torch.zeros(16000), "s2": torch.zeros(8000)})
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))}: all 2 calibration clips "
                                         "are silent"):
        ex.calibration_waveforms(manifest)
    assert [w for w in EXPORT_RUN["warnings"]  # the fixture's command: the silent clip left out
            if "1 silent calibration clips left out, e.g. ['silent']" in w]
    with pytest.raises(ValueError, match="calibration waveform 1: non-finite samples"):
        ex.quantize_onnx(exported[2], tmp_path / "q.onnx", calibration=[voice, nan])
    with pytest.raises(ValueError, match="calibration waveform 0: all zeros"):
        ex.quantize_onnx(exported[2], tmp_path / "q.onnx", calibration=[torch.zeros(16000)])
    assert not (tmp_path / "q.onnx").exists()


def _assert_refuses_bad_input(encoder, wavs):
    """A runtime wrapper refuses the lengths and audio its graph would embed silently."""
    from speechbrain_mrl.data.audio import AudioError

    for bad in (0.0, float("nan"), -1.0, 1.5):
        with pytest.raises(AudioError, match="wav_lens must be relative lengths"):
            encoder(wavs, torch.tensor([1.0, bad]))
    with pytest.raises(AudioError, match="utterance 0: .*silence"):
        encoder(torch.zeros(1, 16000))
    with pytest.raises(AudioError, match="utterance 0: audio contains NaN or Inf"):
        encoder(torch.full((1, 16000), float("nan")))


def test_onnx_encoder_checks_the_inputs_the_graph_accepts(exported):
    """Regression: the graph embedded wav_lens of 0, NaN, -1 or 1.5 and silent or NaN audio."""
    import onnxruntime as ort


    _, _, onnx_path, _ = exported
    wavs, lens = _mixed([speaker_voice(3, 0, 1.2), speaker_voice(4, 1, 0.8)])
    raw = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = raw.run(None, {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    got = ex.OnnxEncoder(onnx_path)(wavs, lens)
    assert list(got) == [f"embedding_{d}" for d in MRL_DIMS]
    for e, g in zip(expected, got.values()):
        np.testing.assert_allclose(g, e, atol=1e-6)
    encoder = ex.OnnxEncoder(onnx_path)
    _assert_refuses_bad_input(encoder, wavs)


def test_onnx_graph_has_no_stft_and_one_gelu_node_per_gelu(exported):
    """The graph OpenVINO reads: the spectrogram as a convolution (OpenVINO refused the dynamic
    STFT), GELU as one node (opset 20; decomposed into Erf/Mul/Add/Div it cost ONNX Runtime)."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported[2])).graph.node]
    assert "STFT" not in ops and "Erf" not in ops and "Gelu" in ops


def test_front_end_stays_float_in_static_int8(exported):
    """Regression: the spectrogram convolution with DFT rows would be quantised like any Conv."""
    import onnx

    front = set(ex._front_end_nodes(onnx.load(str(exported[2])).graph))
    int8 = onnx.load(str(exported[2].with_name("tiny.int8.onnx"))).graph
    fed = {i for n in int8.node if n.op_type == "DequantizeLinear" for i in n.output}
    quantised = {n.name for n in int8.node if n.op_type in ("Conv", "MatMul")
                 and any(i in fed for i in n.input)}
    assert {"Conv", "MatMul"} <= {n.op_type for n in onnx.load(str(exported[2])).graph.node
                                  if n.name in front}
    assert quantised and not quantised & front


def test_spectrogram_as_convolution_equals_stft():
    from speechbrain_mrl.model.features import ReDimNetFbank

    fbank = ReDimNetFbank(n_mels=60)
    wavs, lens = _mixed([speaker_voice(i, i, s) for i, s in enumerate((1.3, 0.4, 0.0161))])
    reference = fbank(wavs, lens)
    fbank.stft_as_matmul = True
    assert float((fbank(wavs, lens) - reference).abs().max()) < 1e-3
    assert "dft_basis" not in fbank.state_dict()  # checkpoints unchanged


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
@pytest.mark.parametrize("model_name", ["tiny.onnx", "tiny.xml"])
def test_openvino_encoder_equals_pytorch_on_mixed_lengths(exported, model_name):
    """OpenVINO (fp32) on the ONNX file and on the IR the export wrote: a padded batch, its time
    axis padded further to the compiled bucket, gives each clip's own PyTorch embeddings."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    _, enc, onnx_path, _ = exported
    encoder = OpenVinoEncoder(onnx_path.with_name(model_name), precision="fp32", threads=2)
    clips = [speaker_voice(i, i, s) for i, s in enumerate((2.1, 0.6, 1.3))]
    wavs, lens = _mixed(clips)
    for batch, lengths in ((wavs, lens), (wavs[1:2, :len(clips[1])], None)):
        got = encoder(batch, lengths)
        assert list(got) == [f"embedding_{d}" for d in MRL_DIMS]
        with torch.no_grad():
            ref = enc.all_dims(batch, lengths)
        for d, g in zip(MRL_DIMS, got.values()):
            np.testing.assert_allclose(g, ref[d].numpy(), atol=1e-4)
    assert len(encoder._compiled) == 2  # one compiled shape per (batch, padded length)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_encoder_bf16_keeps_the_scores(exported):
    """bf16 (where the CPU has it) keeps the embeddings' directions."""
    import openvino as ov

    from speechbrain_mrl.export.openvino import OpenVinoEncoder, cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        with pytest.raises(RuntimeError, match="no native bf16"):
            OpenVinoEncoder(exported[2], precision="bf16")
        return
    _, enc, onnx_path, _ = exported
    wavs, lens = _mixed([speaker_voice(s, u, 1.0 + 0.2 * u) for s in range(3) for u in range(2)])
    full = torch.from_numpy(OpenVinoEncoder(onnx_path, precision="bf16")(wavs, lens)
                            [f"embedding_{MRL_DIMS[-1]}"])
    with torch.no_grad():
        ref = enc(wavs, lens)
    assert bool((torch.nn.functional.cosine_similarity(full, ref, dim=1) > 0.99).all())


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_encoder_checks_inputs(exported):
    """The same input checks as OnnxEncoder."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    encoder = OpenVinoEncoder(exported[2], precision="fp32")
    wavs, _ = _mixed([speaker_voice(3, 0, 0.9), speaker_voice(4, 1, 0.5)])
    _assert_refuses_bad_input(encoder, wavs)
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVinoEncoder(exported[2], precision="int4")


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_encoder_windows_long_input_as_the_pytorch_model(exported):
    """Utterances above long_seconds: windows pooled and merged as MRLEncoder.embed does (the
    graph split at the pooled statistics); the others of the batch in one pass."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    _, enc, onnx_path, _ = exported
    encoder = OpenVinoEncoder(onnx_path, precision="fp32", long_seconds=1.0, window_seconds=0.5,
                              window_batch=2)
    clips = [speaker_voice(1, 0, 2.3), speaker_voice(2, 1, 0.8), speaker_voice(3, 0, 1.7)]
    wavs, lens = _mixed(clips)
    got = encoder(wavs, lens)
    with torch.no_grad():
        ref = enc.embed(wavs, lens, long_samples=16000, window_samples=8000)
        one_pass = enc(wavs, lens)
    full = got[f"embedding_{MRL_DIMS[-1]}"]
    np.testing.assert_allclose(full, ref.numpy(), atol=1e-4)
    assert float((torch.from_numpy(full[0]) - one_pass[0]).abs().max()) > 1e-3  # windowed
    np.testing.assert_allclose(got[f"embedding_{MRL_DIMS[0]}"], ref[:, :MRL_DIMS[0]].numpy(),
                               atol=1e-4)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install -e '.[openvino]')")
def test_export_writes_any_subset_and_refuses_nothing_to_write(tmp_path):
    """OpenVINO (or TorchScript) alone: no --onnx needed, no ONNX file left behind."""
    folder, _, _ = write_tiny_model(tmp_path / "model")
    written = _export(["--model_folder", str(folder), "--openvino", str(tmp_path / "m.xml")])
    assert set(written) == {"openvino"} and (tmp_path / "m.xml").is_file()
    assert not list(tmp_path.glob("*.onnx"))
    written = _export(["--model_folder", str(folder), "--torchscript", str(tmp_path / "m.pt"),
                       "--report", str(tmp_path / "r.json")])
    assert set(written) == {"torchscript"}
    assert json.loads((tmp_path / "r.json").read_text()) == written
    proc = subprocess.run([sys.executable, "-c", "from speechbrain_mrl import cli; cli.run()",
                           "export", "--model_folder", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing to write" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install -e '.[openvino]')")
def test_runtime_openvino_embeds_as_pytorch_does(tmp_path, caplog):
    """use_openvino (--runtime openvino): the same embeddings through every path of the model,
    windowed long audio included; the fallback without OpenVINO is one warning."""
    from speechbrain_mrl.export import openvino as ov
    from speechbrain_mrl.inference import MRLEncoderClassifier

    folder, _, _ = write_tiny_model(tmp_path / "model")
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    wavs = torch.stack([speaker_voice(s, 0, 1.5) for s in range(2)])
    lens = torch.tensor([1.0, 0.6])
    reference = model.encode_batch(wavs, lens)
    sf.write(str(tmp_path / "a.wav"), wavs[0].numpy(), 16000)
    file_reference = model.encode_file(tmp_path / "a.wav")
    model.long_audio_seconds, model.window_seconds = 1.0, 0.5
    long_reference = model.encode_batch(wavs[:1])
    model.long_audio_seconds, model.window_seconds = 60.0, 30.0
    assert ov.use_openvino(model, precision="fp32", folder=tmp_path / "ov") == "openvino-fp32"
    torch.testing.assert_close(model.encode_batch(wavs, lens), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.encode_file(tmp_path / "a.wav"), file_reference, atol=1e-4, rtol=0)

    windowed = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    windowed.long_audio_seconds, windowed.window_seconds = 1.0, 0.5
    ov.use_openvino(windowed, precision="fp32", folder=tmp_path / "ov2")
    torch.testing.assert_close(windowed.encode_batch(wavs[:1]), long_reference, atol=1e-4, rtol=0)

    def missing():
        raise ModuleNotFoundError("OpenVINO deployment needs the 'openvino' package")

    plain = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    with caplog.at_level("WARNING"):
        original = ov._openvino
        ov._openvino = missing
        try:
            assert ov.use_openvino(plain) == "pytorch"
        finally:
            ov._openvino = original
    assert "needs the 'openvino' package" in caplog.text
    torch.testing.assert_close(plain.encode_batch(wavs, lens), reference)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install -e '.[openvino]')")
def test_runtime_flag_of_the_commands(tmp_path):
    folder, _, _ = write_tiny_model(tmp_path / "model")
    for name, (s, u) in {"a.wav": (0, 0), "b.wav": (0, 1)}.items():
        sf.write(str(tmp_path / name), speaker_voice(s, u, 1.2).numpy(), 16000)
    common = ["verify", "--model_folder", str(folder), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    torch_result = cli.main(common)
    ov_result = cli.main(common + ["--runtime", "openvino"])
    assert abs(ov_result["score"] - torch_result["score"]) < 0.05  # bf16 where the CPU has it
