"""Regressions: writing model and hub folders, the model fingerprint, mistyped sources, model cards.

Each test failed on the code before its fix: packaging wrote through symlinks,
an interrupted model write left a mixed model, edited thresholds kept the
fingerprint, a mistyped local path waited on the hub and named no local
folder, a NaN EER and absolute paths of a tagged override reached the card.
"""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from mrl_testutils import (MRL_DIMS, THRESHOLDS, reference_embedding, speaker_voice, tiny_encoder,
                           tiny_modules, write_tiny_model)
from speechbrain_mrl.hub import package as pkg
from speechbrain_mrl.inference import interface
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.model.folder import MODEL_FILES, model_fingerprint, write_model_folder
from speechbrain_mrl import cli


def _package(argv):
    """``speechbrain-mrl package ARGV``; returns the job's result."""
    return cli.main(["package", *argv])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model folder (seed 0) with its lobe and head; copy it before changing it."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _scores(folder, model, results=None):
    """A scoring output folder for ``model`` (its fingerprint recorded)."""
    folder.mkdir(parents=True)
    results = results or {str(d): {"EER": 5.0 - i, "minDCF@0.01": 0.5, "minDCF@0.05": 0.3}
                          for i, d in enumerate(MRL_DIMS)}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "scoring_info.json").write_text(json.dumps(
        {"trials": "trials.txt", "n_trials": 36, "model_sha256": model_fingerprint(model)}))
    return folder


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_package_never_writes_through_a_symlink(tiny, tmp_path):
    """Item 1: a link planted in --output_folder had its target overwritten (shutil.copy2)."""
    model = tiny[0]
    scores = _scores(tmp_path / "scores", model)
    out = tmp_path / "hub"
    out.mkdir()
    victims = {}
    for name in ("calibration.json", "embedding_model.ckpt", "model_info.json",
                 "custom_interface.py"):
        victims[name] = tmp_path / f"victim_{name}"
        victims[name].write_text(f"precious {name}\n")
        (out / name).symlink_to(victims[name])
    argv = ["--recipe_output", str(model), "--scores", str(scores), "--output_folder", str(out),
            "--dry_run"]
    with pytest.raises(FileExistsError, match="calibration.json"):
        _package(argv)  # links are not files this command wrote
    _package(argv + ["--overwrite"])
    for name, victim in victims.items():
        assert victim.read_text() == f"precious {name}\n"
        assert not (out / name).is_symlink()
    for name in ("calibration.json", "embedding_model.ckpt", "hyperparams.yaml", "mrl_head.ckpt"):
        assert (out / name).read_bytes() == (model / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == pkg.hub_files()  # no temporary left


def test_failed_model_write_keeps_the_previous_folder(tiny, tmp_path, monkeypatch, no_network):
    """Item 2: a full disk on mrl_head.ckpt left the new backbone beside the old head."""
    folder = tmp_path / "model"
    shutil.copytree(tiny[0], folder)
    before = _contents(folder)
    new_encoder = tiny_encoder(*tiny_modules(seed=3))
    real_save = torch.save

    def disk_full_on_the_head(obj, path, *args, **kwargs):
        if "mrl_head" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_the_head)
    with pytest.raises(OSError, match="No space left"):
        write_model_folder(folder, new_encoder, thresholds={4: 0.1, 8: 0.2, 16: 0.3})
    monkeypatch.undo()
    assert _contents(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    m = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    wav = speaker_voice(0, 0, 1.0).unsqueeze(0)
    torch.testing.assert_close(m.encode_batch(wav)[:, 0], reference_embedding(*tiny[1:], wav),
                               atol=1e-5, rtol=0)
    assert m.thresholds == THRESHOLDS
    # a successful write replaces the whole folder
    write_model_folder(folder, new_encoder, thresholds={4: 0.1, 8: 0.2, 16: 0.3})
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    assert (folder / "embedding_model.ckpt").read_bytes() != before["embedding_model.ckpt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_model_write_after_a_kill_between_renames(tiny, tmp_path):
    """Item 2: what a kill inside the folder swap leaves is never loaded as a model, and the
    next write cleans it up; a folder holding other files is never replaced."""
    from speechbrain_mrl.utils.files import STAGING_MARKER, aside_folder, staging_folder

    folder = tmp_path / "model"
    shutil.copytree(tiny[0], aside_folder(folder))  # moved aside, new one not yet in place
    (aside_folder(folder) / STAGING_MARKER).touch()
    shutil.copytree(tiny[0], staging_folder(folder), dirs_exist_ok=True)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        MRLEncoderClassifier.from_hparams(source=str(folder))
    encoder = tiny_encoder(*tiny_modules(seed=3))
    write_model_folder(folder, encoder)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.txt").write_text("epoch 1\n")
    with pytest.raises(FileExistsError, match=r"run holds files that are not a model's.*train_log"):
        write_model_folder(run, encoder)
    assert [p.name for p in run.iterdir()] == ["train_log.txt"]


def test_fingerprint_covers_calibration(tiny, tmp_path):
    """Item 2: thresholds edited after scoring passed the packager's model check."""
    model = tmp_path / "model"
    shutil.copytree(tiny[0], model)
    scores = _scores(tmp_path / "scores", model)
    calibration = json.loads((model / "calibration.json").read_text())
    calibration["thresholds"] = {str(d): -1.0 for d in MRL_DIMS}
    (model / "calibration.json").write_text(json.dumps(calibration))
    with pytest.raises(ValueError, match="computed with another model"):
        pkg.build_hub_folder(model, scores, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()
    edited = model_fingerprint(model)
    (model / "calibration.json").unlink()  # no calibration: another model again (issue 28: not an error)
    assert model_fingerprint(model) not in (edited, json.loads(
        (scores / "scoring_info.json").read_text())["model_sha256"])


def test_mistyped_local_path_names_local_folder_and_hub(tiny, tmp_path, monkeypatch, no_network):
    """Item 3: 'modles/m1' waited ~28 s on the hub and reported only an internet error."""
    import speechbrain.utils.fetching as fetching
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"no local folder 'modles/m1' in .*, and the "
                       r"HuggingFace Hub is offline \(HF_HUB_OFFLINE\) .* repository 'modles/m1'"):
        MRLEncoderClassifier.from_hparams(source="modles/m1", savedir=tmp_path / "sv")
    assert time.monotonic() - start < 10
    # online: what huggingface_hub raises (after its retries) when the hub cannot be reached
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the "
                                      "Hub and we cannot find the requested files in the local "
                                      "cache.\nPlease check your connection.")

    monkeypatch.setattr(fetching.huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(interface, "_hub_unreachable", lambda endpoint: None)  # the probe passes
    with pytest.raises(FileNotFoundError, match=r"no local folder 'modles/m1' .* could not be "
                       r"reached or has no repository 'modles/m1' \(LocalEntryNotFoundError"):
        MRLEncoderClassifier.from_hparams(source="modles/m1", savedir=tmp_path / "sv")
    # a local model folder one typo away: the hub is not asked
    shutil.copytree(tiny[0], tmp_path / "models" / "m1")

    def asked(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(fetching.huggingface_hub, "hf_hub_download", asked)
    with pytest.raises(FileNotFoundError, match=r"no local folder 'modles/m1' \(did you mean "
                       r"'models/m1'\?\)"):
        MRLEncoderClassifier.from_hparams(source="modles/m1", savedir=tmp_path / "sv")


@pytest.mark.parametrize("kind", ["cosine", "s-norm"])
def test_nan_eer_is_refused(tiny, tmp_path, kind):
    """Item 4: a NaN EER in results.json reached the card's table as "nan"."""
    results = {str(d): {"EER": 2.0, "minDCF@0.01": 0.2, "minDCF@0.05": 0.1,
                        "s-norm": {"EER": 1.5, "minDCF@0.01": 0.2, "minDCF@0.05": 0.1}}
               for d in MRL_DIMS}
    (results["8"] if kind == "cosine" else results["8"]["s-norm"])["EER"] = float("nan")
    scores = _scores(tmp_path / "scores", tiny[0], results)
    with pytest.raises(ValueError, match=rf"results.json: EER \({kind}\) of size 8 is nan, not a "
                                         "finite number"):
        pkg.build_hub_folder(tiny[0], scores, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_tagged_override_publishes_no_absolute_path(tiny, tmp_path):
    """Item 4: `--noise "!ref /home/alice/noise"` put /home/alice into model_info.json and the card."""
    import speechbrain as sb

    from recipe_data import RECIPE
    from speechbrain_mrl.training.brain import training_command

    hparams = RECIPE / "hparams" / "mrl_b2.yaml"
    _, _, overrides = sb.parse_arguments([str(hparams), "--noise", "!ref /home/alice/noise",
                                          "--data_folder", "/home/alice/vox", "--lists",
                                          "[/home/alice/a.csv, b.csv]"])
    command = training_command(str(hparams), overrides)
    assert "/home/alice" not in command
    assert command == ("python train.py hparams/mrl_b2.yaml noise: !ref noise data_folder: vox "
                       "lists: [a.csv, b.csv]")
    # a model folder recorded before this fix is published without its paths too
    model = write_model_folder(tmp_path / "model", tiny_encoder(*tiny[1:]), thresholds=THRESHOLDS,
                               extra_info={"command": "python train.py hparams/mrl_b2.yaml noise: "
                                                      "!ref /home/alice/noise"})
    scores = _scores(tmp_path / "scores", model)
    pkg.build_hub_folder(model, scores, tmp_path / "hub")
    for name in ("README.md", "model_info.json"):
        text = (tmp_path / "hub" / name).read_text()
        assert "/home/alice" not in text and "noise: !ref noise" in text
    assert "/home/alice" in (model / "model_info.json").read_text()  # the model folder as it was


def test_the_card_command_hides_secrets_and_outside_paths():
    """Regression (issue 28): the model card kept ~/ and ../ paths and raw override values
    (a wandb_key would have been published)."""
    from speechbrain_mrl.training.brain import training_command

    shown = training_command("/home/me/recipe/hparams/mrl_b2.yaml",
                             "data_folder: ~/data/vox\nwandb_key: abc123\nnoise: ../corpora/noise\n"
                             "api_token: t0k\nseed: 3\noutput_folder: results/a")
    assert shown == ("python train.py hparams/mrl_b2.yaml --data_folder vox --wandb_key '<hidden>' "
                     "--noise noise --api_token '<hidden>' --seed 3 --output_folder results/a")
    assert "abc123" not in shown and "~" not in shown and ".." not in shown


def test_one_rule_for_a_model_folder_without_calibration(tiny, tmp_path):
    """Regression (issue 28): without calibration.json, verify worked but enrol and extract
    refused the folder (the fingerprint needed the file)."""
    model = tmp_path / "model"
    shutil.copytree(tiny[0], model)
    with_file = model_fingerprint(model)
    (model / "calibration.json").unlink()
    assert model_fingerprint(model) != with_file  # another model, but a model
    MRLEncoderClassifier.from_hparams(source=str(model))


def test_runtime_constructor_arguments_are_checked(tmp_path):
    """Regression (issue 28): OpenVinoEncoder(bucket_samples=0) raised ZeroDivisionError at the
    first call; a file as the folder of qdrant+local: gave '[Errno 17] File exists'."""
    pytest.importorskip("openvino", reason='OpenVINO is not installed (pip install -e ".[openvino]")')
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    for bad in ({"bucket_samples": 0}, {"window_batch": -1}, {"threads": 0}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            OpenVinoEncoder(tmp_path / "unused.onnx", precision="fp32", **bad)
    pytest.importorskip("qdrant_client", reason="qdrant-client is not installed")
    from speechbrain_mrl.search.qdrant import QdrantSpeakerIndex

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):  # creating a collection
        QdrantSpeakerIndex(8, [4, 8], location=f"qdrant+local:{tmp_path}/a_file/speakers")


def test_mistyped_local_path_with_the_hub_unreachable_fails_in_seconds(tmp_path):
    """Issue 28: 'modls/mymodel' (no similar folder) spent 28 s in huggingface_hub's retries."""
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    env.pop("HF_HUB_OFFLINE", None)
    code = ("from speechbrain_mrl.inference.interface import MRLEncoderClassifier\n"
            "import time\nstart = time.monotonic()\n"
            "try:\n    MRLEncoderClassifier.from_hparams('modls/mymodel')\n"
            "except FileNotFoundError as err:\n    print(round(time.monotonic() - start, 1), err)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    seconds, message = out.stdout.strip().split(" ", 1)
    assert float(seconds) < 10, out.stdout + out.stderr
    assert "no local folder 'modls/mymodel'" in message
    assert f"HuggingFace Hub cannot be reached (127.0.0.1:{port}" in message
