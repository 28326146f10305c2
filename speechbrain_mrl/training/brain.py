"""Training of Matryoshka speaker embeddings on a ReDimNet or ReDimNet2 backbone (SpeechBrain Brain).

The code every recipe's ``train.py`` shares: :class:`MRLBrain`, the data
pipelines (:func:`dataio_prep`), the option checks (:func:`check_options`),
the command line recorded in the model card (:func:`training_command`) and
the run itself (:func:`train_and_evaluate`). A recipe's script loads its
hparams as every SpeechBrain recipe does, runs its data preparation
(``prepare_data``) on the main process and calls :func:`train_and_evaluate`.

The hparams file builds an :class:`speechbrain_mrl.model.encoder.MRLEncoder`
(``compute_features`` + ``embedding_model`` + optional ``mrl_head``), the
per-size AAM ``loss``, the augmentation, the learning-rate schedule and the
data preparation. Two kinds of run:

* ``train_backbone: False`` (``mrl_b0.yaml``, ``mrl_b2.yaml``, ``mrl_b6.yaml``,
  ``mrl_M.yaml``, ``mrl_r2_b0.yaml``, ``mrl_r2_b2.yaml``, ``mrl_r2_b6.yaml``,
  ``demo_mrl.yaml``): a pretrained ReDimNet or ReDimNet2 is frozen (no
  gradient, not in the optimiser, kept in ``eval()``); the head starts from
  the backbone's embedding layer plus a rotation (``init_ordering``) and the
  classifiers from speaker centroids, so training starts from the backbone's
  accuracy, and the initial head is validated before the first epoch.
  ``unfreeze_epoch`` trains the backbone from that epoch on at
  ``lr * backbone_lr_factor``. A local ``pretrained_backbone`` file is built as
  the family its ``model_config`` describes
  (:func:`~speechbrain_mrl.model.official2.load_official_backbone`).
* ``train_backbone: True`` (``scratch_redimnet.yaml``, ``demo_scratch.yaml``):
  the whole network trains from scratch, with or without a Matryoshka head, and
  can be exported as an official-format checkpoint of its family
  (``export_backbone``) for a frozen stage.

``n_classes: null`` takes the number of speakers of the training manifest; a
number given is checked against it.

Validation computes the EER of every size on a trial list; the final model is
the checkpoint with the best mean EER (``final_checkpoint: best_valid``) or the
last epoch's (``last``). After each validation the epoch's numbers are added
to ``train_history.json`` next to the training log and drawn into
``training_curves.png`` (:mod:`speechbrain_mrl.training.plots`). The run ends by
writing ``<output_folder>/model/`` (with thresholds calibrated on the
validation trials; its ``model_info.json`` records the backbone and the
prepared data) and ``results.json``.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import logging
import math
import os
import random
import re
import shlex
import time

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.distributed import if_main_process

from speechbrain_mrl.training import plots as run_plots
from speechbrain_mrl.data.audio import crop_or_tile, read_audio
from speechbrain_mrl.utils.files import save_torch_atomic, write_text_atomic
from speechbrain_mrl.data.manifests import read_manifest, read_trials, resolve_trials
from speechbrain_mrl.training.head_init import ORDERINGS, evaluate_trials, init_head_from_backbone, window_rows
from speechbrain_mrl.training.loggers import MultiLogger, extra_logger
from speechbrain_mrl.utils.metrics import id_metrics
from speechbrain_mrl.model.official2 import save_official_backbone
from speechbrain_mrl.model.folder import shorten_paths, write_model_folder

logger = logging.getLogger(__name__)


def unwrap(module):
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


class MRLBrain(sb.core.Brain):
    """Frozen-backbone Matryoshka stage and from-scratch training on SpeechBrain's hooks.

    One private Brain method is overridden, :meth:`_wrap_distributed`;
    ``tests/test_speechbrain_internals.py`` fails when SpeechBrain changes it.
    Each validation adds a row to :attr:`history` (training loss per size,
    validation EER per list and size, learning rate), saved with its
    pictures next to the training log (:meth:`record_epoch`).
    """

    @property
    def backbone_frozen(self):
        """True while the backbone must not change (frozen stage, before unfreezing)."""
        unfreeze = self.hparams.unfreeze_epoch
        return not self.hparams.train_backbone and not (
            unfreeze and self.hparams.epoch_counter.current >= unfreeze)

    @property
    def use_stats_cache(self):
        """Reuse the frozen backbone's pooled statistics of a training item across epochs?

        Only when no training input changes between epochs (backbone frozen for
        the whole run, no augmentation, fixed crops) and in a single process
        (the head alone must then go through the DDP wrapper).
        """
        return (self.hparams.cache_frozen_outputs and not self.hparams.train_backbone
                and not self.hparams.unfreeze_epoch and not self.hparams.augment
                and not self.hparams.random_crop and not self.distributed_launch)

    def init_optimizers(self):
        """SpeechBrain's hook for several parameter groups: one ``opt_class`` optimiser.

        Head + classifiers at ``lr``, plus the backbone at ``lr * lr_factor``
        when it trains (a frozen backbone is not in the optimiser). With
        SpeechBrain's ``--remove_vector_weight_decay``, each group's vectors
        (biases, norms) go into a group of their own with ``weight_decay=0``.
        ``optimizers_dict`` is set as SpeechBrain's own hook sets it (what
        ``zero_grad``, ``freeze_optimizers`` and ``optimizers_step`` read).
        """
        encoder = unwrap(self.modules.encoder)
        backbone = list(encoder.embedding_model.parameters())
        backbone_ids = {id(p) for p in backbone}
        others = [p for p in self.modules.parameters() if id(p) not in backbone_ids]
        groups = [{"params": others, "lr": self.hparams.lr}]
        if self.hparams.train_backbone or self.hparams.unfreeze_epoch:
            factor = 1.0 if self.hparams.train_backbone else self.hparams.backbone_lr_factor
            groups.append({"params": backbone, "lr": self.hparams.lr * factor, "lr_factor": factor})
        if self.remove_vector_weight_decay:
            groups = [dict(g, params=params, **({"weight_decay": 0.0} if vectors else {}))
                      for g in groups for vectors in (True, False)
                      if (params := [p for p in g["params"] if (p.dim() == 1) == vectors])]
        self.optimizer = self.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def _wrap_distributed(self):
        """DDP as SpeechBrain wraps it, except that SyncBatchNorm is used on GPU only.

        SpeechBrain 1.1.2 converts every BatchNorm of a trainable module to
        SyncBatchNorm, which DDP refuses on CPU (gloo), and offers no public
        option to skip it; this override keeps multi-process CPU runs working.
        """
        if not self.distributed_launch:
            return super()._wrap_distributed()
        cuda = self.device_type == "cuda"
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                if cuda:
                    module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=[self.device] if cuda else None,
                    find_unused_parameters=self.find_unused_parameters)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and self.use_stats_cache:
            missing = [i for i in batch.id if i not in self.stats_cache]
            if missing:
                stats = unwrap(self.modules.encoder).pool_features(wavs, lens)
                self.stats_cache.update(zip(batch.id, stats.detach().cpu()))
            stats = torch.stack([self.stats_cache[i] for i in batch.id]).to(self.device)
            return unwrap(self.modules.encoder).embed_pooled(stats), lens
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, lens = self.hparams.wav_augment(wavs, lens)
        return self.modules.encoder(wavs, lens), lens

    def compute_objectives(self, predictions, batch, stage):
        emb, _ = predictions
        if stage != sb.Stage.TRAIN:  # embeddings collected; the EER is computed at stage end
            self.valid_embeddings.update(zip(batch.id, emb.detach().cpu()))
            return torch.zeros((), device=emb.device)
        spk = batch.spk_id_encoded.data.reshape(-1)
        if self.hparams.augment:
            spk = self.hparams.wav_augment.replicate_labels(spk)
        loss, per_dim = self.modules.loss(emb, spk)
        self.per_dim_loss = {d: float(v) for d, v in per_dim.items()}
        for d, v in self.per_dim_loss.items():
            self.epoch_loss_sums[d] = self.epoch_loss_sums.get(d, 0.0) + v
        self.epoch_loss_batches += 1
        return loss

    def on_fit_start(self):
        """SpeechBrain's start (DDP, optimiser, recovery), then the validation of the initial model."""
        self.epoch_times, self.train_stats, self.stats_cache = [], None, {}
        self.epoch_loss_sums, self.epoch_loss_batches, self.epoch_loss_per_size = {}, 0, {}
        super().on_fit_start()
        if self.checkpointer is not None:  # epoch times of the epochs done before a resume
            current = self.hparams.epoch_counter.current
            done = self.checkpointer.find_checkpoints(
                ckpt_predicate=lambda c: "epoch_times_s" in c.meta and c.meta["epoch"] <= current,
                importance_key=lambda c: c.meta["epoch"], max_num_checkpoints=1)
            self.epoch_times = list(done[0].meta["epoch_times_s"]) if done else []
        fresh = self.checkpointer is None or self.checkpointer.find_checkpoint() is None
        # a resumed run keeps the rows of the epochs its checkpoint holds
        self.history = [] if fresh else run_plots.read_history(
            self.history_path, last_epoch=self.hparams.epoch_counter.current)
        if self.hparams.validate_before_training and fresh:
            self.on_stage_start(sb.Stage.VALID, 0)
            self.modules.eval()
            for batch in self.valid_loader:
                self.evaluate_batch(batch, sb.Stage.VALID)
            self.on_stage_end(sb.Stage.VALID, 0.0, 0)
        self.update_lr()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.update_lr()

    def update_lr(self):
        """Sets the scheduled learning rate of every parameter group (``lr_schedule``)."""
        if self.hparams.lr_schedule is None:
            return
        lr = self.hparams.lr_schedule(self.optimizer_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_factor", 1.0)

    @property
    def history_path(self):
        """``train_history.json`` in the folder of the training log."""
        return os.path.join(os.path.dirname(os.path.abspath(self.hparams.train_log)),
                            run_plots.HISTORY_FILE)

    def record_epoch(self, row):
        """Adds ``row`` to :attr:`history`, then saves it and redraws its pictures (main process).

        A row replaces the rows of its epoch and of later ones (those of a run
        resumed from an earlier checkpoint).
        """
        earlier = [r for r in getattr(self, "history", []) if r["epoch"] < row["epoch"]]
        self.history = earlier + [row]
        if if_main_process():
            run_plots.write_history(self.history_path, self.history)
            run_plots.plot_training(self.history, os.path.join(
                os.path.dirname(self.history_path), run_plots.CURVES_FILE))

    def on_stage_start(self, stage, epoch=None):
        self.valid_embeddings = {}
        self.stage_start_time = time.time()
        if stage == sb.Stage.TRAIN:
            self.epoch_loss_sums, self.epoch_loss_batches = {}, 0
            unwrap(self.modules.loss).on_epoch_start(epoch)
            unwrap(self.modules.encoder).freeze_backbone(self.backbone_frozen)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        elapsed = time.time() - self.stage_start_time
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, "time_s": round(elapsed, 2)}
            self.train_stats.update({f"loss_{d}": round(v, 4) for d, v in
                                     getattr(self, "per_dim_loss", {}).items()})
            self.epoch_times.append(elapsed)
            self.epoch_loss_per_size = {d: v / self.epoch_loss_batches
                                        for d, v in self.epoch_loss_sums.items()}
            return
        self.checkpointer.check_finite()  # a poisoned model is named before its NaN scores
        dims = unwrap(self.modules.encoder).mrl_dims
        lists = {name: id_metrics(self.valid_embeddings, trials, dims)
                 for name, trials in self.valid_trials.items()}
        mean_eer = sum(m["EER"] for metrics in lists.values() for m in metrics.values()) / (
            len(lists) * len(dims))
        stats = {"EER": round(mean_eer, 4)}
        for name, metrics in lists.items():
            tag = "" if name == "valid" else name.replace("valid", "")
            stats.update({f"EER{tag}_{d}": round(m["EER"], 3) for d, m in metrics.items()})
        metrics = lists["valid"]
        lr = self.optimizer.param_groups[0]["lr"] if getattr(self, "optimizer", None) else None
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": lr, "frozen_backbone": self.backbone_frozen},
            train_stats=self.train_stats if epoch else None, valid_stats=stats)
        trained = bool(epoch) and self.train_stats is not None
        train_loss = float(self.train_stats["loss"]) if trained else None
        self.train_stats = None
        if self.checkpointer is not None:
            self.checkpointer.save_and_keep_only(
                meta={"EER": mean_eer, "epoch": epoch, "epoch_times_s": list(self.epoch_times),
                      "thresholds": {str(d): m["threshold"] for d, m in metrics.items()}},
                min_keys=["EER"], num_to_keep=self.hparams.ckpt_num_to_keep,
                name=f"epoch{epoch}" if epoch is not None else None)
        if epoch is not None:  # Brain.evaluate gives none: not an epoch of the run
            self.record_epoch({
                "epoch": epoch, "optimizer_step": self.optimizer_step, "lr": lr,
                "frozen_backbone": self.backbone_frozen,
                "train_loss": train_loss,
                "train_loss_per_size": ({str(d): v for d, v in self.epoch_loss_per_size.items()}
                                        if trained else {}),
                "valid_EER": {name: {str(d): float(m["EER"]) for d, m in lst.items()}
                              for name, lst in lists.items()}})


