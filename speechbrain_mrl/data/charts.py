"""The chart of prepared data: rows per speaker and durations of manifests (matplotlib, PNG).

:func:`plot_manifests` draws ``prepared_data.png`` for every data preparation; :func:`figure`
and :func:`save_figure` are the drawing pieces the training pictures share. Figures are drawn
on matplotlib's Agg canvas (no display, no global backend change) and written atomically.
"""
import math
import os

from speechbrain_mrl.data.manifests import read_manifest
from speechbrain_mrl.utils.files import atomic_output

__all__ = ["DATA_CHART_FILE", "figure", "plot_manifests", "save_figure"]

DATA_CHART_FILE = "prepared_data.png"


def figure(n_panels, ncols, panel_size=(4.2, 3.2), legend_rows=1):
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


def save_figure(fig, path):
    """Writes ``fig`` to ``path`` as PNG, atomically."""
    fig.canvas.draw()  # the layout, once more with the final tick labels (else labels can overlap)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


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
    >>> from speechbrain_mrl.data.manifests import write_manifest
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
    fig, (spk_ax, dur_ax) = figure(2, ncols=2, panel_size=(4.6, 3.4),
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
    return save_figure(fig, path)


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
