"""SpeakerIndex: Matryoshka funnel search against brute force, storage, bad input."""
import json
import os

import numpy as np
import pytest

from mrl_testutils import clustered_speakers

from speechbrain_mrl.search.index import SpeakerIndex

DIMS = [8, 16, 32]


def _brute_force(ids, emb, queries, k, d=None):
    """Speaker model = mean of L2-normalised embeddings; cosine of the first ``d``; exact top-k."""
    names = sorted(set(ids), key=ids.index)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    means = np.stack([unit[[i for i, s in enumerate(ids) if s == n]].mean(0) for n in names])[:, :d]
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    q = queries[:, :d] / np.linalg.norm(queries[:, :d], axis=1, keepdims=True)
    scores = q @ means.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[names[i] for i in row] for row in order], np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("stages, final_dim", [([], None), ([8], None), ([8, 16], None),
                                               ([], 16), ([8], 16)])
@pytest.mark.parametrize("first_stage", ["flat", "ivf"])
def test_funnel_with_a_full_shortlist_equals_brute_force(stages, final_dim, first_stage):
    ids, emb, queries = clustered_speakers()
    # an IVF first stage visiting every cell is exact
    index = SpeakerIndex(32, DIMS, first_stage=first_stage, ivf_nprobe=len(ids))
    index.enrol(ids, emb)
    got_ids, got_scores = index.search(queries, k=5, stages=stages, shortlist=len(index),
                                       final_dim=final_dim)
    want_ids, want_scores = _brute_force(ids, emb, queries, 5, final_dim)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_small_prefix_shortlist_and_approximate_first_stages_keep_the_top_speaker():
    ids, emb, queries = clustered_speakers(n_spk=300, noise=0.3)
    want, _ = _brute_force(ids, emb, queries, 1)
    for first_stage in ("flat", "hnsw", "ivf"):
        index = SpeakerIndex(32, DIMS, first_stage=first_stage)
        index.enrol(ids, emb)
        got, _ = index.search(queries, k=1, stages=[8], shortlist=30)
        agree = np.mean([g[0] == w[0] for g, w in zip(got, want)])
        assert agree >= 0.97, (first_stage, agree)


def test_incremental_add_replace_remove():
    ids, emb, queries = clustered_speakers(n_spk=20)
    index = SpeakerIndex(32, DIMS)
    index.enrol(ids[:30], emb[:30])
    index.enrol(ids[30:], emb[30:])
    assert index.speakers == sorted(set(ids)) and index.counts == [3] * 20
    whole = SpeakerIndex(32, DIMS)
    whole.enrol(ids, emb)
    assert index.search(queries, k=3)[0] == whole.search(queries, k=3, stages=[8])[0]
    index.enrol(["spk0003"], emb[:1], replace=True)  # spk0003 now has spk0000's voice
    assert index.counts[index.speakers.index("spk0003")] == 1
    index.remove(["spk0000"])
    assert index.search(queries[:1], k=1, stages=[])[0] == [["spk0003"]]
    assert "spk0000" not in index.speakers and len(index) == 19


def test_save_load_round_trip_and_interrupted_save(tmp_path, monkeypatch):
    ids, emb, queries = clustered_speakers(n_spk=40)
    index = SpeakerIndex(32, DIMS, model_sha256="abc", dtype="float16")
    index.enrol(ids, emb)
    folder = index.save(tmp_path / "index")
    loaded = SpeakerIndex.load(folder, model_sha256="abc")
    assert np.asarray(loaded._vectors).dtype == np.float16
    assert np.array_equal(np.asarray(loaded._vectors), np.asarray(index._vectors))
    assert loaded.speakers == index.speakers and loaded.counts == index.counts
    assert loaded.search(queries, k=3, stages=[8]) [0] == index.search(queries, k=3, stages=[8])[0]
    with pytest.raises(ValueError, match="built with another model"):
        SpeakerIndex.load(folder, model_sha256="other")
    # a save killed before its rename leaves the previous index as it was
    loaded.enrol(["new"], emb[:1])
    real_replace = os.replace

    def killed(src, dst):
        raise KeyboardInterrupt("killed during the save")

    from speechbrain_mrl.search import folder as folder_module

    real_exchange = folder_module._exchange
    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(folder_module, "_exchange", killed)  # the one-step swap, where there is one
    with pytest.raises(KeyboardInterrupt):
        loaded.save(folder)
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(folder_module, "_exchange", real_exchange)
    again = SpeakerIndex.load(folder)
    assert again.speakers == index.speakers
    # no staging folder left; the lock file stays (an flock ends with its process)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.lock", "index"]
    assert json.loads((folder / "index.json").read_text())["dtype"] == "float16"
    # killed between its two renames: the previous index is found beside the folder
    from speechbrain_mrl.utils.files import STAGING_MARKER, aside_folder

    (folder / STAGING_MARKER).touch()
    os.replace(folder, aside_folder(folder))
    assert SpeakerIndex.load(folder).speakers == index.speakers


