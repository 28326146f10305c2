#!/usr/bin/env python3
"""Trains Matryoshka speaker embeddings on a ReDimNet backbone (SpeechBrain Brain).

Two kinds of run, chosen by the hparams file:

* ``train_backbone: False`` (``mrl_*.yaml``): a pretrained ReDimNet is FROZEN
  (no gradient, not in the optimiser, kept in ``eval()`` so its BatchNorm
  statistics never move, run under ``torch.no_grad()``); only the Matryoshka
  head (:class:`speechbrain_mrl.MatryoshkaProjection`) and the per-size
  classifiers of :class:`speechbrain_mrl.MatryoshkaAAMLoss` train. The head is
  initialised from the backbone's own embedding layer plus a rotation
  (``init_ordering``: ``discriminant``, axes ordered by speaker discrimination
  on clean and ``init_augment_passes`` augmented passes over the init crops,
  or ``pca``) and the classifiers from speaker centroids, so training starts
  from the backbone's accuracy. ``unfreeze_epoch`` optionally unfreezes the
  backbone (learning rate ``lr * backbone_lr_factor``) from that epoch on.
* ``train_backbone: True`` (``scratch_redimnet.yaml``): the whole ReDimNet is
  trained from scratch with AAM, optionally with the Matryoshka head from the
  start (``use_mrl_head: True``).

Validation (also before the first epoch) computes the EER of every Matryoshka
size on a verification list. The final model is the checkpoint with the best
mean EER (``final_checkpoint: best_valid``, the frozen-backbone stage, where
the initial head is a candidate) or the last epoch's (``last``, training from
scratch under a decaying learning rate, where a small validation list cannot
rank epochs reliably).
At the end, ``<output_folder>/model/`` is written with
``speechbrain_mrl.packaging.write_model_folder`` including per-size EER
thresholds calibrated on the validation trials.

Usage::

    python train.py hparams/mrl_b2.yaml --data_folder /path/to/voxceleb
    torchrun --nproc_per_node=4 train.py hparams/mrl_b2.yaml --data_folder ...

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import csv
import json
import logging
import math
import os
import pathlib
import random
import sys
import time

import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speaker_verification_cosine as svc  # noqa: E402
import voxceleb_prepare as vp  # noqa: E402

from speechbrain_mrl.losses import class_centroids  # noqa: E402

logger = logging.getLogger(__name__)


def unwrap(module):
    """The module inside a DDP/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def pool(backbone, wavs, lens):
    """Pooled statistics of a ReDimNetEncoder (waveforms -> ``[B, pool_dim]``)."""
    return unwrap(backbone).pool_features(wavs, lens)


def model_config(backbone):
    """Official-style ``model_config`` of a ReDimNetEncoder."""
    return dict(unwrap(backbone).model_config)


# --------------------------------------------------------------------- metrics
def read_trial_ids(path):
    """Trial list -> ``[(label, enrol_id, test_id)]`` with IDs = paths without extension."""
    return [(lab, vp.trial_id(a), vp.trial_id(b)) for lab, a, b in vp.read_trials(path)]


def verification_metrics(embeddings, trials, dims):
    """EER, its threshold and minDCF (p_target 0.01) of cosine scoring at every prefix size.

    The metrics come from the scoring script (:func:`speaker_verification_cosine.verification_metrics`),
    so validation and test numbers are computed alike, in ``O(N log N)`` for long trial lists.

    Arguments
    ---------
    embeddings : dict of str to torch.Tensor
        Full-size embedding per ID.
    trials : list of (int, str, str)
        ``(label, enrol_id, test_id)``.
    dims : list of int
        Prefix sizes.

    Returns
    -------
    dict of int to dict
        ``{d: {"EER": %, "threshold": float, "minDCF": float}}``.
    """
    trials = [t for t in trials if t[1] in embeddings and t[2] in embeddings]
    if not trials:
        raise ValueError("no trial has both embeddings")
    ids = sorted({i for _, a, b in trials for i in (a, b)})
    index = {i: n for n, i in enumerate(ids)}
    mat = torch.stack([embeddings[i].float().flatten() for i in ids])
    ia = torch.tensor([index[a] for _, a, _ in trials])
    ib = torch.tensor([index[b] for _, _, b in trials])
    labels = torch.tensor([lab for lab, _, _ in trials], dtype=torch.bool)
    out = {}
    for d in dims:
        e = F.normalize(mat[:, :d], dim=1)
        m = svc.verification_metrics((e[ia] * e[ib]).sum(dim=1), labels)
        out[int(d)] = {"EER": m["EER"], "threshold": float(m["EER_threshold"]),
                       "minDCF": float(m["minDCF@0.01"])}
    return out


