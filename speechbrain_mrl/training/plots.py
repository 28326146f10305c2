"""Pictures of a training run and of prepared data (matplotlib, PNG).

* :func:`plot_training`: the per-epoch rows a run records
  (``train_history.json``, :func:`write_history`): training loss per
  Matryoshka size, validation EER per size (one panel per validation list) and
  the learning rate, drawn into ``training_curves.png``.
(The chart of prepared data is :func:`speechbrain_mrl.data.charts.plot_manifests`.)

Figures are drawn on matplotlib's Agg canvas (no display, no global backend
change) and written atomically.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import math
import os

from speechbrain_mrl.utils.files import write_text_atomic
from speechbrain_mrl.data.charts import figure, save_figure
from speechbrain_mrl.utils.json_files import dumps, read_json

logger = logging.getLogger(__name__)

HISTORY_FILE = "train_history.json"
CURVES_FILE = "training_curves.png"


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
    >>> _ = open(path, "w").write('{"epochs": [{"epoch": 0}')     # cut short, e.g. a full disk
    >>> read_history(path), os.path.isfile(path + ".damaged")
    ([], True)
    """
    if not os.path.isfile(path):
        return []
    try:
        rows = read_json(path)["epochs"]
        return [r for r in rows if last_epoch is None or r["epoch"] <= last_epoch]
    except (ValueError, KeyError, TypeError) as err:
        os.replace(path, f"{path}.damaged")
        logger.warning("%s is damaged (%s): kept as %s.damaged; the history restarts with this "
                       "run's epochs", path, err, path)
        return []


def write_history(path, rows):
    """Writes the per-epoch ``rows`` to ``path`` (JSON, atomically)."""
    write_text_atomic(path, dumps({"epochs": rows}) + "\n")


# ----------------------------------------------------------------- drawing
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
        As :class:`speechbrain_mrl.training.brain.MRLBrain` records them:
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
    fig, axes = figure(n_panels, ncols=n_panels if n_panels <= 3 else 2 if n_panels == 4 else 3,
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
    return save_figure(fig, path)
