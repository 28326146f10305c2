"""Embedding extraction at scale: audio in, every Matryoshka size out, in resumable shards.

The utterances (any source of :func:`speechbrain_mrl.data.sources.read_sources`)
are sorted by duration and split into shards of ``shard_size``; the
plan is written first (``plan.json``), so a run that is stopped and started
again with the same command continues with the unfinished shards: a shard is
done when its ``shard_<k>.csv`` exists, which is written (atomically) after
its ``shard_<k>.npy``. Nothing is embedded twice and nothing is lost; a
resume with another model, other utterances, ``dtype`` or ``precision`` is
refused (one folder holds one kind of embedding).

Each shard holds the full-size embeddings (every Matryoshka size is a prefix
of them) of its readable utterances, float32 or float16; unreadable, empty,
silent, NaN/Inf or too short audio is skipped and listed with the reason. At
the end, ``index.csv`` maps each utterance ID to its shard and row (with its
duration, file and speaker when known), ``skipped.csv`` lists the skipped
files and ``info.json`` the model, its fingerprint and sizes.
:func:`load_embeddings` reads the result back (e.g. into
:class:`~speechbrain_mrl.search.index.SpeakerIndex`).

Audio goes through the one embedding path,
:func:`speechbrain_mrl.inference.embeddings.embed_manifest` (batches bucketed by length,
read by DataLoader workers, audio longer than the model's
``long_audio_seconds`` embedded window by window). Under
``torchrun`` each process takes every ``world_size``-th shard and the first
one writes the merged index::

    speechbrain-mrl extract --model_folder M --csv utts.csv --output_folder emb/
    torchrun --nproc_per_node=4 -m speechbrain_mrl.inference.extract --model_folder M --folder wavs/ \\
        --output_folder emb/ --device cuda --precision fp16

Authors
-------
 * speechbrain-mrl developers
"""
import csv
import json
import numbers
import os
import pathlib
import time

import numpy as np
import torch
from tqdm import tqdm

from speechbrain_mrl.utils.files import atomic_output, write_text_atomic
from speechbrain_mrl.utils.json_files import read_json
from speechbrain_mrl.data.manifests import write_manifest
from speechbrain_mrl.inference.embeddings import PRECISIONS, embed_manifest

__all__ = ["extract", "load_embeddings"]

INDEX_FIELDS = ["ID", "shard", "row", "duration", "wav", "spk_id"]


def _shard_name(k):
    return f"shard_{k:05d}"


def _save_npy(path, array):
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _embed_shard(model, ids, rows, out, k, batch_size, num_workers, precision, dtype, bar):
    skipped = []
    done, emb = embed_manifest(model.encoder, {u: rows[u] for u in ids}, batch_size=batch_size,
                               num_workers=num_workers, precision=precision, skipped=skipped,
                               progress=False, **model.embedding_options())
    bar.update(len(ids))
    name = _shard_name(k)
    _save_npy(out / f"{name}.npy", emb.numpy().astype(dtype))
    write_manifest(out / f"{name}.skipped.csv", skipped, ["ID", "wav", "reason"])
    write_manifest(out / f"{name}.csv", [  # written last: marks the shard done
        [uid, k, r, rows[uid]["duration"], rows[uid]["wav"], rows[uid].get("spk_id", "")]
        for r, uid in enumerate(done)], INDEX_FIELDS)


def _plan(rows, shard_size, info, out):
    """The shards (IDs sorted by duration, longest first), written once; checked on a resume."""
    path = out / "plan.json"
    ids = sorted(rows, key=lambda u: (-float(rows[u]["duration"]), u))
    shards = [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]
    if path.is_file():
        plan = read_json(path)
        for key in ("dtype", "precision"):
            started = plan.get(key, info[key])  # older plans hold no precision
            if started != info[key]:
                raise ValueError(f"{out} was started with --{key} {started}, not {info[key]}; "
                                 f"resume with --{key} {started} or use a new --output_folder")
        if sorted(u for s in plan["shards"] for u in s) != sorted(rows):
            raise ValueError(f"{out} was started on other utterances; use a new --output_folder")
        return plan["shards"]
    write_text_atomic(path, json.dumps(dict(info, shards=shards)))
    return shards


def _refuse_another_models_folder(out, sha):
    """Refuses an output folder that holds another model's extraction (checked from its plan)."""
    path = out / "plan.json"
    if path.is_file() and read_json(path).get("model_sha256") != sha:
        raise ValueError(f"{out} holds embeddings of another model; use a new --output_folder")


def _merge(out, n_shards, info):
    index, skipped = [], []
    for k in range(n_shards):
        name = _shard_name(k)
        with open(out / f"{name}.csv", newline="") as f:
            index += list(csv.reader(f))[1:]
        with open(out / f"{name}.skipped.csv", newline="") as f:
            skipped += list(csv.reader(f))[1:]
    write_manifest(out / "skipped.csv", skipped, ["ID", "wav", "reason"])
    write_manifest(out / "index.csv", index, INDEX_FIELDS)
    write_text_atomic(out / "info.json", json.dumps(
        dict(info, n_embedded=len(index), n_skipped=len(skipped), n_shards=n_shards), indent=1))
    return len(index), len(skipped)


