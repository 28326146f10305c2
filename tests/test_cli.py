"""The speechbrain-mrl command line, the one audio reader and the one embedding path."""
import argparse
import re
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from mrl_testutils import speaker_voice, write_tiny_model, write_voice_corpus
from speechbrain_mrl import cli
from speechbrain_mrl.data.audio import AudioError
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.data.sources import read_sources


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_has_help_and_a_default_shown():
    commands = _subparsers(cli.build_parser())
    assert set(commands) == {"extract", "enrol", "identify", "verify", "evaluate", "calibrate",
                             "cascade", "score", "diarize", "score-diarization", "copy-index",
                             "export", "package",
                             "prepare-voxceleb", "prepare-librispeech", "prepare-demo"}
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and not action.required and action.dest != "help":
                assert "default" in action.help or "default: " in text, (name, action.dest)
    # one meaning per flag: --out is gone, folders are --output_folder, JSON results --report
    for name, parser in commands.items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--out" not in flags
        # snake_case, one name per notion (a false-alarm rate is --false_alarm everywhere)
        assert all(re.fullmatch(r"-h|--[a-z0-9]+(_[a-z0-9]+)*", f) for f in flags), (name, flags)
        assert "--far" not in flags
        assert "--report" in flags, f"{name} has no --report"


def _run(*args, check_rc=None):
    exe = shutil.which("speechbrain-mrl")
    cmd = [exe] if exe else [sys.executable, "-m", "speechbrain_mrl.cli"]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def model_and_voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    folder, _, _ = write_tiny_model(root / "model")
    corpus = write_voice_corpus(root / "speakers", n_spk=3, n_utt=2)
    return root, folder, corpus


