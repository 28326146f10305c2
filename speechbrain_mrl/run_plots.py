"""Pictures of a training run and of prepared data (matplotlib, PNG).

* :func:`plot_training`: the per-epoch rows a run records
  (``train_history.json``, :func:`write_history`): training loss per
  Matryoshka size, validation EER per size (one panel per validation list) and
  the learning rate, drawn into ``training_curves.png``.
* :func:`plot_manifests`: rows per speaker and durations of prepared
  manifests, drawn into ``prepared_data.png`` by the data preparations.

Figures are drawn on matplotlib's Agg canvas (no display, no global backend
change) and written atomically.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import math
import os

from speechbrain_mrl.files import atomic_output, write_text_atomic
from speechbrain_mrl.manifests import read_manifest

HISTORY_FILE = "train_history.json"
CURVES_FILE = "training_curves.png"
DATA_CHART_FILE = "prepared_data.png"


# ----------------------------------------------------------------- history
def read_history(path, last_epoch=None):
    """The rows of a ``train_history.json`` (none when it does not exist).

    Arguments
    ---------
    path : str or os.PathLike
        The history file.
    last_epoch : int, optional
        Rows of later epochs are left out (a run resumed from an earlier
        checkpoint trains them again).

    Returns
    -------
    list of dict

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), HISTORY_FILE)
    >>> write_history(path, [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}])
    >>> [r["epoch"] for r in read_history(path, last_epoch=1)], read_history(path + ".none")
    ([0, 1], [])
    """
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = json.load(f)["epochs"]
    return [r for r in rows if last_epoch is None or r["epoch"] <= last_epoch]


def write_history(path, rows):
    """Writes the per-epoch ``rows`` to ``path`` (JSON, atomically)."""
    write_text_atomic(path, json.dumps({"epochs": rows}, indent=1) + "\n")


# ----------------------------------------------------------------- drawing
def _figure(n_panels, ncols, panel_size=(4.2, 3.2), legend_rows=1):
    """A Figure on the Agg canvas with ``n_panels`` axes and room for one legend below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    legend_in = 0.35 + 0.25 * legend_rows
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + legend_in),
                 dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _save(fig, path):
    """Writes ``fig`` to ``path`` as PNG, atomically."""
    fig.canvas.draw()  # the layout, once more with the final tick labels (else labels can overlap)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _size_colors(sizes):
    """One colour per embedding size, from small (light) to large (dark)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {d: cmap(0.85 - 0.8 * i / n) for i, d in enumerate(sorted(sizes))}


def plot_training(rows, path):
    """Draws the curves of a run's per-epoch rows into one PNG.

    Panels: training loss per Matryoshka size (mean over the epoch's
    batches), validation EER per size for each validation list (epoch 0:
    the model before training, when it was validated) and the learning rate
    at the end of each epoch. One legend (the sizes) for the whole figure.

    Arguments
    ---------
    rows : list of dict
        As :class:`speechbrain_mrl.training.MRLBrain` records them:
        ``epoch``, ``lr``, ``train_loss_per_size`` (``{size: loss}``) and
        ``valid_EER`` (``{list: {size: EER %}}``).
    path : str or os.PathLike
        The PNG to write.

    Returns
    -------
    str or os.PathLike
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> rows = [{"epoch": e, "lr": 1e-3 / (e + 1), "train_loss_per_size":
    ...          {"8": 9.0 - e, "16": 8.0 - e} if e else {},
    ...          "valid_EER": {"valid": {"8": 20.0 - e, "16": 15.0 - e}}} for e in range(3)]
    >>> path = plot_training(rows, os.path.join(tempfile.mkdtemp(), CURVES_FILE))
    >>> open(path, "rb").read(4)
    b'\\x89PNG'
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    lists = list(dict.fromkeys(name for r in rows for name in r.get("valid_EER", {})))
    sizes = sorted({int(d) for r in rows for part in
                    [r.get("train_loss_per_size", {})] + list(r.get("valid_EER", {}).values())
                    for d in part})
    colors = _size_colors(sizes)
    n_panels = 2 + len(lists)
    fig, axes = _figure(n_panels, ncols=n_panels if n_panels <= 3 else 2 if n_panels == 4 else 3,
                        legend_rows=math.ceil(len(sizes) / 8))

    def curve(ax, key):
        for d in sizes:
            points = [(r["epoch"], key(r).get(str(d))) for r in rows]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), "o-", color=colors[d], markersize=3.5, linewidth=1.4)

    loss_ax, lr_ax, eer_axes = axes[0], axes[-1], axes[1:-1]
    curve(loss_ax, lambda r: r.get("train_loss_per_size", {}))
    loss_ax.set_title("training loss per size")
    loss_ax.set_ylabel("AAM loss (epoch mean)")
    for ax, name in zip(eer_axes, lists):
        curve(ax, lambda r, name=name: r.get("valid_EER", {}).get(name, {}))
        ax.set_title(f"validation EER: {name}")
        ax.set_ylabel("EER (%)")
    lr_points = [(r["epoch"], r["lr"]) for r in rows if r.get("lr") is not None]
    if lr_points:
        lr_ax.plot(*zip(*lr_points), "o-", color="black", markersize=3.5, linewidth=1.4)
    lr_ax.set_title("learning rate (end of epoch)")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes:
        ax.set_xlabel("epoch (0: before training)" if ax in eer_axes and any(
            r["epoch"] == 0 for r in rows) else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[d], marker="o", markersize=4, label=f"size {d}")
               for d in sizes]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
                   title="Matryoshka embedding size", fontsize=9, title_fontsize=9)
    return _save(fig, path)


