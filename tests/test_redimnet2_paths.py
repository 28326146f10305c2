"""Everything that works with ReDimNet works with ReDimNet2 (issue 27, items 5 and 6).

Parametrised over a tiny ReDimNet, a tiny ReDimNet2 and (where its front end matters) the
same ReDimNet2 with the TF-style front end: the encoder from a config, the model folder
round trip, SpeechBrain's own classes, ONNX / ONNX Runtime / OpenVINO parity (long inputs
windowed through the graph cut at the pooled statistics), the hub folder. Then the
recipe: the Matryoshka head trained on a frozen local official-format ReDimNet2
(``mrl_r2_b2.yaml``), and a ReDimNet2 trained from scratch and exported in its format.
And the shortest input of each (``MRLEncoder.min_samples``, which a ReDimNet2's time
stride can set): it embeds, one sample less is refused as bad audio, and extraction skips it.
"""
import csv
import importlib.util
import json
import pathlib
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from mrl_testutils import TINY_CONFIG, TINY_R2_CONFIG, speaker_voice, tiny_encoder_of
from recipe_data import RECIPE, make_flat_speakers
from speechbrain_mrl.data.audio import AudioError, ShortAudioWarning
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.folder import model_fingerprint, write_model_folder
from speechbrain_mrl.model.redimnet import plain_config
from speechbrain_mrl.model.redimnet2 import redimnet2_config

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript"))
LIBRI_RECIPE = RECIPE.parents[1] / "LibriSpeech" / "MRL"

#: A tiny ReDimNet2 (time stride 2, an attention block, a final projection), full official config.
TINY_R2 = redimnet2_config(dict(
    F=16, C=4, stages_setup=[[[1, 1], 1, 2, [[3, 3]], 4], [[2, 2], 1, 1, [[3, 3]], None]],
    embed_dim=12, out_channels=24))
CONFIGS = {
    "redimnet": TINY_CONFIG,
    "redimnet2": TINY_R2,
    "redimnet2-tf": dict(TINY_R2, feat_type="tf", spec_params=dict(norm_signal=True)),
}
#: lobe and front-end classes each config builds (and its model folder names)
CLASSES = {
    "redimnet": ("speechbrain_mrl.model.redimnet.ReDimNet", "speechbrain_mrl.model.features.ReDimNetFbank"),
    "redimnet2": ("speechbrain_mrl.model.redimnet2.ReDimNet2",
                  "speechbrain_mrl.model.features.ReDimNetFbank"),
    "redimnet2-tf": ("speechbrain_mrl.model.redimnet2.ReDimNet2",
                     "speechbrain_mrl.model.features_tf.TFMelFbank"),
}
MRL_DIMS = [4, 8, 16]
THRESHOLDS = {4: 0.31, 8: 0.42, 16: 0.53}
#: ``MRLEncoder.min_samples`` of each tiny model: the front end's 257 samples (ReDimNetFbank:
#: 2 frames, what ReDimNet and a time stride of 2 need) unless the lobe needs more frames
#: than those give: 400 samples for the 2 frames of the TF front end, 480 for the 4 frames
#: of a time stride of 4 (``TINY_R2_CONFIG``, as every ``r2-*`` preset).
MIN_SAMPLES = {"redimnet": 257, "redimnet2": 257, "redimnet2-tf": 400, "redimnet2-stride4": 480}


def tiny_encoder(family, seed=0):
    """A tiny encoder of ``family`` with a Matryoshka head and set BatchNorm statistics (eval)."""
    return tiny_encoder_of(dict(CONFIGS, **{"redimnet2-stride4": TINY_R2_CONFIG})[family], seed)


def mixed(clips):
    """Zero-padded batch of 1-D clips and their relative lengths."""
    longest = max(len(c) for c in clips)
    wavs = torch.stack([torch.nn.functional.pad(c, (0, longest - len(c))) for c in clips])
    return wavs, torch.tensor([len(c) / longest for c in clips])


