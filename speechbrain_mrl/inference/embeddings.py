"""The one embedding path: audio rows in, full-size embeddings out.

Every command that embeds audio (scoring, extraction, enrolment and search,
verification) and :meth:`MRLEncoderClassifier.encode_file
<speechbrain_mrl.inference.interface.MRLEncoderClassifier.encode_file>` embed a file the
same way: read with :func:`speechbrain_mrl.data.audio.read_row_audio` (mono, at the
model rate), checked, and embedded with :meth:`MRLEncoder.embed
<speechbrain_mrl.model.encoder.MRLEncoder.embed>`, which pools audio longer than
``long_audio_seconds`` window by window. :func:`embed_manifest` batches the
rows by length (a long recording alone, so that it is never padded into a
batch) and reads them with DataLoader workers.

Bad audio (unreadable, empty, silent, NaN/Inf, too short) is handled by the
caller's choice: raised as :class:`~speechbrain_mrl.data.audio.AudioError` naming
the utterance and its file, or skipped and listed with the reason. Audio the
model embeds but shorter than its ``short_duration`` gets one
:class:`~speechbrain_mrl.data.audio.ShortAudioWarning` per call, as from
``encode_file``.

Authors
-------
 * speechbrain-mrl developers
"""
import speechbrain as sb
import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from speechbrain_mrl.data.audio import AudioError, read_row_audio, signal_problem, warn_short

__all__ = ["embed_manifest", "PRECISIONS"]

#: Autocast settings of the embedding path: ``fp32`` (none), ``fp16``, ``bf16``.
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _dataset(rows, sample_rate, min_samples):
    """DynamicItemDataset providing ``(id, waveform or None, reason)`` of each row."""
    data = {uid: {"row": row} for uid, row in rows.items()}
    ds = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("row")
    @sb.utils.data_pipeline.provides("sig", "problem")
    def audio_pipeline(row):
        try:
            wav = read_row_audio(row, sample_rate)
        except Exception as err:  # noqa: BLE001 - reported per file by the caller's policy
            yield None
            yield f"unreadable ({err})"
            return
        if wav.numel() < min_samples:
            yield None
            yield (f"too short ({wav.numel() / sample_rate:.3f} s < minimum "
                   f"{min_samples / sample_rate:.3f} s)")
            return
        problem = signal_problem(wav)
        yield None if problem else wav
        yield problem or ""

    sb.dataio.dataset.add_dynamic_item([ds], audio_pipeline)
    sb.dataio.dataset.set_output_keys([ds], ["id", "sig", "problem"])
    return ds


def _batches(ids, rows, batch_size, long_seconds):
    """Positions of ``ids`` in batches, longest first; a recording above ``long_seconds`` alone."""
    duration = [float(rows[u].get("duration") or 0.0) for u in ids]
    order = sorted(range(len(ids)), key=lambda i: (-duration[i], i))
    long = [[i] for i in order if long_seconds is not None and duration[i] > long_seconds]
    rest = [i for i in order if long_seconds is None or duration[i] <= long_seconds]
    return long + [rest[i:i + batch_size] for i in range(0, len(rest), batch_size)]


def _collate(items):
    return items


