"""Tests for speechbrain_mrl.training.losses.MatryoshkaAAMLoss."""
import math

import pytest
import torch
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from speechbrain_mrl.training.losses import MatryoshkaAAMLoss, class_centroids, set_aam_margin
from speechbrain_mrl.model.matryoshka import MatryoshkaProjection


def _clustered(n_classes=6, per_class=20, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 2.0
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


def test_per_dim_keys_and_total_matches_speechbrain():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(n_classes=5, embed_dim=16, mrl_dims=[4, 8, 16], margin=0.2, scale=30)
    emb = torch.randn(7, 16)
    labels = torch.randint(0, 5, (7,))
    total, per_dim = loss_fn(emb, labels)
    assert list(per_dim) == [4, 8, 16]
    assert total.dim() == 0
    # each entry is exactly SpeechBrain's AAM + LogSoftmaxWrapper on the prefix
    ref_fn = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    for d in [4, 8, 16]:
        cos = loss_fn.cosine_logits(emb, d)
        assert cos.shape == (7, 5) and cos.abs().max() <= 1 + 1e-6
        ref = ref_fn(cos.unsqueeze(1), labels.unsqueeze(1))
        assert torch.allclose(per_dim[d], ref, atol=1e-6)
    # default weights: equal, normalised -> mean of per-size losses
    assert torch.allclose(total, torch.stack(list(per_dim.values())).mean(), atol=1e-6)


def test_unnormalised_weights():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(4, embed_dim=8, mrl_dims=[4, 8], weights=[2.0, 1.0], normalize_weights=False)
    emb, labels = torch.randn(5, 8), torch.randint(0, 4, (5,))
    total, per_dim = loss_fn(emb, labels)
    assert torch.allclose(total, 2 * per_dim[4] + per_dim[8], atol=1e-6)
    loss_fn = MatryoshkaAAMLoss(4, embed_dim=8, mrl_dims=[4, 8], weights=[2.0, 1.0])
    assert loss_fn.weights == {4: pytest.approx(2 / 3), 8: pytest.approx(1 / 3)}


def test_zero_weight_gives_no_gradient():
    torch.manual_seed(0)
    dims = [4, 8, 16]
    emb = torch.randn(9, 16)
    labels = torch.randint(0, 5, (9,))
    full = MatryoshkaAAMLoss(5, embed_dim=16, mrl_dims=dims, weights=[1.0, 0.0, 1.0], normalize_weights=False)
    only = MatryoshkaAAMLoss(5, embed_dim=16, mrl_dims=[4, 16], normalize_weights=False)
    only.classifiers["4"].weight.data.copy_(full.classifiers["4"].weight.data)
    only.classifiers["16"].weight.data.copy_(full.classifiers["16"].weight.data)

    e1 = emb.clone().requires_grad_(True)
    total1, per1 = full(e1, labels)
    total1.backward()
    e2 = emb.clone().requires_grad_(True)
    total2, _ = only(e2, labels)
    total2.backward()
    assert torch.allclose(total1, total2)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-7)
    assert full.classifiers["8"].weight.grad is None
    assert 8 in per1 and per1[8] > 0  # still logged


def test_bad_weights():
    for w in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="weights"):
            MatryoshkaAAMLoss(5, embed_dim=16, mrl_dims=[4, 8, 16], weights=w)


def test_shared_vs_separate_classifier_shapes():
    sep = MatryoshkaAAMLoss(7, embed_dim=16, mrl_dims=[4, 8, 16])
    shapes = {n: tuple(p.shape) for n, p in sep.named_parameters()}
    assert shapes == {f"classifiers.{d}.weight": (7, d) for d in [4, 8, 16]}
    shared = MatryoshkaAAMLoss(7, embed_dim=16, mrl_dims=[4, 8, 16], shared_classifier=True)
    shapes = {n: tuple(p.shape) for n, p in shared.named_parameters()}
    assert shapes == {"classifier.weight": (7, 16)}
    assert shared.classifier_weight(8).shape == (7, 8)
    emb = torch.randn(3, 16, requires_grad=True)
    total, per_dim = shared(emb, torch.tensor([0, 3, 6]))
    total.backward()
    assert list(per_dim) == [4, 8, 16]
    assert shared.classifier.weight.grad.abs().sum() > 0


def test_margin_warmup():
    loss_fn = MatryoshkaAAMLoss(3, embed_dim=8, mrl_dims=[4, 8], margin=0.3, margin_warmup_epochs=3)
    assert loss_fn.margin == 0.0  # epoch 1 before any call
    got = [loss_fn.on_epoch_start(e) for e in range(1, 7)]
    assert got == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert loss_fn.margin == pytest.approx(0.3)
    # the AAM constants follow the margin
    assert loss_fn.aam.cos_m == pytest.approx(math.cos(0.3))
    assert loss_fn.aam.mm == pytest.approx(math.sin(math.pi - 0.3) * 0.3)
    loss_fn.on_epoch_start(2)
    assert loss_fn.aam.sin_m == pytest.approx(math.sin(0.1))
    no_warmup = MatryoshkaAAMLoss(3, embed_dim=8, mrl_dims=[4, 8], margin=0.3)
    assert no_warmup.margin == pytest.approx(0.3)
    assert no_warmup.on_epoch_start(1) == pytest.approx(0.3)


