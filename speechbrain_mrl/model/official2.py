"""Loading the official ReDimNet2 checkpoints (PalabraAI/redimnet2 releases).

A released file ``{model}-{dataset}-{train_type}.pt`` (e.g. ``b2-vox2-lm.pt``,
``b6-vb2+vox2_v0-lm.pt``) is a dict ``{'model_config': ..., 'state_dict': ...}``
holding the keyword arguments and the state dict of the official
``ReDimNet2Wrap``. :func:`load_official_redimnet2` builds an
:class:`~speechbrain_mrl.model.encoder.MRLEncoder` (front end + ReDimNet2 lobe,
no Matryoshka head) from the file's own config and checks that every tensor is
present and fits; :func:`save_official_redimnet2` writes one back in that
format. The lobe's state-dict keys are the official ones; the front end's
``spec.*`` buffers map to those of
:class:`~speechbrain_mrl.model.features.ReDimNetFbank` (``feat_type='pt'``) or
:class:`~speechbrain_mrl.model.features_tf.TFMelFbank` (``feat_type='tf'``).

:func:`load_official_backbone` and :func:`save_official_backbone` take either family: a
local file is built as the ReDimNet or ReDimNet2 its ``model_config`` describes (the
frozen-backbone recipes' ``pretrained_backbone``), a release name is looked up among the
releases of the family named.

Authors
-------
 * speechbrain-mrl developers
"""
import pathlib
import re

import torch

from speechbrain_mrl.utils.files import save_torch_atomic
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.features_tf import TFMelFbank
from speechbrain_mrl.model.official import (Releases, load_official_redimnet, read_official_checkpoint,
                                           resolve_release, save_official_checkpoint)
from speechbrain_mrl.model.redimnet import plain_config
from speechbrain_mrl.model.redimnet2 import (ReDimNet2, is_redimnet2_config, redimnet2_config,
                                             redimnet2_frontend)

__all__ = [
    "load_official_backbone",
    "save_official_backbone",
    "load_official_redimnet2",
    "save_official_redimnet2",
    "read_official_redimnet2",
    "resolve_official_redimnet2",
    "redimnet2_encoder",
    "official2_state_dict",
    "OFFICIAL2_BASE_URL",
    "RELEASE2_NAME_PATTERN",
    "RELEASE2_SHA256",
]

#: Where the official releases are downloaded from (``{base}/{name}.pt``).
#: Overridable per call (``base_url=``) or with ``$REDIMNET2_BASE_URL``.
OFFICIAL2_BASE_URL = "https://github.com/PalabraAI/redimnet2/releases/download/v1.0.0"
#: ``{model}-{dataset}-{train_type}``, e.g. ``b2-vox2-lm`` or ``b6-vb2+vox2_v0-ptn``.
RELEASE2_NAME_PATTERN = re.compile(r"^(b[0-6])-([A-Za-z0-9_+]+)-([A-Za-z0-9_]+)$")
#: Known SHA-256 of released files by name; a download of a listed name that differs is
#: refused. Empty: no checksum of the releases has been recorded yet.
RELEASE2_SHA256 = {}
#: The official ReDimNet2 releases (:func:`~speechbrain_mrl.model.official.resolve_release`).
REDIMNET2_RELEASES = Releases(
    "ReDimNet2", RELEASE2_NAME_PATTERN, "(model b0..b6, e.g. 'b2-vox2-lm', 'b6-vb2+vox2_v0-lm')",
    "REDIMNET2_CACHE", "redimnet2", "REDIMNET2_BASE_URL", OFFICIAL2_BASE_URL, RELEASE2_SHA256)
#: Official ``spec.*`` key -> buffer of :class:`ReDimNetFbank` (``feat_type='pt'``).
PT_SPEC_KEYS = {
    "spec.torchfbank.1.flipped_filter": "preemph_filter",
    "spec.torchfbank.2.spectrogram.window": "window",
    "spec.torchfbank.2.mel_scale.fb": "mel_fb",
}


def _spec_keys(frontend):
    return TFMelFbank.OFFICIAL_KEYS if isinstance(frontend, TFMelFbank) else PT_SPEC_KEYS


