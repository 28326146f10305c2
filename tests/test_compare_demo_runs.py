"""benchmarks/compare_demo_runs.py: per-size mean and spread over seeds, and paired differences."""
import importlib.util
import json
import pathlib

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compare_demo_runs.py"
_SPEC = importlib.util.spec_from_file_location("compare_demo_runs", _SCRIPT)
compare_demo_runs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_demo_runs)


def _run(folder, test_eers, long_eers, scratch_s=10.0):
    """A finished demo run's summary.json with these EERs at sizes 8 and 64."""
    folder.mkdir(parents=True)
    table = lambda eers: {"matryoshka": {str(d): {"EER": e} for d, e in zip((8, 64), eers)}}  # noqa: E731
    (folder / "summary.json").write_text(json.dumps({
        "table": table(test_eers), "long_valid_table": table(long_eers),
        "times": {"scratch_epoch_s": scratch_s, "frozen_epoch_s": 1.0}}))
    return f"{folder}"


def test_means_spreads_and_paired_differences(tmp_path, capsys):
    runs = [f"a={_run(tmp_path / 'a1', (10, 8), (5, 2))}", f"a={_run(tmp_path / 'a2', (12, 9), (6, 3))}",
            f"b={_run(tmp_path / 'b1', (11, 9), (5, 2), 30.0)}",
            f"b={_run(tmp_path / 'b2', (14, 9.5), (7, 2), 50.0)}"]
    out = tmp_path / "compare.json"
    summary = compare_demo_runs.main([*runs, "--output", str(out)])
    assert summary["a"]["table"][8]["mean"] == 11 and summary["b"]["table"][8]["max"] == 14
    assert summary["a"]["table"][8]["std"] == pytest.approx(2 ** 0.5)
    assert summary["b"]["times"]["scratch_epoch_s"] == 40.0
    paired = summary["b - a, paired"]
    assert paired["table"][8]["mean"] == 1.5 and paired["table"][8]["std"] == pytest.approx(0.5 ** 0.5)
    assert paired["long_valid_table"][64]["mean"] == -0.5  # (0 - 1) / 2
    assert json.loads(out.read_text())["b - a, paired"]["table"]["8"]["n"] == 2
    assert "| b - a, paired | 2 | +1.50 ± 0.71 |" in capsys.readouterr().out


def test_no_paired_differences_for_unequal_groups(tmp_path):
    runs = [f"a={_run(tmp_path / 'a1', (10, 8), (5, 2))}", f"a={_run(tmp_path / 'a2', (12, 9), (6, 3))}",
            f"b={_run(tmp_path / 'b1', (11, 9), (5, 2))}"]
    assert "b - a, paired" not in compare_demo_runs.main(runs)


def test_a_folder_without_summary_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        compare_demo_runs.main([f"a={tmp_path}"])
    assert err.value.code == 2 and "no summary.json" in capsys.readouterr().err
