"""Tests of speechbrain_mrl.inference.extract: shards, skipped files, resume after a kill, torchrun."""
import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mrl_testutils import write_tiny_model, write_voice_corpus
from speechbrain_mrl.inference import extract as ex
from speechbrain_mrl.inference.interface import MRLEncoderClassifier
from speechbrain_mrl.search.index import SpeakerIndex
from speechbrain_mrl import cli


def _extract(argv):
    """``speechbrain-mrl extract ARGV``; returns the job's result."""
    return cli.main(["extract", *argv])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    folder, _, _ = write_tiny_model(root / "model")
    audio = root / "audio"
    write_voice_corpus(audio, n_spk=3, n_utt=3)
    (audio / "id90000").mkdir()
    (audio / "id90000" / "junk.wav").write_bytes(b"RIFF not audio" * 8)
    sf.write(str(audio / "id90000" / "silent.wav"), np.zeros(8000, dtype="float32"), 16000)
    info = _extract(["--model_folder", str(folder), "--folder", str(audio), "--output_folder",
                    str(root / "out"), "--shard_size", "4", "--batch_size", "3",
                    "--num_workers", "0"])
    return root, folder, audio, info


def test_extraction_on_a_redimnet2_model_folder(tmp_path):
    """The extract command on a tiny ReDimNet2 folder (time stride 4): shards, a clip too short
    for its lobe (300 samples: enough for the front end, 2 of the 4 frames it needs) skipped
    and listed, embeddings equal to the model's, loadable into a speaker index."""
    folder, lobe, _ = write_tiny_model(tmp_path / "model", family="redimnet2")
    assert type(lobe).__name__ == "ReDimNet2" and lobe.time_stride == 4
    audio = tmp_path / "audio"
    write_voice_corpus(audio, n_spk=3, n_utt=2)
    (audio / "id90000").mkdir()
    sf.write(str(audio / "id90000" / "short.wav"), 0.1 * np.sin(np.arange(300) / 3.0), 16000)
    out = tmp_path / "out"
    info = _extract(["--model_folder", str(folder), "--folder", str(audio), "--output_folder",
                     str(out), "--shard_size", "4", "--batch_size", "3", "--num_workers", "0"])
    assert info["n_embedded"] == 6 and info["n_skipped"] == 1 and info["n_shards"] == 2
    with open(out / "skipped.csv", newline="") as f:
        reasons = {r["ID"]: r["reason"] for r in csv.DictReader(f)}
    assert reasons == {"id90000/short.wav": "too short (0.019 s < minimum 0.030 s)"}
    ids, emb, rows = ex.load_embeddings(out)
    assert len(ids) == len(set(ids)) == 6 and emb.shape == (6, info["embed_dim"])
    model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert type(model.encoder.embedding_model).__name__ == "ReDimNet2"
    for uid, e in zip(ids, emb):
        np.testing.assert_allclose(e, model.encode_file(rows[uid]["wav"])[0, 0].numpy(), atol=1e-4)
    index = SpeakerIndex(info["embed_dim"], info["mrl_dims"], info["model_sha256"])
    index.enrol([rows[u]["spk_id"] for u in ids], emb)
    assert len(index) == 3 and index.counts == [2, 2, 2]


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
        _extract(args)
    assert not (out / "index.csv").exists()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    assert len(done) == 2
    monkeypatch.setattr(ex, "_embed_shard", real)
    info = _extract(args)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")
            if p.name in done} == done  # finished shards were not redone
    ids, emb, _ = ex.load_embeddings(out)
    assert sorted(ids) == sorted(r["ID"] for r in _index(root / "out")) and len(ids) == 9
    assert info["dtype"] == "float16" and np.load(out / "shard_00000.npy").dtype == np.float16
    ref_ids, ref, _ = ex.load_embeddings(root / "out")
    order = {u: i for i, u in enumerate(ref_ids)}
    np.testing.assert_allclose(emb, ref[[order[u] for u in ids]], atol=2e-3)
    other, _, _ = write_tiny_model(root / "other", seed=1)
    from speechbrain_mrl.inference import interface

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model's hyperparams ran before the folder was refused")

    monkeypatch.setattr(interface.MRLEncoderClassifier, "from_hparams", must_not_load)
    with pytest.raises(ValueError, match="another model"):  # checked before the model loads
        _extract(["--model_folder", str(other), "--folder", str(audio), "--output_folder", str(out)])
    monkeypatch.undo()
    with pytest.raises(SystemExit):  # argparse: one audio source
        _extract(["--model_folder", str(folder), "--csv", "a.csv", "--folder", "b",
                 "--output_folder", str(out)])


def test_torchrun_two_processes_share_the_shards(corpus):
    root, folder, audio, _ = corpus
    out = root / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "speechbrain_mrl.cli", "extract", "--model_folder", str(folder), "--folder", str(audio),
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


def test_a_resume_with_another_dtype_or_precision_is_refused(corpus):
    """Regression: a resume with another --dtype mixed float16 and float32 shards while info.json
    named one dtype (and --precision was not recorded at all)."""
    root, folder, audio, info = corpus
    out = root / "out"
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["dtype"], plan["precision"]) == ("float32", "fp32") == (info["dtype"],
                                                                         info["precision"])
    args = ["--model_folder", str(folder), "--folder", str(audio), "--output_folder", str(out)]
    before = (out / "info.json").read_text()
    with pytest.raises(ValueError, match=r"started with --dtype float32, not float16; resume with "
                                         r"--dtype float32 or use a new --output_folder"):
        _extract(args + ["--dtype", "float16"])
    with pytest.raises(ValueError, match=r"started with --precision fp32, not bf16"):
        _extract(args + ["--precision", "bf16"])
    assert (out / "info.json").read_text() == before


@pytest.mark.parametrize("target_dim", [0, -1, 17, 8.0, 8.5, "8", True])
def test_load_embeddings_refuses_a_target_dim_outside_the_sizes(corpus, target_dim):
    """Regression: target_dim=0 gave the full size, and 8.5 the size 8."""
    out = corpus[0] / "out"
    with pytest.raises(ValueError, match=r"target_dim must be an integer in \[1, 16\], got "):
        ex.load_embeddings(out, target_dim=target_dim)
    assert ex.load_embeddings(out, target_dim=np.int64(8))[1].shape == (9, 8)


def test_shards_are_written_exclusively_with_the_umask(corpus, tmp_path):
    """Regression: a shard went through the fixed temporary name ``.<shard>.npy.tmp``, so a
    symlink planted there got its target overwritten."""
    root, folder, audio, _ = corpus
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("not to be overwritten")
    (out / ".shard_00000.npy.tmp").symlink_to(victim)
    umask = os.umask(0o027)
    try:
        info = _extract(["--model_folder", str(folder), "--folder", str(audio), "--output_folder",
                        str(out), "--num_workers", "0"])
    finally:
        os.umask(umask)
    assert info["n_embedded"] == 9 and victim.read_text() == "not to be overwritten"
    shard = out / "shard_00000.npy"
    assert not shard.is_symlink() and stat.S_IMODE(shard.stat().st_mode) == 0o640
    assert np.load(shard).shape == (9, info["embed_dim"])
    assert [p.name for p in out.glob(".*")] == [".shard_00000.npy.tmp"]  # left alone
