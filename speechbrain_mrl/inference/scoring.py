"""Trial-list scoring at every Matryoshka size: cosine, s-norm and adaptive s-norm.

:func:`score_trial_list` embeds each utterance of a VoxCeleb-format trial list
(``<1|0> <enrol> <test>``) once through the one embedding path (every size from one
pass), scores the trials with cosine similarity and, with a cohort of training
utterances, with s-norm and adaptive s-norm (top-k cohort), and reports EER and
minDCF (p_target 0.01 and 0.05, normalised) per size. ``speechbrain-mrl score`` and the
VoxCeleb recipe's ``speaker_verification_cosine.py`` are thin calls to it.

Trial entries map to manifest IDs by
:func:`speechbrain_mrl.data.manifests.trial_id_candidates`: the path without its
extension (the IDs of the recipes' preparations), with ``/`` as ``--``, or the path
itself (the IDs of ``--folder``); an entry in no manifest is an error. Trials are
scored in chunks (bounded memory on million-trial lists); the metrics come from
``speechbrain.utils.metric_stats`` for lists of up to ``toolkit_metrics_max_trials``
trials and from the equivalent sorted computation beyond.

Outputs in ``output_folder``: ``results.json``
(``{"<dim>": {"EER": %, "minDCF@0.01": .., "minDCF@0.05": .., "s-norm": {..}, "as-norm": {..}}}``),
``results.md``, ``scores_<dim>.txt`` (``enrol test label score``; with norms also
``scores_<dim>_s-norm.txt``, ``scores_<dim>_as-norm.txt``), ``scoring_info.json`` and,
with ``save_embeddings``, ``embeddings.pt`` (``{"ids", "embeddings" [N, D], "dims", "model"}``).
"""
import json
import logging
import pathlib
import random

from speechbrain_mrl.data.manifests import check_audio_files, read_manifest, read_trial_list
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.model.folder import model_fingerprint
from speechbrain_mrl.utils.files import save_torch_atomic, write_text_atomic
from speechbrain_mrl.utils.metrics import NORMS, cohort_groups, score_trials, verification_metrics

logger = logging.getLogger(__name__)

__all__ = ["score_trial_list", "scoring_encoder", "sample_cohort_rows"]


def scoring_encoder(model_folder=None, official_checkpoint=None, device="cpu", sample_rate=16000,
                 model=None):
    """``(encoder, name, embed_options, short_duration)`` for the Matryoshka model or the
    official checkpoint.

    ``encoder`` is an :class:`~speechbrain_mrl.model.encoder.MRLEncoder` on ``device``;
    ``embed_options`` are its settings for
    :func:`speechbrain_mrl.inference.embeddings.embed_manifest` (the model's own, so that
    a file is embedded here as ``encode_file`` embeds it; the defaults for an
    official checkpoint) and ``short_duration`` the shortest audio it embeds
    reliably, the cohort's minimum (0.5 s for an official checkpoint).
    """
    official = official_checkpoint
    if bool(model_folder) == bool(official):
        raise ValueError("give exactly one of --model_folder (Matryoshka model) and "
                         "--official_checkpoint (plain official ReDimNet)")
    if official:
        from speechbrain_mrl.model.official2 import load_official_backbone

        encoder = load_official_backbone(official).to(device).eval()  # ReDimNet or ReDimNet2
        options = {"sample_rate": int(sample_rate), "device": device}
        return encoder, f"official ReDimNet ({pathlib.Path(str(official)).name})", options, 0.5

    from speechbrain_mrl.inference.interface import load_model

    model = model if model is not None else load_model(model_folder, device)
    return (model.encoder, f"Matryoshka ReDimNet ({model_folder})", model.embedding_options(),
            max(model.min_duration, model.short_duration))


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


