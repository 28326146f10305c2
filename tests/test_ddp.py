"""Multi-process training of the MRL recipe: torchrun, 2 CPU processes, gloo backend."""
import json
import os
import subprocess
import sys

import torch

from recipe_data import RECIPE, TINY_REDIMNET, make_speech_commands, mrl_overrides


def test_ddp_two_processes_gloo(tmp_path):
    import yaml

    from speechbrain_mrl.model.encoder import MRLEncoder
    from speechbrain_mrl.model.official import save_official_checkpoint

    data = make_speech_commands(tmp_path / "data")
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.pt"
    save_official_checkpoint(MRLEncoder.from_config(yaml.safe_load(TINY_REDIMNET)), backbone)
    out = tmp_path / "out"
    argv = mrl_overrides(data, out, 8, backbone, extra=["--distributed_backend", "gloo"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(RECIPE / "train.py")] + argv
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(RECIPE), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "mrl" / "train_log.txt").read_text()
    assert "epoch: 0" in log and "epoch: 1" in log
    res = json.loads((out / "mrl" / "results.json").read_text())
    assert set(res["test"]) == {"4", "8", "16"}
    assert (out / "mrl" / "model" / "calibration.json").is_file()
    # each process trained on half of the batches: 44 rows / 8 per batch / 2 processes
    assert "Going into epoch 1" in proc.stdout + proc.stderr
