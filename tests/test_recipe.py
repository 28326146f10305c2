"""The MRL recipe through the real Brain on tiny generated data.

Stages of the demo (each its own process): from-scratch ReDimNet, frozen-backbone
Matryoshka stage (backbone bit-identical afterwards), scoring with
speaker_verification_cosine.py; plus interruption mid-epoch and resumption from
the intra-epoch checkpoint. The tests read what the stages leave on disk.
"""
import json
import pathlib
import re
import shlex
import time

import pytest
import torch

from recipe_data import (RECIPE, TINY_REDIMNET, demo_args, make_flat_speakers, make_speech_commands,
                         make_voxceleb, mrl_overrides, scratch_overrides)

import run_demo  # noqa: E402  (recipe folder on sys.path via recipe_data)
import train  # noqa: E402

from speechbrain_mrl.training import brain as training

N_CLASSES = 8  # 6 train speakers (2 held out for validation) + 2 LibriSpeech readers


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The whole demo (run_demo.py) once on tiny data: scratch, frozen MRL, timing, scoring."""
    tmp = tmp_path_factory.mktemp("recipe")
    data = make_speech_commands(tmp / "data")
    out = tmp / "out"
    summary = run_demo.main(demo_args(data, out, N_CLASSES))
    return dict(data=data, out=out, backbone=out / "scratch" / "backbone.pt", summary=summary)


def _results(folder):
    res = json.loads((folder / "results.json").read_text())
    return {k: ({int(d): m for d, m in v.items()} if isinstance(v, dict) else v)
            for k, v in res.items()}


def _last_checkpoint(folder):
    return sorted((folder / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)[-1]


def _load(path):
    return torch.load(path, weights_only=True)


def test_scratch_stage(demo_run):
    res = _results(demo_run["out"] / "scratch")
    assert demo_run["backbone"].is_file()
    assert set(res["test"]) == {16} and 0 <= res["test"][16]["EER"] <= 100
    assert len(res["epoch_times_s"]) == 1 and not res["frozen_backbone"]
    ckpt = _last_checkpoint(demo_run["out"] / "scratch")
    trained = _load(ckpt / "embedding_model.ckpt")
    # every backbone parameter trained, in the optimiser's second group (lr factor 1)
    groups = _load(ckpt / "optimizer.ckpt")["param_groups"]
    from speechbrain_mrl.model.official import load_official_redimnet

    loaded = load_official_redimnet(str(demo_run["backbone"]))
    n_params = len(list(loaded.embedding_model.parameters()))
    assert len(groups) == 2 and len(groups[1]["params"]) == n_params and groups[1]["lr_factor"] == 1.0
    # the exported backbone is a loadable official-format checkpoint with the trained weights
    assert all(torch.equal(v, trained[k]) for k, v in loaded.embedding_model.state_dict().items())


def test_frozen_backbone_untouched(demo_run):
    """Parameters AND BatchNorm buffers bit-identical after optimiser steps through Brain.fit."""
    from speechbrain_mrl.model.official import load_official_redimnet

    out = demo_run["out"]
    ckpt = _last_checkpoint(out / "mrl")
    assert (ckpt / "brain.ckpt").read_text().count("optimizer_step: 0") == 0
    ref = load_official_redimnet(str(demo_run["backbone"])).embedding_model.state_dict()
    now = _load(ckpt / "embedding_model.ckpt")
    bn_buffers = [k for k in ref if "running_" in k or "num_batches_tracked" in k]
    assert bn_buffers
    for k, v in ref.items():
        assert torch.equal(v, now[k]), k
    # the backbone is not in the optimiser: one group, the head's and the classifiers' parameters
    groups = _load(ckpt / "optimizer.ckpt")["param_groups"]
    head, loss = _load(ckpt / "mrl_head.ckpt"), _load(ckpt / "loss.ckpt")
    n_trainable = len([k for k in head if "running" not in k and "num_batches" not in k]) + len(loss)
    assert len(groups) == 1 and len(groups[0]["params"]) == n_trainable
    # ... while the head did train (differs from its initialisation)
    init = _load(out / "mrl" / "initial_head.ckpt")
    assert not torch.equal(init["linear.weight"], head["linear.weight"])
    # the head's input BatchNorm (copied from the backbone) kept its running statistics
    for k in ("norm.running_mean", "norm.running_var"):
        assert torch.equal(init[k], head[k]), k


def test_mrl_stage_outputs_and_scoring(demo_run):
    out = demo_run["out"]
    res = _results(out / "mrl")
    assert set(res["test"]) == set(res["test_pca"]) == set(res["test_init"]) == {4, 8, 16}
    # the PCA head and the (discriminant) initial head keep the backbone's cosine scores
    # at full size: both are rotations of the backbone embedding
    for split in ("test_pca", "test_init"):
        assert res[split][16]["EER"] == pytest.approx(res["test_backbone"][16]["EER"], abs=1e-3)
    from speechbrain_mrl.model.matryoshka import MatryoshkaProjection

    heads = {}
    for name in ("pca_head", "initial_head"):
        state = _load(out / "mrl" / f"{name}.ckpt")
        heads[name] = MatryoshkaProjection(state["norm.weight"].numel(), 16, [4, 8, 16])
        heads[name].load_state_dict(state)
    stats = torch.randn(5, heads["pca_head"].input_size)
    with torch.no_grad():
        pca_out, init_out = (heads[n].eval()(stats) for n in ("pca_head", "initial_head"))
    assert torch.allclose(pca_out.norm(dim=1), init_out.norm(dim=1), rtol=1e-4)
    assert not torch.allclose(pca_out, init_out, atol=1e-3)
    log = (out / "mrl" / "train_log.txt").read_text()
    assert "epoch: 0" in log and "epoch: 1" in log  # validated before the first epoch too
    model = out / "mrl" / "model"
    # what the model card will state: the recorded data and command, no absolute paths
    info_text = (model / "model_info.json").read_text()
    extra = json.loads(info_text)["extra_info"]
    assert extra["datasets"] == ["speech_commands", "librispeech"]
    assert extra["command"].startswith("python train.py hparams/demo_mrl.yaml ")
    assert "--pretrained_backbone backbone.pt" in extra["command"]
    assert str(demo_run["data"]) not in info_text and str(out) not in info_text
    calib = json.loads((model / "calibration.json").read_text())
    assert set(calib["thresholds"]) == {"4", "8", "16"}
    for d, thr in calib["thresholds"].items():
        assert thr == pytest.approx(res["valid"][int(d)]["threshold"])
    # the demo scored the test trials with the scoring script, every size at once
    summary = demo_run["summary"]
    table = {k: {int(d): v for d, v in t.items()} for k, t in summary["table"].items()}
    assert set(table["matryoshka"]) == set(table["pca"]) == set(table["initial_head"]) == {4, 8, 16}
    assert set(table["backbone"]) == {16}
    for d in (4, 8, 16):
        assert table["matryoshka"][d]["EER"] == pytest.approx(res["test"][d]["EER"], abs=0.5)
        assert table["pca"][d]["EER"] == pytest.approx(res["test_pca"][d]["EER"], abs=0.5)
        assert table["initial_head"][d]["EER"] == pytest.approx(res["test_init"][d]["EER"], abs=0.5)
    assert table["pca"][16]["EER"] == pytest.approx(table["backbone"][16]["EER"], abs=0.5)
    # and the held-out readers' long-utterance validation list, for every model
    long_table = {k: {int(d): v for d, v in t.items()} for k, t in summary["long_valid_table"].items()}
    assert set(long_table) == set(table) and set(long_table["matryoshka"]) == {4, 8, 16}
    assert long_table["pca"][16]["EER"] == pytest.approx(long_table["backbone"][16]["EER"], abs=0.5)
    assert "Long read speech validation list" in (out / "results.md").read_text()
    for name in ("summary.json", "results.md", "eer_vs_size.png"):
        assert (out / name).stat().st_size > 0
    # the pictures of both trainings and of the prepared data, shown in results.md
    text = (out / "results.md").read_text()
    for rel in ("scratch/training_curves.png", "mrl/training_curves.png", "data/prepared_data.png",
                "eer_vs_size.png"):
        assert (out / rel).read_bytes()[:4] == b"\x89PNG" and f"]({rel})" in text, rel
    history = json.loads((out / "mrl" / "train_history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert set(history[1]["valid_EER"]) == {"valid", "valid_long"}
    assert set(history[1]["train_loss_per_size"]) == {"4", "8", "16"}
    saved = json.loads((out / "summary.json").read_text())
    assert {"frozen_epoch_s", "finetune_epoch_s", "speedup_frozen_vs_finetune"} <= set(saved["times"])
    # the search stage: every test speaker enrolled, each funnel evaluated, the cascade table
    ident, cascade = saved["search"]["identification"], saved["search"]["cascade"]
    test_speakers = {r.split(",")[-1] for r in (out / "data" / "test.csv").read_text().split()[1:]}
    assert ident["speakers"] == len(test_speakers)
    assert set(ident["funnels"]) == {"exact full size", "4->full", "8->full"}
    assert cascade["small_dim"] == 8 and [r["target_agreement"] for r in cascade["rows"]] == [1.0, 0.999]
    assert "Cascade verification" in (out / "results.md").read_text()
    # the timing run: one epoch with the backbone unfrozen from epoch 1
    assert len(_results(out / "finetune_timing")["epoch_times_s"]) == 1
    tuned = _load(_last_checkpoint(out / "finetune_timing") / "embedding_model.ckpt")
    frozen = _load(_last_checkpoint(out / "mrl") / "embedding_model.ckpt")
    assert any(not torch.equal(v, frozen[k]) for k, v in tuned.items() if v.is_floating_point())


def test_demo_restarts_from_the_stages_on_disk(demo_run, capsys):
    """A second run skips every finished stage and reports the same table."""
    out = demo_run["out"]
    args = demo_args(demo_run["data"], out, N_CLASSES)
    before = {p: p.stat().st_mtime for p in (out / "mrl" / "results.json",
                                               out / "scoring" / "pca" / "results.json")}
    summary = run_demo.main(args)
    assert summary["table"] == demo_run["summary"]["table"]
    assert all(p.stat().st_mtime == t for p, t in before.items())
    # trainings, 4 models x 2 lists, the search stage's enrol, evaluate and cascade
    assert capsys.readouterr().out.count("stage skipped") == 3 + 2 * 4 + 3


def test_resume_mid_epoch(tmp_path, monkeypatch):
    """Interrupted after an intra-epoch checkpoint, a rerun continues from the saved step."""
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    argv = scratch_overrides(data, out, N_CLASSES, epochs=2, extra=["--ckpt_interval_steps", "2"])
    orig = training.MRLBrain.fit_batch
    seen = []

    def interrupted(self, batch):
        if self.hparams.epoch_counter.current == 1 and self.step == 3:
            raise KeyboardInterrupt("simulated crash")
        seen.append((self.hparams.epoch_counter.current, self.step))
        return orig(self, batch)

    monkeypatch.setattr(training.MRLBrain, "fit_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    assert seen == [(1, 1), (1, 2)]
    ckpts = list((out / "scratch" / "save").glob("CKPT*"))
    assert len(ckpts) == 1 and "intra" in (ckpts[0] / "CKPT.yaml").read_text().lower()

    seen.clear()
    monkeypatch.setattr(training.MRLBrain, "fit_batch", lambda self, b: (
        seen.append((self.hparams.epoch_counter.current, self.step)), orig(self, b))[1])
    train.main(argv)
    n_batches = (len((out / "data" / "train.csv").read_text().splitlines()) - 1) // 8
    # resumed at step 3 of epoch 1 (no batch repeated), then a full epoch 2
    assert seen[0] == (1, 3)
    epoch1 = [s for e, s in seen if e == 1]
    epoch2 = [s for e, s in seen if e == 2]
    assert epoch1 == list(range(3, 3 + len(epoch1))) and epoch2[0] == 1
    assert len(epoch1) + 2 == n_batches == len(epoch2)


def test_non_finite_model_is_never_checkpointed(tmp_path, monkeypatch):
    """Regression: a poisoned model (NaN in CKPT+epoch1's tensors) was saved as a checkpoint.

    A NaN BatchNorm statistic leaves the training loss finite (batch statistics
    are used in training), so only the check before saving can catch it.
    """
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    orig = training.MRLBrain.fit_batch

    def poisoned(self, batch):
        loss = orig(self, batch)
        if self.hparams.epoch_counter.current == 2:
            self.modules.encoder.embedding_model.bn.running_mean.fill_(float("nan"))
        return loss

    monkeypatch.setattr(training.MRLBrain, "fit_batch", poisoned)
    with pytest.raises(RuntimeError, match=r"NaN/Inf .*embedding_model\.bn\.running_mean"):
        train.main(scratch_overrides(data, out, N_CLASSES, epochs=2,
                                     extra=["--ckpt_num_to_keep", "2"]))
    assert [c.name for c in (out / "scratch" / "save").glob("CKPT+*")] == ["CKPT+epoch1"]


def test_final_checkpoint_last_exports_the_last_epoch(tmp_path):
    """final_checkpoint: last keeps the last epoch's weights, whatever the validation EER."""
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="final_checkpoint must be one of"):
        train.main(scratch_overrides(data, out, N_CLASSES, extra=["--final_checkpoint", "best"]))
    assert not (out / "data").exists()  # refused before any preparation
    import yaml

    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.official import save_official_checkpoint

    backbone = save_official_checkpoint(MRLEncoder.from_config(yaml.safe_load(TINY_REDIMNET)),
                                        tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="init_ordering must be one of"):
        train.main(mrl_overrides(data, out, N_CLASSES, backbone, extra=["--init_ordering", "lda"]))
    assert not (out / "data").exists()
    train.main(scratch_overrides(data, out, N_CLASSES, epochs=3,
                                 extra=["--final_checkpoint", "last", "--ckpt_num_to_keep", "3"]))
    ckpts = {c.name: c for c in (out / "scratch" / "save").glob("CKPT+epoch*")}
    assert set(ckpts) == {"CKPT+epoch1", "CKPT+epoch2", "CKPT+epoch3"}
    last = torch.load(ckpts["CKPT+epoch3"] / "embedding_model.ckpt", weights_only=True)
    from speechbrain_mrl.model.official import load_official_redimnet

    exported = load_official_redimnet(str(out / "scratch" / "backbone.pt")).embedding_model.state_dict()
    assert all(torch.equal(v, last[k]) for k, v in exported.items())
    earlier = torch.load(ckpts["CKPT+epoch1"] / "embedding_model.ckpt", weights_only=True)
    assert any(not torch.equal(v, earlier[k]) for k, v in exported.items() if v.is_floating_point())


