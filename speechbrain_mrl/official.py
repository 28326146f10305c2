"""Loading the official ReDimNet checkpoints (IDRnD/ReDimNet releases).

A released file ``{model}-{dataset}-{train_type}.pt`` (e.g. ``b2-vox2-ptn.pt``)
is a dict ``{'model_config': ..., 'state_dict': ...}`` holding the keyword
arguments and the state dict of the official ``ReDimNetWrap``.
:func:`load_official_redimnet` builds a :class:`ReDimNetEncoder` from the
file's own config and checks that every tensor is present and fits. The lobe's
state-dict keys are the official ones; the front-end buffers ``spec.*`` map
to :class:`ReDimNetFbank` buffers (:data:`SPEC_KEY_MAP`).

Authors
-------
 * speechbrain-mrl developers
"""
import os
import pathlib
import re
import shutil
import tempfile
import urllib.request

import torch

from torch import nn

from speechbrain_mrl.features import ReDimNetFbank
from speechbrain_mrl.redimnet import ReDimNet, _check_config, redimnet_config

__all__ = [
    "ReDimNetEncoder",
    "load_official_redimnet",
    "read_official_checkpoint",
    "official_state_dict",
    "convert_official_state_dict",
    "OFFICIAL_BASE_URL",
    "RELEASE_NAME_PATTERN",
]

#: Where the official releases are downloaded from (``{base}/{name}.pt``).
#: Overridable per call (``base_url=``) or with ``$REDIMNET_BASE_URL``.
OFFICIAL_BASE_URL = "https://github.com/IDRnD/ReDimNet/releases/download/latest"
#: ``{model}-{dataset}-{train_type}``, e.g. ``b2-vox2-ptn`` or ``M-vb2+vox2+cnc-ft_mix``.
RELEASE_NAME_PATTERN = re.compile(r"^(b[0-6]|M)-([A-Za-z0-9_+]+)-(ptn|ft_lm|ft_mix|[A-Za-z0-9_]+)$")
_DEFAULT_CACHE = pathlib.Path(
    os.environ.get("REDIMNET_CACHE", pathlib.Path.home() / ".cache" / "speechbrain_mrl" / "redimnet")
)


# ---------------------------------------------------------------------------
# encoder and key mapping
# ---------------------------------------------------------------------------
#: Official front-end buffer names -> ours (in :class:`ReDimNetFbank`).
SPEC_KEY_MAP = {
    "spec.torchfbank.1.flipped_filter": "preemph_filter",
    "spec.torchfbank.2.spectrogram.window": "window",
    "spec.torchfbank.2.mel_scale.fb": "mel_fb",
}


class ReDimNetEncoder(nn.Module):
    """Waveform -> embedding: a :class:`ReDimNetFbank` then a :class:`ReDimNet`.

    Arguments
    ---------
    compute_features : ReDimNetFbank
        Front end (SpeechBrain's ``compute_features`` name).
    embedding_model : ReDimNet
        The lobe.

    Example
    -------
    >>> enc = ReDimNetEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                        group_divisor=2, embed_dim=8)).eval()
    >>> enc(torch.randn(3, 8000), torch.tensor([1.0, 0.7, 0.4])).shape
    torch.Size([3, 8])
    >>> sorted(official_state_dict(enc))[-1]
    'spec.torchfbank.2.spectrogram.window'
    """

    def __init__(self, compute_features, embedding_model):
        super().__init__()
        if compute_features.n_mels != embedding_model.F:
            raise ValueError(
                f"front end gives {compute_features.n_mels} mel bands but the model "
                f"expects F={embedding_model.F}"
            )
        self.compute_features = compute_features
        self.embedding_model = embedding_model

    @classmethod
    def from_config(cls, config="M"):
        """Builds both parts from an official ``model_config`` (or preset name)."""
        cfg = redimnet_config(config)
        _check_config(cfg)
        spec_params = dict(cfg.get("spec_params") or {})
        fbank = ReDimNetFbank(n_mels=cfg["F"], hop_length=cfg["hop_length"], **spec_params)
        return cls(fbank, ReDimNet(**cfg))

    @property
    def embed_dim(self):
        """Embedding size."""
        return self.embedding_model.embed_dim

    @property
    def model_config(self):
        """The official ``model_config`` of the lobe."""
        return self.embedding_model.model_config

    def pool_features(self, wavs, wav_lens=None):
        """Waveforms ``[B, T]`` -> pooled statistics ``[B, pool_dim]``."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        feats = self.compute_features(wavs, wav_lens)
        frame_lens = self.compute_features.frame_lengths(wav_lens, wavs.shape[-1])
        return self.embedding_model.pool_features(feats, frame_lens)

    def forward(self, wavs, wav_lens=None):
        """Waveforms ``[B, T]`` (+ relative lengths ``[B]``) -> embeddings ``[B, embed_dim]``."""
        return self.embedding_model.embed(self.pool_features(wavs, wav_lens))


def official_state_dict(encoder):
    """``encoder``'s weights under the official key names (``spec.*`` included)."""
    sd = {k: v for k, v in encoder.embedding_model.state_dict().items()}
    fbank = encoder.compute_features.state_dict()
    for official, ours in SPEC_KEY_MAP.items():
        sd[official] = fbank[ours]
    return sd


