#!/usr/bin/env python3
"""Per-size EERs of several demo runs, grouped (e.g. by backbone), as mean and spread over seeds.

Each run is a ``run_demo.py`` output folder (its ``summary.json``); runs are
given as ``GROUP=FOLDER``. For every group and Matryoshka size the script prints
the mean EER over the group's runs, its sample standard deviation and the
range, on both demo lists (the Speech Commands test trials and the long
validation list of held-out LibriSpeech readers), with the mean scratch-epoch
and frozen-epoch times, as a Markdown table; ``--output`` also writes the
numbers as JSON. With two groups of as many runs, it also gives the paired
differences (second group minus first, run by run in the order given, e.g.
seed by seed), whose spread is the one to compare a difference with.

    python benchmarks/compare_demo_runs.py \\
        redimnet=results/rn_s1986 redimnet=results/rn_s1987 \\
        redimnet2=results/r2_s1986 redimnet2=results/r2_s1987 --output compare.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import pathlib
import statistics

from speechbrain_mrl.utils.files import write_text_atomic

LISTS = {"table": "Speech Commands test", "long_valid_table": "long validation (LibriSpeech)"}


def read_run(folder):
    """The per-size EERs of both lists and the epoch times of one demo run."""
    summary = json.loads((pathlib.Path(folder) / "summary.json").read_text())
    eers = {name: {int(d): row["EER"] for d, row in summary[name]["matryoshka"].items()}
            for name in LISTS}
    times = {k: summary["times"].get(k) for k in ("scratch_epoch_s", "frozen_epoch_s")}
    return {"folder": str(folder), "eer": eers, "times": times}


def spread(values):
    """Mean, sample standard deviation (0 for one value), minimum and maximum."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(groups):
    """``{group: {list: {size: spread}, times: {name: mean}}}`` over each group's runs."""
    out = {}
    for group, runs in groups.items():
        sizes = sorted(set.intersection(*(set(r["eer"]["table"]) for r in runs)))
        out[group] = {name: {d: spread([r["eer"][name][d] for r in runs]) for d in sizes}
                      for name in LISTS}
        out[group]["times"] = {k: statistics.fmean(r["times"][k] for r in runs)
                               for k in ("scratch_epoch_s", "frozen_epoch_s")
                               if all(r["times"][k] is not None for r in runs)}
        out[group]["runs"] = [r["folder"] for r in runs]
    return out


def paired_differences(groups):
    """``{list: {size: spread}}`` of the second group's EER minus the first's, run by run
    (None unless there are exactly two groups with as many runs)."""
    if len(groups) != 2:
        return None
    first, second = groups.values()
    if len(first) != len(second):
        return None
    sizes = sorted(set.intersection(*(set(r["eer"]["table"]) for r in first + second)))
    return {name: {d: spread([b["eer"][name][d] - a["eer"][name][d]
                              for a, b in zip(first, second)]) for d in sizes}
            for name in LISTS}


def markdown(summary, differences=None, names=("first", "second")):
    """One table per list: a row per group, a column per size, ``mean ± std``."""
    lines = []
    for name, title in LISTS.items():
        sizes = sorted({d for g in summary.values() for d in g[name]})
        lines += [f"EER % on the {title} list (mean ± std over runs)", "",
                  "| backbone | runs | " + " | ".join(str(d) for d in sizes) + " |",
                  "|---|---:|" + "---:|" * len(sizes)]
        for group, rows in summary.items():
            cells = [f"{rows[name][d]['mean']:.2f} ± {rows[name][d]['std']:.2f}" if d in rows[name]
                     else "" for d in sizes]
            lines.append(f"| {group} | {len(rows['runs'])} | " + " | ".join(cells) + " |")
        if differences:
            cells = [f"{differences[name][d]['mean']:+.2f} ± {differences[name][d]['std']:.2f}"
                     for d in sizes]
            pairs = differences[name][sizes[0]]["n"]
            lines.append(f"| {names[1]} - {names[0]}, paired | {pairs} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| backbone | scratch epoch s | frozen epoch s |")
    lines.append("|---|---:|---:|")
    for group, rows in summary.items():
        t = rows["times"]
        lines.append(f"| {group} | {t.get('scratch_epoch_s', float('nan')):.1f} | "
                     f"{t.get('frozen_epoch_s', float('nan')):.1f} |")
    return "\n".join(lines)


def parse_run(text):
    group, sep, folder = text.partition("=")
    if not sep or not group or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected GROUP=FOLDER")
    if not (pathlib.Path(folder) / "summary.json").is_file():
        raise argparse.ArgumentTypeError(f"{folder}: no summary.json (not a finished demo run)")
    return group, folder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", type=parse_run, help="GROUP=FOLDER of a finished demo run")
    p.add_argument("--output", default=None, help="JSON file to write (unset: print only)")
    args = p.parse_args(argv)
    groups = {}
    for group, folder in args.runs:
        groups.setdefault(group, []).append(read_run(folder))
    summary = summarise(groups)
    differences = paired_differences(groups)
    print(markdown(summary, differences, list(groups)))
    if differences:
        first, second = groups
        summary[f"{second} - {first}, paired"] = differences
    if args.output:
        write_text_atomic(args.output, json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
