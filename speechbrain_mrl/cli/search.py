"""The jobs behind the speaker-search and verification sub-commands of ``speechbrain-mrl``.

``enrol``, ``calibrate``, ``identify``, ``evaluate``, ``cascade``, ``verify`` and
``copy-index`` each take the parsed command line (:mod:`speechbrain_mrl.cli.main`
defines it) and return what they print, for tests and scripts. ``--index`` is
an index folder (FAISS) or a Qdrant collection (``qdrant://HOST:PORT/NAME``,
``qdrant+local:DIR/NAME``; :mod:`speechbrain_mrl.search.locations`). Audio is read by
:func:`speechbrain_mrl.data.sources.read_sources` and embedded by
:func:`speechbrain_mrl.inference.embeddings.embed_manifest` with the model's own settings,
so a file gets the same embedding here as from ``encode_file`` or ``extract``.
An existing index is opened and checked (model fingerprint, settings) before
any audio is embedded, and an index folder is written under its lock.

``python -m speechbrain_mrl.cli.search <command> ...`` is the same as
``speechbrain-mrl <command> ...``.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import pathlib

import numpy as np

from speechbrain_mrl.data.manifests import check_audio_files, read_trial_list
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.search.locations import (check_writable, copy_index, index_exists,
                                              index_for_model, open_index, writing_index)
from speechbrain_mrl.cli.options import (Command, add_sources, check_option, cosine, index_location,
                                         index_options, load_model, model_options, non_negative,
                                         positive_int, rate, size_list, threshold_or_index)
from speechbrain_mrl.model.sizes import check_target_dim
from speechbrain_mrl.search.cosine import _prefix_cosine
from speechbrain_mrl.utils.metrics import verification_metrics
from speechbrain_mrl.data.sources import read_sources
from speechbrain_mrl.search.thresholds import (calibrate_margin, calibrate_thresholds, cascade_verify,
                                        open_set_rates)

__all__ = ["COMMANDS", "enrol", "calibrate", "identify", "evaluate", "cascade", "verify",
           "copy"]

logger = logging.getLogger(__name__)


def fingerprint(args):
    """The model folder's fingerprint (recorded in and checked against an index)."""
    from speechbrain_mrl.model.folder import model_fingerprint

    return model_fingerprint(args.model_folder)


def embed(model, rows, args, desc="embeddings"):
    """``(ids in input order, embeddings [N, D] numpy)`` through the one embedding path."""
    ids, emb = embed_manifest(model.encoder, rows, batch_size=args.batch_size,
                              num_workers=args.num_workers, precision=args.precision, desc=desc,
                              **model.embedding_options())
    return ids, emb.numpy()


def _audio_rows(args, need_speakers=False):
    source = {k: getattr(args, k, None) for k in ("csv", "folder", "files", "file_list")}
    rows = read_sources(**source, need_speakers=need_speakers)
    check_audio_files(rows, next(str(v) for v in source.values() if v))
    return rows


def _existing_index(args, sha):
    """The index at ``--index`` (checked against the model), or an error when there is none."""
    return open_index(args.index, sha)


def enrol(args):
    """Embeds the audio and enrols its speakers (``spk_id`` column or sub-folder names)."""
    rows = _audio_rows(args, need_speakers=True)
    sha = fingerprint(args)
    exists = index_exists(args.index)
    if exists:  # checked before any audio is embedded
        with open_index(args.index, sha) as index:
            if not args.rebuild:
                index.check_settings(first_stage=args.first_stage, dtype=args.dtype)
            known = sorted(set(index.speakers) & {r["spk_id"] for r in rows.values()})
        if known and not args.replace:
            raise ValueError(f"speakers already enrolled in {args.index}: {known[:5]} (--replace "
                             "re-enrols them)")
    check_writable(args.index, dtype=None if exists else args.dtype)
    model = load_model(args)
    ids, emb = embed(model, rows, args, desc="enrol")
    settings = {k: v for k, v in (("first_stage", args.first_stage), ("dtype", args.dtype)) if v}
    with writing_index(args.index, sha, lambda: index_for_model(args.index, model, sha, **settings),
                       args.lock_timeout) as index:
        if args.rebuild:
            index.rebuild(first_stage=args.first_stage, dtype=args.dtype)
        else:
            index.check_settings(first_stage=args.first_stage, dtype=args.dtype)
        index.enrol([rows[u]["spk_id"] for u in ids], emb, replace=args.replace)
        size = len(index)
    n_speakers = len({rows[u]["spk_id"] for u in ids})
    print(f"enrolled {n_speakers} speakers from {len(ids)} files; the index holds {size}: "
          f"{args.index}")
    return index