# --------------------------------------------------------------------- brain
class MRLBrain(sb.core.Brain):
    """Brain for the frozen-backbone Matryoshka stage and for from-scratch training."""

    # ----------------------------------------------------------- setup
    @property
    def backbone_frozen(self):
        """True while the backbone must not change (frozen stage, before unfreezing)."""
        if self.hparams.train_backbone:
            return False
        unfreeze = self.hparams.unfreeze_epoch
        current = self.hparams.epoch_counter.current
        return not (unfreeze and current >= unfreeze)

    @property
    def uses_head(self):
        """Embeddings come from the Matryoshka head (else from the backbone's own layer)."""
        return "mrl_head" in self.modules

    @property
    def mrl_dims(self):
        """Sizes evaluated and trained."""
        return list(unwrap(self.modules.loss).mrl_dims)

    def set_backbone_trainable(self, trainable):
        """(Un)freezes the backbone parameters."""
        for p in unwrap(self.modules.backbone).parameters():
            p.requires_grad_(trainable)

    def init_optimizers(self):
        """One optimiser: head + classifiers (+ backbone, at its own learning rate).

        A frozen backbone is not in the optimiser unless ``unfreeze_epoch`` is set
        (then its parameter group only receives gradients once unfrozen).
        """
        groups = []
        trainable = [p for n, m in self.modules.items() if n != "backbone" for p in m.parameters()]
        groups.append({"params": trainable, "lr": self.hparams.lr})
        if self.hparams.train_backbone or self.hparams.unfreeze_epoch:
            factor = 1.0 if self.hparams.train_backbone else self.hparams.backbone_lr_factor
            groups.append({"params": list(unwrap(self.modules.backbone).parameters()),
                           "lr": self.hparams.lr * factor, "lr_factor": factor})
        self.optimizer = self.hparams.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    # ----------------------------------------------------------- forward
    def _backbone_ctx(self):
        return torch.no_grad() if self.backbone_frozen else contextlib.nullcontext()

    def embed(self, wavs, lens):
        """Full-size embeddings ``[B, D]`` of a batch (the head's, or the backbone's own)."""
        backbone = self.modules.backbone
        with self._backbone_ctx():
            if self.uses_head:
                stats = pool(backbone, wavs, lens)
            else:
                emb = backbone(wavs, lens)
        if self.uses_head:
            return self.modules.mrl_head(stats)
        return emb.reshape(emb.shape[0], -1)

    @property
    def use_stats_cache(self):
        """Cache the frozen backbone's pooled statistics per training item?

        Only when nothing makes a training input change between epochs: a
        frozen backbone (for the whole run), no waveform augmentation and
        deterministic crops (``random_crop: False``). Epochs after the first
        then skip the backbone.
        """
        return (self.hparams.cache_frozen_outputs and self.uses_head
                and not self.hparams.train_backbone and not self.hparams.unfreeze_epoch
                and not self.hparams.augment and not self.hparams.random_crop)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and self.use_stats_cache:
            cache = self.stats_cache
            if all(i in cache for i in batch.id):
                stats = torch.stack([cache[i] for i in batch.id]).to(self.device)
            else:
                with torch.no_grad():
                    stats = pool(self.modules.backbone, wavs, lens)
                cache.update(zip(batch.id, stats.detach().cpu()))
            return self.modules.mrl_head(stats), lens
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, lens = self.hparams.wav_augment(wavs, lens)
        return self.embed(wavs, lens), lens

    def compute_objectives(self, predictions, batch, stage):
        emb, _ = predictions
        if stage != sb.Stage.TRAIN:
            # validation: embeddings are collected, the EER is computed at stage end
            for i, e in zip(batch.id, emb.detach().cpu()):
                self.valid_embeddings[i] = e
            return torch.zeros((), device=emb.device)
        spk = batch.spk_id_encoded.data.reshape(-1)
        if self.hparams.augment:
            spk = self.hparams.wav_augment.replicate_labels(spk)
        loss, per_dim = self.modules.loss(emb, spk)
        self.per_dim_loss = {d: float(v) for d, v in per_dim.items()}
        return loss

    # ----------------------------------------------------------- frozen backbone
    def on_fit_batch_start(self, batch, should_step):
        """Keeps a frozen backbone in eval() (Brain.fit calls modules.train() each epoch).

        The head's input BatchNorm (a copy of the backbone's ``bn``) is kept in
        eval() too while the backbone is frozen: the pooled statistics it
        normalises do not change, so its running statistics stay those of the
        pretrained model (its affine parameters still train).
        """
        if self.backbone_frozen:
            self.modules.backbone.eval()
            if self.uses_head and self.hparams.init_head_from_backbone:
                unwrap(self.modules.mrl_head).norm.eval()

    def _wrap_distributed(self):
        """DDP-wraps the trainable modules (SyncBatchNorm on GPU only, so gloo on CPU works).

        With a head, the backbone stays unwrapped: it is called through its
        ``pool_features`` method, so the gradients of an unfrozen backbone are
        all-reduced in :meth:`optimizers_step`.
        """
        if not self.distributed_launch:
            return super()._wrap_distributed()
        from torch.nn.parallel import DistributedDataParallel as DDP

        for name, module in list(self.modules.items()):
            if name == "backbone" and self.uses_head:
                continue
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if self.device_type == "cuda":
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
                module = DDP(module, device_ids=[self.device],
                             find_unused_parameters=self.find_unused_parameters)
            else:
                module = DDP(module, find_unused_parameters=self.find_unused_parameters)
            self.modules[name] = module

    def optimizers_step(self):
        """All-reduces the gradients of a trainable backbone that DDP does not wrap."""
        bb = self.modules.backbone
        if (self.distributed_launch and not self.backbone_frozen
                and not isinstance(bb, torch.nn.parallel.DistributedDataParallel)
                and torch.distributed.is_initialized()):
            world = torch.distributed.get_world_size()
            for p in bb.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        super().optimizers_step()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step and self.hparams.lr_schedule is not None:
            self.update_lr()

    def update_lr(self):
        """Per-step learning-rate schedule (warm-up then cosine/linear decay)."""
        lr = self.hparams.lr_schedule(self.optimizer_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_factor", 1.0)

    # ----------------------------------------------------------- stages
    def on_stage_start(self, stage, epoch=None):
        self.valid_embeddings = {}
        self.stage_start_time = time.time()
        if stage == sb.Stage.TRAIN:
            unwrap(self.modules.loss).on_epoch_start(epoch)
            frozen = self.backbone_frozen
            if not self.hparams.train_backbone:
                self.set_backbone_trainable(not frozen)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        elapsed = time.time() - self.stage_start_time
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, "time_s": round(elapsed, 2)}
            self.train_stats.update({f"loss_{d}": round(v, 4) for d, v in
                                     getattr(self, "per_dim_loss", {}).items()})
            self.epoch_times.append(elapsed)
            return
        if stage != sb.Stage.VALID:
            return
        metrics = verification_metrics(self.valid_embeddings, self.valid_trials, self.mrl_dims)
        mean_eer = sum(m["EER"] for m in metrics.values()) / len(metrics)
        stats = {"EER": round(mean_eer, 4)}
        stats.update({f"EER_{d}": round(m["EER"], 3) for d, m in metrics.items()})
        self.last_valid_metrics = metrics
        lr = self.optimizer.param_groups[0]["lr"] if getattr(self, "optimizer", None) else None
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": lr, "frozen_backbone": self.backbone_frozen},
            train_stats=self.train_stats if epoch else None,
            valid_stats=stats,
        )
        self.train_stats = None
        if self.checkpointer is not None:
            self.checkpointer.save_and_keep_only(
                meta={"EER": mean_eer, "epoch": epoch,
                      "thresholds": {str(d): m["threshold"] for d, m in metrics.items()}},
                min_keys=["EER"], num_to_keep=self.hparams.ckpt_num_to_keep,
                name=f"epoch{epoch}" if epoch is not None else None,
            )

    # ----------------------------------------------------------- fit
    def fit(self, epoch_counter, train_set, valid_set=None, progressbar=None,
            train_loader_kwargs={}, valid_loader_kwargs={}):
        """Brain.fit plus a validation BEFORE the first epoch (the initial model is a candidate)."""
        self.epoch_times = []
        self.train_stats = None
        self.stats_cache = {}
        if not isinstance(train_set, torch.utils.data.DataLoader):
            train_set = self.make_dataloader(train_set, stage=sb.Stage.TRAIN, **train_loader_kwargs)
        if valid_set is not None and not isinstance(valid_set, torch.utils.data.DataLoader):
            valid_set = self.make_dataloader(valid_set, stage=sb.Stage.VALID, ckpt_prefix=None,
                                             **valid_loader_kwargs)
        self._initial_valid_set = valid_set
        super().fit(epoch_counter, train_set, valid_set, progressbar)

    def on_fit_start(self):
        super().on_fit_start()  # compile, DDP wrap, optimiser, recovery
        valid_set = getattr(self, "_initial_valid_set", None)
        if (self.hparams.validate_before_training and valid_set is not None
                and self.hparams.epoch_counter.current == 0
                and self.checkpointer.find_checkpoint() is None):
            enable = not self.noprogressbar and if_main_process()
            self._fit_valid(valid_set, epoch=0, enable=enable)
        if self.hparams.lr_schedule is not None:
            self.update_lr()

    # ----------------------------------------------------------- helpers
    @torch.no_grad()
    def collect(self, loader, stats=False, augment=False):
        """Embeddings (or pooled statistics) and labels of every item of a loader (eval mode).

        ``augment``: the waveforms go through ``wav_augment`` first (the labels
        are replicated to match); the IDs are those of the loader's items.
        """
        self.modules.eval()
        out, labels, ids = [], [], []
        for batch in loader:
            batch = batch.to(self.device)
            wavs, lens = batch.sig
            if augment:
                wavs, lens = self.hparams.wav_augment(wavs, lens)
            if stats:
                out.append(pool(self.modules.backbone, wavs, lens).cpu())
            else:
                out.append(self.embed(wavs, lens).cpu())
            if hasattr(batch, "spk_id_encoded"):
                lab = batch.spk_id_encoded.data.reshape(-1)
                if augment:
                    lab = self.hparams.wav_augment.replicate_labels(lab)
                labels.append(lab.cpu())
            ids.extend(batch.id)
        return torch.cat(out), (torch.cat(labels) if labels else None), ids

    @torch.no_grad()
    def init_head(self, init_loader):
        """Head from the backbone's embedding layer + a rotation; classifiers from speaker centroids.

        ``init_ordering``: ``discriminant`` (speaker-discriminant axes estimated on
        the clean init crops plus ``init_augment_passes`` augmented passes, with
        ``init_shrinkage``) or ``pca`` (principal axes of the clean crops). The
        PCA head, the baseline a Matryoshka head must beat (PCA truncation of the
        backbone embedding), is kept in :attr:`pca_head_state` either way.
        """
        ordering = self.hparams.init_ordering
        stats, labels, _ = self.collect(init_loader, stats=True)
        model = unwrap(self.modules.backbone).embedding_model
        head = unwrap(self.modules.mrl_head)
        layer = (model.bn, model.linear, model.bn2)
        head.init_from_embedding_layer(*layer, stats=stats)
        self.pca_head_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        n_rows = stats.shape[0]
        if ordering == "discriminant":
            passes = [self.collect(init_loader, stats=True, augment=True)[:2]
                      for _ in range(self.hparams.init_augment_passes)]
            all_stats = torch.cat([stats] + [s for s, _ in passes])
            all_labels = torch.cat([labels] + [lab for _, lab in passes])
            head.init_from_embedding_layer(*layer, stats=all_stats, labels=all_labels,
                                           shrinkage=self.hparams.init_shrinkage)
            n_rows = all_stats.shape[0]
        head.eval()
        emb = head(stats.to(self.device)).cpu()
        loss = unwrap(self.modules.loss)
        centroids, counts = class_centroids(emb, labels, loss.n_classes)
        loss.init_classifiers_from_centroids(centroids)
        logger.info("head initialised from the backbone (%s ordering on %d crops); %d/%d speaker "
                    "centroids", ordering, n_rows, int((counts > 0).sum()), loss.n_classes)

    @torch.no_grad()
    def init_classifiers(self, init_loader):
        """Classifiers from speaker centroids of the current model's embeddings."""
        emb, labels, _ = self.collect(init_loader)
        loss = unwrap(self.modules.loss)
        centroids, _ = class_centroids(emb, labels, loss.n_classes)
        loss.init_classifiers_from_centroids(centroids)

    def evaluate_trials(self, loaders, trials):
        """Metrics of a trial list for every size; ``loaders`` give the needed IDs."""
        embs = {}
        for loader in loaders:
            e, _, ids = self.collect(loader)
            embs.update(zip(ids, e))
        return verification_metrics(embs, trials, self.mrl_dims)

    @torch.no_grad()
    def test_metrics(self, loaders, trials, baseline_heads=()):
        """Test metrics of the final model and of its baselines, from one backbone pass.

        Without a head: ``{"test": ...}``. With a head, the pooled statistics of
        the loaders' items also give ``test_backbone`` (the backbone's own
        embedding) and one split per ``(split, head_state_dict)`` of
        ``baseline_heads``, the same head with those weights.
        """
        if not self.uses_head:
            return {"test": self.evaluate_trials(loaders, trials)}
        stats, ids = [], []
        for loader in loaders:
            s, _, i = self.collect(loader, stats=True)
            stats.append(s)
            ids.extend(i)
        stats = torch.cat(stats)

        def metrics(embed_fn, dims):
            emb = torch.cat([embed_fn(chunk.to(self.device)).cpu() for chunk in stats.split(4096)])
            return verification_metrics(dict(zip(ids, emb)), trials, dims)

        head = unwrap(self.modules.mrl_head)
        backbone = unwrap(self.modules.backbone)
        out = {"test": metrics(head, self.mrl_dims),
               "test_backbone": metrics(backbone.embedding_model.embed, [backbone.embed_dim])}
        trained = {k: v.clone() for k, v in head.state_dict().items()}
        for split, state in baseline_heads:
            head.load_state_dict(state)
            out[split] = metrics(head, self.mrl_dims)
        head.load_state_dict(trained)
        return out


