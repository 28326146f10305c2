"""The one waveform -> nested-embedding encoder of the package.

:class:`MRLEncoder` chains the log-mel front end (``compute_features``), the
ReDimNet or ReDimNet2 lobe (``embedding_model``) and, optionally, the Matryoshka head
(``mrl_head``). Without a head the embedding is the lobe's own
(``bn -> linear (-> bn2)`` on the pooled statistics), a single size.

Training (the recipe), inference (:class:`~speechbrain_mrl.inference.interface.MRLEncoderClassifier`),
export, scoring and the official checkpoint loader all use it; nothing else
assembles waveform -> embedding. Inside the package embeddings are
``[batch, dim]``; the ``[batch, 1, dim]`` of SpeechBrain's
``EncoderClassifier`` appears only at that interface.

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib

import torch
from speechbrain.utils.data_utils import batch_pad_right
from torch import nn

from speechbrain_mrl.model.features import ReDimNetFbank
from speechbrain_mrl.model.sizes import check_target_dim
from speechbrain_mrl.model.redimnet import ReDimNet, redimnet_config
from speechbrain_mrl.model.redimnet2 import (ReDimNet2, is_redimnet2_config, redimnet2_config,
                                             redimnet2_frontend)

__all__ = ["MRLEncoder", "Passthrough", "SpeechBrainEmbedding", "merge_window_stats", "window_bounds"]


def window_bounds(total, window):
    """``[(start, end), ...]`` of consecutive windows over ``total`` samples.

    A last piece shorter than half a window joins the one before.

    Example
    -------
    >>> window_bounds(100, 40), window_bounds(90, 40)
    ([(0, 40), (40, 80), (80, 100)], [(0, 40), (40, 90)])
    """
    total, window = int(total), int(window)
    starts = list(range(0, total, window))
    if len(starts) > 1 and total - starts[-1] < window // 2:
        starts.pop()
    return list(zip(starts, starts[1:] + [total]))


def merge_window_stats(stats, frames):
    """One ``[1, 2 * D]`` attentive mean and std from windows' ``[N, 2 * D]``, by frame count.

    The mean of the means; the standard deviation from the pooled second moments.

    Example
    -------
    >>> stats = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    >>> merge_window_stats(stats, [10, 10])
    tensor([[1.0000, 1.4142]])
    """
    weight = torch.tensor(frames, dtype=stats.dtype, device=stats.device)[:, None]
    weight = weight / weight.sum()
    mean, std = stats.chunk(2, dim=1)
    pooled_mean = (weight * mean).sum(dim=0, keepdim=True)
    second = (weight * (std ** 2 + mean ** 2)).sum(dim=0, keepdim=True)
    pooled_std = torch.sqrt((second - pooled_mean ** 2).clamp(min=1e-7))
    return torch.cat([pooled_mean, pooled_std], dim=1)


class MRLEncoder(nn.Module):
    """Waveforms ``[B, T]`` (+ relative lengths) -> embeddings ``[B, D]``, every size nested.

    Arguments
    ---------
    compute_features : ReDimNetFbank or TFMelFbank
        Front end.
    embedding_model : ReDimNet or ReDimNet2
        The lobe.
    mrl_head : MatryoshkaProjection, optional
        Matryoshka head on the pooled statistics; None: the lobe's own
        embedding (one size, ``embedding_model.embed_dim``).

    Example
    -------
    >>> from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    >>> cfg = dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)], group_divisor=2, embed_dim=8)
    >>> enc = MRLEncoder.from_config(cfg).eval()
    >>> wavs, lens = torch.randn(3, 8000), torch.tensor([1.0, 0.7, 0.4])
    >>> enc(wavs, lens).shape, enc.mrl_dims
    (torch.Size([3, 8]), [8])
    >>> enc.mrl_head = MatryoshkaProjection(enc.pool_dim, embed_dim=12, mrl_dims=[4, 12])
    >>> enc(wavs, lens, target_dim=4).shape, {d: tuple(e.shape) for d, e in enc.all_dims(wavs).items()}
    (torch.Size([3, 4]), {4: (3, 4), 12: (3, 12)})
    """

    def __init__(self, compute_features, embedding_model, mrl_head=None):
        super().__init__()
        if compute_features.n_mels != embedding_model.F:
            raise ValueError(
                f"front end gives {compute_features.n_mels} mel bands but the model "
                f"expects F={embedding_model.F}"
            )
        if mrl_head is not None and mrl_head.input_size != embedding_model.pool_dim:
            raise ValueError(
                f"mrl_head takes {mrl_head.input_size} inputs but the lobe pools "
                f"{embedding_model.pool_dim} statistics"
            )
        self.compute_features = compute_features
        self.embedding_model = embedding_model
        self.mrl_head = mrl_head
        #: While True, the front end and the lobe run without autograd and stay
        #: in ``eval()`` whatever ``train()`` is called with (BatchNorm
        #: statistics never move): a frozen backbone under ``Brain.fit``. The
        #: head's input BatchNorm stays in ``eval()`` too: the pooled statistics
        #: it normalises do not change, so its running statistics stay those it
        #: was given (by :func:`~speechbrain_mrl.training.head_init.init_head_from_backbone`,
        #: the backbone's); its affine parameters still train.
        self.backbone_frozen = False

    @classmethod
    def from_config(cls, config="M", mrl_head=None, lobe=None):
        """Front end and lobe from an official ``model_config`` or a preset name.

        Arguments
        ---------
        config : str or dict
            Preset (``b0``..``b6``, ``M``, ``small``; ``r2-b0``..``r2-b6``) or ``model_config``
            of a ReDimNet or a ReDimNet2.
        mrl_head : MatryoshkaProjection, optional
            Head on the pooled statistics.
        lobe : str, optional
            ``"redimnet"`` or ``"redimnet2"``; None: a ReDimNet2 for the ``r2-*`` presets
            and for configs holding ``causal`` (every official ReDimNet2 ``model_config``
            does, ReDimNet's never) or striding as ``(freq, time)`` pairs
            (:func:`~speechbrain_mrl.model.redimnet2.is_redimnet2_config`), else a ReDimNet.
            A ReDimNet2 gets the front end of its ``feat_type``
            (:func:`~speechbrain_mrl.model.redimnet2.redimnet2_frontend`).

        Returns
        -------
        MRLEncoder

        Example
        -------
        >>> type(MRLEncoder.from_config("r2-b0").embedding_model).__name__
        'ReDimNet2'
        >>> tf = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)],
        ...                                  feat_type="tf"))
        >>> type(tf.compute_features).__name__, type(MRLEncoder.from_config("b0").embedding_model).__name__
        ('TFMelFbank', 'ReDimNet')
        """
        if lobe is None:
            lobe = "redimnet2" if is_redimnet2_config(config) else "redimnet"
        if lobe == "redimnet2":
            cfg = redimnet2_config(config)
            return cls(redimnet2_frontend(cfg), ReDimNet2(**cfg), mrl_head)
        if lobe != "redimnet":
            raise ValueError(f"lobe must be 'redimnet' or 'redimnet2' (or None: from the config), "
                             f"got {lobe!r}")
        cfg = redimnet_config(config)
        lobe = ReDimNet(**cfg)
        fbank = ReDimNetFbank(n_mels=lobe.F, hop_length=cfg["hop_length"],
                              **dict(cfg.get("spec_params") or {}))
        return cls(fbank, lobe, mrl_head)

    # ----------------------------------------------------------- description
    @property
    def model_config(self):
        """The lobe's official ``model_config``."""
        return self.embedding_model.model_config

    @property
    def pool_dim(self):
        """Size of the pooled statistics (the head's input)."""
        return self.embedding_model.pool_dim

    @property
    def embed_dim(self):
        """Full embedding size."""
        return self.embedding_model.embed_dim if self.mrl_head is None else self.mrl_head.embed_dim

    @property
    def mrl_dims(self):
        """Nested sizes (``[embed_dim]`` without a head)."""
        if self.mrl_head is None:
            return [int(self.embedding_model.embed_dim)]
        return [int(d) for d in self.mrl_head.mrl_dims]

    @property
    def min_samples(self):
        """Shortest waveform the encoder embeds: what the front end and the lobe both take.

        The front end needs ``n_fft // 2 + 1`` samples (its reflect padding); the lobe
        needs :attr:`~speechbrain_mrl.model.redimnet.PooledEmbeddingLobe.min_frames`
        frames (a ReDimNet2 at least its time stride, which pools over time inside the
        network), here the fewest samples the front end turns into that many frames
        (its own ``num_frames``: hop and centring). Waveforms shorter than this are
        refused before the model runs (``check_waveforms``, the extraction filter, the
        ONNX and OpenVINO wrappers).

        Example
        -------
        >>> MRLEncoder.from_config("b0").min_samples, MRLEncoder.from_config("r2-b0").min_samples
        (257, 480)
        """
        features = self.compute_features
        least = int(features.n_fft) // 2 + 1
        frames = int(getattr(self.embedding_model, "min_frames", 1))
        if features.num_frames(least) >= frames:
            return least
        # frame counts grow with the length: the first length giving enough frames
        high = least + frames * int(features.hop_length) + int(features.n_fft)
        while features.num_frames(high) < frames:
            high *= 2
        low = least  # too few frames
        while high - low > 1:
            mid = (low + high) // 2
            if features.num_frames(mid) >= frames:
                high = mid
            else:
                low = mid
        return high

    def train(self, mode=True):
        """As ``nn.Module.train``, but a frozen backbone (and the head's input norm) stay in ``eval()``."""
        super().train(mode)
        if self.backbone_frozen:
            self.compute_features.eval()
            self.embedding_model.eval()
            if self.mrl_head is not None:
                self.mrl_head.norm.eval()
        return self

    def freeze_backbone(self, frozen=True):
        """Freezes the backbone for training (or trains it again).

        Frozen: the lobe's parameters have ``requires_grad=False`` and
        :attr:`backbone_frozen` is set, so the front end and the lobe run
        without autograd and stay in ``eval()`` through :meth:`train`. Not
        frozen: the lobe's parameters need gradients and :meth:`train`
        reaches the whole encoder again. The current mode is applied anew.

        Arguments
        ---------
        frozen : bool
            Freeze (True) or unfreeze (False).

        Returns
        -------
        MRLEncoder
            ``self``.

        Example
        -------
        >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)]))
        >>> enc = enc.freeze_backbone().train()
        >>> enc.embedding_model.training, any(p.requires_grad for p in enc.embedding_model.parameters())
        (False, False)
        >>> enc.freeze_backbone(False).embedding_model.training
        True
        """
        self.backbone_frozen = bool(frozen)
        for p in self.embedding_model.parameters():
            p.requires_grad_(not frozen)
        return self.train(self.training)

    # ----------------------------------------------------------- computation
    def pool_features(self, wavs, wav_lens=None):
        """Waveforms ``[B, T]`` (+ relative lengths ``[B]``) -> pooled statistics ``[B, pool_dim]``."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        grad = torch.no_grad() if self.backbone_frozen else contextlib.nullcontext()
        with grad:
            feats = self.compute_features(wavs, wav_lens)
            frame_lens = self.compute_features.frame_lengths(wav_lens, wavs.shape[-1])
            return self.embedding_model.pool_features(feats, frame_lens)

    def pool_windows(self, wav, window_samples, batch_size=8):
        """Pooled statistics ``[1, pool_dim]`` of one long waveform, window by window.

        The waveform is cut into consecutive windows of ``window_samples``
        (a last piece shorter than half a window joins the one before); each
        window's attentive mean and standard deviation are pooled over its own
        frames, and the windows' statistics are combined by frame count (the
        mean of the means; the standard deviation from the pooled second
        moments). Time and memory grow linearly with the duration, where one
        pass over the whole waveform grows faster.

        Arguments
        ---------
        wav : torch.Tensor
            ``[T]`` waveform.
        window_samples : int
            Window length in samples.
        batch_size : int
            Windows run together (bounds the memory).

        Returns
        -------
        torch.Tensor

        Example
        -------
        >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
        ...                                   group_divisor=2, embed_dim=8)).eval()
        >>> wav = torch.randn(40000)
        >>> enc.pool_windows(wav, 16000).shape == (1, enc.pool_dim)
        True
        >>> bool(torch.allclose(enc.pool_windows(wav, 40000), enc.pool_features(wav[None])))
        True
        """
        bounds = window_bounds(int(wav.shape[-1]), window_samples)
        stats = []
        for i in range(0, len(bounds), batch_size):
            chunk = bounds[i:i + batch_size]
            wavs, lens = batch_pad_right([wav[a:b] for a, b in chunk])
            stats.append(self.pool_features(wavs, lens.to(wav.device)))
        frames = [1 + (b - a) // self.compute_features.hop_length for a, b in bounds]
        return merge_window_stats(torch.cat(stats), frames)

    def embed_pooled(self, stats, target_dim=None):
        """Pooled statistics ``[B, pool_dim]`` -> embeddings ``[B, target_dim]``."""
        d = check_target_dim(target_dim, self.embed_dim)
        if self.mrl_head is None:
            return self.embedding_model.embed(stats)[:, :d]
        return self.mrl_head(stats, target_dim=d)

    def forward(self, wavs, wav_lens=None, target_dim=None):
        """Waveforms ``[B, T]`` (+ relative lengths) -> embeddings ``[B, target_dim]``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` at the model rate, zero-padded.
        wav_lens : torch.Tensor, optional
            Relative lengths in ``(0, 1]``.
        target_dim : int, optional
            Prefix size (default: ``embed_dim``).

        Returns
        -------
        torch.Tensor
        """
        return self.embed_pooled(self.pool_features(wavs, wav_lens), target_dim)

    def embed(self, wavs, wav_lens=None, long_samples=None, window_samples=None):
        """Embeddings ``[B, embed_dim]`` of a padded batch; long waveforms window by window.

        The one place where inference decides how to embed a waveform: every
        waveform longer than ``long_samples`` is pooled with
        :meth:`pool_windows` (``window_samples`` per window), the others run
        together as one padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` at the model rate, zero-padded.
        wav_lens : torch.Tensor, optional
            Relative lengths in ``(0, 1]``.
        long_samples : int, optional
            Length above which a waveform is embedded window by window (None: never).
        window_samples : int, optional
            Window length (required with ``long_samples``).

        Returns
        -------
        torch.Tensor

        Example
        -------
        >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
        ...                                   group_divisor=2, embed_dim=8)).eval()
        >>> wavs, lens = torch.randn(2, 48000), torch.tensor([1.0, 0.5])
        >>> out = enc.embed(wavs, lens, long_samples=32000, window_samples=16000)
        >>> bool(torch.allclose(out[1], enc(wavs[1:, :24000])[0], atol=1e-5))
        True
        >>> bool(torch.allclose(out[0], enc.embed_pooled(enc.pool_windows(wavs[0], 16000))[0]))
        True
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        samples = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        long = [] if long_samples is None else [i for i, n in enumerate(samples) if n > long_samples]
        if not long:
            return self(wavs, wav_lens)
        rows = []
        for i, n in enumerate(samples):
            if i in long:
                rows.append(self.embed_pooled(self.pool_windows(wavs[i, :n], window_samples))[0])
        out = torch.zeros(wavs.shape[0], self.embed_dim, device=wavs.device)
        out[long] = torch.stack(rows).to(out.dtype)
        rest = [i for i in range(wavs.shape[0]) if i not in long]
        if rest:
            width = max(samples[i] for i in rest)
            lens = torch.tensor([samples[i] / width for i in rest], device=wavs.device)
            out[rest] = self(wavs[rest, :width], lens).to(out.dtype)
        return out

    def all_dims(self, wavs, wav_lens=None):
        """Every size of :attr:`mrl_dims` from one pass: ``{d: [B, d]}``."""
        emb = self(wavs, wav_lens)
        return {d: emb[:, :d] for d in self.mrl_dims}


