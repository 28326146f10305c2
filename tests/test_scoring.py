"""Tests of speechbrain_mrl.utils.metrics / .embeddings and recipes/VoxCeleb/MRL/speaker_verification_cosine.py."""
import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from mrl_testutils import MRL_DIMS, TINY_CONFIG, write_tiny_model, write_voice_corpus
from speechbrain_mrl.utils import metrics
from speechbrain_mrl.data.audio import AudioError
from speechbrain_mrl.data.manifests import read_trials, resolve_trials
from speechbrain_mrl.inference.embeddings import embed_manifest

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "VoxCeleb" / "MRL"


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "speaker_verification_cosine", RECIPE / "speaker_verification_cosine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


svc = _load_script()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_rates_match_toolkit(seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(150, generator=g) + 1.5
    neg = torch.randn(400, generator=g)
    if seed == 2:  # ties and repeated values
        pos = torch.round(pos * 4) / 4
        neg = torch.round(neg * 4) / 4
    r = metrics.error_rates(pos, neg)
    eer, eer_thr = EER(pos, neg)
    assert r["EER"] == pytest.approx(eer, abs=1e-6)
    for p in (0.01, 0.05):
        dcf, _ = minDCF(pos, neg, p_target=p)
        assert r[f"minDCF@{p:g}"] == pytest.approx(dcf, abs=1e-6)
    # both backends of verification_metrics agree
    scores = torch.cat([pos, neg])
    labels = torch.cat([torch.ones(150), torch.zeros(400)]).long()
    a = metrics.verification_metrics(scores, labels, toolkit_max_trials=10 ** 6)
    b = metrics.verification_metrics(scores, labels, toolkit_max_trials=0)
    assert a["metric_backend"] != b["metric_backend"]
    for k in ("EER", "minDCF@0.01", "minDCF@0.05"):
        assert a[k] == pytest.approx(b[k], abs=1e-4)
    for p in (0.01, 0.05):  # reported normalised, as NIST and wespeaker do
        dcf, _ = minDCF(pos, neg, p_target=p)
        assert a[f"minDCF@{p:g}_unnormalized"] == pytest.approx(dcf, abs=1e-6)
        assert a[f"minDCF@{p:g}"] == pytest.approx(dcf / p, abs=1e-4)


def test_trial_ids_and_errors(tmp_path):
    ids = {"id10001/a/00001", "id10002--b--00002"}
    trials = tmp_path / "t.txt"
    trials.write_text("1 id10001/a/00001.wav id10001/a/00001.wav\n\n0 id10001/a/00001.wav id10002/b/00002.wav\n")
    labels, e, t, names = resolve_trials(read_trials(trials), ids)
    assert labels.tolist() == [1, 0]
    assert t[1] == "id10002--b--00002" and e[0] == "id10001/a/00001"
    assert names["id10002--b--00002"] == "id10002/b/00002.wav"
    trials.write_text("1 id10001/a/00001.wav id10009/z/1.wav\n0 id10001/a/00001.wav id10002/b/00002.wav\n")
    with pytest.raises(ValueError, match="id10009/z/1.wav"):
        resolve_trials(read_trials(trials), ids)
    trials.write_text("yes id10001/a/00001.wav\n")
    with pytest.raises(ValueError, match="expected"):
        read_trials(trials)


@pytest.mark.parametrize("toolkit_max_trials", [10 ** 6, 0])
def test_verification_metrics_rejects_bad_lists(toolkit_max_trials):
    scores = torch.tensor([0.9, 0.2, 0.7, 0.1])
    for labels in ([1, 1, 1, 1], [0, 0, 0, 0]):
        with pytest.raises(ValueError, match="target and non-target"):
            metrics.verification_metrics(scores, labels, toolkit_max_trials)
    bad = scores.clone()
    bad[1], bad[3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="2 of 4 scores are NaN or Inf"):
        metrics.verification_metrics(bad, [1, 0, 1, 0], toolkit_max_trials)
    ok = metrics.verification_metrics(scores, [1, 0, 1, 0], toolkit_max_trials)
    assert ok["EER"] == 0.0 and ok["n_target"] == 2


def test_prefix_metrics_by_hand():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(12, 8, generator=g)
    spk = torch.arange(12) // 3
    pairs = [(a, b) for a in range(12) for b in range(a + 1, 12)]
    labels = [int(spk[a] == spk[b]) for a, b in pairs]
    ia, ib = [a for a, _ in pairs], [b for _, b in pairs]
    got = metrics.prefix_metrics(emb, labels, ia, ib, [2, 8])
    assert sorted(got) == [2, 8]
    lab = torch.tensor(labels)
    for d in (2, 8):
        x = emb[:, :d] / emb[:, :d].norm(dim=1, keepdim=True)
        s = (x[ia] * x[ib]).sum(1)
        eer, thr = EER(s[lab == 1], s[lab == 0])
        dcf, _ = minDCF(s[lab == 1], s[lab == 0], p_target=0.01)
        assert got[d]["EER"] == pytest.approx(100 * eer, abs=1e-9)
        assert got[d]["threshold"] == pytest.approx(thr, abs=1e-6)
        assert got[d]["minDCF"] == pytest.approx(dcf / 0.01, abs=1e-7)  # normalised
    # the output of resolve_trials plus an ID -> row index
    ids = [f"s{int(spk[i])}/u{i}" for i in range(12)]
    index = {u: i for i, u in enumerate(ids)}
    trials = [(lab_, f"{ids[a]}.wav", f"{ids[b]}.wav") for lab_, a, b in zip(labels, ia, ib)]
    lab2, e_ids, t_ids, _ = resolve_trials(trials, index)
    again = metrics.prefix_metrics(emb, lab2, [index[i] for i in e_ids], [index[i] for i in t_ids],
                                   [2, 8])
    assert again == got
    with pytest.raises(ValueError, match="prefix size 9"):
        metrics.prefix_metrics(emb, labels, ia, ib, [9])


def test_embed_manifest_names_silent_utterance(tmp_path):
    import soundfile as sf

    from speechbrain_mrl.model.encoder import MRLEncoder
    from mrl_testutils import speaker_voice

    enc = MRLEncoder.from_config(TINY_CONFIG)
    rows = {}
    for i, wav in enumerate([speaker_voice(0, 0, 0.5), torch.zeros(8000), speaker_voice(1, 0, 0.4)]):
        path = tmp_path / f"{i}.wav"
        sf.write(str(path), wav.numpy(), 16000, subtype="FLOAT")
        rows[f"spk{i}--utt{i}"] = {"wav": str(path), "start": 0, "stop": len(wav),
                                   "duration": len(wav) / 16000}
    with pytest.raises(AudioError, match=r"utterance spk1--utt1 \(.*1\.wav\): all zeros"):
        embed_manifest(enc, rows, batch_size=3)
    del rows["spk1--utt1"]
    ids, emb = embed_manifest(enc, rows, batch_size=3)
    assert ids == ["spk0--utt0", "spk2--utt2"] and emb.shape == (2, TINY_CONFIG["embed_dim"])
    assert enc.training  # run in eval(), previous mode restored
    # a batch embeds as the single utterances do (padding-aware), in eval()
    with torch.no_grad():
        enc.eval()
        single = enc(speaker_voice(1, 0, 0.4)[None])
    torch.testing.assert_close(emb[1:], single, atol=1e-4, rtol=1e-4)
    with pytest.raises(AudioError, match="utterance spk2--utt2 .*too short"):
        embed_manifest(enc, rows, batch_size=3, min_duration=0.45)


def _separable(n_spk=4, n_utt=5, dim=16, seed=0, orthogonal=True):
    """Embeddings whose speaker identity lives in the first 4 coordinates."""
    g = torch.Generator().manual_seed(seed)
    if orthogonal:
        centres = torch.eye(4)[:n_spk] * 5
    else:
        centres = torch.nn.functional.normalize(torch.randn(n_spk, 4, generator=g), dim=1) * 5
    ids, rows = [], []
    for s in range(n_spk):
        for u in range(n_utt):
            e = torch.randn(dim, generator=g) * 0.3
            e[:4] += centres[s]
            ids.append(f"s{s}/u{u}")
            rows.append(e)
    return ids, torch.stack(rows)


def test_score_trials_chunked_and_separable(tmp_path):
    ids, emb = _separable()
    index = {u: i for i, u in enumerate(ids)}
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    labels = np.array([int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs], dtype=np.int8)
    e_ids, t_ids = [a for a, _ in pairs], [b for _, b in pairs]
    _, cohort = _separable(n_spk=30, seed=5, orthogonal=False)
    groups = torch.arange(cohort.shape[0]) // 5
    dims = [4, 8, 16]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = metrics.score_trials(emb, index, labels, e_ids, t_ids, dims, cohort=cohort,
                            cohort_groups=groups, topk=3, chunk_size=10 ** 6,
                            score_dir=tmp_path / "a", progress=False)
    chunked = metrics.score_trials(emb, index, labels, e_ids, t_ids, dims, cohort=cohort,
                               cohort_groups=groups, topk=3, chunk_size=37,
                               score_dir=tmp_path / "b", progress=False)
    for d in dims:
        assert set(full[d]) == {"cosine", "s-norm", "as-norm"}
        for k in full[d]:
            np.testing.assert_array_equal(full[d][k], chunked[d][k])
        # cosine is the plain cosine of the prefixes
        a = torch.nn.functional.normalize(emb[:, :d], dim=1)
        ref = (a[[index[i] for i in e_ids]] * a[[index[i] for i in t_ids]]).sum(1)
        np.testing.assert_allclose(full[d]["cosine"], ref.numpy(), atol=1e-6)
        for k in full[d]:
            m = metrics.verification_metrics(full[d][k], labels)
            assert m["EER"] == 0.0 and m["minDCF@0.01"] == 0.0, (d, k, m)
        lines = (tmp_path / "a" / f"scores_{d}_as-norm.txt").read_text().splitlines()
        assert lines == (tmp_path / "b" / f"scores_{d}_as-norm.txt").read_text().splitlines()
        assert len(lines) == len(labels)
        enrol, test, lab, score = lines[3].split()
        assert (enrol, test, int(lab)) == (e_ids[3], t_ids[3], int(labels[3]))
        assert float(score) == pytest.approx(float(full[d]["as-norm"][3]), abs=1e-5)
    # s-norm by hand for one trial at size 8
    d, j = 8, 11
    c = metrics.cohort_matrix(cohort, d, groups)
    a = torch.nn.functional.normalize(emb[:, :d], dim=1)
    se, st = a[index[e_ids[j]]] @ c.T, a[index[t_ids[j]]] @ c.T
    s = float(full[d]["cosine"][j])
    ref = 0.5 * ((s - se.mean()) / se.std() + (s - st.mean()) / st.std())
    assert float(full[d]["s-norm"][j]) == pytest.approx(float(ref), abs=1e-5)


def _write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "start", "stop", "spk_id"])
        w.writerows(rows)