def plot_manifests(manifests, path):
    """Draws the rows per speaker and the durations of prepared manifests into one PNG.

    Arguments
    ---------
    manifests : dict of str to (str or list of str)
        ``{name: csv path(s)}`` (e.g. ``{"train": ..., "test": [enrol, test]}``;
        rows of several files are counted once per ID); missing files are
        left out.
    path : str or os.PathLike
        The PNG to write.

    Returns
    -------
    str or os.PathLike
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mrl.manifests import write_manifest
    >>> folder = tempfile.mkdtemp()
    >>> csv = os.path.join(folder, "train.csv")
    >>> _ = write_manifest(csv, [[f"u{i}", 1.0 + i, "a.wav", 0, 1, f"s{i % 3}"] for i in range(9)])
    >>> open(plot_manifests({"train": csv}, os.path.join(folder, DATA_CHART_FILE)), "rb").read(4)
    b'\\x89PNG'
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    data = {}
    for name, paths in manifests.items():
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
        rows = {}
        for csv in paths:
            if os.path.isfile(csv):
                rows.update(read_manifest(csv))
        if rows:
            per_spk = {}
            for r in rows.values():
                per_spk[r["spk_id"]] = per_spk.get(r["spk_id"], 0) + 1
            data[name] = (list(per_spk.values()), [float(r["duration"]) for r in rows.values()])
    ncol = 1 if len(data) > 4 else 2 if len(data) > 1 else 1
    fig, (spk_ax, dur_ax) = _figure(2, ncols=2, panel_size=(4.6, 3.4),
                                    legend_rows=math.ceil(len(data) / ncol))
    # colours and dash patterns: equal histograms (e.g. of balanced sets) stay visible
    styles = {name: (f"C{i}", ("-", "--", ":", "-.")[i % 4]) for i, name in enumerate(data)}
    for ax, index in ((spk_ax, 0), (dur_ax, 1)):
        values = [v for counts in data.values() for v in counts[index]]
        if not values:
            continue
        lo, hi = min(values), max(values)
        bins = _bins(lo, hi, integer=index == 0)
        if index == 0 and hi - lo <= 10:  # few distinct counts: each one a tick
            ax.set_xticks(range(int(lo), int(hi) + 1))
        elif index == 0:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for name, counts in data.items():  # shares, so that sets of any size compare
            ax.hist(counts[index], bins=bins, histtype="step", linewidth=1.8,
                    weights=[100.0 / len(counts[index])] * len(counts[index]),
                    color=styles[name][0], linestyle=styles[name][1])
    spk_ax.set_title("rows per speaker")
    spk_ax.set_xlabel("manifest rows per speaker (utterances or segments)")
    spk_ax.set_ylabel("share of the set's speakers (%)")
    dur_ax.set_title("durations")
    dur_ax.set_xlabel("duration (s)")
    dur_ax.set_ylabel("share of the set's rows (%)")
    for ax in (spk_ax, dur_ax):
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=styles[name][0], linestyle=styles[name][1], linewidth=1.8,
                      label=f"{name}: {len(c[0]):,} speakers, {len(c[1]):,} rows, "
                            f"{_hours(sum(c[1]))}")
               for name, c in data.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=9)
    return _save(fig, path)


def _hours(seconds):
    """A total duration as hours, or minutes under an hour.

    Example
    -------
    >>> _hours(5400), _hours(330)
    ('1.5 h', '5.5 min')
    """
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _bins(lo, hi, integer, n=30):
    """Histogram bin edges from ``lo`` to ``hi`` (``integer``: whole numbers centred in bins)."""
    if integer:
        step = max(1, math.ceil((hi - lo + 1) / n))
        return [lo - 0.5 + i * step for i in range(math.ceil((hi - lo + 1) / step) + 1)]
    if hi <= lo:
        return [lo - 0.5, lo + 0.5]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]