def test_bad_input_is_named():
    ids, emb, queries = clustered_speakers(n_spk=5)
    index = SpeakerIndex(32, DIMS)
    with pytest.raises(ValueError, match="empty"):
        index.search(queries, k=1)
    with pytest.raises(ValueError, match=r"must be \[N, 32\]"):
        index.enrol(["a"], np.ones((1, 16)))
    bad = emb[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN/Inf"):
        index.enrol(["a", "b"], bad)
    with pytest.raises(ValueError, match=r"rows \[0\] are all zeros"):
        index.enrol(["a"], np.zeros((1, 32)))
    with pytest.raises(ValueError, match="2 speaker IDs for 1 embeddings"):
        index.enrol(["a", "b"], emb[:1])
    index.enrol(ids, emb)
    with pytest.raises(ValueError, match="already enrolled"):
        index.enrol(["spk0001"], emb[:1])
    with pytest.raises(KeyError, match="not enrolled"):
        index.remove(["nobody"])
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        index.search(queries, k=6)
    with pytest.raises(ValueError, match="stages must be increasing sizes"):
        index.search(queries, k=1, stages=[16, 8])
    with pytest.raises(ValueError, match="stages must be increasing sizes"):
        index.search(queries, k=1, stages=[32])
    with pytest.raises(ValueError, match="first_stage"):
        SpeakerIndex(32, DIMS, first_stage="lsh")
    with pytest.raises(ValueError, match="final_dim must be one of the sizes"):
        index.search(queries, k=1, final_dim=12)
    with pytest.raises(ValueError, match=r"stages must be increasing sizes of \[8\] \(below"):
        index.search(queries, k=1, stages=[16], final_dim=16)
    with pytest.raises(ValueError, match="no open-set threshold for size 32"):
        index.identify(queries, k=1)
    with pytest.raises(ValueError, match="threshold is given for size 12"):
        index.set_thresholds({12: 0.3})
    with pytest.raises(ValueError, match="must be a finite number"):
        index.set_thresholds({8: float("nan")})


def test_open_set_identification_with_thresholds_per_size(tmp_path):
    ids, emb, queries = clustered_speakers(n_spk=30)
    index = SpeakerIndex(32, DIMS, thresholds={16: 0.5, 32: 0.6})
    index.enrol(ids, emb)
    for final_dim, threshold in ((16, 0.5), (32, 0.6)):
        found, scores = index.search(queries, k=3, stages=[8], shortlist=30, final_dim=final_dim)
        got = index.identify(queries, k=3, stages=[8], shortlist=30, final_dim=final_dim)
        want = [[(s, float(c)) for s, c in zip(f, sc) if c >= threshold]
                for f, sc in zip(found, scores)]
        assert got == want and any(len(g) < 3 for g in got) and any(g for g in got)
    assert all(g == [] for g in index.identify(queries, k=1, threshold=1.0))
    with pytest.raises(ValueError, match=r"cosine in \[-1, 1\]"):  # no cosine reaches it
        index.identify(queries, k=1, threshold=1.01)
    loaded = SpeakerIndex.load(index.save(tmp_path / "index"))
    assert loaded.thresholds == {16: 0.5, 32: 0.6}


def test_thresholds_calibrated_on_a_trial_list():
    import torch

    from speechbrain_mrl.utils.metrics import error_rates
    from speechbrain_mrl.search.index import _prefix_cosine, calibrate_thresholds

    ids, emb, _ = clustered_speakers(n_spk=60, n_utt=4)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(ids), 3000), rng.integers(0, len(ids), 3000)
    keep = a != b
    a, b = a[keep], b[keep]
    labels = np.array([ids[i] == ids[j] for i, j in zip(a, b)])
    eer = calibrate_thresholds(emb[a], emb[b], labels, DIMS)
    at_far = calibrate_thresholds(emb[a], emb[b], labels, DIMS, false_alarm=0.01)
    for d in DIMS:
        scores = _prefix_cosine(emb[a], emb[b], d)
        want = error_rates(torch.from_numpy(scores[labels]), torch.from_numpy(scores[~labels]))
        assert eer[d] == pytest.approx(want["EER_threshold"])
        impostor = scores[~labels]
        assert np.mean(impostor > at_far[d]) <= 0.01
        assert np.mean(impostor >= at_far[d]) > 0.01  # the lowest such threshold
    with pytest.raises(ValueError, match="same-speaker and different-speaker"):
        calibrate_thresholds(emb[a], emb[b], np.ones(len(a), bool), DIMS)


