#!/usr/bin/env python3
"""End-to-end demo on real speech, CPU-sized (one command).

1. prepares the demo data (Speech Commands test set regrouped by speaker +
   optional LibriSpeech readers, see ``demo_prepare.py``);
2. trains a SMALL ReDimNet from scratch (``hparams/demo_scratch.yaml``);
3. freezes it and trains the Matryoshka head (``hparams/demo_mrl.yaml``);
4. (optional) times one epoch of full fine-tuning (same run, backbone unfrozen);
5. scores the demo trial list with ``speaker_verification_cosine.py`` at every
   size for: the trained Matryoshka model, its untrained initialisation (the
   discriminant rotation of the backbone embedding), PCA truncations of the
   backbone embedding, and the frozen backbone's own embedding; prints an
   EER/minDCF table, writes ``summary.json``, ``results.md`` and
   ``eer_vs_size.png``.

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
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BASELINE_EER = 16.68  # MFCC statistics + cosine on the demo trials


def merge_overrides(*lists):
    """Merges ``--key value`` lists; a later occurrence of a key wins."""
    merged = {}
    for lst in lists:
        lst = list(lst)
        for i in range(0, len(lst), 2):
            merged[lst[i]] = lst[i + 1]
    return [x for kv in merged.items() for x in kv]


def run_train(hparams, args, extra=()):
    """Runs train.py's main (in this process); returns ``(brain, results)``."""
    import train

    argv = [str(HERE / "hparams" / hparams), "--data_folder", str(args["data_folder"]),
            "--noprogressbar"] + list(extra)
    print("$ python train.py " + " ".join(shlex.quote(a) for a in argv), flush=True)
    return train.main(argv)


def score(name, out_folder, prep, **model):
    """Scores the demo test trials with the scoring script (cosine, every size)."""
    from hyperpyyaml import load_hyperpyyaml

    import speaker_verification_cosine as svc

    overrides = dict(model, enrol_csv=str(prep / "enrol.csv"), test_csv=str(prep / "test.csv"),
                     trials=str(prep / "trials_test.txt"), output_folder=str(out_folder / name),
                     score_norm=[], batch_size=32)
    with open(HERE / "hparams" / "verification.yaml") as f:
        hp = load_hyperpyyaml(f, overrides)
    res = svc.run(hp, device="cpu")
    return {int(d): {"EER": r["EER"], "minDCF": r["minDCF@0.01"]} for d, r in res.items()}


