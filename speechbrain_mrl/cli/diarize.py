"""The ``diarize`` and ``score-diarization`` commands: who spoke when, and its diarization error rate.

::

    speechbrain-mrl diarize --model_folder speechbrain-mrl/demo-sc --files meeting.wav \\
        --output_folder diarization/ --coarse_dim 32 --reference meeting.rttm --plot
    speechbrain-mrl score-diarization --reference refs/ --hypothesis diarization/

``diarize`` writes one RTTM per recording (``<name>.rttm``: for ``--files`` and
``--file_list`` the file's name without its extension; otherwise its ID, ``/``
written ``--``), ``diarization.json`` (settings, per
recording: speakers, segments, timings, real-time factor, and DER against
``--reference``), and with ``--plot`` a timeline ``<name>.png`` per recording.
The work is :class:`speechbrain_mrl.inference.diarization.Diarizer`'s.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import logging
import pathlib
import re

from speechbrain_mrl.cli.options import (Command, OptionError, add_sources, check_option, cosine, load_model,
                                         model_options, non_negative, non_negative_int, positive_int,
                                         positive_seconds, rate, size_or_zero)
from speechbrain_mrl.data.conversations import read_rttm
from speechbrain_mrl.data.manifests import check_audio_files
from speechbrain_mrl.data.sources import read_sources
from speechbrain_mrl.inference.diarization import BLOCK_WINDOWS
from speechbrain_mrl.utils.files import write_text_atomic

__all__ = ["COMMANDS", "diarize", "score", "read_references", "recording_name"]

logger = logging.getLogger(__name__)

#: The JSON report ``diarize`` writes into its output folder.
REPORT_FILE = "diarization.json"


def recording_name(uid):
    """The RTTM recording name (and file stem) of an audio source's ID.

    Example
    -------
    >>> recording_name("spk1/meeting 2.wav"), recording_name("/data/a.flac")
    ('spk1--meeting_2', 'data--a')
    """
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", str(uid).replace("\\", "/")).strip("/")
    return re.sub(r"\s+", "_", stem.replace("/", "--")) or "recording"


def read_references(path):
    """``{recording: segments}`` of an RTTM file, or of every ``*.rttm`` below a folder.

    Raises
    ------
    FileNotFoundError
        No such file or folder, or a folder without RTTM files.
    ValueError
        A malformed line (naming file and line), or a recording in two files.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.rttm"))
        if not files:
            raise FileNotFoundError(f"no .rttm files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"RTTM file or folder not found: {path}")
    out, origin = {}, {}
    for f in files:
        for rec, segs in read_rttm(f).items():
            if rec in out:
                raise ValueError(f"recording {rec!r} is in two RTTM files: {origin[rec]} and {f}")
            out[rec], origin[rec] = segs, f
    return out


def _names(rows, by_stem):
    """``{recording name: source ID}``: file stems for files, else :func:`recording_name` of the IDs."""
    if by_stem:
        names = {}
        for uid in rows:
            names.setdefault(recording_name(pathlib.PurePath(uid).name), []).append(uid)
        if all(len(v) == 1 for v in names.values()):
            return {name: uids[0] for name, uids in names.items()}
    names = {}
    for uid in rows:
        name = recording_name(uid)
        if name in names:
            raise ValueError(f"{names[name]} and {uid} would both be written as {name}.rttm")
        names[name] = uid
    return names


def _pair(references, name, single):
    """The reference of recording ``name``; with one recording on each side, that one whatever its name."""
    if name in references:
        return references[name]
    if single and len(references) == 1:
        return next(iter(references.values()))
    return None


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.2f}"