@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    folder, lobe, head = write_tiny_model(root / "model")
    test = write_voice_corpus(root / "vox1", n_spk=3, n_utt=3, prefix="id1")
    train = write_voice_corpus(root / "vox2", n_spk=4, n_utt=2, prefix="id2")
    rows = []
    for rel, (spk, path) in sorted(test.items()):
        import soundfile as sf

        n = sf.info(str(path)).frames
        rows.append([rel.rsplit(".", 1)[0], f"{n / 16000:.3f}", str(path), 0, n, spk])
    _write_manifest(root / "enrol.csv", rows)
    _write_manifest(root / "test.csv", rows)
    trows = []
    for rel, (spk, path) in sorted(train.items()):
        import soundfile as sf

        n = sf.info(str(path)).frames
        # segment rows (start/stop) with C's "--" IDs
        trows.append([rel.rsplit(".", 1)[0].replace("/", "--"), f"{n / 16000:.3f}", str(path),
                      0, n // 2 + 4000, spk])
    # a 0.2-s segment, shorter than the model's minimum: left out of the cohort, not fatal
    trows.append([trows[0][0] + "_tail", "0.200", trows[0][2], 0, 3200, trows[0][5]])
    _write_manifest(root / "train.csv", trows)
    rels = sorted(test)
    lines = []
    for i, a in enumerate(rels):
        for b in rels[i + 1:]:
            lines.append(f"{int(test[a][0] == test[b][0])} {a} {b}")
    (root / "trials.txt").write_text("\n".join(lines) + "\n")
    return root, folder, len(lines)


def _argv(root, out, *extra):
    return [str(RECIPE / "hparams" / "verification.yaml"),
            f"--enrol_csv={root / 'enrol.csv'}", f"--test_csv={root / 'test.csv'}",
            f"--trials={root / 'trials.txt'}", f"--output_folder={out}", "--device=cpu",
            "--batch_size=4", *extra]


def test_end_to_end_mrl_model(scoring_setup):
    root, folder, n_trials = scoring_setup
    out = root / "out_mrl"
    results = svc.main(_argv(root, out, f"--model_folder={folder}",
                             f"--train_csv={root / 'train.csv'}", "--cohort_topk=2",
                             "--trial_chunk_size=5", "--save_embeddings=True"))
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert sorted(saved, key=int) == [str(d) for d in MRL_DIMS]
    for d in MRL_DIMS:
        r = saved[str(d)]
        assert 0.0 <= r["EER"] <= 100.0 and r["n_trials"] == n_trials
        assert {"s-norm", "as-norm"} <= set(r)
        for name in (f"scores_{d}.txt", f"scores_{d}_s-norm.txt", f"scores_{d}_as-norm.txt"):
            assert len((out / name).read_text().splitlines()) == n_trials
    md = (out / "results.md").read_text()
    assert "| 16 |" in md and "as-norm" in md
    info = json.loads((out / "scoring_info.json").read_text())
    assert info["n_utterances"] == 9 and info["cohort_speakers"] == 4
    assert info["cohort_utterances"] == 8 and info["cohort_too_short"] == 1
    saved_emb = torch.load(out / "embeddings.pt", weights_only=True)
    assert saved_emb["embeddings"].shape == (9, MRL_DIMS[-1]) and len(saved_emb["ids"]) == 9
    # the plain cosine equals the interface's verification scores
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier

    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    first = (out / "scores_8.txt").read_text().splitlines()[0].split()
    trial = (root / "trials.txt").read_text().splitlines()[0].split()
    assert first[:3] == [trial[1], trial[2], trial[0]]  # trial-list paths, label
    enrol, test, _, score = first
    rows = {r["ID"]: r for r in csv.DictReader(open(root / "enrol.csv"))}
    s, _ = model.verify_files(rows[enrol.rsplit(".", 1)[0]]["wav"],
                              rows[test.rsplit(".", 1)[0]]["wav"], target_dim=8)
    assert float(s) == pytest.approx(float(score), abs=1e-4)


def test_end_to_end_official_and_errors(scoring_setup, tmp_path):
    root, folder, n_trials = scoring_setup
    from speechbrain_mrl.model.official import MRLEncoder, official_state_dict

    enc = MRLEncoder.from_config(TINY_CONFIG)
    ckpt = tmp_path / "tiny_official.pt"
    torch.save({"model_config": enc.model_config, "state_dict": official_state_dict(enc)}, ckpt)
    out = tmp_path / "out_official"
    results = svc.main(_argv(root, out, f"--official_checkpoint={ckpt}"))
    assert list(results) == [str(TINY_CONFIG["embed_dim"])]
    assert "s-norm" not in results[str(TINY_CONFIG["embed_dim"])]  # no cohort given
    assert len((out / f"scores_{TINY_CONFIG['embed_dim']}.txt").read_text().splitlines()) == n_trials
    with pytest.raises(ValueError, match="exactly one"):
        svc.main(_argv(root, tmp_path / "x", f"--official_checkpoint={ckpt}",
                       f"--model_folder={folder}"))


def test_nan_model_stops_scoring_naming_utterances(scoring_setup, tmp_path):
    """Regression: a model with NaN weights gave 'EER 0.000%' at every size and exit 0."""
    root, folder, _ = scoring_setup
    import shutil

    bad = tmp_path / "nan_model"
    shutil.copytree(folder, bad)
    head = torch.load(bad / "mrl_head.ckpt", weights_only=True)
    head["linear.weight"][:] = float("nan")
    torch.save(head, bad / "mrl_head.ckpt")
    out = tmp_path / "out_nan"
    with pytest.raises(ValueError, match=r"nan_model: NaN/Inf values in its weights \(mrl_head"):
        svc.main(_argv(root, out, f"--model_folder={bad}"))
    assert not (out / "results.json").exists()


def test_scoring_records_the_model_fingerprint(scoring_setup, tmp_path):
    from speechbrain_mrl.model.folder import model_fingerprint

    root, folder, _ = scoring_setup
    out = tmp_path / "out_fp"
    svc.main(_argv(root, out, f"--model_folder={folder}", "--dims=[4]"))
    info = json.loads((out / "scoring_info.json").read_text())
    assert info["model_sha256"] == model_fingerprint(folder) and len(info["model_sha256"]) == 64


@pytest.mark.parametrize("which", ["enrol", "cohort"])
def test_missing_files_are_reported_before_any_embedding(scoring_setup, tmp_path, which, monkeypatch):
    """Regression: a missing enrol wav failed at the last batch, a missing cohort file after
    every embedding had been computed."""
    root, folder, _ = scoring_setup
    names = ["enrol.csv", "test.csv"] if which == "enrol" else ["train.csv"]
    for name in names:  # enrol and test share their rows; the cohort's last row is too short
        rows = list(csv.reader(open(root / name)))
        rows[-2][2] = str(tmp_path / "gone.wav")
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    import speechbrain_mrl.inference.embeddings as embeddings
    import speechbrain_mrl.inference.scoring as scoring

    calls = []
    monkeypatch.setattr(scoring, "embed_manifest",
                        lambda *a, **k: calls.append(1) or embeddings.embed_manifest(*a, **k))
    argv = _argv(root, tmp_path / "out", f"--model_folder={folder}")
    for name in names:
        argv = [a.replace(str(root / name), str(tmp_path / name)) for a in argv]
    if which == "cohort":
        argv.append(f"--train_csv={tmp_path / 'train.csv'}")
    with pytest.raises(FileNotFoundError, match=r"1 of \d+ audio files do not exist, e\.g\. .*gone\.wav"):
        svc.main(argv)
    assert calls == []


def test_repeated_and_contradictory_trials(caplog):
    from speechbrain_mrl.data.manifests import resolve_trials

    ids = {"a/1", "a/2", "b/1"}
    trials = [(1, "a/1.wav", "a/2.wav"), (1, "a/2.wav", "a/1.wav"), (0, "a/1.wav", "b/1.wav")]
    with caplog.at_level("WARNING"):
        labels, _, _, _ = resolve_trials(trials, ids, "t.txt")
    assert len(labels) == 3 and "1 of 3 trials repeat another trial" in caplog.text
    with pytest.raises(ValueError, match="listed as both target and non-target"):
        resolve_trials(trials + [(0, "a/2.wav", "a/1.wav")], ids, "t.txt")
