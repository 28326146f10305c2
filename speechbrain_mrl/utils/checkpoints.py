"""Safe checkpoint files: weights-only loading, atomic saves, recovery past a broken checkpoint.

SpeechBrain 1.1.2 loads state dicts with ``torch.load`` and no ``weights_only``, whose safety
depends on torch's default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns
unpickling of arbitrary objects back on), writes a checkpoint's ``CKPT.yaml``
before its files (a killed save leaves a folder that looks complete), and
recovers only the newest checkpoint. This module gives:

* :func:`load_state_dict` (``weights_only=True`` always, errors naming the
  file), used by the package's modules as their SpeechBrain load and transfer
  hooks (:func:`register_safe_hooks`), so the ``Checkpointer`` and the
  ``Pretrainer`` of a model folder load them safely;
* :class:`SafeCheckpointer`, a ``Checkpointer`` that loads every recoverable
  with :func:`load_state_dict`, writes each checkpoint into a hidden folder
  renamed into place once complete, and recovers the newest readable
  checkpoint, logging each one it skips and why.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import pathlib
import shutil

import torch
import yaml
from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from speechbrain_mrl.utils.files import full_disk_named, swap_folder

__all__ = ["load_state_dict", "register_safe_hooks", "SafeCheckpointer"]

logger = logging.getLogger(__name__)

_STAGING = ".partial-"


def load_state_dict(path, device="cpu"):
    """A state dict read with ``weights_only=True`` (SpeechBrain's key patching applied).

    Raises
    ------
    ValueError
        Naming the file when it is unreadable, truncated or holds more than
        tensors and plain containers.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors have many types
        raise ValueError(f"cannot read checkpoint file {path}: {type(err).__name__}: {err}") from err
    return sb_checkpoints.hook_on_loading_state_dict_checkpoint(state)


def _device_of(obj):
    tensor = next(iter(obj.state_dict().values()), None) if hasattr(obj, "state_dict") else None
    return tensor.device if isinstance(tensor, torch.Tensor) else "cpu"


def _safe_recovery(obj, path, end_of_epoch=False):
    obj.load_state_dict(load_state_dict(path, _device_of(obj)))


def _safe_transfer(obj, path):
    incompatible = obj.load_state_dict(load_state_dict(path, _device_of(obj)), strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise ValueError(f"{path} does not fit {type(obj).__name__}: missing keys "
                         f"{incompatible.missing_keys}, unexpected keys {incompatible.unexpected_keys}")


def register_safe_hooks(cls):
    """Class decorator: SpeechBrain loads and transfers ``cls`` with :func:`load_state_dict`.

    A transfer (the ``Pretrainer`` of a model folder) must fit exactly: missing
    or unexpected keys are an error naming the file.
    """
    sb_checkpoints.DEFAULT_LOAD_HOOKS[cls] = _safe_recovery
    sb_checkpoints.DEFAULT_TRANSFER_HOOKS[cls] = _safe_transfer
    return cls


class SafeCheckpointer(sb_checkpoints.Checkpointer):
    """SpeechBrain's ``Checkpointer`` with safe loads, atomic saves and fallback recovery.

    Arguments
    ---------
    *args, **kwargs
        As ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpt = SafeCheckpointer(tempfile.mkdtemp(), {"model": model})
    >>> saved = ckpt.save_checkpoint()
    >>> saved.path.name.startswith("CKPT+"), (saved.path / "model.ckpt").is_file()
    (True, True)
    >>> ckpt.recover_if_possible().path == saved.path
    True
    """

    def __init__(self, checkpoints_dir, recoverables=None, *args, **kwargs):
        super().__init__(checkpoints_dir, None, *args, **kwargs)
        self.unreadable = []  # checkpoint folders whose CKPT.yaml the last listing could not read
        if recoverables is not None:
            self.add_recoverables(recoverables)

    def add_recoverable(self, name, obj, custom_load_hook=None, custom_save_hook=None,
                        optional_load=False):
        """As ``Checkpointer.add_recoverable``; what SpeechBrain would ``torch.load`` loads weights-only."""
        default = sb_checkpoints.get_default_hook(obj, sb_checkpoints.DEFAULT_LOAD_HOOKS)
        if (custom_load_hook is None and name not in self.custom_load_hooks
                and default is sb_checkpoints.torch_recovery):
            custom_load_hook = _safe_recovery
        super().add_recoverable(name, obj, custom_load_hook=custom_load_hook,
                                custom_save_hook=custom_save_hook, optional_load=optional_load)

    def add_recoverables(self, recoverables):
        """As ``Checkpointer.add_recoverables``, each one through :meth:`add_recoverable`."""
        items = recoverables.items() if hasattr(recoverables, "items") else recoverables
        for name, obj in items:
            self.add_recoverable(name, obj)

    def _new_checkpoint_dirpath(self):
        return self._staged(super()._new_checkpoint_dirpath())

    def _custom_checkpoint_dirpath(self, name):
        return self._staged(super()._custom_checkpoint_dirpath(name))

    @staticmethod
    def _staged(final):
        """A hidden folder beside ``final``: not a checkpoint until renamed to it."""
        return final.parent / f"{_STAGING}{final.name}"

    def check_finite(self):
        """Raises ``RuntimeError`` naming the recoverables' tensors that hold NaN/Inf."""
        bad = [f"{name}.{key}" for name, obj in self.recoverables.items()
               if isinstance(obj, torch.nn.Module)
               for key, t in obj.state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise RuntimeError(f"{len(bad)} model tensors hold NaN/Inf (e.g. {bad[:4]}); no "
                               f"checkpoint saved, the last good one is in {self.checkpoints_dir}")

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006 (SpeechBrain's signature)
        """As ``Checkpointer.save_checkpoint``, but never a model with NaN/Inf tensors, and the
        checkpoint appears only once complete."""
        self.check_finite()
        if if_main_process():
            for stale in self.checkpoints_dir.glob(f"{_STAGING}*"):  # from a killed save
                shutil.rmtree(stale, ignore_errors=True)
        try:
            with full_disk_named(self.checkpoints_dir):
                saved = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        except OSError as err:
            if if_main_process():
                for staged in self.checkpoints_dir.glob(f"{_STAGING}*"):
                    shutil.rmtree(staged, ignore_errors=True)
            raise OSError(err.errno, f"saving a checkpoint into {self.checkpoints_dir} failed "
                          f"({err}); the previous checkpoints are untouched") from err
        ddp_barrier()  # every process has written its part before the folder moves
        if saved is None:  # other processes: SpeechBrain saves on the main one
            ddp_barrier()
            return None
        staged = pathlib.Path(saved.path)
        final = staged.parent / staged.name[len(_STAGING):]
        swap_folder(staged, final, staged.parent / f"{_STAGING}old-{final.name}")
        ddp_barrier()
        paramfiles = {k: final / pathlib.Path(p).name for k, p in saved.paramfiles.items()}
        return sb_checkpoints.Checkpoint(final, saved.meta, paramfiles)

    def list_checkpoints(self):
        """As ``Checkpointer.list_checkpoints``, less (and logging) those whose ``CKPT.yaml`` is damaged."""
        self.unreadable = []
        checkpoints = []
        for ckpt_dir in self._list_checkpoint_dirs():
            meta_file = ckpt_dir / sb_checkpoints.METAFNAME
            try:
                meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError(f"a mapping was expected, not {type(meta).__name__}")
            except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                logger.warning("skipping checkpoint %s: %s cannot be read (%s)", ckpt_dir, meta_file, reason)
                self.unreadable.append(str(ckpt_dir))
                continue
            paramfiles = {f.stem: f for f in ckpt_dir.iterdir() if f.suffix == sb_checkpoints.PARAMFILE_EXT}
            checkpoints.append(sb_checkpoints.Checkpoint(ckpt_dir, meta, paramfiles))
        return checkpoints

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None,
                            ckpt_predicate=None):
        """Loads the best checkpoint that can be read, skipping (and logging) broken ones."""
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate,
                                           max_num_checkpoints=None)
        failed = list(self.unreadable)
        for ckpt in candidates:
            try:
                self.load_checkpoint(ckpt)
            except (ValueError, RuntimeError, OSError, KeyError) as err:
                logger.warning("skipping checkpoint %s, which cannot be loaded: %s", ckpt.path, err)
                failed.append(str(ckpt.path))
                continue
            return ckpt
        if failed:  # objects may hold part of a broken checkpoint: do not go on as if fresh
            raise RuntimeError(f"no checkpoint in {self.checkpoints_dir} can be loaded "
                               f"({failed}); remove or repair them to start again")
        logger.info("Would load a checkpoint here, but none found yet.")
        return None