def clips():
    return mixed([speaker_voice(i, i, s) for i, s in enumerate((1.7, 0.6, 1.15))])


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    """``(family, model folder, encoder)``: a tiny model of each family written as a model folder."""
    family = request.param
    encoder = tiny_encoder(family)
    folder = write_model_folder(
        tmp_path_factory.mktemp(family) / "model", encoder, thresholds=THRESHOLDS,
        validation={"valid": {4: 9.0, 8: 7.5, 16: 8.0}},
        extra_info={"datasets": ["synthetic"], "backbone": {"release": "b2-vox2-ptn"},
                    "frozen_backbone": True, "command": "python train.py hparams/mrl_r2_b2.yaml"})
    return family, folder, encoder


# ---------------------------------------------------------------- the encoder and its folder
def test_from_config_tells_the_families_apart():
    from speechbrain_mrl.model.features_tf import TFMelFbank
    from speechbrain_mrl.model.redimnet import ReDimNet
    from speechbrain_mrl.model.redimnet2 import ReDimNet2

    def kinds(enc):
        return type(enc.embedding_model), type(enc.compute_features).__name__

    assert kinds(MRLEncoder.from_config("r2-b0")) == (ReDimNet2, "ReDimNetFbank")
    assert kinds(MRLEncoder.from_config("b0")) == (ReDimNet, "ReDimNetFbank")
    assert kinds(MRLEncoder.from_config(CONFIGS["redimnet2-tf"]))[0] is ReDimNet2
    assert isinstance(MRLEncoder.from_config(CONFIGS["redimnet2-tf"]).compute_features, TFMelFbank)
    assert kinds(MRLEncoder.from_config(TINY_CONFIG))[0] is ReDimNet
    # a partial ReDimNet2 config: (freq, time) strides, or an explicit lobe
    partial = dict(F=16, C=4, stages_setup=[[[1, 2], 1, 1, [[3, 3]], 4]], embed_dim=8)
    assert kinds(MRLEncoder.from_config(partial))[0] is ReDimNet2
    no_pairs = dict(F=16, C=4, stages_setup=[[[1, 1], 1, 1, [[3, 3]], 4]], embed_dim=8)
    assert kinds(MRLEncoder.from_config(no_pairs, lobe="redimnet2"))[0] is ReDimNet2
    with pytest.raises(ValueError, match="lobe must be 'redimnet' or 'redimnet2'"):
        MRLEncoder.from_config("b0", lobe="ecapa")
    with pytest.raises(ValueError, match="unknown ReDimNet2 preset"):
        MRLEncoder.from_config("b0", lobe="redimnet2")


def test_model_folder_round_trip(model, no_network):
    """The folder builds the lobe and front end the encoder has, with its weights and sizes."""
    from hyperpyyaml import load_hyperpyyaml

    family, folder, encoder = model
    text = (folder / "hyperparams.yaml").read_text()
    lobe_class, fbank_class = CLASSES[family]
    assert f"backbone: !new:{lobe_class}\n" in text and f"compute_features: !new:{fbank_class}\n" in text
    assert f"# the {lobe_class.rsplit('.', 1)[1]} lobe;" in text
    hp = load_hyperpyyaml(text)
    assert plain_config(hp["backbone"].model_config) == plain_config(encoder.model_config)
    info = json.loads((folder / "model_info.json").read_text())
    assert info["model"].startswith(lobe_class.rsplit(".", 1)[1] + " + ")
    assert info["pool_dim"] == encoder.pool_dim and info["mrl_dims"] == MRL_DIMS
    m = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert type(m.encoder.compute_features) is type(encoder.compute_features)
    assert m.thresholds == THRESHOLDS and m.recommended_dim == 8
    wavs, lens = clips()
    with torch.no_grad():
        ref = encoder(wavs, lens)
    for d in MRL_DIMS:
        torch.testing.assert_close(m.encode_batch(wavs, lens, target_dim=d)[:, 0], ref[:, :d],
                                   atol=1e-5, rtol=0)
    # an utterance of the padded batch gets the embedding it gets alone
    alone = m.encode_batch(wavs[1:2, :int(lens[1] * wavs.shape[1])])[0, 0]
    assert torch.nn.functional.cosine_similarity(alone, ref[1], dim=0) > 0.9999