def convert_official_state_dict(encoder, official_sd):
    """Splits and checks an official state dict for ``encoder``.

    Arguments
    ---------
    encoder : ReDimNetEncoder
        Model built from the checkpoint's config.
    official_sd : dict
        Official ``state_dict``.

    Returns
    -------
    tuple
        ``(fbank_state, lobe_state)`` ready for ``load_state_dict``.

    Raises
    ------
    ValueError
        Naming missing keys, unexpected keys and shape mismatches.
    """
    expected = {k: tuple(v.shape) for k, v in official_state_dict(encoder).items()}
    missing = [k for k in expected if k not in official_sd]
    unexpected = [k for k in official_sd if k not in expected]
    mismatched = []
    for key, shape in expected.items():
        value = official_sd.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key}: not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {shape}")
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if mismatched:
        problems.append(f"mismatched shapes: {mismatched}")
    if problems:
        raise ValueError(
            "the state dict does not fit the ReDimNet built from its model_config; "
            + "; ".join(problems)
        )
    fbank_state = {ours: official_sd[off] for off, ours in SPEC_KEY_MAP.items()}
    lobe_state = {k: v for k, v in official_sd.items() if k not in SPEC_KEY_MAP}
    return fbank_state, lobe_state


# ---------------------------------------------------------------------------
# config and file handling
# ---------------------------------------------------------------------------
def _untuple(value):
    """Turns tuples (as in released configs) into lists, recursively."""
    if isinstance(value, (list, tuple)):
        return [_untuple(v) for v in value]
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


def read_official_checkpoint(path):
    """Reads an official checkpoint file safely (``weights_only=True``).

    Arguments
    ---------
    path : str or os.PathLike
        The ``.pt`` file.

    Returns
    -------
    tuple
        ``(model_config, state_dict)``; tuples in the config become lists.

    Raises
    ------
    ValueError
        If the file is unreadable or not a ``{'model_config', 'state_dict'}`` dict.
    """
    ckpt = _read_checkpoint(path)
    return _untuple(ckpt["model_config"]), ckpt["state_dict"]


def _read_checkpoint(path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"{path} is not a readable ReDimNet checkpoint: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} is not an official ReDimNet checkpoint: expected a dict with "
            f"'model_config' and 'state_dict', got {type(ckpt).__name__}"
        )
    missing = [k for k in ("model_config", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(
            f"{path} is not an official ReDimNet checkpoint: missing {missing} "
            f"(found keys {sorted(map(str, ckpt))})"
        )
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{path}: 'model_config' and 'state_dict' must both be dicts")
    return ckpt


def _download(url, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as resp:  # noqa: S310
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve_official_checkpoint(source, savedir=None, base_url=None):
    """Local path of an official checkpoint, downloading a release name once.

    Arguments
    ---------
    source : str or os.PathLike
        Existing file path, or a release name ``{model}-{dataset}-{train_type}``
        (``.pt`` optional), e.g. ``b2-vox2-ptn``.
    savedir : str or os.PathLike, optional
        Cache folder (default ``$REDIMNET_CACHE`` or
        ``~/.cache/speechbrain_mrl/redimnet``).
    base_url : str, optional
        Release URL prefix (default ``$REDIMNET_BASE_URL`` or
        :data:`OFFICIAL_BASE_URL`); ``file://`` URLs work too.

    Returns
    -------
    pathlib.Path
    """
    path = pathlib.Path(source)
    if path.is_file():
        return path
    name = str(source)
    if name.endswith(".pt"):
        name = name[:-3]
    if os.sep in name or "/" in name or not RELEASE_NAME_PATTERN.match(name):
        raise ValueError(
            f"{source!r} is neither an existing file nor an official release name of the "
            "form '{model}-{dataset}-{train_type}' (model b0..b6 or M, e.g. 'b2-vox2-ptn', "
            "'M-vb2+vox2+cnc-ft_mix')"
        )
    cache = pathlib.Path(savedir) if savedir is not None else _DEFAULT_CACHE
    dest = cache / f"{name}.pt"
    if dest.is_file():
        return dest
    base = base_url or os.environ.get("REDIMNET_BASE_URL") or OFFICIAL_BASE_URL
    return _download(f"{base.rstrip('/')}/{name}.pt", dest)


def load_official_redimnet(source, savedir=None, base_url=None, map_location="cpu"):
    """Builds a :class:`ReDimNetEncoder` from an official ReDimNet checkpoint.

    Arguments
    ---------
    source : str or os.PathLike
        Path to an official ``.pt`` file or a release name such as
        ``b2-vox2-ptn`` / ``M-vb2+vox2+cnc-ft_mix`` (downloaded once into
        ``savedir``).
    savedir : str or os.PathLike, optional
        Download cache folder.
    base_url : str, optional
        Overrides the release URL prefix (see :func:`resolve_official_checkpoint`).
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    ReDimNetEncoder
        In ``eval()`` mode, with ``config`` set to the checkpoint's
        ``model_config`` (lists instead of tuples).

    Raises
    ------
    ValueError
        Not a checkpoint, bad release name, or a state dict that does not fit
        (the message names the keys).
    NotImplementedError
        Unsupported ``feat_type`` / ``tf_optimized_arch`` / pooling.

    Example
    -------
    >>> import tempfile, os
    >>> enc = ReDimNetEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)]))
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.pt")
    >>> torch.save({"model_config": enc.model_config, "state_dict": official_state_dict(enc)}, path)
    >>> loaded = load_official_redimnet(path)
    >>> loaded.embed_dim, loaded.training
    (192, False)
    """
    path = resolve_official_checkpoint(source, savedir, base_url)
    config, state_dict = read_official_checkpoint(path)
    encoder = ReDimNetEncoder.from_config(redimnet_config(config))
    fbank_state, lobe_state = convert_official_state_dict(encoder, state_dict)
    encoder.compute_features.load_state_dict(fbank_state, strict=True)
    encoder.embedding_model.load_state_dict(lobe_state, strict=True)
    return encoder.to(map_location).eval()