# --------------------------------------------------------------------- data
def dataio_prep(hparams):
    """Datasets: fixed-length training crops, validation/test clips, init crops, trial lists."""
    sr = hparams["sample_rate"]
    n_crop = int(round(hparams["crop_duration"] * sr))
    n_eval = int(round(hparams["eval_max_duration"] * sr))

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def train_pipeline(wav, start, stop):
        start, stop = int(start), int(stop)
        if stop - start > n_crop:  # random crop (or the first n_crop samples)
            start = random.randint(start, stop - n_crop) if hparams["random_crop"] else start
            stop = start + n_crop
        return crop_or_tile(read_audio(wav, start, stop, sr), n_crop)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def eval_pipeline(wav, start, stop):
        start, stop = int(start), int(stop)
        if stop - start > n_eval:  # centre crop of the longest allowed duration
            start += (stop - start - n_eval) // 2
            stop = start + n_eval
        return read_audio(wav, start, stop, sr)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def window_pipeline(wav, start, stop):  # the whole window, however long
        return read_audio(wav, int(start), int(stop), sr)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return torch.LongTensor([label_encoder.encode_label(spk_id)])

    train = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["train_annotation"])
    train.add_dynamic_item(train_pipeline)
    train.add_dynamic_item(label_pipeline)
    train.set_output_keys(["id", "sig", "spk_id_encoded"])
    encoder_path = os.path.join(hparams["save_folder"], "label_encoder.txt")
    label_encoder.load_or_create(path=encoder_path, from_didatasets=[train], output_key="spk_id")
    if set(label_encoder.lab2ind) != {row["spk_id"] for row in train.data.values()}:
        raise ValueError(f"{encoder_path} lists other speakers than {hparams['train_annotation']} "
                         "(written for other training data): give a new --output_folder")

    def eval_set(csv_paths, trials_paths):
        """One dataset of the utterances of every trial list, and the lists' trials."""
        rows = {}
        for path in csv_paths:
            rows.update(read_manifest(path))
        trials, keep = [], set()
        for path in trials_paths:
            labels, enrol, test, _ = resolve_trials(
                read_trials(path), rows,
                f"{path} (files the data preparation skipped are in its skipped_files.txt)")
            trials.append((labels, enrol, test))
            keep.update(enrol, test)
        ds = sb.dataio.dataset.DynamicItemDataset(rows).filtered_sorted(
            key_test={"id": lambda i: i in keep}, sort_key="duration")
        ds.add_dynamic_item(eval_pipeline)
        ds.set_output_keys(["id", "sig"])
        return ds, trials

    out = {"train": train, "label_encoder": label_encoder}
    valid = {"valid": (hparams["valid_annotation"], hparams["valid_trials"])}
    if hparams.get("valid_long_trials"):  # a second validation list, scored from the same loader
        valid["valid_long"] = (hparams["valid_long_annotation"], hparams["valid_long_trials"])
    out["valid"], trials = eval_set([m for m, _ in valid.values()], [t for _, t in valid.values()])
    out["valid_trials"] = dict(zip(valid, trials))
    if hparams["test_trials"]:
        out["test"], (out["test_trials"],) = eval_set(
            [hparams["enrol_annotation"], hparams["test_annotation"]], [hparams["test_trials"]])
    if hparams["train_backbone"]:
        return out
    rng = random.Random(hparams["seed"])  # crops for the head initialisation
    per_spk = {}
    for i in sorted(train.data_ids):
        per_spk.setdefault(train.data[i]["spk_id"], []).append(i)
    init_ids = set()
    for ids in per_spk.values():
        rng.shuffle(ids)
        init_ids.update(ids[: hparams["init_crops_per_speaker"]])
    out["init"] = train.filtered_sorted(key_test={"id": lambda i: i in init_ids})
    windows = {}
    for seconds in hparams.get("init_window_durations") or []:  # None: whole utterances
        windows.update(window_rows({i: train.data[i] for i in init_ids}, seconds,
                                   hparams["init_window_min_duration"], sr))
    if windows:
        out["init_long"] = sb.dataio.dataset.DynamicItemDataset(windows).filtered_sorted(
            sort_key="duration")
        out["init_long"].add_dynamic_item(window_pipeline)
        out["init_long"].add_dynamic_item(label_pipeline)
        out["init_long"].set_output_keys(["id", "sig", "spk_id_encoded"])
    return out


