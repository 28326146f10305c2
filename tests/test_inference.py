"""Tests of speechbrain_mrl.inference.interface.MRLEncoderClassifier and packaging.write_model_folder."""
import json
import os
import warnings

import pytest
import soundfile as sf
import torch
import torchaudio

from mrl_testutils import (EMBED_DIM, PicklePayload, MRL_DIMS, THRESHOLDS, reference_embedding, tiny_encoder,
                           tiny_modules,
                           speaker_voice, write_tiny_model)
from speechbrain_mrl.data.audio import ShortAudioWarning
from speechbrain_mrl.inference.interface import AudioError, MRLEncoderClassifier
from speechbrain_mrl.model.folder import read_calibration, write_model_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, lobe, head = write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return folder, lobe, head


@pytest.fixture(scope="module")
def model(tiny):
    return MRLEncoderClassifier.from_hparams(source=str(tiny[0]), run_opts={"device": "cpu"})


def test_model_folder_contents(tiny):
    folder = tiny[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["hyperparams.yaml", "embedding_model.ckpt", "mrl_head.ckpt", "calibration.json",
         "model_info.json"])
    assert read_calibration(folder / "calibration.json", MRL_DIMS) == THRESHOLDS
    info = json.loads((folder / "model_info.json").read_text())
    assert info["mrl_dims"] == MRL_DIMS and info["extra_info"]["note"] == "tiny test model"
    sd = torch.load(folder / "mrl_head.ckpt", weights_only=True)
    assert torch.equal(sd["linear.weight"], tiny[2].linear.weight)


def test_write_model_folder_rejects_bad_input(tmp_path, tiny):
    _, lobe, head = tiny
    encoder = tiny_encoder(lobe, head)
    with pytest.raises(ValueError, match="not one of the sizes"):
        write_model_folder(tmp_path, encoder, thresholds={5: 0.3})
    with pytest.raises(ValueError, match="must be a finite number"):
        write_model_folder(tmp_path, encoder, thresholds={4: float("nan")})
    with pytest.raises(ValueError, match="needs an MRLEncoder with a Matryoshka head"):
        write_model_folder(tmp_path, tiny_encoder(lobe, None))
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("with_savedir", [False, True])
def test_offline_local_load_matches_training_model(tiny, tmp_path, no_network, with_savedir):
    folder, lobe, head = tiny
    savedir = tmp_path / "collected" if with_savedir else None
    m = MRLEncoderClassifier.from_hparams(source=str(folder), savedir=savedir,
                                          run_opts={"device": "cpu"})
    if with_savedir:
        assert (savedir / "embedding_model.ckpt").exists()
    else:  # read in place: nothing written next to the model
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["hyperparams.yaml", "embedding_model.ckpt", "mrl_head.ckpt", "calibration.json",
             "model_info.json"])
    wavs = torch.stack([speaker_voice(s, 1, 1.0) for s in range(3)])
    lens = torch.tensor([1.0, 0.75, 0.55])
    ref = reference_embedding(lobe, head, wavs, lens)
    full = m.encode_batch(wavs, lens)
    assert full.shape == (3, 1, EMBED_DIM)
    torch.testing.assert_close(full[:, 0], ref, atol=1e-5, rtol=0)
    allv = m.encode_batch_all(wavs, lens)
    assert list(allv) == MRL_DIMS
    for d in MRL_DIMS:
        e = m.encode_batch(wavs, lens, target_dim=d)
        assert e.shape == (3, 1, d)
        torch.testing.assert_close(e[:, 0], ref[:, :d], atol=1e-5, rtol=0)
        torch.testing.assert_close(allv[d], ref[:, :d], atol=1e-5, rtol=0)
        n = m.encode_batch(wavs, lens, normalize=True, target_dim=d)[:, 0]
        torch.testing.assert_close(n, torch.nn.functional.normalize(ref[:, :d], dim=1),
                                   atol=1e-5, rtol=0)
    # a padded utterance gives the same embedding as alone
    alone = m.encode_batch(wavs[2:, : int(0.55 * wavs.shape[1])])
    torch.testing.assert_close(alone[0], full[2], atol=1e-4, rtol=0)


def test_files_resampling_and_channels(model, tmp_path):
    mono16 = speaker_voice(1, 0, 1.2)
    p16 = tmp_path / "a16.wav"
    sf.write(str(p16), mono16.numpy(), 16000, subtype="FLOAT")
    ref = model.encode_batch(mono16.unsqueeze(0))
    torch.testing.assert_close(model.encode_file(p16), ref, atol=1e-5, rtol=0)
    # 44.1 kHz stereo file: resampled and averaged to mono
    stereo = speaker_voice(1, 0, 1.2, sample_rate=44100, channels=2)
    p44 = tmp_path / "a44.flac"
    sf.write(str(p44), stereo.numpy(), 44100)
    stereo = torch.from_numpy(sf.read(str(p44), dtype="float32")[0])  # as stored (24 bit)
    mono = torchaudio.functional.resample(stereo.mean(1), 44100, 16000)
    want = model.encode_batch(mono.unsqueeze(0), target_dim=8)
    got = model.encode_file(str(p44), target_dim=8)
    assert got.shape == (1, 1, 8)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # [batch, time, channels] and sample_rate= in encode_batch
    got_b = model.encode_batch(stereo.unsqueeze(0), sample_rate=44100, target_dim=8)
    torch.testing.assert_close(got_b, want, atol=1e-4, rtol=0)


