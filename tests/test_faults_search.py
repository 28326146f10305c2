"""Speaker index and search command faults: a file at the index path, staging folders left by
killed saves, permissions under the umask, 1:1 thresholds in 1:N search, empty or unlabelled
audio lists, short audio through the commands, and bad calibration input."""
import csv
import json
import logging
import os
import pathlib
import warnings

import numpy as np
import pytest
import soundfile as sf

from mrl_testutils import (speaker_voice, tiny_encoder, tiny_modules, write_tiny_model,
                           write_voice_corpus)
from speechbrain_mrl import cli
from speechbrain_mrl.data.audio import ShortAudioWarning
from speechbrain_mrl.inference.embeddings import embed_manifest
from speechbrain_mrl.utils.files import swap_folder
from speechbrain_mrl.search.index import (SpeakerIndex, calibrate_margin, calibrate_thresholds,
                                    cascade_verify)

DIMS = [4, 8, 16]


def _index(n_spk=4, **kwargs):
    rng = np.random.default_rng(0)
    index = SpeakerIndex(16, DIMS, **kwargs)
    index.enrol([f"s{i}" for i in range(n_spk)], rng.standard_normal((n_spk, 16)))
    return index


def _listing(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir())


@pytest.fixture(scope="module")
def model_and_voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_faults")
    folder, _, _ = write_tiny_model(root / "model")
    corpus = write_voice_corpus(root / "speakers", n_spk=3, n_utt=2)
    return root, str(folder), corpus


def _manifest(path, rows, header=("ID", "wav", "spk_id")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


# ------------------------------------------------------------ 1. a file at the index path
def test_saving_over_a_regular_file_is_refused_and_touches_nothing(tmp_path):
    (tmp_path / "notes").write_text("keep me")
    index = _index()
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"{tmp_path / 'notes'} .*not a .*folder"):
            index.save(tmp_path / "notes", overwrite=overwrite)
    assert _listing(tmp_path) == ["notes"]  # no lock file, nothing moved aside
    assert (tmp_path / "notes").read_text() == "keep me"
    with pytest.raises(ValueError, match="is a file, not a speaker index folder"):
        SpeakerIndex.load(tmp_path / "notes")
    index.save(tmp_path / "index")
    index.save(tmp_path / "index", overwrite=True)  # later saves elsewhere work


def test_swap_folder_never_moves_a_file_aside(tmp_path):
    staged = tmp_path / ".staged"
    staged.mkdir()
    (tmp_path / "target").write_text("keep me")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'target'} is a file or link"):
        swap_folder(staged, tmp_path / "target", tmp_path / ".target.old")
    assert _listing(tmp_path) == [".staged", "target"]
    (tmp_path / "folder").mkdir()
    (tmp_path / ".folder.old").write_text("in the way")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / '.folder.old'} is a file or link"):
        swap_folder(staged, tmp_path / "folder", tmp_path / ".folder.old")
    assert _listing(tmp_path) == [".folder.old", ".staged", "folder", "target"]


def test_enrol_into_a_file_is_refused_before_embedding(model_and_voices, tmp_path):
    root, folder, _ = model_and_voices
    (tmp_path / "idx").write_text("keep me")
    with pytest.raises(ValueError, match="idx is a file, not a speaker index folder"):
        cli.main(["enrol", "--model_folder", folder, "--folder", str(root / "speakers"),
                  "--index", str(tmp_path / "idx")])
    assert _listing(tmp_path) == ["idx"] and (tmp_path / "idx").read_text() == "keep me"


# ------------------------------------------------------------ 2. stale staging folders
def test_a_save_removes_staging_folders_of_killed_saves(tmp_path):
    index = _index()
    index.save(tmp_path / "index")
    from speechbrain_mrl.utils.files import staging_folder

    for _ in range(2):  # as killed saves leave them: marked staging folders
        stale = staging_folder(tmp_path / "index")
        np.save(stale / "vectors.npy", np.zeros((2, 16), "float32"))
    # not staging folders of this index: the user's own, even when named like one
    kept = [".index.notes", ".index.abcd12345", ".other.abcd1234", ".index.x.abcd1234",
            ".index.abcd1234"]
    for other in kept:  # not a staging folder of this index
        (tmp_path / other).mkdir()
    (tmp_path / ".index.zzzz9999").write_text("a file, not a staging folder")
    loaded = SpeakerIndex.load(tmp_path / "index")
    loaded.enrol(["new"], np.ones((1, 16)))
    loaded.save(tmp_path / "index")
    assert _listing(tmp_path) == sorted([".index.lock", "index", ".index.zzzz9999", *kept])
    assert SpeakerIndex.load(tmp_path / "index").speakers[-1] == "new"


