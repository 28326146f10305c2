"""Embedding every utterance of a manifest once, in padded batches.

:func:`embed_manifest` reads the rows of a SpeechBrain manifest
(``{ID: {"wav", "start", "stop", "duration"}}``) with
:func:`speechbrain_mrl.dataio.read_audio`, batches them longest first with
padding and relative lengths, checks each batch with
:func:`speechbrain_mrl.dataio.check_waveforms` and embeds it with an
:class:`~speechbrain_mrl.encoder.MRLEncoder` (``[B, D]``, all nested sizes
from one pass).

Authors
-------
 * speechbrain-mrl developers
"""
import re

import speechbrain as sb
import torch
from tqdm import tqdm

from speechbrain_mrl.dataio import AudioError, check_waveforms, read_audio

__all__ = ["embed_manifest"]


def _dataset(rows, sample_rate):
    """DynamicItemDataset over manifest rows, providing ``sig``, longest first."""
    data = {}
    for uid, row in rows.items():
        item = {k: v for k, v in row.items() if k != "ID"}
        item["duration"] = float(item.get("duration") or 0.0)
        item.setdefault("start", 0)
        item.setdefault("stop", None)
        data[uid] = item
    ds = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return read_audio(wav, start, stop, sample_rate)

    sb.dataio.dataset.add_dynamic_item([ds], audio_pipeline)
    sb.dataio.dataset.set_output_keys([ds], ["id", "sig"])
    return ds.filtered_sorted(sort_key="duration", reverse=True)


def _name_utterance(err, ids, rows):
    """The message of a :func:`check_waveforms` error with its batch index replaced by the ID."""
    msg = str(err)
    m = re.match(r"utterance (\d+): (.*)", msg, re.S)
    if m and int(m.group(1)) < len(ids):
        uid = ids[int(m.group(1))]
        msg = f"utterance {uid} ({rows[uid].get('wav')}): {m.group(2)}"
    return msg


def embed_manifest(encoder, rows, batch_size=8, num_workers=0, sample_rate=16000, min_duration=0.0,
                   device="cpu", desc="embeddings"):
    """Embeds every manifest row once (batched, padding-aware).

    Arguments
    ---------
    encoder : MRLEncoder
        ``encoder(wavs [B, T], wav_lens [B]) -> [B, D]``, on ``device``; run
        in ``eval()`` (its previous mode is restored afterwards).
    rows : dict
        ``{ID: {"wav": path, "start": .., "stop": .., "duration": ..}}``
        (``start``/``stop`` in samples of the file, as
        :func:`speechbrain_mrl.dataio.read_manifest` returns them).
    batch_size, num_workers : int
        Data loading.
    sample_rate : int
        Model sample rate (audio is resampled to it).
    min_duration : float
        Shortest audio (seconds) the encoder accepts.
    device : str or torch.device
        Where the batches go.
    desc : str
        Progress-bar label.

    Returns
    -------
    ids : list of str
        Longest utterance first.
    embeddings : torch.Tensor
        ``[N, D]`` float32 on the CPU, in ``ids`` order.

    Raises
    ------
    AudioError
        Unreadable audio (naming the file), or a batch with empty, silent,
        NaN/Inf or too short audio (naming the utterance ID and its file).

    Example
    -------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> from speechbrain_mrl.encoder import MRLEncoder
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> folder = tempfile.mkdtemp()
    >>> rows = {}
    >>> for i, n in enumerate([8000, 12000]):
    ...     path = os.path.join(folder, f"{i}.wav")
    ...     sf.write(path, np.random.RandomState(i).randn(n).astype("float32") * 0.1, 16000)
    ...     rows[f"u{i}"] = {"wav": path, "start": 0, "stop": n, "duration": n / 16000}
    >>> ids, emb = embed_manifest(enc, rows, batch_size=2)
    >>> ids, emb.shape, emb.dtype
    (['u1', 'u0'], torch.Size([2, 8]), torch.float32)
    """
    if not rows:
        return [], torch.zeros(0, int(getattr(encoder, "embed_dim", 0)))
    min_samples = max(int(getattr(encoder, "min_samples", 1)), int(round(min_duration * sample_rate)))
    loader = sb.dataio.dataloader.make_dataloader(_dataset(rows, sample_rate), batch_size=batch_size,
                                                  num_workers=num_workers)
    was_training = encoder.training
    encoder.eval()
    ids, embs = [], []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
                wavs, lens = batch.sig
                try:
                    wavs, lens = check_waveforms(wavs, lens, min_samples=min_samples,
                                                 sample_rate=sample_rate)
                except AudioError as err:
                    raise AudioError(f"cannot embed batch {list(batch.id)}: "
                                     f"{_name_utterance(err, batch.id, rows)}") from err
                emb = encoder(wavs.to(device), lens.to(device))
                bad = [i for i, ok in zip(batch.id, torch.isfinite(emb).all(dim=1).tolist()) if not ok]
                if bad:
                    raise ValueError(f"the model gives NaN/Inf embeddings for {len(bad)} utterances "
                                     f"(its weights may be corrupt), e.g. {bad[:5]}")
                ids.extend(batch.id)
                embs.append(emb.detach().float().cpu())
    finally:
        encoder.train(was_training)
    return ids, torch.cat(embs)