# --------------------------------------------------------------------- main
#: Overrides whose values a model card never shows (API keys, tokens, passwords).
_SECRET_KEY = re.compile(r"key|token|secret|password|credential", re.I)


def short_path(value):
    """``value`` as the model card shows it: a path outside the run's folder (absolute, from
    the home folder ``~`` or up through ``..``) cut to its last part."""
    value = str(value)
    outside = os.path.isabs(value) or value.startswith("~") or ".." in value.split("/")
    return os.path.basename(value.rstrip("/")) if outside else value


def training_command(hparams_file, overrides):
    """The command line of this run for the model card: paths outside the run cut to their last
    part (:func:`short_path`), the values of secret-looking overrides (``wandb_key``) hidden."""
    def shown(value):
        if isinstance(value, list):
            return "[" + ", ".join(shown(v) for v in value) + "]"
        return short_path(value)

    args = ["python", "train.py", f"hparams/{os.path.basename(hparams_file)}"]
    try:
        pairs = (yaml.safe_load(overrides) or {}).items() if overrides else ()
    except yaml.YAMLError:  # HyperPyYAML tags: recorded as given, absolute paths cut
        return shlex.join(args) + " " + shorten_paths(" ".join(str(overrides).split()))
    for key, value in pairs:
        args += [f"--{key}", "<hidden>" if _SECRET_KEY.search(str(key)) else shown(value)]
    return shlex.join(args)