def _trial_embeddings(args, model, manifests, trials):
    """``(enrol [T, D], test [T, D], labels [T])`` of a trial list over ``manifests`` (CSV
    files, or ``{ID: row}`` rows of a ``--folder``)."""
    rows, (labels, enrol_ids, test_ids), _ = read_trial_list(manifests, trials)
    check_audio_files(rows, str(trials) if isinstance(manifests, dict)
                      else " + ".join(map(str, manifests)))
    ids, emb = embed(model, rows, args, desc=f"trials {pathlib.Path(trials).name}")
    position = {u: i for i, u in enumerate(ids)}
    return (emb[[position[u] for u in enrol_ids]], emb[[position[u] for u in test_ids]],
            np.asarray(labels, dtype=bool))


def calibrate(args):
    """Sets the index's open-set thresholds per size from a trial list (``--false_alarm``:
    the threshold at that false-alarm rate over the different-speaker trials, recorded as
    calibrated for identification; default: EER, recorded as 1:1 verification thresholds).
    Prints each size's EER on the list; warns when ``--false_alarm`` is below one
    different-speaker trial, where the threshold rests on the single highest score."""
    sha = fingerprint(args)
    with _existing_index(args, sha) as index:
        mrl_dims = index.mrl_dims
    check_writable(args.index)
    model = load_model(args)
    manifests = args.csv if args.csv else read_sources(folder=args.folder)
    enrol_emb, test_emb, labels = _trial_embeddings(args, model, manifests, args.trials)
    n_nontarget = int((~labels).sum())
    if args.false_alarm is not None and n_nontarget and args.false_alarm < 1 / n_nontarget:
        logger.warning("--false_alarm %g is below 1/%d (one of the %d different-speaker trials): "
                       "the thresholds rest on the single highest score; use a longer trial list",
                       args.false_alarm, n_nontarget, n_nontarget)
    thresholds = calibrate_thresholds(enrol_emb, test_emb, labels, mrl_dims, args.false_alarm)
    eer = {d: verification_metrics(_prefix_cosine(enrol_emb, test_emb, d), labels)["EER"]
           for d in mrl_dims}
    with writing_index(args.index, sha, lock_timeout=args.lock_timeout) as index:
        index.set_thresholds(thresholds, "verification" if args.false_alarm is None
                             else "identification")
    print(f"open-set thresholds from {len(labels)} trials ({n_nontarget} different-speaker):")
    for d in mrl_dims:
        print(f"  {d}-d: threshold {thresholds[d]:.4f}, EER {eer[d]:.2f} %")
    return {"thresholds": thresholds, "EER": eer, "trials": len(labels),
            "false_alarm": args.false_alarm}


def identify(args):
    """Top-k speakers of each file, in the order the audio was given; with ``--threshold``,
    only those scoring at least the threshold (an empty list: an unknown speaker).

    Without ``--threshold`` the search is closed-set (every file gets its nearest
    speakers); ``--threshold index`` on 1:1 verification thresholds (the model's, copied
    by ``enrol``) logs a warning saying how to calibrate identification thresholds.
    """
    rows = _audio_rows(args)
    with _existing_index(args, fingerprint(args)) as index:
        index.check_search(min(args.k, max(len(index), 1)), args.stages, args.shortlist, args.final_dim)
        if args.threshold == "index":
            index.open_set_threshold(args.final_dim)  # raises before any audio is embedded
        model = load_model(args)
        ids, emb = embed(model, rows, args, desc="identify")
        return _identify(args, index, ids, emb)


