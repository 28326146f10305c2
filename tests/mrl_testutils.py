"""Helpers shared by the scoring / inference / hub / export tests (developer D).

A tiny Matryoshka ReDimNet (small F/C, one or two stages) or ReDimNet2 with
non-trivial BatchNorm statistics, written to disk with ``write_model_folder``, and
generated speech-like audio (voiced harmonics with a per-speaker pitch and
formants, syllable envelopes, a little noise).
"""
import math
import os
import pathlib

import soundfile as sf
import torch

from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.features import ReDimNetFbank
from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
from speechbrain_mrl.model.folder import write_model_folder
from speechbrain_mrl.model.redimnet import ReDimNet
from speechbrain_mrl.model.redimnet2 import redimnet2_config

TINY_CONFIG = dict(
    F=16, C=4, block_1d_type="conv+att", block_2d_type="convnext_like",
    stages_setup=[(1, 1, 1, [(3, 3)], 4), (2, 1, 2, [(3, 3)], None)],
    group_divisor=2, out_channels=None, embed_dim=12, hop_length=160,
    pooling_func="ASTP", feat_type="pt", global_context_att=True, emb_bn=False,
    spec_params=dict(do_spec_aug=False, freq_mask_width=[0, 6], time_mask_width=[0, 8]),
    tf_optimized_arch=False,
)
#: A tiny ReDimNet2 (full official ``model_config``): time stride 4 as in every ``r2-*``
#: preset, so its shortest input is set by the lobe (4 frames, 480 samples), not by the
#: front end (257 samples); an attention block and a final projection.
TINY_R2_CONFIG = redimnet2_config(dict(
    F=16, C=4, stages_setup=[[[1, 1], 1, 2, [[3, 3]], 4], [[2, 2], 1, 1, [[3, 3]], None],
                             [[1, 2], 1, 1, [[3, 3]], None]],
    embed_dim=12, out_channels=24))
EMBED_DIM = 16
MRL_DIMS = [4, 8, 16]
THRESHOLDS = {4: 0.31, 8: 0.42, 16: 0.53}


def speech_like(seconds=1.0, sample_rate=16000, f0=120.0, formants=(500.0, 1500.0, 2500.0),
                seed=0, channels=1):
    """Voiced, syllable-modulated harmonic audio ``[T]`` (or ``[T, channels]``)."""
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    vib = 1.0 + 0.03 * torch.sin(2 * math.pi * (4.0 + torch.rand(1, generator=g).item()) * t)
    phase = 2 * math.pi * torch.cumsum(f0 * vib, 0) / sample_rate
    x = torch.zeros(n, dtype=torch.float64)
    for h in range(1, 30):
        fh = f0 * h
        if fh > sample_rate / 2 - 200:
            break
        amp = sum(math.exp(-((fh - fm) / 180.0) ** 2) for fm in formants) + 0.02
        x += amp / h ** 0.5 * torch.sin(h * phase + 2 * math.pi * torch.rand(1, generator=g).item())
    rate = 3.0 + 2.0 * torch.rand(1, generator=g).item()
    env = 0.5 * (1 - torch.cos(2 * math.pi * rate * t)).clamp(min=0) ** 1.5
    x = x * env + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    x = (0.3 * x / x.abs().max()).float()
    if channels > 1:
        x = torch.stack([x * (1.0 - 0.1 * c) for c in range(channels)], dim=1)
    return x


def speaker_voice(spk, utt, seconds=1.0, sample_rate=16000, channels=1):
    """Speech-like audio of utterance ``utt`` of synthetic speaker ``spk``."""
    f0 = 90.0 + 37.0 * spk
    formants = (400.0 + 90.0 * spk, 1300.0 + 170.0 * (spk % 4), 2400.0 + 110.0 * (spk % 3))
    return speech_like(seconds, sample_rate, f0 * (1 + 0.02 * utt), formants,
                       seed=1000 * spk + utt, channels=channels)


def pool(lobe, feats, lens=None):
    """Pooled statistics of the lobe."""
    return lobe.pool_features(feats, lens)