def backbone_source(hparams):
    """Where the run's backbone came from, for ``model_info.json`` and the model card.

    Returns
    -------
    dict
        ``{"release": name}`` (an official release, downloaded),
        ``{"file": name}`` (a local official-format checkpoint, its file name)
        or ``{"trained_from_scratch": True}``; plus ``unfrozen_from_epoch``
        when ``unfreeze_epoch`` trains it.
    """
    if hparams["train_backbone"]:
        return {"trained_from_scratch": True}
    source = str(hparams["pretrained_backbone"])
    info = {"file": os.path.basename(source)} if os.path.isfile(source) else {"release": source}
    if hparams["unfreeze_epoch"]:
        info["unfrozen_from_epoch"] = hparams["unfreeze_epoch"]
    return info


def prepared_data(hparams):
    """What the run prepared and trained on, for ``model_info.json`` and the model card.

    Returns
    -------
    dict
        ``preparation``: the function named by ``prepare_data`` (None when
        the manifests were given); ``data_folder``: the folder name(s), an
        absolute path cut to its last part; ``train`` and ``valid``: the
        number of ``speakers`` and of ``utterances`` (audio files) in the
        training and validation manifests.
    """
    prepare = hparams["prepare_data"]
    func = getattr(prepare, "func", prepare)  # !name: with arguments is a functools.partial
    folders = hparams["data_folder"]
    info = {"preparation": None if prepare is None else f"{func.__module__}.{func.__qualname__}",
            "data_folder": ([short_path(f) for f in folders] if isinstance(folders, list)
                            else short_path(folders))}
    for split, key in (("train", "train_annotation"), ("valid", "valid_annotation")):
        rows = read_manifest(hparams[key]).values()
        info[split] = {"speakers": len({r["spk_id"] for r in rows}),
                       "utterances": len({r["wav"] for r in rows})}
    return info


