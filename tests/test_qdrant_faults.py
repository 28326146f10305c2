"""Qdrant local-mode faults (issue 28): a broken ``meta.json`` or another collection's broken
``storage.sqlite`` named in one line with what to do, the folder left as it was; and the
progress of a long ``copy-index``."""
import os
import pathlib
import shutil
import types

import numpy as np
import pytest

pytest.importorskip("qdrant_client", reason='qdrant-client is not installed: pip install -e '
                                            '".[qdrant]" (the test extra installs it)')

from speechbrain_mrl import cli  # noqa: E402
from speechbrain_mrl.search import locations, qdrant  # noqa: E402
from speechbrain_mrl.search.index import SpeakerIndex  # noqa: E402
from speechbrain_mrl.search.locations import copy_index, index_exists, open_index  # noqa: E402
from speechbrain_mrl.search.qdrant import QdrantSpeakerIndex  # noqa: E402


def _store(root):
    """A local-mode folder with two speaker indexes, ``good`` and ``other``."""
    store = root / "store"
    for name, speakers in (("good", ["a", "b"]), ("other", ["c"])):
        with QdrantSpeakerIndex(8, [4, 8], location=f"qdrant+local:{store}/{name}") as index:
            index.enrol(speakers, np.eye(8, dtype="float32")[:len(speakers)])
    return store


def _contents(folder):
    return {p: p.read_bytes() for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def _folder_index(path, n=30, reverse=False):
    rng = np.random.default_rng(0)
    names = [f"spk{i:04d}" for i in range(n)]
    index = SpeakerIndex(8, [4, 8], model_sha256="abc")
    index.add_speaker_means(names[::-1] if reverse else names, [1] * n,
                            rng.standard_normal((n, 8)).astype("float32"))
    index.save(path)
    return index


def _cli_error(argv, capsys):
    """The stderr lines of a command that fails."""
    with pytest.raises(SystemExit) as exit_:
        cli.run(argv)
    assert exit_.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


def test_a_broken_meta_json_is_named_with_what_to_do(tmp_path, capsys):
    """Regression (issue 28): a truncated meta.json stopped every collection of the folder with
    qdrant-client's bare 'Unterminated string starting at: line 1 column 39'."""
    store = _store(tmp_path)
    meta = store / "meta.json"
    meta.write_bytes(meta.read_bytes()[:40])
    before = _contents(store)
    good = f"qdrant+local:{store}/good"
    for attempt in (lambda: open_index(good), lambda: index_exists(good),
                    lambda: copy_index(good, tmp_path / "copy")):
        with pytest.raises(ValueError, match="meta.json is broken") as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and str(meta) in message and good in message
        assert "JSONDecodeError" in message and "restore it from a backup" in message
    for broken in ('{"collections": []}', '[1, 2]', '{"collections": {"good": 3}, "aliases": {}}'):
        meta.write_text(broken)
        with pytest.raises(ValueError, match="meta.json is broken"):
            open_index(good)
    meta.write_bytes(before[meta])
    err = _cli_error(["copy-index", good, str(tmp_path / "copy")], capsys)
    assert len(err) == 1 and str(meta) in err[0] and "restore it from a backup" in err[0]
    assert _contents(store) == before and not (tmp_path / "copy").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_another_collections_broken_sqlite_is_named_with_what_to_do(tmp_path, capsys, damage):
    """Regression (issue 28): garbage in another collection's storage.sqlite stopped every
    collection of the folder with a bare 'file is not a database'."""
    store = _store(tmp_path)
    sqlite = store / "collection" / "other" / "storage.sqlite"
    if damage == "garbage":
        sqlite.write_bytes(b"not a database " * 500)
    else:
        sqlite.write_bytes(sqlite.read_bytes()[:os.path.getsize(sqlite) // 2])
    before = _contents(store)
    good = f"qdrant+local:{store}/good"
    _folder_index(tmp_path / "index")
    for attempt in (lambda: open_index(good),
                    lambda: copy_index(tmp_path / "index", f"qdrant+local:{store}/new")):
        with pytest.raises(ValueError, match="storage.sqlite is broken") as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and str(sqlite) in message and "DatabaseError" in message
        assert f"move the folder {sqlite.parent} out of {store}" in message
    with pytest.raises(ValueError, match="storage.sqlite is broken"):
        index_exists(good)
    err = _cli_error(["copy-index", good, str(tmp_path / "copy")], capsys)
    assert len(err) == 1 and str(sqlite) in err[0] and "move the folder" in err[0]
    assert _contents(store) == before  # nothing repaired, nothing created
    shutil.move(sqlite.parent, tmp_path / "other.broken")  # what the message says to do
    with open_index(good) as index:
        assert index.speakers == ["a", "b"]


def test_an_unreadable_point_still_names_the_folder(tmp_path):
    """A storage that SQLite reads but qdrant-client cannot unpickle: the folder and the files
    to look at, in one line."""
    import sqlite3

    store = _store(tmp_path)
    connection = sqlite3.connect(store / "collection" / "other" / "storage.sqlite")
    with connection:
        connection.execute("UPDATE points SET point = x'00112233'")
    connection.close()
    with pytest.raises(ValueError, match="cannot be opened: qdrant-client failed") as caught:
        open_index(f"qdrant+local:{store}/good")
    assert "\n" not in str(caught.value) and str(store) in str(caught.value)
    assert "storage.sqlite" in str(caught.value)


def test_a_long_copy_shows_its_progress(tmp_path, monkeypatch, capsys):
    """Regression (issue 28): copy-index into Qdrant (minutes for thousands of speakers in
    local mode) printed nothing until the end. Now it counts the speakers on stderr once the
    copy takes more than PROGRESS_DELAY seconds, and written in chunks they keep their order
    even on a clock that does not move between chunks."""
    index = _folder_index(tmp_path / "index", reverse=True)
    monkeypatch.setattr(qdrant, "time", types.SimpleNamespace(time_ns=lambda: 10**18))
    monkeypatch.setattr(locations, "COPY_CHUNK", 7)
    monkeypatch.setattr(locations, "PROGRESS_DELAY", 0.0)
    dest = f"qdrant+local:{tmp_path}/store/speakers"
    cli.main(["copy-index", str(tmp_path / "index"), dest])
    captured = capsys.readouterr()
    assert "copied 30 speakers" in captured.out
    assert "copy-index" in captured.err and "30/30" in captured.err
    with open_index(dest) as copy:
        assert copy.speakers == index.speakers
    assert copy_index(dest, tmp_path / "back", progress=True)["speakers"] == 30
    assert "30/30" in capsys.readouterr().err
    monkeypatch.setattr(locations, "PROGRESS_DELAY", 60.0)  # a quick copy: nothing shown
    cli.main(["copy-index", dest, str(tmp_path / "again")])
    assert capsys.readouterr().err == ""
    copy_index(tmp_path / "index", f"qdrant+local:{tmp_path}/store/quiet")  # progress off
    assert capsys.readouterr().err == ""