def diarize(args):
    """The ``speechbrain-mrl diarize`` job: RTTM per recording, ``diarization.json``; returns the report."""
    from speechbrain_mrl.inference.diarization import Diarizer, diarization_error, plot_diarization, total_error

    if args.min_speakers > args.max_speakers:
        raise OptionError(f"argument --min_speakers: {args.min_speakers} is above --max_speakers "
                          f"{args.max_speakers}")
    if args.hop > args.window:
        raise OptionError(f"argument --hop: {args.hop} s is longer than --window {args.window} s (gaps "
                          "between windows)")
    source = {k: getattr(args, k, None) for k in ("csv", "folder", "files", "file_list")}
    rows = read_sources(**source)
    check_audio_files(rows, next(str(v) for v in source.values() if v))
    names = _names(rows, by_stem=bool(args.files or args.file_list))
    references = read_references(args.reference) if args.reference else None
    model = load_model(args)
    check_option("--coarse_dim", _check_size, args.coarse_dim, int(model.embed_dim))
    diarizer = Diarizer(
        model, num_speakers=args.num_speakers, min_speakers=args.min_speakers, max_speakers=args.max_speakers,
        coarse_dim=args.coarse_dim, window=args.window, hop=args.hop, vad_threshold=args.vad_threshold,
        vad_min_speech=args.vad_min_speech, vad_min_silence=args.vad_min_silence, vad_pad=args.vad_pad,
        method=args.method, merge_threshold=args.merge_threshold, margin=args.margin, min_gap=args.min_gap,
        batch_size=args.batch_size, num_workers=args.num_workers, precision=args.precision,
        block_windows=args.block_windows)
    out = pathlib.Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    recordings, errors = [], []
    for name, uid in names.items():
        row = rows[uid]
        if row.get("start") not in (None, "") or row.get("stop") not in (None, ""):
            logger.warning("%s: start/stop of the manifest row are ignored: whole recordings are diarized", uid)
        result = diarizer.diarize(row["wav"], name)
        entry = {"id": uid, "wav": str(row["wav"]), "rttm": str(result.write_rttm(out / f"{name}.rttm")),
                 **result.summary()}
        reference = _pair(references, name, len(rows) == 1) if references is not None else None
        if references is not None and reference is None:
            logger.warning("%s: no reference for recording %s in %s; not scored", uid, name, args.reference)
        if reference is not None:
            entry["der"] = diarization_error(reference, result.segments, args.collar, args.skip_overlap,
                                             result.duration)
            entry["reference_speakers"] = len({s for _, _, s in reference})
            errors.append(entry["der"])
        if args.plot:
            entry["plot"] = str(plot_diarization(out / f"{name}.png", result.segments, reference,
                                                 result.duration, name))
        der = f", DER {_percent(entry['der']['der'])} %" if "der" in entry else ""
        print(f"{name}: {result.num_speakers} speakers, {len(result.segments)} segments, "
              f"{entry['speech_seconds']:.1f} s of speech in {result.duration:.1f} s{der}"
              + (f" ({result.message})" if result.message else ""))
        recordings.append(entry)
    duration = sum(r["duration"] for r in recordings)
    seconds = sum(r["timings"].get("total", 0.0) for r in recordings)
    overall = {"recordings": len(recordings), "duration": round(duration, 3),
               "real_time_factor": round(seconds / duration, 5) if duration else None}
    if errors:
        overall["der"] = total_error(errors)
        print(f"DER {_percent(overall['der']['der'])} % (missed {_percent(overall['der']['missed'])} %, false "
              f"alarm {_percent(overall['der']['false_alarm'])} %, confusion "
              f"{_percent(overall['der']['confusion'])} %; collar {args.collar} s"
              f"{', overlap skipped' if args.skip_overlap else ''}) over {len(errors)} recordings")
    settings = {k: getattr(args, k) for k in (
        "model_folder", "num_speakers", "min_speakers", "max_speakers", "coarse_dim", "method", "window", "hop",
        "vad_threshold", "vad_min_speech", "vad_min_silence", "vad_pad", "margin", "merge_threshold", "min_gap",
        "collar", "skip_overlap", "reference")}
    report = {"settings": settings, "recordings": recordings, "overall": overall}
    write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=1) + "\n")
    print(f"RTTM files and {REPORT_FILE} in {out} (real-time factor {overall['real_time_factor']})")
    return report


def _check_size(coarse_dim, embed_dim):
    if coarse_dim > embed_dim:
        raise ValueError(f"{coarse_dim} is above the model's embedding size {embed_dim} (0: full size)")
    return coarse_dim


