#!/usr/bin/env python3
"""End-to-end demo on real speech, CPU-sized (one command).

Each stage runs as its own process and leaves its outputs on disk; a stage
whose outputs exist is not run again, so a stopped demo continues where it
stopped (delete a stage's folder to run it again):

1. ``scratch/``: a SMALL ReDimNet trained from scratch
   (``train.py hparams/demo_scratch.yaml``; it also prepares ``data/``:
   Speech Commands regrouped by speaker + LibriSpeech readers);
2. ``mrl/``: frozen, with the Matryoshka head (``hparams/demo_mrl.yaml``);
3. ``finetune_timing/`` (optional): one epoch of full fine-tuning, for the
   frozen-vs-fine-tuning speed comparison;
4. ``scoring/<name>/``: the test trials scored at every size by
   ``speaker_verification_cosine.py`` for the trained Matryoshka model, its
   untrained initial head, PCA truncations of the backbone embedding and the
   frozen backbone's own embedding;
5. ``search/``: speaker search on the test speakers (``speechbrain-mrl enrol/evaluate/cascade``):
   each speaker enrolled from half its clips and identified from the other
   half through every funnel, and cascade verification of the test trials
   (margin calibrated on the validation trials);
6. the report: an EER/minDCF table, the funnel table and the cascade table,
   printed and written to ``results.md``, ``summary.json`` and ``eer_vs_size.png``;
   ``results.md`` also shows the pictures the stages drew (the training curves
   of both trainings, the chart of the prepared data).

Usage::

    python recipes/VoxCeleb/MRL/run_demo.py --data_folder /path/to/shared/data \\
        --output_folder results/demo

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

import torch

from speechbrain_mrl.data.manifests import CSV_HEADER, read_manifest, write_manifest
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.model.folder import write_model_folder
from speechbrain_mrl.data.charts import DATA_CHART_FILE
from speechbrain_mrl.training.plots import CURVES_FILE

HERE = pathlib.Path(__file__).resolve().parent
BASELINE_EER = 16.68  # MFCC statistics + cosine on the demo trials
#: Overrides of demo_scratch.yaml per backbone: the file's own small ReDimNet (0.24 M
#: parameters), or a ReDimNet2 of about the same size (0.24 M: C=12, 3 stages of 3 blocks,
#: 192 output channels), with the same front end, 1-D blocks and SpecAugment.
DEMO_BACKBONES = {
    "redimnet": [],
    "redimnet2": ["--redimnet_config", "{F: 40, C: 12, causal: none, block_1d_type: conv, "
                  "block_2d_type: basic_resnet, global_context_att: False, group_divisor: 1, "
                  "out_channels: 192, stages_setup: [[[1, 1], 3, 2, [[3, 3]], null], "
                  "[[2, 1], 3, 1, [[3, 3]], null], [[1, 2], 3, 1, [[3, 3]], null]], "
                  "embed_dim: 192, hop_length: 160, feat_type: pt, pooling_func: ASTP, "
                  "emb_bn: False, spec_params: {do_spec_aug: True, freq_mask_width: [0, 6], "
                  "time_mask_width: [0, 8]}}"],
}


def merge_overrides(*lists):
    """Merges ``--key value`` lists; a later occurrence of a key wins."""
    merged = {}
    for lst in lists:
        lst = list(lst)
        for i in range(0, len(lst), 2):
            merged[lst[i]] = lst[i + 1]
    return [x for kv in merged.items() for x in kv]


def run_python(done, *args):
    """Runs ``python args...`` in a new process unless the stage's output file ``done`` exists."""
    if done.is_file():
        print(f"[demo] {done} exists: stage skipped", flush=True)
        return False
    cmd = [sys.executable, *map(str, args)]
    print("$ " + " ".join(shlex.quote(a) for a in cmd), flush=True)
    subprocess.run(cmd, check=True)
    return True


def run_stage(done, script, *args):
    """Runs the recipe's ``script`` unless the stage's output file ``done`` exists."""
    extra = ["--noprogressbar"] if script == "train.py" else []
    return run_python(done, HERE / script, *args, *extra)