def test_verification_thresholds(model, tmp_path):
    assert model.thresholds == THRESHOLDS
    a = torch.stack([speaker_voice(0, 0, 1.0), speaker_voice(2, 0, 1.0)])
    b = torch.stack([speaker_voice(0, 1, 1.0), speaker_voice(3, 1, 1.0)])
    for d in MRL_DIMS:
        score, dec = model.verify_batch(a, b, target_dim=d)
        ea, eb = model.encode_batch(a, target_dim=d), model.encode_batch(b, target_dim=d)
        torch.testing.assert_close(score, torch.nn.functional.cosine_similarity(ea, eb, dim=-1))
        assert torch.equal(dec, score > THRESHOLDS[d])
        _, dec_lo = model.verify_batch(a, b, target_dim=d, threshold=-1.0)
        assert bool(dec_lo.all())
    with pytest.raises(ValueError, match="no calibrated threshold for target_dim=5"):
        model.verify_batch(a, b, target_dim=5)
    import numpy as np

    assert model.encode_batch(a, target_dim=np.int64(4)).shape == (2, 1, 4)
    s5, _ = model.verify_batch(a, b, target_dim=5, threshold=0.0)
    assert s5.shape == (2, 1)
    pa, pb = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(str(pa), a[0].numpy(), 16000, subtype="FLOAT")
    sf.write(str(pb), b[0].numpy(), 16000, subtype="FLOAT")
    s, d = model.verify_files(pa, pb, target_dim=4)
    assert s.dim() == 0 and bool(d) == bool(s > THRESHOLDS[4])
    torch.testing.assert_close(s, model.verify_batch(a[:1], b[:1], target_dim=4)[0][0, 0],
                               atol=1e-5, rtol=0)
    for bad in (0, EMBED_DIM + 1, 2.5, "8"):
        with pytest.raises(ValueError, match="target_dim"):
            model.encode_batch(a, target_dim=bad)


def test_recommended_size_recorded(tmp_path):
    from mrl_testutils import VALIDATION
    from speechbrain_mrl.model.folder import recommended_dim

    folder, _, _ = write_tiny_model(tmp_path / "m")
    info = json.loads((folder / "model_info.json").read_text())
    assert info["validation_EER"]["valid"] == {"4": 9.0, "8": 7.5, "16": 8.0}
    assert info["recommended_dim"] == 8 == recommended_dim(VALIDATION)
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert model.recommended_dim == 8
    assert recommended_dim({"a": {4: 2.0, 8: 2.0}}) == 4  # ties: the smaller size
    with pytest.raises(ValueError, match="same sizes"):
        recommended_dim({"a": {4: 1.0, 8: 2.0}, "b": {8: 1.0}})
    with pytest.raises(ValueError, match="finite"):
        recommended_dim({"a": {4: float("nan"), 8: 2.0}})
    with pytest.raises(ValueError, match="mrl_dims"):
        write_model_folder(tmp_path / "bad", tiny_encoder(*tiny_modules(0)),
                           validation={"a": {5: 1.0, 9: 2.0}})
    plain = write_model_folder(tmp_path / "plain", tiny_encoder(*tiny_modules(0)))
    assert MRLEncoderClassifier.from_hparams(source=str(plain)).recommended_dim is None


