"""SpeakerIndex on disk: saved FAISS first stages, incremental adds, the write lock, lost-update
checks, settings, symlinked folders, FAISS "no result" places, and load-time checks."""
import fcntl
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from speechbrain_mrl.search.index import (IndexChangedError, IndexExistsError, IndexLockedError,
                                    SpeakerIndex)

DIMS = [8, 16, 32]
REPO = pathlib.Path(__file__).resolve().parents[1]


def _speakers(n_spk=120, n_utt=2, dim=32, seed=0, noise=0.5, prefix="spk"):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, dim))
    ids = [f"{prefix}{s:05d}" for s in range(n_spk) for _ in range(n_utt)]
    emb = np.repeat(centres, n_utt, axis=0) + noise * rng.standard_normal((n_spk * n_utt, dim))
    queries = centres + noise * rng.standard_normal((n_spk, dim))
    return ids, emb.astype("float32"), queries.astype("float32")


def _meta(folder):
    return json.loads((pathlib.Path(folder) / "index.json").read_text())


# ------------------------------------------------------------ saved first stages
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_first_stage_is_saved_and_loaded_without_rebuilding(kind, tmp_path, monkeypatch):
    ids, emb, queries = _speakers(n_spk=300)
    index = SpeakerIndex(32, DIMS, first_stage=kind, dtype="float16")
    index.enrol(ids, emb)
    want = index.search(queries, k=3, stages=[8], shortlist=20)
    index.save(tmp_path / "index")  # the default stage was already built by the search
    meta = _meta(tmp_path / "index")
    assert meta["stages"] == [{"file": f"stage_8_{kind}.faiss", "d": 8, "kind": kind,
                               "ntotal": 300}]
    assert (tmp_path / "index" / f"stage_8_{kind}.faiss").is_file()
    import faiss

    for name in ("IndexFlatIP", "IndexHNSWFlat", "IndexIVFFlat"):  # no FAISS index is built
        monkeypatch.setattr(faiss, name, lambda *a, **k: pytest.fail("first stage rebuilt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = SpeakerIndex.load(tmp_path / "index")
    got = loaded.search(queries, k=3, stages=[8], shortlist=20)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    assert loaded.stage_bytes(8) == index.stage_bytes(8)
    # a save that changes no speaker links the stage file instead of writing it again
    stage_file = tmp_path / "index" / f"stage_8_{kind}.faiss"
    inode = stage_file.stat().st_ino
    loaded.set_thresholds({32: 0.5})
    loaded.save(tmp_path / "index")
    assert stage_file.stat().st_ino == inode
    assert _meta(tmp_path / "index")["thresholds"] == {"32": 0.5}


def test_save_builds_the_default_first_stage(tmp_path):
    ids, emb, _ = _speakers(n_spk=50, dim=128)
    index = SpeakerIndex(128, [16, 64, 128])  # default funnel: [64]
    index.enrol(ids, emb)
    assert not index._stage_indexes
    index.save(tmp_path / "a")
    assert [s["file"] for s in _meta(tmp_path / "a")["stages"]] == ["stage_64_flat.faiss"]
    small = SpeakerIndex(128, [16, 32, 128], first_stage="hnsw")  # no 64: the smallest size
    small.enrol(ids, emb)
    small.save(tmp_path / "b")
    assert [s["file"] for s in _meta(tmp_path / "b")["stages"]] == ["stage_16_hnsw.faiss"]
    empty = SpeakerIndex(128, [16, 64, 128])
    empty.save(tmp_path / "c")
    assert _meta(tmp_path / "c")["stages"] == [] and len(SpeakerIndex.load(tmp_path / "c")) == 0


def _rebuilt_after(tmp_path, spoil, match):
    """Saves an index, spoils its stage file or entry, and checks the load warns, leaves the
    stage out, searches like a fresh index, and writes a good stage file on the next save."""
    ids, emb, queries = _speakers(n_spk=60)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    folder = index.save(tmp_path / "index")
    spoil(folder)
    with pytest.warns(RuntimeWarning, match=match):
        loaded = SpeakerIndex.load(folder)
    assert not loaded._stage_indexes
    got = loaded.search(queries, k=5, stages=[8], shortlist=60)
    want = index.search(queries, k=5, stages=[8], shortlist=60)
    assert got[0] == want[0] and np.allclose(got[1], want[1])
    loaded.save(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (8, "flat") in SpeakerIndex.load(folder)._stage_indexes


def _edit_meta(folder, change):
    meta = _meta(folder)
    change(meta)
    (folder / "index.json").write_text(json.dumps(meta))


def _foreign_stage(d, n):
    import faiss

    other = faiss.IndexFlatIP(d)
    other.add(np.ascontiguousarray(np.eye(d, dtype="float32")[np.arange(n) % d]))
    return other


@pytest.mark.parametrize("case", ["missing", "ntotal", "garbage", "wrong_d", "other_vectors",
                                  "wrong_kind"])
def test_a_missing_or_inconsistent_stage_file_is_rebuilt_not_trusted(case, tmp_path):
    import faiss

    def spoil(folder):
        path = folder / "stage_8_flat.faiss"
        if case == "missing":
            path.unlink()
        elif case == "ntotal":
            _edit_meta(folder, lambda m: m["stages"][0].update(ntotal=59))
        elif case == "garbage":
            path.write_bytes(b"not a FAISS index" * 10)
        elif case == "wrong_d":
            faiss.write_index(_foreign_stage(16, 60), str(path))
        elif case == "other_vectors":
            faiss.write_index(_foreign_stage(8, 60), str(path))
        else:
            hnsw = faiss.IndexHNSWFlat(8, 8, faiss.METRIC_INNER_PRODUCT)
            hnsw.add(np.ascontiguousarray(np.eye(8, dtype="float32")[np.arange(60) % 8]))
            faiss.write_index(hnsw, str(path))

    match = {"missing": "missing", "ntotal": "holds 59 vectors", "garbage": "not a readable",
             "wrong_d": "size 16", "other_vectors": "spot check",
             "wrong_kind": "IndexHNSWFlat"}[case]
    _rebuilt_after(tmp_path, spoil, match)


# ------------------------------------------------------------ incremental updates
def test_incremental_add_equals_a_fresh_build(tmp_path):
    ids, emb, queries = _speakers(n_spk=200)
    fresh = SpeakerIndex(32, DIMS)
    fresh.enrol(ids, emb)
    want = fresh.search(queries, k=10, stages=[8], shortlist=40)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids[:100], emb[:100])
    index.search(queries[:1], k=1, stages=[8])  # builds the flat first stage
    stage = index._stage_indexes[8, "flat"]
    for start in range(100, 400, 60):  # groups of 30 new speakers
        index.enrol(ids[start:start + 60], emb[start:start + 60])
    assert index._stage_indexes[8, "flat"] is stage and stage.ntotal == 200  # added to, not rebuilt
    got = index.search(queries, k=10, stages=[8], shortlist=40)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    # a memory-mapped stage read from disk is copied into memory, then added to
    half = SpeakerIndex(32, DIMS)
    half.enrol(ids[:200], emb[:200])
    half.save(tmp_path / "index")
    loaded = SpeakerIndex.load(tmp_path / "index")
    assert (8, "flat") in loaded._mapped
    loaded.enrol(ids[200:], emb[200:])
    assert (8, "flat") not in loaded._mapped and loaded._stage_indexes[8, "flat"].ntotal == 200
    got = loaded.search(queries, k=10, stages=[8], shortlist=40)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    loaded.save(tmp_path / "index")
    again = SpeakerIndex.load(tmp_path / "index")
    got = again.search(queries, k=10, stages=[8], shortlist=40)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    # re-enrolling or removing speakers drops the first stages (built again on use)
    again.enrol(ids[:2], emb[:2], replace=True)
    assert not again._stage_indexes
    again.search(queries[:1], k=1, stages=[8])
    again.remove([ids[2]])
    assert not again._stage_indexes


def test_incremental_add_to_approximate_first_stages():
    ids, emb, queries = _speakers(n_spk=400, noise=0.3)
    for kind in ("hnsw", "ivf"):
        index = SpeakerIndex(32, DIMS, first_stage=kind, ivf_nprobe=10_000)
        index.enrol(ids[:400], emb[:400])
        index.search(queries[:1], k=1, stages=[8])
        stage = index._stage_indexes[8, kind]
        index.enrol(ids[400:], emb[400:])
        assert index._stage_indexes[8, kind] is stage and stage.ntotal == 400
        found = index.search(queries, k=1, stages=[8], shortlist=30)[0]
        truth = [f"spk{s:05d}" for s in range(400)]
        assert np.mean([f[0] == t for f, t in zip(found, truth)]) >= 0.97, kind
    # an IVF stage trained on far fewer speakers than it holds now is built again
    index = SpeakerIndex(32, DIMS, first_stage="ivf")
    index.enrol(ids[:100], emb[:100])  # 50 speakers: 1 cell
    index.search(queries[:1], k=1, stages=[8])
    index.enrol(ids[100:], emb[100:])  # 400 speakers: 10 cells wanted
    assert (8, "ivf") not in index._stage_indexes


# ------------------------------------------------------------ locking
def test_write_lock_waits_then_names_folder_and_lock_file(tmp_path):
    ids, emb, _ = _speakers(n_spk=3)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    folder = tmp_path / "index"
    lock = tmp_path / ".index.lock"
    with open(lock, "w") as other:  # another open file: what another process's lock looks like
        fcntl.flock(other, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(IndexLockedError, match=f"{folder}.*lock file {lock}"):
            with SpeakerIndex.writing(folder, timeout=0.3):
                pass
        assert time.monotonic() - start >= 0.3
        with pytest.raises(IndexLockedError):
            index.save(folder, lock_timeout=0.1)
        assert not folder.exists()  # nothing written
        fcntl.flock(other, fcntl.LOCK_UN)
    # save inside writing() does not lock again (it would wait for itself forever)
    with SpeakerIndex.writing(folder, timeout=1) as resolved:
        assert resolved == folder.resolve()
        index.save(folder, lock_timeout=1)
        SpeakerIndex.load(folder).save(folder, lock_timeout=1)
    # released: another open file gets it at once
    with open(lock, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_threads_of_one_process_take_turns(tmp_path):
    folder = tmp_path / "index"
    SpeakerIndex(16, [4, 16]).save(folder)
    errors = []

    def writer(prefix):
        try:
            for i in range(15):
                with SpeakerIndex.writing(folder, timeout=30):
                    index = SpeakerIndex.load(folder)
                    index.enrol([f"{prefix}{i}"], np.full((1, 16), i + 1.0))
                    index.save(folder)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(SpeakerIndex.load(folder)) == 30


WORKER = r"""
import pathlib, sys, time
import numpy as np
from speechbrain_mrl.search.index import IndexChangedError, SpeakerIndex

root, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def signal(name):
    (root / name).touch()

def wait(name):
    while not (root / name).exists():
        time.sleep(0.002)

def vector(i):
    return np.random.default_rng([ord(me), i]).standard_normal((1, 16))

signal(f"{me}.ready")
wait(f"{other}.ready")  # both imports done
# 1. both load "changed" without the lock; "a" saves first, "b" is refused, then retries locked
folder = root / "changed"
index = SpeakerIndex.load(folder)
signal(f"{me}.loaded")
wait(f"{other}.loaded")
if me == "b":
    wait("a.saved")
index.enrol([f"{me}000"], vector(0))
try:
    index.save(folder)
except IndexChangedError as err:
    print("refused:", err)
    with SpeakerIndex.writing(folder, timeout=60):  # the retry the error asks for
        index = SpeakerIndex.load(folder)
        index.enrol([f"{me}000"], vector(0))
        index.save(folder)
signal(f"{me}.saved")
wait(f"{other}.saved")
# 2. both enrol 100 speakers into "locked", one at a time, at once
folder = root / "locked"
for i in range(100):
    with SpeakerIndex.writing(folder, timeout=120):
        index = (SpeakerIndex.load(folder) if folder.exists() else SpeakerIndex(16, [4, 8, 16]))
        index.enrol([f"{me}{i:03d}"], vector(i))
        index.save(folder)
"""


@pytest.fixture(scope="module")
def two_writers(tmp_path_factory):
    """Two processes writing the same indexes (one run serves the tests below): ``changed``
    loaded by both without the lock, then saved; ``locked`` enrolled into under the lock."""
    root = tmp_path_factory.mktemp("writers")
    start = SpeakerIndex(16, [4, 8, 16])
    start.enrol(["first"], np.ones((1, 16)))
    start.save(root / "changed")
    procs = {me: subprocess.Popen([sys.executable, "-c", WORKER, str(root), me, other], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for me, other in (("a", "b"), ("b", "a"))}
    outs = {me: p.communicate(timeout=300)[0] for me, p in procs.items()}
    assert {me: p.returncode for me, p in procs.items()} == {"a": 0, "b": 0}, outs
    return root, outs


def _worker_vector(me, i):
    return np.random.default_rng([ord(me), i]).standard_normal((1, 16))


def test_two_processes_enrolling_at_once_lose_nothing(two_writers):
    root, _ = two_writers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved first stage matches: not rebuilt
        index = SpeakerIndex.load(root / "locked")
    want = [f"{me}{i:03d}" for me in "ab" for i in range(100)]
    assert sorted(index.speakers) == want and index._stage_indexes[4, "flat"].ntotal == 200
    vectors = np.concatenate([_worker_vector(s[0], int(s[1:])) for s in index.speakers])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(index._vectors), unit, atol=1e-6)
    found = index.search(vectors, k=1, stages=[4], shortlist=200)[0]
    assert [f[0] for f in found] == index.speakers


def test_a_save_over_a_newer_save_is_refused_in_another_process(two_writers):
    root, outs = two_writers
    assert "refused" not in outs["a"]
    assert "refused:" in outs["b"] and "was saved by another writer" in outs["b"]
    assert "nothing was written" in outs["b"]
    assert sorted(SpeakerIndex.load(root / "changed").speakers) == ["a000", "b000", "first"]


def test_lost_updates_are_refused(tmp_path):
    ids, emb, _ = _speakers(n_spk=6)
    folder = tmp_path / "index"
    base = SpeakerIndex(32, DIMS)
    base.enrol(ids[:4], emb[:4])
    base.save(folder)
    first, second = SpeakerIndex.load(folder), SpeakerIndex.load(folder)
    assert first.generation == second.generation == _meta(folder)["generation"]
    first.enrol(ids[4:8], emb[4:8])
    first.save(folder)
    assert first.generation == _meta(folder)["generation"] != second.generation
    first.save(tmp_path / "backup")  # a copy elsewhere: each folder's generation is kept
    first.enrol(ids[8:10], emb[8:10])
    first.save(folder)  # its own earlier save is no conflict
    second.enrol(ids[10:], emb[10:])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(IndexChangedError, match=f"{folder} was saved by another writer"):
        second.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written
    second.save(folder, overwrite=True)  # drops first's update, on request
    assert SpeakerIndex.load(folder).speakers == second.speakers
    # a new index, or one loaded elsewhere, does not replace an existing index
    new = SpeakerIndex(32, DIMS)
    new.enrol(ids[:2], emb[:2])
    with pytest.raises(IndexExistsError, match="not loaded from.*overwrite=True"):
        new.save(folder)
    elsewhere = SpeakerIndex.load(new.save(tmp_path / "other"))
    with pytest.raises(IndexExistsError):
        elsewhere.save(folder)
    new.save(folder, overwrite=True)
    assert SpeakerIndex.load(folder).speakers == new.speakers
    (tmp_path / "empty").mkdir()
    new.save(tmp_path / "empty")  # an empty folder is no index
    # a folder removed since the load, or a folder that is not an index
    loaded = SpeakerIndex.load(tmp_path / "empty")
    import shutil

    shutil.rmtree(tmp_path / "empty")
    with pytest.raises(IndexChangedError, match="was removed"):
        loaded.save(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a speaker index"):
        new.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


# ------------------------------------------------------------ settings
def test_check_settings_and_rebuild(tmp_path):
    ids, emb, queries = _speakers(n_spk=30)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    folder = index.save(tmp_path / "index")
    loaded = SpeakerIndex.load(folder)
    loaded.check_settings(first_stage="flat", dtype="float32", hnsw_m=8)  # hnsw_m: not used
    with pytest.raises(ValueError, match=f"{folder} has first_stage='flat' and dtype='float32', "
                                         r"not the requested 'hnsw' and 'float16'.*rebuild"):
        loaded.check_settings(first_stage="hnsw", dtype="float16")
    with pytest.raises(ValueError, match="first_stage must be one of"):
        loaded.check_settings(first_stage="lsh")
    loaded.rebuild(first_stage="hnsw", dtype="float16", hnsw_m=8)
    loaded.check_settings(first_stage="hnsw", dtype="float16", hnsw_m=8)
    with pytest.raises(ValueError, match="hnsw_m=8"):
        loaded.check_settings(hnsw_m=16)
    loaded.save(folder)
    meta = _meta(folder)
    assert (meta["first_stage"], meta["dtype"], meta["hnsw_m"]) == ("hnsw", "float16", 8)
    assert sorted(p.name for p in folder.glob("*.faiss")) == ["stage_8_hnsw.faiss"]
    again = SpeakerIndex.load(folder)
    assert np.asarray(again._vectors).dtype == np.float16
    np.testing.assert_allclose(np.asarray(again._vectors), np.asarray(index._vectors), atol=1e-3)
    assert again.search(queries, k=1)[0] == index.search(queries, k=1)[0]


# ------------------------------------------------------------ fixes
def test_a_symlinked_index_folder_is_written_through(tmp_path):
    ids, emb, _ = _speakers(n_spk=5)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids[:8], emb[:8])
    index.save(tmp_path / "real_idx")
    os.symlink("real_idx", tmp_path / "idxlink")
    loaded = SpeakerIndex.load(tmp_path / "idxlink")
    loaded.enrol(ids[8:], emb[8:])
    assert loaded.save(tmp_path / "idxlink") == tmp_path / "idxlink"
    assert (tmp_path / "idxlink").is_symlink()
    assert os.readlink(tmp_path / "idxlink") == "real_idx"
    assert SpeakerIndex.load(tmp_path / "real_idx").speakers == loaded.speakers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real_idx.lock", "idxlink", "real_idx"]
    with SpeakerIndex.writing(tmp_path / "idxlink") as resolved:  # one lock for both names
        assert resolved == (tmp_path / "real_idx").resolve()
        SpeakerIndex.load(tmp_path / "real_idx").save(tmp_path / "real_idx", lock_timeout=0.5)


def test_faiss_no_result_never_becomes_the_last_speaker():
    rng = np.random.default_rng(0)
    index = SpeakerIndex(16, [4, 8, 16], first_stage="ivf", ivf_nprobe=1)
    index.enrol([f"s{i}" for i in range(4000)], rng.standard_normal((4000, 16)))
    q = rng.standard_normal((20, 16))
    ids, scores = index.search(q, k=50, stages=[4])
    missing = np.array([[s is None for s in row] for row in ids])
    assert missing.any()  # one IVF cell holds fewer than 50 speakers
    assert np.array_equal(missing, np.isneginf(scores))
    for row in ids:
        found = [s for s in row if s is not None]
        assert len(found) == len(set(found))
        assert row[:len(found)] == found  # the empty places come last
    matches = index.identify(q, k=50, stages=[4], threshold=-1.0)
    assert [len(m) for m in matches] == (~missing).sum(1).tolist()
    assert all(s is not None and np.isfinite(c) for m in matches for s, c in m)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -float("inf"), "high"])
def test_identify_refuses_a_non_finite_threshold(threshold):
    ids, emb, queries = _speakers(n_spk=5)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        index.identify(queries, threshold=threshold)


def _set_row_nan(folder):
    v = np.load(folder / "vectors.npy")
    v[2, 5] = np.nan
    np.save(folder / "vectors.npy", v)


def _speakers_json(change):
    def edit(folder):
        names = json.loads((folder / "speakers.json").read_text())
        change(names)
        (folder / "speakers.json").write_text(json.dumps(names))
    return edit


@pytest.mark.parametrize("spoil, file, match", [
    (_set_row_nan, "vectors.npy", r"rows \[2\] \(speakers \['spk00002'\]\) hold NaN"),
    (lambda f: np.save(f / "vectors.npy", np.load(f / "vectors.npy").astype("float16")),
     "vectors.npy", "holds float16 vectors, index.json says 'float32'"),
    (lambda f: (f / "vectors.npy").write_bytes(b"junk"), "vectors.npy", "not a readable array"),
    (lambda f: np.save(f / "vectors.npy", np.load(f / "vectors.npy")[:3]), "vectors.npy",
     r"shape \(3, 32\) for 4 speakers"),
    (_speakers_json(lambda n: n["speakers"].__setitem__(3, "spk00001")), "speakers.json",
     r"more than once: \['spk00001'\]"),
    (_speakers_json(lambda n: n["speakers"].__setitem__(0, 7)), "speakers.json",
     "must be strings"),
    (_speakers_json(lambda n: n["counts"].pop()), "speakers.json", "one positive integer per"),
    (_speakers_json(lambda n: n.pop("counts")), "speakers.json", "lists 'speakers' and"),
    (lambda f: (f / "speakers.json").unlink(), "speakers.json", "is missing"),
    (lambda f: _edit_meta(f, lambda m: m.pop("embed_dim")), "index.json", "no 'embed_dim'"),
    (lambda f: (f / "index.json").write_text("[1, 2]"), "index.json", "not a JSON object"),
    (lambda f: (f / "index.json").write_text("{"), "index.json", "not readable JSON"),
    (lambda f: _edit_meta(f, lambda m: m.update(embed_dim="32")), "index.json",
     "must be an integer"),
    (lambda f: _edit_meta(f, lambda m: m.update(dtype="int8")), "index.json", "dtype must be"),
    (lambda f: _edit_meta(f, lambda m: m.update(thresholds={"8": "x"})), "index.json",
     "must be a finite number"),
])
def test_load_checks_every_file_and_names_it(spoil, file, match, tmp_path):
    ids, emb, _ = _speakers(n_spk=4, n_utt=1)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    folder = index.save(tmp_path / "index")
    spoil(folder)
    with pytest.raises(ValueError, match=f"{re.escape(str(folder / file))}.*({match})"):
        SpeakerIndex.load(folder)


def test_format_1_indexes_still_load_and_save(tmp_path):
    ids, emb, queries = _speakers(n_spk=10)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids, emb)
    folder = index.save(tmp_path / "index")
    for stage in folder.glob("*.faiss"):
        stage.unlink()
    def format_1(meta):
        for key in ("generation", "stages", "speakers"):
            del meta[key]
        meta["format_version"] = 1

    _edit_meta(folder, format_1)
    old = SpeakerIndex.load(folder)
    assert old.generation is None and not old._stage_indexes
    assert old.search(queries, k=2)[0] == index.search(queries, k=2)[0]
    old.save(folder)
    assert _meta(folder)["format_version"] == 2 and _meta(folder)["stages"]