# ------------------------------------------------------------ 3. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_index_folders_and_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        index = _index(first_stage="hnsw")
        index.save(tmp_path / "index")
        loaded = SpeakerIndex.load(tmp_path / "index")
        loaded.enrol(["new"], np.ones((1, 16)))
        loaded.save(tmp_path / "index")  # a second save: the swap path
    finally:
        os.umask(old)
    folder = tmp_path / "index"
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    files = sorted(folder.iterdir())
    assert {p.name for p in files} >= {"vectors.npy", "speakers.json", "index.json",
                                       "stage_4_hnsw.faiss"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: oct(0o666 & ~umask) for p in files}


# ------------------------------------------------------------ 4. 1:1 thresholds in 1:N search
def test_identify_warns_about_copied_1_to_1_thresholds(tmp_path):
    index = _index(thresholds={16: 0.3}, thresholds_for="verification")
    queries = np.random.default_rng(1).standard_normal((2, 16))
    with pytest.warns(UserWarning, match=r"1:1 verification thresholds.*speechbrain-mrl "
                                         r"calibrate --index FOLDER --false_alarm"):
        index.identify(queries)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.identify(queries, threshold=0.3)  # a threshold given: no warning
    folder = index.save(tmp_path / "index")
    meta = json.loads((folder / "index.json").read_text())
    assert meta.pop("thresholds_for") == "verification"
    # an index.json of before the field: its thresholds were the model's (1:1)
    (folder / "index.json").write_text(json.dumps(meta))
    loaded = SpeakerIndex.load(folder)
    assert loaded.thresholds_for == "verification" and loaded.thresholds == {16: 0.3}
    with pytest.warns(UserWarning, match=f"{folder} holds 1:1 verification thresholds"):
        loaded.identify(queries)
    loaded.set_thresholds({16: 0.6})  # thresholds set by hand: chosen for identification
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.identify(queries)
    assert SpeakerIndex.load(loaded.save(folder)).thresholds_for == "identification"
    with pytest.raises(ValueError, match="thresholds_for must be one of"):
        loaded.set_thresholds({16: 0.6}, "open set")


def test_identify_command_warns_until_thresholds_are_calibrated_for_identification(
        model_and_voices, tmp_path, caplog):
    root, folder, corpus = model_and_voices
    index = str(tmp_path / "index")
    cli.main(["enrol", "--model_folder", folder, "--folder", str(root / "speakers"),
              "--index", index])
    assert SpeakerIndex.load(index).thresholds_for == "verification"  # the model's, copied
    files = [str(p) for _, p in sorted(corpus.values())[:2]]
    identify = ["identify", "--model_folder", folder, "--index", index, "--files", *files]

    def warned(*extra):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="speechbrain_mrl.cli.search"), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli.main(identify + list(extra))
        assert not [w for w in caught if "1:1" in str(w.message)]  # no second, library warning
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    message = warned("--threshold", "index")
    assert len(message) == 1 and "1:1 verification thresholds" in message[0]
    assert f"speechbrain-mrl calibrate --index {pathlib.Path(index).resolve()} --false_alarm" \
        in message[0]
    assert warned() == [] and warned("--threshold", "0.5") == []  # closed set; a given threshold
    rels = sorted(corpus)
    utts = _manifest(tmp_path / "utts.csv", [[r, str(corpus[r][1]), corpus[r][0]] for r in rels])
    trials = [(int(corpus[x][0] == corpus[y][0]), x, y) for i, x in enumerate(rels)
              for y in rels[i + 1:]]
    (tmp_path / "trials.txt").write_text("".join(f"{label} {x} {y}\n" for label, x, y in trials))
    calibrate = ["calibrate", "--model_folder", folder, "--index", index, "--csv", utts,
                 "--trials", str(tmp_path / "trials.txt")]
    cli.main(calibrate)  # the equal error rate: still a 1:1 threshold
    assert SpeakerIndex.load(index).thresholds_for == "verification"
    assert len(warned("--threshold", "index")) == 1
    cli.main(calibrate + ["--false_alarm", "0.1"])
    assert SpeakerIndex.load(index).thresholds_for == "identification"
    assert warned("--threshold", "index") == []