def extract(model_folder, rows, out, shard_size=10000, batch_size=16, num_workers=0,
            device="cpu", precision="fp32", dtype="float32", model=None):
    """Embeds ``rows`` (see :func:`speechbrain_mrl.data.sources.read_sources`) into shards under ``out``; resumable.

    Arguments
    ---------
    model_folder : str or os.PathLike
        A model folder (``write_model_folder``; its fingerprint is recorded).
    rows : dict
        Utterances, from :func:`speechbrain_mrl.data.sources.read_sources`.
    out : str or os.PathLike
        Output folder.
    shard_size : int
        Utterances per shard.
    batch_size, num_workers : int
        DataLoader settings.
    device : str
        ``cpu``, ``cuda``, ``cuda:1``, ... (under torchrun, ``cuda`` is the rank's GPU).
    precision : str
        ``fp32``, or ``fp16``/``bf16`` autocast.
    dtype : str
        Storage of the embeddings: ``float32`` or ``float16``.
    model : MRLEncoderClassifier, optional
        ``model_folder`` already loaded (e.g. on another runtime); default: loaded here.

    Returns
    -------
    dict
        ``info.json`` of the finished extraction (on every process).
    """
    from speechbrain_mrl.inference.interface import load_model
    from speechbrain_mrl.model.folder import model_fingerprint

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ValueError("shard_size and batch_size must be positive")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if distributed and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    sha = model_fingerprint(model_folder)
    _refuse_another_models_folder(pathlib.Path(out), sha)  # before the model's hyperparams run
    model = model if model is not None else load_model(model_folder, device)
    info = {"model_folder": str(model_folder), "model_sha256": sha,
            "embed_dim": model.embed_dim, "mrl_dims": model.mrl_dims, "dtype": dtype,
            "precision": precision,
            "note": "full-size embeddings; the size-d embedding is the first d columns"}
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        shards = _plan(rows, int(shard_size), info, out)
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        shards = _plan(rows, int(shard_size), info, out)
    mine = [k for k in range(rank, len(shards), world) if not (out / f"{_shard_name(k)}.csv").exists()]
    total = sum(len(shards[k]) for k in mine)
    start = time.time()
    with tqdm(total=total, unit="utt", desc=f"extract (rank {rank})" if distributed else "extract",
              dynamic_ncols=True, disable=total == 0) as bar:
        for k in mine:
            _embed_shard(model, shards[k], rows, out, k, int(batch_size), int(num_workers),
                         precision, dtype, bar)
    rate = total / max(time.time() - start, 1e-9)
    if distributed:
        torch.distributed.barrier()
    if rank == 0:
        n_ok, n_bad = _merge(out, len(shards), info)
        print(f"{n_ok} utterances embedded, {n_bad} skipped (listed in {out / 'skipped.csv'}); "
              f"this run: {total} utterances at {rate:.1f} utterances/s", flush=True)
    if distributed:
        torch.distributed.barrier()
    return json.loads((out / "info.json").read_text())


def load_embeddings(folder, target_dim=None):
    """``(ids, embeddings [N, target_dim] float32, rows)`` of a finished extraction.

    ``rows`` are the ``index.csv`` rows by ID (``duration``, ``wav``,
    ``spk_id``, ...), so that e.g. ``SpeakerIndex.enrol([rows[i]["spk_id"]
    for i in ids], embeddings)`` enrols the speakers. ``target_dim`` (an
    integer in ``[1, embed_dim]``; None: ``embed_dim``) keeps the first columns.
    """
    folder = pathlib.Path(folder)
    if not (folder / "info.json").is_file():
        raise FileNotFoundError(f"{folder} holds no finished extraction (no info.json)")
    info = json.loads((folder / "info.json").read_text())
    dim = int(info["embed_dim"]) if target_dim is None else target_dim
    if (not isinstance(dim, numbers.Integral) or isinstance(dim, bool)
            or not 1 <= dim <= int(info["embed_dim"])):
        raise ValueError(f"target_dim must be an integer in [1, {info['embed_dim']}], "
                         f"got {target_dim!r}")
    dim = int(dim)
    with open(folder / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    shards = {}
    parts = []
    for row in index:
        k = int(row["shard"])
        if k not in shards:
            shards[k] = np.load(folder / f"{_shard_name(k)}.npy", mmap_mode="r")
        parts.append(shards[k][int(row["row"]), :dim])
    emb = np.asarray(parts, dtype=np.float32).reshape(len(index), dim)
    return [r["ID"] for r in index], emb, {r["ID"]: r for r in index}
