#!/usr/bin/env python3
"""Cosine speaker verification of Matryoshka embeddings, every size at once.

Computes each enrol/test utterance's embedding once (one forward pass gives
all Matryoshka sizes), scores a VoxCeleb-format trial list
(``<1|0> <enrol path> <test path>``) with cosine similarity and, when a
cohort of training utterances is given, with s-norm and adaptive s-norm
(top-k cohort), and reports EER and minDCF (p_target 0.01 and 0.05) per size.

Run::

    python speaker_verification_cosine.py hparams/verification.yaml \\
        --model_folder=results/mrl_b2/model --enrol_csv=data/enrol.csv \\
        --test_csv=data/test.csv --trials=data/veri_test2.txt \\
        --train_csv=data/train.csv --output_folder=results/scoring_b2 --device=cuda:0

    # the official ReDimNet embedding (no Matryoshka head), for side-by-side tables
    python speaker_verification_cosine.py hparams/verification.yaml \\
        --official_checkpoint=b2-vox2-ptn.pt ... --output_folder=results/scoring_official

Outputs in ``output_folder``: ``results.json``
(``{"<dim>": {"EER": %, "minDCF@0.01": .., "minDCF@0.05": .., "s-norm": {..}, "as-norm": {..}}}``),
``results.md``, ``scores_<dim>.txt`` (``enrol test label score``, with the
paths of the trial list; plus ``scores_<dim>_s-norm.txt`` /
``scores_<dim>_as-norm.txt``), ``scoring_info.json`` and, with ``save_embeddings``, ``embeddings.pt``
(``{"ids", "embeddings" [N, D] full size, "dims", "model"}``).

Trial paths map to manifest IDs as written by ``voxceleb_prepare.py``: the
path without extension (``id10270/x/00001``), or with ``/`` replaced by ``--``.
Trials are scored in chunks (``trial_chunk_size``) and the metrics are
computed by sorting, so a million trials fit in bounded memory; for small
lists (``toolkit_metrics_max_trials``) the metrics come straight from
``speechbrain.utils.metric_stats.EER`` / ``minDCF`` (the sorted computation
gives the same numbers, and is used beyond that size because the toolkit
functions are quadratic). Peak memory of the scoring is about
``2 * trial_chunk_size * dim * 4`` bytes on top of the embeddings.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import logging
import pathlib
import random
import sys

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio import audio_io
from speechbrain.utils.metric_stats import EER, minDCF
from tqdm import tqdm

logger = logging.getLogger(__name__)

NORMS = ("s-norm", "as-norm")
P_TARGETS = (0.01, 0.05)


# --------------------------------------------------------------------------- trials
def trial_id_candidates(path):
    """Manifest IDs a trial-list path may have, most likely first.

    Example
    -------
    >>> trial_id_candidates("id10270/5r0dWxy17C8/00001.wav")
    ['id10270/5r0dWxy17C8/00001', 'id10270--5r0dWxy17C8--00001', 'id10270/5r0dWxy17C8/00001.wav']
    """
    path = path.replace("\\", "/")
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    out = [stem, stem.replace("/", "--"), path]
    return list(dict.fromkeys(out))


def read_trials(path, known_ids, names=None):
    """Reads a trial list and maps its paths to manifest IDs.

    Arguments
    ---------
    path : str or os.PathLike
        ``<1|0> <enrol path> <test path>`` per line.
    known_ids : collection of str
        IDs of the enrol/test manifests.
    names : dict, optional
        Filled with ``{ID: path as written in the trial list}``.

    Returns
    -------
    labels : numpy.ndarray
        ``int8`` labels.
    enrol_ids, test_ids : list of str
        Manifest IDs per trial.
    """
    known_ids = set(known_ids)
    cache = {}

    def resolve(p, n):
        if p in cache:
            return cache[p]
        for cand in trial_id_candidates(p):
            if cand in known_ids:
                cache[p] = cand
                if names is not None:
                    names.setdefault(cand, p)
                return cand
        raise ValueError(
            f"{path}:{n}: '{p}' is not in the enrol/test manifests (tried IDs "
            f"{trial_id_candidates(p)})"
        )

    labels, enrol, test = [], [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected '<1|0> <enrol> <test>', got {line.strip()!r}")
            labels.append(int(parts[0]))
            enrol.append(resolve(parts[1], n))
            test.append(resolve(parts[2], n))
    if not labels:
        raise ValueError(f"trial list {path} is empty")
    return np.asarray(labels, dtype=np.int8), enrol, test


# --------------------------------------------------------------------------- audio
def read_segment(path, start=0, stop=None, sample_rate=16000):
    """Mono float waveform of samples ``[start, stop)`` of a file, at ``sample_rate``."""
    start = int(start or 0)
    stop = None if stop in (None, "", "None") else int(stop)
    num = -1 if stop is None else max(stop - start, 0)
    try:
        sig, sr = audio_io.load(str(path), channels_first=False, frame_offset=start,
                               num_frames=num)
    except Exception:  # noqa: BLE001 - m4a etc.: decode with torchcodec
        from torchcodec.decoders import AudioDecoder

        try:
            dec = AudioDecoder(str(path))
            sr = int(dec.metadata.sample_rate)
            samples = dec.get_samples_played_in_range(start / sr, None if stop is None else stop / sr)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"cannot read audio file {path}: {err}") from err
        sig = samples.data.T
    sig = sig.float()
    if sig.dim() == 2:
        sig = sig.mean(dim=1)
    if sr != sample_rate:
        sig = torchaudio.functional.resample(sig, sr, sample_rate)
    return sig


def make_dataset(rows, sample_rate):
    """DynamicItemDataset over manifest rows, providing ``sig``, longest first."""
    data = {}
    for uid, row in rows.items():
        item = {k: v for k, v in row.items() if k != "ID"}
        item["duration"] = float(item.get("duration") or 0.0)
        data[uid] = item
    ds = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return read_segment(wav, start, stop, sample_rate)

    sb.dataio.dataset.add_dynamic_item([ds], audio_pipeline)
    sb.dataio.dataset.set_output_keys([ds], ["id", "sig"])
    return ds.filtered_sorted(sort_key="duration", reverse=True)


def load_rows(csv_path, data_folder=None):
    """Manifest rows ``{ID: row}`` (``$data_root`` replaced by ``data_folder``)."""
    replacements = {"data_root": str(data_folder)} if data_folder else {}
    return sb.dataio.dataio.load_data_csv(str(csv_path), replacements=replacements)


@torch.no_grad()
def compute_embeddings(embed_fn, rows, batch_size=8, num_workers=0, sample_rate=16000,
                       desc="embeddings"):
    """Embeds every manifest row once (batched, padding-aware).

    Arguments
    ---------
    embed_fn : callable
        ``(wavs [B, T], rel_lens [B]) -> [B, D]`` full-size embeddings.
    rows : dict
        ``{ID: {"wav": path, "start": .., "stop": .., "duration": ..}}``.
    batch_size, num_workers : int
        Data loading.
    sample_rate : int
        Model sample rate.
    desc : str
        Progress-bar label.

    Returns
    -------
    ids : list of str
    embeddings : torch.Tensor
        ``[N, D]`` float32 on the CPU, in ``ids`` order.
    """
    if not rows:
        return [], torch.zeros(0, 0)
    ds = make_dataset(rows, sample_rate)
    loader = sb.dataio.dataloader.make_dataloader(ds, batch_size=batch_size,
                                                  num_workers=num_workers)
    ids, embs = [], []
    for batch in tqdm(loader, desc=desc, dynamic_ncols=True):
        wavs, lens = batch.sig
        try:
            emb = embed_fn(wavs, lens)
        except ValueError as err:
            raise ValueError(f"cannot embed batch {batch.id}: {err}") from err
        ids.extend(batch.id)
        embs.append(emb.detach().float().reshape(len(batch.id), -1).cpu())
    return ids, torch.cat(embs)


# --------------------------------------------------------------------------- metrics
def error_rates(positive_scores, negative_scores, p_targets=P_TARGETS):
    """EER and minDCF with the definitions of ``speechbrain.utils.metric_stats``.

    Thresholds are the unique scores and the midpoints between them; a trial
    is accepted when its score is above the threshold. Computed by sorting
    (``O(N log N)`` time, ``O(N)`` memory) instead of the toolkit's
    quadratic loops; the numbers are the same.

    Arguments
    ---------
    positive_scores, negative_scores : torch.Tensor
        Target and non-target scores.
    p_targets : tuple of float
        Priors of the minDCF (``c_miss = c_fa = 1``).

    Returns
    -------
    dict
        ``EER`` (fraction), ``EER_threshold``, ``minDCF@<p>``, ``minDCF@<p>_threshold``.

    Example
    -------
    >>> pos, neg = torch.tensor([0.6, 0.7, 0.8, 0.5]), torch.tensor([0.4, 0.3, 0.55, 0.1])
    >>> r = error_rates(pos, neg)
    >>> round(r["EER"], 4) == round(EER(pos, neg)[0], 4), r["minDCF@0.01"] == minDCF(pos, neg)[0]
    (True, True)
    """
    pos = positive_scores.detach().float().flatten().cpu()
    neg = negative_scores.detach().float().flatten().cpu()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"need target and non-target trials, got {pos.numel()} and {neg.numel()}")
    thr = torch.unique(torch.cat([pos, neg]))  # sorted
    thr = torch.sort(torch.cat([thr, (thr[:-1] + thr[1:]) / 2]))[0]
    pos_s, neg_s = torch.sort(pos)[0], torch.sort(neg)[0]
    frr = torch.searchsorted(pos_s, thr, right=True).float() / pos.numel()
    far = (neg.numel() - torch.searchsorted(neg_s, thr, right=True)).float() / neg.numel()
    i = int(torch.argmin((far - frr).abs()))
    out = {"EER": float((far[i].item() + frr[i].item()) / 2), "EER_threshold": float(thr[i])}
    for p in p_targets:
        c_det = frr * p + far * (1 - p)
        j = int(torch.argmin(c_det))
        out[f"minDCF@{p:g}"] = float(c_det[j])
        out[f"minDCF@{p:g}_threshold"] = float(thr[j])
    return out


def verification_metrics(scores, labels, toolkit_max_trials=5000):
    """EER (%) and minDCF of one score set.

    Uses ``speechbrain.utils.metric_stats.EER`` / ``minDCF`` up to
    ``toolkit_max_trials`` trials and :func:`error_rates` above.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    labels = torch.as_tensor(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if scores.numel() <= toolkit_max_trials:
        eer, eer_thr = EER(pos, neg)
        res = {"EER": eer, "EER_threshold": eer_thr}
        for p in P_TARGETS:
            dcf, dcf_thr = minDCF(pos, neg, p_target=p)
            res[f"minDCF@{p:g}"] = dcf
            res[f"minDCF@{p:g}_threshold"] = dcf_thr
        backend = "speechbrain.utils.metric_stats"
    else:
        res = error_rates(pos, neg)
        backend = "sorted"
    out = {"EER": 100.0 * res["EER"]}
    for p in P_TARGETS:
        out[f"minDCF@{p:g}"] = res[f"minDCF@{p:g}"]
    for p in P_TARGETS:  # normalised by the cost of the best trivial system
        out[f"minDCF@{p:g}_normalized"] = res[f"minDCF@{p:g}"] / min(p, 1 - p)
    out["EER_threshold"] = res["EER_threshold"]
    out["n_trials"] = int(scores.numel())
    out["n_target"] = int(pos.numel())
    out["metric_backend"] = backend
    return out


# --------------------------------------------------------------------------- scoring
def cohort_statistics(emb, cohort, topk=300, chunk=4096, device="cpu"):
    """Per-utterance mean/std of its cosine scores against a cohort.

    Arguments
    ---------
    emb : torch.Tensor
        ``[N, d]`` L2-normalised utterance embeddings.
    cohort : torch.Tensor
        ``[M, d]`` L2-normalised cohort embeddings.
    topk : int
        Size of the adaptive cohort (the ``topk`` closest cohort entries).
    chunk : int
        Utterances per matrix product.
    device : str
        Where the products run.

    Returns
    -------
    dict of str to torch.Tensor
        ``mean``, ``std`` (whole cohort) and ``mean_top``, ``std_top``
        (adaptive cohort), each ``[N]`` on the CPU.
    """
    k = max(1, min(int(topk), cohort.shape[0]))
    coh = cohort.to(device)
    stats = {"mean": [], "std": [], "mean_top": [], "std_top": []}
    for i in range(0, emb.shape[0], chunk):
        s = emb[i:i + chunk].to(device) @ coh.T
        top = torch.topk(s, k, dim=1).values
        stats["mean"].append(s.mean(1).cpu())
        stats["std"].append(s.std(1, unbiased=cohort.shape[0] > 1).cpu())
        stats["mean_top"].append(top.mean(1).cpu())
        stats["std_top"].append(top.std(1, unbiased=k > 1).cpu())
    return {key: torch.cat(v) for key, v in stats.items()}


def normalise(scores, e_idx, t_idx, stats, kind, eps=1e-8):
    """Symmetric score normalisation: ``s-norm`` (whole cohort) or ``as-norm`` (top-k)."""
    sfx = "" if kind == "s-norm" else "_top"
    mu, sd = stats["mean" + sfx], stats["std" + sfx]
    ze = (scores - mu[e_idx]) / sd[e_idx].clamp_min(eps)
    zt = (scores - mu[t_idx]) / sd[t_idx].clamp_min(eps)
    return 0.5 * (ze + zt)


def score_trials(emb, index, labels, enrol_ids, test_ids, dims, cohort=None, cohort_groups=None,
                 norms=NORMS, topk=300, chunk_size=200000, device="cpu", score_dir=None, progress=True,
                 names=None):
    """Scores a trial list for every size (cosine and, with a cohort, s-norm / as-norm).

    Arguments
    ---------
    emb : torch.Tensor
        ``[N, D]`` full-size utterance embeddings (rows of ``index``).
    index : dict of str to int
        Utterance ID -> row of ``emb``.
    labels : numpy.ndarray
        Trial labels (1 target, 0 non-target).
    enrol_ids, test_ids : list of str
        Utterance IDs per trial.
    dims : list of int
        Sizes to score (prefixes of ``emb``).
    cohort : torch.Tensor, optional
        ``[M, D]`` full-size cohort utterance embeddings.
    cohort_groups : torch.Tensor, optional
        ``[M]`` speaker index per cohort utterance: the cohort is then the
        speaker means (per size, of normalised prefixes); None: utterances.
    norms : tuple of str
        Normalisations to run when a cohort is given.
    topk : int
        Adaptive s-norm cohort size.
    chunk_size : int
        Trials per chunk (bounds memory for million-trial lists).
    device : str
        Where scoring runs.
    score_dir : pathlib.Path, optional
        Where to write ``scores_<dim>[_<norm>].txt``.
    progress : bool
        Show progress bars.
    names : dict, optional
        ``{ID: name}`` written in the score files (e.g. the trial-list paths);
        default: the IDs.

    Returns
    -------
    dict of int to dict of str to numpy.ndarray
        ``{dim: {"cosine": scores, "s-norm": .., "as-norm": ..}}``.
    """
    e_idx = torch.as_tensor([index[i] for i in enrol_ids], dtype=torch.long)
    t_idx = torch.as_tensor([index[i] for i in test_ids], dtype=torch.long)
    n = len(labels)
    names = names or {}
    kinds = ["cosine"] + (list(norms) if cohort is not None else [])
    out = {}
    for d in dims:
        u = F.normalize(emb[:, :d].float(), dim=1)
        stats = None
        if cohort is not None:
            c = cohort_matrix(cohort, d, cohort_groups)
            stats = cohort_statistics(u, c, topk=topk, device=device)
        u_dev = u.to(device)
        res = {k: np.empty(n, dtype=np.float32) for k in kinds}
        files = {}
        if score_dir is not None:
            for k in kinds:
                name = f"scores_{d}.txt" if k == "cosine" else f"scores_{d}_{k}.txt"
                files[k] = open(pathlib.Path(score_dir) / name, "w")
        try:
            bar = tqdm(range(0, n, chunk_size), desc=f"scoring size {d}", disable=not progress,
                       dynamic_ncols=True)
            for a in bar:
                b = min(a + chunk_size, n)
                ei, ti = e_idx[a:b], t_idx[a:b]
                s = (u_dev[ei.to(device)] * u_dev[ti.to(device)]).sum(1).cpu()
                res["cosine"][a:b] = s.numpy()
                for k in kinds[1:]:
                    res[k][a:b] = normalise(s, ei, ti, stats, k).numpy()
                if files:
                    pairs = [(names.get(enrol_ids[j], enrol_ids[j]),
                              names.get(test_ids[j], test_ids[j]), int(labels[j]))
                             for j in range(a, b)]
                for k, fh in files.items():
                    col = res[k]
                    fh.writelines(f"{e} {t} {lab} {col[a + i]:.6f}\n"
                                  for i, (e, t, lab) in enumerate(pairs))
        finally:
            for fh in files.values():
                fh.close()
        out[d] = res
    return out


# --------------------------------------------------------------------------- models
def load_embedder(hparams, device):
    """``(embed_fn, dims, name, min_duration)`` for the Matryoshka model or the official checkpoint.

    ``min_duration`` (seconds) is the shortest audio the model accepts (0 for an
    official checkpoint).
    """
    model_folder = hparams.get("model_folder")
    official = hparams.get("official_checkpoint")
    if bool(model_folder) == bool(official):
        raise ValueError("give exactly one of --model_folder (Matryoshka model) and "
                         "--official_checkpoint (plain official ReDimNet)")
    if official:
        from speechbrain_mrl.official import load_official_redimnet

        enc = load_official_redimnet(official).to(device).eval()

        def embed(wavs, lens):
            return enc(wavs.to(device), lens.to(device))

        dims = [int(enc.embed_dim)]
        return embed, dims, f"official ReDimNet ({pathlib.Path(str(official)).name})", 0.0

    from speechbrain_mrl.inference import MRLEncoderClassifier

    model = MRLEncoderClassifier.from_hparams(source=str(model_folder),
                                              run_opts={"device": str(device)})

    def embed(wavs, lens):
        return model.encode_batch(wavs, lens)[:, 0]

    dims = list(model.mrl_dims)
    return embed, dims, f"Matryoshka ReDimNet ({model_folder})", model.min_duration


def sample_cohort_rows(rows, max_utts, seed, min_duration=0.0):
    """At most ``max_utts`` rows of at least ``min_duration`` s, sampled with a fixed seed.

    Returns ``(rows, n_too_short)``: shorter rows are left out of the cohort
    (the model cannot embed them) and counted.

    Example
    -------
    >>> rows = {"a": {"duration": "1.0"}, "b": {"duration": "0.2"}, "c": {"duration": 2}}
    >>> kept, short = sample_cohort_rows(rows, None, 0, min_duration=0.5)
    >>> sorted(kept), short
    (['a', 'c'], 1)
    """
    keys = sorted(k for k, r in rows.items() if float(r["duration"]) >= min_duration)
    n_short = len(rows) - len(keys)
    if max_utts and len(keys) > max_utts:
        keys = sorted(random.Random(seed).sample(keys, int(max_utts)))
    return {k: rows[k] for k in keys}, n_short


def cohort_groups(ids, rows, cohort_type):
    """Speaker index per cohort utterance (``speaker`` cohort) or None (``utterance``)."""
    if cohort_type == "utterance":
        return None
    if cohort_type != "speaker":
        raise ValueError(f"cohort_type must be 'speaker' or 'utterance', got {cohort_type!r}")
    spk = [rows[i].get("spk_id") for i in ids]
    if any(s in (None, "") for s in spk):
        raise ValueError("cohort_type=speaker needs a spk_id column in train_csv")
    pos = {s: i for i, s in enumerate(sorted(set(spk)))}
    return torch.as_tensor([pos[s] for s in spk], dtype=torch.long)


def cohort_matrix(cohort, d, groups=None):
    """L2-normalised size-``d`` cohort: utterances, or speaker means of normalised prefixes.

    Example
    -------
    >>> c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    >>> cohort_matrix(c, 2, torch.tensor([0, 1, 0]))
    tensor([[1., 0.],
            [0., 1.]])
    """
    c = F.normalize(cohort[:, :d].float(), dim=1)
    if groups is None:
        return c
    n = int(groups.max()) + 1
    sums = torch.zeros(n, d).index_add_(0, groups, c)
    return F.normalize(sums, dim=1)


# --------------------------------------------------------------------------- report
def write_reports(results, output_folder, name, dims, info):
    """Writes results.json, results.md and scoring_info.json."""
    output_folder = pathlib.Path(output_folder)
    (output_folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_folder / "scoring_info.json").write_text(json.dumps(info, indent=2) + "\n")
    kinds = ["cosine"] + [k for k in NORMS if k in results[str(dims[0])]]
    lines = [f"# Speaker verification: {name}", "",
             f"Trials: `{info['trials']}` ({info['n_trials']} trials, {info['n_target']} target).",
             "minDCF as `speechbrain.utils.metric_stats.minDCF` returns it (c_miss = c_fa = 1, "
             "not normalised; results.json also holds `minDCF@<p>_normalized`).", ""]
    head = "| size |" + "".join(
        f" EER % ({k}) | minDCF@0.01 ({k}) | minDCF@0.05 ({k}) |" for k in kinds)
    lines += [head, "|---:|" + "---:|" * (3 * len(kinds))]
    for d in dims:
        r = results[str(d)]
        cells = []
        for k in kinds:
            m = r if k == "cosine" else r[k]
            cells += [f"{m['EER']:.3f}", f"{m['minDCF@0.01']:.4f}", f"{m['minDCF@0.05']:.4f}"]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    (output_folder / "results.md").write_text("\n".join(lines) + "\n")


def run(hparams, device="cpu"):
    """Runs the whole scoring from loaded hyperparameters; returns the results dict."""
    out = pathlib.Path(hparams["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    sr = int(hparams.get("sample_rate", 16000))
    embed, dims, name, min_duration = load_embedder(hparams, device)
    if hparams.get("dims"):
        bad = [d for d in hparams["dims"] if d not in dims]
        if bad:
            raise ValueError(f"dims {bad} are not sizes of the model ({dims})")
        dims = [int(d) for d in hparams["dims"]]

    data_folder = hparams.get("data_folder")
    rows = load_rows(hparams["enrol_csv"], data_folder)
    rows.update(load_rows(hparams["test_csv"], data_folder))
    names = {}
    labels, enrol_ids, test_ids = read_trials(hparams["trials"], rows, names)
    needed = set(enrol_ids) | set(test_ids)
    rows = {k: v for k, v in rows.items() if k in needed}
    logger.info("%d trials over %d utterances", len(labels), len(rows))

    bs, nw = int(hparams.get("batch_size", 8)), int(hparams.get("num_workers", 0))
    ids, emb = compute_embeddings(embed, rows, bs, nw, sr, desc="enrol/test embeddings")
    index = {u: i for i, u in enumerate(ids)}
    if hparams.get("save_embeddings"):
        torch.save({"ids": ids, "embeddings": emb, "dims": dims, "model": name},
                   out / "embeddings.pt")

    cohort, groups, n_short = None, None, 0
    norms = [k for k in (hparams.get("score_norm") or []) if k]
    unknown = [k for k in norms if k not in NORMS]
    if unknown:
        raise ValueError(f"score_norm entries must be in {NORMS}, got {unknown}")
    if hparams.get("train_csv") and norms:
        crows, n_short = sample_cohort_rows(load_rows(hparams["train_csv"], data_folder),
                                            hparams.get("cohort_max_utts"), hparams.get("seed", 1986),
                                            min_duration)
        if n_short:
            logger.warning("cohort: %d train_csv rows shorter than the model's minimum of %.2f s "
                           "left out", n_short, min_duration)
        cids, cohort = compute_embeddings(embed, crows, bs, nw, sr, desc="cohort embeddings")
        groups = cohort_groups(cids, crows, hparams.get("cohort_type", "speaker"))
        logger.info("cohort: %d utterances (%s)", cohort.shape[0], hparams.get("cohort_type"))

    scores = score_trials(emb, index, labels, enrol_ids, test_ids, dims, cohort=cohort,
                          cohort_groups=groups, norms=tuple(norms), topk=int(hparams.get("cohort_topk", 300)),
                          chunk_size=int(hparams.get("trial_chunk_size", 200000)),
                          device=device, score_dir=out, names=names)
    tk = int(hparams.get("toolkit_metrics_max_trials", 5000))
    results = {}
    for d in dims:
        r = verification_metrics(scores[d]["cosine"], labels, tk)
        for k in scores[d]:
            if k != "cosine":
                r[k] = verification_metrics(scores[d][k], labels, tk)
        results[str(d)] = r
    info = {"model": name, "trials": str(hparams["trials"]), "n_trials": int(len(labels)),
            "n_target": int(labels.sum()), "n_utterances": len(ids),
            "cohort_utterances": 0 if cohort is None else int(cohort.shape[0]),
            "cohort_too_short": n_short,
            "cohort_speakers": None if groups is None else int(groups.max()) + 1,
            "cohort_type": hparams.get("cohort_type") if cohort is not None else None,
            "cohort_topk": int(hparams.get("cohort_topk", 300)), "dims": dims}
    write_reports(results, out, name, dims, info)
    for d in dims:
        r = results[str(d)]
        logger.info("size %d: EER %.3f%% minDCF@0.01 %.4f", d, r["EER"], r["minDCF@0.01"])
    return results


def main(argv=None):
    """Command-line entry point (SpeechBrain-style: yaml file + overrides)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    device = run_opts["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu")
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return run(hparams, device)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