def check_options(hparams, distributed=None):
    """Refuses unknown or unsupported option values before anything is prepared or trained.

    Arguments
    ---------
    hparams : dict
        The loaded hparams.
    distributed : bool, optional
        Whether several processes train (default: more than one in the
        initialised process group).

    Raises
    ------
    ValueError
        Naming the option and its allowed values.
    """
    if distributed is None:
        distributed = world_size() > 1
    choices = {"final_checkpoint": ("best_valid", "last")}
    if not hparams["train_backbone"]:
        choices["init_ordering"] = ORDERINGS
    for key, allowed in choices.items():
        if hparams[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {hparams[key]!r}")
    if distributed and hparams["unfreeze_epoch"] and not hparams["train_backbone"]:
        raise ValueError("unfreeze_epoch is not supported with DDP (the wrapper is built before "
                         "the backbone trains); run the unfrozen stage as a run of its own")


def world_size():
    """Number of training processes (1 outside DDP)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def train_and_evaluate(hparams, run_opts, command):
    """Trains on the prepared manifests, scores the lists, writes the model folder and results.

    Arguments
    ---------
    hparams : dict
        The recipe's loaded hparams (options checked by :func:`check_options`);
        the manifests named by ``train_annotation``, ``valid_annotation`` (and
        the test ones) exist.
    run_opts : dict
        SpeechBrain's run options (:func:`speechbrain.parse_arguments`).
    command : str
        The command line recorded in ``model_info.json`` (:func:`training_command`).

    Returns
    -------
    dict
        What ``results.json`` holds: per-size metrics of every list, epoch times,
        ``n_classes``, ``frozen_backbone``.
    """
    world = world_size()
    datasets = dataio_prep(hparams)
    n_classes = len(datasets["label_encoder"])  # the speakers of the training manifest
    if hparams["n_classes"] is not None and hparams["n_classes"] != n_classes:
        raise ValueError(f"n_classes={hparams['n_classes']} but {hparams['train_annotation']} has "
                         f"{n_classes} training speakers: pass --n_classes={n_classes}, or leave "
                         "n_classes null to count them")
    encoder, loss = hparams["modules"]["encoder"], hparams["modules"]["loss"]
    loss.set_n_classes(n_classes)
    if if_main_process():
        hparams["train_logger"] = MultiLogger(hparams["train_logger"], extra_logger(
            hparams["extra_logger"], hparams["extra_logger_folder"],
            os.path.basename(os.path.normpath(hparams["output_folder"]))))
    if not hparams["train_backbone"]:
        encoder.freeze_backbone()
    if hparams["lr_schedule"] is not None:
        steps = math.ceil(len(datasets["train"]) / hparams["batch_size"] / world)
        hparams["lr_schedule"] = hparams["lr_schedule"](total_steps=steps * hparams["number_of_epochs"])
    brain = MRLBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                     hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    loader_kw = dict(batch_size=hparams["batch_size"], num_workers=hparams["num_workers"])
    brain.valid_trials = datasets["valid_trials"]
    brain.valid_loader = brain.make_dataloader(datasets["valid"], sb.Stage.VALID,
                                               ckpt_prefix=None, **loader_kw)
    out = hparams["output_folder"]
    if not hparams["train_backbone"] and hparams["checkpointer"].find_checkpoint() is None:
        init_loader = sb.dataio.dataloader.make_dataloader(datasets["init"], **loader_kw)
        long_loader = (sb.dataio.dataloader.make_dataloader(datasets["init_long"], **loader_kw)
                       if "init_long" in datasets else None)
        pca_head = init_head_from_backbone(
            encoder, loss, init_loader, brain.device, hparams["init_ordering"],
            hparams["init_shrinkage"], hparams["wav_augment"], hparams["init_augment_passes"],
            long_loader)
        if if_main_process():
            save_torch_atomic(pca_head, os.path.join(out, "pca_head.ckpt"))
            save_torch_atomic(encoder.mrl_head.state_dict(), os.path.join(out, "initial_head.ckpt"))

    brain.fit(hparams["epoch_counter"], datasets["train"], brain.valid_loader,
              train_loader_kwargs=dict(loader_kw, shuffle=True, drop_last=True))

    best = hparams["final_checkpoint"] == "best_valid"
    brain.checkpointer.recover_if_possible(min_key="EER" if best else None)
    encoder = unwrap(brain.modules.encoder)
    results = {name: evaluate_trials(encoder, [brain.valid_loader], trials, brain.device)["test"]
               for name, trials in datasets["valid_trials"].items()}
    val = results["valid"]
    results.update({"epoch_times_s": brain.epoch_times, "n_classes": n_classes,
                    "frozen_backbone": not hparams["train_backbone"]})
    if "test" in datasets:
        heads = []
        if not hparams["train_backbone"]:
            names = [("test_pca", "pca_head.ckpt")]
            if hparams["init_ordering"] != "pca":
                names.append(("test_init", "initial_head.ckpt"))
            heads = [(split, torch.load(os.path.join(out, f), weights_only=True)) for split, f in names]
        test_loader = sb.dataio.dataloader.make_dataloader(datasets["test"], **loader_kw)
        results.update(evaluate_trials(encoder, [test_loader], datasets["test_trials"],
                                     brain.device, heads))
    if if_main_process():
        if hparams["train_backbone"] and hparams["export_backbone"]:
            save_official_backbone(encoder, hparams["export_backbone"])
        if hparams["write_model_folder"] and encoder.mrl_head is not None:
            write_model_folder(hparams["model_folder"], encoder,
                               thresholds={d: m["threshold"] for d, m in val.items()},
                               validation={name: {d: m["EER"] for d, m in results[name].items()}
                                           for name in datasets["valid_trials"]},
                               extra_info={"n_train_speakers": n_classes,
                                           "datasets": list(hparams["datasets"]),
                                           "backbone": backbone_source(hparams),
                                           "training_data": prepared_data(hparams),
                                           "command": command,
                                           "frozen_backbone": not hparams["train_backbone"]})
        # written last: its presence marks a finished run (run_demo.py relies on it)
        write_text_atomic(os.path.join(out, "results.json"), json.dumps(results, indent=1))
        for split in ("valid", "valid_long", "test", "test_init", "test_pca", "test_backbone"):
            if split in results:
                logger.info("%s: %s", split, {d: round(m["EER"], 2) for d, m in results[split].items()})
        hparams["train_logger"].close()
    return results