def redimnet2_encoder(config="r2-b2", mrl_head=None):
    """An :class:`MRLEncoder` (front end + :class:`ReDimNet2`) from a preset or ``model_config``.

    Example
    -------
    >>> enc = redimnet2_encoder(dict(F=16, C=4, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)],
    ...                              embed_dim=8)).eval()
    >>> enc(torch.randn(2, 8000), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 8])
    """
    cfg = redimnet2_config(config)
    lobe = ReDimNet2(**cfg)
    return MRLEncoder(redimnet2_frontend(cfg), lobe, mrl_head)


def official2_state_dict(encoder):
    """A ReDimNet2 :class:`MRLEncoder`'s weights under the official key names (``spec.*`` included).

    Example
    -------
    >>> enc = redimnet2_encoder(dict(F=16, C=4, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)]))
    >>> sorted(official2_state_dict(enc))[-1]
    'spec.torchfbank.2.spectrogram.window'
    """
    sd = dict(encoder.embedding_model.state_dict())
    fbank = encoder.compute_features.state_dict()
    for official, ours in _spec_keys(encoder.compute_features).items():
        sd[official] = fbank[ours]
    return sd


def _split_state_dict(encoder, official_sd):
    """``(fbank_state, lobe_state)`` of an official state dict, checked against ``encoder``."""
    expected = {k: tuple(v.shape) for k, v in official2_state_dict(encoder).items()}
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
    problems = [f"{what}: {keys}" for what, keys in (("missing keys", missing),
                                                      ("unexpected keys", unexpected),
                                                      ("mismatched shapes", mismatched)) if keys]
    if problems:
        raise ValueError("the state dict does not fit the ReDimNet2 built from its model_config; "
                         + "; ".join(problems))
    spec = _spec_keys(encoder.compute_features)
    fbank_state = {ours: official_sd[off] for off, ours in spec.items()}
    lobe_state = {k: v for k, v in official_sd.items() if k not in spec}
    return fbank_state, lobe_state


def read_official_redimnet2(path):
    """Reads an official ReDimNet2 checkpoint safely: ``(model_config, state_dict)``
    (:func:`~speechbrain_mrl.model.official.read_official_checkpoint`)."""
    return read_official_checkpoint(path, "ReDimNet2")


def resolve_official_redimnet2(source, savedir=None, base_url=None):
    """Local path of an official ReDimNet2 checkpoint, downloading a release name once.

    Arguments
    ---------
    source : str or os.PathLike
        Existing file path, or a release name ``{model}-{dataset}-{train_type}``
        (``.pt`` optional), e.g. ``b2-vox2-lm``.
    savedir : str or os.PathLike, optional
        Cache folder (default ``$REDIMNET2_CACHE`` or ``~/.cache/speechbrain_mrl/redimnet2``).
    base_url : str, optional
        Release URL prefix (default ``$REDIMNET2_BASE_URL`` or :data:`OFFICIAL2_BASE_URL`).

    Returns
    -------
    pathlib.Path
    """
    return resolve_release(source, REDIMNET2_RELEASES, savedir, base_url)


def load_official_redimnet2(source, savedir=None, base_url=None, map_location="cpu"):
    """Builds an :class:`MRLEncoder` (no Matryoshka head) from an official ReDimNet2 checkpoint.

    Arguments
    ---------
    source : str or os.PathLike
        Path to an official ``.pt`` file (read offline) or a release name such as
        ``b2-vox2-lm`` (downloaded once into ``savedir``).
    savedir : str or os.PathLike, optional
        Download cache folder.
    base_url : str, optional
        Overrides the release URL prefix (see :func:`resolve_official_redimnet2`).
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    MRLEncoder
        In ``eval()`` mode; its lobe's ``model_config`` is the checkpoint's (completed
        with the official defaults, lists instead of tuples).

    Raises
    ------
    ValueError
        Not a checkpoint, bad release name, an option this code cannot build, or a
        state dict that does not fit (the message names the keys).

    Example
    -------
    >>> import tempfile, os
    >>> enc = redimnet2_encoder(dict(F=16, C=4, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)]))
    >>> path = save_official_redimnet2(enc, os.path.join(tempfile.mkdtemp(), "tiny.pt"))
    >>> loaded = load_official_redimnet2(path)
    >>> loaded.embed_dim, loaded.training, type(loaded.embedding_model).__name__
    (192, False, 'ReDimNet2')
    """
    path = resolve_official_redimnet2(source, savedir, base_url)
    config, state_dict = read_official_redimnet2(path)
    encoder = redimnet2_encoder(config)
    fbank_state, lobe_state = _split_state_dict(encoder, state_dict)
    encoder.compute_features.load_state_dict(fbank_state, strict=True)
    encoder.embedding_model.load_state_dict(lobe_state, strict=True)
    return encoder.to(map_location).eval()


