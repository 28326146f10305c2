"""Tests of speechbrain_mrl.hub.package (speechbrain-mrl package), the foreign_class path and hub-id loading."""
import json
import pathlib
import shutil

import pytest
import soundfile as sf
import torch
import yaml

from mrl_testutils import MRL_DIMS, THRESHOLDS, reference_embedding, speaker_voice, write_tiny_model
from speechbrain_mrl.model.folder import model_fingerprint
from speechbrain_mrl.inference.interface import MRLEncoderClassifier

from speechbrain_mrl.hub import package as pkg
from speechbrain_mrl import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _package(argv):
    """``speechbrain-mrl package ARGV``; returns the job's result."""
    return cli.main(["package", *argv])


def _fake_results(dims, norms=True):
    out = {}
    for i, d in enumerate(dims):
        r = {"EER": 5.0 - i, "minDCF@0.01": 0.5 - 0.01 * i, "minDCF@0.05": 0.3, "n_trials": 36}
        if norms:
            r["s-norm"] = {"EER": 4.5 - i, "minDCF@0.01": 0.45, "minDCF@0.05": 0.28}
            r["as-norm"] = {"EER": 4.4 - i, "minDCF@0.01": 0.44, "minDCF@0.05": 0.27}
        out[str(d)] = r
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    _, lobe, head = write_tiny_model(root / "recipe_out" / "model")
    scores = root / "scores"
    scores.mkdir()
    (scores / "results.json").write_text(json.dumps(_fake_results(MRL_DIMS)))
    (scores / "scoring_info.json").write_text(json.dumps(
        {"trials": "/data/veri_test2.txt", "n_trials": 36, "cohort_topk": 300,
         "model_sha256": model_fingerprint(root / "recipe_out" / "model")}))
    official = root / "official_scores"
    official.mkdir()
    (official / "results.json").write_text(json.dumps(_fake_results([12], norms=False)))
    out = root / "hub_folder"
    files = _package(["--recipe_output", str(root / "recipe_out"), "--scores", str(scores),
                      "--official_scores", str(official), "--output_folder", str(out),
                      "--repo_id", "someone/mrl-tiny", "--dry_run"])
    return root, out, files, lobe, head


