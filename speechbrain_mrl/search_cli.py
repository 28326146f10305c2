"""Command line of speaker search: ``enrol``, ``calibrate``, ``identify``, ``evaluate``, ``cascade``.

::

    python -m speechbrain_mrl.search_cli enrol --model_folder M --folder speakers/ --index idx/
    python -m speechbrain_mrl.search_cli calibrate --model_folder M --index idx/ --csv utts.csv \
        --trials trials.txt
    python -m speechbrain_mrl.search_cli identify --model_folder M --index idx/ --files a.wav b.wav
    python -m speechbrain_mrl.search_cli evaluate --model_folder M --index idx/ --csv queries.csv
    python -m speechbrain_mrl.search_cli cascade --model_folder M --csv test.csv --trials t.txt \
        --calibration_csv dev.csv --calibration_trials v.txt --small_dim 64

Audio comes from a CSV manifest (``ID,wav`` plus optional ``start,stop,duration,spk_id``)
or from a folder of speaker sub-folders (the sub-folder names are the speaker IDs).
Embeddings are extracted in length-sorted, padded batches with
:func:`speechbrain_mrl.embeddings.embed_manifest` (one pass gives every size).

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import logging
import pathlib

import numpy as np

from speechbrain_mrl.dataio import (AUDIO_EXTENSIONS, audio_info, check_audio_files, read_manifest,
                                    read_trial_list, write_text_atomic)
from speechbrain_mrl.datasets.voxceleb import scan_speakers
from speechbrain_mrl.embeddings import embed_manifest
from speechbrain_mrl.search import (FIRST_STAGES, SpeakerIndex, calibrate_margin, calibrate_thresholds,
                                    cascade_verify, open_set_rates)

__all__ = ["main", "speaker_folder_rows"]

logger = logging.getLogger(__name__)


def speaker_folder_rows(folder):
    """Manifest rows of ``<folder>/<speaker>/**/<audio>``: ``{ID: {wav, duration, spk_id}}``."""
    rows = {}
    for spk, items in scan_speakers(folder, AUDIO_EXTENSIONS).items():
        for rel, path in items:
            frames, sr = audio_info(path)
            rows[rel.rsplit(".", 1)[0]] = {"wav": str(path), "duration": frames / sr, "spk_id": spk}
    if not rows:
        raise ValueError(f"no audio files in speaker sub-folders of {folder}")
    return rows


def _rows(args):
    if args.csv:
        rows = read_manifest(args.csv)
    elif args.folder:
        rows = speaker_folder_rows(args.folder)
    else:
        rows = {}
        for path in args.files:
            frames, sr = audio_info(path)
            rows[str(path)] = {"wav": str(path), "duration": frames / sr}
    check_audio_files(rows, args.csv or args.folder or "files")
    return rows


def _embed(args, rows):
    from speechbrain_mrl.inference import MRLEncoderClassifier
    from speechbrain_mrl.packaging import model_fingerprint

    model = MRLEncoderClassifier.from_hparams(source=args.model_folder,
                                              run_opts={"device": args.device})
    ids, emb = embed_manifest(model.encoder, rows, batch_size=args.batch_size,
                              sample_rate=model.sample_rate, min_duration=model.min_duration,
                              device=args.device)
    return model, model_fingerprint(args.model_folder), ids, emb.numpy()


def enrol(args):
    """Embeds the audio and enrols its speakers (``spk_id`` column or sub-folder names)."""
    rows = _rows(args)
    missing = [u for u, r in rows.items() if not r.get("spk_id")]
    if missing:
        raise ValueError(f"enrolment needs a speaker per file: no spk_id for {missing[:3]}")
    model, sha, ids, emb = _embed(args, rows)
    index = (SpeakerIndex.load(args.index, sha) if pathlib.Path(args.index).exists() else
             SpeakerIndex.for_model(model, args.model_folder, first_stage=args.first_stage,
                                    dtype=args.dtype))
    index.enrol([rows[u]["spk_id"] for u in ids], emb, replace=args.replace)
    index.save(args.index)
    print(f"enrolled {len(set(rows[u]['spk_id'] for u in ids))} speakers from {len(ids)} "
          f"files; the index holds {len(index)}: {args.index}")
    return index


def _trial_embeddings(args, manifests, trials):
    """``(model, fingerprint, enrol [T, D], test [T, D], labels [T])`` of a trial list."""
    rows, (labels, enrol_ids, test_ids), _ = read_trial_list(manifests, trials)
    check_audio_files(rows, " + ".join(map(str, manifests)))
    model, sha, ids, emb = _embed(args, rows)
    position = {u: i for i, u in enumerate(ids)}
    return (model, sha, emb[[position[u] for u in enrol_ids]], emb[[position[u] for u in test_ids]],
            np.asarray(labels, dtype=bool))


def calibrate(args):
    """Sets the index's open-set thresholds per size from a trial list (``--false_alarm``:
    the threshold at that false-alarm rate over the different-speaker trials; default: EER)."""
    if not args.csv:
        raise ValueError("calibrate needs --csv: the manifest of the trial list's utterances")
    _, sha, enrol_emb, test_emb, labels = _trial_embeddings(args, [args.csv], args.trials)
    index = SpeakerIndex.load(args.index, sha)
    thresholds = calibrate_thresholds(enrol_emb, test_emb, labels, index.mrl_dims, args.false_alarm)
    index.set_thresholds(thresholds)
    index.save(args.index)
    print(f"open-set thresholds from {len(labels)} trials: "
          + ", ".join(f"{d}: {t:.4f}" for d, t in thresholds.items()))
    return thresholds


def identify(args):
    """Top-k speakers of each file, written as JSON (and printed); with ``--threshold``, only
    those scoring at least the threshold (an empty list: an unknown speaker)."""
    rows = _rows(args)
    _, sha, ids, emb = _embed(args, rows)
    index = SpeakerIndex.load(args.index, sha)
    k = min(args.k, len(index))
    if args.threshold is None:
        found, scores = index.search(emb, k, args.stages, args.shortlist, args.final_dim)
        matches = [list(zip(f, sc)) for f, sc in zip(found, scores)]
    else:  # open set: a best score under the threshold is an unknown speaker
        threshold = None if args.threshold == "index" else float(args.threshold)
        matches = index.identify(emb, k, args.stages, args.shortlist, args.final_dim, threshold)
    out = {u: [{"speaker": s, "score": float(c)} for s, c in m] for u, m in zip(ids, matches)}
    if args.out:
        write_text_atomic(args.out, json.dumps(out, indent=1) + "\n")
    for u in ids:
        print(u, " ".join(f"{r['speaker']}:{r['score']:.3f}" for r in out[u]) or "unknown speaker")
    return out


def evaluate(args):
    """Identification accuracy of a labelled list per funnel and for exact search.

    Closed set: top-1 and top-5 accuracy on the queries of enrolled speakers. Open set,
    when some queries are of speakers who are not enrolled: the detection and
    identification rate at the false-alarm rate ``--far`` (:func:`open_set_rates`).
    """
    rows = _rows(args)
    _, sha, ids, emb = _embed(args, rows)
    index = SpeakerIndex.load(args.index, sha)
    truth = np.array([rows[u].get("spk_id") for u in ids])
    enrolled = np.isin(truth, index.speakers)
    if not enrolled.any():
        raise ValueError("no query speaker is enrolled in the index: nothing to identify")
    k = min(5, len(index))
    funnels = {"exact full size": []}
    funnels.update({f"{'->'.join(map(str, s))}->full": s for s in args.funnels})
    results = {}
    for name, stages in funnels.items():
        found, scores = index.search(emb, k=k, stages=stages, shortlist=args.shortlist)
        top = np.array(found)
        results[name] = {"top1": float(np.mean(top[enrolled, 0] == truth[enrolled])),
                         f"top{k}": float(np.mean((top[enrolled] == truth[enrolled, None]).any(axis=1)))}
        if not enrolled.all():
            rates = open_set_rates(top[:, 0], scores[:, 0], truth, enrolled, args.far)
            results[name][f"DIR@FAR={args.far:g}"] = rates["dir"]
            results[name]["open_set_threshold"] = rates["threshold"]
    report = {"queries": int(enrolled.sum()), "not_enrolled": int((~enrolled).sum()),
              "speakers": len(index), "funnels": results}
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
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
    model, _, cal_e, cal_t, _ = _trial_embeddings(args, args.calibration_csv, args.calibration_trials)
    _, _, enrol_emb, test_emb, labels = _trial_embeddings(args, args.csv, args.trials)
    small_thr, full_thr = model.threshold_for(args.small_dim), model.threshold_for()
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
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(f"| target agreement | margin | escalated (calibration) | escalated | agreement with "
          f"{model.embed_dim}-d | error rate (cascade / {model.embed_dim}-d) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['target_agreement']} | {r['margin']:.4f} | {r['escalated_calibration']:.1%} | "
              f"{r['escalated']:.1%} | {r['agreement']:.2%} | {r['error_rate']:.2%} / "
              f"{report['full_size_error_rate']:.2%} |")
    return report


def main(argv=None):
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Speaker search with Matryoshka funnels")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model_folder", required=True)
    common.add_argument("--batch_size", type=int, default=16)
    common.add_argument("--device", default="cpu")
    common.add_argument("--out", help="JSON output")
    for name in ("enrol", "calibrate", "identify", "evaluate"):
        s = sub.add_parser(name, parents=[common])
        s.add_argument("--index", required=True, help="index folder")
        src = s.add_mutually_exclusive_group(required=True)
        src.add_argument("--csv", help="manifest: ID,wav[,start,stop,duration,spk_id]")
        src.add_argument("--folder", help="folder of speaker sub-folders")
        if name == "identify":
            src.add_argument("--files", nargs="+")
        s.add_argument("--shortlist", type=int, default=100)
    sub.choices["calibrate"].add_argument("--trials", required=True,
                                          help="trial list over the IDs of --csv")
    sub.choices["calibrate"].add_argument(
        "--false_alarm", type=float, default=None,
        help="threshold at this false-alarm rate of the different-speaker trials (default: EER)")
    c = sub.add_parser("cascade", parents=[common])
    c.add_argument("--csv", nargs="+", required=True,
                   help="manifests of the evaluated trials' utterances (e.g. enrol and test)")
    c.add_argument("--trials", required=True)
    c.add_argument("--calibration_csv", nargs="+", required=True)
    c.add_argument("--calibration_trials", required=True)
    c.add_argument("--small_dim", type=int, default=64)
    c.add_argument("--agreement", type=float, nargs="+", default=[0.999])
    sub.choices["enrol"].add_argument("--replace", action="store_true")
    sub.choices["enrol"].add_argument("--first_stage", choices=FIRST_STAGES, default="flat")
    sub.choices["enrol"].add_argument("--dtype", choices=["float32", "float16"], default="float32")
    sub.choices["identify"].add_argument("--k", type=int, default=5)
    sub.choices["identify"].add_argument("--stages", type=int, nargs="*", default=None)
    sub.choices["identify"].add_argument("--final_dim", type=int, default=None,
                                         help="size of the last ranking and the scores (default: full)")
    sub.choices["identify"].add_argument(
        "--threshold", default=None,
        help="open set: a cosine threshold, or 'index' (the index's threshold for --final_dim: "
             "the model's calibration, or the calibrate command's)")
    sub.choices["evaluate"].add_argument("--far", type=float, default=0.01,
                                         help="false-alarm rate of the open-set evaluation")
    sub.choices["evaluate"].add_argument("--funnels", type=lambda s: [int(d) for d in s.split(",")],
                                         nargs="*", default=[], help="e.g. 64 32,128")
    args = p.parse_args(argv)
    if getattr(args, "files", None) is None:
        args.files = None
    commands = {"enrol": enrol, "calibrate": calibrate, "identify": identify, "evaluate": evaluate,
                "cascade": cascade}
    return commands[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    main()
