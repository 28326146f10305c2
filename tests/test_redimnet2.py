"""Tests of the ReDimNet2 lobe, its front ends and the official-checkpoint loader."""
import hashlib
import http.server
import json
import threading

import pytest
import torch

import redimnet2_fill as rf
from speechbrain_mrl.model import official2
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.features import ReDimNetFbank
from speechbrain_mrl.model.features_tf import TFMelFbank
from speechbrain_mrl.model.official2 import (
    load_official_redimnet2,
    official2_state_dict,
    read_official_redimnet2,
    redimnet2_encoder,
    resolve_official_redimnet2,
    save_official_redimnet2,
)
from speechbrain_mrl.model.redimnet2 import REDIMNET2_PRESETS, ReDimNet2, redimnet2_config
from speechbrain_mrl.utils.download import ChecksumError

LAYOUTS = rf.load_layouts()
REFERENCE = rf.load_reference()
PRESETS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6"]
TINY = dict(F=16, C=4, embed_dim=8, group_divisor=2, block_2d_type="convnext_like",
            stages_setup=[((1, 1), 1, 2, [(3, 3)], 4), ((2, 2), 1, 1, [(3, 5)], None)])


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Every reference layout as an official-format ``.pt`` file (fill-rule weights)."""
    folder = tmp_path_factory.mktemp("redimnet2")
    return {name: rf.write_official_checkpoint(name, folder / f"{name}.pt", LAYOUTS, REFERENCE)
            for name in rf.NAMES}


@pytest.fixture(scope="module")
def encoders(official_files):
    return {name: load_official_redimnet2(path) for name, path in official_files.items()}


# ------------------------------------------------------------------ presets and layouts
@pytest.mark.parametrize("name", PRESETS)
def test_presets_equal_official_layouts(name):
    # a JSON round-trip turns the presets' tuples into the reference's lists
    assert json.loads(json.dumps(REDIMNET2_PRESETS[f"r2-{name}"])) == LAYOUTS["configs"][name]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_with_official_size(name):
    model = ReDimNet2.from_preset(f"r2-{name}")
    assert sum(p.numel() for p in model.parameters()) == LAYOUTS["info"][name]["params"]
    assert model.embed_dim == 192 and model.F == 72


@pytest.mark.parametrize("name", rf.NAMES)
def test_state_dict_keys_equal_the_manifests(name):
    manifest = [(k, list(s)) for k, s in LAYOUTS["manifests"][name]]
    enc = redimnet2_encoder(LAYOUTS["configs"][name])
    lobe = [(k, list(v.shape)) for k, v in enc.embedding_model.state_dict().items()]
    # the lobe's keys, in the official order, are the manifest without the front end
    assert lobe == [(k, s) for k, s in manifest if not k.startswith("spec.")]
    full = {k: list(v.shape) for k, v in official2_state_dict(enc).items()}
    assert full == dict(manifest)
    assert sum(p.numel() for p in enc.embedding_model.parameters()) == LAYOUTS["info"][name]["params"]


@pytest.mark.parametrize("name", ["b0", "x_b2_tf", "x_variants"])
def test_front_end_buffers_are_the_official_ones(name):
    """A front end built from the config alone holds the values official files carry."""
    enc = redimnet2_encoder(LAYOUTS["configs"][name])
    assert isinstance(enc.compute_features, TFMelFbank if name == "x_b2_tf" else ReDimNetFbank)
    ours = official2_state_dict(enc)
    for key, value in REFERENCE["fixed_buffers"][name].items():
        assert torch.allclose(ours[key], value, rtol=0, atol=1e-6), key


def test_config_defaults_and_overrides():
    cfg = redimnet2_config("r2-b6", embed_dim=256)
    assert cfg["embed_dim"] == 256 and cfg["return_2d_output"] is True
    assert cfg["causal"] == "none" and cfg["dual_agg"] is False
    assert cfg["stages_setup"][4][2] == 0.75
    with pytest.raises(ValueError, match="unknown ReDimNet2 preset"):
        redimnet2_config("b2")


# ------------------------------------------------------------------ official parity
@pytest.mark.parametrize("name", rf.NAMES)
def test_parity_with_official_outputs(name, encoders):
    enc = encoders[name]
    assert not enc.training and enc.mrl_head is None
    with torch.inference_mode():
        out = enc(REFERENCE["wav"])
    expected = REFERENCE["outputs"][name]
    assert out.shape == expected.shape == tuple(LAYOUTS["info"][name]["out_shape"])
    assert (out - expected).abs().max().item() < 2e-5


def test_save_and_reload_round_trip(encoders, tmp_path):
    enc = encoders["x_b6_dual_gnorm"]
    path = save_official_redimnet2(enc, tmp_path / "again.pt")
    config, state = read_official_redimnet2(path)
    assert redimnet2_config(config) == redimnet2_config(LAYOUTS["configs"]["x_b6_dual_gnorm"])
    assert {k: list(v.shape) for k, v in state.items()} == dict(LAYOUTS["manifests"]["x_b6_dual_gnorm"])
    again = load_official_redimnet2(path)
    with torch.inference_mode():
        assert torch.equal(again(REFERENCE["wav"]), enc(REFERENCE["wav"]))


# ------------------------------------------------------------------ lengths
@pytest.mark.parametrize("name", rf.NAMES)
def test_padding_invariance(name, encoders):
    """An utterance cut short and zero-padded in a batch embeds as when run alone."""
    enc = encoders[name]
    wav = REFERENCE["wav"]
    cut = 23457  # not a multiple of the hop nor of the time stride
    batch = wav.clone()
    batch[1, cut:] = 0
    with torch.inference_mode():
        batched = enc(batch, torch.tensor([1.0, cut / wav.shape[1]]))
        alone = enc(wav[1:, :cut])
        full = enc(wav[:1])
    assert torch.isfinite(alone).all()
    cos = torch.nn.functional.cosine_similarity(batched[1], alone[0], dim=0).item()
    assert cos >= 0.9999, cos
    assert torch.allclose(batched[0], full[0], atol=1e-5)


def test_lobe_cuts_inputs_to_its_time_stride():
    model = ReDimNet2(**TINY).eval()
    assert model.time_stride == 2
    feats = torch.randn(2, 41, 16)
    with torch.inference_mode():
        # the official model drops the frames past the last multiple of the time stride
        assert torch.allclose(model(feats), model(feats[:, :40]), atol=1e-6)
        # 21 valid frames of 41 count as 20, in a batch or alone
        batched = model(feats, torch.tensor([1.0, 21 / 41]))
        assert torch.allclose(batched[1], model(feats[1:, :20])[0], atol=1e-5)
        # shorter than the stride in a batch: finite; alone: refused
        assert torch.isfinite(model(feats, torch.tensor([1.0, 1 / 41]))).all()
    with pytest.raises(ValueError, match="too few"):
        model(feats[:, :1])
    with pytest.raises(ValueError, match="expected features"):
        model(torch.randn(1, 10, 7))


def test_encoder_windows_and_long_inputs():
    enc = redimnet2_encoder(TINY).eval()
    wav = torch.randn(40000)
    with torch.inference_mode():
        assert enc.pool_windows(wav, 16000).shape == (1, enc.pool_dim)
        out = enc.embed(torch.stack([wav, wav]), torch.tensor([1.0, 0.5]), long_samples=32000,
                        window_samples=16000)
        assert torch.allclose(out[1], enc(wav[None, :20000])[0], atol=1e-5)


def test_training_mode_and_autograd():
    enc = redimnet2_encoder(dict(TINY, agg_gnorm=True, dual_agg=True, use_freq_pos_enc=True))
    enc.train()
    wavs = torch.randn(3, 8000) * 0.1
    out = enc(wavs, torch.tensor([1.0, 0.8, 0.5]))
    out.sum().backward()
    grads = [p.grad for p in enc.embedding_model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    enc.eval()
    with_grad = enc(wavs, torch.tensor([1.0, 0.8, 0.5]))
    with torch.inference_mode():
        assert torch.allclose(with_grad.detach(), enc(wavs, torch.tensor([1.0, 0.8, 0.5])), atol=1e-6)


def test_mrl_encoder_accepts_the_lobe():
    enc = MRLEncoder(redimnet2_encoder(TINY).compute_features, ReDimNet2(**TINY))
    assert enc.model_config["stages_setup"][1][0] == [2, 2]
    assert enc.pool_dim == 2 * 16 * 4 and enc.mrl_dims == [8]


# ------------------------------------------------------------------ refused options
@pytest.mark.parametrize("key, value", [
    ("causal", "full"),
    ("causal", "only_1d"),
    ("causal", False),
    ("fm_weigthing_type", "N"),
    ("spec_in_channels", 2),
    ("block_1d_type", "tf-att"),
    ("block_2d_type", "basic_resnet-causal"),
    ("group_divisor", None),
    ("pooling_func", "TSTP"),
    ("feat_type", "tf_spec"),
    ("feat_type", "pt_stft"),
    ("pad_right_samples", 160),
    ("before_pool_offset", 10),
    ("return_all_outputs", True),
    ("tf_optimized_arch", False),
    ("is_subnet", True),
    ("spec_params", dict(spec_norm="mvn")),
    ("spec_params", dict(do_preemph=False)),
    ("spec_params", dict(n_mels=40)),
    ("stages_setup", [(2, 1, 1, [(3, 3)], 4)]),
    ("stages_setup", [((3, 1), 1, 1, [(3, 3)], 4)]),
    ("stages_setup", [((1, 1), 1, 1, [(3, 4)], 4)]),
])
def test_refused_options(key, value):
    with pytest.raises(ValueError) as err:
        ReDimNet2(**dict(TINY, **{key: value}))
    message = str(err.value)
    assert "\n" not in message
    named = {"spec_params": ("spec_norm", "do_preemph", "n_mels"), "stages_setup": ("stages_setup",)}
    assert any(word in message for word in named.get(key, (key,))), message


def test_tf_front_end_refuses_pt_only_spec_params():
    with pytest.raises(ValueError, match="spec_norm"):
        redimnet2_encoder(dict(TINY, feat_type="tf", spec_params=dict(spec_norm="mn")))


def test_loader_refuses_what_does_not_fit(official_files, tmp_path):
    ckpt = torch.load(official_files["b0"], weights_only=True)
    del ckpt["state_dict"]["backbone.stage0.2.weight"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing keys.*backbone.stage0.2.weight"):
        load_official_redimnet2(tmp_path / "broken.pt")
    ckpt["model_config"]["causal"] = "full"
    torch.save(ckpt, tmp_path / "causal.pt")
    with pytest.raises(ValueError, match="causal='full'"):
        load_official_redimnet2(tmp_path / "causal.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an official ReDimNet2 checkpoint"):
        load_official_redimnet2(tmp_path / "other.pt")


# ------------------------------------------------------------------ release names
@pytest.mark.parametrize("bad", ["b2", "b2-vox2", "b9-vox2-lm", "M-vox2-lm", "../b2-vox2-lm", "no/such.pt"])
def test_unknown_release_name(bad, tmp_path):
    with pytest.raises(ValueError, match="release name"):
        load_official_redimnet2(bad, savedir=tmp_path)


@pytest.fixture
def release_server(tmp_path):
    """A local HTTP server (127.0.0.1) serving the files of ``tmp_path / 'remote'``."""
    remote = tmp_path / "remote"
    remote.mkdir()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            path = remote / self.path.lstrip("/").replace("%2B", "+")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", remote, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_release_name_downloads_once_from_the_release_address(release_server, tmp_path, monkeypatch):
    base, remote, requests = release_server
    save_official_redimnet2(redimnet2_encoder(TINY), remote / "b6-vb2+vox2_v0-lm.pt")
    cache = tmp_path / "cache"
    enc = load_official_redimnet2("b6-vb2+vox2_v0-lm", savedir=cache, base_url=base)
    assert (cache / "b6-vb2+vox2_v0-lm.pt").is_file() and len(requests) == 1
    assert enc.embed_dim == 8 and not enc.training
    # again: from the cache, no download
    from speechbrain_mrl.model import official

    monkeypatch.setattr(official, "download", lambda *a, **k: pytest.fail("downloaded twice"))
    assert load_official_redimnet2("b6-vb2+vox2_v0-lm.pt", savedir=cache, base_url=base).embed_dim == 8
    assert resolve_official_redimnet2("b6-vb2+vox2_v0-lm", savedir=cache) == cache / "b6-vb2+vox2_v0-lm.pt"
    # the default address is the official release's
    assert official2.OFFICIAL2_BASE_URL == "https://github.com/PalabraAI/redimnet2/releases/download/v1.0.0"


def test_release_download_checks_known_sha256(release_server, tmp_path, monkeypatch):
    base, remote, _ = release_server
    path = save_official_redimnet2(redimnet2_encoder(TINY), remote / "b0-vox2-lm.pt")
    monkeypatch.setenv("REDIMNET2_BASE_URL", base)
    monkeypatch.setitem(official2.RELEASE2_SHA256, "b0-vox2-lm", "0" * 64)
    with pytest.raises(ChecksumError):
        load_official_redimnet2("b0-vox2-lm", savedir=tmp_path / "c1")
    assert not list((tmp_path / "c1").glob("*.pt"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(official2.RELEASE2_SHA256, "b0-vox2-lm", digest)
    assert load_official_redimnet2("b0-vox2-lm", savedir=tmp_path / "c2").embed_dim == 8


def test_release_download_failure_leaves_nothing(release_server, tmp_path, monkeypatch):
    base, _, _ = release_server
    monkeypatch.setenv("MRL_DOWNLOAD_RETRIES", "1")
    with pytest.raises(OSError, match="could not download .*b1-vox2-ptn.pt.*pass its path"):
        load_official_redimnet2("b1-vox2-ptn", savedir=tmp_path / "c", base_url=base)
    assert not list((tmp_path / "c").glob("*"))


# ------------------------------------------------------------------ options beyond the reference
#: Tiny layouts of the official options the 10 reference layouts leave unused, with the
#: official model's outputs (tests/data/redimnet2_options, written by its make_references.py).
OPTIONS_DIR = rf.DATA.parent / "redimnet2_options"
OPTION_LAYOUTS = ["o_1d_fc", "o_1d_conv", "o_2d_convnext_relu", "o_2d_resnet_fwse",
                  "o_2d_multi_kernel", "o_2d_output_no_head", "o_tf_plain", "o_pt_norm_signal"]


def _option_record(name):
    return json.loads((OPTIONS_DIR / f"{name}.json").read_text())


def _used_options(cfg):
    """The options of a ``model_config`` that the option layouts are there to cover."""
    spec = cfg.get("spec_params") or {}
    used = {("block_1d_type", cfg["block_1d_type"]), ("block_2d_type", cfg["block_2d_type"]),
            ("feat_type, norm_signal", cfg["feat_type"], bool(spec.get("norm_signal", False))),
            ("return_2d_output, no out_channels", bool(cfg.get("return_2d_output", False)),
             cfg.get("out_channels") is None)}
    if any(len(stage[3]) > 1 for stage in cfg["stages_setup"]):
        used.add(("several 2-D kernels", cfg["block_2d_type"]))
    return used


def test_option_layouts_cover_what_the_reference_layouts_do_not():
    reference = set().union(*(_used_options(LAYOUTS["configs"][name]) for name in rf.NAMES))
    records = {name: _option_record(name) for name in OPTION_LAYOUTS}
    assert sorted(p.stem for p in OPTIONS_DIR.glob("*.json")) == sorted(OPTION_LAYOUTS)
    wanted = {("block_1d_type", "fc"), ("block_1d_type", "conv"),
              ("block_2d_type", "convnext_like_relu"), ("block_2d_type", "basic_resnet_fwse"),
              ("several 2-D kernels", "convnext_like"),
              ("return_2d_output, no out_channels", True, True),
              ("feat_type, norm_signal", "tf", False), ("feat_type, norm_signal", "pt", True)}
    assert wanted.isdisjoint(reference)
    for name, record in records.items():
        assert record["name"] == name and name not in rf.NAMES
        assert record["model_config"] not in LAYOUTS["configs"].values()
        assert _used_options(record["model_config"]) - reference, name  # something new
    assert wanted <= set().union(*(_used_options(r["model_config"]) for r in records.values()))


@pytest.mark.parametrize("name", OPTION_LAYOUTS)
def test_parity_with_official_outputs_of_other_options(name, tmp_path):
    record = _option_record(name)
    config = record["model_config"]
    recipe = record["input"]
    assert recipe["source"] == "tests/data/redimnet2/reference_outputs.pt" and recipe["key"] == "wav"
    wav = REFERENCE["wav"] * recipe["scale"]
    assert list(wav.shape) == recipe["shape"]
    assert wav.double().sum().item() == pytest.approx(recipe["sum"], rel=1e-9, abs=1e-9)
    assert wav.double().abs().sum().item() == pytest.approx(recipe["abs_sum"], rel=1e-9)
    # the official file: fill-rule weights, and the front end's buffers as a front end built
    # from the config alone holds them (the official ones: their statistics are recorded)
    ours = official2_state_dict(redimnet2_encoder(config))
    for key, stats in record["spec_stats"].items():
        value = ours[key].double()
        assert list(value.shape) == stats["shape"], key
        assert value.sum().item() == pytest.approx(stats["sum"], rel=1e-6, abs=1e-4), key
        assert value.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=1e-6, abs=1e-4), key
    state = {key: ours[key].clone() if key.startswith("spec.") else rf.fill_tensor(key, shape)
             for key, shape in record["manifest"]}
    torch.save({"model_config": config, "state_dict": state}, tmp_path / f"{name}.pt")
    enc = load_official_redimnet2(tmp_path / f"{name}.pt")
    assert not enc.training and enc.mrl_head is None
    assert sum(p.numel() for p in enc.embedding_model.parameters()) == record["params"]
    with torch.inference_mode():
        out = enc(wav)
    expected = torch.tensor(record["output"])
    assert out.shape == expected.shape == (2, config["embed_dim"])
    assert (out - expected).abs().max().item() < 2e-5