# --------------------------------------------------------------------- data
def crop_or_tile(sig, n):
    """Repeat-pads a short signal to ``n`` samples (long ones are cropped before reading)."""
    if sig.shape[0] >= n:
        return sig[:n]
    if sig.shape[0] == 0:
        return torch.zeros(n)
    reps = math.ceil(n / sig.shape[0])
    return sig.repeat(reps)[:n]


def dataio_prep(hparams):
    """Datasets: random fixed-length training crops, full validation/test clips."""
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
        return crop_or_tile(vp.read_audio(wav, start, stop, sr), n_crop)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def eval_pipeline(wav, start, stop):
        start, stop = int(start), int(stop)
        if stop - start > n_eval:  # centre crop of the longest allowed duration
            start += (stop - start - n_eval) // 2
            stop = start + n_eval
        return vp.read_audio(wav, start, stop, sr)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return torch.LongTensor([label_encoder.encode_label(spk_id)])

    train = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["train_annotation"])
    train.add_dynamic_item(train_pipeline)
    train.add_dynamic_item(label_pipeline)
    train.set_output_keys(["id", "sig", "spk_id_encoded"])
    lab_file = os.path.join(hparams["save_folder"], "label_encoder.txt")
    label_encoder.load_or_create(path=lab_file, from_didatasets=[train], output_key="spk_id")

    def eval_set(csv_path, keep=None):
        ds = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path)
        if keep is not None:
            ds = ds.filtered_sorted(key_test={"id": lambda i: i in keep})
        ds = ds.filtered_sorted(sort_key="duration")  # less padding
        ds.add_dynamic_item(eval_pipeline)
        ds.set_output_keys(["id", "sig"])
        return ds

    valid_trials = read_trial_ids(hparams["valid_trials"])
    keep = {i for _, a, b in valid_trials for i in (a, b)}
    valid = eval_set(hparams["valid_annotation"], keep)
    out = {"train": train, "valid": valid, "valid_trials": valid_trials,
           "label_encoder": label_encoder}
    if hparams["test_trials"]:
        out["test_trials"] = read_trial_ids(hparams["test_trials"])
        out["enrol"] = eval_set(hparams["enrol_annotation"])
        out["test"] = eval_set(hparams["test_annotation"])
    # crops for the head/classifier initialisation: up to N rows per speaker
    rng = random.Random(hparams["seed"])
    per_spk = {}
    for i in sorted(train.data_ids):
        per_spk.setdefault(train.data[i]["spk_id"], []).append(i)
    init_ids = set()
    for spk, ids in per_spk.items():
        rng.shuffle(ids)
        init_ids.update(ids[: hparams["init_crops_per_speaker"]])
    init = train.filtered_sorted(key_test={"id": lambda i: i in init_ids})
    out["init"] = init
    return out


