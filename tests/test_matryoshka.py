"""Tests for speechbrain_mrl.model.matryoshka.MatryoshkaProjection."""
import io

import pytest
import torch
import torch.nn.functional as F

from speechbrain_mrl.model.matryoshka import (MatryoshkaProjection, discriminant_rotation, pca_rotation)
from speechbrain_mrl.model.sizes import validate_mrl_dims


def _cos(a):
    a = F.normalize(a.double(), dim=-1)
    return a @ a.T


def _pretrained(input_size=48, pdim=24, with_bn2=True, seed=0):
    """Random pretrained bn -> linear -> bn2 with non-trivial running stats."""
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm1d(input_size)
    lin = torch.nn.Linear(input_size, pdim)
    bn2 = torch.nn.BatchNorm1d(pdim) if with_bn2 else None
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(input_size, generator=g) * 2.0)
        bn.running_var.copy_(torch.rand(input_size, generator=g) * 3.0 + 0.2)
        bn.weight.copy_(torch.rand(input_size, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(input_size, generator=g) * 0.3)
        lin.weight.copy_(torch.randn(pdim, input_size, generator=g) / input_size**0.5)
        lin.bias.copy_(torch.randn(pdim, generator=g))
        if bn2 is not None:
            bn2.running_mean.copy_(torch.randn(pdim, generator=g))
            bn2.running_var.copy_(torch.rand(pdim, generator=g) * 2.0 + 0.1)
            bn2.weight.copy_(torch.rand(pdim, generator=g) + 0.5)
            bn2.bias.copy_(torch.randn(pdim, generator=g) * 0.5)
    # correlated, off-centre statistics
    mix = torch.randn(input_size, input_size, generator=g)
    stats = torch.randn(300, input_size, generator=g) @ mix * 0.5 + torch.randn(input_size, generator=g) * 2.0
    return bn, lin, bn2, stats


def _reference(bn, lin, bn2, x):
    with torch.no_grad():
        e = lin(bn.eval()(x))
        if bn2 is not None:
            e = bn2.eval()(e)
    return e


@pytest.mark.parametrize("with_bn2", [True, False])
@pytest.mark.parametrize("use_stats", [True, False])
def test_init_preserves_cosine(with_bn2, use_stats):
    bn, lin, bn2, stats = _pretrained(with_bn2=with_bn2)
    proj = MatryoshkaProjection(48, embed_dim=24, mrl_dims=[6, 12, 24])
    proj.init_from_embedding_layer(bn, lin, bn2, stats=stats if use_stats else None).eval()
    test_x = torch.randn(40, 48) * 2.0 + stats.mean(0)
    ref = _reference(bn, lin, bn2, test_x)
    with torch.no_grad():
        out = proj(test_x)
    assert (_cos(out) - _cos(ref)).abs().max() < 1e-5
    # a rotation also preserves norms
    assert torch.allclose(out.norm(dim=1), ref.norm(dim=1), rtol=1e-4, atol=1e-4)
    if not use_stats:  # identity rotation: the pretrained embedding itself
        assert torch.allclose(out, ref, atol=1e-4)
        assert proj.init_ordering is None and proj.axis_variance is None


def test_prefix_variance_ordering():
    bn, lin, bn2, stats = _pretrained()
    proj = MatryoshkaProjection(48, embed_dim=24, mrl_dims=[6, 12, 24])
    proj.init_from_embedding_layer(bn, lin, bn2, stats=stats).eval()
    with torch.no_grad():
        out = proj(stats).double()
    var = out.var(dim=0)
    assert (var[1:] <= var[:-1] * (1 + 1e-4) + 1e-6).all(), var
    # coordinates are decorrelated principal components
    cov = torch.cov(out.T)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-3 * var.max()
    assert proj.init_ordering == "pca"
    assert torch.allclose(proj.axis_variance.double(), var, rtol=1e-3, atol=1e-5)
    # the ordering is not the trivial one of the pretrained embedding
    ref_var = _reference(bn, lin, bn2, stats).double().var(dim=0)
    assert var[:6].sum() > ref_var.sort(descending=True).values[:6].sum() - 1e-6


def _identity_layer(dim):
    """A pretrained bn -> linear that maps statistics to themselves (eval mode)."""
    bn = torch.nn.BatchNorm1d(dim, eps=1e-12).eval()
    lin = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    return bn, lin


def _speakers(n_spk=8, per_spk=40, dim=24, utterance_seed=0):
    """Embeddings whose speakers differ along dims 20-23 while dims 0-3 hold large
    within-speaker noise: PCA ranks the noise first, a discriminant ordering the speakers.
    The speakers are always the same; ``utterance_seed`` draws new utterances of them."""
    labels = torch.arange(n_spk).repeat_interleave(per_spk)
    centres = torch.zeros(n_spk, dim)
    centres[:, 20:] = torch.randn(n_spk, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1000 + utterance_seed)
    noise_scale = torch.full((dim,), 0.1)
    noise_scale[:4] = 3.0
    x = centres[labels] + torch.randn(len(labels), dim, generator=g) * noise_scale
    x[:, 10] += 10.0  # a common offset keeps the norms alike
    return x, labels


def _energy(rot, cols, dims):
    """Share of the first ``cols`` axes that lies in the coordinates ``dims``."""
    return float((rot[dims, :cols] ** 2).sum() / cols)


def _nearest_centroid_accuracy(train, train_lab, test, test_lab):
    cen = torch.stack([F.normalize(train[train_lab == c], dim=1).mean(0) for c in train_lab.unique()])
    pred = (F.normalize(test, dim=1) @ F.normalize(cen, dim=1).T).argmax(1)
    return float((pred == test_lab).double().mean())


def test_discriminant_ordering_ranks_speaker_axes_first():
    x, labels = _speakers()
    bn, lin = _identity_layer(24)
    pca = MatryoshkaProjection(24, embed_dim=24, mrl_dims=[4, 24])
    pca.init_from_embedding_layer(bn, lin, stats=x).eval()
    disc = MatryoshkaProjection(24, embed_dim=24, mrl_dims=[4, 24])
    disc.init_from_embedding_layer(bn, lin, stats=x, labels=labels).eval()
    assert disc.init_ordering == "discriminant" and pca.init_ordering == "pca"
    rot = disc.linear.weight.detach().double().T  # output axes as columns
    assert _energy(rot, 4, slice(20, 24)) > 0.9
    assert _energy(pca.linear.weight.detach().double().T, 4, slice(0, 4)) > 0.9
    # a rotation: full-size cosine scores unchanged
    test_x, test_lab = _speakers(utterance_seed=1)
    with torch.no_grad():
        out = disc(test_x)
        assert (_cos(out) - _cos(test_x)).abs().max() < 1e-5
        # on new utterances, 4-d prefixes identify speakers far better than PCA's
        acc_disc = _nearest_centroid_accuracy(disc(x, 4), labels, disc(test_x, 4), test_lab)
        acc_pca = _nearest_centroid_accuracy(pca(x, 4), labels, pca(test_x, 4), test_lab)
    assert acc_disc > 0.9 and acc_pca < 0.6, (acc_disc, acc_pca)


def test_discriminant_rotation_completes_by_variance():
    """Past the discriminant rank (n_speakers - 1) the axes follow the remaining variance."""
    x, labels = _speakers(n_spk=3)
    rot = discriminant_rotation(x.double(), labels)
    assert torch.allclose(rot.T @ rot, torch.eye(24, dtype=torch.float64), atol=1e-10)
    z = F.normalize(x.double(), dim=1) @ rot
    tail_var = z[:, 2:].var(dim=0)
    assert (tail_var[1:] <= tail_var[:-1] * (1 + 1e-6) + 1e-12).all()
    assert torch.equal(rot, discriminant_rotation(x.double(), labels))
    # shrinkage 1 ignores the within-speaker scatter: principal axes of the speaker means
    means = torch.stack([F.normalize(x.double(), dim=1)[labels == c].mean(0) for c in range(3)])
    top = pca_rotation(means.repeat_interleave(40, dim=0))[:, :2]
    both = discriminant_rotation(x.double(), labels, shrinkage=1.0)[:, :2]
    assert torch.allclose((both.T @ top).abs(), torch.eye(2, dtype=torch.float64), atol=1e-6)


def test_discriminant_errors():
    x, labels = _speakers()
    bn, lin = _identity_layer(24)
    proj = MatryoshkaProjection(24, embed_dim=24, mrl_dims=[24])
    with pytest.raises(ValueError, match="labels were given without stats"):
        proj.init_from_embedding_layer(bn, lin, labels=labels)
    with pytest.raises(ValueError, match="one per embedding"):
        proj.init_from_embedding_layer(bn, lin, stats=x, labels=labels[:-1])
    with pytest.raises(ValueError, match="integer speaker labels"):
        proj.init_from_embedding_layer(bn, lin, stats=x, labels=labels.float())
    with pytest.raises(ValueError, match="at least two speakers"):
        proj.init_from_embedding_layer(bn, lin, stats=x, labels=torch.zeros_like(labels))
    with pytest.raises(ValueError, match=r"shrinkage must be in \[0, 1\]"):
        proj.init_from_embedding_layer(bn, lin, stats=x, labels=labels, shrinkage=1.5)
    # two utterances per speaker in 24-d: singular within-speaker scatter without shrinkage
    few, few_lab = x[:: 20], labels[:: 20]
    with pytest.raises(ValueError, match="singular"):
        proj.init_from_embedding_layer(bn, lin, stats=few, labels=few_lab, shrinkage=0.0)
    proj.init_from_embedding_layer(bn, lin, stats=few, labels=few_lab, shrinkage=0.1)


def test_init_is_deterministic():
    bn, lin, bn2, stats = _pretrained()
    a = MatryoshkaProjection(48, embed_dim=24, mrl_dims=[12, 24]).init_from_embedding_layer(bn, lin, bn2, stats)
    b = MatryoshkaProjection(48, embed_dim=24, mrl_dims=[12, 24]).init_from_embedding_layer(bn, lin, bn2, stats)
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert torch.equal(a.linear.bias, b.linear.bias)
    # deterministic sign convention: largest |entry| of each eigenvector is positive,
    # i.e. each output coordinate correlates positively with its dominant input embedding coordinate
    ref = _reference(bn, lin, bn2, stats).double()
    out = a.eval()(stats).detach().double()
    ref_c, out_c = ref - ref.mean(0), out - out.mean(0)
    corr = out_c.T @ ref_c  # [24, 24] = eigvals * R^T
    idx = corr.abs().argmax(dim=1)
    assert (corr[torch.arange(24), idx] > 0).all()


def test_embed_dim_larger_than_pretrained():
    bn, lin, bn2, stats = _pretrained(pdim=24)
    proj = MatryoshkaProjection(48, embed_dim=32, mrl_dims=[8, 16, 24, 32])
    proj.init_from_embedding_layer(bn, lin, bn2, stats=stats).eval()
    assert torch.count_nonzero(proj.linear.weight[24:]) == 0
    assert torch.count_nonzero(proj.linear.bias[24:]) == 0
    test_x = torch.randn(30, 48) + stats.mean(0)
    with torch.no_grad():
        out = proj(test_x)
    assert out.shape == (30, 32)
    assert torch.count_nonzero(out[:, 24:]) == 0
    assert (_cos(out) - _cos(_reference(bn, lin, bn2, test_x))).abs().max() < 1e-5
    # extra dims can still learn
    proj.train()
    (proj(torch.randn(8, 48)) * torch.randn(8, 32)).sum().backward()
    assert proj.linear.weight.grad[24:].abs().sum() > 0


def test_embed_dim_smaller_than_pretrained_raises():
    bn, lin, bn2, stats = _pretrained(pdim=24)
    proj = MatryoshkaProjection(48, embed_dim=16, mrl_dims=[8, 16])
    with pytest.raises(ValueError, match="smaller than the pretrained"):
        proj.init_from_embedding_layer(bn, lin, bn2, stats=stats)


def test_init_mismatch_errors():
    bn, lin, bn2, stats = _pretrained(input_size=48, pdim=24)
    proj = MatryoshkaProjection(40, embed_dim=24, mrl_dims=[24])
    with pytest.raises(ValueError, match="input_size"):
        proj.init_from_embedding_layer(bn, lin, bn2)
    proj = MatryoshkaProjection(48, embed_dim=24, mrl_dims=[24])
    with pytest.raises(ValueError, match="bn2"):
        proj.init_from_embedding_layer(bn, lin, torch.nn.BatchNorm1d(10))
    with pytest.raises(ValueError, match="stats"):
        proj.init_from_embedding_layer(bn, lin, bn2, stats=torch.randn(10, 47))
    with pytest.raises(ValueError, match="at least 2"):
        proj.init_from_embedding_layer(bn, lin, bn2, stats=torch.randn(1, 48))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        proj.init_from_embedding_layer(torch.nn.LayerNorm(48), lin, bn2)


def test_forward_shapes_and_target_dim():
    proj = MatryoshkaProjection(20, embed_dim=16, mrl_dims=[4, 8, 16])
    x = torch.randn(3, 20)
    assert proj(x).shape == (3, 16)
    assert proj(x, target_dim=8).shape == (3, 8)
    assert proj(x, target_dim=5).shape == (3, 5)  # not an mrl size, still allowed
    proj.eval()
    full = proj(x)
    assert torch.equal(proj(x, target_dim=8), full[:, :8])
    outs = proj.all_dims(x)
    assert list(outs) == [4, 8, 16]
    for d, e in outs.items():
        assert torch.equal(e, full[:, :d])


@pytest.mark.parametrize("bad", [0, -1, 17, 2.0, "8", True])
def test_forward_bad_target_dim(bad):
    proj = MatryoshkaProjection(20, embed_dim=16, mrl_dims=[4, 8, 16])
    with pytest.raises(ValueError, match="target_dim"):
        proj(torch.randn(3, 20), target_dim=bad)


def test_forward_bad_input_shape():
    proj = MatryoshkaProjection(20, embed_dim=16, mrl_dims=[4, 8, 16])
    for shape in [(3, 19), (3, 2, 20), (20,), (3, 1, 20), (3, 1, 20, 1)]:
        with pytest.raises(ValueError, match="20"):
            proj(torch.randn(*shape))


@pytest.mark.parametrize(
    "dims, match",
    [
        ([16, 8, 32], "sorted"),
        ([8, 8, 32], "duplicates"),
        ([0, 8, 32], "positive"),
        ([-8, 8, 32], "positive"),
        ([8, 64], "exceed"),
        ([8, 16], "last element"),
        ([], "empty"),
        ([8.0, 32], "ints"),
    ],
)
def test_bad_mrl_dims(dims, match):
    with pytest.raises(ValueError, match=match):
        MatryoshkaProjection(20, embed_dim=32, mrl_dims=dims)


def test_mrl_dims_defaults_and_small_sizes():
    assert MatryoshkaProjection(20).mrl_dims == [64, 128, 192, 256]
    assert validate_mrl_dims([8, 16, 32], 32) == [8, 16, 32]
    assert validate_mrl_dims((1, 32), 32) == [1, 32]
    with pytest.raises(ValueError):
        MatryoshkaProjection(0)
    with pytest.raises(ValueError):
        MatryoshkaProjection(20, embed_dim=0)


def test_state_dict_roundtrip():
    bn, lin, bn2, stats = _pretrained()
    proj = MatryoshkaProjection(48, embed_dim=32, mrl_dims=[8, 16, 32])
    proj.init_from_embedding_layer(bn, lin, bn2, stats=stats).eval()
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    buf.seek(0)
    other = MatryoshkaProjection(48, embed_dim=32, mrl_dims=[8, 16, 32])
    other.load_state_dict(torch.load(buf, weights_only=True))
    other.eval()
    x = torch.randn(5, 48)
    assert torch.equal(proj(x), other(x))
    assert set(proj.state_dict()) == {
        "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked", "linear.weight", "linear.bias",
    }


def test_train_mode_gradients_flow():
    proj = MatryoshkaProjection(20, embed_dim=16, mrl_dims=[4, 8, 16])
    x = torch.randn(6, 20, requires_grad=True)
    proj(x, target_dim=4).sum().backward()
    assert x.grad is not None and proj.linear.weight.grad[:4].abs().sum() > 0
    assert proj.linear.weight.grad[4:].abs().sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_init_on_cuda_from_cpu_layers():
    bn, lin, bn2, stats = _pretrained()
    proj = MatryoshkaProjection(48, embed_dim=32, mrl_dims=[8, 16, 32]).cuda()
    proj.init_from_embedding_layer(bn, lin, bn2, stats=stats.cuda()).eval()
    with torch.no_grad():
        out = proj(stats[:40].cuda()).cpu()
    assert (_cos(out) - _cos(_reference(bn, lin, bn2, stats[:40]))).abs().max() < 1e-5
