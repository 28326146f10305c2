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

Trial-list entries map to manifest IDs as written by ``speechbrain_mrl.data.voxceleb.prepare_voxceleb``
(:func:`speechbrain_mrl.data.manifests.trial_id_candidates`): the path without
extension (``id10270/x/00001``), or with ``/`` replaced by ``--``; an entry in
no manifest is an error. Embeddings come from the one embedding path,
:func:`speechbrain_mrl.inference.embeddings.embed_manifest`, with the model's own settings
(long recordings window by window; silent, NaN or too short audio is an error
naming the utterance; cohort rows shorter than the model's
``short_duration`` are left out and counted). Trials are scored in chunks
(``trial_chunk_size``) by :func:`speechbrain_mrl.utils.metrics.score_trials`, and
the metrics (:func:`speechbrain_mrl.utils.metrics.verification_metrics`) come from
``speechbrain.utils.metric_stats.EER`` / ``minDCF`` for lists of up to
``toolkit_metrics_max_trials`` trials and from the equivalent sorted
computation beyond (the toolkit functions are quadratic), so a million trials
fit in bounded memory: about ``2 * trial_chunk_size * dim * 4`` bytes on top
of the embeddings.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import logging
import pathlib
import random
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_mrl.utils.files import save_torch_atomic, write_text_atomic
from speechbrain_mrl.data.manifests import check_audio_files, read_manifest, read_trial_list
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.utils.metrics import NORMS, cohort_groups, score_trials, verification_metrics
from speechbrain_mrl.model.folder import model_fingerprint

logger = logging.getLogger(__name__)


def load_encoder(hparams, device):
    """``(encoder, name, embed_options, short_duration)`` for the Matryoshka model or the
    official checkpoint.

    ``encoder`` is an :class:`~speechbrain_mrl.model.encoder.MRLEncoder` on ``device``;
    ``embed_options`` are its settings for
    :func:`speechbrain_mrl.inference.embeddings.embed_manifest` (the model's own, so that
    a file is embedded here as ``encode_file`` embeds it; the defaults for an
    official checkpoint) and ``short_duration`` the shortest audio it embeds
    reliably, the cohort's minimum (0.5 s for an official checkpoint).
    """
    model_folder = hparams.get("model_folder")
    official = hparams.get("official_checkpoint")
    if bool(model_folder) == bool(official):
        raise ValueError("give exactly one of --model_folder (Matryoshka model) and "
                         "--official_checkpoint (plain official ReDimNet)")
    if official:
        from speechbrain_mrl.model.official import load_official_redimnet

        encoder = load_official_redimnet(official).to(device).eval()
        options = {"sample_rate": int(hparams.get("sample_rate", 16000)), "device": device}
        return encoder, f"official ReDimNet ({pathlib.Path(str(official)).name})", options, 0.5

    from speechbrain_mrl.inference.interface import load_model

    model = load_model(model_folder, device)
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
    write_text_atomic(output_folder / "results.md", "\n".join(lines) + "\n")


def run(hparams, device="cpu"):
    """Runs the whole scoring from loaded hyperparameters; returns the results dict."""
    out = pathlib.Path(hparams["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    norms = [k for k in (hparams.get("score_norm") or []) if k]
    unknown = [k for k in norms if k not in NORMS]
    if unknown:
        raise ValueError(f"score_norm entries must be in {NORMS}, got {unknown}")
    encoder, name, embed_options, cohort_min = load_encoder(hparams, device)
    fingerprint = model_fingerprint(hparams["model_folder"]) if hparams.get("model_folder") else None
    dims = list(encoder.mrl_dims)
    if hparams.get("dims"):
        bad = [d for d in hparams["dims"] if d not in dims]
        if bad:
            raise ValueError(f"dims {bad} are not sizes of the model ({dims})")
        dims = [int(d) for d in hparams["dims"]]

    data_folder = hparams.get("data_folder")
    rows, (labels, enrol_ids, test_ids), names = read_trial_list(
        [hparams["enrol_csv"], hparams["test_csv"]], hparams["trials"], data_folder)
    logger.info("%d trials over %d utterances", len(labels), len(rows))
    cohort_rows, n_short = {}, 0
    if hparams.get("train_csv") and norms:
        cohort_rows, n_short = sample_cohort_rows(
            read_manifest(hparams["train_csv"], data_folder), hparams.get("cohort_max_utts"),
            hparams.get("seed", 1986), cohort_min)
    check_audio_files(rows, "enrol/test manifests")
    check_audio_files(cohort_rows, f"cohort ({hparams.get('train_csv')})")

    embed_opts = dict(embed_options, batch_size=int(hparams.get("batch_size", 8)),
                      num_workers=int(hparams.get("num_workers", 0)))
    ids, emb = embed_manifest(encoder, rows, desc="enrol/test embeddings", **embed_opts)
    index = {u: i for i, u in enumerate(ids)}
    if hparams.get("save_embeddings"):
        save_torch_atomic({"ids": ids, "embeddings": emb, "dims": dims, "model": name},
                          out / "embeddings.pt")

    cohort, groups = None, None
    if cohort_rows:
        if n_short:
            logger.warning("cohort: %d train_csv rows shorter than %.2f s (the model's reliable "
                           "minimum) left out", n_short, cohort_min)
        cids, cohort = embed_manifest(encoder, cohort_rows, desc="cohort embeddings", **embed_opts)
        groups = cohort_groups(cids, cohort_rows, hparams.get("cohort_type", "speaker"))
        logger.info("cohort: %d utterances (%s)", cohort.shape[0], hparams.get("cohort_type"))

    topk = int(hparams.get("cohort_topk", 300))
    scores = score_trials(emb, index, labels, enrol_ids, test_ids, dims, cohort=cohort,
                          cohort_groups=groups, norms=tuple(norms), topk=topk,
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
    info = {"model": name, "model_sha256": fingerprint, "trials": str(hparams["trials"]),
            "n_trials": int(len(labels)),
            "n_target": int(labels.sum()), "n_utterances": len(ids),
            "cohort_utterances": 0 if cohort is None else int(cohort.shape[0]),
            "cohort_too_short": n_short,
            "cohort_speakers": None if groups is None else int(groups.max()) + 1,
            "cohort_type": hparams.get("cohort_type") if cohort is not None else None,
            "cohort_topk": topk, "dims": dims}
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