def folder_to_csv(folder, csv_path):
    """CSV (``ID,duration,wav``) for SpeechBrain's AddNoise/AddReverb from a folder of audio."""
    rows = []
    for p in sorted(pathlib.Path(folder).rglob("*")):
        if p.suffix.lower() in vp.AUDIO_EXTENSIONS:
            try:
                frames, sr = vp.audio_info(p)
            except Exception:  # noqa: BLE001
                continue
            if frames > 0:
                rows.append([p.stem + f"_{len(rows)}", f"{frames / sr:.3f}", str(p)])
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav"])
        w.writerows(rows)
    return csv_path


def build_augmenter(hparams):
    """SpeechBrain Augmenter from the yaml, plus AddNoise/AddReverb when data are given."""
    aug = hparams["wav_augment"]
    extra = []
    for kind, csv_key, folder_key in (("noise", "noise_csv", "noise_folder"),
                                      ("rir", "rir_csv", "rir_folder")):
        csv_file = hparams[csv_key]
        if not csv_file and hparams[folder_key]:
            csv_file = os.path.join(hparams["save_folder"], f"{kind}.csv")
            run_on_main(folder_to_csv, args=[hparams[folder_key], csv_file])
        if not csv_file:
            continue
        if kind == "noise":
            from speechbrain.augment.time_domain import AddNoise

            extra.append(AddNoise(csv_file=csv_file, snr_low=hparams["snr_low"],
                                  snr_high=hparams["snr_high"],
                                  noise_sample_rate=hparams["sample_rate"],
                                  clean_sample_rate=hparams["sample_rate"], num_workers=0))
        else:
            from speechbrain.augment.time_domain import AddReverb

            extra.append(AddReverb(csv_file=csv_file, reverb_sample_rate=hparams["sample_rate"],
                                   clean_sample_rate=hparams["sample_rate"], num_workers=0))
    if extra:
        aug.augmentations = torch.nn.ModuleDict(
            list(aug.augmentations.items()) + [(type(m).__name__, m) for m in extra])
        aug.num_augmentations = len(aug.augmentations)
        if aug.max_augmentations is not None:
            aug.max_augmentations = min(aug.max_augmentations + len(extra),
                                        aug.num_augmentations)
    return aug


