"""Tests of the ReDimNet log-mel front end."""
import math

import pytest
import torch
import torchaudio

from speechbrain_mrl.model.features import ReDimNetFbank, length_mask, relative_frame_lengths


def _reference_fbank(wav, n_mels=72, hop=160):
    """Front end written with torchaudio's MelSpectrogram (the official recipe)."""
    x = torch.nn.functional.pad(wav.unsqueeze(1), (1, 0), mode="reflect")
    x = torch.nn.functional.conv1d(x, torch.tensor([[[-0.97, 1.0]]])).squeeze(1)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=hop, f_min=20, f_max=7600,
        n_mels=n_mels, window_fn=torch.hamming_window)(x)
    feats = torch.log(mel + 1e-6)
    return (feats - feats.mean(dim=-1, keepdim=True)).transpose(1, 2)


def test_matches_torchaudio_recipe():
    torch.manual_seed(0)
    wav = torch.randn(2, 12345) * 0.1
    fbank = ReDimNetFbank(n_mels=72).eval()
    out = fbank(wav)
    assert out.shape == (2, 12345 // 160 + 1, 72)
    assert (out - _reference_fbank(wav)).abs().max() < 1e-4


def test_hop_and_mels():
    fbank = ReDimNetFbank(n_mels=60, hop_length=100)
    assert fbank(torch.randn(1, 16000)).shape == (1, 161, 60)
    assert fbank.mel_fb.shape == (257, 60)
    assert fbank.window.shape == (400,)


def test_padded_batch_matches_alone():
    torch.manual_seed(1)
    lens = [16000, 32000, 23457, 48000]
    wavs = torch.zeros(4, 48000)
    for i, n in enumerate(lens):
        wavs[i, :n] = torch.randn(n) * 0.1
    fbank = ReDimNetFbank().eval()
    batch = fbank(wavs, torch.tensor(lens) / 48000)
    for i, n in enumerate(lens):
        alone = fbank(wavs[i:i + 1, :n])[0]
        frames = alone.shape[0]
        assert (batch[i, :frames] - alone).abs().max() < 1e-4
        assert (batch[i, frames:] == 0).all()


def test_frame_lengths_and_mask():
    rel = relative_frame_lengths(torch.tensor([1.0, 0.25]), 64000, 160)
    assert torch.allclose(rel, torch.tensor([1.0, 101 / 401]))
    mask = length_mask(rel, 401)
    assert mask.sum(1).tolist() == [401, 101]
    assert length_mask(None, 5) is None
    assert relative_frame_lengths(None, 100, 10) is None


def test_specaugment_training_only():
    torch.manual_seed(0)
    fbank = ReDimNetFbank(do_spec_aug=True, freq_mask_width=(3, 4), time_mask_width=(5, 6))
    wav = torch.randn(3, 16000)
    fbank.eval()
    clean = fbank(wav)
    assert (clean != 0).all()
    fbank.train()
    aug = fbank(wav)
    zero_frames = (aug == 0).all(dim=2).sum(dim=1)
    zero_bands = (aug == 0).all(dim=1).sum(dim=1)
    assert zero_frames.tolist() == [5, 5, 5]
    assert zero_bands.tolist() == [3, 3, 3]


def test_rejects_unsupported_options():
    with pytest.raises(NotImplementedError, match="spec_norm"):
        ReDimNetFbank(spec_norm="mvn")
    with pytest.raises(ValueError, match="expected waveforms"):
        ReDimNetFbank()(torch.randn(1, 1, 100))


def test_keeps_dtype_and_accepts_1d():
    out = ReDimNetFbank(n_mels=40)(torch.randn(8000, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 51, 40)
    assert math.isfinite(out.abs().max().item())