def save_official_redimnet2(encoder, path):
    """Writes a ReDimNet2 :class:`MRLEncoder`'s front end and lobe as an official checkpoint.

    Returns
    -------
    pathlib.Path
    """
    state = {k: v.detach().cpu().clone() for k, v in official2_state_dict(encoder).items()}
    return save_torch_atomic({"model_config": plain_config(encoder.model_config),
                              "state_dict": state}, path)


#: Loader of the official releases of each family (:func:`load_official_backbone`).
FAMILIES = {"redimnet": load_official_redimnet, "redimnet2": load_official_redimnet2}


def load_official_backbone(source, savedir=None, base_url=None, map_location="cpu",
                           family="redimnet"):
    """An :class:`MRLEncoder` (no Matryoshka head) from an official ReDimNet or ReDimNet2 checkpoint.

    A local file is built as the family its ``model_config`` describes
    (:func:`~speechbrain_mrl.model.redimnet2.is_redimnet2_config`: ReDimNet2 configs hold
    ``causal``), whatever ``family`` says; a release name, which does not tell the
    families apart (``b2-vox2-ptn`` could name either), is a release of ``family``.

    Arguments
    ---------
    source : str or os.PathLike
        Path to an official ``.pt`` file (read offline), or a release name.
    savedir : str or os.PathLike, optional
        Download cache folder.
    base_url : str, optional
        Overrides the family's release URL prefix.
    map_location : str or torch.device
        Device of the returned model.
    family : str
        ``"redimnet"`` (:func:`~speechbrain_mrl.model.official.load_official_redimnet`) or
        ``"redimnet2"`` (:func:`load_official_redimnet2`): whose release a name is.

    Returns
    -------
    MRLEncoder
        In ``eval()`` mode.

    Raises
    ------
    ValueError
        An unknown ``family``, or what the family's loader refuses.

    Example
    -------
    >>> import tempfile, os
    >>> enc = redimnet2_encoder(dict(F=16, C=4, stages_setup=[((1, 2), 1, 1, [(3, 3)], 4)]))
    >>> path = save_official_backbone(enc, os.path.join(tempfile.mkdtemp(), "tiny.pt"))
    >>> type(load_official_backbone(path).embedding_model).__name__
    'ReDimNet2'
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    if pathlib.Path(source).is_file():
        try:
            config, _ = read_official_redimnet2(source)
        except ValueError:
            config = None  # not a checkpoint: the family's loader says what is wrong
        if config is not None:
            family = "redimnet2" if is_redimnet2_config(config) else "redimnet"
    return FAMILIES[family](source, savedir=savedir, base_url=base_url, map_location=map_location)


def save_official_backbone(encoder, path):
    """Writes an :class:`MRLEncoder`'s front end and lobe as an official checkpoint of its family.

    :func:`save_official_redimnet2` for a ReDimNet2 lobe, else
    :func:`~speechbrain_mrl.model.official.save_official_checkpoint`; both read back with
    :func:`load_official_backbone`.

    Returns
    -------
    pathlib.Path
    """
    if isinstance(encoder.embedding_model, ReDimNet2):
        return save_official_redimnet2(encoder, path)
    return save_official_checkpoint(encoder, path)
