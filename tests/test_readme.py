"""The README's snippets run as written: every Python block in order, as one session, and
the quick start's command, offline, in a folder holding the audio files they name."""
import os
import pathlib
import re
import subprocess
import sys

import pytest
import soundfile as sf

from mrl_testutils import speaker_voice

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _audio_folder(folder, shared_data):
    """a.wav, b.wav and speakers/<name>/<n>.wav: real speech when the shared data is there."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    if shared_data is not None:
        sc = pathlib.Path(shared_data) / "speech_commands"
        speakers = sorted(p for p in sc.iterdir() if p.is_dir() and p.name != "splits")[:3]
        clips = [sorted(s.glob("*.flac"))[:2] for s in speakers]
    for s in range(3):
        for u in range(2):
            path = folder / "speakers" / f"spk{s}" / f"{u}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            if clips:
                audio, rate = sf.read(str(clips[s][u]))
            else:
                audio, rate = speaker_voice(s, u, 1.2).numpy(), 16000
            sf.write(str(path), audio, rate)
    (folder / "a.wav").write_bytes((folder / "speakers" / "spk0" / "0.wav").read_bytes())
    (folder / "b.wav").write_bytes((folder / "speakers" / "spk0" / "1.wav").read_bytes())
    return folder


def test_every_python_block_runs_as_one_session(tmp_path, monkeypatch, shared_data_or_none, capsys):
    blocks = PYTHON_BLOCK.findall(README.read_text())
    assert len(blocks) >= 6, "the README shows the API in Python blocks"
    monkeypatch.chdir(_audio_folder(tmp_path, shared_data_or_none))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    session = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{README.name}, Python block {i + 1}", "exec"), session)
    printed = capsys.readouterr().out
    assert "{64: (2, 64), 128: (2, 128), 192: (2, 192), 256: (2, 256)} (2, 64)" in printed
    assert session["emb64"].shape == (1, 1, 64) and session["emb"].shape == (6, 192)  # extracted
    assert sorted(session["all_sizes"]) == [8, 16, 32, 64, 128, 192]
    assert session["emb_64"].shape == (2, 64)
    assert sorted(set(session["ids"][0])) == sorted(session["ids"][0])


def test_quick_start_command_runs_offline(tmp_path, shared_data_or_none):
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(speechbrain-mrl verify [^\n]*)\n```", quick).group(1)
    folder = _audio_folder(tmp_path, shared_data_or_none)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "speechbrain_mrl.cli", *command.split()[1:]],
                          cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.fullmatch(r"score -?0\.\d{4} at 64-d: (same speaker|different speakers) "
                        r"\(threshold -?\d\.\d{4}\)\n", proc.stdout), proc.stdout
    assert proc.stderr.strip() == "" or "it/s" in proc.stderr  # no third-party log lines


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command that the README gives."""
    text = README.read_text()
    section = text.split("## Running the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()
    ci_lines = (README.parent / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines]


@pytest.mark.parametrize("name", ["speechbrain-mrl/demo-sc"])
def test_the_shipped_model_is_labelled(name):
    """The shipped model says what it was trained on and its EER per size on both demo lists."""
    from speechbrain_mrl.model.folder import resolve_model_source

    card = (pathlib.Path(resolve_model_source(name)) / "README.md").read_text()
    for words in ("Speech Commands", "LibriSpeech", "EER", "long validation", "test"):
        assert words in card, words
