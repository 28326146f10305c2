"""Loading the official ReDimNet checkpoints (IDRnD/ReDimNet releases).

A released file ``{model}-{dataset}-{train_type}.pt`` (e.g. ``b2-vox2-ptn.pt``)
is a dict ``{'model_config': ..., 'state_dict': ...}`` holding the keyword
arguments and the state dict of the official ``ReDimNetWrap``.
:func:`load_official_redimnet` builds an :class:`~speechbrain_mrl.model.encoder.MRLEncoder`
(no Matryoshka head) from the file's own config and checks that every tensor
is present and fits; :func:`save_official_checkpoint` writes an encoder back
in that format. The lobe's state-dict keys are the official ones; the
front-end buffers ``spec.*`` map to
:class:`~speechbrain_mrl.model.features.ReDimNetFbank` buffers (:data:`SPEC_KEY_MAP`).

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import os
import pathlib
import re

import torch

from speechbrain_mrl.utils.download import download
from speechbrain_mrl.utils.files import save_torch_atomic
from speechbrain_mrl.model.encoder import MRLEncoder
from speechbrain_mrl.model.redimnet import plain_config, redimnet_config

__all__ = [
    "load_official_redimnet",
    "save_official_checkpoint",
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


# ---------------------------------------------------------------------------
# key mapping
# ---------------------------------------------------------------------------
#: Official front-end buffer names -> ours (in :class:`ReDimNetFbank`).
SPEC_KEY_MAP = {
    "spec.torchfbank.1.flipped_filter": "preemph_filter",
    "spec.torchfbank.2.spectrogram.window": "window",
    "spec.torchfbank.2.mel_scale.fb": "mel_fb",
}


def official_state_dict(encoder):
    """An :class:`MRLEncoder`'s backbone weights under the official key names (``spec.*`` included).

    Example
    -------
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)]))
    >>> sorted(official_state_dict(enc))[-1]
    'spec.torchfbank.2.spectrogram.window'
    """
    sd = {k: v for k, v in encoder.embedding_model.state_dict().items()}
    fbank = encoder.compute_features.state_dict()
    for official, ours in SPEC_KEY_MAP.items():
        sd[official] = fbank[ours]
    return sd


def convert_official_state_dict(encoder, official_sd):
    """Splits and checks an official state dict for ``encoder``.

    Arguments
    ---------
    encoder : MRLEncoder
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
def read_official_checkpoint(path, family="ReDimNet"):
    """Reads an official checkpoint file safely (``weights_only=True``).

    Arguments
    ---------
    path : str or os.PathLike
        The ``.pt`` file.
    family : str
        ``ReDimNet`` or ``ReDimNet2``, for the messages.

    Returns
    -------
    tuple
        ``(model_config, state_dict)``; tuples in the config become lists.

    Raises
    ------
    ValueError
        If the file is unreadable or not a ``{'model_config', 'state_dict'}`` dict.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"{path} is not a readable {family} checkpoint: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(
            f"{path} is not an official {family} checkpoint: expected a dict with "
            f"'model_config' and 'state_dict', got {type(ckpt).__name__}"
        )
    missing = [k for k in ("model_config", "state_dict") if k not in ckpt]
    if missing:
        raise ValueError(
            f"{path} is not an official {family} checkpoint: missing {missing} "
            f"(found keys {sorted(map(str, ckpt))})"
        )
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{path}: 'model_config' and 'state_dict' must both be dicts")
    return plain_config(ckpt["model_config"]), ckpt["state_dict"]


#: How one family's releases are named, cached and downloaded (:func:`resolve_release`).
Releases = collections.namedtuple("Releases", ["family", "pattern", "form", "cache_env",
                                               "cache_name", "base_env", "base_url", "sha256"])

#: The official ReDimNet releases.
REDIMNET_RELEASES = Releases(
    "ReDimNet", RELEASE_NAME_PATTERN,
    "(model b0..b6 or M, e.g. 'b2-vox2-ptn', 'M-vb2+vox2+cnc-ft_mix')",
    "REDIMNET_CACHE", "redimnet", "REDIMNET_BASE_URL", OFFICIAL_BASE_URL, {})


def resolve_release(source, releases, savedir=None, base_url=None):
    """Local path of an official checkpoint of ``releases``, downloading a release name once.

    Arguments
    ---------
    source : str or os.PathLike
        Existing file path, or a release name ``{model}-{dataset}-{train_type}``
        (``.pt`` optional).
    releases : Releases
        The family's naming, cache and download address.
    savedir : str or os.PathLike, optional
        Cache folder (default ``$<cache_env>`` or ``~/.cache/speechbrain_mrl/<cache_name>``).
    base_url : str, optional
        Release URL prefix (default ``$<base_env>`` or the family's address); ``file://``
        URLs work too.

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
    if os.sep in name or "/" in name or not releases.pattern.match(name):
        raise ValueError(
            f"{source!r} is neither an existing file nor an official {releases.family} release "
            f"name of the form '{{model}}-{{dataset}}-{{train_type}}' {releases.form}"
        )
    default_cache = pathlib.Path.home() / ".cache" / "speechbrain_mrl" / releases.cache_name
    cache = pathlib.Path(savedir or os.environ.get(releases.cache_env) or default_cache)
    dest = cache / f"{name}.pt"
    if dest.is_file():
        return dest
    base = base_url or os.environ.get(releases.base_env) or releases.base_url
    return download(f"{base.rstrip('/')}/{name}.pt", dest, sha256=releases.sha256.get(name), hint=(
        f"download {name}.pt yourself and pass its path instead of the release name "
        f"(e.g. --pretrained_backbone /path/to/{name}.pt)"))


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
    return resolve_release(source, REDIMNET_RELEASES, savedir, base_url)


def load_official_redimnet(source, savedir=None, base_url=None, map_location="cpu"):
    """Builds an :class:`MRLEncoder` (no Matryoshka head) from an official ReDimNet checkpoint.

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
    MRLEncoder
        In ``eval()`` mode; its lobe's ``model_config`` is the checkpoint's
        (lists instead of tuples).

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
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)]))
    >>> path = save_official_checkpoint(enc, os.path.join(tempfile.mkdtemp(), "tiny.pt"))
    >>> loaded = load_official_redimnet(path)
    >>> loaded.embed_dim, loaded.training
    (192, False)
    """
    path = resolve_official_checkpoint(source, savedir, base_url)
    config, state_dict = read_official_checkpoint(path)
    encoder = MRLEncoder.from_config(redimnet_config(config))
    fbank_state, lobe_state = convert_official_state_dict(encoder, state_dict)
    encoder.compute_features.load_state_dict(fbank_state, strict=True)
    encoder.embedding_model.load_state_dict(lobe_state, strict=True)
    return encoder.to(map_location).eval()


def save_official_checkpoint(encoder, path):
    """Writes an :class:`MRLEncoder`'s backbone as an official-format checkpoint, atomically.

    Arguments
    ---------
    encoder : MRLEncoder
        Its front end and lobe are saved (a Matryoshka head is not part of the format).
    path : str or os.PathLike
        Output ``.pt`` file, loadable by :func:`load_official_redimnet` and by the
        official code.

    Returns
    -------
    pathlib.Path
    """
    state = {k: v.detach().cpu().clone() for k, v in official_state_dict(encoder).items()}
    return save_torch_atomic({"model_config": plain_config(encoder.model_config),
                              "state_dict": state}, path)
