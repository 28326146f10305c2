#!/usr/bin/env python3
"""Speaker diarization on simulated conversations: DER, speaker count, clustering time, real-time factor.

Seeded conversations (2-6 speakers, turns of 1-10 s, pauses, ``--overlap_prob``
overlapping turns; ``--duration`` seconds each, or drawn uniformly from
``--duration_range``) are built from real speech by
:func:`speechbrain_mrl.data.conversations.simulate_conversation`, from speakers the
shipped model never trained on: LibriSpeech readers held out of the demo's
training (long turns; each reader has one 2-17 s utterance, so a two-minute
conversation reads some of it again: the JSON gives the share) and, with
``--variant sc``, the Speech Commands test speakers (1-s words). ``--seeds``
runs several generator seeds of ``--conversations`` conversations each
(conversation ``i`` of generator seed ``s`` is conversation seed
``s * conversations + i``, so seeds ``0 1 2 3 4`` of 10 conversations are the
conversations 0-49; the defaults were tuned on conversation seeds 1000 and up,
which the benchmark refuses).

Each conversation is diarized once through Silero VAD and the window embeddings
(one pass gives every size); then clustered at full size (``coarse_dim=0``) and
prefix-first at each ``--dims`` size, each timed ``--repeats`` times (the
fastest kept). ``--baseline resemblyzer`` also embeds the same windows (same VAD
regions, same 1.5-s windows every 0.75 s) with Resemblyzer's pretrained
``VoiceEncoder`` and clusters them at full size by the same methods; its
agglomerative stopping and cluster-merging cosines (ours are calibrated for our
model) are chosen on ``--baseline_tune`` conversations of seeds 1000 and up,
as ours were, unless ``--baseline_thresholds`` gives them.

Reported per configuration, pooled over all conversations, per generator seed,
and as mean +- standard deviation over the seeds: DER at collar 0.25 s (NIST,
each side) and 0 (missed speech, false alarm, confusion), the share of
conversations whose speaker count is right, clustering seconds and speed-up
over full size, windows re-scored at full size, and the real-time factor end to
end (VAD + embedding + clustering over the audio's duration). ``--scaling``
also times the clustering alone on longer recordings (windows pooled from all
conversations). ``--random_preset b2`` times the pipeline with a randomly
initialised ReDimNet of that preset instead of the model (speed only: no DER).

    flock /work/runs/heavy.lock python benchmarks/diarization.py --data_folder /path/to/shared/data \\
        --conversations 10 --duration 120 --output results/diarization.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from speechbrain_mrl.data.audio import audio_info, read_audio
from speechbrain_mrl.data.conversations import simulate_conversation, speaker_files
from speechbrain_mrl.data.speech_commands import long_val_rows
from speechbrain_mrl.inference.diarization import (Diarizer, cluster_windows, diarization_error,
                                                   segments_from_windows, sliding_windows, total_error)
from speechbrain_mrl.inference.interface import load_model
from speechbrain_mrl.utils.files import write_text_atomic

#: Conversation seeds from this one up are the ones the defaults were tuned on (and the baseline is tuned on).
TUNING_SEED = 1000
#: Agglomerative stopping cosines tried for the baseline.
BASELINE_AHC_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
#: Cluster-merging cosines tried for the baseline (None: no merging).
BASELINE_MERGE_GRID = tuple(round(0.7 + 0.05 * i, 2) for i in range(6)) + (None,)
#: What the JSON says of a model with random weights.
SPEED_ONLY = "random weights: speed only"


def held_out_speakers(data_folder, variant):
    """``{speaker: files}`` the shipped model did not train on."""
    data_folder = pathlib.Path(data_folder)
    if variant == "librispeech":
        libri = data_folder / "librispeech_train_clean_100"
        # the demo's preparation holds these 60 readers out of training (prepare_demo, seed 1234)
        held = {row[5][len("libri"):] for row in long_val_rows(libri, 60, 4.0, 1234)}
        return speaker_files(libri, held)
    sc = data_folder / "speech_commands"
    test = set((sc / "splits" / "test_speakers.txt").read_text().split())
    return speaker_files(sc, test)


# ------------------------------------------------------------------ conversations
def conversation_plan(seeds, conversations, duration, duration_range=None, first=0):
    """``[(generator seed, conversation seed, seconds)]`` of the conversations to simulate.

    Conversation ``i`` of generator seed ``s`` has seed ``first + s * conversations + i``;
    its length is ``duration``, or drawn uniformly from ``duration_range`` by a
    generator of its own (not the conversation's).

    Example
    -------
    >>> [(s, c) for s, c, _ in conversation_plan([0, 2], 2, 120.0)]
    [(0, 0), (0, 1), (2, 4), (2, 5)]
    >>> all(180 <= d <= 300 for _, _, d in conversation_plan([0], 5, 120.0, (180, 300)))
    True
    """
    plan = []
    for s in seeds:
        for i in range(conversations):
            seed = first + s * conversations + i
            seconds = duration
            if duration_range:
                seconds = round(float(np.random.default_rng([7, seed]).uniform(*duration_range)), 1)
            plan.append((s, seed, seconds))
    return plan


def simulate(args, speakers, work, name, seed, seconds):
    """One conversation of the benchmark's settings."""
    return simulate_conversation(speakers, work / f"{name}{seed}.wav", seed=seed, num_speakers=(2, 6),
                                 duration=seconds, overlap_prob=args.overlap_prob, noise_snr=args.noise_snr)


# ------------------------------------------------------------------ the baseline
class ResemblyzerWindows:
    """Resemblyzer's pretrained ``VoiceEncoder`` on the pipeline's windows (the baseline's embeddings).

    Each window is read from disk at 16 kHz, its level raised to Resemblyzer's
    -30 dBFS (its ``preprocess_wav`` without the silence trimming: the windows
    lie in Silero VAD's speech already), cut into Resemblyzer's 1.6-s partials
    (``compute_partial_slices`` at ``embed_utterance``'s defaults: one partial,
    zero-padded, for a 1.5-s window) and embedded as ``embed_utterance`` does
    (the unit-length mean of the partials' embeddings), the partials of
    ``batch_size`` windows in one batch.

    Arguments
    ---------
    batch_size : int
        Windows embedded together.

    Raises
    ------
    SystemExit
        One line, when the ``resemblyzer`` package is missing.
    """

    name = "resemblyzer"
    rate, partial_rate, min_coverage = 16000, 1.3, 0.75

    def __init__(self, batch_size=32):
        try:
            from resemblyzer import VoiceEncoder, audio, hparams
        except ImportError as err:
            raise SystemExit(f"--baseline resemblyzer needs the resemblyzer package (pip install "
                             f"resemblyzer): {err}") from None
        self.audio, self.target_dbfs = audio, hparams.audio_norm_target_dBFS
        self.encoder = VoiceEncoder("cpu", verbose=False).eval()
        self.batch_size = int(batch_size)

    def _partials(self, path, rate, start, end):
        """Mel spectrograms of the partials of one window (none for a silent window)."""
        wav = read_audio(path, int(round(start * rate)), int(round(end * rate)), self.rate).numpy()
        if not np.any(wav):
            return []
        wav = self.audio.normalize_volume(wav, self.target_dbfs, increase_only=True)
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), self.partial_rate,
                                                                     self.min_coverage)
        wav = np.pad(wav, (0, max(0, wav_slices[-1].stop - len(wav))))
        mel = self.audio.wav_to_mel_spectrogram(wav)
        return [mel[s] for s in mel_slices]

    def _embed(self, path, rate, windows):
        """``(windows kept, [n, 256] array)`` of a few windows, in one batch."""
        kept, mels, owner = [], [], []
        for start, end in windows:
            partials = self._partials(path, rate, start, end)
            if partials:
                mels += partials
                owner += [len(kept)] * len(partials)
                kept.append((start, end))
        if not kept:
            return [], np.zeros((0, 256), dtype=np.float32)
        with torch.no_grad():
            partials = self.encoder(torch.from_numpy(np.stack(mels))).numpy()
        emb = np.zeros((len(kept), partials.shape[1]), dtype=np.float64)
        np.add.at(emb, owner, partials)
        return kept, (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, path, windows):
        """``(windows kept, [N, 256] array)`` of a file's windows, as :meth:`Diarizer.embed_windows` gives them."""
        _, rate = audio_info(path)
        kept, emb = [], []
        for i in range(0, len(windows), self.batch_size):
            k, e = self._embed(path, rate, windows[i: i + self.batch_size])
            kept += k
            emb.append(e)
        return kept, (np.concatenate(emb) if emb else np.zeros((0, 256), dtype=np.float32))