def test_speechbrain_own_classes_load_the_folder(model, tmp_path, no_network):
    """SpeechBrain's EncoderClassifier and SpeakerRecognition: the full-size embedding."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.inference.speaker import SpeakerRecognition

    _, folder, encoder = model
    plain = EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "sb"),
                                           run_opts={"device": "cpu"})
    wavs, lens = clips()
    emb = plain.encode_batch(wavs, lens)
    assert emb.shape == (3, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(emb[:, 0], encoder(wavs, lens), atol=1e-5, rtol=0)
    verifier = SpeakerRecognition.from_hparams(source=str(folder), savedir=str(tmp_path / "sr"),
                                               run_opts={"device": "cpu"})
    score, _ = verifier.verify_batch(wavs[:1], wavs[2:], lens[:1], lens[2:])
    with torch.no_grad():
        ref = torch.nn.functional.cosine_similarity(*encoder(wavs, lens)[[0, 2]], dim=0)
    assert abs(float(score) - float(ref)) < 1e-5


def test_write_model_folder_refuses_a_front_end_the_config_does_not_build(tmp_path):
    from speechbrain_mrl.model.features import ReDimNetFbank

    encoder = tiny_encoder("redimnet2-tf")
    encoder.compute_features = ReDimNetFbank(n_mels=16)
    with pytest.raises(ValueError, match=r"ReDimNet2 \+ ReDimNetFbank is not what its model_config "
                                         r"builds \(ReDimNet2 \+ TFMelFbank\)"):
        write_model_folder(tmp_path / "model", encoder)
    assert not (tmp_path / "model").exists()


def test_hub_folder(model, tmp_path, no_network):
    """build_hub_folder: the folder loads offline as the trained model, the card names the family."""
    from speechbrain_mrl.hub.package import build_hub_folder

    family, folder, encoder = model
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "results.json").write_text(json.dumps(
        {str(d): {"EER": 5.0 - i, "minDCF@0.01": 0.5, "minDCF@0.05": 0.3, "n_trials": 36}
         for i, d in enumerate(MRL_DIMS)}))
    (scores / "scoring_info.json").write_text(json.dumps(
        {"trials": "trials.txt", "n_trials": 36, "model_sha256": model_fingerprint(folder)}))
    out = tmp_path / "hub"
    files = build_hub_folder(folder, scores, out, repo_id="someone/mrl-tiny")
    assert sorted(p.name for p in out.iterdir()) == files
    lobe = "ReDimNet2" if family.startswith("redimnet2") else "ReDimNet"
    assert f"- Backbone: the official {lobe} release `b2-vox2-ptn`, frozen" in (out / "README.md").read_text()
    m = MRLEncoderClassifier.from_hparams(source=str(out), savedir=str(tmp_path / "sv"),
                                          run_opts={"device": "cpu"})
    wavs, lens = clips()
    with torch.no_grad():
        torch.testing.assert_close(m.encode_batch(wavs, lens)[:, 0], encoder(wavs, lens),
                                   atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the shortest input
def _shortest_is_exact(encoder):
    """``min_samples`` gives the lobe its frames, and one sample less would not (or is below
    the front end's own ``n_fft // 2 + 1``)."""
    features, need = encoder.compute_features, encoder.embedding_model.min_frames
    n = encoder.min_samples
    return (n >= features.n_fft // 2 + 1 and features.num_frames(n) >= need
            and (n - 1 < features.n_fft // 2 + 1 or features.num_frames(n - 1) < need))


def test_min_samples_counts_the_frames_the_lobe_needs():
    """ReDimNet2 pools over time inside the network: it needs its time stride in frames
    (4 for every r2-* preset: 480 samples at hop 160, 720 with the TF front end's
    uncentred frames); ReDimNet keeps the front end's 257 samples."""
    presets = {"b0": ("b0", 2, 257), "r2-b0": ("r2-b0", 4, 480),
               "r2-b0-tf": (redimnet2_config("r2-b0", feat_type="tf"), 4, 720)}
    for name, (config, frames, samples) in presets.items():
        encoder = MRLEncoder.from_config(config).eval()
        assert (encoder.embedding_model.min_frames, encoder.min_samples) == (frames, samples), name
        assert _shortest_is_exact(encoder), name
        wav = speaker_voice(0, 0, 0.5)[4000:4000 + samples]
        with torch.no_grad():
            assert torch.isfinite(encoder(wav[None])).all(), name
            if frames > 2:  # one sample less: too few frames for the lobe itself
                with pytest.raises(ValueError, match="frames are too few"):
                    encoder(wav[None, :-1])
    for family, samples in MIN_SAMPLES.items():
        encoder = tiny_encoder(family)
        assert encoder.min_samples == samples and _shortest_is_exact(encoder), family


@pytest.fixture(scope="module", params=list(MIN_SAMPLES))
def short_model(request, tmp_path_factory):
    """``(family, model folder, encoder)``: a tiny model of each family, time strides 2 and 4."""
    family = request.param
    encoder = tiny_encoder(family)
    folder = write_model_folder(tmp_path_factory.mktemp("short-" + family) / "model", encoder,
                                thresholds=THRESHOLDS)
    return family, folder, encoder


def test_the_shortest_input_embeds_and_one_sample_less_is_refused(short_model, no_network):
    """min_samples samples embed, alone and in a padded batch; min_samples - 1 is an
    AudioError naming the minimum, never the lobe's own ValueError (issue: 300 samples
    to an r2-b0 model folder raised "2 frames are too few" from pool_features)."""
    family, folder, encoder = short_model
    n = MIN_SAMPLES[family]
    m = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    clip = speaker_voice(1, 0, 0.5)[4000:4000 + n]
    with pytest.warns(ShortAudioWarning):  # under the model's short_duration: warned, embedded
        emb = m.encode_batch(clip[None])
    with torch.no_grad():
        ref = encoder.embed(clip[None])
    assert emb.shape == (1, 1, 16) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb[:, 0], ref, atol=1e-5, rtol=0)
    wavs, lens = mixed([speaker_voice(2, 1, 0.6), clip])
    with pytest.warns(ShortAudioWarning):
        batch = m.encode_batch(wavs, lens)
    assert torch.nn.functional.cosine_similarity(batch[1, 0], emb[0, 0], dim=0) > 0.9999
    too_short = (rf"audio too short \({(n - 1) / 16000:.3f} s < minimum {n / 16000:.3f} s\)")
    with pytest.raises(AudioError, match="utterance 0: " + too_short):
        m.encode_batch(clip[None, :n - 1])
    wavs, lens = mixed([speaker_voice(2, 1, 0.6), clip[:n - 1]])
    with pytest.raises(AudioError, match="utterance 1: " + too_short):
        m.encode_batch(wavs, lens)
    assert m.encoder.min_samples == encoder.min_samples == n


def test_extraction_skips_and_names_a_clip_below_the_minimum(short_model, tmp_path, no_network):
    """speechbrain-mrl extract over a manifest with a clip of min_samples - 1: it is skipped
    and listed with the minimum; the rest, the min_samples clip included, are embedded."""
    from speechbrain_mrl import cli
    from speechbrain_mrl.inference import extract as ex

    family, folder, _ = short_model
    n = MIN_SAMPLES[family]
    clips = {"a": speaker_voice(0, 0, 0.7), "b": speaker_voice(1, 0, 0.5),
             "shortest": speaker_voice(2, 0, 0.5)[4000:4000 + n],
             "too_short": speaker_voice(3, 0, 0.5)[4000:4000 + n - 1]}
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "wav"])
        for name, wav in clips.items():
            sf.write(str(tmp_path / f"{name}.wav"), wav.numpy(), 16000, subtype="FLOAT")
            writer.writerow([name, str(tmp_path / f"{name}.wav")])
    out = tmp_path / "out"
    with pytest.warns(ShortAudioWarning):  # the min_samples clip, under the short_duration
        info = cli.main(["extract", "--model_folder", str(folder), "--csv",
                         str(tmp_path / "clips.csv"), "--output_folder", str(out),
                         "--batch_size", "4", "--num_workers", "0"])
    assert info["n_embedded"] == 3 and info["n_skipped"] == 1
    with open(out / "skipped.csv", newline="") as f:
        skipped = {r["ID"]: r["reason"] for r in csv.DictReader(f)}
    assert skipped == {"too_short": f"too short ({(n - 1) / 16000:.3f} s < minimum "
                                    f"{n / 16000:.3f} s)"}
    ids, emb, rows = ex.load_embeddings(out)
    assert sorted(ids) == ["a", "b", "shortest"]
    m = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    for uid, e in zip(ids, emb):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortAudioWarning)
            np.testing.assert_allclose(e, m.encode_file(rows[uid]["wav"])[0, 0].numpy(), atol=1e-4)