class Passthrough(nn.Module):
    """Returns its first input: SpeechBrain's feature and normalisation steps, which
    :class:`MRLEncoder` does itself, in a model folder loaded by SpeechBrain's own classes.

    Example
    -------
    >>> x = torch.randn(2, 5)
    >>> bool(Passthrough()(x, torch.ones(2)) is x)
    True
    """

    def forward(self, x, lengths=None):
        """``x`` itself (``lengths`` are ignored)."""
        return x


class SpeechBrainEmbedding(nn.Module):
    """The ``embedding_model`` SpeechBrain's ``EncoderClassifier`` calls: waveforms -> ``[B, 1, D]``.

    SpeechBrain's ``encode_batch`` runs ``compute_features``, ``mean_var_norm`` and
    ``embedding_model``; a model folder makes the first two :class:`Passthrough`, so this
    module receives the waveforms and their relative lengths and embeds them as
    :meth:`MRLEncoder.embed` does (padding-aware; long recordings window by window). The
    full-size embedding is returned; its first ``d`` coordinates are the size-``d`` one.

    Arguments
    ---------
    encoder : MRLEncoder
        The encoder (front end, lobe, head).
    long_samples : float, optional
        Waveforms longer than this are embedded window by window (None: never).
    window_samples : float, optional
        Window length in samples.

    Example
    -------
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8)).eval()
    >>> emb = SpeechBrainEmbedding(enc, long_samples=60 * 16000, window_samples=30 * 16000)
    >>> wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.5])
    >>> out = emb(wavs, lens)
    >>> out.shape, bool(torch.allclose(out[:, 0], enc(wavs, lens)))
    (torch.Size([2, 1, 8]), True)
    """

    def __init__(self, encoder, long_samples=None, window_samples=None):
        super().__init__()
        self.encoder = encoder
        self.long_samples = long_samples
        self.window_samples = None if window_samples is None else int(round(window_samples))

    def forward(self, wavs, wav_lens=None):
        """Waveforms ``[B, T]`` (+ relative lengths ``[B]``) -> embeddings ``[B, 1, embed_dim]``."""
        return self.encoder.embed(wavs, wav_lens, self.long_samples, self.window_samples).unsqueeze(1)
