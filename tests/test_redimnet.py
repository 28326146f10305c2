"""Tests of the ReDimNet lobe, the encoder and the official-checkpoint loader."""
import json
import pathlib

import pytest
import torch

import redimnet_fill as rf
from speechbrain_mrl import REDIMNET_PRESETS, MRLEncoder, ReDimNet, load_official_redimnet
from speechbrain_mrl.model.official import (
    official_state_dict,
    read_official_checkpoint,
    resolve_official_checkpoint,
)
from speechbrain_mrl.model.redimnet import redimnet_config

LAYOUTS = rf.load_layouts()
TINY = dict(F=24, C=4, stages_setup=[(1, 1, 2, [(3, 3)], 4), (2, 1, 1, [(3, 3)], 8)],
            group_divisor=2, embed_dim=16, global_context_att=True)


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "M"])
def test_presets_equal_official_layouts(name):
    cfg = REDIMNET_PRESETS[name]
    official = LAYOUTS["configs"][name]
    # a JSON round-trip turns the presets' tuples into the reference's lists
    assert json.loads(json.dumps(cfg)) == official


@pytest.mark.parametrize("name", ["b0", "b2", "b6", "M"])
def test_presets_build_with_official_size(name):
    model = ReDimNet.from_preset(name)
    # same number of parameters as the official model of this layout
    assert sum(p.numel() for p in model.parameters()) == LAYOUTS["info"][name]["params"]
    assert model.pool_dim == 2 * model.F * model.C
    assert model.model_config["C"] == REDIMNET_PRESETS[name]["C"]


def test_small_preset_is_the_demo_backbone():
    """``--redimnet_preset small`` trains the demo's CPU-sized layout on one's own data."""
    from hyperpyyaml import load_hyperpyyaml

    hparams = pathlib.Path(__file__).resolve().parents[1] / "recipes/VoxCeleb/MRL/hparams/demo_scratch.yaml"
    demo = load_hyperpyyaml(hparams.read_text(), {"data_folder": "unused"})["redimnet_config"]
    small = ReDimNet.from_preset("small")
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in ReDimNet(**redimnet_config("M", **demo)).parameters())
    assert small.F == 40 and small.C == 8


def test_config_overrides_and_errors():
    assert redimnet_config("b2", embed_dim=256)["embed_dim"] == 256
    with pytest.raises(ValueError, match="unknown ReDimNet preset"):
        redimnet_config("b9")
    with pytest.raises(NotImplementedError, match="feat_type"):
        ReDimNet(**dict(TINY, feat_type="tf"))
    with pytest.raises(NotImplementedError, match="tf_optimized_arch"):
        ReDimNet(**dict(TINY, tf_optimized_arch=True))
    with pytest.raises(ValueError, match="block_2d_type"):
        ReDimNet(**dict(TINY, block_2d_type="nope"))
    with pytest.raises(ValueError, match="block_1d_type"):
        ReDimNet(**dict(TINY, block_1d_type="nope"))
    with pytest.raises(ValueError, match="expected features"):
        ReDimNet(**TINY)(torch.randn(1, 10, 7))


# ------------------------------------------------------------------ lengths
@pytest.mark.parametrize("name", ["b0", "M", "x_fc_relu_emb_bn", "x_conv_fwse"])
def test_padding_invariance(name, tmp_path):
    """An utterance in a zero-padded batch (1-4 s) embeds as when run alone."""
    reference = rf.load_reference()
    enc = load_official_redimnet(
        rf.write_official_checkpoint(name, tmp_path / "m.pt", LAYOUTS, reference))
    gen = torch.Generator().manual_seed(0)
    lens = [16000, 64000, 23457, 40000]
    wavs = torch.zeros(len(lens), 64000)
    for i, n in enumerate(lens):
        wavs[i, :n] = torch.randn(n, generator=gen) * 0.1
    with torch.inference_mode():
        batch = enc(wavs, torch.tensor(lens) / 64000)
        for i, n in enumerate(lens):
            alone = enc(wavs[i:i + 1, :n])[0]
            cos = torch.cosine_similarity(batch[i], alone, dim=0).item()
            assert cos >= 0.9999, (name, n, cos)
            assert (batch[i] - alone).abs().max() < 1e-4


