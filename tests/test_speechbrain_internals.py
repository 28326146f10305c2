"""The parts of SpeechBrain 1.1.2 beyond its public hooks that the project relies on.

``speechbrain_mrl.training.brain.MRLBrain`` (every recipe's Brain) overrides
``Brain._wrap_distributed`` (SpeechBrain turns every BatchNorm into
SyncBatchNorm, which DDP refuses on CPU, with no option to skip it), and
``speechbrain_mrl.utils.checkpoints.SafeCheckpointer``
overrides ``Checkpointer``'s private folder methods and fills SpeechBrain's
hook tables. A SpeechBrain release that renames, re-signs or stops calling any
of them fails here, naming it, instead of silently losing the behaviour (DDP
on CPU, atomic checkpoints, weights-only loads).
"""
import inspect

import pytest
import torch
from speechbrain.core import Brain
from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_mrl.utils.checkpoints import SafeCheckpointer
from speechbrain_mrl.training.brain import MRLBrain

#: private methods overridden, and the signature they have in SpeechBrain 1.1.2
PRIVATE_OVERRIDES = {
    (Brain, "_wrap_distributed"): "(self)",
    (sb_checkpoints.Checkpointer, "_new_checkpoint_dirpath"): "(self)",
    (sb_checkpoints.Checkpointer, "_custom_checkpoint_dirpath"): "(self, name)",
}
#: module-level helpers of speechbrain.utils.checkpoints called by SafeCheckpointer
CHECKPOINT_HELPERS = {
    "get_default_hook": "(obj, default_hooks)",
    "torch_recovery": "(obj, path, end_of_epoch)",
    "hook_on_loading_state_dict_checkpoint": "(state_dict: Dict[str, torch.Tensor]) "
                                             "-> Dict[str, torch.Tensor]",
}


def _signature(cls, name):
    assert hasattr(cls, name), f"SpeechBrain's {cls.__name__}.{name} is gone"
    return str(inspect.signature(getattr(cls, name)))


@pytest.mark.parametrize("cls, name", sorted(PRIVATE_OVERRIDES, key=str),
                         ids=lambda x: getattr(x, "__name__", x))
def test_private_methods_keep_their_signature(cls, name):
    assert _signature(cls, name) == PRIVATE_OVERRIDES[cls, name], (
        f"{cls.__name__}.{name} changed signature: the override in the project must follow")


@pytest.mark.parametrize("sub, base", [(MRLBrain, Brain),
                                       (SafeCheckpointer, sb_checkpoints.Checkpointer)],
                         ids=["MRLBrain", "SafeCheckpointer"])
def test_overrides_are_known_and_match_the_base(sub, base):
    """Each method overridden has the base's signature; the private ones are listed above."""
    for name, attr in vars(sub).items():
        if not callable(attr) or name == "__init__" or not hasattr(base, name):
            continue
        if name.startswith("_") and not name.startswith("__"):
            assert (base, name) in PRIVATE_OVERRIDES, f"{sub.__name__} overrides private {name}: list it"
        assert str(inspect.signature(attr)) == _signature(base, name), f"{sub.__name__}.{name}"
    private = [n for n in vars(sub) if n.startswith("_") and not n.startswith("__")
               and hasattr(base, n)]
    assert private, f"{sub.__name__} overrides no private method any more: update this test"


def test_checkpoint_helpers_and_tables(tmp_path):
    for name, signature in CHECKPOINT_HELPERS.items():
        assert _signature(sb_checkpoints, name) == signature, f"speechbrain checkpoints.{name}"
    for table in ("DEFAULT_LOAD_HOOKS", "DEFAULT_TRANSFER_HOOKS", "DEFAULT_SAVE_HOOKS"):
        assert isinstance(getattr(sb_checkpoints, table, None), dict), table
    assert sb_checkpoints.Checkpoint._fields == ("path", "meta", "paramfiles")
    # SafeCheckpointer passes everything after ``recoverables`` through, positionally
    params = list(inspect.signature(sb_checkpoints.Checkpointer.__init__).parameters)
    assert params[:3] == ["self", "checkpoints_dir", "recoverables"]
    ckpt = SafeCheckpointer(tmp_path, {"m": torch.nn.Linear(1, 1)})
    assert {"custom_load_hooks", "recoverables", "checkpoints_dir"} <= set(vars(ckpt))


def test_checkpointer_still_calls_the_folder_methods(tmp_path, monkeypatch):
    """Both kinds of save go through the overridden folder methods (the staged folders)."""
    staged = []
    real = SafeCheckpointer._staged
    monkeypatch.setattr(SafeCheckpointer, "_staged",
                        staticmethod(lambda final: staged.append(final.name) or real(final)))
    ckpt = SafeCheckpointer(tmp_path, {"m": torch.nn.Linear(1, 1)})
    ckpt.save_checkpoint(name="named")
    unnamed = ckpt.save_checkpoint()
    assert staged == ["CKPT+named", unnamed.path.name]
    assert not list(tmp_path.glob(".partial-*"))


def test_brain_still_calls_wrap_distributed_and_reads_its_attributes(tmp_path):
    """Brain.fit reaches ``_wrap_distributed``; the attributes MRLBrain reads still exist."""
    calls = []

    class Probe(Brain):
        def compute_forward(self, batch, stage):
            return self.modules.lin(batch[0])

        def compute_objectives(self, predictions, batch, stage):
            return predictions.pow(2).mean()

        def _wrap_distributed(self):
            calls.append("wrap")
            return super()._wrap_distributed()

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)
    brain = Probe(modules={"lin": torch.nn.Linear(2, 1)},
                  opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
                  run_opts={"device": "cpu", "noprogressbar": True})
    brain.fit(EpochCounter(1), data)
    assert calls == ["wrap"] and brain.optimizer_step == 2
    for attr in ("distributed_launch", "device_type", "find_unused_parameters",
                 "remove_vector_weight_decay", "optimizers_dict"):
        assert hasattr(brain, attr), f"Brain.{attr} is gone (read by MRLBrain)"
