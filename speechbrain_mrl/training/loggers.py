"""An optional second training logger (wandb or TensorBoard) beside SpeechBrain's file logger.

Authors
-------
 * speechbrain-mrl developers
"""
import os

__all__ = ["MultiLogger", "extra_logger"]


class MultiLogger:
    """Forwards ``log_stats`` to several SpeechBrain train loggers.

    Arguments
    ---------
    *loggers
        ``speechbrain.utils.train_logger`` loggers (None entries are dropped).
    """

    def __init__(self, *loggers):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log_stats(self, *args, **kwargs):
        """Logs to every logger."""
        for lg in self.loggers:
            lg.log_stats(*args, **kwargs)

    def close(self):
        """Flushes and closes the loggers that hold a run or a file (wandb, TensorBoard)."""
        for lg in self.loggers:
            if getattr(lg, "run", None) is not None:
                lg.run.finish()
            if getattr(lg, "writer", None) is not None:
                lg.writer.close()


def extra_logger(kind, folder, run_name="speechbrain-mrl"):
    """A wandb (offline unless ``WANDB_MODE=online``) or TensorBoard logger writing in ``folder``.

    Arguments
    ---------
    kind : str or None
        ``wandb``, ``tensorboard`` or None (no logger).
    folder : str or os.PathLike
        Where the logger writes.
    run_name : str
        wandb run name.

    Returns
    -------
    speechbrain.utils.train_logger.TrainLogger or None
    """
    if not kind:
        return None
    if kind not in ("wandb", "tensorboard"):
        raise ValueError(f"extra_logger must be wandb, tensorboard or null, got {kind!r}")
    os.makedirs(folder, exist_ok=True)
    from speechbrain.utils import train_logger

    if kind == "tensorboard":
        return train_logger.TensorboardLogger(save_dir=folder)
    import wandb

    return train_logger.WandBLogger(initializer=wandb.init, project="speechbrain-mrl", dir=folder,
                                    mode=os.environ.get("WANDB_MODE", "offline"), name=run_name)