# ------------------------------------------------------------ 5. empty and unlabelled lists
def test_enrol_refuses_a_header_only_manifest(model_and_voices, tmp_path):
    _, folder, _ = model_and_voices
    empty = _manifest(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match=f"no audio in {empty}"):
        cli.main(["enrol", "--model_folder", folder, "--csv", empty, "--index",
                  str(tmp_path / "index")])
    assert _listing(tmp_path) == ["empty.csv"]


def test_evaluate_names_the_missing_spk_id_column(model_and_voices, tmp_path):
    root, folder, corpus = model_and_voices
    index = str(tmp_path / "index")
    cli.main(["enrol", "--model_folder", folder, "--folder", str(root / "speakers"),
              "--index", index])
    queries = _manifest(tmp_path / "q.csv", [[r, str(p)] for r, (_, p) in corpus.items()],
                        header=("ID", "wav"))
    with pytest.raises(ValueError, match=f"{queries}: no speaker for 6 files.*spk_id column"):
        cli.main(["evaluate", "--model_folder", folder, "--index", index, "--csv", queries])


# ------------------------------------------------------------ 6. short audio
def test_the_commands_warn_about_short_audio_once(model_and_voices, tmp_path):
    root, folder, _ = model_and_voices
    index = str(tmp_path / "index")
    clips = []
    for i, seconds in enumerate((0.05, 0.2, 1.0)):
        clips.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(clips[-1], speaker_voice(i, 0, seconds).numpy(), 16000)
    cli.main(["enrol", "--model_folder", folder, "--folder", str(root / "speakers"),
              "--index", index])
    with pytest.warns(ShortAudioWarning) as caught:
        cli.main(["identify", "--model_folder", folder, "--index", index, "--files", *clips,
                  "--batch_size", "1"])
    short = [w for w in caught if issubclass(w.category, ShortAudioWarning)]
    assert len(short) == 1  # one warning for the call, naming both short clips
    text = str(short[0].message)
    assert text.startswith("2 utterance(s) shorter than 0.500 s")
    assert f"{clips[0]}: 0.050 s" in text and f"{clips[1]}: 0.200 s" in text
    assert clips[2] not in text


def test_embed_manifest_warns_only_when_asked(tmp_path):
    encoder = tiny_encoder(*tiny_modules())
    path = tmp_path / "short.wav"
    sf.write(path, speaker_voice(0, 0, 0.1).numpy(), 16000)
    rows = {"u": {"wav": str(path), "duration": 0.1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_manifest(encoder, rows, progress=False)  # short_duration 0: off
    with pytest.warns(ShortAudioWarning, match=r"1 utterance\(s\) shorter than 0.500 s \(u: "):
        embed_manifest(encoder, rows, progress=False, short_duration=0.5)


# ------------------------------------------------------------ 7. bad calibration input
def _trials(n=40, dim=16):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n, dim))
    same = np.arange(n) < n // 2
    b = np.where(same[:, None], a + 0.3 * rng.standard_normal((n, dim)),
                 rng.standard_normal((n, dim)))
    return a, b, same


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibration_refuses_non_finite_embeddings(bad):
    a, b, same = _trials()
    b[7, 3] = bad
    with pytest.raises(ValueError, match=r"test embeddings: trials \[7\] hold NaN/Inf"):
        calibrate_thresholds(a, b, same, [4, 16])
    with pytest.raises(ValueError, match=r"test embeddings: trials \[7\] hold NaN/Inf"):
        calibrate_margin(a, b, 4, 0.3, 0.3)
    with pytest.raises(ValueError, match=r"test embeddings: trials \[7\] hold NaN/Inf"):
        cascade_verify(a, b, 4, 0.3, 0.3, 0.1)