# ---------------------------------------------------------------- export
@pytest.fixture(scope="module", params=["redimnet", "redimnet2", "redimnet2-tf", "redimnet2-stride4"])
def exported(request, tmp_path_factory):
    """The export command (``--onnx --check`` and OpenVINO IR) on a tiny model folder."""
    if not HAVE_ONNX:
        pytest.skip("the export extra (onnxruntime, onnxscript) is not installed")
    from speechbrain_mrl import cli

    root = tmp_path_factory.mktemp("export-" + request.param)
    encoder = tiny_encoder(request.param)
    folder = write_model_folder(root / "model", encoder)
    written = cli.main(["export", "--model_folder", str(folder), "--onnx", str(root / "m.onnx"),
                        "--check", *(["--openvino", str(root / "m.xml")] if HAVE_OPENVINO else [])])
    return request.param, encoder, written


def test_onnx_export_check_and_runtime_wrapper(exported):
    from speechbrain_mrl.export.onnx import OnnxEncoder

    _, encoder, written = exported
    assert written["onnx_max_abs_difference"] <= 1e-4  # the --check of the export command
    # the export records the shortest input and the frame shift; the wrapper takes them
    record = json.loads(pathlib.Path(written["onnx"] + ".json").read_text())
    assert (record["min_samples"], record["hop_length"]) == (encoder.min_samples, 160)
    runtime = OnnxEncoder(written["onnx"])
    assert runtime.min_samples == encoder.min_samples
    wavs, lens = clips()
    got = runtime(wavs, lens)
    assert list(got) == [f"embedding_{d}" for d in MRL_DIMS]
    with torch.no_grad():
        ref = encoder.all_dims(wavs, lens)
    for d, g in zip(MRL_DIMS, got.values()):
        np.testing.assert_allclose(g, ref[d].numpy(), atol=1e-4)
    # the shortest input runs through the graph; one sample less is refused before it
    n = encoder.min_samples
    clip = speaker_voice(1, 0, 0.5)[4000:4000 + n]
    with torch.no_grad():
        np.testing.assert_allclose(runtime(clip[None])["embedding_16"], encoder(clip[None]).numpy(),
                                   atol=1e-4)
    with pytest.raises(AudioError, match=f"minimum {n / 16000:.3f} s"):
        runtime(clip[None, :n - 1])


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_fp32_and_long_input_windowing(exported):
    """OpenVINO fp32 on the IR: mixed lengths as PyTorch; long inputs pooled window by window
    through the graph cut at the head's BatchNorm, as MRLEncoder.embed does."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    _, encoder, written = exported
    runtime = OpenVinoEncoder(written["openvino"], precision="fp32", threads=2, long_seconds=1.0,
                              window_seconds=0.5, window_batch=2)
    assert (runtime.min_samples, runtime.hop_length) == (encoder.min_samples, 160)  # the IR's record
    with pytest.raises(AudioError, match=f"minimum {encoder.min_samples / 16000:.3f} s"):
        runtime(speaker_voice(1, 0, 0.5)[None, :encoder.min_samples - 1])
    wavs, lens = clips()  # 1.7 s (windowed), 0.6 s and 1.15 s (one pass)
    got = runtime(wavs, lens)
    with torch.no_grad():
        ref = encoder.embed(wavs, lens, long_samples=16000, window_samples=8000)
        one_pass = encoder(wavs, lens)
    for d, g in zip(MRL_DIMS, got.values()):
        np.testing.assert_allclose(g, ref[:, :d].numpy(), atol=1e-4)
    assert float((torch.from_numpy(got["embedding_16"][0]) - one_pass[0]).abs().max()) > 1e-3
    assert {k[0] for k in runtime._compiled} == {"whole", "pool", "head"}


# ---------------------------------------------------------------- the recipe
def _tiny_r2_official(path):
    """A tiny ReDimNet2 as an official-format checkpoint (``save_official_redimnet2``)."""
    from speechbrain_mrl.model.official2 import save_official_redimnet2

    encoder = tiny_encoder("redimnet2")
    encoder.mrl_head = None
    return save_official_redimnet2(encoder, path)


@pytest.mark.parametrize("recipe", [RECIPE, LIBRI_RECIPE], ids=["VoxCeleb", "LibriSpeech"])
def test_r2_hparams_agree_key_by_key(recipe):
    """mrl_r2_b0/b2/b6.yaml: mrl_b2.yaml but for the backbone (release, family, output folder);
    the LibriSpeech files are the VoxCeleb ones but for the data section."""
    from test_recipe import _hparams_tree

    ref = _hparams_tree(recipe / "hparams" / "mrl_b2.yaml")
    assert ref["backbone"][1]["family"] == "redimnet"
    for name in ("b0", "b2", "b6"):
        tree = _hparams_tree(recipe / "hparams" / f"mrl_r2_{name}.yaml")
        assert list(tree) == list(ref), name
        differ = [k for k in ref if tree[k] != ref[k]]
        assert differ == (["output_folder", "backbone"] if name == "b2" else
                          ["pretrained_backbone", "output_folder", "backbone"]), name
        assert tree["pretrained_backbone"] == f"{name}-vox2-ptn"
        assert tree["backbone"] == (ref["backbone"][0], dict(ref["backbone"][1], family="redimnet2"))
        assert tree["output_folder"] == ("!ref", f"results/mrl_r2_{name}/<seed>")
        if recipe == LIBRI_RECIPE:
            vox = _hparams_tree(RECIPE / "hparams" / f"mrl_r2_{name}.yaml")
            libri_ref = _hparams_tree(recipe / "hparams" / "mrl_b2.yaml")
            vox_ref = _hparams_tree(RECIPE / "hparams" / "mrl_b2.yaml")
            assert [k for k in tree if tree[k] != libri_ref[k]] == [k for k in vox if vox[k] != vox_ref[k]]
            assert all(tree[k] == vox[k] for k in tree if k in vox and tree[k] != libri_ref[k])


def test_every_mrl_hparams_file_takes_a_local_file_of_either_family(tmp_path):
    """The frozen-backbone files build the family a local file's model_config describes."""
    from hyperpyyaml import load_hyperpyyaml

    from speechbrain_mrl.model.official import save_official_checkpoint

    r2 = _tiny_r2_official(tmp_path / "r2.pt")
    r1 = save_official_checkpoint(MRLEncoder.from_config(TINY_CONFIG), tmp_path / "r1.pt")
    for name in ("mrl_b2.yaml", "mrl_r2_b2.yaml"):
        for path, lobe in ((r2, "ReDimNet2"), (r1, "ReDimNet")):
            hp = load_hyperpyyaml((RECIPE / "hparams" / name).read_text(), {
                "data_folder": str(tmp_path), "output_folder": str(tmp_path / "o"),
                "pretrained_backbone": str(path)})
            assert type(hp["embedding_model"]).__name__ == lobe, (name, path)
            assert hp["mrl_head"].input_size == hp["embedding_model"].pool_dim