def search_stage(out, prep):
    """Speaker search on the test speakers: ``(identification report, cascade report)``.

    Each speaker is enrolled from the first half of its clips (by ID) and
    identified from the rest, by exact full-size search, a funnel from every
    smaller size and 16 -> 64 -> full (shortlists of 10 speakers); the test
    trials are verified by the 64-d cascade (the largest smaller size for
    models without 64).
    """
    folder, model = out / "search", out / "mrl" / "model"
    dims = json.loads((model / "model_info.json").read_text())["mrl_dims"][:-1]
    funnels = [str(d) for d in dims] + (["16,64"] if {16, 64} <= set(dims) else [])
    small = 64 if 64 in dims else dims[-1]
    if not (folder / "queries.csv").is_file():
        rows = read_manifest(prep / "test.csv")
        by_speaker = {}
        for uid in sorted(rows):
            by_speaker.setdefault(rows[uid]["spk_id"], []).append(uid)
        halves = {"enrol": [], "queries": []}
        for uids in by_speaker.values():
            halves["enrol"] += uids[:len(uids) // 2]
            halves["queries"] += uids[len(uids) // 2:]
        for name in ("enrol", "queries"):  # queries last: it marks the split as done
            write_manifest(folder / f"{name}.csv", [[u] + [rows[u][c] for c in CSV_HEADER[1:]]
                                                    for u in halves[name]])
    cli = ["-m", "speechbrain_mrl.cli.main"]
    common = ["--model_folder", model, "--index", folder / "index"]
    run_python(folder / "index" / "index.json", *cli, "enrol", *common,
               "--csv", folder / "enrol.csv")
    run_python(folder / "identification.json", *cli, "evaluate", *common,
               "--csv", folder / "queries.csv", "--funnels", *funnels, "--shortlist", "10",
               "--report", folder / "identification.json")
    run_python(folder / "cascade.json", *cli, "cascade", "--model_folder", model,
               "--csv", prep / "enrol.csv", prep / "test.csv", "--trials", prep / "trials_test.txt",
               "--calibration_csv", prep / "dev.csv", "--calibration_trials", prep / "val_trials.txt",
               "--small_dim", small, "--agreement", "1.0", "0.999", "--report", folder / "cascade.json")
    return (json.loads((folder / "identification.json").read_text()),
            json.loads((folder / "cascade.json").read_text()))


def search_lines(identification, cascade):
    """The funnel and cascade tables of :func:`search_stage` as markdown lines."""
    lines = [f"Speaker search: {identification['speakers']} test speakers enrolled from half "
             f"their clips, {identification['queries']} queries:", "",
             "| search | top-1 % | top-k % |", "|---|---:|---:|"]
    for name, r in identification["funnels"].items():
        top_k = next(v for key, v in r.items() if key.startswith("top") and key != "top1")
        lines.append(f"| {name} | {100 * r['top1']:.2f} | {100 * top_k:.2f} |")
    full = cascade["full_dim"]
    lines += ["", f"Cascade verification of the {cascade['trials']:,} test trials "
              f"({cascade['small_dim']}-d first, margin calibrated on the validation trials):", "",
              f"| target agreement | escalated | agreement with {full}-d | error rate "
              f"(cascade / {full}-d) |", "|---:|---:|---:|---:|"]
    for r in cascade["rows"]:
        lines.append(f"| {r['target_agreement']} | {r['escalated']:.1%} | {r['agreement']:.2%} | "
                     f"{r['error_rate']:.2%} / {cascade['full_size_error_rate']:.2%} |")
    return lines


TRIAL_LISTS = {  # scoring folder -> (enrol manifest, test manifest, trials)
    "scoring": ("enrol.csv", "test.csv", "trials_test.txt"),
    "scoring_long_valid": ("dev_long.csv", "dev_long.csv", "val_long_trials.txt"),
}


def score(name, out, prep, model_args, trial_list="scoring"):
    """Scores a trial list (cosine, every size) -> ``{dim: {"EER", "minDCF"}}``.

    ``trial_list``: ``scoring`` (the Speech Commands test trials) or
    ``scoring_long_valid`` (the held-out LibriSpeech readers' validation list).
    """
    folder = out / trial_list / name
    enrol, test, trials = TRIAL_LISTS[trial_list]
    run_stage(folder / "results.json", "speaker_verification_cosine.py",
              HERE / "hparams" / "verification.yaml", *model_args,
              f"--enrol_csv={prep / enrol}", f"--test_csv={prep / test}",
              f"--trials={prep / trials}", f"--output_folder={folder}",
              "--score_norm=[]", "--batch_size=32", "--device=cpu")
    res = json.loads((folder / "results.json").read_text())
    return {int(d): {"EER": r["EER"], "minDCF": r["minDCF@0.01"]} for d, r in res.items()}


def head_variant(mrl_out, head_file, folder, note):
    """The trained model's folder with another head saved by train.py (PCA or initial head)."""
    if not (folder / "model_info.json").is_file():  # the last file write_model_folder writes
        encoder = MRLEncoderClassifier.from_hparams(source=str(mrl_out / "model"),
                                                    run_opts={"device": "cpu"}).encoder
        encoder.mrl_head.load_state_dict(torch.load(mrl_out / head_file, weights_only=True))
        write_model_folder(folder, encoder, extra_info={"note": note})
    return [f"--model_folder={folder}"]


def plot(table, path):
    """EER vs embedding size (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style, label in (("matryoshka", "o-", "Matryoshka model (kept checkpoint)"),
                               ("initial_head", "^:", "initial head (untrained)"),
                               ("pca", "s--", "PCA truncation")):
        dims = sorted(table[name])
        ax.plot(dims, [table[name][d]["EER"] for d in dims], style, label=label)
    for d, r in table["backbone"].items():
        ax.plot([d], [r["EER"]], "k*", markersize=12, label="frozen backbone")
    ax.axhline(BASELINE_EER, color="grey", ls=":", label="MFCC baseline")
    ax.axhline(BASELINE_EER / 2, color="red", ls=":", label="target (baseline / 2)")
    sizes = sorted(table["matryoshka"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(d) for d in sizes])
    ax.minorticks_off()
    ax.set_xlabel("embedding size")
    ax.set_ylabel("EER (%)")
    ax.set_title("Speech Commands demo trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_lines(table):
    """Markdown rows: EER (minDCF) per size for the Matryoshka model and its baselines."""
    columns = ("matryoshka", "initial_head", "pca")
    lines = ["| size | Matryoshka EER % (minDCF) | untrained initial head | PCA-truncated backbone |",
             "|---:|---:|---:|---:|"]
    for d in sorted(table["matryoshka"]):
        cells = [f"{table[c][d]['EER']:.2f} ({table[c][d]['minDCF']:.4f})" for c in columns]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    for d, r in table["backbone"].items():
        lines.append(f"| frozen backbone's own embedding ({d}) | {r['EER']:.2f} ({r['minDCF']:.4f}) | | |")
    return lines


PICTURES = (  # (file under the output folder, caption) shown in results.md when present
    ("eer_vs_size.png", "EER against embedding size on the test trials"),
    (f"scratch/{CURVES_FILE}", "Stage 1 (ReDimNet from scratch): training curves"),
    (f"mrl/{CURVES_FILE}", "Stage 2 (frozen backbone, Matryoshka head): training curves"),
    (f"data/{DATA_CHART_FILE}", "Prepared data: rows per speaker and durations"),
)


def picture_lines(out):
    """Markdown lines showing the :data:`PICTURES` that exist under ``out``."""
    lines = []
    for rel, caption in PICTURES:
        if (out / rel).is_file():
            lines += [f"{caption}:", "", f"![{caption}]({rel})", ""]
    return ["", "## Pictures", ""] + lines if lines else []


def report(table, times, scratch, mrl, finetune, out, long_table=None, search=None):
    """Prints and writes the results tables, the target checks, summary.json and the plot."""
    full = max(table["matryoshka"])
    lines = ["Speech Commands test trials (1-s clips):", ""] + table_lines(table)
    if long_table is not None:
        lines += ["", "Long read speech validation list (held-out LibriSpeech readers, 4-s "
                  "segments):", ""] + table_lines(long_table)
    if search is not None:
        lines += [""] + search_lines(*search)
    m_full = table["matryoshka"][full]["EER"]
    b_full = next(iter(table["backbone"].values()))["EER"]
    d64 = 64 if 64 in table["matryoshka"] else sorted(table["matryoshka"])[0]
    checks = {
        f"EER <= {BASELINE_EER / 2:.2f}% (half the MFCC baseline)": m_full <= BASELINE_EER / 2,
        "full-size Matryoshka no worse than the frozen backbone": m_full <= b_full + 1e-9,
        f"{d64}-d prefix within 1.25x of full size": table["matryoshka"][d64]["EER"] <= 1.25 * m_full,
        "Matryoshka prefixes better than PCA truncation": all(
            table["matryoshka"][d]["EER"] < table["pca"][d]["EER"]
            for d in table["matryoshka"] if d != full),
    }
    times["frozen_epoch_s"] = sum(mrl["epoch_times_s"]) / len(mrl["epoch_times_s"])
    times["scratch_epoch_s"] = sum(scratch["epoch_times_s"]) / len(scratch["epoch_times_s"])
    if finetune is not None:
        times["finetune_epoch_s"] = finetune["epoch_times_s"][0]
        times["speedup_frozen_vs_finetune"] = times["finetune_epoch_s"] / times["frozen_epoch_s"]
        checks["frozen epoch >= 3x faster than fine-tuning"] = times["speedup_frozen_vs_finetune"] >= 3
    lines += ["", "Timing (s): " + ", ".join(f"{k}={v:.1f}" for k, v in times.items()), ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    summary = {"table": {k: {str(d): v for d, v in t.items()} for k, t in table.items()},
               "long_valid_table": {k: {str(d): v for d, v in t.items()}
                                    for k, t in (long_table or {}).items()},
               "times": times, "checks": checks,
               "search": dict(zip(("identification", "cascade"), search or ())),
               "validation": {"scratch": scratch["valid"], "mrl": mrl["valid"]}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(table, out / "eer_vs_size.png")
    print(f"plot: {out / 'eer_vs_size.png'}")
    (out / "results.md").write_text("\n".join([text] + picture_lines(out)).rstrip() + "\n")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_folder", required=True,
                   help="folder with speech_commands/ (+ librispeech_train_clean_100/)")
    p.add_argument("--output_folder", default="results/demo",
                   help="where every stage writes (a rerun continues the stages not done)")
    p.add_argument("--scratch_epochs", type=int, default=None,
                   help="epochs of the from-scratch backbone (default: demo_scratch.yaml's 40)")
    p.add_argument("--mrl_epochs", type=int, default=None,
                   help="epochs of the Matryoshka head (default: demo_mrl.yaml's 5)")
    p.add_argument("--no_finetune_timing", action="store_true",
                   help="skip the one-epoch full fine-tuning run used for the timing comparison")
    p.add_argument("--train_test", action="store_true",
                   help="also let train.py evaluate the test trials (the demo scores them with "
                        "speaker_verification_cosine.py anyway)")
    p.add_argument("--download", action="store_true",
                   help="download the Speech Commands test set when data_folder lacks it")
    p.add_argument("--backbone", default="redimnet", choices=sorted(DEMO_BACKBONES),
                   help="the small backbone trained from scratch: ReDimNet (0.24 M parameters) "
                        "or a ReDimNet2 of about the same size")
    p.add_argument("--scratch_overrides", default="",
                   help="extra overrides of demo_scratch.yaml, e.g. '--batch_size 32'")
    p.add_argument("--mrl_overrides", default="",
                   help="extra overrides of demo_mrl.yaml (also used by the timing run)")
    a = p.parse_args(argv)
    out = pathlib.Path(a.output_folder).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prep = out / "data"
    common = ["--data_folder", str(pathlib.Path(a.data_folder).resolve()), "--prep_folder",
              str(prep)] + (["--download", "True"] if a.download else [])
    if not a.train_test:
        common += ["--test_trials", ""]
    backbone = out / "scratch" / "backbone.pt"
    times = {}
    t0 = time.time()

    t = time.time()
    if run_stage(out / "scratch" / "results.json", "train.py", HERE / "hparams" / "demo_scratch.yaml",
                 *merge_overrides(["--output_folder", str(out / "scratch")] + common,
                                  DEMO_BACKBONES[a.backbone], shlex.split(a.scratch_overrides),
                                  ["--number_of_epochs", str(a.scratch_epochs)] if a.scratch_epochs else [])):
        times["scratch_stage_s"] = time.time() - t
    t = time.time()
    if run_stage(out / "mrl" / "results.json", "train.py", HERE / "hparams" / "demo_mrl.yaml",
                 *merge_overrides(["--output_folder", str(out / "mrl"), "--pretrained_backbone",
                                   str(backbone)] + common, shlex.split(a.mrl_overrides),
                                  ["--number_of_epochs", str(a.mrl_epochs)] if a.mrl_epochs else [])):
        times["mrl_stage_s"] = time.time() - t
    if not a.no_finetune_timing:
        run_stage(out / "finetune_timing" / "results.json", "train.py",
                  HERE / "hparams" / "demo_mrl.yaml", *merge_overrides(
                      shlex.split(a.mrl_overrides),
                      ["--output_folder", str(out / "finetune_timing"), "--pretrained_backbone",
                       str(backbone), "--unfreeze_epoch", "1", "--number_of_epochs", "1",
                       "--validate_before_training", "False", "--write_model_folder", "False",
                       "--test_trials", "", "--init_crops_per_speaker", "1"] + common))

    t = time.time()
    models = {
        "matryoshka": [f"--model_folder={out / 'mrl' / 'model'}"],
        "initial_head": head_variant(out / "mrl", "initial_head.ckpt", out / "initial_head_model",
                                     "untrained initial head"),
        "pca": head_variant(out / "mrl", "pca_head.ckpt", out / "pca_model",
                            "PCA truncation baseline"),
        "backbone": [f"--official_checkpoint={backbone}"],
    }
    table = {name: score(name, out, prep, args) for name, args in models.items()}
    long_table = None
    if (prep / "val_long_trials.txt").is_file():
        long_table = {name: score(name, out, prep, args, "scoring_long_valid")
                      for name, args in models.items()}
    times["scoring_s"] = time.time() - t
    t = time.time()
    search = search_stage(out, prep)
    times["search_s"] = time.time() - t
    times["total_s"] = time.time() - t0
    results = {name: json.loads((out / name / "results.json").read_text())
               for name in ("scratch", "mrl", "finetune_timing")
               if (out / name / "results.json").is_file()}
    return report(table, times, results["scratch"], results["mrl"],
                  None if a.no_finetune_timing else results["finetune_timing"], out, long_table,
                  search)


if __name__ == "__main__":
    main()
