"""The pictures of a training run: recorded per epoch by a real Brain run, kept on resume."""
import json
import re

import matplotlib.image
import pytest

from recipe_data import make_speech_commands, scratch_overrides

import train  # noqa: E402  (recipe folder on sys.path via recipe_data)

from speechbrain_mrl.training import plots as run_plots


def logged(line, key):
    """The number logged for ``key`` in a line of train_log.txt."""
    return float(re.search(rf"\b{key}: ([-+.0-9e]+)", line).group(1))


def _epochs(argv, value):
    argv = list(argv)
    argv[argv.index("--number_of_epochs") + 1] = str(value)
    return argv


def test_history_and_pictures_of_a_run_and_its_resumption(tmp_path, monkeypatch):
    data = make_speech_commands(tmp_path / "data")
    out = tmp_path / "out"
    argv = scratch_overrides(data, out, 8, epochs=2, extra=["--ckpt_num_to_keep", "3"])
    drawn = []
    real = run_plots.plot_training
    monkeypatch.setattr(run_plots, "plot_training", lambda rows, path: (
        drawn.append([r["epoch"] for r in rows]) or real(rows, path)))
    train.main(argv)
    folder = out / "scratch"
    assert drawn == [[1], [1, 2]]  # redrawn at the end of every epoch
    rows = json.loads((folder / run_plots.HISTORY_FILE).read_text())["epochs"]
    log = (folder / "train_log.txt").read_text().splitlines()
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, line in zip(rows, log):
        # the numbers of train_log.txt, unrounded: loss, learning rate, EER of every list and size
        assert row["train_loss"] == pytest.approx(logged(line, "train loss"), rel=0.01)
        assert row["lr"] == pytest.approx(logged(line, "lr"), rel=0.01)
        assert set(row["valid_EER"]) == {"valid", "valid_long"}
        assert row["valid_EER"]["valid_long"]["16"] == pytest.approx(
            logged(line, "valid EER_long_16"), abs=0.01)
        assert set(row["train_loss_per_size"]) == {"4", "8", "16"}
        assert all(v > 0 for v in row["train_loss_per_size"].values())
    image = matplotlib.image.imread(folder / run_plots.CURVES_FILE)
    assert image.shape[0] > 300 and image.shape[1] > 600  # decodes; one panel per list + 2
    # resumed from the checkpoint of epoch 1: epoch 2 is trained again and replaces its row
    import shutil

    shutil.rmtree(folder / "save" / "CKPT+epoch2")
    drawn.clear()
    train.main(_epochs(argv, 3))
    resumed = json.loads((folder / run_plots.HISTORY_FILE).read_text())["epochs"]
    assert [r["epoch"] for r in resumed] == [1, 2, 3] and resumed[0] == rows[0]
    assert drawn == [[1, 2], [1, 2, 3]]
    # a new run in a folder without checkpoints starts a new history
    shutil.rmtree(folder / "save")
    train.main(_epochs(argv, 1))
    assert [r["epoch"] for r in json.loads(
        (folder / run_plots.HISTORY_FILE).read_text())["epochs"]] == [1]


def test_rows_of_several_lists_and_sizes_draw(tmp_path):
    """Panels for three validation lists, sizes only some rows have, no learning rate."""
    rows = [{"epoch": 0, "lr": None, "train_loss_per_size": {},
             "valid_EER": {"valid": {"64": 9.0}, "valid_long": {"64": 5.0}, "other": {"64": 7.0}}},
            {"epoch": 1, "lr": 1e-3, "train_loss_per_size": {"8": 3.0, "64": 1.0},
             "valid_EER": {"valid": {"64": 8.0}, "valid_long": {"64": 4.5}, "other": {"64": 6.0}}}]
    path = run_plots.plot_training(rows, tmp_path / "curves.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > height  # five panels: two rows of three
    assert run_plots.read_history(tmp_path / "none.json") == []