@pytest.mark.parametrize("name", sorted(p.name for p in (RECIPE / "hparams").glob("*.yaml")))
def test_hparams_load_and_every_key_used(name, tmp_path):
    """Every yaml builds (no download: a local tiny backbone) and each key is used."""
    import re

    import yaml
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.core import RunOptions

    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.official import save_official_checkpoint

    text = (RECIPE / "hparams" / name).read_text()
    keys = [m.group(1) for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*):", text, re.M)]
    if name == "verification.yaml":  # the script passes every key on to score_trial_list
        import inspect

        from speechbrain_mrl.inference import scoring

        script = (RECIPE / "speaker_verification_cosine.py").read_text() + " ".join(
            inspect.signature(scoring.score_trial_list).parameters)
    else:
        script = (RECIPE / "train.py").read_text() + pathlib.Path(training.__file__).read_text()
    run_opts = set(RunOptions().as_dict())
    unused = [k for k in keys if not k.startswith("__") and k not in run_opts
              and not re.search(rf"\b{k}\b", script) and f"<{k}" not in text]
    assert not unused, f"{name}: keys not used by the script: {unused}"
    if name == "verification.yaml":
        return
    backbone = tmp_path / "bb.pt"
    save_official_checkpoint(MRLEncoder.from_config(yaml.safe_load(TINY_REDIMNET)), backbone)
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "o")}
    if "pretrained_backbone:" in text:
        overrides["pretrained_backbone"] = str(backbone)
    hp = load_hyperpyyaml(text, overrides)
    # one vocabulary: the encoder's parts under their own names, as in a model folder
    encoder = hp["modules"]["encoder"]
    assert set(hp["modules"]) == {"encoder", "loss"}
    assert encoder.compute_features is hp["compute_features"]
    assert encoder.embedding_model is hp["embedding_model"]
    assert encoder.mrl_head is hp.get("mrl_head")
    if "mrl_head" in hp:
        assert hp["modules"]["loss"].mrl_dims == encoder.mrl_dims
    else:  # no head: the loss scores prefixes of the backbone's own embedding
        assert hp["modules"]["loss"].mrl_dims[-1] == encoder.embed_dim
    recoverables = set(hp["checkpointer"].recoverables)
    assert recoverables == {"embedding_model", "loss", "counter"} | ({"mrl_head"} if "mrl_head" in hp else set())


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_extra_logger(kind, tmp_path, monkeypatch):
    """The optional second logger records the per-epoch validation EER (wandb offline)."""
    pytest.importorskip("tensorboard" if kind == "tensorboard" else "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    train.main(scratch_overrides(data, out, N_CLASSES, epochs=2,
                                 extra=["--extra_logger", kind, "--extra_logger_folder", str(logs)]))
    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(logs))
        acc.Reload()
        eer = acc.Scalars("EER/valid")  # SpeechBrain tags are <stat>/<set>
        assert [e.step for e in eer] == [1, 2]
        assert all(0 <= e.value <= 100 for e in eer)
    else:
        runs = list((logs / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1
        # wandb's service may still be writing the run file when finish() returns
        deadline = time.monotonic() + 30
        while True:
            rows = wandb_history(runs[0])
            if len(rows) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [r["epoch"] for r in rows] == [1, 2]
        assert all(0 <= r["valid/EER"] <= 100 and r["train/loss"] > 0 for r in rows)
    with pytest.raises(ValueError, match="extra_logger must be"):
        train.main(scratch_overrides(data, tmp_path / "o2", N_CLASSES,
                                     extra=["--extra_logger", "mlflow"]))


def wandb_history(path):
    """The history rows (``{"valid/EER": ..., "epoch": ...}``) of a wandb run file."""
    history = [r.history for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]
    return [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.item}
            for h in history]


def wandb_records(path):
    """Protobuf records of a wandb run file (LevelDB-log framing: 32 KiB blocks, 7-byte headers)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def test_broken_checkpoints_never_block_resume(tmp_path, monkeypatch, capfd):
    """Regression: a truncated or half-saved CKPT folder made every restart fail."""
    import errno

    from speechbrain.utils import checkpoints as sb_checkpoints

    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    argv = scratch_overrides(data, out, N_CLASSES, epochs=2, extra=["--ckpt_num_to_keep", "2"])
    train.main(argv)
    save = out / "scratch" / "save"
    newest = save / "CKPT+epoch2"
    (newest / "embedding_model.ckpt").write_bytes(b"PK\x03\x04 truncated")  # as after a full disk
    # a save that runs out of space leaves no checkpoint behind and names the folder
    real_save = sb_checkpoints.torch_save

    def disk_full(obj, path):
        if path.name == "loss.ckpt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path)

    monkeypatch.setitem(sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, disk_full)
    three_epochs = [a if a != "2" or argv[i - 1] != "--number_of_epochs" else "3"
                    for i, a in enumerate(argv)]
    with pytest.raises(OSError, match=rf"saving a checkpoint into {save}.*No space left"):
        train.main(three_epochs)
    assert sorted(p.name for p in save.iterdir() if p.name.startswith("CKPT")) == ["CKPT+epoch1", "CKPT+epoch2"]
    monkeypatch.undo()
    capfd.readouterr()
    res = train.main(three_epochs)
    logged = capfd.readouterr()
    assert "skipping checkpoint" in logged.err + logged.out and "CKPT+epoch2" in logged.err + logged.out
    # resumed after epoch 1: epochs 2 and 3 trained; epoch 1's time kept from its checkpoint
    assert len(res["epoch_times_s"]) == 3
    assert not list(save.glob(".partial-*"))


def test_test_trials_with_missing_files_are_an_error(tmp_path):
    """Regression: train.py reported a test EER on the subset of trials whose files existed."""
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    trials = tmp_path / "trials.txt"
    good = (data / "speech_commands" / "splits" / "trials_test.txt").read_text().splitlines()
    trials.write_text("\n".join(good[:6] + ["1 00000009/gone.flac 00000009/word_0.flac",
                                            "0 00000010/gone.flac 00000009/word_0.flac"]) + "\n")
    argv = scratch_overrides(data, out, N_CLASSES)
    with pytest.raises(ValueError, match=r"skipped_files.txt.*2 entries are in no manifest.*gone"):
        train.main(argv + ["--test_trials", str(trials)])


# ---------------------------------------------------------------- per-backbone files, own data
BACKBONES = {"b0": "b0-vox2-ptn", "b2": "b2-vox2-ptn", "b6": "b6-vox2-ptn", "M": "M-vox2-ptn"}
OWN_DATA = "/data/my_speakers"  # the README's placeholders
LOCAL_RELEASE = "/path/to/b2-vox2-ptn.pt"
# what makes a run tiny on CPU; nothing that changes what the commands do
TINY_RUN = ["--number_of_epochs", "1", "--batch_size", "8", "--num_workers", "0",
            "--crop_duration", "1.0", "--ckpt_interval_minutes", "0", "--device", "cpu",
            "--noprogressbar"]
TINY_HEAD_INIT = ["--init_crops_per_speaker", "2", "--init_augment_passes", "0",
                  "--init_window_durations", "[]"]


def _hparams_tree(path):
    """A hparams file as plain data, each tagged node as ``(tag, value)``: nothing is built."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return "!" + suffix, loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return "!" + suffix, loader.construct_sequence(node, deep=True)
        return "!" + suffix, loader.construct_scalar(node)

    Loader.add_multi_constructor("!", tagged)
    return yaml.load(path.read_text(), Loader)


def test_backbone_hparams_agree_key_by_key():
    """mrl_b0/b2/b6/M.yaml: the same file but for the backbone release and the output folder."""
    assert not (RECIPE / "hparams" / "train_mrl.yaml").exists()
    ref = _hparams_tree(RECIPE / "hparams" / "mrl_b2.yaml")
    ref_text = (RECIPE / "hparams" / "mrl_b2.yaml").read_text()
    for name, release in BACKBONES.items():
        path = RECIPE / "hparams" / f"mrl_{name}.yaml"
        tree = _hparams_tree(path)
        assert list(tree) == list(ref), name
        differ = [k for k in ref if tree[k] != ref[k]]
        assert differ == ([] if name == "b2" else ["pretrained_backbone", "output_folder"]), name
        assert tree["pretrained_backbone"] == release
        assert tree["output_folder"] == ("!ref", f"results/mrl_{name}/<seed>")
        assert tree["embed_dim"] == 256 and tree["mrl_dims"] == [64, 128, 192, 256]
        assert tree["n_classes"] is None and tree["datasets"] == []
        # the comments too, the backbone's name aside
        text = path.read_text()
        for old, new in ((release, "b2-vox2-ptn"), (f"ReDimNet-{name} ", "ReDimNet-b2 "),
                         (f"mrl_{name}", "mrl_b2")):
            text = text.replace(old, new)
        assert text == ref_text, name


def readme_commands(section):
    """The ``python train.py ...`` commands of the recipe README's section, as argument lists."""
    text = (RECIPE / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [c[2:] for c in commands if c[:2] == ["python", "train.py"]]


def _argv(command, replace, extra):
    """A README command for ``train.main``: the hparams file in the recipe, placeholders replaced."""
    argv = [replace.get(a, a) for a in command] + list(extra)
    return [str(RECIPE / argv[0])] + argv[1:]


def test_own_data_on_a_local_official_backbone(tmp_path, monkeypatch, no_network):
    """The README's own-data command A as written: 12 speakers, flat <spk>/<utt>.flac, offline.

    Regression: the per-backbone files were gone, 12 speakers gave an empty dev
    split, n_classes had to be given by hand and the model card said
    'Trained on voxceleb' whatever the data.
    """
    from redimnet_fill import write_official_checkpoint

    command = readme_commands("Train on your own data")[0]
    assert command[:1] == ["hparams/mrl_b2.yaml"] and "--n_classes" not in command
    data = make_flat_speakers(tmp_path / "my_speakers", n_speakers=12, utts=3)
    release = write_official_checkpoint("b2", tmp_path / "b2-vox2-ptn.pt")
    monkeypatch.chdir(tmp_path)  # the default output folder is relative
    res = train.main(_argv(command, {OWN_DATA: str(data), LOCAL_RELEASE: str(release)},
                           TINY_RUN + TINY_HEAD_INIT))
    out = tmp_path / "results" / "mrl_b2" / "1986"
    assert json.loads((out / "results.json").read_text())["n_classes"] == res["n_classes"] == 10
    assert set(res["valid"]) == {64, 128, 192, 256}
    assert all(0 <= m["EER"] <= 100 for m in res["valid"].values())
    info = json.loads((out / "model" / "model_info.json").read_text())
    extra = info["extra_info"]
    assert extra["backbone"] == {"file": "b2-vox2-ptn.pt"} and extra["frozen_backbone"]
    assert extra["training_data"] == {
        "preparation": "speechbrain_mrl.data.voxceleb.prepare_voxceleb",
        "data_folder": "my_speakers",
        "train": {"speakers": 10, "utterances": 30}, "valid": {"speakers": 2, "utterances": 6}}
    assert extra["datasets"] == [] and extra["n_train_speakers"] == 10
    assert extra["command"].startswith("python train.py hparams/mrl_b2.yaml --data_folder my_speakers "
                                       "--pretrained_backbone b2-vox2-ptn.pt ")
    assert str(tmp_path) not in json.dumps(info)
    # the model card states that backbone and data, and names no dataset
    from speechbrain_mrl.hub import package as hub

    card = hub.model_card(info, json.loads((out / "model" / "calibration.json").read_text()),
                          {"64": {"EER": 1.0}}, {}, None)
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "datasets:" not in front and "Trained on" not in body and "voxceleb" not in body.lower(
        ).replace("recipes/voxceleb", "").replace("prepare_voxceleb", "")
    assert "- Backbone: the official-format ReDimNet checkpoint `b2-vox2-ptn.pt`, frozen" in body
    assert ("- Training data: 10 speakers, 30 utterances (validation: 2 speakers, 6 utterances), "
            "prepared by `prepare_voxceleb` from `my_speakers`") in body


def test_own_data_from_scratch_then_head(tmp_path, monkeypatch, no_network):
    """The README's own-data commands B as written (VoxCeleb layout): scratch, then the head."""
    scratch, head = readme_commands("Train on your own data")[1:]
    assert scratch[0] == "hparams/scratch_redimnet.yaml" and head[0] == "hparams/mrl_b2.yaml"
    data = tmp_path / "my_speakers"
    make_voxceleb(data, speakers=[f"id1000{i}" for i in range(4)], videos=2, utts=2)
    monkeypatch.chdir(tmp_path)
    res = train.main(_argv(scratch, {OWN_DATA: str(data)}, TINY_RUN))
    # 4 speakers: 2 held out for validation, 2 to train on (one batch of 8 files)
    assert res["n_classes"] == 2 and set(res["valid"]) == {192}  # the backbone's own embedding
    assert (tmp_path / "results" / "scratch_redimnet" / "1986" / "backbone.pt").is_file()
    # a hand-given n_classes that disagrees with the prepared data stops the run before training
    with pytest.raises(ValueError, match=r"n_classes=7 but .*train.csv has 2 training speakers: "
                                         r"pass --n_classes=2, or leave n_classes null"):
        train.main(_argv(head, {OWN_DATA: str(data)}, TINY_RUN + ["--n_classes", "7"]))
    assert not list((tmp_path / "results" / "mrl_b2_scratch" / "1986" / "save").glob("CKPT*"))
    res = train.main(_argv(head, {OWN_DATA: str(data)}, TINY_RUN + TINY_HEAD_INIT))
    assert res["n_classes"] == 2 and set(res["valid"]) == {64, 128, 192, 256}
    extra = json.loads((tmp_path / "results" / "mrl_b2_scratch" / "1986" / "model" /
                        "model_info.json").read_text())["extra_info"]
    assert extra["backbone"] == {"file": "backbone.pt"}
    assert extra["training_data"]["train"] == {"speakers": 2, "utterances": 8}


def test_remove_vector_weight_decay_splits_every_group(tmp_path):
    """SpeechBrain's --remove_vector_weight_decay holds for the head's and the backbone's group."""
    import yaml

    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.official import save_official_checkpoint

    data = make_speech_commands(tmp_path / "data")
    backbone = save_official_checkpoint(MRLEncoder.from_config(yaml.safe_load(TINY_REDIMNET)),
                                        tmp_path / "tiny.pt")
    out = tmp_path / "out"
    train.main(mrl_overrides(data, out, N_CLASSES, backbone, extra=[
        "--remove_vector_weight_decay", "--unfreeze_epoch", "1", "--weight_decay", "0.01"]))
    ckpt = _last_checkpoint(out / "mrl")
    groups = _load(ckpt / "optimizer.ckpt")["param_groups"]

    def vectors_and_matrices(name):
        params = [v for k, v in _load(ckpt / f"{name}.ckpt").items()
                  if "running_" not in k and "num_batches" not in k]
        vectors = sum(v.dim() == 1 for v in params)
        return vectors, len(params) - vectors

    (head_v, head_m), (loss_v, loss_m), (lobe_v, lobe_m) = map(
        vectors_and_matrices, ("mrl_head", "loss", "embedding_model"))
    assert [(g["weight_decay"], g.get("lr_factor")) for g in groups] == [
        (0.0, None), (0.01, None), (0.0, 0.1), (0.01, 0.1)]
    assert [len(g["params"]) for g in groups] == [head_v + loss_v, head_m + loss_m, lobe_v, lobe_m]
    assert head_v and lobe_v and loss_m
