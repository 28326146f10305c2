"""Faults that hung, lost data or wrote outside their folder (issue 28), one section each.

1. A symlink loop (``ln -s ..`` twice in a speaker folder) made the LibriSpeech, Speech
   Commands and VoxCeleb preparations walk forever.
2. Archive extraction wrote through a symlink planted at its temporary folder, and took
   members that leave the folder (absolute paths, ``..``, links pointing outside).
3. A save deleted the user's own hidden folders beside an index or a model folder
   (``.<name>.old``, ``.<name>.20261207``, ``.<name>.backup_1``).
4. ``--precision bf16`` on the CPU hung in PyTorch's bf16 depthwise ``conv2d`` (ReDimNet's
   time convolutions at some lengths, e.g. 41 frames).

Each test failed (or hung, cut short by its time bound) on the code before its fix. What
can hang runs in a subprocess with a timeout.
"""
import csv
import hashlib
import io
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import torch

from mrl_testutils import TINY_CONFIG, tiny_encoder, tiny_modules
from recipe_data import make_librispeech, make_speech_commands, make_voxceleb, voice, write_wav

from speechbrain_mrl.data import librispeech as ls
from speechbrain_mrl.data import speech_commands as sc
from speechbrain_mrl.model import redimnet
from speechbrain_mrl.model.folder import MODEL_FILES, write_model_folder
from speechbrain_mrl.search.index import SpeakerIndex
from speechbrain_mrl.utils.files import remove_stale_staging, staging_folder

TESTS = pathlib.Path(__file__).resolve().parent


def _env():
    """The environment of a subprocess: this one, with tests/ on the Python path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def _bounded(code, timeout, what):
    """Runs ``code`` in a fresh Python (tests/ on its path); fails the test after ``timeout`` s."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=_env(), cwd=TESTS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish in {timeout} s")