def score(args):
    """The ``speechbrain-mrl score-diarization`` job: DER and its parts per recording; returns them."""
    from speechbrain_mrl.inference.diarization import diarization_error, total_error

    references = read_references(args.reference)
    hypotheses = read_references(args.hypothesis)
    single = len(references) == 1 and len(hypotheses) == 1
    scored = {}
    for name, reference in references.items():
        hypothesis = next(iter(hypotheses.values())) if single else hypotheses.get(name)
        if hypothesis is None:
            logger.warning("recording %s has no hypothesis in %s: all its speech counts as missed", name,
                           args.hypothesis)
        scored[name] = diarization_error(reference, hypothesis or [], args.collar, args.skip_overlap)
    extra = sorted(set(hypotheses) - set(references)) if not single else []
    if extra:
        logger.warning("%d recordings of %s have no reference and are not scored, e.g. %s", len(extra),
                       args.hypothesis, extra[:3])
    print("| recording | DER % | missed % | false alarm % | confusion % | scored speech s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, e in list(scored.items()) + [("all", total_error(scored.values()))]:
        print(f"| {name} | {_percent(e['der'])} | {_percent(e['missed'])} | {_percent(e['false_alarm'])} | "
              f"{_percent(e['confusion'])} | {e['total']:.1f} |")
    print(f"collar {args.collar} s on each side of reference boundaries"
          f"{'; overlapped speech not scored' if args.skip_overlap else ''}")
    return {"recordings": scored, "overall": total_error(scored.values()), "collar": args.collar,
            "skip_overlap": args.skip_overlap}


def _scoring_arguments(parser):
    parser.add_argument("--collar", type=non_negative, default=0.25,
                        help="seconds forgiven on each side of every reference boundary (NIST md-eval)")
    parser.add_argument("--skip_overlap", action="store_true",
                        help="leave out regions where reference speakers overlap")


def _diarize_arguments(parser):
    add_sources(parser)
    parser.add_argument("--output_folder", required=True,
                        help=f"where the RTTM files, {REPORT_FILE} and the timelines go")
    parser.add_argument("--num_speakers", type=positive_int, default=None,
                        help="the number of speakers, when known (else estimated)")
    parser.add_argument("--min_speakers", type=positive_int, default=1, help="fewest speakers to find")
    parser.add_argument("--max_speakers", type=positive_int, default=10, help="most speakers to find")
    parser.add_argument("--coarse_dim", type=size_or_zero, default=32,
                        help="prefix size clustered first; uncertain windows are re-scored at full size "
                             "(0: cluster at full size)")
    parser.add_argument("--method", choices=["spectral", "ahc"], default="spectral",
                        help="spectral: SpeechBrain's spectral clustering (eigengap speaker count); ahc: "
                             "average-linkage clustering stopped at the model's calibrated threshold")
    parser.add_argument("--window", type=positive_seconds, default=1.5, help="embedding window (seconds)")
    parser.add_argument("--hop", type=positive_seconds, default=0.75, help="hop between windows (seconds)")
    parser.add_argument("--vad_threshold", type=rate(), default=0.5,
                        help="Silero VAD speech probability from which a frame is speech")
    parser.add_argument("--vad_min_speech", type=non_negative, default=0.25,
                        help="shorter speech regions (seconds) are dropped")
    parser.add_argument("--vad_min_silence", type=non_negative, default=0.1,
                        help="shorter silences (seconds) do not end a speech region")
    parser.add_argument("--vad_pad", type=non_negative, default=0.03,
                        help="seconds added on each side of a speech region")
    parser.add_argument("--margin", type=non_negative, default=0.05,
                        help="a window whose two closest speakers differ by less than this cosine is "
                             "re-scored at full size")
    parser.add_argument("--merge_threshold", type=cosine, default=0.7,
                        help="speakers whose full-size centroids have at least this cosine are merged "
                             "(without --num_speakers)")
    parser.add_argument("--block_windows", type=non_negative_int, default=BLOCK_WINDOWS,
                        help="longer recordings are clustered in blocks of this many windows whose "
                             "speakers are then linked, so memory does not grow with the length "
                             "(0: one block)")
    parser.add_argument("--min_gap", type=non_negative, default=0.3,
                        help="shorter pauses (seconds) within one speaker's turn are filled")
    parser.add_argument("--reference", default=None,
                        help="reference RTTM file, or folder of .rttm files: each recording is scored (DER)")
    _scoring_arguments(parser)
    parser.add_argument("--plot", action="store_true",
                        help="also draw a timeline PNG per recording (speakers as coloured rows)")


def _score_arguments(parser):
    parser.add_argument("--reference", required=True, help="reference RTTM file, or folder of .rttm files")
    parser.add_argument("--hypothesis", required=True, help="RTTM file, or folder of .rttm files, to score")
    _scoring_arguments(parser)


COMMANDS = {
    "diarize": Command("who spoke when: speaker-labelled segments (RTTM) of recordings, prefix-first clustering",
                       _diarize_arguments, diarize, (model_options,)),
    "score-diarization": Command("diarization error rate (missed speech, false alarm, confusion) of RTTM files",
                                 _score_arguments, score),
}