def test_long_audio_is_embedded_window_by_window(model):
    """Above long_audio_seconds the interface pools window statistics; close to one pass."""
    long_clip = torch.cat([speaker_voice(3, u, 2.0) for u in range(4)])  # 8 s of one speaker
    other = speaker_voice(4, 0, 1.5)
    wavs = torch.stack([long_clip, torch.nn.functional.pad(other, (0, len(long_clip) - len(other)))])
    lens = torch.tensor([1.0, len(other) / len(long_clip)])
    whole = model.encode_batch(wavs, lens)[:, 0]
    model.long_audio_seconds, model.window_seconds = 5.0, 2.0
    try:
        windowed = model.encode_batch(wavs, lens)[:, 0]
    finally:
        model.long_audio_seconds, model.window_seconds = 60.0, 30.0
    with torch.no_grad():
        enc = model.encoder
        by_hand = enc.embed_pooled(enc.pool_windows(long_clip, 32000, batch_size=3))[0]
    torch.testing.assert_close(windowed[0], by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(windowed[1], whole[1], atol=1e-5, rtol=0)  # short ones: one pass
    cos = torch.nn.functional.cosine_similarity(windowed[0], whole[0], dim=0)
    assert 0.9 < float(cos) < 1.0 - 1e-6, float(cos)


def test_short_clips_embed_with_a_warning(model):
    """Clips the front end can take embed; under the model's short_duration with a warning."""
    good = speaker_voice(0, 0, 1.0)
    assert model.encoder.min_samples == 257 and model.short_duration == 0.5
    with pytest.warns(ShortAudioWarning, match=r"1 utterance\(s\) shorter than 0.500 s \(0: 0.100 s\)"):
        short = model.encode_batch(good[None, :1600])
    assert short.shape == (1, 1, EMBED_DIM) and torch.isfinite(short).all()
    with pytest.warns(ShortAudioWarning, match=r"\(1: 0.020 s\)"):
        both = model.encode_batch(torch.stack([good, good]), torch.tensor([1.0, 0.02]))
    torch.testing.assert_close(both[1], model.encode_batch(good[None, :320])[0], atol=1e-4, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at or above short_duration
        model.encode_batch(good[None, :8000])


def test_bad_audio_errors(model, tmp_path):
    good = speaker_voice(0, 0, 1.0)
    cases = {
        "empty": (torch.zeros(1, 0), "empty audio"),
        "zeros": (torch.zeros(1, 16000), "all zeros"),
        "nan": (torch.cat([good[:8000], torch.tensor([float("nan")]), good[8001:]])[None], "NaN or Inf"),
        "inf": (torch.cat([good[:100], torch.tensor([float("inf")]), good[101:]])[None], "NaN or Inf"),
        "short": (good[None, :200], "too short"),  # under what the front end takes (257)
    }
    for name, (wav, msg) in cases.items():
        with pytest.raises(AudioError, match=msg):
            model.encode_batch(wav)
    # a silent utterance in a batch is named by its index
    with pytest.raises(AudioError, match="utterance 1: audio is all zeros"):
        model.encode_batch(torch.stack([good, torch.zeros_like(good)]))
    # NaN in the padding is ignored, too-short valid part is not
    padded = torch.stack([good, torch.cat([good[:12000], torch.full((4000,), float("nan"))])])
    emb = model.encode_batch(padded, torch.tensor([1.0, 0.75]))
    torch.testing.assert_close(emb[1], model.encode_batch(good[None, :12000])[0], atol=1e-4, rtol=0)
    with pytest.raises(AudioError, match="utterance 1: audio too short"):
        model.encode_batch(torch.stack([good, good]), torch.tensor([1.0, 0.01]))
    with pytest.raises(AudioError, match="relative lengths"):
        model.encode_batch(torch.stack([good, good]), torch.tensor([1.0, 1.5]))
    # files
    with pytest.raises(AudioError, match="not found"):
        model.encode_file(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot read audio file"):
        model.encode_file(junk)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), torch.zeros(0).numpy(), 16000)
    with pytest.raises(AudioError, match="empty"):
        model.encode_file(empty)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), torch.zeros(16000).numpy(), 16000)
    with pytest.raises(AudioError, match="all zeros"):
        model.encode_file(silent)
    assert issubclass(AudioError, ValueError)


def test_from_hparams_same_folder_as_savedir(tiny, no_network):
    """savedir == source must not create self-referencing symlinks."""
    folder = tiny[0]
    m = MRLEncoderClassifier.from_hparams(source=str(folder), savedir=str(folder),
                                          run_opts={"device": "cpu"})
    assert not os.path.islink(folder / "embedding_model.ckpt")
    assert m.embed_dim == EMBED_DIM


def test_reused_savedir_never_serves_stale_files(tiny, tmp_path, no_network):
    folder_a = tiny[0]
    folder_b, lobe_b, head_b = write_tiny_model(tmp_path / "other", seed=3,
                                                thresholds={4: 0.1, 8: 0.2, 16: 0.3})
    savedir = tmp_path / "shared_savedir"
    wav = speaker_voice(1, 1, 1.0).unsqueeze(0)
    ma = MRLEncoderClassifier.from_hparams(source=str(folder_a), savedir=savedir,
                                           run_opts={"device": "cpu"})
    mb = MRLEncoderClassifier.from_hparams(source=str(folder_b), savedir=savedir,
                                           run_opts={"device": "cpu"})
    torch.testing.assert_close(mb.encode_batch(wav)[:, 0], reference_embedding(lobe_b, head_b, wav),
                               atol=1e-5, rtol=0)
    assert not torch.allclose(ma.encode_batch(wav), mb.encode_batch(wav))
    assert mb.thresholds == {4: 0.1, 8: 0.2, 16: 0.3}