def tiny_modules(seed=0):
    """A tiny ReDimNet lobe and Matryoshka head in eval mode, with set BN statistics."""
    torch.manual_seed(seed)
    lobe = ReDimNet(**TINY_CONFIG)
    head = MatryoshkaProjection(lobe.pool_dim, embed_dim=EMBED_DIM, mrl_dims=MRL_DIMS)
    # run a few batches in train mode so BatchNorm running stats are realistic
    fbank = ReDimNetFbank(n_mels=TINY_CONFIG["F"], hop_length=160)
    lobe.train()
    head.train()
    for m in list(lobe.modules()) + list(head.modules()):
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for i in range(3):
            wavs = torch.stack([speaker_voice(s, i, 0.6) for s in range(4)])
            head(pool(lobe, fbank(wavs)))
    return lobe.eval(), head.eval()


def tiny_encoder(lobe, head):
    """The tiny lobe and head as the training recipe holds them: an ``MRLEncoder``."""
    spec = dict(TINY_CONFIG["spec_params"])
    fbank = ReDimNetFbank(n_mels=TINY_CONFIG["F"], hop_length=TINY_CONFIG["hop_length"], **spec)
    return MRLEncoder(fbank, lobe, head).eval()


def tiny_encoder_of(config, seed=0):
    """A tiny ``MRLEncoder`` of ``config`` (either family, its own front end) with a Matryoshka
    head (``EMBED_DIM``, ``MRL_DIMS``) and set BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    encoder = MRLEncoder.from_config(config)
    encoder.mrl_head = MatryoshkaProjection(encoder.pool_dim, embed_dim=EMBED_DIM, mrl_dims=MRL_DIMS)
    for m in encoder.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    encoder.train()
    with torch.no_grad():
        for i in range(3):
            encoder(torch.stack([speaker_voice(s, i, 0.6) for s in range(4)]))
    return encoder.eval()


#: Validation EERs the tiny model records: the mean over both lists is lowest at size 8.
VALIDATION = {"valid": {4: 9.0, 8: 7.5, 16: 8.0}, "valid_long": {4: 3.0, 8: 1.0, 16: 0.9}}


def write_tiny_model(folder, seed=0, thresholds=THRESHOLDS, family="redimnet"):
    """Writes the tiny model with ``write_model_folder``; returns (folder, lobe, head).

    ``family``: ``"redimnet"`` (:data:`TINY_CONFIG`) or ``"redimnet2"`` (:data:`TINY_R2_CONFIG`,
    :func:`tiny_encoder_of`).
    """
    if family == "redimnet":
        lobe, head = tiny_modules(seed)
        encoder = tiny_encoder(lobe, head)
    elif family == "redimnet2":
        encoder = tiny_encoder_of(TINY_R2_CONFIG, seed)
        lobe, head = encoder.embedding_model, encoder.mrl_head
    else:
        raise ValueError(f"family must be 'redimnet' or 'redimnet2', got {family!r}")
    folder = write_model_folder(folder, encoder, thresholds=thresholds,
                                validation=VALIDATION,
                                extra_info={"note": "tiny test model", "datasets": ["synthetic"],
                                            "command": "python train.py hparams/demo_mrl.yaml "
                                                       "--data_folder data"})
    return folder, lobe, head


def reference_embedding(lobe, head, wavs, wav_lens=None):
    """Training-time computation (the recipe's encoder), independent of the model folder."""
    with torch.no_grad():
        return tiny_encoder(lobe, head)(wavs, wav_lens)


def write_voice_corpus(folder, n_spk=4, n_utt=3, seconds=0.8, prefix="id1"):
    """Writes ``<spk>/<video>/<utt>.wav`` files; returns ``{rel_path: (spk, abs_path)}``."""
    folder = pathlib.Path(folder)
    out = {}
    for s in range(n_spk):
        for u in range(n_utt):
            rel = f"{prefix}{s:04d}/vid{u % 2}/{u:05d}.wav"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), speaker_voice(s, u, seconds + 0.1 * u).numpy(), 16000)
            out[rel] = (f"{prefix}{s:04d}", path)
    return out


class PicklePayload:
    """Unpickling it creates a marker folder: stands for arbitrary code in a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def clustered_speakers(n_spk=120, n_utt=3, dim=32, seed=0, noise=0.6):
    """Random speaker centres, ``n_utt`` noisy utterances each and one noisy query each.

    Returns ``(utterance speaker IDs, [n_spk * n_utt, dim] embeddings, [n_spk, dim] queries)``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, dim))
    ids = [f"spk{s:04d}" for s in range(n_spk) for _ in range(n_utt)]
    emb = np.repeat(centres, n_utt, axis=0) + noise * rng.standard_normal((n_spk * n_utt, dim))
    queries = centres + noise * rng.standard_normal((n_spk, dim))
    return ids, emb.astype("float32"), queries.astype("float32")
