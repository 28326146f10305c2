"""Regressions of issue 28 on index folders and the audio commands: a load racing a save
reads one generation, a user's ``.<index>.old`` is not an index, and audio file names that
are not UTF-8 are refused before anything is embedded."""
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from mrl_testutils import write_tiny_model, write_voice_corpus
from speechbrain_mrl import cli
from speechbrain_mrl.search.index import SpeakerIndex
from speechbrain_mrl.search.locations import open_index

SAVER = """
import pathlib, sys, time
import numpy as np
from speechbrain_mrl.search.index import SpeakerIndex

folder, seconds = pathlib.Path(sys.argv[1]), float(sys.argv[2])
(folder.parent / "saver.ready").touch()
end, saves = time.monotonic() + seconds, 0
while time.monotonic() < end:
    with SpeakerIndex.writing(folder, timeout=60):
        index = SpeakerIndex.load(folder)
        index.enrol([f"s{len(index):05d}"],
                    np.random.default_rng(len(index)).standard_normal((1, 16)))
        index.save(folder)
    saves += 1
print("saves", saves)
"""


def _unit(i):
    """The vector the saver enrols as speaker ``s<i>`` (unit length, as the index holds it)."""
    v = np.random.default_rng(i).standard_normal(16)
    return v / np.linalg.norm(v)


def _one_generation_problem(index):
    """Why a loaded index is not one saved generation (None: it is)."""
    n = len(index)
    if index.speakers != [f"s{i:05d}" for i in range(n)] or index.counts != [1] * n:
        return f"speakers {index.speakers[:3]}... and counts do not match"
    if np.asarray(index._vectors).shape != (n, 16):
        return f"{np.asarray(index._vectors).shape} vectors for {n} speakers"
    if not np.allclose(index._vectors[n - 1], _unit(n - 1), atol=1e-5):
        return f"the vector of s{n - 1:05d} is another generation's"
    if any(stage.ntotal != n for stage in index._stage_indexes.values()):
        return "a first stage of another generation"
    return None


def test_a_load_racing_saves_reads_one_generation(tmp_path):
    """Regression (issue 28): a reader racing a saver failed some loads with a
    corruption-like message ("... is a file", "index not found", "kept changing"), or warned
    that a stage file of the next save does not match the vectors; a load must read one
    complete generation (or wait for the writer)."""
    folder = tmp_path / "index"
    first = SpeakerIndex(16, [4, 8, 16])
    first.enrol(["s00000"], _unit(0)[None])
    first.save(folder)
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(folder), "6"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "saver.ready").exists() and saver.poll() is None:
            assert time.monotonic() < deadline, "the saver did not start"
            time.sleep(0.01)
        loads, failures = 0, []
        while saver.poll() is None:
            reader = open_index if loads % 2 else SpeakerIndex.load  # the CLI's way, the API's
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    problem = _one_generation_problem(reader(folder))
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    problem = f"{type(err).__name__}: {err}"
            if problem is None and caught:
                problem = f"warning: {caught[0].message}"
            if problem is not None:
                failures.append(problem)
            loads += 1
        out = saver.communicate(timeout=60)[0]
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.communicate()
    assert saver.returncode == 0, out
    saves = int(out.split("saves")[-1])
    assert saves >= 20 and loads >= 50, (saves, loads)  # the race was run
    assert not failures, f"{len(failures)} of {loads} loads failed: {failures[:3]}"