class CosineSchedule:
    """Linear warm-up then cosine decay to ``final_factor * lr``, as a function of the step."""

    def __init__(self, lr, warmup_steps, total_steps, final_factor=0.05):
        self.lr, self.warmup, self.total = lr, max(0, int(warmup_steps)), max(1, int(total_steps))
        self.final = final_factor

    def __call__(self, step):
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.lr * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------- main
def prepare_data(hparams):
    """Runs the data preparation named in the hparams (on the main process only)."""
    kind = hparams["prepare"]
    if kind == "voxceleb":
        run_on_main(vp.prepare_voxceleb, kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "verification_pairs_file": hparams["verification_file"],
            "splits": ["train", "dev", "test"] if hparams["verification_file"] else ["train", "dev"],
            "split_ratio": hparams["split_ratio"],
            "dev_split": hparams["dev_split"],
            "seg_dur": hparams["seg_dur"],
            "min_duration": hparams["min_duration"],
            "skip_prep": hparams["skip_prep"],
        })
        # validation trials among the dev set (seeded), unless a list is given
        vt = hparams["valid_trials"]
        if if_main_process() and not os.path.isfile(vt):
            with open(hparams["valid_annotation"]) as f:
                rows = [r for r in csv.reader(f)][1:]
            vp.write_trials(vt, vp.make_trials(rows, hparams["n_valid_trials"], hparams["seed"]))
    elif kind == "demo":
        import demo_prepare

        run_on_main(demo_prepare.prepare_demo, kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "use_librispeech": hparams["use_librispeech"],
            "n_val_speakers": hparams["n_val_speakers"],
            "n_val_trials": hparams["n_valid_trials"],
            "min_duration": hparams["min_duration"],
            "download": hparams["download"],
            "skip_prep": hparams["skip_prep"],
        })
    elif kind != "none":
        raise ValueError(f"unknown prepare={kind!r} (voxceleb, demo or none)")
    sb.utils.distributed.ddp_barrier()