def _identify(args, index, ids, emb):
    k = min(args.k, len(index))
    if args.threshold is None:
        found, scores = index.search(emb, k, args.stages, args.shortlist, args.final_dim)
        matches = [[(s, c) for s, c in zip(f, sc) if s is not None] for f, sc in zip(found, scores)]
    else:  # open set: a best score under the threshold is an unknown speaker
        threshold = args.threshold
        if threshold == "index":
            threshold = index.open_set_threshold(args.final_dim)
            caveat = index.thresholds_caveat()
            if caveat:
                logger.warning(caveat)
        matches = index.identify(emb, k, args.stages, args.shortlist, args.final_dim, threshold)
    out = {u: [{"speaker": s, "score": float(c)} for s, c in m] for u, m in zip(ids, matches)}
    for u in ids:
        print(u, " ".join(f"{r['speaker']}:{r['score']:.3f}" for r in out[u]) or "unknown speaker")
    return out


def verify(args):
    """Cosine score of two recordings at ``--target_dim`` and the decision at the threshold
    (``--threshold``, else the model's calibrated one for that size)."""
    rows = dict(zip(("enrol", "test"), (next(iter(read_sources(files=[f]).values()))
                                       for f in (args.enrol_file, args.test_file))))
    check_audio_files(rows, "verify")
    model = load_model(args)
    d = check_option("--target_dim", check_target_dim, args.target_dim, model.embed_dim)
    threshold = args.threshold
    if threshold is None and d in model.thresholds:
        threshold = model.threshold_for(d)
    ids, emb = embed(model, rows, args, desc="verify")
    a, b = (emb[i, :d] / np.linalg.norm(emb[i, :d]) for i in range(2))
    score = float(a @ b)
    result = {"enrol": args.enrol_file, "test": args.test_file, "target_dim": d, "score": score,
              "threshold": threshold, "same_speaker": None if threshold is None else score > threshold}
    decision = ("no calibrated threshold for this size: pass --threshold" if threshold is None
                else f"{'same speaker' if result['same_speaker'] else 'different speakers'} "
                     f"(threshold {threshold:.4f})")
    print(f"score {score:.4f} at {d}-d: {decision}")
    return result


def evaluate(args):
    """Identification accuracy of a labelled list per funnel and for exact search.

    Closed set: top-1 and top-5 accuracy on the queries of enrolled speakers. Open set,
    when some queries are of speakers who are not enrolled: the detection and
    identification rate at the false-alarm rate ``--false_alarm`` (:func:`open_set_rates`).
    """
    rows = _audio_rows(args, need_speakers=True)
    with _existing_index(args, fingerprint(args)) as index:
        for stages in [[], *args.funnels]:  # every funnel checked before any audio is embedded
            index.check_search(min(5, max(len(index), 1)), stages, args.shortlist)
        model = load_model(args)
        ids, emb = embed(model, rows, args, desc="evaluate")
        return _evaluate(args, index, rows, ids, emb)


def _evaluate(args, index, rows, ids, emb):
    truth = np.array([rows[u]["spk_id"] for u in ids])
    enrolled = np.isin(truth, index.speakers)
    if not enrolled.any():
        raise ValueError("no query speaker is enrolled in the index: nothing to identify")
    k = min(5, len(index))
    funnels = {"exact full size": []}
    funnels.update({f"{'->'.join(map(str, s))}->full": s for s in args.funnels})
    results = {}
    for name, stages in funnels.items():
        found, scores = index.search(emb, k=k, stages=stages, shortlist=args.shortlist)
        top = np.array(found, dtype=object)
        results[name] = {"top1": float(np.mean(top[enrolled, 0] == truth[enrolled])),
                         f"top{k}": float(np.mean((top[enrolled] == truth[enrolled, None]).any(axis=1)))}
        if not enrolled.all():
            rates = open_set_rates(top[:, 0], scores[:, 0], truth, enrolled, args.false_alarm)
            results[name][f"DIR@FAR={args.false_alarm:g}"] = rates["dir"]
            results[name]["open_set_threshold"] = rates["threshold"]
    report = {"queries": int(enrolled.sum()), "not_enrolled": int((~enrolled).sum()),
              "speakers": len(index), "funnels": results}
    print(f"{report['queries']} queries of enrolled speakers, {report['not_enrolled']} of unknown "
          f"ones ({len(index)} enrolled)")
    for name, r in results.items():
        print(f"{name}: " + ", ".join(f"{key} {v:.2%}" if "threshold" not in key else
                                      f"{key} {v:.3f}" for key, v in r.items()))
    return report