def test_cascade_verification_matches_full_size_on_the_calibration_list():
    from speechbrain_mrl.search.index import calibrate_margin, cascade_verify

    ids, emb, _ = clustered_speakers(n_spk=60, n_utt=4, noise=0.8)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(ids), 3000), rng.integers(0, len(ids), 3000)
    full = np.einsum("nd,nd->n", *(x / np.linalg.norm(x, axis=1, keepdims=True) for x in (emb[a], emb[b])))
    thr = float(np.median(full))
    for agreement in (1.0, 0.999, 0.99):
        margin, escalated = calibrate_margin(emb[a], emb[b], 8, thr, thr, agreement)
        decisions, escalated_mask = cascade_verify(emb[a], emb[b], 8, thr, thr, margin)
        assert np.mean(decisions == (full > thr)) >= agreement
        assert escalated == pytest.approx(escalated_mask.mean())
    assert escalated < 1.0  # the small prefix decides some trials on its own
    with pytest.raises(ValueError, match="alike"):
        cascade_verify(emb[:3], emb[:2], 8, thr, thr, 0.1)


def test_enrol_identify_evaluate_commands(tmp_path, capsys, caplog):
    """The commands on generated speech with a real (tiny) model folder and FAISS index."""
    import csv
    import subprocess
    import sys

    from mrl_testutils import THRESHOLDS, write_tiny_model, write_voice_corpus
    from speechbrain_mrl import cli
    from speechbrain_mrl.search.index import SpeakerIndex

    folder, _, _ = write_tiny_model(tmp_path / "model")
    corpus = write_voice_corpus(tmp_path / "speakers", n_spk=4, n_utt=3)
    index_dir = tmp_path / "index"
    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(tmp_path / "speakers"),
                     "--index", str(index_dir)])
    index = SpeakerIndex.load(index_dir)
    assert sorted(index.speakers) == sorted({spk for spk, _ in corpus.values()})
    assert index.counts == [3] * 4
    files = [str(p) for _, p in sorted(corpus.values())[:2]]
    out = cli.main(["identify", "--model_folder", str(folder), "--index", str(index_dir),
                           "--files", *files, "--k", "2", "--stages", "4", "--report",
                           str(tmp_path / "id.json")])
    assert set(out) == set(files) and all(len(v) == 2 for v in out.values())
    saved = json.loads((tmp_path / "id.json").read_text())
    assert saved == json.loads(json.dumps(out))
    above = cli.main(["identify", "--model_folder", str(folder), "--index", str(index_dir),
                             "--files", *files, "--threshold", "1.0"])  # above these cosines
    assert all(v == [] for v in above.values()) and "unknown speaker" in capsys.readouterr().out
    # the index starts with the model's calibrated thresholds; calibrate replaces them
    assert SpeakerIndex.load(index_dir).thresholds == THRESHOLDS
    rels = sorted(corpus)
    with open(tmp_path / "utts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ID", "wav"]] + [[r, str(corpus[r][1])] for r in rels])
    trials = [(int(corpus[x][0] == corpus[y][0]), x, y) for i, x in enumerate(rels)
              for y in rels[i + 1:]]
    (tmp_path / "trials.txt").write_text("".join(f"{label} {x} {y}\n" for label, x, y in trials))
    calibration = cli.main(["calibrate", "--model_folder", str(folder), "--index",
                            str(index_dir), "--csv", str(tmp_path / "utts.csv"),
                            "--trials", str(tmp_path / "trials.txt")])
    thresholds = calibration["thresholds"]
    assert SpeakerIndex.load(index_dir).thresholds == thresholds
    printed = capsys.readouterr().out
    assert all(f"{d}-d: threshold {thresholds[d]:.4f}, EER {calibration['EER'][d]:.2f} %" in printed
               for d in index.mrl_dims)
    # the same list from the audio folder (trial entries: paths relative to it), and a
    # false-alarm rate below one different-speaker trial is warned about
    speakers = tmp_path / "speakers"
    with caplog.at_level("WARNING", logger="speechbrain_mrl"):
        by_folder = cli.main(["calibrate", "--model_folder", str(folder), "--index", str(index_dir),
                              "--folder", str(speakers), "--trials", str(tmp_path / "trials.txt"),
                              "--false_alarm", "1e-6"])
    assert "is below 1/" in caplog.text and by_folder["EER"] == calibration["EER"]
    cli.main(["calibrate", "--model_folder", str(folder), "--index", str(index_dir), "--csv",
              str(tmp_path / "utts.csv"), "--trials", str(tmp_path / "trials.txt")])
    assert set(thresholds) == set(index.mrl_dims) and thresholds != THRESHOLDS
    opened = cli.main(["identify", "--model_folder", str(folder), "--index", str(index_dir),
                              "--files", *files, "--k", "2", "--final_dim", "4", "--stages",
                              "--threshold", "index"])
    assert all(r["score"] >= thresholds[4] for v in opened.values() for r in v)
    # cascade verification: a margin reproducing every full-size decision of its own list
    cascade = cli.main(["cascade", "--model_folder", str(folder), "--csv",
                               str(tmp_path / "utts.csv"), "--trials", str(tmp_path / "trials.txt"),
                               "--calibration_csv", str(tmp_path / "utts.csv"), "--calibration_trials",
                               str(tmp_path / "trials.txt"), "--small_dim", "4", "--agreement", "1.0",
                               "--report", str(tmp_path / "cascade.json")])
    row = cascade["rows"][0]
    assert cascade["trials"] == len(trials) and row["agreement"] == 1.0
    assert row["escalated"] == row["escalated_calibration"]
    assert json.loads((tmp_path / "cascade.json").read_text()) == cascade
    with open(tmp_path / "queries.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "wav", "spk_id"])
        w.writerows([[rel, str(p), spk] for rel, (spk, p) in sorted(corpus.items())])
    report = cli.main(["evaluate", "--model_folder", str(folder), "--index", str(index_dir),
                              "--csv", str(tmp_path / "queries.csv"), "--funnels", "4", "4,8"])
    assert report["queries"] == 12 and set(report["funnels"]) == {"exact full size", "4->full",
                                                                   "4->8->full"}
    # the funnels keep the exact search's answers with a shortlist covering the index
    assert len({json.dumps(r) for r in report["funnels"].values()}) == 1
    # open set: two speakers left out of the index are unknown queries
    small = tmp_path / "index_open"
    keep = sorted({spk for spk, _ in corpus.values()})[:2]
    with open(tmp_path / "enrol_open.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "wav", "spk_id"])
        w.writerows([[rel, str(p), spk] for rel, (spk, p) in sorted(corpus.items()) if spk in keep])
    cli.main(["enrol", "--model_folder", str(folder), "--csv", str(tmp_path / "enrol_open.csv"),
                     "--index", str(small)])
    open_report = cli.main(["evaluate", "--model_folder", str(folder), "--index", str(small),
                                   "--csv", str(tmp_path / "queries.csv"), "--false_alarm", "0.5"])
    assert open_report["not_enrolled"] == 6 and "DIR@FAR=0.5" in open_report["funnels"]["exact full size"]
    # an index of another model is refused; the module runs as a command
    other, _, _ = write_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="built with another model"):
        cli.main(["identify", "--model_folder", str(other), "--index", str(index_dir),
                         "--files", files[0]])
    proc = subprocess.run([sys.executable, "-m", "speechbrain_mrl.cli", "identify", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--stages" in proc.stdout


def test_enrol_and_search_from_audio_in_the_library(tmp_path):
    """SpeakerIndex.enrol_audio/search_audio through MRLEncoderClassifier equal the embedding path."""
    from mrl_testutils import write_tiny_model, write_voice_corpus
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier
    from speechbrain_mrl.search.index import SpeakerIndex

    folder, _, _ = write_tiny_model(tmp_path / "model")
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    corpus = sorted(write_voice_corpus(tmp_path / "speakers", n_spk=3, n_utt=3).values())
    spks, files = [s for s, _ in corpus], [str(p) for _, p in corpus]
    index = SpeakerIndex.for_model(model, folder)
    index.enrol_audio(model, spks, files, batch_size=4)
    assert index.speakers == sorted(set(spks)) and index.counts == [3, 3, 3]
    by_file = np.stack([model.encode_file(f)[0, 0].numpy() for f in files])
    reference = SpeakerIndex(model.embed_dim, model.mrl_dims)
    reference.enrol(spks, by_file)
    np.testing.assert_allclose(index._vectors, reference._vectors, atol=1e-5)
    found, scores = index.search_audio(model, files[:2], k=2, stages=[4], shortlist=3)
    ref_found, ref_scores = reference.search(by_file[:2], k=2, stages=[4], shortlist=3)
    assert found == ref_found and np.allclose(scores, ref_scores, atol=1e-5)
    index.save(tmp_path / "index")
    SpeakerIndex.load(tmp_path / "index", model_sha256=index.model_sha256)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        index.enrol_audio(model, ["x"], [str(tmp_path / "missing.wav")])
    with pytest.raises(ValueError, match="2 speaker IDs for 1 files"):
        index.enrol_audio(model, ["x", "y"], files[:1])
    other = SpeakerIndex(8, [4, 8])
    with pytest.raises(ValueError, match="use the model the index was built with"):
        other.embed_audio(model, files[:1])


def test_enrol_and_identify_with_a_redimnet2_model_folder(tmp_path):
    """enrol / identify through FAISS with a tiny ReDimNet2 model folder: every enrolled
    speaker's own audio finds that speaker first, exactly and through a funnel, as the
    library search over the same model's embeddings does."""
    from mrl_testutils import write_tiny_model, write_voice_corpus
    from speechbrain_mrl import cli
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier
    from speechbrain_mrl.model.folder import model_fingerprint

    folder, lobe, _ = write_tiny_model(tmp_path / "model", family="redimnet2")
    assert type(lobe).__name__ == "ReDimNet2"
    corpus = write_voice_corpus(tmp_path / "speakers", n_spk=4, n_utt=2)
    index_dir = tmp_path / "index"
    cli.main(["enrol", "--model_folder", str(folder), "--folder", str(tmp_path / "speakers"),
              "--index", str(index_dir)])
    index = SpeakerIndex.load(index_dir, model_sha256=model_fingerprint(folder))
    spks = sorted({spk for spk, _ in corpus.values()})
    assert index.speakers == spks and index.counts == [2] * 4
    files = {str(p): spk for spk, p in corpus.values()}
    out = {}
    for stages in ([], ["4"]):
        out[len(stages)] = cli.main(["identify", "--model_folder", str(folder), "--index",
                                     str(index_dir), "--files", *files, "--k", "2", "--stages",
                                     *stages])
        assert {f: m[0]["speaker"] for f, m in out[len(stages)].items()} == files, stages
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    found, scores = index.search_audio(model, list(files), k=2)
    assert [f[0] for f in found] == list(files.values())
    np.testing.assert_allclose(scores[:, 0], [out[0][f][0]["score"] for f in files], atol=1e-5)


def test_open_set_rates_against_a_count():
    from speechbrain_mrl.search.index import open_set_rates

    rng = np.random.default_rng(3)
    scores = rng.uniform(size=400)
    enrolled = np.arange(400) < 300
    truth = ["s"] * 400
    top = ["s" if i % 4 else "t" for i in range(400)]  # a quarter of the top matches are wrong
    r = open_set_rates(top, scores, truth, enrolled, far=0.05)
    assert r["far"] <= 0.05 and np.sum(scores[~enrolled] >= r["threshold"]) == 5
    want = np.sum(enrolled & (scores >= r["threshold"]) & (np.array(top) == "s")) / 300
    assert r["dir"] == pytest.approx(want)
    with pytest.raises(ValueError, match="enrolled and of unknown"):
        open_set_rates(top, scores, truth, np.ones(400, bool))


def test_commands_on_real_demo_speech(shared_data, tmp_path):
    """enrol / identify / evaluate on Speech Commands speakers: the reports equal a numpy
    search over the same model's embeddings, and unknown speakers count as open-set queries."""
    import csv

    from mrl_testutils import write_tiny_model
    from speechbrain_mrl import cli
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier

    folder, _, _ = write_tiny_model(tmp_path / "model")
    speakers = [d for d in sorted((shared_data / "speech_commands").iterdir())
                if d.is_dir() and len(list(d.glob("*.flac"))) >= 4][:8]
    enrolled = [d.name for d in speakers[:6]]
    rows = {"enrol": [], "queries": []}
    for d in speakers:
        clips = sorted(d.glob("*.flac"))[:4]
        if d.name in enrolled:
            rows["enrol"] += [[f"{d.name}/{c.stem}", str(c), d.name] for c in clips[:2]]
        rows["queries"] += [[f"{d.name}/{c.stem}", str(c), d.name] for c in clips[2:]]
    for name, items in rows.items():
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["ID", "wav", "spk_id"]] + items)
    index_dir = tmp_path / "index"
    index = cli.main(["enrol", "--model_folder", str(folder), "--csv",
                             str(tmp_path / "enrol.csv"), "--index", str(index_dir)])
    assert sorted(index.speakers) == enrolled and index.counts == [2] * 6
    report = cli.main(["evaluate", "--model_folder", str(folder), "--index", str(index_dir),
                              "--csv", str(tmp_path / "queries.csv"), "--funnels", "4", "--false_alarm", "0.5"])
    assert report["queries"] == 12 and report["not_enrolled"] == 4
    # the same search by hand: mean of normalised enrolment embeddings, full-size cosine
    model = MRLEncoderClassifier.from_hparams(source=str(folder))

    def embed(items):
        return np.stack([model.encode_file(path).reshape(-1).numpy() for _, path, _ in items])

    unit = embed(rows["enrol"])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    means = np.stack([unit[[i for i, r in enumerate(rows["enrol"]) if r[2] == s]].mean(0)
                      for s in enrolled])
    queries = [r for r in rows["queries"] if r[2] in enrolled]
    q = embed(queries)
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        means / np.linalg.norm(means, axis=1, keepdims=True)).T
    top1 = np.mean([enrolled[i] == r[2] for i, r in zip(scores.argmax(1), queries)])
    assert report["funnels"]["exact full size"]["top1"] == pytest.approx(top1)
    assert report["funnels"]["4->full"] == report["funnels"]["exact full size"]  # shortlist >= 6
    out = cli.main(["identify", "--model_folder", str(folder), "--index", str(index_dir),
                           "--csv", str(tmp_path / "queries.csv"), "--k", "3"])
    assert len(out) == 16 and all(len(m) == 3 for m in out.values())


@pytest.mark.parametrize("call", ["calibrate", "margin", "open_set"])
@pytest.mark.parametrize("rate", [-0.1, 0.0, 1.5, float("nan"), "x"])
def test_rates_out_of_range_are_refused(call, rate):
    """Regression: false_alarm=-0.1 or 1.5 saved nonsense thresholds; agreement=1.5 raised IndexError."""
    from speechbrain_mrl.search.index import calibrate_margin, calibrate_thresholds, open_set_rates

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
    labels = np.arange(20) < 10
    with pytest.raises(ValueError, match=r"must be (in|a number in) \(0, 1"):
        if call == "calibrate":
            calibrate_thresholds(a, b, labels, [4, 8], false_alarm=rate)
        elif call == "margin":
            calibrate_margin(a, b, 4, 0.0, 0.0, agreement=rate)
        else:
            open_set_rates(["a", "b"], [0.5, 0.4], ["a", "c"], [True, False], far=rate)
