"""SafeCheckpointer: weights-only loads, no poisoned checkpoints, atomic folders."""
import pytest
import torch

from mrl_testutils import PicklePayload
from speechbrain_mrl.utils.checkpoints import SafeCheckpointer


def test_training_checkpoint_with_a_pickle_payload_is_refused(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model, "optimizer": optimizer})
    saved = ckpt.save_checkpoint()
    marker = tmp_path / "payload_ran"
    torch.save({"state": PicklePayload(marker), "param_groups": []}, saved.path / "optimizer.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(RuntimeError, match="no checkpoint .* can be loaded"):
        ckpt.recover_if_possible()
    assert not marker.exists()


def test_no_checkpoint_of_a_model_with_nan(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model})
    ckpt.save_checkpoint(name="good")
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"NaN/Inf .*model\.weight"):
        ckpt.save_checkpoint(end_of_epoch=False)  # intra-epoch saves are checked too
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == ["CKPT+good"]


def test_a_checkpoint_of_the_same_name_is_replaced_whole(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model})
    ckpt.save_checkpoint(name="epoch1")
    with torch.no_grad():
        model.weight.fill_(3.0)
    saved = ckpt.save_checkpoint(name="epoch1")
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == ["CKPT+epoch1"]
    assert torch.equal(torch.load(saved.paramfiles["model"], weights_only=True)["weight"],
                       torch.full((2, 2), 3.0))


@pytest.mark.parametrize("damage", ["{unclosed: [", "just a string", b"\xff\xfe not utf-8"])
def test_a_resume_skips_a_checkpoint_whose_ckpt_yaml_is_damaged(tmp_path, caplog, damage):
    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model})
    ckpt.save_checkpoint(name="epoch1", meta={"epoch": 1})
    with torch.no_grad():
        model.weight.fill_(3.0)
    newer = ckpt.save_checkpoint(name="epoch2", meta={"epoch": 2})
    meta_file = newer.path / "CKPT.yaml"
    meta_file.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
    with torch.no_grad():
        model.weight.fill_(0.0)
    with caplog.at_level("WARNING"):
        recovered = ckpt.recover_if_possible()
    assert recovered.meta["epoch"] == 1
    assert not torch.all(model.weight == 3.0) and not torch.all(model.weight == 0.0)
    assert str(meta_file) in caplog.text
    assert meta_file.read_bytes() == (damage if isinstance(damage, bytes) else damage.encode())


def test_a_resume_with_only_a_damaged_ckpt_yaml_refuses_to_start_afresh(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model})
    saved = ckpt.save_checkpoint(name="epoch1")
    (saved.path / "CKPT.yaml").write_text("{unclosed: [")
    with pytest.raises(RuntimeError, match=r"no checkpoint .* can be loaded .*CKPT\+epoch1"):
        SafeCheckpointer(tmp_path / "save", {"model": model}).recover_if_possible()