@pytest.mark.parametrize("size", [0, -4, 17, 32, "8"])
def test_sizes_outside_the_embedding_are_refused(size):
    a, b, same = _trials()
    with pytest.raises(ValueError, match=r"must be an integer in \[1, 16\]"):
        calibrate_thresholds(a, b, same, [4, size])
    with pytest.raises(ValueError, match=r"small_dim must be an integer in \[1, 16\]"):
        cascade_verify(a, b, size, 0.3, 0.3, 0.1)
    with pytest.raises(ValueError, match=r"small_dim must be an integer in \[1, 16\]"):
        calibrate_margin(a, b, size, 0.3, 0.3)
    assert set(calibrate_thresholds(a, b, same, [1, np.int64(16)])) == {1, 16}


def test_identify_checks_the_index_before_running_the_models_hyperparams(tmp_path):
    """Regression: a hyperparams.yaml with !apply ran before the index's fingerprint check."""
    from mrl_testutils import write_tiny_model, write_voice_corpus
    from speechbrain_mrl import cli

    folder, _, _ = write_tiny_model(tmp_path / "model")
    corpus = write_voice_corpus(tmp_path / "speakers", n_spk=2, n_utt=2)
    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(tmp_path / "speakers"),
              "--index", str(tmp_path / "idx")])
    other, _, _ = write_tiny_model(tmp_path / "other", seed=1)
    marker = tmp_path / "ran"
    hparams = other / "hyperparams.yaml"
    hparams.write_text(hparams.read_text() + f"\nside_effect: !apply:os.makedirs ['{marker}']\n")
    query = str(next(iter(corpus.values()))[1])
    with pytest.raises(ValueError, match="built with another model"):
        cli.main(["identify", "--model_folder", str(other), "--index", str(tmp_path / "idx"),
                  "--files", query])
    assert not marker.exists()


def test_a_manifest_without_a_wav_column_is_named(tmp_path):
    """Regression: a CSV without a wav column gave KeyError: 'wav'."""
    from speechbrain_mrl.data.sources import read_sources

    (tmp_path / "m.csv").write_text("ID,path\nu1,a.wav\n")
    with pytest.raises(ValueError, match=r"m\.csv: a manifest needs the columns ID and wav"):
        read_sources(csv=tmp_path / "m.csv")


# ------------------------------------------------------------------ round three (issue 28)
def test_two_first_writers_of_a_new_folder_both_land(tmp_path):
    """Regression: two writers creating an index through writing_index always collided
    (IndexExistsError): the existence check ran before the lock."""
    import threading

    from speechbrain_mrl.search.locations import writing_index

    folder, errors, barrier = tmp_path / "idx", [], threading.Barrier(2)

    def writer(name):
        try:
            barrier.wait()
            with writing_index(folder, create=lambda: SpeakerIndex(8, [4, 8])) as index:
                index.enrol([name], np.eye(8, dtype=np.float32)[:1] + len(name))
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("ann", "bo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(SpeakerIndex.load(folder).speakers) == ["ann", "bo"]


def test_an_all_zero_vectors_file_and_a_linked_lock_are_refused(tmp_path):
    """Regression: an all-zero vectors.npy loaded (every speaker scored 0); a .idx.lock
    symlink was followed."""
    index = SpeakerIndex(8, [4, 8])
    index.enrol(["a", "b"], np.eye(8, dtype=np.float32)[:2])
    index.save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "vectors.npy", np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"vectors\.npy: rows \[0, 1\] .* are all zero"):
        SpeakerIndex.load(tmp_path / "idx")
    victim = tmp_path / "victim"
    victim.write_text("not a lock")
    (tmp_path / ".other.lock").symlink_to(victim)
    with pytest.raises(OSError, match="is a symbolic link: refused"):
        index.save(tmp_path / "other")
    assert victim.read_text() == "not a lock" and not (tmp_path / "other").exists()


def test_a_users_old_folder_beside_a_new_index_is_not_an_index(tmp_path):
    """Regression (issue 28): a lone .<index>.old made enrol claim an index existed."""
    from speechbrain_mrl.search.locations import index_exists, writing_index

    (tmp_path / ".idx.old").mkdir()
    (tmp_path / ".idx.old" / "index.json").write_text("{}")  # the user's own, not ours
    assert not index_exists(tmp_path / "idx")
    with writing_index(tmp_path / "idx", create=lambda: SpeakerIndex(8, [4, 8])) as index:
        index.enrol(["a"], np.eye(8, dtype=np.float32)[:1])
    assert SpeakerIndex.load(tmp_path / "idx").speakers == ["a"]
    assert (tmp_path / ".idx.old" / "index.json").read_text() == "{}"