def test_full_lengths_equal_no_lengths():
    enc = MRLEncoder.from_config(TINY).eval()
    wavs = torch.randn(2, 8000)
    with torch.inference_mode():
        assert torch.equal(enc(wavs), enc(wavs, torch.ones(2)))


@pytest.mark.parametrize("b1d,b2d", [
    ("att", "convnext_like"),
    ("fc", "convnext_like_relu"),
    ("conv", "basic_resnet"),
    ("conv+att", "basic_resnet_fwse"),
    ("fc", "basic_resnet_fwse"),
])
def test_all_block_types_train_and_eval(b1d, b2d):
    torch.manual_seed(0)
    model = ReDimNet(**dict(TINY, block_1d_type=b1d, block_2d_type=b2d, out_channels=32,
                            emb_bn=True))
    feats = torch.randn(3, 40, 24)
    lengths = torch.tensor([1.0, 0.5, 0.8])
    model.train()
    out = model(feats, lengths)
    out.sum().backward()
    assert out.shape == (3, 16)
    assert all(p.grad is not None for n, p in model.named_parameters()
               if p.requires_grad and "stage0.0.w" not in n)
    model.eval()
    with torch.no_grad():
        ev = model(feats[1:2, :20])
        ev_batch = model(feats, lengths)
    assert torch.allclose(ev[0], ev_batch[1], atol=1e-5)


def test_eval_folding_follows_weight_changes():
    model = ReDimNet(**TINY).eval()
    feats = torch.randn(1, 30, 24)
    with torch.no_grad():
        before = model(feats)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.fill_(4.0)
        after = model(feats)
    assert not torch.allclose(before, after)
    fresh = ReDimNet(**TINY).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(feats), after, atol=1e-6)


# ------------------------------------------------------------------ loader
def _tiny_checkpoint(path, **changes):
    enc = MRLEncoder.from_config(TINY)
    ckpt = {"model_config": dict(enc.model_config), "state_dict": official_state_dict(enc)}
    ckpt.update(changes)
    torch.save(ckpt, path)
    return enc, path


def test_loader_roundtrip_with_tuples(tmp_path):
    cfg = dict(TINY, stages_setup=tuple((1, 1, 2, ((3, 3),), 4) for _ in range(1)))
    enc = MRLEncoder.from_config(cfg)
    path = tmp_path / "tuples.pt"
    torch.save({"model_config": cfg, "state_dict": official_state_dict(enc)}, path)
    loaded = load_official_redimnet(path)
    assert not loaded.training
    config, sd = read_official_checkpoint(path)
    assert config["stages_setup"] == [[1, 1, 2, [[3, 3]], 4]]
    assert set(sd) == set(official_state_dict(loaded))
    wav = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.allclose(loaded(wav), enc.eval()(wav), atol=1e-6)