def write_reports(results, output_folder, name, dims, info):
    """Writes results.json, results.md and scoring_info.json."""
    output_folder = pathlib.Path(output_folder)
    write_text_atomic(output_folder / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(output_folder / "scoring_info.json", json.dumps(info, indent=2) + "\n")
    kinds = ["cosine"] + [k for k in NORMS if k in results[str(dims[0])]]
    lines = [f"# Speaker verification: {name}", "",
             f"Trials: `{info['trials']}` ({info['n_trials']} trials, {info['n_target']} target).",
             "minDCF normalised (c_miss = c_fa = 1, divided by min(p, 1 - p), as NIST reports it; "
             "results.json also holds `minDCF@<p>_unnormalized`).", ""]
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
    write_text_atomic(output_folder / "results.md", "\n".join(lines) + "\n")


def score_trial_list(trials, manifests, output_folder, model_folder=None, official_checkpoint=None,
                     cohort_csv=None, score_norm=NORMS, data_folder=None, sizes=None, batch_size=16,
                     num_workers=0, precision="fp32", device="cpu", save_embeddings=False,
                     cohort_type="speaker", cohort_max_utts=20000, cohort_topk=300,
                     trial_chunk_size=200000, toolkit_metrics_max_trials=5000, seed=1986,
                     sample_rate=16000, model=None):
    """Scores a trial list at every size; writes the reports; returns ``results``.

    Arguments
    ---------
    trials : str or os.PathLike
        VoxCeleb-format trial list.
    manifests : list or dict
        CSV manifests holding the trial utterances (e.g. enrol and test), or ``{ID: row}``
        rows (``--folder``).
    output_folder : str or os.PathLike
        Where the reports go.
    model_folder, official_checkpoint : str, optional
        Exactly one: a Matryoshka model (folder, hub id or shipped name), or an official
        ReDimNet checkpoint (file or release name) for side-by-side tables.
    cohort_csv : str, optional
        Manifest of training utterances: the cohort of score normalisation.
    score_norm : sequence of str
        Of :data:`~speechbrain_mrl.utils.metrics.NORMS` (used with ``cohort_csv``).
    data_folder : str, optional
        Replaces ``$data_root`` in the manifests.
    sizes : list of int, optional
        Sizes to score (default: every Matryoshka size).
    batch_size, num_workers, precision, device
        Embedding options.
    save_embeddings : bool
        Also write ``embeddings.pt``.
    cohort_type, cohort_max_utts, cohort_topk
        ``speaker`` (per-speaker means) or ``utterance`` cohort; at most this many random
        cohort utterances; adaptive s-norm over the top-k closest.
    trial_chunk_size, toolkit_metrics_max_trials
        Bounded memory; toolkit metrics up to this many trials.
    seed : int
        Seed of the cohort sample.
    sample_rate : int
        Rate of an official checkpoint.
    model : MRLEncoderClassifier, optional
        ``model_folder`` already loaded (e.g. on another runtime); default: loaded here.

    Returns
    -------
    dict
        ``{"<dim>": metrics}`` (see :func:`~speechbrain_mrl.utils.metrics.verification_metrics`).
    """
    out = pathlib.Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    norms = [k for k in (score_norm or []) if k]
    unknown = [k for k in norms if k not in NORMS]
    if unknown:
        raise ValueError(f"score_norm entries must be in {NORMS}, got {unknown}")
    encoder, name, embed_options, cohort_min = scoring_encoder(model_folder, official_checkpoint, device,
                                                            sample_rate, model)
    fingerprint = model_fingerprint(model_folder) if model_folder else None
    dims = list(encoder.mrl_dims)
    if sizes:
        bad = [d for d in sizes if d not in dims]
        if bad:
            raise ValueError(f"sizes {bad} are not sizes of the model ({dims})")
        dims = [int(d) for d in sizes]

    rows, (labels, enrol_ids, test_ids), names = read_trial_list(manifests, trials, data_folder)
    logger.info("%d trials over %d utterances", len(labels), len(rows))
    cohort_rows, n_short = {}, 0
    if cohort_csv and norms:
        cohort_rows, n_short = sample_cohort_rows(read_manifest(cohort_csv, data_folder),
                                                  cohort_max_utts, seed, cohort_min)
    check_audio_files(rows, "trial audio")
    check_audio_files(cohort_rows, f"cohort ({cohort_csv})")

    embed_opts = dict(embed_options, batch_size=int(batch_size), num_workers=int(num_workers),
                      precision=precision)
    ids, emb = embed_manifest(encoder, rows, desc="enrol/test embeddings", **embed_opts)
    index = {u: i for i, u in enumerate(ids)}
    if save_embeddings:
        save_torch_atomic({"ids": ids, "embeddings": emb, "dims": dims, "model": name},
                          out / "embeddings.pt")

    cohort, groups = None, None
    if cohort_rows:
        if n_short:
            logger.warning("cohort: %d train_csv rows shorter than %.2f s (the model's reliable "
                           "minimum) left out", n_short, cohort_min)
        cids, cohort = embed_manifest(encoder, cohort_rows, desc="cohort embeddings", **embed_opts)
        groups = cohort_groups(cids, cohort_rows, cohort_type)
        logger.info("cohort: %d utterances (%s)", cohort.shape[0], cohort_type)

    topk = int(cohort_topk)
    scores = score_trials(emb, index, labels, enrol_ids, test_ids, dims, cohort=cohort,
                          cohort_groups=groups, norms=tuple(norms), topk=topk,
                          chunk_size=int(trial_chunk_size),
                          device=device, score_dir=out, names=names)
    tk = int(toolkit_metrics_max_trials)
    results = {}
    for d in dims:
        r = verification_metrics(scores[d]["cosine"], labels, tk)
        for k in scores[d]:
            if k != "cosine":
                r[k] = verification_metrics(scores[d][k], labels, tk)
        results[str(d)] = r
    info = {"model": name, "model_sha256": fingerprint, "trials": str(trials),
            "n_trials": int(len(labels)),
            "n_target": int(labels.sum()), "n_utterances": len(ids),
            "cohort_utterances": 0 if cohort is None else int(cohort.shape[0]),
            "cohort_too_short": n_short,
            "cohort_speakers": None if groups is None else int(groups.max()) + 1,
            "cohort_type": cohort_type if cohort is not None else None,
            "cohort_topk": topk, "dims": dims}
    write_reports(results, out, name, dims, info)
    for d in dims:
        r = results[str(d)]
        logger.info("size %d: EER %.3f%% minDCF@0.01 %.4f", d, r["EER"], r["minDCF@0.01"])
    return results
