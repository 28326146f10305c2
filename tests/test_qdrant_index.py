"""QdrantSpeakerIndex (qdrant-client local mode) against the FAISS SpeakerIndex: the same
answers, the same changes, the fingerprint, the copy both ways, the command line."""
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from mrl_testutils import clustered_speakers

from speechbrain_mrl.search.locations import copy_index, index_exists, open_index
from speechbrain_mrl.search.qdrant import (QdrantSpeakerIndex, parse_qdrant_location,
                                          speaker_point_id)
from speechbrain_mrl.search.index import IndexLockedError, SpeakerIndex



def _qdrant_installed():
    try:
        import qdrant_client  # noqa: F401
    except ImportError:
        return False
    return True


needs_qdrant = pytest.mark.skipif(not _qdrant_installed(),
                                  reason="qdrant-client is not installed: pip install -e "
                                         '".[qdrant]" (the test extra installs it)')

DIMS = [8, 16, 32]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same enrolment in a FAISS index (exact first stage) and a local Qdrant collection."""
    ids, emb, queries = clustered_speakers()
    faiss_index = SpeakerIndex(32, DIMS, model_sha256="abc", thresholds={16: 0.5, 32: 0.6})
    faiss_index.enrol(ids, emb)
    store = tmp_path_factory.mktemp("qdrant")
    qdrant = QdrantSpeakerIndex(32, DIMS, model_sha256="abc", thresholds={16: 0.5, 32: 0.6},
                                location=f"qdrant+local:{store}/speakers", first_stage="flat")
    qdrant.enrol(ids, emb)
    yield faiss_index, qdrant, queries
    qdrant.close()


@needs_qdrant
@pytest.mark.parametrize("stages, final_dim", [([], None), ([8], None), ([8, 16], None),
                                               ([], 16), ([8], 16)])
@pytest.mark.parametrize("shortlist", [12, [20, 6]])
def test_the_funnel_in_one_qdrant_query_equals_the_faiss_funnel(both, stages, final_dim, shortlist):
    """1-, 2- and 3-stage funnels with shortlists far smaller than the enrolment (so the
    stages matter): the same speakers in the same order, the same scores."""
    faiss_index, qdrant, queries = both
    if isinstance(shortlist, list):
        shortlist = shortlist[:len(stages)]
    want_ids, want_scores = faiss_index.search(queries, k=5, stages=stages, shortlist=shortlist,
                                               final_dim=final_dim)
    got_ids, got_scores = qdrant.search(queries, k=5, stages=stages, shortlist=shortlist,
                                        final_dim=final_dim)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


@needs_qdrant
def test_open_set_identification_equals_the_faiss_index(both):
    faiss_index, qdrant, queries = both
    assert qdrant.thresholds == faiss_index.thresholds == {16: 0.5, 32: 0.6}
    for final_dim in (16, 32):
        want = faiss_index.identify(queries, k=3, stages=[8], shortlist=30, final_dim=final_dim)
        got = qdrant.identify(queries, k=3, stages=[8], shortlist=30, final_dim=final_dim)
        assert [[s for s, _ in row] for row in got] == [[s for s, _ in row] for row in want]
        np.testing.assert_allclose([c for row in got for _, c in row],
                                   [c for row in want for _, c in row], atol=1e-5)
        assert any(len(g) < 3 for g in got) and any(g for g in got)  # the threshold decides
    assert all(g == [] for g in qdrant.identify(queries, k=1, threshold=1.0))
    with pytest.raises(ValueError, match="no open-set threshold for size 8"):
        qdrant.identify(queries, k=1, final_dim=8)


@needs_qdrant
def test_incremental_enrol_replace_remove_equal_the_faiss_index(tmp_path):
    ids, emb, queries = clustered_speakers(n_spk=20)
    faiss_index = SpeakerIndex(32, DIMS)
    with QdrantSpeakerIndex(32, DIMS, location=f"qdrant+local:{tmp_path}/q/speakers") as qdrant:
        for index in (faiss_index, qdrant):
            index.enrol(ids[:30], emb[:30])
            index.enrol(ids[30:], emb[30:])
            index.enrol(["spk0003"], emb[:1], replace=True)  # spk0003 now has spk0000's voice
            index.remove(["spk0000", "spk0007"])
            with pytest.raises(ValueError, match="already enrolled"):
                index.enrol(["spk0001"], emb[:1])
            with pytest.raises(KeyError, match="not enrolled"):
                index.remove(["spk0001", "nobody"])
        assert len(qdrant) == len(faiss_index) == 18
        assert qdrant.speakers == faiss_index.speakers  # enrolment order, replaced one last
        assert qdrant.counts == faiss_index.counts and qdrant.counts[-1] == 1
        got, want = qdrant.speaker_means(), faiss_index.speaker_means()
        np.testing.assert_allclose(got[2], want[2], atol=1e-6)
        assert qdrant.search(queries[:1], k=1, stages=[])[0] == [["spk0003"]]
        for stages in ([], [8], [8, 16]):
            assert (qdrant.search(queries, k=3, stages=stages, shortlist=6)[0]
                    == faiss_index.search(queries, k=3, stages=stages, shortlist=6)[0])


@needs_qdrant
def test_a_collection_of_some_sizes_searches_with_those_only(both, tmp_path):
    faiss_index, _, queries = both
    speakers, counts, vectors = faiss_index.speaker_means()
    location = f"qdrant+local:{tmp_path}/store/speakers"
    with QdrantSpeakerIndex(32, DIMS, location=location, sizes=[8]) as index:
        index.add_speaker_means(speakers, counts, vectors)
    with open_index(location) as index:
        assert index.sizes == [8, 32]
        got = index.search(queries, k=3, stages=[8], shortlist=10)
        want = faiss_index.search(queries, k=3, stages=[8], shortlist=10)
        assert got[0] == want[0]
        with pytest.raises(ValueError, match=r"stores the sizes \[8, 32\], not \[16\]"):
            index.search(queries, k=3, stages=[8, 16])


@needs_qdrant
def test_the_fingerprint_and_the_collection_are_checked(tmp_path):
    location = f"qdrant+local:{tmp_path}/store/speakers"
    QdrantSpeakerIndex(8, [4, 8], model_sha256="abc", location=location).close()
    with pytest.raises(ValueError, match="built with another model"):
        open_index(location, model_sha256="other")
    open_index(location, model_sha256="abc").close()
    with pytest.raises(ValueError, match="already exists"):
        QdrantSpeakerIndex(8, [4, 8], location=location)
    with pytest.raises(FileNotFoundError, match="no collection 'nothing'"):
        open_index(f"qdrant+local:{tmp_path}/store/nothing")
    with pytest.raises(FileNotFoundError, match="no folder"):
        open_index(f"qdrant+local:{tmp_path}/elsewhere/speakers")
    assert not index_exists(f"qdrant+local:{tmp_path}/elsewhere/speakers")
    assert not (tmp_path / "elsewhere").exists()  # looking does not create the folder
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "store"))
    client.create_collection("other", vectors_config=models.VectorParams(
        size=8, distance=models.Distance.COSINE))
    client.close()
    with pytest.raises(ValueError, match="not a speaker index"):
        open_index(f"qdrant+local:{tmp_path}/store/other")
    with pytest.raises(ValueError, match="not a Qdrant index location"):
        open_index("qdrant:/no-host")
    assert parse_qdrant_location("qdrant+https://db.example:6334/spk").url == \
        "https://db.example:6334"
    assert str(uuid.UUID(speaker_point_id("alice"))) == speaker_point_id("alice")


@needs_qdrant
def test_a_second_client_on_a_local_folder_gets_one_clear_line(tmp_path):
    location = f"qdrant+local:{tmp_path}/store/speakers"
    with QdrantSpeakerIndex(8, [4, 8], location=location) as index:
        index.enrol(["a"], np.ones((1, 8)))
        with pytest.raises(IndexLockedError, match="open in another client") as err:
            open_index(location)
        assert "\n" not in str(err.value) and str(tmp_path / "store") in str(err.value)
        code = (f"from speechbrain_mrl import cli; cli.run(['copy-index', {location!r}, "
                f"{str(tmp_path / 'copy')!r}])")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("speechbrain-mrl copy-index: error:")
    assert "open in another client" in lines[0] and not (tmp_path / "copy").exists()
    with open_index(location) as again:  # closed: the folder opens again
        assert again.speakers == ["a"]


@needs_qdrant
@pytest.mark.parametrize("dtype, first_stage", [("float32", "hnsw"), ("float16", "flat")])
def test_copy_a_folder_to_a_collection_and_back(tmp_path, dtype, first_stage):
    ids, emb, queries = clustered_speakers(n_spk=30)
    index = SpeakerIndex(32, DIMS, model_sha256="abc", dtype=dtype, first_stage=first_stage,
                         thresholds={32: 0.4}, thresholds_for="verification")
    index.enrol(ids, emb)
    index.remove(["spk0004"])
    index.save(tmp_path / "index")
    qdrant = f"qdrant+local:{tmp_path}/store/speakers"
    there = copy_index(tmp_path / "index", qdrant)
    assert there["speakers"] == 29 and there["max_abs_difference"] <= there["tolerance"]
    with open_index(qdrant, model_sha256="abc") as copy:
        assert copy.speakers == index.speakers and copy.thresholds_for == "verification"
        want = index.search(queries, k=3, stages=[8], shortlist=10)
        got = copy.search(queries, k=3, stages=[8], shortlist=10)
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1], want[1], atol=1e-5 if dtype == "float32" else 2e-3)
    back = copy_index(qdrant, tmp_path / "back")
    assert back["speakers"] == 29
    loaded = SpeakerIndex.load(tmp_path / "back", model_sha256="abc")
    assert (loaded.dtype, loaded.first_stage, loaded.thresholds) == (dtype, first_stage, {32: 0.4})
    assert loaded.speakers == index.speakers and loaded.counts == index.counts
    tolerance = 1e-6 if dtype == "float32" else 1e-3
    np.testing.assert_allclose(np.asarray(loaded._vectors, np.float32),
                               np.asarray(index._vectors, np.float32), atol=tolerance)
    with pytest.raises(ValueError, match="already exists"):
        copy_index(tmp_path / "index", qdrant)
    with pytest.raises(Exception, match="already holds a speaker index"):
        copy_index(qdrant, tmp_path / "back")


@needs_qdrant
def test_a_copy_stopped_midway_is_refused_not_served(tmp_path, monkeypatch):
    """Regression (issue 28): a copy-index into Qdrant killed mid-copy left a partial collection
    that opened and searched without a warning. Now it is marked complete only at the end."""
    ids, emb, queries = clustered_speakers(n_spk=30)
    index = SpeakerIndex(32, DIMS, model_sha256="abc")
    index.enrol(ids, emb)
    index.save(tmp_path / "index")
    qdrant = f"qdrant+local:{tmp_path}/store/speakers"
    real = QdrantSpeakerIndex.add_speaker_means

    def stopped(self, speakers, counts, means):
        real(self, speakers[:7], counts[:7], means[:7])
        raise KeyboardInterrupt  # as a kill after the first points

    monkeypatch.setattr(QdrantSpeakerIndex, "add_speaker_means", stopped)
    with pytest.raises(KeyboardInterrupt):
        copy_index(tmp_path / "index", qdrant)
    monkeypatch.setattr(QdrantSpeakerIndex, "add_speaker_means", real)
    with pytest.raises(ValueError, match="incomplete copy.*overwrite"):
        open_index(qdrant)
    assert copy_index(tmp_path / "index", qdrant, overwrite=True)["speakers"] == 30
    with open_index(qdrant, model_sha256="abc") as copy:
        assert copy.speakers == index.speakers


@needs_qdrant
def test_the_commands_on_a_local_collection_equal_those_on_a_folder(tmp_path, capsys):
    """enrol / identify / calibrate / evaluate / copy-index with a real (tiny) model."""
    import csv
    import json

    from mrl_testutils import write_tiny_model, write_voice_corpus
    from speechbrain_mrl import cli

    folder, _, _ = write_tiny_model(tmp_path / "model")
    corpus = write_voice_corpus(tmp_path / "speakers", n_spk=4, n_utt=3)
    qdrant = f"qdrant+local:{tmp_path}/store/speakers"
    common = ["--model_folder", str(folder)]
    for index in (str(tmp_path / "index"), qdrant):
        cli.main(["enrol", *common, "--folder", str(tmp_path / "speakers"), "--index", index])
    with pytest.raises(ValueError, match="already enrolled"):
        cli.main(["enrol", *common, "--folder", str(tmp_path / "speakers"), "--index", qdrant])
    files = [str(p) for _, p in sorted(corpus.values())]
    args = ["--files", *files, "--k", "3", "--stages", "4", "--shortlist", "3"]
    on_folder = cli.main(["identify", *common, "--index", str(tmp_path / "index"), *args])
    on_qdrant = cli.main(["identify", *common, "--index", qdrant, *args])
    assert {u: [m["speaker"] for m in v] for u, v in on_qdrant.items()} == \
        {u: [m["speaker"] for m in v] for u, v in on_folder.items()}
    np.testing.assert_allclose([m["score"] for v in on_qdrant.values() for m in v],
                               [m["score"] for v in on_folder.values() for m in v], atol=1e-5)
    rels = sorted(corpus)
    with open(tmp_path / "utts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ID", "wav", "spk_id"]]
                                + [[r, str(corpus[r][1]), corpus[r][0]] for r in rels])
    trials = [(int(corpus[x][0] == corpus[y][0]), x, y) for i, x in enumerate(rels)
              for y in rels[i + 1:]]
    (tmp_path / "trials.txt").write_text("".join(f"{label} {x} {y}\n" for label, x, y in trials))
    thresholds = cli.main(["calibrate", *common, "--index", qdrant, "--csv",
                           str(tmp_path / "utts.csv"), "--trials", str(tmp_path / "trials.txt")]
                          )["thresholds"]
    with open_index(qdrant) as index:
        assert index.thresholds == thresholds
    report = cli.main(["evaluate", *common, "--index", qdrant, "--csv", str(tmp_path / "utts.csv"),
                       "--funnels", "4", "4,8"])
    assert report["queries"] == 12
    assert len({json.dumps(r) for r in report["funnels"].values()}) == 1
    cli.main(["copy-index", qdrant, str(tmp_path / "back")])
    assert "checked equal" in capsys.readouterr().out
    assert SpeakerIndex.load(tmp_path / "back").thresholds == thresholds
    other, _, _ = write_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="built with another model"):
        cli.main(["identify", "--model_folder", str(other), "--index", qdrant, "--files", files[0]])


def test_without_qdrant_client_a_qdrant_location_names_the_extra(tmp_path, monkeypatch, capsys):
    from speechbrain_mrl import cli

    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # import qdrant_client fails
    with pytest.raises(ImportError, match=r'pip install "speechbrain-mrl\[qdrant\]"'):
        open_index(f"qdrant+local:{tmp_path}/speakers")
    with pytest.raises(SystemExit) as exit_:
        cli.run(["copy-index", "idx", "qdrant://localhost:6333/speakers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1
    assert 'pip install "speechbrain-mrl[qdrant]"' in err[0] or "not found: idx" in err[0]
    folder = SpeakerIndex(8, [4, 8])
    folder.enrol(["a"], np.ones((1, 8)))
    folder.save(tmp_path / "index")
    with pytest.raises(SystemExit):
        cli.run(["copy-index", str(tmp_path / "index"), "qdrant://localhost:6333/speakers"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "speechbrain-mrl[qdrant]"' in err[0]
    assert SpeakerIndex.load(tmp_path / "index").speakers == ["a"]  # index folders still work


@needs_qdrant
@pytest.mark.skipif(not os.environ.get("MRL_QDRANT_URL"),
                    reason="no Qdrant server: set MRL_QDRANT_URL=qdrant://HOST:PORT to run this "
                           "test against one (no server can be installed on the test machines)")
def test_against_a_real_qdrant_server():
    """The same parity on a server: an HNSW first stage with a generous ef, then exact."""
    ids, emb, queries = clustered_speakers(n_spk=200)
    faiss_index = SpeakerIndex(32, DIMS, model_sha256="abc")
    faiss_index.enrol(ids, emb)
    location = f"{os.environ['MRL_QDRANT_URL'].rstrip('/')}/mrl_test_{uuid.uuid4().hex[:8]}"
    from speechbrain_mrl.search.qdrant import connect

    try:
        for first_stage in ("flat", "hnsw"):
            with QdrantSpeakerIndex(32, DIMS, model_sha256="abc", location=location,
                                    first_stage=first_stage, hnsw_ef=512, overwrite=True) as index:
                index.enrol(ids, emb)
                for stages in ([], [8], [8, 16]):
                    want = faiss_index.search(queries, k=5, stages=stages, shortlist=20)
                    got = index.search(queries, k=5, stages=stages, shortlist=20)
                    agree = np.mean([g == w for g, w in zip(got[0], want[0])])
                    assert agree >= (1.0 if first_stage == "flat" else 0.98), (first_stage, agree)
                index.remove(["spk0000"])
                assert len(index) == 199
            with pytest.raises(ValueError, match="built with another model"):
                open_index(location, model_sha256="other")
    finally:
        client = connect(parse_qdrant_location(location))
        client.delete_collection(parse_qdrant_location(location).collection)
        client.close()


@needs_qdrant
def test_server_faults_name_the_server(tmp_path):
    """Regression (issue 28): a refused connection, a port that is not Qdrant's and a bad port
    said 'Connection refused', 'Expecting value', 'Failed to parse', naming no server."""
    import http.server
    import socket
    import threading

    class NotQdrant(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not qdrant</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotQdrant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    try:
        for location in (f"qdrant://127.0.0.1:{closed_port}/speakers",
                         f"qdrant://127.0.0.1:{server.server_address[1]}/speakers",
                         "qdrant://127.0.0.1:99999/speakers"):
            with pytest.raises(ConnectionError, match="Qdrant server http://127.0.0.1:") as caught:
                open_index(location)
            assert location in str(caught.value) and len(str(caught.value).splitlines()) == 1
    finally:
        server.shutdown()