def test_model_folder_with_a_pickle_payload_is_refused(tiny, tmp_path, monkeypatch):
    """Regression: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, a checkpoint's pickle payload ran."""
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny[0], folder)
    marker = tmp_path / "payload_ran"
    torch.save({"linear.weight": PicklePayload(marker)}, folder / "mrl_head.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="cannot read checkpoint file .*mrl_head.ckpt"):
        MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert not marker.exists()


def test_bad_input_messages_name_the_problem(model, tiny, tmp_path, no_network):
    """Regression for the inference faults of issue 11 (item 12)."""
    import shutil

    wav = speaker_voice(0, 0, 1.0)
    with pytest.raises(AudioError, match="channels-first"):
        model.encode_batch(wav[None, None, :])  # [B, 1, T]
    with pytest.raises(AudioError, match="channels-first"):
        model.encode_batch(torch.stack([wav, wav])[None])  # [B, C, T]
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), torch.zeros(16000).numpy(), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: audio is all zeros"):
        model.verify_files(silent, silent)
    for bad in (float("nan"), True, torch.tensor(True), "0.5"):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            model.verify_batch(wav[None], wav[None], threshold=bad)
    # a mistyped local path is not sent to the hub as a repo id
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        MRLEncoderClassifier.from_hparams(source=str(tmp_path / "no_such_model"))
    # calibration.json is optional: loads without it, no dangling link left in savedir
    folder = tmp_path / "uncalibrated"
    shutil.copytree(tiny[0], folder)
    (folder / "calibration.json").unlink()
    loaded = MRLEncoderClassifier.from_hparams(source=str(folder), savedir=tmp_path / "save",
                                               run_opts={"device": "cpu"})
    assert loaded.thresholds == THRESHOLDS  # the copy in hyperparams.yaml
    assert all(p.exists() for p in (tmp_path / "save").iterdir())
    # an empty hyperparams.yaml and a truncated checkpoint are named
    (folder / "hyperparams.yaml").write_text("")
    with pytest.raises(ValueError, match="hyperparams.yaml is empty"):
        MRLEncoderClassifier.from_hparams(source=str(folder))
    shutil.copy(tiny[0] / "hyperparams.yaml", folder / "hyperparams.yaml")
    data = (folder / "embedding_model.ckpt").read_bytes()
    (folder / "embedding_model.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint file .*embedding_model.ckpt"):
        MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})


def test_sources_and_numpy_thresholds(model, tmp_path):
    import numpy as np

    from speechbrain_mrl.inference.interface import _looks_like_a_path

    assert not _looks_like_a_path("user/mrl-model")
    assert not _looks_like_a_path("https://example.org/models/mrl")
    (tmp_path / "results").mkdir()
    assert _looks_like_a_path(str(tmp_path / "results" / "mdoel"))  # a typo of a local folder
    wav = speaker_voice(0, 0, 1.0)[None]
    for thr in (np.float32(0.5), np.int64(0), torch.tensor(0.5)):
        model.verify_batch(wav, wav, threshold=thr)
    with pytest.raises(ValueError, match="finite number"):
        model.verify_batch(wav, wav, threshold=np.bool_(True))


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path):
    """Regression: one NaN in mrl_head.ckpt and encode_file returned a NaN vector."""
    import shutil

    from mrl_testutils import write_tiny_model

    folder, _, _ = write_tiny_model(tmp_path / "model")
    bad = tmp_path / "nan_model"
    shutil.copytree(folder, bad)
    head = torch.load(bad / "mrl_head.ckpt", weights_only=True)
    head["linear.weight"][0, 0] = float("nan")
    torch.save(head, bad / "mrl_head.ckpt")
    with pytest.raises(ValueError, match=r"nan_model: NaN/Inf values in its weights \(mrl_head"):
        MRLEncoderClassifier.from_hparams(source=str(bad), run_opts={"device": "cpu"})


@pytest.mark.parametrize("value", ["NaN", "Infinity", '"0.5"', "true"])
def test_calibration_json_with_a_bad_threshold_is_refused_naming_the_file(tmp_path, value):
    """Regression: NaN/Infinity thresholds in calibration.json were accepted (a same-speaker
    pair at 0.907 judged different); strings and unknown sizes failed late, naming no file."""
    from mrl_testutils import write_tiny_model

    folder, _, _ = write_tiny_model(tmp_path / "model")
    (folder / "calibration.json").write_text('{"thresholds": {"4": %s, "8": 0.4}}' % value)
    with pytest.raises(ValueError, match=r"calibration\.json: the threshold for size 4 must be a "
                                         r"finite number"):
        MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    (folder / "calibration.json").write_text('{"thresholds": {"5": 0.3}}')
    with pytest.raises(ValueError, match=r"calibration\.json: a threshold is given for size '5'"):
        MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