def test_loader_not_a_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict"):
        load_official_redimnet(tmp_path / "list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        load_official_redimnet(tmp_path / "garbage.pt")


def test_loader_missing_top_level_keys(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(ValueError, match="model_config"):
        load_official_redimnet(tmp_path / "nocfg.pt")


def test_loader_missing_and_unexpected_keys(tmp_path):
    enc = MRLEncoder.from_config(TINY)
    sd = official_state_dict(enc)
    sd.pop("backbone.stem.0.weight")
    sd["backbone.extra.weight"] = torch.zeros(1)
    torch.save({"model_config": enc.model_config, "state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys: \['backbone.stem.0.weight'\]") as err:
        load_official_redimnet(tmp_path / "bad.pt")
    assert "backbone.extra.weight" in str(err.value)


def test_loader_wrong_shapes(tmp_path):
    enc = MRLEncoder.from_config(TINY)
    sd = official_state_dict(enc)
    sd["linear.weight"] = torch.zeros(3, 3)
    torch.save({"model_config": enc.model_config, "state_dict": sd}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"mismatched shapes: \['linear.weight"):
        load_official_redimnet(tmp_path / "shape.pt")


def test_loader_unsupported_feat_type(tmp_path):
    _tiny_checkpoint(tmp_path / "tf.pt")
    ckpt = torch.load(tmp_path / "tf.pt", weights_only=True)
    ckpt["model_config"]["feat_type"] = "tf"
    torch.save(ckpt, tmp_path / "tf.pt")
    with pytest.raises(NotImplementedError, match="feat_type"):
        load_official_redimnet(tmp_path / "tf.pt")


@pytest.mark.parametrize("bad", ["b2", "b2-vox2", "x9-vox2-ptn", "../b2-vox2-ptn", "no/such.pt"])
def test_unknown_release_name(bad, tmp_path):
    with pytest.raises(ValueError, match="release name"):
        load_official_redimnet(bad, savedir=tmp_path)


def test_download_through_file_url_once(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    _tiny_checkpoint(remote / "b0-vox2-ptn.pt")
    cache = tmp_path / "cache"
    base = remote.as_uri()
    enc = load_official_redimnet("b0-vox2-ptn", savedir=cache, base_url=base)
    assert (cache / "b0-vox2-ptn.pt").is_file()
    assert enc.embed_dim == 16
    # second call: served from the cache, no download
    import speechbrain_mrl.model.official as official

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(official, "download", no_download)
    again = load_official_redimnet("b0-vox2-ptn.pt", savedir=cache, base_url=base)
    assert again.embed_dim == 16
    assert resolve_official_checkpoint("b0-vox2-ptn", savedir=cache) == cache / "b0-vox2-ptn.pt"
    # names with '+' and ft_mix work (env var base URL)
    (remote / "M-vb2+vox2+cnc-ft_mix.pt").write_bytes((remote / "b0-vox2-ptn.pt").read_bytes())
    monkeypatch.undo()
    monkeypatch.setenv("REDIMNET_BASE_URL", base)
    assert load_official_redimnet("M-vb2+vox2+cnc-ft_mix", savedir=cache).embed_dim == 16


def test_download_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MRL_DOWNLOAD_RETRIES", "1")
    with pytest.raises(OSError, match="could not download .*b1-vox2-ptn.pt.*pass its path"):
        load_official_redimnet("b1-vox2-ptn", savedir=tmp_path / "c",
                               base_url=(tmp_path / "missing").as_uri())
    assert not list((tmp_path / "c").glob("*"))


def test_download_from_a_server_that_never_answers_is_bounded(tmp_path, monkeypatch):
    """Regression: urlopen without a timeout hung forever against a stalled server."""
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # connections are queued by the kernel and never answered
    port = server.getsockname()[1]
    monkeypatch.setenv("MRL_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("MRL_DOWNLOAD_RETRIES", "2")
    start = time.monotonic()
    try:
        with pytest.raises(OSError, match=rf"127.0.0.1:{port}/b0-vox2-ptn.pt after 2 attempts"):
            load_official_redimnet("b0-vox2-ptn", savedir=tmp_path / "c",
                                   base_url=f"http://127.0.0.1:{port}")
    finally:
        server.close()
    assert time.monotonic() - start < 20
    assert not list((tmp_path / "c").glob("*"))  # no .part file left


def test_eval_with_autograd_matches_inference():
    """The allocation-saving in-place inference path equals the autograd-safe one."""
    torch.manual_seed(0)
    model = ReDimNet(**dict(TINY, block_2d_type="basic_resnet_fwse",
                            block_1d_type="conv+att")).eval()
    feats = torch.randn(2, 30, 24, requires_grad=True)
    out = model(feats, torch.tensor([1.0, 0.7]))
    out.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    with torch.inference_mode():
        ref = model(feats.detach(), torch.tensor([1.0, 0.7]))
    assert torch.allclose(out.detach(), ref, atol=1e-6)
