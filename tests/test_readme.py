"""The README's runnable Python example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_runnable_example(capsys):
    text = README.read_text()
    match = re.search(r"<!-- runnable[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no block marked runnable"
    exec(compile(match.group(1), str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "{64: (2, 64), 128: (2, 128), 192: (2, 192), 256: (2, 256)} (2, 64)" in printed