def window_error(conv, windows, labels, duration, min_gap, collar=0.25):
    """:func:`diarization_error` of labelled windows against a conversation's reference."""
    segments = segments_from_windows(windows, [f"spk{lab}" for lab in labels.tolist()], min_gap=min_gap)
    return diarization_error(conv.segments, segments, collar, duration=duration)


def tune_baseline(args, variant, speakers, embedder, diarizer, work):
    """The baseline's clustering cosines with the lowest DER (collar 0.25) on tuning conversations.

    Agglomerative clustering tries every stopping cosine of :data:`BASELINE_AHC_GRID`
    with every merging cosine of :data:`BASELINE_MERGE_GRID`; spectral clustering
    (whose speaker count needs no threshold) every merging cosine, with the
    agglomerative choice as its fallback for few windows.

    Returns
    -------
    dict
        ``{method: {"ahc_threshold", "merge_threshold", "der_collar_0.25", "grid"}}``
        and ``seeds``.
    """
    plan = conversation_plan([0], args.baseline_tune, args.duration, args.duration_range, first=TUNING_SEED)
    cases = []
    for _, seed, seconds in plan:
        conv = simulate(args, speakers, work, f"{variant}_tune", seed, seconds)
        regions, duration = diarizer.vad(conv.wav)
        windows, emb = embedder(conv.wav, sliding_windows(regions, diarizer.window, diarizer.hop))
        cases.append((conv, windows, emb, duration))
    base = dict(Diarizer(diarizer.model, coarse_dim=0).cluster_options)
    scored = [{} for _ in cases]  # per conversation: {labels: DER parts}; many thresholds give the same labels

    def pooled(**options):
        errors = []
        for (conv, windows, emb, duration), cache in zip(cases, scored):
            labels, _ = cluster_windows(emb, windows, **{**base, **options})
            key = labels.tobytes()
            if key not in cache:
                cache[key] = window_error(conv, windows, labels, duration, diarizer.min_gap)
            errors.append(cache[key])
        return total_error(errors)["der"]

    ahc = {(a, m): pooled(method="ahc", ahc_threshold=a, merge_threshold=m)
           for a in BASELINE_AHC_GRID for m in BASELINE_MERGE_GRID}
    ahc_best = min(ahc, key=ahc.get)
    spectral = {m: pooled(method="spectral", ahc_threshold=ahc_best[0], merge_threshold=m)
                for m in BASELINE_MERGE_GRID}
    spectral_best = min(spectral, key=spectral.get)
    out = {"seeds": [seed for _, seed, _ in plan],
           "ahc": {"ahc_threshold": ahc_best[0], "merge_threshold": ahc_best[1], "der_collar_0.25": ahc[ahc_best],
                   "grid": [{"ahc_threshold": a, "merge_threshold": m, "der": d} for (a, m), d in ahc.items()]},
           "spectral": {"ahc_threshold": ahc_best[0], "merge_threshold": spectral_best,
                        "der_collar_0.25": spectral[spectral_best],
                        "grid": [{"merge_threshold": m, "der": d} for m, d in spectral.items()]}}
    for method in ("spectral", "ahc"):
        o = out[method]
        print(f"  {variant}: {embedder.name} {method} tuned on seeds {plan[0][1]}-{plan[-1][1]}: ahc_threshold "
              f"{o['ahc_threshold']}, merge_threshold {o['merge_threshold']}, DER {100 * o['der_collar_0.25']:.2f} %",
              flush=True)
    return out


