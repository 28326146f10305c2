"""Official-checkpoint parity of the ReDimNet lobe on the 10 reference layouts.

Each layout's official-format ``.pt`` is rebuilt on disk from the fill rule
(``tests/redimnet_fill.py``), loaded with :func:`load_official_redimnet` and
run on the reference waveforms; the output must match the official model's
output (``tests/data/reference_outputs.pt``) within 2e-5.
"""
import pytest
import torch

import redimnet_fill as rf
from speechbrain_mrl.model.official import load_official_redimnet

TOL = 2e-5
LAYOUTS = rf.load_layouts()
NAMES = list(LAYOUTS["configs"])


@pytest.fixture(scope="module")
def reference():
    return rf.load_reference()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("official_ckpts")


def test_ten_layouts():
    assert len(NAMES) == 10
    assert {"M", "b0", "b6", "x_fc_relu_emb_bn", "x_conv_fwse"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_official_parity(name, reference, ckpt_dir):
    path = rf.write_official_checkpoint(name, ckpt_dir / f"{name}.pt", LAYOUTS, reference)
    encoder = load_official_redimnet(path)
    assert not encoder.training
    expected_keys = [k for k, _ in LAYOUTS["manifests"][name] if not k.startswith("spec.")]
    assert list(encoder.embedding_model.state_dict()) == expected_keys
    with torch.inference_mode():
        out = encoder(reference["wav"])
    ref = reference["outputs"][name]
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    print(f"{name}: max abs diff {diff:.3e}")
    assert diff < TOL, f"{name}: max abs diff {diff:.3e} >= {TOL}"


@pytest.mark.parametrize("name", ["b0", "M"])
def test_intermediates(name, reference, ckpt_dir):
    """Front end, backbone and pooling each match the official intermediates."""
    path = rf.write_official_checkpoint(name, ckpt_dir / f"{name}_int.pt", LAYOUTS, reference)
    encoder = load_official_redimnet(path)
    inter = reference["intermediates"][name]
    with torch.inference_mode():
        feats = encoder.compute_features(reference["wav"])
        backbone = encoder.embedding_model.backbone(feats)
        pooled = encoder.embedding_model.pool(backbone)
    # ours are time-major, the official ones channel-major. The log of tiny mel
    # energies amplifies FFT rounding, which differs between CPUs (up to 3e-5 seen);
    # a wrong window or filterbank moves features by more than 1e-2.
    feat_diff = (feats.transpose(1, 2) - inter["features"]).abs()
    assert feat_diff.max() < 1e-4 and feat_diff.mean() < 2e-6
    assert (backbone.transpose(1, 2) - inter["backbone"]).abs().max() < 1e-4
    assert (pooled - inter["pooled"]).abs().max() < 1e-4


def test_fill_rule_matches_reference_spec_buffers(reference):
    sd = rf.official_state_dict("b0", LAYOUTS, reference)
    assert sd["backbone.stage0.0.w"].shape == (1, 1, 1, 1)
    assert sd["backbone.stage0.3.conv_block.bn1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(sd["spec.torchfbank.2.mel_scale.fb"],
                       reference["fixed_buffers"]["b0"]["spec.torchfbank.2.mel_scale.fb"])
    assert (sd["backbone.stage0.3.conv_block.bn1.running_var"] >= 0.5).all()
