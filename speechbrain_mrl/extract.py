"""Embedding extraction at scale: audio in, every Matryoshka size out, in resumable shards.

The utterances (a CSV manifest, a folder searched recursively, or a list of
files) are sorted by duration and split into shards of ``shard_size``; the
plan is written first (``plan.json``), so a run that is stopped and started
again with the same command continues with the unfinished shards: a shard is
done when its ``shard_<k>.csv`` exists, which is written (atomically) after
its ``shard_<k>.npy``. Nothing is embedded twice and nothing is lost.

Each shard holds the full-size embeddings (every Matryoshka size is a prefix
of them) of its readable utterances, float32 or float16; unreadable, empty,
silent, NaN/Inf or too short audio is skipped and listed with the reason. At
the end, ``index.csv`` maps each utterance ID to its shard and row (with its
duration, file and speaker when known), ``skipped.csv`` lists the skipped
files and ``info.json`` the model, its fingerprint and sizes.
:func:`load_embeddings` reads the result back (e.g. into
:class:`~speechbrain_mrl.search.SpeakerIndex`).

Batches are bucketed by length and read by DataLoader workers; audio longer
than the model's ``long_audio_seconds`` is embedded window by window. Under
``torchrun`` each process takes every ``world_size``-th shard and the first
one writes the merged index::

    python -m speechbrain_mrl.extract --model_folder M --csv utts.csv --out emb/
    torchrun --nproc_per_node=4 -m speechbrain_mrl.extract --model_folder M --folder wavs/ \\
        --out emb/ --device cuda --precision fp16

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import csv
import json
import os
import pathlib
import time

import numpy as np
import torch
from tqdm import tqdm

from speechbrain.utils.data_utils import batch_pad_right

from speechbrain_mrl.dataio import (AUDIO_EXTENSIONS, audio_info, read_manifest, read_row_audio,
                                    signal_problem, write_manifest, write_text_atomic)

__all__ = ["collect_rows", "extract", "load_embeddings"]

INDEX_FIELDS = ["ID", "shard", "row", "duration", "wav", "spk_id"]
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def collect_rows(csv_path=None, folder=None, files=None):
    """Utterances to embed: ``{ID: {"wav", "start", "stop", "duration", "spk_id"}}``.

    Exactly one source: a manifest (``ID, wav`` and optionally ``start``,
    ``stop``, ``duration``, ``spk_id``), a folder (every audio file below it;
    the ID is its relative path without extension, the speaker its first
    folder) or a list of files (the ID is the path). A file whose header
    cannot be read gets duration 0 and is skipped, with its reason, later.
    """
    if sum(x is not None for x in (csv_path, folder, files)) != 1:
        raise ValueError("give exactly one of a CSV manifest, a folder or a list of files")
    if csv_path is not None:
        rows = read_manifest(csv_path)
    elif folder is not None:
        folder = pathlib.Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"audio folder {folder} does not exist")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        rows = {}
        for p in paths:
            rel = p.relative_to(folder)
            rows[str(rel.with_suffix(""))] = {
                "wav": str(p), "spk_id": rel.parts[0] if len(rel.parts) > 1 else ""}
    else:
        rows = {str(p): {"wav": str(p)} for p in files}
    if not rows:
        raise ValueError(f"no audio to embed in {csv_path or folder or 'the file list'}")
    for row in rows.values():
        if not row.get("duration"):
            try:
                frames, sr = audio_info(row["wav"])
                row["duration"] = frames / sr
            except (OSError, ValueError):
                row["duration"] = 0.0
    return rows


class _Utterances(torch.utils.data.Dataset):
    """``(id, waveform or None, reason)`` of each utterance of a shard."""

    def __init__(self, ids, rows, sample_rate, min_samples):
        self.ids, self.rows = ids, rows
        self.sample_rate, self.min_samples = sample_rate, min_samples

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        uid = self.ids[i]
        row = self.rows[uid]
        try:
            wav = read_row_audio(row, self.sample_rate)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped with its reason
            return uid, None, f"unreadable ({type(err).__name__}: {err})"
        if wav.numel() < self.min_samples:
            return uid, None, f"too short ({wav.numel() / self.sample_rate:.3f} s)"
        problem = signal_problem(wav)
        return uid, (None if problem else wav), problem or ""


def _collate(items):
    return items


def _shard_name(k):
    return f"shard_{k:05d}"


def _save_npy(path, array):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@torch.no_grad()
def _embed_shard(model, ids, rows, out, k, batch_size, num_workers, precision, dtype, bar):
    min_samples = max(model.encoder.min_samples, int(round(model.min_duration * model.sample_rate)))
    dataset = _Utterances(ids, rows, model.sample_rate, min_samples)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_collate)
    done, embs, skipped = [], [], []
    device = torch.device(model.device)
    autocast = PRECISIONS[precision]
    for items in loader:
        good = [(uid, wav) for uid, wav, _ in items if wav is not None]
        skipped += [(uid, rows[uid]["wav"], reason) for uid, wav, reason in items if wav is None]
        if good:
            wavs, lens = batch_pad_right([w for _, w in good])
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                emb = model.encode_batch(wavs, lens)[:, 0].float()
            bad = ~torch.isfinite(emb).all(dim=1)
            for (uid, _), is_bad in zip(good, bad.tolist()):
                if is_bad:
                    skipped.append((uid, rows[uid]["wav"], "NaN/Inf embedding"))
                else:
                    done.append(uid)
            embs.append(emb[~bad].cpu())
        bar.update(len(items))
    matrix = torch.cat(embs).numpy() if embs else np.zeros((0, model.embed_dim), np.float32)
    name = _shard_name(k)
    _save_npy(out / f"{name}.npy", matrix.astype(dtype))
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
        plan = json.loads(path.read_text())
        if plan["model_sha256"] != info["model_sha256"]:
            raise ValueError(f"{out} holds embeddings of another model; use a new --out")
        if sorted(u for s in plan["shards"] for u in s) != sorted(rows):
            raise ValueError(f"{out} was started on other utterances; use a new --out")
        return plan["shards"]
    write_text_atomic(path, json.dumps(dict(info, shards=shards)))
    return shards


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
            device="cpu", precision="fp32", dtype="float32"):
    """Embeds ``rows`` (see :func:`collect_rows`) into shards under ``out``; resumable.

    Arguments
    ---------
    model_folder : str or os.PathLike
        A model folder (``write_model_folder``; its fingerprint is recorded).
    rows : dict
        Utterances, from :func:`collect_rows`.
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

    Returns
    -------
    dict
        ``info.json`` of the finished extraction (on every process).
    """
    from speechbrain_mrl.inference import MRLEncoderClassifier
    from speechbrain_mrl.packaging import model_fingerprint

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
    model = MRLEncoderClassifier.from_hparams(source=str(model_folder), run_opts={"device": device})
    info = {"model_folder": str(model_folder), "model_sha256": model_fingerprint(model_folder),
            "embed_dim": model.embed_dim, "mrl_dims": model.mrl_dims, "dtype": dtype,
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
    for i in ids], embeddings)`` enrols the speakers.
    """
    folder = pathlib.Path(folder)
    if not (folder / "info.json").is_file():
        raise FileNotFoundError(f"{folder} holds no finished extraction (no info.json)")
    info = json.loads((folder / "info.json").read_text())
    dim = int(target_dim or info["embed_dim"])
    if not 1 <= dim <= int(info["embed_dim"]):
        raise ValueError(f"target_dim must be in [1, {info['embed_dim']}], got {target_dim}")
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


def main(argv=None):
    p = argparse.ArgumentParser(description="Extract Matryoshka speaker embeddings (resumable)")
    p.add_argument("--model_folder", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="manifest with ID, wav (+ start, stop, duration, spk_id)")
    src.add_argument("--folder", help="every audio file below this folder")
    src.add_argument("--files", nargs="+", help="audio files")
    src.add_argument("--file_list", help="text file with one audio path per line")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--shard_size", type=int, default=10000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    a = p.parse_args(argv)
    files = a.files
    if a.file_list:
        files = [line.strip() for line in pathlib.Path(a.file_list).read_text().splitlines()
                 if line.strip()]
    rows = collect_rows(a.csv, a.folder, files)
    return extract(a.model_folder, rows, a.out, a.shard_size, a.batch_size, a.num_workers,
                   a.device, a.precision, a.dtype)


if __name__ == "__main__":  # pragma: no cover
    main()
