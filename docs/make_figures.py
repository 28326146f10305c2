#!/usr/bin/env python3
"""Regenerates the figures under docs/ from saved results.

- ``docs/eer_vs_size.png`` from the ``summary.json`` that
  ``recipes/VoxCeleb/MRL/run_demo.py`` writes into its output folder: EER
  against embedding size for the Matryoshka model, the PCA truncation of the
  same backbone and the backbone's own embedding, on the Speech Commands test
  list and on the long read-speech validation list, side by side. Given several
  ``summary.json`` files (runs with different seeds) it plots their mean and
  shades the range between the lowest and the highest run.
- ``docs/search_scale.png`` from the JSON report that
  ``benchmarks/search_scale.py --output FILE`` writes: top-1 accuracy against
  latency per query for every search method, one panel per number of enrolled
  speakers.

Examples::

    python docs/make_figures.py --summary results/demo/summary.json
    python docs/make_figures.py --search_json results/search_scale.json
    python docs/make_figures.py --summary s1986/summary.json s1987/summary.json s1988/summary.json

Authors
-------
 * speechbrain-mrl developers
"""
import argparse
import json
import math
import pathlib

from speechbrain_mrl.utils.files import atomic_output

DOCS = pathlib.Path(__file__).resolve().parent

# (summary key, legend label, matplotlib style); the backbone is one point at its own size
CURVES = (("matryoshka", "Matryoshka model (kept checkpoint)", dict(marker="o", ls="-", color="C0")),
          ("initial_head", "untrained initial head", dict(marker="^", ls=":", color="C1")),
          ("pca", "PCA truncation of the same backbone", dict(marker="s", ls="--", color="C2")))
PANELS = (("table", "Speech Commands test trials (1-s clips)"),
          ("long_valid_table", "long read-speech validation list (4-s segments)"))
METHOD_STYLES = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "*", "h", "p")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_summaries(paths):
    """Reads demo ``summary.json`` files -> list of ``{table key: {name: {dim: EER}}}``."""
    runs = []
    for path in paths:
        summary = json.loads(pathlib.Path(path).read_text())
        if "table" not in summary:
            raise ValueError(f"{path}: no 'table' key; is this a run_demo.py summary.json?")
        runs.append({key: {name: {int(d): r["EER"] for d, r in rows.items()}
                           for name, rows in (summary.get(key) or {}).items()}
                     for key, _ in PANELS})
    return runs