# ------------------------------------------------------------------ configurations
def configurations(args, model, baseline_thresholds=None):
    """``{name: {"embedding", "method", "coarse_dim", "options"}}``: ours at full size and every prefix, the baseline.

    Our clustering options follow the clustered size (the agglomerative threshold,
    and spectral's fallback for few windows); the baseline clusters at full size
    with its own ``{method: {"ahc_threshold", "merge_threshold"}}``.
    """
    configs = {}
    for method in args.methods:
        for size, dim in {"full": 0, **{f"prefix{d}": d for d in args.dims}}.items():
            configs[f"{method}_{size}"] = {"embedding": "mrl", "method": method, "coarse_dim": dim,
                                           "options": dict(Diarizer(model, coarse_dim=dim, method=method)
                                                           .cluster_options)}
    for method, chosen in (baseline_thresholds or {}).items():
        options = dict(Diarizer(model, coarse_dim=0, method=method).cluster_options)
        options.update(ahc_threshold=chosen["ahc_threshold"], merge_threshold=chosen["merge_threshold"])
        configs[f"{args.baseline}_{method}_full"] = {"embedding": args.baseline, "method": method, "coarse_dim": 0,
                                                     "options": options}
    return configs


def full_size_of(configs, name):
    """The full-size configuration of the same embedding and method."""
    c = configs[name]
    return next(n for n, o in configs.items()
                if (o["embedding"], o["method"], o["coarse_dim"]) == (c["embedding"], c["method"], 0))