def embed_manifest(encoder, rows, batch_size=16, num_workers=0, sample_rate=16000,
                   min_duration=0.0, long_audio_seconds=60.0, window_seconds=30.0,
                   device="cpu", precision="fp32", skipped=None, desc="embeddings", progress=True,
                   short_duration=0.0):
    """Embeds every manifest row once, in length-bucketed padded batches.

    Arguments
    ---------
    encoder : MRLEncoder
        ``encoder.embed(wavs, wav_lens, ...) -> [B, D]``, on ``device``; run in
        ``eval()`` (its previous mode is restored afterwards).
    rows : dict
        ``{ID: {"wav": path, "start": .., "stop": .., "duration": ..}}``
        (``start``/``stop`` in samples of the file; ``duration`` in seconds,
        used to batch by length), as :func:`speechbrain_mrl.data.sources.read_sources`
        returns them.
    batch_size, num_workers : int
        Data loading.
    sample_rate : int
        Model sample rate (audio is resampled to it).
    min_duration : float
        Shortest audio (seconds) the model accepts (never below what its front
        end needs).
    long_audio_seconds : float or None
        Audio longer than this is embedded window by window (None: never).
    window_seconds : float
        Window length for long audio.
    device : str or torch.device
        Where the batches go.
    precision : str
        ``fp32``, or ``fp16``/``bf16`` autocast (:data:`PRECISIONS`).
    skipped : list, optional
        The bad-audio policy. None: bad audio raises :class:`AudioError`.
        A list: each bad row is left out and ``(ID, wav, reason)`` appended.
    desc : str
        Progress-bar label.
    progress : bool
        Show a progress bar.
    short_duration : float
        Audio shorter than this (seconds) is embedded with one
        :class:`~speechbrain_mrl.data.audio.ShortAudioWarning` for the call, naming
        the first such utterances (0: never warn).

    Returns
    -------
    ids : list of str
        The embedded rows, in the order of ``rows``.
    embeddings : torch.Tensor
        ``[N, D]`` float32 on the CPU, in ``ids`` order.

    Raises
    ------
    AudioError
        Bad audio (without ``skipped``), naming the utterance ID and its file.
    ValueError
        NaN/Inf embeddings (without ``skipped``): the model's weights are corrupt.

    Example
    -------
    >>> import os, tempfile
    >>> import numpy as np, soundfile as sf
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> folder = tempfile.mkdtemp()
    >>> rows = {}
    >>> for i, n in enumerate([8000, 12000, 4000]):
    ...     path = os.path.join(folder, f"{i}.wav")
    ...     sf.write(path, np.random.RandomState(i).randn(n).astype("float32") * 0.1 * (i < 2), 16000)
    ...     rows[f"u{i}"] = {"wav": path, "duration": n / 16000}
    >>> skipped = []
    >>> ids, emb = embed_manifest(enc, rows, batch_size=2, skipped=skipped, progress=False)
    >>> ids, emb.shape, emb.dtype, skipped[0][::2]
    (['u0', 'u1'], torch.Size([2, 8]), torch.float32, ('u2', 'all zeros (silence)'))
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    uids = list(rows)
    if not uids:
        return [], torch.zeros(0, int(encoder.embed_dim))
    min_samples = max(int(encoder.min_samples), int(round(float(min_duration) * sample_rate)))
    long_samples = None if long_audio_seconds is None else float(long_audio_seconds) * sample_rate
    window_samples = int(round(float(window_seconds) * sample_rate))
    dataset = _dataset(rows, sample_rate, min_samples)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_batches(uids, rows, int(batch_size), long_audio_seconds),
        num_workers=int(num_workers), collate_fn=_collate)
    device = torch.device(device)
    autocast = PRECISIONS[precision]
    short_samples = int(round(float(short_duration) * sample_rate))
    done, short = {}, {}  # short: ID -> samples of the embedded audio under short_samples
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), tqdm(total=len(uids), desc=desc, dynamic_ncols=True,
                                   disable=not progress) as bar:
            for items in loader:
                good = []
                for item in items:
                    if item["sig"] is not None:
                        good.append(item)
                    elif skipped is None:
                        raise AudioError(f"utterance {item['id']} ({rows[item['id']]['wav']}): "
                                         f"{item['problem']}")
                    else:
                        skipped.append((item["id"], rows[item["id"]]["wav"], item["problem"]))
                short.update((item["id"], item["sig"].numel()) for item in good
                             if item["sig"].numel() < short_samples)
                if good:
                    wavs, lens = batch_pad_right([item["sig"] for item in good])
                    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                        emb = encoder.embed(wavs.to(device), lens.to(device), long_samples,
                                            window_samples)
                    emb = emb.detach().float().cpu()
                    finite = torch.isfinite(emb).all(dim=1).tolist()
                    bad = [item["id"] for item, ok in zip(good, finite) if not ok]
                    if bad and skipped is None:
                        raise ValueError(f"the model gives NaN/Inf embeddings for {len(bad)} "
                                         f"utterances (its weights may be corrupt), e.g. {bad[:5]}")
                    if bad:
                        skipped.extend((u, rows[u]["wav"], "NaN/Inf embedding") for u in bad)
                    done.update((item["id"], row) for item, row, ok in zip(good, emb, finite) if ok)
                bar.update(len(items))
    finally:
        encoder.train(was_training)
    short = {u: short[u] for u in uids if u in short and u in done}  # input order
    if short:
        longest = max(short.values())
        warn_short(torch.tensor(list(short.values())) / longest, longest, short_samples,
                   sample_rate, names=list(short))
    ids = [u for u in uids if u in done]
    if not ids:
        return [], torch.zeros(0, int(encoder.embed_dim))
    return ids, torch.stack([done[u] for u in ids])