def spread(runs, key, name):
    """``(dims, mean, low, high)`` of one curve over the runs (the sizes all runs share)."""
    curves = [run[key][name] for run in runs if name in run[key]]
    if not curves:
        return None
    dims = sorted(set.intersection(*(set(c) for c in curves)))
    values = [[c[d] for c in curves] for d in dims]
    return (dims, [sum(v) / len(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def size_axis(ax, dims):
    """Log-2 x axis with one labelled tick per embedding size and no minor ticks."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlim(dims[0] / 1.3, dims[-1] * 1.3)


def eer_figure(summaries, out, initial_head=False, title=None, dpi=150):
    """Writes the EER-against-size figure from demo ``summary.json`` files."""
    runs = load_summaries(summaries)
    panels = [(key, name) for key, name in PANELS if all(run[key] for run in runs)]
    if not panels:
        raise ValueError("the summaries share no EER table")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.8 * (len(panels) == 1),
                                                      4.4 + 0.5 * (len(panels) == 1)),
                             squeeze=False, layout="constrained")
    curves = [c for c in CURVES if initial_head or c[0] != "initial_head"]
    for ax, (key, panel_title) in zip(axes[0], panels):
        all_dims = set()
        for name, label, style in curves:
            s = spread(runs, key, name)
            if s is None:
                continue
            dims, mean, low, high = s
            all_dims.update(dims)
            ax.plot(dims, mean, label=label, markersize=5, **style)
            if len(runs) > 1:
                ax.fill_between(dims, low, high, color=style["color"], alpha=0.15, lw=0)
        s = spread(runs, key, "backbone")
        if s is not None:
            dims, mean, low, high = s
            all_dims.update(dims)
            ax.plot(dims, mean, "k*", markersize=13, label="backbone's own embedding", zorder=5)
            if len(runs) > 1:
                ax.errorbar(dims, mean, yerr=[[m - lo for m, lo in zip(mean, low)],
                                              [h - m for m, h in zip(mean, high)]],
                            fmt="none", ecolor="k", capsize=3, zorder=4)
        size_axis(ax, sorted(all_dims))
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("embedding size (prefix dimensions)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("EER (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(runs) > 1:
        from matplotlib.patches import Patch

        handles.append(Patch(color="grey", alpha=0.3))
        labels.append(f"lowest to highest of {len(runs)} runs")
    fig.legend(handles, labels, loc="outside lower center",
               ncol=min(len(labels), 3 if len(panels) > 1 else 1), fontsize=9, frameon=False)
    what = "mean of %d runs" % len(runs) if len(runs) > 1 else "one run"
    fig.suptitle(title or f"Demo: EER against embedding size ({what})", fontsize=11)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=pathlib.Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def latency_ticks(low, high):
    """Round tick values (1-2-5, or 1-2-3-5-7 for narrow ranges) covering ``[low, high]``."""
    for mantissas in ((1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 7)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1,
                                              math.ceil(math.log10(high)) + 1)
                 for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= 3:
            return ticks
    return ticks


def tick_label(value):
    """``0.3``, ``1``, ``20``, ``1,000``: no exponents."""
    return f"{value:,.0f}" if value >= 1 else f"{value:.2g}"


def search_figure(report_path, out, latency="batch1", title=None, dpi=150):
    """Writes the search-scale figure from a ``benchmarks/search_scale.py`` JSON report."""
    report = json.loads(pathlib.Path(report_path).read_text())
    rows = report["rows"]
    if not rows:
        raise ValueError(f"{report_path}: no rows")
    if latency == "batch1":
        key = "ms_per_query_batch1"
    else:
        key = next(k for k in rows[0] if k.startswith("ms_per_query_batch") and k != "ms_per_query_batch1")
    batch = key.removeprefix("ms_per_query_batch")
    scales = sorted({r["enrolled"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = {m: (f"C{i % 10}", METHOD_STYLES[i % len(METHOD_STYLES)]) for i, m in enumerate(methods)}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(scales), figsize=(max(7.0, 4.6 * len(scales)), 4.2),
                             squeeze=False, layout="constrained")
    for ax, n in zip(axes[0], scales):
        here = [r for r in rows if r["enrolled"] == n]
        for r in here:
            color, marker = style[r["method"]]
            ax.scatter(r[key], 100 * r["top1"], color=color, marker=marker, s=45,
                       alpha=0.85, label=r["method"], zorder=3)
        xs = [r[key] for r in here]
        low, high = min(xs) / 1.4, max(xs) * 1.4
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ticks = latency_ticks(low, high)
        ax.set_xticks(ticks, [tick_label(t) for t in ticks])
        ax.minorticks_off()
        ys = [100 * r["top1"] for r in here]
        pad = max(0.5, 0.08 * (max(ys) - min(ys)))
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_title(f"{n:,} enrolled ({report.get('real_speakers', '?')} real)", fontsize=10)
        ax.set_xlabel(f"ms per query, batch {int(batch):,} (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    by_label = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(lab, h)
    fig.legend(by_label.values(), by_label.keys(), loc="outside lower center",
               ncol=min(len(by_label), max(1, len(scales)) + 1 if len(scales) < 3 else 4),
               fontsize=8.5, frameon=False)
    fig.suptitle(title or f"Speaker search: accuracy against latency (shortlist "
                 f"{report.get('shortlist', '?')}, {report.get('threads', '?')} threads)", fontsize=11)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=pathlib.Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--summary", nargs="+", metavar="SUMMARY_JSON",
                   help="summary.json of a run_demo.py output folder (several: runs with different "
                        "seeds, plotted as mean and range); writes --eer_out")
    p.add_argument("--search_json", metavar="REPORT_JSON",
                   help="the JSON report of benchmarks/search_scale.py (its --output); writes "
                        "--search_out")
    p.add_argument("--eer_out", default=str(DOCS / "eer_vs_size.png"),
                   help="where the EER-against-size figure goes")
    p.add_argument("--search_out", default=str(DOCS / "search_scale.png"),
                   help="where the search-scale figure goes")
    p.add_argument("--initial_head", action="store_true",
                   help="also plot the untrained initial head (equal to the model when the kept "
                        "checkpoint is the initial one)")
    p.add_argument("--latency", choices=("batch1", "batch"), default="batch1",
                   help="search figure's x axis: latency of single queries, or per query in the "
                        "benchmark's large batches")
    p.add_argument("--eer_title", default=None, help="title of the EER figure; when not given, "
                   "the title says how many runs it shows")
    p.add_argument("--search_title", default=None, help="title of the search figure; when not given, "
                   "it names the shortlist and the thread count")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG files")
    a = p.parse_args(argv)
    if not a.summary and not a.search_json:
        p.error("give --summary, --search_json or both")
    if a.summary:
        print("wrote", eer_figure(a.summary, a.eer_out, a.initial_head, a.eer_title, a.dpi))
    if a.search_json:
        print("wrote", search_figure(a.search_json, a.search_out, a.latency, a.search_title, a.dpi))


if __name__ == "__main__":
    main()