def test_hub_folder_and_model_card(hub, capsys):
    root, out, files, _, _ = hub
    assert files == sorted(["README.md", "calibration.json", "custom_interface.py",
                            "embedding_model.ckpt", "hyperparams.yaml", "model_info.json",
                            "mrl_head.ckpt", "results.json"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == "en" and front["license"] == "apache-2.0"
    assert front["datasets"] == ["synthetic"] and {"eer", "mindcf"} <= set(front["metrics"])
    # the card states what the recipe recorded, and an install line that works
    assert "Trained on synthetic" in card and "python train.py hparams/demo_mrl.yaml" in card
    assert "pip install /path/to/speechbrain-mrl" in card and "pip install speechbrain-mrl" not in card
    assert "voxceleb" not in card.split("## Citation")[0].replace("recipes/VoxCeleb", "").lower()
    assert "matryoshka" in front["tags"] and "speechbrain" in front["tags"]
    for d in MRL_DIMS:
        assert f"| Matryoshka | {d} |" in card
    assert "| official ReDimNet | 12 |" in card
    assert 'source="someone/mrl-tiny"' in card and "target_dim=" in card
    assert "EncoderClassifier.from_hparams" in card and "minDCF is normalised" in card
    assert "@inproceedings{yakovlev2024redimnet" in card and "veri_test2.txt" in card
    # every size's validation EER and the recommended size, as the training recorded them
    assert "| valid_long | 3.00 | 1.00 | 0.90 |" in card and "Recommended size: **8**" in card
    # dry run lists and uploads nothing
    _package(["--recipe_output", str(root / "recipe_out" / "model"), "--scores",
              str(root / "scores" / "results.json"), "--output_folder", str(root / "again"), "--dry_run"])
    printed = capsys.readouterr().out
    assert "[dry run] would upload" in printed and "mrl_head.ckpt" in printed


def test_hub_folder_loads_offline_and_matches_training(hub, tmp_path, no_network):
    _, out, _, lobe, head = hub
    m = MRLEncoderClassifier.from_hparams(source=str(out), savedir=str(tmp_path / "sv"),
                                          run_opts={"device": "cpu"})
    wavs = torch.stack([speaker_voice(s, 2, 0.9) for s in range(2)])
    lens = torch.tensor([1.0, 0.8])
    ref = reference_embedding(lobe, head, wavs, lens)
    for d in MRL_DIMS:
        torch.testing.assert_close(m.encode_batch(wavs, lens, target_dim=d)[:, 0], ref[:, :d],
                                   atol=1e-5, rtol=0)
    assert m.thresholds == THRESHOLDS and m.recommended_dim == 8


@pytest.mark.parametrize("which", ["recipe folder", "hub folder"])
def test_speechbrain_own_classes_embed_with_our_model_folders(hub, tmp_path, which, no_network):
    """SpeechBrain's EncoderClassifier and SpeakerRecognition load a folder of ours as they are:
    the full-size Matryoshka embedding, padding-aware, equal to MRLEncoderClassifier's."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.inference.speaker import SpeakerRecognition

    root, out, _, lobe, head = hub
    source = root / "recipe_out" / "model" if which == "recipe folder" else out
    plain = EncoderClassifier.from_hparams(source=str(source), savedir=str(tmp_path / "sb"),
                                           run_opts={"device": "cpu"})
    ours = MRLEncoderClassifier.from_hparams(source=str(source), run_opts={"device": "cpu"})
    wavs = torch.stack([speaker_voice(s, 2, 0.9) for s in range(3)])
    lens = torch.tensor([1.0, 0.8, 0.55])
    emb = plain.encode_batch(wavs, lens)
    assert emb.shape == (3, 1, max(MRL_DIMS))
    torch.testing.assert_close(emb[:, 0], reference_embedding(lobe, head, wavs, lens),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, ours.encode_batch(wavs, lens), atol=1e-6, rtol=0)
    for d in MRL_DIMS:  # the size-d embedding is the first d coordinates
        torch.testing.assert_close(emb[:, :, :d], ours.encode_batch(wavs, lens, target_dim=d))
    alone = plain.encode_batch(wavs[2:, :int(0.55 * wavs.shape[1])])
    assert torch.nn.functional.cosine_similarity(alone[0, 0], emb[2, 0], dim=0) > 0.9999
    assert plain.encode_batch(wavs, lens, normalize=True).shape == emb.shape

    verifier = SpeakerRecognition.from_hparams(source=str(source), savedir=str(tmp_path / "sr"),
                                               run_opts={"device": "cpu"})
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(str(a), speaker_voice(0, 0, 1.0).numpy(), 16000)
    sf.write(str(b), speaker_voice(0, 1, 1.0).numpy(), 16000)
    score, _ = verifier.verify_files(str(a), str(b))
    ref_score, _ = ours.verify_files(a, b, threshold=0.0)
    assert abs(float(score) - float(ref_score)) < 1e-5


def test_foreign_class_path(hub, tmp_path, no_network):
    from speechbrain.inference.interfaces import foreign_class

    _, out, _, lobe, head = hub
    m = foreign_class(source=str(out), pymodule_file="custom_interface.py",
                      classname="CustomInterface", savedir=str(tmp_path / "fc"),
                      run_opts={"device": "cpu"})
    assert type(m).__name__ == "CustomInterface" and isinstance(m, MRLEncoderClassifier)
    wavs = speaker_voice(3, 0, 1.0).unsqueeze(0)
    ref = reference_embedding(lobe, head, wavs)
    torch.testing.assert_close(m.encode_batch(wavs, target_dim=8)[:, 0], ref[:, :8],
                               atol=1e-5, rtol=0)
    assert m.threshold_for(8) == THRESHOLDS[8]  # from the copy in hyperparams.yaml


def test_hub_repo_id_source(hub, tmp_path, monkeypatch, no_network):
    """A repo id goes through huggingface_hub (served here from the built folder)."""
    import speechbrain.utils.fetching as fetching

    _, out, _, lobe, head = hub
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        src = out / filename
        if not src.exists():
            raise FileNotFoundError(filename)
        dst = tmp_path / "hf_cache" / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return str(dst)

    monkeypatch.setattr(fetching.huggingface_hub, "hf_hub_download", fake_download)
    m = MRLEncoderClassifier.from_hparams(source="someone/mrl-tiny", savedir=str(tmp_path / "sv"),
                                          run_opts={"device": "cpu"})
    assert {f for _, f in calls} >= {"hyperparams.yaml", "embedding_model.ckpt", "mrl_head.ckpt",
                                     "calibration.json"}
    assert all(r == "someone/mrl-tiny" for r, _ in calls)
    wavs = speaker_voice(0, 0, 1.0).unsqueeze(0)
    torch.testing.assert_close(m.encode_batch(wavs)[:, 0], reference_embedding(lobe, head, wavs),
                               atol=1e-5, rtol=0)
    assert m.thresholds == THRESHOLDS


def test_upload_sends_exactly_the_packaged_files(hub, monkeypatch, tmp_path, capsys):
    """Regression: files already in --out (.env, old runs) were uploaded; the dry run under-reported."""
    root, _, _, _, _ = hub
    calls = []

    class FakeApi:
        def __init__(self, token=None, endpoint=None):
            calls.append(("init", token))

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def create_commit(self, **kw):
            calls.append(("create_commit", kw))
            return "commit-123"

    monkeypatch.setattr(pkg, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    dest = tmp_path / "up"
    dest.mkdir()
    (dest / ".env").write_text("HF_TOKEN=secret\n")
    (dest / "old_run" / "save").mkdir(parents=True)
    (dest / "old_run" / "save" / "notes.txt").write_text("private\n")
    argv = ["--recipe_output", str(root / "recipe_out"), "--scores", str(root / "scores"),
            "--output_folder", str(dest), "--repo_id", "someone/mrl-tiny", "--private"]
    with pytest.raises(FileExistsError, match=r"\.env"):
        _package(argv)
    assert len(calls) == 0 and not (dest / "README.md").exists()
    _package(argv + ["--dry_run", "--overwrite"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    files = _package(argv + ["--overwrite"])
    assert calls[0] == ("init", "hf_test_token")
    assert calls[1] == ("create_repo", {"repo_id": "someone/mrl-tiny", "repo_type": "model",
                                        "private": True, "exist_ok": True})
    assert calls[2][0] == "create_commit" and calls[2][1]["repo_id"] == "someone/mrl-tiny"
    assert calls[2][1]["commit_message"] == "Upload Matryoshka ReDimNet model"  # its family
    sent = [op.path_in_repo for op in calls[2][1]["operations"]]
    assert sent == files == listed == pkg.hub_files()
    assert f"uploaded {len(sent)} files" in capsys.readouterr().out
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RuntimeError, match="HF_TOKEN"):
        pkg.upload(dest, "someone/mrl-tiny", files)
    with pytest.raises(ValueError, match="model folder itself"):
        pkg.build_hub_folder(root / "recipe_out", root / "scores", root / "recipe_out" / "model")


def test_scores_of_another_model_are_refused(hub, tmp_path):
    """Regression: scores computed with a different model (or none recorded) were published."""
    root = hub[0]
    other = tmp_path / "scores"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(_fake_results(MRL_DIMS)))
    info = {"trials": "t.txt", "n_trials": 36}
    (other / "scoring_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="records no model_sha256"):
        pkg.build_hub_folder(root / "recipe_out", other, tmp_path / "o")
    (other / "scoring_info.json").write_text(json.dumps(dict(info, model_sha256="0" * 64)))
    with pytest.raises(ValueError, match="another model"):
        pkg.build_hub_folder(root / "recipe_out", other, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_model_card_datasets_override_and_repo_id_check(hub, tmp_path):
    """Regression: every card said VoxCeleb; a malformed repo id went into the card."""
    root = hub[0]
    _package(["--recipe_output", str(root / "recipe_out"), "--scores", str(root / "scores"),
              "--output_folder", str(tmp_path / "o"), "--datasets", "voxceleb", "--dry_run"])
    assert "datasets:\n- voxceleb\n" in (tmp_path / "o" / "README.md").read_text()
    from huggingface_hub.errors import HFValidationError

    with pytest.raises(HFValidationError):
        _package(["--recipe_output", str(root / "recipe_out"), "--scores", str(root / "scores"),
                  "--output_folder", str(tmp_path / "o2"), "--repo_id", "not a/valid//id", "--dry_run"])
    assert not (tmp_path / "o2").exists()


def test_bad_inputs(hub, tmp_path):
    root = hub[0]
    with pytest.raises(FileNotFoundError, match="no model folder"):
        pkg.build_hub_folder(tmp_path, root / "scores", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="scoring results not found"):
        pkg.build_hub_folder(root / "recipe_out", tmp_path, tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps(_fake_results([4, 999])))
    (bad / "scoring_info.json").write_text((root / "scores" / "scoring_info.json").read_text())
    with pytest.raises(ValueError, match="999"):
        pkg.build_hub_folder(root / "recipe_out", bad, tmp_path / "o")


def test_top_level_b2_hparams_is_the_rendered_template():
    """hparams/mrl_redimnet_b2.yaml is the package's one template rendered for ReDimNet-b2."""
    from speechbrain_mrl.model.folder import render_hyperparams
    from speechbrain_mrl.model.redimnet import ReDimNet, redimnet_config

    cfg = redimnet_config("b2")
    text = render_hyperparams(cfg, ReDimNet(**cfg).pool_dim, 256, [64, 128, 192, 256])
    assert (ROOT / "hparams" / "mrl_redimnet_b2.yaml").read_text() == text
    assert not (ROOT / "hparams" / "hyperparams_template.yaml").exists()  # no second copy


def test_top_level_b2_hparams_builds_consistent_model():
    from hyperpyyaml import load_hyperpyyaml

    with open(ROOT / "hparams" / "mrl_redimnet_b2.yaml") as f:
        hp = load_hyperpyyaml(f)
    assert hp["mrl_dims"] == [64, 128, 192, 256] and hp["thresholds"] == {}
    assert hp["mrl_head"].input_size == hp["backbone"].pool_dim
    assert hp["compute_features"].n_mels == hp["backbone"].F
    assert hp["modules"]["embedding_model"].encoder is hp["encoder"]
    assert set(hp["pretrainer"].loadables) == {"embedding_model", "mrl_head"}
    assert not hp["pretrainer"].paths  # collected from the from_hparams source


def test_upload_to_a_stalled_endpoint_is_bounded(hub, tmp_path):
    """Regression: the upload hung forever against an endpoint that never answers."""
    import socket
    import time

    root = hub[0]
    dest = tmp_path / "stalled"
    files = pkg.build_hub_folder(root / "recipe_out", root / "scores", dest)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepted by the kernel, never answered
    start = time.monotonic()
    try:
        with pytest.raises(Exception) as err:
            pkg.upload(dest, "someone/mrl-tiny", files, token="hf_test",
                       endpoint=f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
    finally:
        server.close()
    assert time.monotonic() - start < 60
    assert "timed out" in str(err.value).lower() or "timeout" in type(err.value).__name__.lower()


def test_hub_upload_script_is_the_package_command(hub, tmp_path):
    """hub_upload/upload.py (the design card's top level) builds the same hub folder."""
    import subprocess
    import sys

    root, out, files, _, _ = hub
    dest = tmp_path / "via_script"
    proc = subprocess.run([sys.executable, str(ROOT / "hub_upload" / "upload.py"), "--recipe_output",
                           str(root / "recipe_out"), "--scores", str(root / "scores"),
                           "--official_scores", str(root / "official_scores"), "--output_folder",
                           str(dest), "--repo_id", "someone/mrl-tiny", "--dry_run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    for name in files:
        assert (dest / name).read_bytes() == (out / name).read_bytes(), name


def test_pyannote_takes_our_model_as_its_speaker_embedding(hub):
    """pyannote.audio's speaker-embedding interface over a model folder: the same embedding
    as ours, masks honoured (a masked tail is padding)."""
    pytest.importorskip("pyannote.audio", reason="pyannote.audio is not installed "
                        '(pip install "speechbrain-mrl[pyannote]")')
    import numpy as np

    from speechbrain_mrl.inference.pyannote import pyannote_embedding

    root, out, _, lobe, head = hub
    embedding = pyannote_embedding(out)
    assert (embedding.sample_rate, embedding.dimension, embedding.metric) == (16000, max(MRL_DIMS), "cosine")
    assert embedding.min_num_samples <= 400
    wavs = torch.stack([speaker_voice(s, 2, 1.0) for s in range(3)])[:, None]
    masks = torch.ones(3, wavs.shape[-1])
    masks[1, 11000:] = 0
    got = embedding(wavs, masks=masks)
    ref = reference_embedding(lobe, head, wavs[1:2, 0, :11000])[0].numpy()
    assert got.shape == (3, max(MRL_DIMS)) and np.isfinite(got).all()
    assert float(got[1] @ ref / np.linalg.norm(got[1]) / np.linalg.norm(ref)) > 0.9999


# ---------------------------------------------------------------- the card names the backbone family
#: A tiny ReDimNet2 (as in tests/test_redimnet2_paths.py): time stride 2, an attention block.
TINY_R2 = dict(F=16, C=4, stages_setup=[[[1, 1], 1, 2, [[3, 3]], 4], [[2, 2], 1, 1, [[3, 3]], None]],
               embed_dim=12, out_channels=24)


def _packaged_card(root, family, backbone):
    """README.md of a packaged tiny ``family`` model folder whose training recorded ``backbone``
    (with scores of the official embedding beside it)."""
    from mrl_testutils import TINY_CONFIG
    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.folder import write_model_folder
    from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    from speechbrain_mrl.model.redimnet2 import redimnet2_config

    torch.manual_seed(0)
    encoder = MRLEncoder.from_config(redimnet2_config(TINY_R2) if family == "ReDimNet2" else TINY_CONFIG)
    encoder.mrl_head = MatryoshkaProjection(encoder.pool_dim, embed_dim=16, mrl_dims=MRL_DIMS)
    model = write_model_folder(root / "model", encoder.eval(), thresholds=THRESHOLDS,
                               extra_info={"backbone": backbone, "frozen_backbone": True})
    assert json.loads((model / "model_info.json").read_text())["model"].startswith(family + " ")
    scores, official = root / "scores", root / "official_scores"
    for folder, dims in ((scores, MRL_DIMS), (official, [12])):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(_fake_results(dims, norms=False)))
    (scores / "scoring_info.json").write_text(json.dumps(
        {"trials": "trials.txt", "n_trials": 36, "model_sha256": model_fingerprint(model)}))
    pkg.build_hub_folder(model, scores, root / "hub", repo_id="someone/mrl-tiny",
                         official_scores=official)
    return (root / "hub" / "README.md").read_text()


def _sections(card):
    """(card before its citation, citation section, license section)."""
    before, after = card.split("## Citation")
    citation, license_text = after.split("## License")
    return before, citation, license_text


def test_model_card_of_a_redimnet2_names_redimnet2_throughout(tmp_path):
    """Regression: a ReDimNet2 model's card called it ReDimNet, credited IDR&D's ReDimNet release
    for its architecture and weights and cited only the ReDimNet paper."""
    import re

    card = _packaged_card(tmp_path, "ReDimNet2", {"release": "b2-vox2-ptn"})
    before, citation, license_text = _sections(card)
    assert "# Matryoshka ReDimNet2 speaker embeddings" in card
    assert "A ReDimNet2 speaker-embedding model" in card
    assert "- redimnet2\n" in card.split("---\n")[1]  # hub tag
    assert "| official ReDimNet2 | 12 |" in card
    assert "- Backbone: the official ReDimNet2 release `b2-vox2-ptn`, frozen" in card
    # the architecture and the weights: PalabraAI's repository, MIT
    assert "PalabraAI" in license_text and "https://github.com/PalabraAI/redimnet2" in license_text
    assert "MIT license" in license_text and "`b2-vox2-ptn`" in license_text
    assert "weights" in license_text and "IDR&D" not in card and "IDRnD" not in card
    # the ReDimNet2 paper, as its official README gives it
    assert "@inproceedings{redimnet2_2026" in citation
    assert ("ReDimNet2: Scaling Speaker Verification via Time-Pooled Dimension Reshaping"
            in citation) and "Interspeech 2026" in citation
    # no plain "ReDimNet" outside the citations (ReDimNet2 extends the ReDimNet paper)
    assert not re.search(r"ReDimNet(?!2)", before + license_text), re.findall(
        r".{0,40}ReDimNet(?!2).{0,40}", before + license_text)
    assert not re.search(r"ReDimNet release|official ReDimNet(?!2)", card)


def test_model_card_of_a_redimnet_keeps_its_claims(tmp_path):
    card = _packaged_card(tmp_path, "ReDimNet", {"release": "b2-vox2-ptn"})
    _, citation, license_text = _sections(card)
    assert "# Matryoshka ReDimNet speaker embeddings" in card
    assert "A ReDimNet speaker-embedding model" in card
    assert "- redimnet\n" in card.split("---\n")[1]
    assert "| official ReDimNet | 12 |" in card
    assert "- Backbone: the official ReDimNet release `b2-vox2-ptn`, frozen" in card
    assert "IDR&D" in license_text and "https://github.com/IDRnD/ReDimNet" in license_text
    assert "MIT license" in license_text and "`b2-vox2-ptn`" in license_text
    assert "@inproceedings{yakovlev2024redimnet" in citation
    assert "ReDimNet2" not in card and "redimnet2" not in card and "PalabraAI" not in card


@pytest.mark.parametrize("family", ["ReDimNet", "ReDimNet2"])
def test_model_card_of_a_model_trained_from_scratch_credits_no_weights(tmp_path, family):
    """Regression: the card credited official weights "when the backbone was initialised from
    them", also for a backbone trained from scratch."""
    card = _packaged_card(tmp_path, family, {"trained_from_scratch": True})
    _, _, license_text = _sections(card)
    assert "- Backbone: trained from scratch" in card
    assert f"The {family} architecture comes from" in license_text
    assert "trained from scratch" in license_text and "release" not in license_text
    assert "initialised from" not in license_text and "its weights" not in license_text