def _read_rows(*paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


# ------------------------------------------------------------ 1. symlink loops in data folders
def _plant_loops(folder):
    """Two ``ln -s ..`` links in ``folder``: followed, each doubles the walk at every level."""
    os.symlink("..", folder / "loop_a")
    os.symlink("..", folder / "loop_b")
    return [folder / "loop_a", folder / "loop_b"]


def _outside_speaker(tmp_path):
    """A folder of audio outside the data folder (a link to it must not be read)."""
    for ext in ("wav", "flac"):
        write_wav(tmp_path / "outside" / f"elsewhere.{ext}", voice(9, 24000, 0))
    return tmp_path / "outside"


PREPARE = {
    "voxceleb": """
        from speechbrain_mrl.data.voxceleb import prepare_voxceleb
        out = prepare_voxceleb(DATA, SAVE)
        """,
    "librispeech": """
        from speechbrain_mrl.data.librispeech import prepare_librispeech
        out = prepare_librispeech(DATA, SAVE, test_splits=[], n_valid_trials=20)
        """,
    "speech_commands": """
        from speechbrain_mrl.data.speech_commands import prepare_demo
        out = prepare_demo(DATA, SAVE, n_val_speakers=2, n_val_trials=20, libri_seg_dur=1.0,
                           n_long_val_readers=0)
        """,
}


def _loop_tree(kind, tmp_path):
    """A small data folder of ``kind`` with symlink loops and a link out of it; returns
    ``(data folder, planted links, number of audio files)``."""
    data = tmp_path / "data"
    outside = _outside_speaker(tmp_path)
    if kind == "voxceleb":
        rels = make_voxceleb(data)
        links = _plant_loops(data / "id10001") + _plant_loops(data / "id10002" / "vid1")
        os.symlink(outside, data / "id10003" / "vid_elsewhere")
        os.symlink(outside, data / "id_elsewhere")  # a speaker folder out of the tree
        links += [data / "id10003" / "vid_elsewhere", data / "id_elsewhere"]
        n_files = len(rels)
    elif kind == "librispeech":
        readers = make_librispeech(data, {"train-clean-100": 3, "dev-clean": 3})
        split = data / "LibriSpeech" / "train-clean-100"
        n_files = len(list((data / "LibriSpeech").glob("*/*/*/*.flac")))
        links = _plant_loops(split / readers["train-clean-100"][0])
        chapter = next((split / readers["train-clean-100"][1]).iterdir())
        links += _plant_loops(chapter)
        os.symlink(outside, split / readers["train-clean-100"][2] / "9999")  # a chapter elsewhere
        links.append(split / readers["train-clean-100"][2] / "9999")
    else:
        make_speech_commands(data, libri_long=0)
        speakers = sorted(p for p in (data / "speech_commands").iterdir() if p.name != "splits")
        links = _plant_loops(speakers[0]) + _plant_loops(speakers[1])
        reader = next((data / "librispeech_train_clean_100").iterdir())
        links += _plant_loops(reader)
        os.symlink(outside, speakers[2] / "elsewhere")
        links.append(speakers[2] / "elsewhere")
        n_files = None
    return data, links, n_files


@pytest.mark.parametrize("kind", sorted(PREPARE))
def test_preparation_walks_a_symlink_loop_once(kind, tmp_path):
    """Regression: ``input_fingerprint`` walked with ``followlinks=True`` and never returned."""
    data, links, n_files = _loop_tree(kind, tmp_path)
    save = tmp_path / "prep"
    code = (f"import logging, sys\nlogging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
            f"DATA, SAVE = {str(data)!r}, {str(save)!r}\n" + textwrap.dedent(PREPARE[kind])
            + "print('prepared', sorted(out))\n")
    proc = _bounded(code, 180, f"the {kind} preparation of a folder with symlink loops")
    assert proc.returncode == 0 and "prepared" in proc.stdout, proc.stderr[-3000:]
    for link in links:  # each skipped link is named in a warning
        assert str(link) in proc.stderr, (str(link), proc.stderr[-3000:])
    rows = _read_rows(save / "train.csv", save / "dev.csv")
    wavs = [r["wav"] for r in rows]
    assert not [w for w in wavs if "loop_" in w or "elsewhere" in w or "9999" in w]
    if n_files is not None:  # every file read once (no segments: one row a file)
        assert len(set(wavs)) == len(wavs) == n_files
    # the second run sees the same inputs (the fingerprint is stable) and skips
    mtime = os.path.getmtime(save / "train.csv")
    proc = _bounded(code, 180, f"the second {kind} preparation")
    assert proc.returncode == 0 and os.path.getmtime(save / "train.csv") == mtime, proc.stderr


def test_fingerprint_and_folder_reader_agree_on_a_looped_tree(tmp_path):
    """The preparations read a tree as ``--folder`` does (links to folders are not followed)."""
    code = f"""
        import os, pathlib
        from recipe_data import make_voxceleb
        from speechbrain_mrl.data.preparation import input_fingerprint, scan_speakers
        from speechbrain_mrl.data.sources import folder_rows
        root = pathlib.Path({str(tmp_path / 'vox')!r})
        make_voxceleb(root)
        for name in ("a", "b"):
            os.symlink("..", root / "id10001" / "vid0" / name)
        first = input_fingerprint([root])
        assert first == input_fingerprint([root])
        scanned = sorted(rel for items in scan_speakers(root).values() for rel, _ in items)
        assert scanned == sorted(folder_rows(root)), (scanned, sorted(folder_rows(root)))
        print("agree", len(scanned))
        """
    proc = _bounded(code, 60, "fingerprinting a folder with symlink loops")
    assert proc.returncode == 0 and "agree 16" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------ 2. archive extraction
def _tar_gz(path, add):
    """Writes a .tar.gz at ``path``; ``add(tar)`` adds its members. Returns its SHA-256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add(tar)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _add_file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def _libri_archive(tmp_path, data, evil=None):
    """``<data>/dev-clean.tar.gz`` of a 2-reader split (plus ``evil(tar)``), checksum patched."""
    src = tmp_path / "src"
    make_librispeech(src, {"dev-clean": 2}, duration=1.2)

    def add(tar):
        tar.add(src / "LibriSpeech" / "dev-clean", arcname="LibriSpeech/dev-clean")
        tar.add(src / "LibriSpeech" / "SPEAKERS.TXT", arcname="LibriSpeech/SPEAKERS.TXT")
        if evil:
            evil(tar)

    return _tar_gz(data / "dev-clean.tar.gz", add)


def _sc_archive(tmp_path, data, evil=None):
    """``<data>/speech_commands_test_set_v0.02.tar.gz`` of 4 speakers (plus ``evil(tar)``);
    returns its SHA-256 (to patch in as the pin)."""
    raw = tmp_path / "sc_src"
    for word in ("yes", "no"):
        for s in range(4):
            for n in range(2):
                write_wav(raw / word / f"{s:04x}abcd_nohash_{n}.wav", voice(s, 8000, n))

    def add(tar):
        tar.add(raw, arcname=".")
        if evil:
            evil(tar)

    return _tar_gz(data / os.path.basename(sc.SC_URL), add)


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    return victim


def test_librispeech_extraction_never_follows_a_planted_link(tmp_path, monkeypatch):
    """Regression: ``<data>/.extract-<split>`` was extracted into through a planted symlink."""
    data, victim = tmp_path / "data", _victim(tmp_path)
    monkeypatch.setitem(ls.SHA256, "dev-clean", _libri_archive(tmp_path, data))
    (data / ".extract-dev-clean").symlink_to(victim)
    root = ls.download_librispeech(data, ["dev-clean"], url="http://127.0.0.1:9")
    assert list(victim.iterdir()) == []  # nothing written through the link
    split = root / "dev-clean"
    assert split.is_dir() and not split.is_symlink() and len(list(split.glob("*/*/*.flac"))) == 8
    assert (root / "SPEAKERS.TXT").is_file()
    assert (data / ".extract-dev-clean").is_symlink()  # the user's link is left alone
    assert sorted(p.name for p in data.iterdir()) == [".extract-dev-clean", "LibriSpeech"]
    assert sorted(p.name for p in root.iterdir()) == ["SPEAKERS.TXT", "dev-clean"]


def test_speech_commands_extraction_never_follows_a_planted_link(tmp_path, monkeypatch):
    """Regression: ``speech_commands_raw.part`` was extracted into through a planted symlink,
    then the link itself renamed to ``speech_commands_raw``."""
    data, victim = tmp_path / "data", _victim(tmp_path)
    monkeypatch.setattr(sc, "SC_SHA256", _sc_archive(tmp_path, data))
    (data / "speech_commands_raw.part").symlink_to(victim)
    sc.download_speech_commands(data, n_trials=20, url="http://127.0.0.1:9/" + os.path.basename(
        sc.SC_URL))
    assert list(victim.iterdir()) == []
    raw = data / "speech_commands_raw"
    assert raw.is_dir() and not raw.is_symlink() and len(list(raw.glob("*/*.wav"))) == 16
    assert len(list((data / "speech_commands").glob("*/*.wav"))) == 16
    assert not [p.name for p in data.iterdir() if p.name.startswith(".")]


EVIL = {  # name: (what adds the member, the member the error must name)
    "absolute path": (lambda v: lambda tar: _add_file(tar, str(v / "abs.wav")), "abs.wav"),
    "dot-dot": (lambda v: lambda tar: _add_file(tar, "LibriSpeech/../../../victim/up.wav"),
                "LibriSpeech/../../../victim/up.wav"),
    "absolute symlink": (lambda v: lambda tar: _add_link(tar, "LibriSpeech/abs_link", str(v)),
                         "LibriSpeech/abs_link"),
    "symlink out": (lambda v: lambda tar: _add_link(tar, "LibriSpeech/out_link", "../../victim"),
                    "LibriSpeech/out_link"),
    "hard link out": (lambda v: lambda tar: _add_link(tar, "LibriSpeech/hard", "../victim/x",
                                                      tarfile.LNKTYPE), "LibriSpeech/hard"),
}


@pytest.mark.parametrize("dataset", ["librispeech", "speech_commands"])
@pytest.mark.parametrize("evil", sorted(EVIL))
def test_archive_members_that_escape_are_refused(evil, dataset, tmp_path, monkeypatch):
    """Regression: an absolute member was extracted (its ``/`` stripped) and the others gave
    a ``tarfile`` error, not a one-line refusal naming the member; nothing is extracted."""
    data, victim = tmp_path / "data", _victim(tmp_path)
    add, member = EVIL[evil]
    if dataset == "librispeech":
        monkeypatch.setitem(ls.SHA256, "dev-clean", _libri_archive(tmp_path, data, add(victim)))
        run = lambda: ls.download_librispeech(data, ["dev-clean"], url="http://127.0.0.1:9")  # noqa: E731
    else:
        monkeypatch.setattr(sc, "SC_SHA256", _sc_archive(tmp_path, data, add(victim)))
        url = "http://127.0.0.1:9/" + os.path.basename(sc.SC_URL)  # never fetched: it is there
        run = lambda: sc.download_speech_commands(data, n_trials=20, url=url)  # noqa: E731
    with pytest.raises(OSError) as err:
        run()
    message = str(err.value)
    assert member.lstrip("/") in message and "\n" not in message, message
    assert list(victim.iterdir()) == []
    left = [p.relative_to(data).as_posix() for p in data.rglob("*") if not p.name.endswith(".gz")]
    assert not [p for p in left if "/" in p or p.startswith(".")], left  # no partial extraction
    assert not (data / "speech_commands_raw").exists()


# ------------------------------------------------------------ 3. the user's hidden folders
USER_FOLDERS = (".{}.old", ".{}.20261207", ".{}.backup_1")


def _plant_user_folders(parent, name):
    planted = {}
    for pattern in USER_FOLDERS:
        folder = parent / pattern.format(name)
        folder.mkdir()
        (folder / "notes.txt").write_text(f"the user's {folder.name}")
        planted[folder] = (folder / "notes.txt").read_text()
    return planted


def _index(n=3):
    index = SpeakerIndex(16, [4, 8, 16])
    index.enrol([f"spk{i}" for i in range(n)], np.random.default_rng(n).standard_normal((n, 16)))
    return index


def test_index_saves_keep_the_users_hidden_folders(tmp_path):
    """Regression: ``.index.20261207`` and ``.index.backup_1`` matched the stale-staging
    pattern, and ``.index.old`` was where the previous index waited during a swap."""
    _index().save(tmp_path / "index")
    planted = _plant_user_folders(tmp_path, "index")
    for n in (4, 5):
        loaded = SpeakerIndex.load(tmp_path / "index")
        loaded.enrol([f"spk{n - 1}"], np.ones((1, 16)))
        loaded.save(tmp_path / "index")
    assert {p: (p / "notes.txt").read_text() for p in planted} == planted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".index.lock", "index"] + [p.name for p in planted])
    assert len(SpeakerIndex.load(tmp_path / "index")) == 5
    assert not [p.name for p in (tmp_path / "index").iterdir() if p.name.startswith(".")]


def test_model_writes_keep_the_users_hidden_folders(tmp_path):
    """Regression: the same folders beside a model folder were deleted by the next write, and
    a ``.model.old`` with no model folder was moved into place as the model."""
    planted = _plant_user_folders(tmp_path, "model")
    encoder = tiny_encoder(*tiny_modules(seed=1))
    write_model_folder(tmp_path / "model", encoder)  # no model folder yet: .model.old stays put
    write_model_folder(tmp_path / "model", encoder)  # over a model folder: the swap path
    assert {p: (p / "notes.txt").read_text() for p in planted} == planted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model"] + [p.name for p in planted])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(MODEL_FILES)


KILLED_SAVE = """
    import os, signal, sys
    import numpy as np
    from speechbrain_mrl.search.index import SpeakerIndex
    from speechbrain_mrl.model.folder import write_model_folder
    from mrl_testutils import tiny_encoder, tiny_modules
    KIND, TARGET, AT = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real, calls = os.replace, []

    def replace(src, dst):  # SIGKILL at the AT-th rename of the swap (0: the first)
        if "." + os.path.basename(TARGET) + "." in os.path.basename(str(src)) or str(
                src) == TARGET:
            calls.append(src)
            if len(calls) > AT:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    if KIND == "index":
        import speechbrain_mrl.search.folder as folder_module
        real_exchange = folder_module._exchange

        def exchange(first, second):  # the one-step swap: SIGKILL before it (0) or after (1)
            if AT == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            swapped = real_exchange(first, second)
            if swapped:
                os.kill(os.getpid(), signal.SIGKILL)
            return swapped

        index = SpeakerIndex.load(TARGET)
        index.enrol(["killed"], np.ones((1, 16)))
        os.replace, folder_module._exchange = replace, exchange
        index.save(TARGET)
    else:
        encoder = tiny_encoder(*tiny_modules(seed=2))
        os.replace = replace
        write_model_folder(TARGET, encoder)
    """


def _killed(kind, target, at):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_SAVE), kind, str(target),
                           str(at)], capture_output=True, text=True, timeout=120, env=_env(),
                          cwd=TESTS)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.parametrize("at", [0, 1])
def test_what_a_killed_index_save_leaves_is_found_and_cleaned(at, tmp_path):
    """Kill-safety kept: a save SIGKILLed before its swap (0), or between its two renames
    (1; just after the swap where folders are swapped in one step), leaves one complete index
    readable (the previous one, or at 1 after a one-step swap the new one); the next save
    removes what the killed one left, never the user's folders."""
    _index().save(tmp_path / "index")
    planted = _plant_user_folders(tmp_path, "index")
    before = sorted(p.name for p in tmp_path.iterdir())
    _killed("index", tmp_path / "index", at)
    assert sorted(p.name for p in tmp_path.iterdir()) != before  # the kill left something
    loaded = SpeakerIndex.load(tmp_path / "index")
    previous = ["spk0", "spk1", "spk2"]
    assert loaded.speakers == previous or (at == 1 and loaded.speakers == previous + ["killed"])
    loaded.enrol(["after"], np.ones((1, 16)))
    loaded.save(tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert {p: (p / "notes.txt").read_text() for p in planted} == planted
    assert SpeakerIndex.load(tmp_path / "index").speakers[-1] == "after"


@pytest.mark.parametrize("at", [0, 1])
def test_what_a_killed_model_write_leaves_is_cleaned(at, tmp_path):
    encoder = tiny_encoder(*tiny_modules(seed=1))
    write_model_folder(tmp_path / "model", encoder)
    planted = _plant_user_folders(tmp_path, "model")
    before = sorted(p.name for p in tmp_path.iterdir())
    _killed("model", tmp_path / "model", at)
    assert sorted(p.name for p in tmp_path.iterdir()) != before
    write_model_folder(tmp_path / "model", encoder)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert {p: (p / "notes.txt").read_text() for p in planted} == planted
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(MODEL_FILES)


def test_only_marked_staging_folders_are_removed(tmp_path):
    """``remove_stale_staging`` removes what ``staging_folder`` made, nothing named like it."""
    target = tmp_path / "index"
    made = staging_folder(target)
    (made / "vectors.npy").write_bytes(b"half written")
    lookalike = tmp_path / f".index.{made.name.rsplit('.', 1)[1][::-1]}"
    lookalike.mkdir()
    remove_stale_staging(target)
    assert not made.exists() and lookalike.is_dir()


# ------------------------------------------------------------ 4. bf16 on the CPU
BF16_FORWARD = """
    import sys, time, torch
    from speechbrain_mrl.model.redimnet import ReDimNet
    from mrl_testutils import TINY_CONFIG
    name = sys.argv[1]
    torch.manual_seed(0)
    model = (ReDimNet(**TINY_CONFIG) if name == "tiny" else ReDimNet.from_preset(name)).eval()
    with torch.no_grad():
        for frames in (21, 41, 100):  # autocast, as --precision bf16 runs the model
            print(name, frames, flush=True)
            feats = torch.randn(2, frames, model.F)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(feats, torch.tensor([1.0, 0.7]))
            assert out.shape == (2, model.embed_dim) and torch.isfinite(out.float()).all()
        print(name, "bf16 weights", flush=True)  # a model converted to bf16, no autocast
        out = model.to(torch.bfloat16)(torch.randn(1, 41, model.F, dtype=torch.bfloat16))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    print("done", name, flush=True)
    """


@pytest.mark.parametrize("name", sorted(redimnet.REDIMNET_PRESETS) + ["tiny"])
def test_bf16_forward_on_the_cpu_returns(name):
    """Regression: CPU bf16 depthwise ``conv2d`` of a channels-last ``[B, D, 1, T]`` view never
    returned for some shapes (the tiny model at 41 frames)."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(BF16_FORWARD), name],
                              capture_output=True, text=True, timeout=240, env=_env(), cwd=TESTS)
    except subprocess.TimeoutExpired as err:
        started = (err.stdout or b"").decode(errors="replace").strip().splitlines()
        pytest.fail(f"bf16 forward of {name} did not return in 240 s (at {started[-1:]})")
    assert proc.returncode == 0 and f"done {name}" in proc.stdout, proc.stderr[-3000:]


REPORTED_SHAPE = """
    import torch
    from speechbrain_mrl.model.redimnet import _dwconv_time
    torch.manual_seed(0)
    w, b = torch.randn(16, 1, 19), torch.randn(16)
    for frames in (21, 41):
        x = torch.randn(1, frames, 16)
        print(frames, "bf16 tensors", flush=True)
        y = _dwconv_time(x.bfloat16(), w.bfloat16(), b.bfloat16(), 16)
        assert y.dtype == torch.bfloat16 and y.shape == (1, frames, 16)
        print(frames, "autocast", flush=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = _dwconv_time(x, w, b, 16)
        assert z.dtype == torch.bfloat16 and z.shape == y.shape
        assert torch.allclose(z.float(), y.float(), rtol=0.05, atol=0.1)
    print("done", flush=True)
    """


def test_bf16_time_convolution_of_the_reported_shape_returns():
    """Regression, the issue's shape: ``x[1, 16, 1, 41]`` (a transposed view) with
    ``w[16, 1, 1, 19]``, ``padding=(0, 9)``, ``groups=16`` in bf16 never returned."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(REPORTED_SHAPE)],
                              capture_output=True, text=True, timeout=60, env=_env(), cwd=TESTS)
    except subprocess.TimeoutExpired as err:
        started = (err.stdout or b"").decode(errors="replace").strip().splitlines()
        pytest.fail(f"the bf16 time convolution did not return in 60 s (at {started[-1:]})")
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]


def _old_dwconv_time(x, weight, bias, groups):
    """``_dwconv_time`` before the fix (the fp32 reference)."""
    k = weight.shape[-1]
    x4 = x.transpose(1, 2).unsqueeze(2)
    y = torch.nn.functional.conv2d(x4, weight.unsqueeze(2), bias, padding=(0, k // 2),
                                   groups=groups)
    return y.squeeze(2).transpose(1, 2)


def test_fp32_embeddings_are_bit_identical(monkeypatch):
    """The fix changes the bf16 path only: fp32 embeddings are those of the code before it."""
    lobe, head = tiny_modules(seed=4)
    encoder = tiny_encoder(lobe, head)
    wavs = torch.randn(3, 6400)
    lens = torch.tensor([1.0, 0.66, 0.41])
    feats = torch.randn(2, 41, TINY_CONFIG["F"])
    with torch.no_grad():
        new = (encoder(wavs, lens), lobe(feats))
        monkeypatch.setattr(redimnet, "_dwconv_time", _old_dwconv_time)
        old = (encoder(wavs, lens), lobe(feats))
    assert all(torch.equal(a, b) for a, b in zip(new, old))


def test_a_full_disk_names_the_file_and_the_space_left(tmp_path, monkeypatch):
    """Regression (issue 28): a full disk gave the library's '896000 requested and 499680
    written' without the file."""
    import errno
    import shutil

    import numpy as np

    from speechbrain_mrl.utils import files

    def full(*args, **kwargs):
        raise OSError("896000 requested and 499680 written")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError) as caught:
        with files.atomic_output(tmp_path / "vectors.npy") as tmp:
            np.save(tmp, np.zeros(10))
    assert caught.value.errno == errno.ENOSPC
    assert "vectors.npy could not be written: the disk is full, 4096 bytes free" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["numpy", "faiss"])