def timed_clustering(emb, windows, options, min_gap, repeats):
    """Labels, windows re-scored, segments and the fastest of ``repeats`` clustering times (segments included)."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        labels, rescored = cluster_windows(emb, windows, **options)
        segments = segments_from_windows(windows, [f"spk{lab}" for lab in labels.tolist()], min_gap=min_gap)
        best = min(best, time.perf_counter() - t)
    return labels, rescored, segments, best


# ------------------------------------------------------------------ summaries
def summarise(rows, configs, speed_only=False):
    """Per configuration: DER (collar 0.25 and 0), speaker-count accuracy, clustering time, RTF."""
    out = {}
    duration = sum(r["duration"] for r in rows)
    for name, config in configs.items():
        embedding = config["embedding"]
        front = sum(r["vad_s"] + r["embedding_s"][embedding] for r in rows)
        full_time = sum(r["configs"][full_size_of(configs, name)]["clustering_s"] for r in rows)
        cs = [r["configs"][name] for r in rows]
        clustering = sum(c["clustering_s"] for c in cs)
        windows = sum(r["windows"][embedding] for r in rows)
        out[name] = {} if speed_only else {
            "der_collar_0.25": total_error([c["der_collar_0.25"] for c in cs]),
            "der_collar_0": total_error([c["der_collar_0"] for c in cs]),
            "speaker_count_right": float(np.mean([c["num_speakers"] == r["num_speakers"]
                                                  for c, r in zip(cs, rows)])),
            "speaker_count_error_mean": float(np.mean([c["num_speakers"] - r["num_speakers"]
                                                       for c, r in zip(cs, rows)]))}
        out[name].update({
            "clustering_s": round(clustering, 5),
            "clustering_speedup_over_full": round(full_time / clustering, 3) if clustering else None,
            "rescored_share": round(sum(c["rescored"] for c in cs) / max(1, windows), 4),
            "vad_embedding_real_time_factor": round(front / duration, 5),
            "real_time_factor": round((front + clustering) / duration, 5)})
    return out


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def over_seeds(per_seed):
    """Per configuration: each seed's value, their mean and sample standard deviation, of DER and count accuracy.

    Example
    -------
    >>> s = lambda d: {"c": {"der_collar_0.25": {"der": d}, "der_collar_0": {"der": d + 0.1},
    ...                      "speaker_count_right": 0.5, "real_time_factor": 0.01}}
    >>> o = over_seeds({0: s(0.02), 1: s(0.04)})["c"]["der_collar_0.25"]
    >>> o["per_seed"], round(o["mean"], 4), round(o["std"], 4)
    ([0.02, 0.04], 0.03, 0.0141)
    """
    seeds = list(per_seed)
    out = {}
    for name, first in per_seed[seeds[0]].items():
        out[name] = {}
        for key in ("der_collar_0.25", "der_collar_0", "speaker_count_right", "real_time_factor"):
            if key not in first:
                continue
            values = [per_seed[s][name][key] for s in seeds]
            values = [v["der"] if isinstance(v, dict) else v for v in values]
            out[name][key] = {"per_seed": values, **_mean_std(values)}
    return out


# ------------------------------------------------------------------ running
def diarize_conversation(args, conv, diarizer, embedders, configs, speed_only):
    """One conversation: VAD once, each embedding once, every configuration clustered and scored."""
    t0 = time.perf_counter()
    regions, duration = diarizer.vad(conv.wav)
    vad_s = time.perf_counter() - t0
    windows = sliding_windows(regions, diarizer.window, diarizer.hop)
    embedded, embedding_s = {}, {}
    for name, embed in embedders.items():
        t = time.perf_counter()
        embedded[name] = embed(conv.wav, windows)
        embedding_s[name] = round(time.perf_counter() - t, 4)
    row = {"num_speakers": len(conv.speakers), "duration": round(duration, 3),
           "speech_s": round(sum(e - s for s, e, _ in conv.segments), 3), "overlap_s": conv.overlap,
           "reused_s": conv.reused, "windows": {n: len(w) for n, (w, _) in embedded.items()},
           "vad_s": round(vad_s, 4), "embedding_s": embedding_s, "configs": {}}
    for name, config in configs.items():
        wins, emb = embedded[config["embedding"]]
        labels, rescored, segments, seconds = timed_clustering(emb, wins, config["options"], diarizer.min_gap,
                                                               args.repeats)
        entry = {"num_speakers": int(labels.max() + 1) if len(labels) else 0, "rescored": rescored,
                 "clustering_s": round(seconds, 5)}
        if not speed_only:
            entry["der_collar_0.25"] = diarization_error(conv.segments, segments, 0.25, duration=duration)
            entry["der_collar_0"] = diarization_error(conv.segments, segments, 0.0, duration=duration)
        row["configs"][name] = entry
    return row, embedded["mrl"][1]


def _conversation_line(variant, seed, row, speed_only):
    def config(n, c):
        der = "" if speed_only else f"{100 * c['der_collar_0.25']['der']:.2f} % "
        return f"{n} {der}({c['num_speakers']} spk, {1000 * c['clustering_s']:.1f} ms)"

    return (f"  {variant} {seed}: {row['num_speakers']} speakers, {row['duration']:.0f} s, {row['windows']} windows; "
            + ", ".join(config(n, c) for n, c in row["configs"].items())
            + f"; VAD {row['vad_s']:.2f} s, embedding " + ", ".join(f"{n} {s:.2f} s"
                                                                    for n, s in row["embedding_s"].items()))


def run_variant(args, variant, model, baseline, work, speed_only=False):
    """Every conversation of a variant: ``(rows, configurations, baseline tuning or None)``."""
    speakers = held_out_speakers(args.data_folder, variant)
    print(f"{variant}: {len(speakers)} held-out speakers", flush=True)
    diarizer = Diarizer(model, coarse_dim=0)
    embedders = {"mrl": diarizer.embed_windows}
    tuning, thresholds = None, None
    if baseline is not None:
        embedders[baseline.name] = baseline
        if args.baseline_thresholds:
            a, m = args.baseline_thresholds
            thresholds = {method: {"ahc_threshold": a, "merge_threshold": None if m < 0 else m}
                          for method in args.methods}
        else:
            tuning = tune_baseline(args, variant, speakers, baseline, diarizer, work)
            thresholds = {method: tuning[method] for method in args.methods}
    configs = configurations(args, model, thresholds)
    rows = []
    for generator_seed, seed, seconds in conversation_plan(args.seeds, args.conversations, args.duration,
                                                           args.duration_range):
        conv = simulate(args, speakers, work, variant, seed, seconds)
        row, emb = diarize_conversation(args, conv, diarizer, embedders, configs, speed_only)
        rows.append({"generator_seed": generator_seed, "seed": seed, **row})
        print(_conversation_line(variant, seed, rows[-1], speed_only), flush=True)
        rows[-1]["_emb"] = emb  # for --scaling, dropped before writing
    return rows, configs, tuning


def report_variant(rows, configs, speed_only):
    """The variant's JSON: pooled summary, per generator seed, over seeds, the conversations."""
    pooled = summarise(rows, configs, speed_only)
    seeds = sorted({r["generator_seed"] for r in rows})
    per_seed = {s: summarise([r for r in rows if r["generator_seed"] == s], configs, speed_only) for s in seeds}
    return {"summary": pooled, "per_seed": {str(s): v for s, v in per_seed.items()},
            "over_seeds": over_seeds(per_seed) if len(seeds) > 1 else {},
            "reused_share": round(sum(r["reused_s"] for r in rows) / sum(r["duration"] for r in rows), 3),
            "audio_s": round(sum(r["duration"] for r in rows), 1),
            "configurations": configs,
            "conversations": rows}