def cascade(args):
    """Cascade verification of a trial list: the small prefix decides unless its score is
    within a margin of its threshold. The margin is calibrated on another trial list to
    give the full-size decisions on ``--agreement`` of its trials; the thresholds are the
    model's calibrated ones."""
    model = load_model(args)
    small_thr, full_thr = model.threshold_for(args.small_dim), model.threshold_for()
    cal_e, cal_t, _ = _trial_embeddings(args, model, args.calibration_csv, args.calibration_trials)
    enrol_emb, test_emb, labels = _trial_embeddings(args, model, args.csv, args.trials)
    full = cascade_verify(enrol_emb, test_emb, args.small_dim, small_thr, full_thr, np.inf)[0]
    report = {"small_dim": args.small_dim, "full_dim": model.embed_dim, "trials": len(labels),
              "calibration_trials": len(cal_e), "full_size_error_rate": float(np.mean(full != labels)),
              "rows": []}
    for agreement in args.agreement:
        margin, cal_escalated = calibrate_margin(cal_e, cal_t, args.small_dim, small_thr, full_thr,
                                                 agreement)
        decisions, escalated = cascade_verify(enrol_emb, test_emb, args.small_dim, small_thr,
                                              full_thr, margin)
        report["rows"].append({
            "target_agreement": agreement, "margin": margin,
            "escalated_calibration": cal_escalated, "escalated": float(escalated.mean()),
            "agreement": float(np.mean(decisions == full)),
            "error_rate": float(np.mean(decisions != labels))})
    print(f"| target agreement | margin | escalated (calibration) | escalated | agreement with "
          f"{model.embed_dim}-d | error rate (cascade / {model.embed_dim}-d) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['target_agreement']} | {r['margin']:.4f} | {r['escalated_calibration']:.1%} | "
              f"{r['escalated']:.1%} | {r['agreement']:.2%} | {r['error_rate']:.2%} / "
              f"{report['full_size_error_rate']:.2%} |")
    return report


def copy(args):
    """Copies a speaker index between an index folder and a Qdrant collection (either
    way), then reads the copy back and checks it equals the source; a copy taking more
    than a few seconds shows its progress on stderr."""
    result = copy_index(args.source, args.dest, overwrite=args.overwrite,
                        lock_timeout=args.lock_timeout, progress=True)
    print(f"copied {result['speakers']} speakers from {args.source} to {args.dest}; checked "
          f"equal: speaker IDs, counts, sizes, fingerprint, thresholds, vectors (max abs "
          f"difference {result['max_abs_difference']:.2g})")
    return result


# ------------------------------------------------------------------ options
def _enrol_arguments(p):
    add_sources(p)
    p.add_argument("--replace", action="store_true",
                   help="re-enrol speakers that are already in the index")
    p.add_argument("--first_stage", choices=["flat", "hnsw", "ivf"], default=None,
                   help="FAISS first stage of a new index (default flat); on an existing index "
                        "it must match unless --rebuild")
    p.add_argument("--dtype", choices=["float32", "float16"], default=None,
                   help="vector storage of a new index (default float32); on an existing index "
                        "it must match unless --rebuild")
    p.add_argument("--rebuild", action="store_true",
                   help="change an existing index's --first_stage/--dtype")


def _search_options(p):
    p.add_argument("--stages", type=positive_int, nargs="*", default=None,
                   help="funnel prefix sizes before the final size, e.g. 64 or 32 128 (none "
                        "given: exact search; default: 64, or the smallest size)")
    p.add_argument("--shortlist", type=positive_int, default=100,
                   help="candidates kept after each funnel stage")


