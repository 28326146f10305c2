"""Tests of speechbrain_mrl.extract: shards, skipped files, resume after a kill, torchrun."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mrl_testutils import write_tiny_model, write_voice_corpus
from speechbrain_mrl import extract as ex
from speechbrain_mrl.inference import MRLEncoderClassifier
from speechbrain_mrl.search import SpeakerIndex


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    folder, _, _ = write_tiny_model(root / "model")
    audio = root / "audio"
    write_voice_corpus(audio, n_spk=3, n_utt=3)
    (audio / "id90000").mkdir()
    (audio / "id90000" / "junk.wav").write_bytes(b"RIFF not audio" * 8)
    sf.write(str(audio / "id90000" / "silent.wav"), np.zeros(8000, dtype="float32"), 16000)
    info = ex.main(["--model_folder", str(folder), "--folder", str(audio), "--output_folder",
                    str(root / "out"), "--shard_size", "4", "--batch_size", "3",
                    "--num_workers", "0"])
    return root, folder, audio, info


def _index(out):
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_extraction_shards_skips_bad_files_and_loads_into_search(corpus):
    root, folder, audio, info = corpus
    out = root / "out"
    assert info["n_embedded"] == 9 and info["n_skipped"] == 2 and info["n_shards"] == 3
    with open(out / "skipped.csv", newline="") as f:
        reasons = {r["ID"]: r["reason"] for r in csv.DictReader(f)}
    assert reasons["id90000/silent.wav"] == "all zeros (silence)"
    assert reasons["id90000/junk.wav"].startswith("unreadable")
    ids, emb, rows = ex.load_embeddings(out)
    assert len(ids) == len(set(ids)) == 9 and emb.shape == (9, info["embed_dim"])
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    for uid, e in zip(ids, emb):
        ref = model.encode_file(rows[uid]["wav"])[0, 0].numpy()
        np.testing.assert_allclose(e, ref, atol=1e-4)
    ids8, emb8, _ = ex.load_embeddings(out, target_dim=8)
    assert ids8 == ids and np.array_equal(emb8, emb[:, :8])
    index = SpeakerIndex(info["embed_dim"], info["mrl_dims"], info["model_sha256"])
    index.enrol([rows[u]["spk_id"] for u in ids], emb)
    assert len(index) == 3 and index.counts == [3, 3, 3]


def test_a_killed_extraction_resumes_without_duplicates(corpus, monkeypatch):
    root, folder, audio, _ = corpus
    out = root / "killed"
    args = ["--model_folder", str(folder), "--folder", str(audio), "--output_folder", str(out),
            "--shard_size", "3", "--num_workers", "0", "--dtype", "float16"]
    real = ex._embed_shard
    calls = []

    def dies_on_the_third_shard(*a, **kw):
        calls.append(a[4])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(ex, "_embed_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        ex.main(args)
    assert not (out / "index.csv").exists()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    assert len(done) == 2
    monkeypatch.setattr(ex, "_embed_shard", real)
    info = ex.main(args)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")
            if p.name in done} == done  # finished shards were not redone
    ids, emb, _ = ex.load_embeddings(out)
    assert sorted(ids) == sorted(r["ID"] for r in _index(root / "out")) and len(ids) == 9
    assert info["dtype"] == "float16" and np.load(out / "shard_00000.npy").dtype == np.float16
    ref_ids, ref, _ = ex.load_embeddings(root / "out")
    order = {u: i for i, u in enumerate(ref_ids)}
    np.testing.assert_allclose(emb, ref[[order[u] for u in ids]], atol=2e-3)
    other, _, _ = write_tiny_model(root / "other", seed=1)
    with pytest.raises(ValueError, match="another model"):
        ex.main(["--model_folder", str(other), "--folder", str(audio), "--output_folder", str(out)])
    with pytest.raises(SystemExit):  # argparse: one audio source
        ex.main(["--model_folder", str(folder), "--csv", "a.csv", "--folder", "b",
                 "--output_folder", str(out)])


def test_torchrun_two_processes_share_the_shards(corpus):
    root, folder, audio, _ = corpus
    out = root / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "speechbrain_mrl.extract", "--model_folder", str(folder), "--folder", str(audio),
         "--output_folder", str(out), "--shard_size", "2", "--num_workers", "0"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "info.json").read_text())
    assert info["n_embedded"] == 9 and info["n_shards"] == 6
    ids, emb, _ = ex.load_embeddings(out)
    ref_ids, ref, _ = ex.load_embeddings(root / "out")
    order = {u: i for i, u in enumerate(ref_ids)}
    assert sorted(ids) == sorted(ref_ids)
    np.testing.assert_allclose(emb, ref[[order[u] for u in ids]], atol=1e-4)