def test_a_full_disk_during_an_index_save_names_the_index_and_keeps_the_old_one(writer, tmp_path,
                                                                                monkeypatch):
    """Issue 28: outside ``atomic_output`` (an index folder's files) a full disk gave NumPy's
    '896000 requested and 499680 written' or FAISS's fwrite RuntimeError, naming no file."""
    import errno
    import shutil

    import faiss
    import numpy as np

    from speechbrain_mrl.search import folder as folder_module
    from speechbrain_mrl.utils import files

    _index().save(tmp_path / "index")
    index = SpeakerIndex.load(tmp_path / "index")
    index.enrol(["more"], np.ones((1, 16)))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    if writer == "numpy":
        def full(*args, **kwargs):
            raise OSError("896000 requested and 499680 written")
        monkeypatch.setattr(folder_module.np, "save", full)
    else:
        def full(*args, **kwargs):
            raise RuntimeError("Error in faiss::FileIOWriter: fwrite failed")
        monkeypatch.setattr(faiss, "write_index", full)
        monkeypatch.setattr(index, "_link_stage_file", lambda *a: False)
    with pytest.raises(OSError) as caught:
        index.save(tmp_path / "index")
    assert caught.value.errno == errno.ENOSPC
    assert f"{tmp_path / 'index'} could not be written: the disk is full, 4096 bytes free" in str(
        caught.value)
    assert SpeakerIndex.load(tmp_path / "index").speakers == ["spk0", "spk1", "spk2"]


def test_a_full_disk_during_a_checkpoint_save_names_the_folder(tmp_path, monkeypatch):
    """Issue 28: a checkpoint save on a full disk named the folder but not the cause."""
    import errno
    import shutil

    from speechbrain_mrl.utils import files
    from speechbrain_mrl.utils.checkpoints import SafeCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = SafeCheckpointer(tmp_path / "save", {"model": model})
    ckpt.save_checkpoint(name="good")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage._replace(free=4096))

    def full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"disk is full, 4096 bytes free .*previous checkpoints are "
                       r"untouched") as caught:
        ckpt.save_checkpoint(name="next")
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == ["CKPT+good"]