def print_summary(variant, entry, speed_only):
    print(f"{variant} ({len(entry['conversations'])} conversations, {entry['audio_s'] / 60:.1f} min"
          + ("" if speed_only else ", collar 0.25 s") + "):")
    for name, s in entry["summary"].items():
        line = f"  {name}: "
        if not speed_only:
            d = s["der_collar_0.25"]
            line += (f"DER {100 * d['der']:.2f} % (missed {100 * d['missed']:.2f}, false alarm "
                     f"{100 * d['false_alarm']:.2f}, confusion {100 * d['confusion']:.2f}); collar 0: "
                     f"{100 * s['der_collar_0']['der']:.2f} %; count right {100 * s['speaker_count_right']:.0f} %; ")
            seeds = entry["over_seeds"].get(name)
            if seeds and seeds["der_collar_0.25"]["std"] is not None:
                o, z = seeds["der_collar_0.25"], seeds["der_collar_0"]
                line += (f"over {len(o['per_seed'])} seeds {100 * o['mean']:.2f} +- {100 * o['std']:.2f} % "
                         f"(collar 0: {100 * z['mean']:.2f} +- {100 * z['std']:.2f}); ")
        line += (f"clustering {s['clustering_s']:.3f} s (x{s['clustering_speedup_over_full']}); "
                 f"re-scored {100 * s['rescored_share']:.0f} %; RTF {s['real_time_factor']:.4f} "
                 f"(VAD + embedding {s['vad_embedding_real_time_factor']:.4f})")
        print(line, flush=True)


