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


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command that the README gives."""
    text = README.read_text()
    section = text.split("## Running the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
    ci_lines = (README.parent / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines]