def test_a_save_swaps_the_folder_without_a_moment_without_an_index(tmp_path, monkeypatch):
    """The folder never stops existing where the system swaps folders in one step; the
    previous generation is removed and no staging folder or marker is left."""
    from speechbrain_mrl.search import folder as folder_module
    from speechbrain_mrl.utils.files import STAGING_MARKER

    folder = tmp_path / "index"
    index = SpeakerIndex(16, [4, 8, 16])
    index.enrol(["s00000"], _unit(0)[None])
    index.save(folder)
    seen = []
    exchange = folder_module._exchange

    def watched(first, second):
        swapped = exchange(first, second)
        seen.append((swapped, folder.is_dir()))
        return swapped

    monkeypatch.setattr(folder_module, "_exchange", watched)
    index.enrol(["s00001"], _unit(1)[None])
    index.save(folder)
    if not seen[0][0]:
        pytest.skip("no atomic folder swap here (renameat2 RENAME_EXCHANGE)")
    assert seen == [(True, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.lock", "index"]
    assert not (folder / STAGING_MARKER).exists()
    assert SpeakerIndex.load(folder).speakers == ["s00000", "s00001"]


HOLDER = """
import pathlib, sys, time
from speechbrain_mrl.search.index import SpeakerIndex

folder = pathlib.Path(sys.argv[1])
with SpeakerIndex.writing(folder, timeout=60):
    (folder.parent / "holder.ready").touch()
    time.sleep(float(sys.argv[2]))
"""


def test_a_load_that_saves_keep_disturbing_waits_for_the_writers_lock(tmp_path, monkeypatch):
    """After its lock-free tries, a load waits for the writer (a shared lock) and reads then;
    ``lock_timeout`` bounds the wait."""
    from speechbrain_mrl.search import folder as folder_module
    from speechbrain_mrl.search.index import IndexLockedError

    folder = tmp_path / "index"
    index = SpeakerIndex(16, [4, 8, 16])
    index.enrol(["s00000"], _unit(0)[None])
    index.save(folder)
    monkeypatch.setattr(folder_module, "_FREE_READS", 0)  # as if every free read was disturbed
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "1.5"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "holder.ready").exists():
            assert holder.poll() is None and time.monotonic() < deadline, "no lock holder"
            time.sleep(0.01)
        with pytest.raises(IndexLockedError, match="lock file"):
            SpeakerIndex.load(folder, lock_timeout=0.2)
        start = time.monotonic()
        assert SpeakerIndex.load(folder).speakers == ["s00000"]
        assert time.monotonic() - start > 0.3  # it waited for the writer
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


# ------------------------------------------------------------ a user's .<index>.old
@pytest.fixture(scope="module")
def model_and_voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    folder, _, _ = write_tiny_model(root / "model")
    write_voice_corpus(root / "speakers", n_spk=2, n_utt=2)
    return root, folder


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_lone_user_old_folder_is_not_an_index(model_and_voices, tmp_path):
    """Regression (issue 28): with only the user's ``.<index>.old`` beside it (a backup of an
    index), enrol claimed that the index already existed; it creates the index and leaves the
    user's folder as it was."""
    root, model = model_and_voices
    backup = tmp_path / ".idx.old"
    old = SpeakerIndex(16, [4, 8, 16])
    old.enrol(["someone"], _unit(0)[None])
    shutil.copytree(old.save(tmp_path / "made" / "idx"), backup)  # as `cp -r idx .idx.old`
    shutil.rmtree(tmp_path / "made")
    before = _files(backup)
    cli.main(["enrol", "--model_folder", str(model), "--folder", str(root / "speakers"),
              "--index", str(tmp_path / "idx")])
    assert sorted(SpeakerIndex.load(tmp_path / "idx").speakers) == ["id10000", "id10001"]
    assert _files(backup) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", ".idx.old", "idx"]


# ------------------------------------------------------------ file names that are not UTF-8
@pytest.fixture
def latin1_corpus(model_and_voices, tmp_path):
    """A copy of the voices with one more file named ``caf\\xe9.wav`` (Latin-1 bytes)."""
    root, _ = model_and_voices
    corpus = tmp_path / "speakers"
    shutil.copytree(root / "speakers", corpus)
    first = sorted(corpus.rglob("*.wav"))[0]
    bad = os.fsencode(first.parent) + b"/caf\xe9.wav"
    shutil.copyfile(first, bad)
    return corpus, bad


def _refused(err, bad):
    message = str(err.value)
    assert "\n" not in message and repr(bad) in message and "not UTF-8" in message, message


def test_enrol_refuses_names_not_utf8_before_embedding(model_and_voices, latin1_corpus,
                                                        tmp_path, monkeypatch):
    """Regression (issue 28): enrol embedded until the file, then failed with a dump of the
    audio readers' errors (surrogates not allowed)."""
    from speechbrain_mrl.cli import search as search_cli

    _, model = model_and_voices
    corpus, bad = latin1_corpus
    monkeypatch.setattr(search_cli, "embed", lambda *a, **k: pytest.fail("embedded first"))
    with pytest.raises(ValueError) as err:
        cli.main(["enrol", "--model_folder", str(model), "--folder", str(corpus),
                  "--index", str(tmp_path / "idx")])
    _refused(err, bad)
    assert not (tmp_path / "idx").exists()


def test_extract_refuses_names_not_utf8_before_embedding(model_and_voices, latin1_corpus,
                                                         tmp_path, monkeypatch):
    """Regression (issue 28): extract embedded every file and then failed writing its list
    (UnicodeEncodeError), leaving a half-written output folder."""
    from speechbrain_mrl.inference import extract as extract_module

    _, model = model_and_voices
    corpus, bad = latin1_corpus
    monkeypatch.setattr(extract_module, "embed_manifest",
                        lambda *a, **k: pytest.fail("embedded first"))
    out = tmp_path / "emb"
    with pytest.raises(ValueError) as err:
        cli.main(["extract", "--model_folder", str(model), "--folder", str(corpus),
                  "--output_folder", str(out)])
    _refused(err, bad)
    assert not out.exists()
    listed = tmp_path / "list.txt"  # a file list naming it, and the name as argv gives it
    listed.write_bytes(bad + b"\n")
    for source in (["--file_list", str(listed)], ["--files", os.fsdecode(bad)]):
        with pytest.raises(ValueError) as err:
            cli.main(["extract", "--model_folder", str(model), *source,
                      "--output_folder", str(out)])
        _refused(err, bad)
    assert not out.exists()


def _embedding_forbidden(monkeypatch):
    from speechbrain_mrl.cli import search as cli_search

    def embedded(*args, **kwargs):
        raise AssertionError("audio was embedded before the check")

    monkeypatch.setattr(cli_search, "embed", embedded)


def test_enrol_refuses_float16_on_qdrant_before_embedding(model_and_voices, tmp_path, monkeypatch):
    """Issue 28: ``--dtype float16`` into a Qdrant collection failed only after all audio was embedded."""
    pytest.importorskip("qdrant_client", reason="needs the qdrant extra: pip install -e '.[qdrant]'")
    root, model = model_and_voices
    speakers = root / "speakers"
    _embedding_forbidden(monkeypatch)
    with pytest.raises(ValueError, match="--dtype float16 needs an index folder"):
        cli.main(["enrol", "--model_folder", str(model), "--folder", str(speakers), "--index",
              f"qdrant+local:{tmp_path / 'qd'}/coll", "--dtype", "float16"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files; the lock-symlink case covers it")
def test_enrol_refuses_a_read_only_lock_before_embedding(model_and_voices, tmp_path, monkeypatch):
    """Issue 28: a read-only ``.idx.lock`` failed only after all audio was embedded."""
    root, model = model_and_voices
    speakers = root / "speakers"
    lock = tmp_path / ".idx.lock"
    lock.write_text("")
    lock.chmod(0o444)
    _embedding_forbidden(monkeypatch)
    with pytest.raises(OSError, match=r"idx cannot be saved: .*\.idx\.lock is not writable"):
        cli.main(["enrol", "--model_folder", str(model), "--folder", str(speakers), "--index",
              str(tmp_path / "idx")])


def test_enrol_refuses_a_lock_it_cannot_open_before_embedding(model_and_voices, tmp_path, monkeypatch):
    """Issue 28: an index whose lock cannot be opened (here a dangling symlink, refused; as
    any user, a read-only lock) failed only after all audio was embedded."""
    root, model = model_and_voices
    speakers = root / "speakers"
    (tmp_path / ".idx.lock").symlink_to(tmp_path / "elsewhere")
    _embedding_forbidden(monkeypatch)
    with pytest.raises(OSError, match=r"idx cannot be saved: .*\.idx\.lock is not writable"):
        cli.main(["enrol", "--model_folder", str(model), "--folder", str(speakers), "--index",
              str(tmp_path / "idx")])
    assert not (tmp_path / "elsewhere").exists()