def test_the_console_script_is_installed_and_errors_are_one_line(model_and_voices, tmp_path):
    root, folder, _ = model_and_voices
    assert shutil.which("speechbrain-mrl"), "pip install did not put speechbrain-mrl on PATH"
    proc = _run("verify", "--model_folder", folder, tmp_path / "missing.wav", tmp_path / "b.wav",
                check_rc=1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.wav" in lines[0] and "Traceback" not in proc.stderr
    assert lines[0].startswith("speechbrain-mrl verify: error:")
    debug = _run("verify", "--debug", "--model_folder", folder, tmp_path / "missing.wav",
                 tmp_path / "b.wav")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    nan = _run("identify", "--model_folder", folder, "--index", tmp_path / "idx", "--files", "a.wav",
               "--threshold", "nan")
    assert nan.returncode == 2 and "finite" in nan.stderr
    far = _run("evaluate", "--model_folder", folder, "--index", tmp_path / "idx", "--csv", "q.csv",
               "--false_alarm", "1.5")
    assert far.returncode == 2 and "(0, 1)" in far.stderr


def test_verify_command_equals_verify_files(model_and_voices):
    root, folder, corpus = model_and_voices
    a, b = corpus[sorted(corpus)[0]][1], corpus[sorted(corpus)[-1]][1]
    result = cli.main(["verify", "--model_folder", str(folder), str(a), str(b), "--target_dim", "8"])
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    score, decision = model.verify_files(a, b, target_dim=8)
    assert result["score"] == pytest.approx(float(score), abs=1e-5)
    assert result["same_speaker"] == bool(decision) and result["threshold"] == model.threshold_for(8)
    proc = _run("verify", "--model_folder", folder, a, b, "--threshold", "0.2", check_rc=0)
    assert proc.stdout.startswith("score ") and "threshold 0.2000" in proc.stdout
    assert "AVX512" not in proc.stderr and "Could not load" not in proc.stderr


def test_one_reader_gives_unique_stable_ids(tmp_path):
    spk = tmp_path / "audio" / "spk1"
    spk.mkdir(parents=True)
    wav = speaker_voice(0, 0, 0.5).numpy()
    sf.write(spk / "a.wav", wav, 16000)
    sf.write(spk / "a.flac", wav, 16000)
    rows = read_sources(folder=tmp_path / "audio", need_speakers=True)
    assert list(rows) == ["spk1/a.flac", "spk1/a.wav"]  # two files, two IDs
    assert read_sources(folder=tmp_path / "audio") == rows
    assert rows["spk1/a.wav"]["duration"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="given twice"):
        read_sources(files=[str(spk / "a.wav"), str(spk / "a.wav")])
    with pytest.raises(ValueError, match="exactly one audio source"):
        read_sources(files=[str(spk / "a.wav")], folder=tmp_path)
    with pytest.raises(ValueError, match="no speaker"):
        read_sources(files=[str(spk / "a.wav")], need_speakers=True)
    (tmp_path / "list.txt").write_text(f"# my files\n{spk / 'a.wav'}\n\n{spk / 'a.flac'}\n")
    assert list(read_sources(file_list=tmp_path / "list.txt")) == [str(spk / "a.wav"),
                                                                    str(spk / "a.flac")]


def test_waveform_input_pitfalls_are_handled(model_and_voices):
    _, folder, _ = model_and_voices
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    wav = speaker_voice(1, 0, 1.0)
    pcm = torch.round(wav * 32767).to(torch.int16)
    as_float = model.encode_batch(pcm.float()[None] / 32768)
    as_int = model.encode_batch(pcm[None])
    torch.testing.assert_close(as_int, as_float)
    stereo = torch.stack([wav, wav], dim=1)  # [T, 2], as soundfile.read returns it
    with pytest.raises(AudioError, match=r"channels-last recording \[time, channels\].*wavs\[None\]"):
        model.encode_batch(stereo)
    torch.testing.assert_close(model.encode_batch(stereo[None]), model.encode_batch(wav[None]),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(AudioError, match="int64"):
        model.encode_batch(pcm.long()[None])


def test_a_long_recording_gets_one_embedding_from_every_command(model_and_voices, tmp_path):
    """encode_file, extract, enrol and the scoring script embed a 70-s file alike (windowed)."""
    from speechbrain_mrl.inference.extract import load_embeddings
    from speechbrain_mrl.search.index import SpeakerIndex

    root, folder, corpus = model_and_voices
    long = tmp_path / "speakers" / "spkL" / "long.wav"
    long.parent.mkdir(parents=True)
    sf.write(long, torch.cat([speaker_voice(2, u, 7.0) for u in range(10)]).numpy(), 16000)
    short = corpus[sorted(corpus)[0]][1]
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert model.long_audio_seconds == 60.0
    ref = model.encode_file(long)[0, 0].numpy()

    cli.main(["extract", "--model_folder", str(folder), "--files", str(long), str(short),
              "--output_folder", str(tmp_path / "emb")])
    ids, emb, _ = load_embeddings(tmp_path / "emb")
    assert np.abs(emb[ids.index(str(long))] - ref).max() <= 1e-5

    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(tmp_path / "speakers"),
              "--index", str(tmp_path / "idx")])
    index = SpeakerIndex.load(tmp_path / "idx")
    vector = np.asarray(index._vectors[index.speakers.index("spkL")])
    assert np.abs(vector - ref / np.linalg.norm(ref)).max() <= 1e-5

    from test_scoring import RECIPE, svc  # the recipe's scoring script

    with open(tmp_path / "utts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ID", "duration", "wav", "spk_id"], ["long", 70.0, long, "spkL"],
                                 ["short", 1.0, short, "spk0"]])
    (tmp_path / "trials.txt").write_text("0 long short\n1 long long\n")
    svc.main([str(RECIPE / "hparams" / "verification.yaml"), f"--model_folder={folder}",
              f"--enrol_csv={tmp_path / 'utts.csv'}", f"--test_csv={tmp_path / 'utts.csv'}",
              f"--trials={tmp_path / 'trials.txt'}", f"--output_folder={tmp_path / 'scores'}",
              "--device=cpu", "--save_embeddings=True"])
    saved = torch.load(tmp_path / "scores" / "embeddings.pt", weights_only=True)
    got = saved["embeddings"][saved["ids"].index("long")].numpy()
    assert np.abs(got - ref).max() <= 1e-5


