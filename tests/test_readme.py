"""The README's runnable Python examples run as written."""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = re.compile(r"<!-- runnable[^>]*-->\s*```python\n(.*?)```", re.S)


def _runnable_blocks():
    return RUNNABLE.findall(README.read_text())


def test_readme_encoder_example(capsys):
    blocks = _runnable_blocks()
    assert blocks, "README has no block marked runnable"
    exec(compile(blocks[0], str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "{64: (2, 64), 128: (2, 128), 192: (2, 192), 256: (2, 256)} (2, 64)" in printed


def test_readme_qdrant_example():
    if importlib.util.find_spec("qdrant_client") is None:
        pytest.skip('qdrant-client is not installed (pip install -e ".[qdrant]")')
    block = next((b for b in _runnable_blocks() if "qdrant+local:" in b), None)
    assert block, "README has no runnable Qdrant example"
    names = {}
    exec(compile(block, str(README), "exec"), names)
    assert sorted(names["ids"][0]) == ["alice", "bob"]


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command that the README gives."""
    text = README.read_text()
    section = text.split("## Running the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
    ci_lines = (README.parent / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines]