def test_head_trains_on_a_frozen_official_redimnet2(tmp_path, monkeypatch, no_network):
    """python train.py hparams/mrl_r2_b2.yaml on a local official-format ReDimNet2: the head
    trains on the frozen backbone and the model folder loads with ours and SpeechBrain's."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from test_recipe import TINY_HEAD_INIT, TINY_RUN

    import train

    from speechbrain_mrl.model.official2 import read_official_redimnet2

    data = make_flat_speakers(tmp_path / "my_speakers", n_speakers=8, utts=3)
    backbone = _tiny_r2_official(tmp_path / "b2-vox2-ptn.pt")
    monkeypatch.chdir(tmp_path)
    res = train.main([str(RECIPE / "hparams" / "mrl_r2_b2.yaml"), "--data_folder", str(data),
                      "--pretrained_backbone", str(backbone), "--embed_dim", "16",
                      "--mrl_dims", "[4, 8, 16]", *TINY_RUN, *TINY_HEAD_INIT])
    out = tmp_path / "results" / "mrl_r2_b2" / "1986"
    assert res["n_classes"] == 6 and set(res["valid"]) == set(MRL_DIMS) and res["frozen_backbone"]
    assert all(0 <= m["EER"] <= 100 for m in res["valid"].values())
    # the backbone stayed the official file's, BatchNorm statistics included
    config, official = read_official_redimnet2(backbone)
    lobe = torch.load(out / "model" / "embedding_model.ckpt", weights_only=True)
    assert set(lobe) == {k for k in official if not k.startswith("spec.")}
    assert all(torch.equal(v, official[k]) for k, v in lobe.items())
    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["model"].startswith("ReDimNet2 + ") and info["model_config"] == config
    assert info["extra_info"]["backbone"] == {"file": "b2-vox2-ptn.pt"}
    ours = MRLEncoderClassifier.from_hparams(source=str(out / "model"), run_opts={"device": "cpu"})
    plain = EncoderClassifier.from_hparams(source=str(out / "model"), savedir=str(tmp_path / "sb"),
                                           run_opts={"device": "cpu"})
    wavs, lens = clips()
    emb = plain.encode_batch(wavs, lens)
    assert emb.shape == (3, 1, 16)
    torch.testing.assert_close(emb, ours.encode_batch(wavs, lens), atol=1e-6, rtol=0)
    assert ours.thresholds.keys() == set(MRL_DIMS)


def test_redimnet2_from_scratch_exports_its_official_format(tmp_path, monkeypatch, no_network):
    """scratch_redimnet.yaml --redimnet_preset r2-b2: the backbone.pt it exports is an official
    ReDimNet2 checkpoint holding the trained weights."""
    from test_recipe import TINY_RUN

    import train

    from speechbrain_mrl.model.official2 import load_official_redimnet2

    data = make_flat_speakers(tmp_path / "my_speakers", n_speakers=6, utts=2)
    monkeypatch.chdir(tmp_path)
    res = train.main([str(RECIPE / "hparams" / "scratch_redimnet.yaml"), "--data_folder", str(data),
                      "--redimnet_preset", "r2-b2", *TINY_RUN])
    assert set(res["valid"]) == {192} and not res["frozen_backbone"]
    out = tmp_path / "results" / "scratch_redimnet" / "1986"
    exported = load_official_redimnet2(out / "backbone.pt")
    assert exported.model_config == redimnet2_config("r2-b2")
    ckpt = max((out / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)
    trained = torch.load(ckpt / "embedding_model.ckpt", weights_only=True)
    assert all(torch.equal(v, trained[k]) for k, v in exported.embedding_model.state_dict().items())