def write_model(brain, hparams, thresholds, extra_info=None):
    """Writes ``<output_folder>/model/`` with speechbrain_mrl.packaging (main process only)."""
    from speechbrain_mrl.packaging import write_model_folder

    backbone = unwrap(brain.modules.backbone)
    head = unwrap(brain.modules.mrl_head)
    return write_model_folder(
        hparams["model_folder"],
        model_config(backbone),
        backbone.embedding_model.state_dict(),
        head.state_dict(),
        head.embed_dim,
        head.mrl_dims,
        thresholds={int(d): float(t) for d, t in thresholds.items()},
        extra_info=extra_info,
    )


def export_backbone(backbone, path):
    """Saves a ReDimNetEncoder as an official-format checkpoint (loadable by
    :func:`speechbrain_mrl.official.load_official_redimnet`)."""
    from speechbrain_mrl.official import official_state_dict

    backbone = unwrap(backbone)
    sd = {k: v.detach().cpu().clone() for k, v in official_state_dict(backbone).items()}
    torch.save({"model_config": model_config(backbone), "state_dict": sd}, path)
    return path


class MultiLogger:
    """Forwards ``log_stats`` to SpeechBrain's file logger and an optional second logger."""

    def __init__(self, *loggers):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log_stats(self, *args, **kwargs):
        for lg in self.loggers:
            lg.log_stats(*args, **kwargs)

    def close(self):
        """Flushes and closes the loggers that hold a run or a file (wandb, TensorBoard)."""
        for lg in self.loggers:
            if getattr(lg, "run", None) is not None:
                lg.run.finish()
            if getattr(lg, "writer", None) is not None:
                lg.writer.close()


