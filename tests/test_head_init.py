"""Tests of speechbrain_mrl.training.head_init: the closed-form head start, with long windows."""
import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch

from mrl_testutils import TINY_R2_CONFIG, speaker_voice, tiny_encoder, tiny_encoder_of, tiny_modules
from speechbrain_mrl.training.head_init import init_head_from_backbone, pooled_statistics, window_rows
from speechbrain_mrl.training.losses import MatryoshkaAAMLoss
from speechbrain_mrl.model.matryoshka import discriminant_rotation


def _loader(clips, batch_size=4):
    items = [{"id": f"u{i}", "sig": wav, "spk_id_encoded": torch.tensor([spk])}
             for i, (spk, wav) in enumerate(clips)]
    return [PaddedBatch(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


@pytest.mark.parametrize("family", ["redimnet", "redimnet2"])
def test_long_windows_join_the_discriminant_fit(family):
    """Both lobes: ReDimNet2 pools inside the network, the head starts from its pooled statistics
    and embedding layer as from ReDimNet's."""
    encoder = (tiny_encoder(*tiny_modules(0)) if family == "redimnet"
               else tiny_encoder_of(TINY_R2_CONFIG, 0)).eval()
    crops = _loader([(s, speaker_voice(s, u, 0.5)) for s in range(4) for u in range(3)])
    windows = _loader([(s, speaker_voice(s, 10 + u, 2.0)) for s in range(4) for u in range(2)])
    loss = MatryoshkaAAMLoss(n_classes=4, embed_dim=encoder.embed_dim, mrl_dims=encoder.mrl_dims)
    init_head_from_backbone(encoder, loss, crops, ordering="discriminant", shrinkage=0.3,
                            long_loader=windows)
    with_windows = {k: v.clone() for k, v in encoder.mrl_head.state_dict().items()}
    init_head_from_backbone(encoder, loss, crops, ordering="discriminant", shrinkage=0.3)
    assert not torch.allclose(with_windows["linear.weight"], encoder.mrl_head.linear.weight)
    # the head with windows is the backbone embedding rotated by the discriminant axes of
    # the crops and the windows together
    stats, labels = [], []
    for loader in (crops, windows):
        s, lab, _ = pooled_statistics(encoder, loader)
        stats.append(s)
        labels.append(lab)
    stats, labels = torch.cat(stats), torch.cat(labels)
    with torch.no_grad():
        backbone = encoder.embedding_model.embed(stats).double()
        rotation = discriminant_rotation(backbone, labels, shrinkage=0.3)
        encoder.mrl_head.load_state_dict(with_windows)
        head = encoder.mrl_head.eval()(stats).double()
    width = backbone.shape[1]  # the head is wider: its extra outputs start at zero
    torch.testing.assert_close(head[:, :width], backbone @ rotation, atol=1e-4, rtol=1e-4)
    assert not head[:, width:].any()


def test_window_rows_merge_segments_and_drop_short_tails():
    rows = {f"f_{i}": {"wav": "f.flac", "start": 32000 * i, "stop": 32000 * (i + 1),
                       "spk_id": "s"} for i in range(7)}  # 14 s in 2-s segments
    rows["clip"] = {"wav": "c.flac", "start": 0, "stop": 16000, "spk_id": "t"}  # 1 s
    eight = window_rows(rows, 8.0, min_duration=2.0)
    assert [(r["start"], r["stop"], r["spk_id"]) for r in eight.values()] == [
        (0, 128000, "s"), (128000, 224000, "s")]
    assert [r["duration"] for r in window_rows(rows, None, 0.5).values()] == [1.0, 14.0]
    assert window_rows(rows, 4.0, min_duration=4.0).keys() == {
        "f.flac@0-64000", "f.flac@64000-128000", "f.flac@128000-192000"}
    # windows of several lengths from one file stay distinct (as the recipe gathers them)
    both = {**window_rows(rows, 8.0), **window_rows(rows, None)}
    assert len(both) == 3 and {"f.flac@0-128000", "f.flac@0-224000"} <= both.keys()