def scaling(args, model, rows):
    """Clustering time alone against the number of windows (pooled real window embeddings)."""
    pool = np.concatenate([r.pop("_emb") for r in rows])
    rng = np.random.default_rng(0)
    out = []
    for n in args.scaling:
        emb = pool[rng.choice(len(pool), n, replace=n > len(pool))]
        emb = emb + 1e-3 * rng.standard_normal(emb.shape)  # repeated windows are not identical
        windows = [(0.75 * i, 0.75 * i + 1.5) for i in range(n)]
        entry = {"windows": n}
        for method in args.methods:
            for name, dim in {"full": 0, **{f"prefix{d}": d for d in args.dims}}.items():
                options = dict(Diarizer(model, coarse_dim=dim, method=method).cluster_options)
                options.pop("num_speakers")
                t = time.perf_counter()
                labels, _ = cluster_windows(emb, windows, **options)
                entry[f"{method}_{name}_s"] = round(time.perf_counter() - t, 4)
        out.append(entry)
        print("  scaling", entry, flush=True)
    return out


# ------------------------------------------------------------------ models
def random_weights_model(preset, like, folder):
    """A model folder of a randomly initialised ``MRLEncoder.from_config(preset)``, loaded (for timings only).

    Its Matryoshka head has the sizes of the model ``like`` (and its thresholds, so
    that the clustering options are the same).
    """
    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.folder import write_model_folder
    from speechbrain_mrl.model.matryoshka import MatryoshkaProjection

    torch.manual_seed(0)
    encoder = MRLEncoder.from_config(preset)
    encoder.mrl_head = MatryoshkaProjection(encoder.pool_dim, embed_dim=int(like.embed_dim),
                                            mrl_dims=list(like.mrl_dims))
    path = write_model_folder(pathlib.Path(folder) / f"random_{preset}", encoder, thresholds=dict(like.thresholds),
                              extra_info={"note": SPEED_ONLY})
    return load_model(str(path))