def test_identify_prints_in_input_order(model_and_voices, tmp_path, capsys):
    root, folder, corpus = model_and_voices
    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(root / "speakers"),
              "--index", str(tmp_path / "idx")])
    files = [str(corpus[k][1]) for k in sorted(corpus, reverse=True)]  # longest last
    capsys.readouterr()
    out = cli.main(["identify", "--model_folder", str(folder), "--index", str(tmp_path / "idx"),
                    "--files", *files, "--k", "1", "--report", str(tmp_path / "id.json")])
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == files and list(out) == files
    assert list(json.loads((tmp_path / "id.json").read_text())) == files


def test_documented_command_lines_use_real_options():
    """Every `speechbrain-mrl <command> --option` in the README and docs/ names a real option."""
    import pathlib
    import re
    import shlex

    root = pathlib.Path(__file__).resolve().parents[1]
    commands = _subparsers(cli.build_parser())
    seen = 0
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())  # join continued lines
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.splitlines():
                if "speechbrain-mrl " not in line or line.lstrip().startswith("#"):
                    continue
                words = shlex.split(line.split("speechbrain-mrl ", 1)[1].split("#")[0])
                assert words and words[0] in commands, f"{doc.name}: unknown command in {line!r}"
                flags = {s for a in commands[words[0]]._actions for s in a.option_strings}
                for word in words[1:]:
                    if word.startswith("--"):
                        assert word.split("=")[0] in flags, f"{doc.name}: {word} in {line!r}"
                seen += 1
    assert seen >= 5, "the README and docs show the commands"


def test_errors_name_the_flag_not_the_python_call(model_and_voices, tmp_path):
    """An error reaching the command line gives its advice as flags (--rebuild, --threshold),
    not as Python (index.rebuild(...), threshold=); bad values found against the model exit 2."""
    root, folder, _ = model_and_voices
    index = tmp_path / "idx"
    _run("enrol", "--model_folder", folder, "--folder", root / "speakers", "--index", index,
         check_rc=0)
    settings = _run("enrol", "--model_folder", folder, "--folder", root / "speakers", "--index",
                    index, "--replace", "--first_stage", "hnsw", check_rc=1)
    assert "--rebuild" in settings.stderr and "index.rebuild(" not in settings.stderr
    wav = next(iter(sorted((root / "speakers").rglob("*.wav"))))
    size = _run("verify", "--model_folder", folder, wav, wav, "--target_dim", "512", check_rc=2)
    assert "argument --target_dim" in size.stderr and "Traceback" not in size.stderr
    assert len(size.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["verify", "--model_folder", "m", "a.wav", "b.wav", "--threshold", "-5"],
    ["identify", "--model_folder", "m", "--index", "i", "--files", "a.wav", "--threshold", "5"],
    ["enrol", "--model_folder", "m", "--index", "i", "--files", "a.wav", "--lock_timeout", "-1"],
    ["enrol", "--model_folder", "m", "--index", "qdrant+local:", "--files", "a.wav"],
])
def test_values_no_cosine_or_clock_can_take_exit_2(argv, capsys):
    """Regression (issue 28): thresholds outside [-1, 1], a negative lock timeout and a
    malformed Qdrant location were accepted."""
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_search_settings_are_checked_before_any_audio_is_embedded(model_and_voices, tmp_path,
                                                                   monkeypatch):
    """Regression (issue 28): a bad --final_dim/--stages, an index without thresholds for
    --threshold index, or a bad funnel failed only after every file was embedded."""
    from speechbrain_mrl.cli import search as search_cli

    root, folder, _ = model_and_voices
    index = tmp_path / "idx"
    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(root / "speakers"),
              "--index", str(index)])
    monkeypatch.setattr(search_cli, "embed", lambda *a, **k: pytest.fail("embedded first"))
    files = [str(p) for p in sorted((root / "speakers").rglob("*.wav"))[:2]]
    common = ["--model_folder", str(folder), "--index", str(index)]
    with pytest.raises(ValueError, match="final_dim must be one of the sizes"):
        cli.main(["identify", *common, "--files", *files, "--final_dim", "7"])
    with pytest.raises(ValueError, match="stages must be increasing sizes"):
        cli.main(["identify", *common, "--files", *files, "--stages", "8", "4"])
    with pytest.raises(ValueError, match="stages must be increasing sizes"):
        cli.main(["evaluate", *common, "--folder", str(root / "speakers"), "--funnels", "16"])