def make_extra_logger(hparams):
    """wandb (offline mode) or TensorBoard logger from speechbrain.utils.train_logger."""
    kind = hparams["extra_logger"]
    if not kind or not if_main_process():
        return None
    folder = hparams["extra_logger_folder"]
    os.makedirs(folder, exist_ok=True)
    from speechbrain.utils import train_logger

    if kind == "tensorboard":
        return train_logger.TensorboardLogger(save_dir=folder)
    if kind == "wandb":
        import wandb

        return train_logger.WandBLogger(
            initializer=wandb.init, project="speechbrain-mrl", dir=folder,
            mode=os.environ.get("WANDB_MODE", "offline"),  # WANDB_MODE=online to sync live
            name=os.path.basename(os.path.normpath(hparams["output_folder"])))
    raise ValueError(f"extra_logger must be wandb, tensorboard or null, got {kind!r}")


def check_choices(hparams):
    """Refuses unknown option values before anything is prepared or trained."""
    choices = {"final_checkpoint": ("best_valid", "last")}
    if hparams["init_head_from_backbone"]:
        choices["init_ordering"] = ("discriminant", "pca")
    for key, allowed in choices.items():
        if hparams[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {hparams[key]!r}")


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # torchrun: one process per device
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    check_choices(hparams)
    prepare_data(hparams)
    datasets = dataio_prep(hparams)
    n_classes = len(datasets["label_encoder"])
    if n_classes != hparams["n_classes"]:
        raise ValueError(f"hparams n_classes={hparams['n_classes']} but the training data have "
                         f"{n_classes} speakers; pass --n_classes={n_classes}")

    if hparams["augment"]:
        build_augmenter(hparams)
    extra = make_extra_logger(hparams)
    if extra is not None:
        hparams["train_logger"] = MultiLogger(hparams["train_logger"], extra)
    modules = hparams["modules"]
    if not hparams["train_backbone"]:
        for p in modules["backbone"].parameters():
            p.requires_grad_(False)
    steps_per_epoch = math.ceil(len(datasets["train"]) / hparams["batch_size"]
                                / max(1, int(os.environ.get("WORLD_SIZE", 1))))
    lr_schedule = None
    if hparams["lr_warmup_steps"] is not None:
        lr_schedule = CosineSchedule(hparams["lr"], hparams["lr_warmup_steps"],
                                     steps_per_epoch * hparams["number_of_epochs"],
                                     hparams["lr_final_factor"])
    hparams["lr_schedule"] = lr_schedule
    brain = MRLBrain(modules=modules, opt_class=hparams["opt_class"], hparams=hparams,
                     run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.valid_trials = datasets["valid_trials"]

    loader_kw = dict(batch_size=hparams["batch_size"], num_workers=hparams["num_workers"])
    init_loader = sb.dataio.dataloader.make_dataloader(datasets["init"], **loader_kw)
    fresh = hparams["checkpointer"].find_checkpoint() is None
    if fresh and brain.uses_head and hparams["init_head_from_backbone"]:
        brain.init_head(init_loader)
    elif fresh and hparams["init_classifiers_from_centroids"]:
        brain.init_classifiers(init_loader)
    if fresh and brain.uses_head and if_main_process():
        torch.save(unwrap(brain.modules.mrl_head).state_dict(),
                   os.path.join(hparams["output_folder"], "initial_head.ckpt"))
        if hparams["init_head_from_backbone"]:
            torch.save(brain.pca_head_state, os.path.join(hparams["output_folder"], "pca_head.ckpt"))

    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"],
              train_loader_kwargs=dict(loader_kw, shuffle=True, drop_last=True),
              valid_loader_kwargs=loader_kw)

    # final model (best mean validation EER, or the last epoch) -> thresholds -> model folder
    if brain.checkpointer is not None:
        best = hparams["final_checkpoint"] == "best_valid"
        brain.checkpointer.recover_if_possible(min_key="EER" if best else None)
    valid_loader = sb.dataio.dataloader.make_dataloader(datasets["valid"], **loader_kw)
    val = brain.evaluate_trials([valid_loader], datasets["valid_trials"])
    thresholds = {d: m["threshold"] for d, m in val.items()}
    results = {"valid": val, "epoch_times_s": brain.epoch_times,
               "n_classes": n_classes, "frozen_backbone": not hparams["train_backbone"]}
    if "test_trials" in datasets:
        loaders = [sb.dataio.dataloader.make_dataloader(datasets[k], **loader_kw)
                   for k in ("enrol", "test")]
        # baselines: PCA truncation of the backbone embedding (the PCA-rotated head)
        # and the untrained initial head, when it is not the PCA one
        baselines = {}
        if brain.uses_head and hparams["init_head_from_backbone"]:
            baselines["test_pca"] = "pca_head.ckpt"
            if hparams["init_ordering"] != "pca":
                baselines["test_init"] = "initial_head.ckpt"
        heads = [(split, torch.load(os.path.join(hparams["output_folder"], name), weights_only=True))
                 for split, name in baselines.items()]
        results.update(brain.test_metrics(loaders, datasets["test_trials"], heads))
    if if_main_process():
        if hparams["train_backbone"] and hparams.get("export_backbone"):
            export_backbone(brain.modules.backbone, hparams["export_backbone"])
        with open(os.path.join(hparams["output_folder"], "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        if hparams["write_model_folder"] and brain.uses_head:
            write_model(brain, hparams, thresholds, extra_info={
                "valid_EER": {str(d): m["EER"] for d, m in val.items()},
                "n_train_speakers": n_classes,
                "train_annotation": hparams["train_annotation"],
                "frozen_backbone": not hparams["train_backbone"]})
        for split in ("valid", "test", "test_init", "test_pca", "test_backbone"):
            if split in results:
                logger.info("%s: %s", split, {d: round(m["EER"], 2) for d, m in
                                               results[split].items()})
    if isinstance(hparams["train_logger"], MultiLogger):
        hparams["train_logger"].close()
    return brain, results


if __name__ == "__main__":
    main(sys.argv[1:])