def warm_up(model, embedders, work):
    """Imports, JIT compilation and first calls out of the timings: VAD, every embedding, both clusterings."""
    noise = work / "warm_up.wav"
    sf.write(noise, (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype("float32"), 16000)
    diarizer = Diarizer(model)
    diarizer.vad(noise)
    for embed in embedders:
        embed(noise, [(0.0, 1.5), (1.5, 3.0)])
    warm = np.random.default_rng(0).standard_normal((40, 32))
    for method in ("spectral", "ahc"):
        segments_from_windows([(0.0, 1.0)], [cluster_windows(warm, method=method, coarse_dim=8)[0][0]])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_folder", required=True,
                   help="folder with librispeech_train_clean_100/ and speech_commands/")
    p.add_argument("--model_folder", default="speechbrain-mrl/demo-sc", help="model folder or shipped name")
    p.add_argument("--variant", nargs="+", default=["librispeech", "sc"], choices=["librispeech", "sc"],
                   help="speakers: held-out LibriSpeech readers, Speech Commands test speakers")
    p.add_argument("--conversations", type=int, default=50, help="conversations per variant and generator seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="generator seeds: conversation i of seed s is seed s * conversations + i")
    p.add_argument("--duration", type=float, default=120.0, help="seconds per conversation")
    p.add_argument("--duration_range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="seconds per conversation drawn uniformly from this range (instead of --duration)")
    p.add_argument("--overlap_prob", type=float, default=0.1, help="probability that a turn overlaps")
    p.add_argument("--noise_snr", type=float, default=None, help="background noise SNR in dB (unset: no noise)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64], help="prefix sizes clustered first")
    p.add_argument("--methods", nargs="+", default=["spectral", "ahc"], choices=["spectral", "ahc"],
                   help="clusterings to run (each at full size and at every --dims prefix)")
    p.add_argument("--baseline", choices=["resemblyzer"],
                   help="also embed the same windows with this model (full size, each --methods)")
    p.add_argument("--baseline_tune", type=int, default=10,
                   help="conversations (seeds 1000 and up) choosing the baseline's clustering cosines")
    p.add_argument("--baseline_thresholds", type=float, nargs=2, metavar=("AHC", "MERGE"),
                   help="the baseline's agglomerative and merging cosines instead of tuning (MERGE < 0: none)")
    p.add_argument("--random_preset", help="time with a randomly initialised ReDimNet of this preset (e.g. b2) "
                                           "instead of the model: speed only, no DER")
    p.add_argument("--repeats", type=int, default=3, help="clustering timings per configuration (fastest kept)")
    p.add_argument("--scaling", type=int, nargs="*", default=[], help="also time clustering on N windows")
    p.add_argument("--threads", type=int, default=None, help="torch threads (unset: torch's default)")
    p.add_argument("--work_folder", default=None, help="where the conversations go (unset: a temporary one)")
    p.add_argument("--output", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    if args.duration_range and not 0 < args.duration_range[0] <= args.duration_range[1]:
        p.error(f"argument --duration_range: need 0 < LOW <= HIGH, got {args.duration_range}")
    if min(args.seeds) < 0 or args.conversations < 1:
        p.error("argument --seeds: need seeds >= 0 and --conversations >= 1")
    if (max(args.seeds) + 1) * args.conversations > TUNING_SEED:
        p.error(f"argument --seeds: conversation seeds reach {TUNING_SEED}, where the tuning conversations start")
    if args.random_preset and args.baseline:
        p.error("argument --baseline: not with --random_preset (speed only)")
    if args.baseline and not args.baseline_thresholds and args.baseline_tune < 1:
        p.error("argument --baseline_tune: need at least 1 conversation, or --baseline_thresholds")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = ResemblyzerWindows() if args.baseline == "resemblyzer" else None  # fails first when missing
    speed_only = bool(args.random_preset)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.work_folder or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        model = load_model(args.model_folder)
        if speed_only:
            model = random_weights_model(args.random_preset, model, tmp)
        load_s = time.perf_counter() - t
        warm_up(model, [Diarizer(model).embed_windows] + ([baseline] if baseline else []), work)
        report = {"command": "python benchmarks/diarization.py " + " ".join(argv or sys.argv[1:]),
                  "model": f"{args.random_preset} ({SPEED_ONLY})" if speed_only else args.model_folder,
                  "model_load_s": round(load_s, 3),
                  "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
                  "settings": {k: v for k, v in vars(args).items() if k not in ("output",)}, "variants": {}}
        if speed_only:
            report["note"] = SPEED_ONLY
            print(f"{args.random_preset}: {SPEED_ONLY}", flush=True)
        all_rows = []
        for variant in args.variant:
            rows, configs, tuning = run_variant(args, variant, model, baseline, work, speed_only)
            all_rows += rows
            report["variants"][variant] = report_variant(rows, configs, speed_only)
            if tuning:
                report["variants"][variant]["baseline_tuning"] = tuning
            print_summary(variant, report["variants"][variant], speed_only)
        if args.scaling:
            report["scaling"] = scaling(args, model, all_rows)
        for row in all_rows:
            row.pop("_emb", None)
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(f"written {args.output}")
    return report


if __name__ == "__main__":
    main()