def _identify_arguments(p):
    add_sources(p)
    p.add_argument("--k", type=positive_int, default=5, help="speakers returned per recording")
    _search_options(p)
    p.add_argument("--final_dim", type=positive_int, default=None,
                   help="size of the last ranking and the scores (default: full size)")
    p.add_argument("--threshold", type=threshold_or_index, default=None,
                   help="open set: a cosine threshold, or 'index' (the index's threshold for "
                        "--final_dim: calibrate it for identification with 'calibrate "
                        "--false_alarm'); matches under it are dropped (default: closed set, "
                        "every recording gets its k nearest speakers)")


def _verify_arguments(p):
    p.add_argument("enrol_file", help="first recording")
    p.add_argument("test_file", help="second recording")
    p.add_argument("--target_dim", type=positive_int, default=None,
                   help="embedding size (default: full size)")
    p.add_argument("--threshold", type=cosine, default=None,
                   help="cosine threshold (default: the model's calibrated one for --target_dim)")


def _evaluate_arguments(p):
    add_sources(p, ("csv", "folder"))
    _search_options(p)
    p.add_argument("--funnels", type=size_list, nargs="*", default=[],
                   help="funnels besides exact search, e.g. 64 32,128")
    p.add_argument("--false_alarm", type=rate(), default=0.01,
                   help="false-alarm rate of the open-set evaluation (queries of speakers who "
                        "are not enrolled)")


def _calibrate_arguments(p):
    audio = p.add_mutually_exclusive_group(required=True)
    audio.add_argument("--csv", nargs="+", default=None,
                       help="manifests of the trial list's utterances")
    audio.add_argument("--folder", default=None,
                       help="folder of the trial list's audio (entries are paths relative to it)")
    p.add_argument("--trials", required=True, help="trial list (<1|0> <enrol ID> <test ID>)")
    p.add_argument("--false_alarm", type=rate(), default=None,
                   help="threshold at this false-alarm rate of the different-speaker trials, "
                        "for identification: about the share of unknown speakers to accept "
                        "divided by the number enrolled (default: the equal error rate, a 1:1 "
                        "verification threshold)")


def _cascade_arguments(p):
    p.add_argument("--csv", nargs="+", required=True,
                   help="manifests of the evaluated trials' utterances (e.g. enrol and test)")
    p.add_argument("--trials", required=True, help="evaluated trial list")
    p.add_argument("--calibration_csv", nargs="+", required=True,
                   help="manifests of the calibration trials' utterances")
    p.add_argument("--calibration_trials", required=True,
                   help="trial list the margin is calibrated on")
    p.add_argument("--small_dim", type=positive_int, default=64, help="size of the first decision")
    p.add_argument("--agreement", type=rate(high_open=False), nargs="+", default=[0.999],
                   help="share of calibration trials that must get the full-size decision")


def _locked_index():
    return index_options(lock=True)


def _copy_arguments(p):
    p.add_argument("source", type=index_location,
                   help="the index to copy: a folder, qdrant://HOST:PORT/COLLECTION "
                                  "or qdrant+local:DIR/COLLECTION")
    p.add_argument("dest", type=index_location, help="where the copy goes (same forms)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an index that is already at dest")
    p.add_argument("--lock_timeout", type=non_negative, default=60.0,
                   help="seconds to wait for another process writing a destination folder")


COMMANDS = {
    "enrol": Command("enrol speakers into a speaker index (created if absent)", _enrol_arguments,
                     enrol, (model_options, _locked_index),
                     lambda args, index: {"index": str(args.index), "speakers": len(index.speakers)}),
    "identify": Command("top-k enrolled speakers of each recording", _identify_arguments,
                        identify, (model_options, index_options)),
    "verify": Command("are two recordings of the same speaker?", _verify_arguments, verify,
                      (model_options,)),
    "evaluate": Command("identification accuracy of a labelled list, per funnel",
                        _evaluate_arguments, evaluate,
                        (model_options, index_options)),
    "calibrate": Command("fit the index's open-set thresholds on a trial list",
                         _calibrate_arguments, calibrate, (model_options, _locked_index)),
    "cascade": Command("cascade verification: a small prefix, the full size near its threshold",
                       _cascade_arguments, cascade, (model_options,)),
    "copy-index": Command("copy a speaker index between a folder (FAISS) and a Qdrant "
                          "collection, checked equal", _copy_arguments, copy),
}