def test_margin_changes_loss():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(4, embed_dim=8, mrl_dims=[4, 8], margin=0.3, margin_warmup_epochs=2)
    emb, labels = torch.randn(6, 8), torch.randint(0, 4, (6,))
    l0, _ = loss_fn(emb, labels)
    loss_fn.on_epoch_start(3)
    l1, _ = loss_fn(emb, labels)
    assert l1 > l0  # a margin only makes the target logit harder


def test_set_aam_margin_matches_constructor():
    a = AdditiveAngularMargin(margin=0.25, scale=10)
    b = AdditiveAngularMargin(margin=0.0, scale=10)
    set_aam_margin(b, 0.25)
    for k in ("margin", "cos_m", "sin_m", "th", "mm"):
        assert getattr(a, k) == pytest.approx(getattr(b, k))


def test_training_tiny_head_decreases_loss():
    torch.manual_seed(0)
    x, labels = _clustered(n_classes=6, dim=20)
    head = MatryoshkaProjection(20, embed_dim=16, mrl_dims=[4, 8, 16])
    loss_fn = MatryoshkaAAMLoss(6, embed_dim=16, mrl_dims=[4, 8, 16], margin=0.2, scale=30)
    opt = torch.optim.Adam(list(head.parameters()) + list(loss_fn.parameters()), lr=0.01)
    first = None
    for _ in range(40):
        opt.zero_grad()
        total, per_dim = loss_fn(head(x), labels)
        total.backward()
        opt.step()
        first = total.item() if first is None else first
    final, per_dim = loss_fn(head.eval()(x), labels)
    assert final.item() < 0.5 * first
    for d in [4, 8, 16]:
        assert per_dim[d] < first


def test_centroid_init_lowers_initial_loss():
    torch.manual_seed(0)
    emb, labels = _clustered(n_classes=8, per_class=15, dim=16)
    for shared in (False, True):
        loss_fn = MatryoshkaAAMLoss(8, embed_dim=16, mrl_dims=[4, 8, 16], shared_classifier=shared)
        random_loss, random_per = loss_fn(emb, labels)
        centroids, counts = class_centroids(emb, labels, 8)
        assert counts.tolist() == [15] * 8
        loss_fn.init_classifiers_from_centroids(centroids)
        init_loss, init_per = loss_fn(emb, labels)
        assert init_loss < 0.5 * random_loss
        for d in [4, 8, 16]:
            assert init_per[d] < random_per[d]
            w = loss_fn.classifier_weight(d)
            expected = torch.nn.functional.normalize(centroids[:, :d])
            if shared:  # slices are renormalised in forward
                w = torch.nn.functional.normalize(w)
            assert torch.allclose(w, expected, atol=1e-6)


def test_centroid_init_keeps_rows_without_samples():
    loss_fn = MatryoshkaAAMLoss(3, embed_dim=4, mrl_dims=[2, 4])
    before = loss_fn.classifiers["4"].weight.detach().clone()
    centroids = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 2.0, 0, 0]])
    loss_fn.init_classifiers_from_centroids(centroids)
    w = loss_fn.classifiers["4"].weight
    assert torch.equal(w[1], before[1])
    assert torch.allclose(w[0], torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(ValueError, match="centroids"):
        loss_fn.init_classifiers_from_centroids(torch.randn(3, 3))


def test_input_shapes_and_errors():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[4, 8])
    emb, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 4])
    a, _ = loss_fn(emb, labels)
    b, _ = loss_fn(emb.unsqueeze(1), labels.unsqueeze(1))
    c, _ = loss_fn(emb, labels.float())
    assert torch.allclose(a, b) and torch.allclose(a, c)
    with pytest.raises(ValueError, match="embed_dim=8"):
        loss_fn(torch.randn(4, 7), labels)
    with pytest.raises(ValueError, match="embed_dim=8"):
        loss_fn(torch.randn(4, 2, 8), labels)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        loss_fn(emb, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        loss_fn(emb, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="targets"):
        loss_fn(emb, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(emb, torch.tensor([0.5, 1, 2, 3]))
    with pytest.raises(ValueError, match="mrl_dims"):
        MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[8, 4])
    with pytest.raises(ValueError, match="n_classes"):
        MatryoshkaAAMLoss(1, embed_dim=8, mrl_dims=[4, 8])


def test_state_dict_roundtrip():
    torch.manual_seed(0)
    a = MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[4, 8])
    b = MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[4, 8])
    b.load_state_dict(a.state_dict())
    emb, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 4])
    assert torch.equal(a(emb, labels)[0], b(emb, labels)[0])


def test_autocast_bfloat16_cpu():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[4, 8])
    emb, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 4])
    ref, _ = loss_fn(emb, labels)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out, per_dim = loss_fn(emb.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast():
    torch.manual_seed(0)
    loss_fn = MatryoshkaAAMLoss(5, embed_dim=8, mrl_dims=[4, 8]).cuda()
    emb = torch.randn(4, 8, device="cuda", requires_grad=True)
    labels = torch.tensor([0, 1, 2, 4], device="cuda")
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        total, _ = loss_fn(emb, labels)
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(emb.grad).all()