def write_head_model(mrl_out, head_file, folder, note):
    """Model folder of the trained model's backbone with another head saved by train.py.

    ``pca_head.ckpt`` gives the PCA truncations of the backbone embedding,
    ``initial_head.ckpt`` the untrained initial head.
    """
    import torch

    from speechbrain_mrl.packaging import write_model_folder

    info = json.loads((mrl_out / "model" / "model_info.json").read_text())
    head = torch.load(mrl_out / head_file, weights_only=True)
    lobe = torch.load(mrl_out / "model" / "embedding_model.ckpt", weights_only=True)
    return write_model_folder(folder, info["model_config"], lobe, head, info["embed_dim"],
                              info["mrl_dims"], extra_info={"note": note})


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_folder", required=True,
                   help="folder with speech_commands/ (+ librispeech_train_clean_100/)")
    p.add_argument("--output_folder", default="results/demo")
    p.add_argument("--scratch_epochs", type=int, default=None)
    p.add_argument("--mrl_epochs", type=int, default=None)
    p.add_argument("--no_finetune_timing", action="store_true",
                   help="skip the one-epoch full fine-tuning run used for the timing comparison")
    p.add_argument("--reuse_scratch", action="store_true",
                   help="reuse a finished stage 1 (<output_folder>/scratch) instead of training again")
    p.add_argument("--train_test", action="store_true",
                   help="also let train.py evaluate the test trials (the demo scores them with "
                        "speaker_verification_cosine.py anyway)")
    p.add_argument("--download", action="store_true",
                   help="download the Speech Commands test set when data_folder lacks it")
    p.add_argument("--scratch_overrides", default="",
                   help="extra overrides of demo_scratch.yaml, e.g. '--batch_size 32'")
    p.add_argument("--mrl_overrides", default="",
                   help="extra overrides of demo_mrl.yaml (also used by the timing run)")
    a = p.parse_args(argv)
    out = pathlib.Path(a.output_folder).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prep = out / "data"
    args = {"data_folder": pathlib.Path(a.data_folder).resolve()}
    common = ["--prep_folder", str(prep)] + (["--download", "True"] if a.download else [])
    if not a.train_test:
        common += ["--test_trials", ""]
    t0 = time.time()
    times = {}

    s_extra = merge_overrides(
        ["--output_folder", str(out / "scratch")] + common, shlex.split(a.scratch_overrides),
        ["--number_of_epochs", str(a.scratch_epochs)] if a.scratch_epochs else [])
    t = time.time()
    backbone = out / "scratch" / "backbone.pt"
    if a.reuse_scratch and backbone.is_file() and (out / "scratch" / "results.json").is_file():
        scratch_brain = None
        scratch = json.loads((out / "scratch" / "results.json").read_text())
    else:
        scratch_brain, scratch = run_train("demo_scratch.yaml", args, s_extra)
        times["scratch_stage_s"] = time.time() - t

    m_extra = merge_overrides(
        ["--output_folder", str(out / "mrl"), "--pretrained_backbone", str(backbone)] + common,
        shlex.split(a.mrl_overrides),
        ["--number_of_epochs", str(a.mrl_epochs)] if a.mrl_epochs else [])
    t = time.time()
    mrl_brain, mrl = run_train("demo_mrl.yaml", args, m_extra)
    times["mrl_stage_s"] = time.time() - t

    finetune = None
    if not a.no_finetune_timing:
        f_extra = ["--output_folder", str(out / "finetune_timing"), "--pretrained_backbone",
                   str(backbone), "--unfreeze_epoch", "1", "--number_of_epochs", "1",
                   "--validate_before_training", "False", "--write_model_folder", "False",
                   "--test_trials", "", "--init_crops_per_speaker", "1"] + common
        f_extra = merge_overrides(shlex.split(a.mrl_overrides), f_extra)
        _, finetune = run_train("demo_mrl.yaml", args, f_extra)

    write_head_model(out / "mrl", "pca_head.ckpt", out / "pca_model", "PCA truncation baseline")
    write_head_model(out / "mrl", "initial_head.ckpt", out / "initial_head_model",
                     "untrained initial head")
    scores = out / "scoring"
    table = {
        "matryoshka": score("matryoshka", scores, prep, model_folder=str(out / "mrl" / "model")),
        "initial_head": score("initial_head", scores, prep,
                              model_folder=str(out / "initial_head_model")),
        "pca": score("pca", scores, prep, model_folder=str(out / "pca_model")),
        "backbone": score("backbone", scores, prep, official_checkpoint=str(backbone)),
    }
    times["total_s"] = time.time() - t0
    frozen_epoch = sum(mrl["epoch_times_s"]) / len(mrl["epoch_times_s"])
    scratch_epoch = sum(scratch["epoch_times_s"]) / len(scratch["epoch_times_s"])
    times["frozen_epoch_s"] = frozen_epoch
    times["scratch_epoch_s"] = scratch_epoch
    if finetune is not None:
        times["finetune_epoch_s"] = finetune["epoch_times_s"][0]
        times["speedup_frozen_vs_finetune"] = finetune["epoch_times_s"][0] / frozen_epoch

    full = max(table["matryoshka"])
    columns = ("matryoshka", "initial_head", "pca")
    lines = ["| size | Matryoshka EER % (minDCF) | untrained initial head | PCA-truncated backbone |",
             "|---:|---:|---:|---:|"]
    for d in sorted(table["matryoshka"]):
        cells = [f"{table[c][d]['EER']:.2f} ({table[c][d]['minDCF']:.4f})" for c in columns]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    for d, r in table["backbone"].items():
        lines.append(f"| frozen backbone's own embedding ({d}) | {r['EER']:.2f} ({r['minDCF']:.4f}) | | |")
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
    if finetune is not None:
        checks["frozen epoch >= 3x faster than fine-tuning"] = times["speedup_frozen_vs_finetune"] >= 3
    lines += ["", "Timing (s): " + ", ".join(f"{k}={v:.1f}" for k, v in times.items()), ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()]
    report = "\n".join(lines)
    print("\n" + report, flush=True)
    (out / "results.md").write_text(report + "\n")
    summary = {"table": {k: {str(d): v for d, v in t.items()} for k, t in table.items()},
               "times": times, "checks": checks,
               "validation": {"scratch": scratch["valid"], "mrl": mrl["valid"]}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(table, out / "eer_vs_size.png")
    print(f"plot: {out / 'eer_vs_size.png'}")
    summary["brains"] = {"scratch": scratch_brain, "mrl": mrl_brain}  # for tests; not saved
    return summary


if __name__ == "__main__":
    main()
