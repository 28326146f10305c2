"""Writing a trained Matryoshka ReDimNet as a self-describing model folder.

:func:`write_model_folder` turns the weights of a trained model into a folder
that :class:`speechbrain_mrl.inference.MRLEncoderClassifier` loads with
``from_hparams(source=folder)`` (and that ``hub_upload/package_model.py`` turns
into a HuggingFace Hub repository):

* ``hyperparams.yaml``: HyperPyYAML building the front end
  (:class:`~speechbrain_mrl.features.ReDimNetFbank`), the ReDimNet lobe and the
  Matryoshka head, plus a ``Pretrainer`` whose loadables carry *no* paths, so
  the files are always collected from the ``source`` given to
  ``from_hparams`` (a local folder or a hub repo id; no ``pretrained_path`` to
  edit when the folder moves);
* ``embedding_model.ckpt`` / ``mrl_head.ckpt``: the state dicts;
* ``calibration.json``: the per-size decision thresholds (``{"thresholds":
  {"64": 0.41, ...}}``) calibrated at training time; a copy of the same
  thresholds is written into ``hyperparams.yaml`` (key ``thresholds``) so that
  loaders which only read the YAML (``foreign_class``) get the same defaults;
* ``model_info.json``: sizes, model config and free-form ``extra_info``.

Authors
-------
 * speechbrain-mrl developers
"""
import json
import math
import pathlib

import torch

__all__ = [
    "write_model_folder",
    "render_hyperparams",
    "read_calibration",
    "HYPERPARAMS_TEMPLATE",
    "MODEL_FILES",
]

#: Files written by :func:`write_model_folder`.
MODEL_FILES = (
    "hyperparams.yaml",
    "embedding_model.ckpt",
    "mrl_head.ckpt",
    "calibration.json",
    "model_info.json",
)

#: Template of the inference ``hyperparams.yaml`` (``{name}`` fields are
#: filled by :func:`render_hyperparams`; ``hparams/hyperparams_template.yaml``
#: at the repository top level holds the same text).
HYPERPARAMS_TEMPLATE = """\
# ############################################################################
# Inference hyperparameters of a Matryoshka ReDimNet speaker-embedding model
# (speechbrain-mrl). Written by speechbrain_mrl.packaging.write_model_folder.
# Load with:
#   from speechbrain_mrl.inference import MRLEncoderClassifier
#   model = MRLEncoderClassifier.from_hparams(source="<this folder or hub id>")
#   emb = model.encode_file("speech.wav", target_dim=128)
# ############################################################################

sample_rate: {sample_rate}
# utterances shorter than this (seconds) are refused by the interface
min_duration: {min_duration}

# Nested (Matryoshka) sizes: the first d coordinates are a size-d embedding.
embed_dim: {embed_dim}
mrl_dims: {mrl_dims}

# Default verification thresholds per size (cosine), calibrated at training
# time; same values as calibration.json.
thresholds: {thresholds}

compute_features: !new:speechbrain_mrl.features.ReDimNetFbank
{fbank_kwargs}

embedding_model: !new:speechbrain_mrl.redimnet.ReDimNet
{lobe_kwargs}

mrl_head: !new:speechbrain_mrl.matryoshka.MatryoshkaProjection
    input_size: {pool_dim}
    embed_dim: !ref <embed_dim>
    mrl_dims: !ref <mrl_dims>

# Resamples any input rate to sample_rate and averages channels to mono.
audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: !ref <sample_rate>

modules:
    compute_features: !ref <compute_features>
    embedding_model: !ref <embedding_model>
    mrl_head: !ref <mrl_head>

# No paths: files are collected from the source given to from_hparams.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mrl_head: !ref <mrl_head>
"""


def _plain(value):
    """Tuples -> lists, tensors/numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _yaml_block(kwargs, indent=4):
    """Mapping as indented YAML lines with JSON (flow-style YAML) values."""
    lines = []
    for key, value in kwargs.items():
        lines.append(" " * indent + f"{key}: {json.dumps(_plain(value))}")
    return "\n".join(lines) if lines else " " * indent + "{}"


def _check_thresholds(thresholds, mrl_dims):
    """Validated ``{int dim: float}`` (every dim in ``mrl_dims``, finite values)."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds must be a dict {{dim: threshold}}, got {type(thresholds).__name__}")
    out = {}
    for dim, thr in thresholds.items():
        try:
            d = int(dim)
        except (TypeError, ValueError):
            raise ValueError(f"threshold key {dim!r} is not an embedding size") from None
        if d not in mrl_dims:
            raise ValueError(f"threshold given for size {d}, which is not in mrl_dims={mrl_dims}")
        thr = float(_plain(thr))
        if not math.isfinite(thr):
            raise ValueError(f"threshold for size {d} is not finite: {thr}")
        out[d] = thr
    return dict(sorted(out.items()))


def render_hyperparams(model_config, pool_dim, embed_dim, mrl_dims, thresholds=None,
                       sample_rate=16000, min_duration=0.5):
    """Inference ``hyperparams.yaml`` text for a Matryoshka ReDimNet.

    Arguments
    ---------
    model_config : dict
        Official-style ReDimNet ``model_config`` (``F``, ``C``, ``stages_setup``,
        ``hop_length``, ``spec_params``, ...).
    pool_dim : int
        Size of the pooled statistics (input of the Matryoshka head).
    embed_dim : int
        Full Matryoshka embedding size.
    mrl_dims : list of int
        Nested sizes.
    thresholds : dict of int to float, optional
        Default verification threshold per size.
    sample_rate : int
        Model sample rate.
    min_duration : float
        Shortest accepted input, seconds.

    Returns
    -------
    str

    Example
    -------
    >>> from hyperpyyaml import load_hyperpyyaml
    >>> cfg = dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)], group_divisor=2,
    ...            embed_dim=8, hop_length=160, spec_params={})
    >>> text = render_hyperparams(cfg, pool_dim=128, embed_dim=8, mrl_dims=[4, 8],
    ...                           thresholds={4: 0.3, 8: 0.35})
    >>> hp = load_hyperpyyaml(text)
    >>> hp["mrl_head"].mrl_dims, hp["thresholds"]
    ([4, 8], {4: 0.3, 8: 0.35})
    """
    cfg = _plain(dict(model_config))
    spec_params = dict(cfg.get("spec_params") or {})
    fbank = {"n_mels": cfg.get("F", 72), "hop_length": cfg.get("hop_length", 160),
             "sample_rate": int(sample_rate)}
    fbank.update(spec_params)
    fbank["do_spec_aug"] = False
    lobe = dict(cfg)
    thr = _check_thresholds(thresholds, list(mrl_dims))
    thr_text = "{" + ", ".join(f"{d}: {v!r}" for d, v in thr.items()) + "}"
    return HYPERPARAMS_TEMPLATE.format(
        sample_rate=int(sample_rate),
        min_duration=float(min_duration),
        embed_dim=int(embed_dim),
        mrl_dims=json.dumps([int(d) for d in mrl_dims]),
        thresholds=thr_text,
        fbank_kwargs=_yaml_block(fbank),
        lobe_kwargs=_yaml_block(lobe),
        pool_dim=int(pool_dim),
    )


def _pool_dim_from_head(mrl_head_state):
    for key in ("norm.weight", "norm.running_mean", "linear.weight"):
        if key in mrl_head_state:
            t = mrl_head_state[key]
            return int(t.shape[-1] if key == "linear.weight" else t.shape[0])
    raise ValueError(
        "mrl_head_state is not a MatryoshkaProjection state dict: expected keys "
        f"'norm.*' and 'linear.*', got {sorted(mrl_head_state)[:8]}"
    )


def write_model_folder(folder, model_config, embedding_model_state, mrl_head_state, embed_dim,
                       mrl_dims, thresholds=None, extra_info=None):
    """Writes a model folder loadable by ``MRLEncoderClassifier.from_hparams``.

    Arguments
    ---------
    folder : str or os.PathLike
        Output folder (created; existing model files are replaced).
    model_config : dict
        Official-style ReDimNet ``model_config`` of the lobe.
    embedding_model_state : dict
        ``state_dict()`` of the :class:`~speechbrain_mrl.redimnet.ReDimNet` lobe.
    mrl_head_state : dict
        ``state_dict()`` of the
        :class:`~speechbrain_mrl.matryoshka.MatryoshkaProjection` head.
    embed_dim : int
        Full embedding size of the head.
    mrl_dims : list of int
        Nested sizes of the head.
    thresholds : dict of int to float, optional
        Calibrated cosine decision threshold per size (e.g. EER thresholds on
        a validation trial list).
    extra_info : dict, optional
        JSON-serialisable information stored in ``model_info.json`` (training
        data, epochs, validation EER, ...).

    Returns
    -------
    pathlib.Path
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mrl.redimnet import ReDimNet
    >>> from speechbrain_mrl.matryoshka import MatryoshkaProjection
    >>> cfg = dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)], group_divisor=2,
    ...            embed_dim=8, hop_length=160, spec_params={})
    >>> lobe = ReDimNet(**cfg)
    >>> head = MatryoshkaProjection(lobe.pool_dim, embed_dim=8, mrl_dims=[4, 8])
    >>> out = write_model_folder(tempfile.mkdtemp(), cfg, lobe.state_dict(), head.state_dict(),
    ...                          8, [4, 8], thresholds={4: 0.3, 8: 0.4})
    >>> sorted(p.name for p in out.iterdir())
    ['calibration.json', 'embedding_model.ckpt', 'hyperparams.yaml', 'model_info.json', 'mrl_head.ckpt']
    """
    if not isinstance(model_config, dict):
        raise ValueError(f"model_config must be a dict, got {type(model_config).__name__}")
    for name, sd in (("embedding_model_state", embedding_model_state),
                     ("mrl_head_state", mrl_head_state)):
        if not isinstance(sd, dict) or not sd:
            raise ValueError(f"{name} must be a non-empty state dict")
    mrl_dims = [int(d) for d in mrl_dims]
    embed_dim = int(embed_dim)
    if not mrl_dims or mrl_dims[-1] != embed_dim or mrl_dims != sorted(set(mrl_dims)):
        raise ValueError(
            f"mrl_dims must be increasing and end with embed_dim={embed_dim}, got {mrl_dims}"
        )
    head_out = mrl_head_state.get("linear.weight")
    if head_out is not None and int(head_out.shape[0]) != embed_dim:
        raise ValueError(
            f"mrl_head_state projects to {int(head_out.shape[0])} dims, but embed_dim={embed_dim}"
        )
    pool_dim = _pool_dim_from_head(mrl_head_state)
    thr = _check_thresholds(thresholds, mrl_dims)

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = render_hyperparams(model_config, pool_dim, embed_dim, mrl_dims, thr)
    (folder / "hyperparams.yaml").write_text(text)

    def _cpu(sd):
        return {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                for k, v in sd.items()}

    torch.save(_cpu(embedding_model_state), folder / "embedding_model.ckpt")
    torch.save(_cpu(mrl_head_state), folder / "mrl_head.ckpt")
    calibration = {
        "thresholds": {str(d): v for d, v in thr.items()},
        "score": "cosine",
        "note": "default decision threshold per embedding size (score > threshold: same speaker)",
    }
    (folder / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    info = {
        "model": "ReDimNet + Matryoshka projection (speechbrain-mrl)",
        "embed_dim": embed_dim,
        "mrl_dims": mrl_dims,
        "pool_dim": pool_dim,
        "sample_rate": 16000,
        "model_config": _plain(model_config),
        "extra_info": _plain(extra_info) if extra_info is not None else {},
    }
    try:
        info_text = json.dumps(info, indent=2)
    except TypeError as err:
        raise ValueError(f"extra_info must be JSON-serialisable: {err}") from err
    (folder / "model_info.json").write_text(info_text + "\n")
    return folder


def read_calibration(path):
    """Reads ``calibration.json`` -> ``{int dim: float threshold}``.

    Arguments
    ---------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of int to float
    """
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read calibration file {path}: {err}") from err
    thr = data.get("thresholds", {}) if isinstance(data, dict) else None
    if not isinstance(thr, dict):
        raise ValueError(f"{path}: expected {{'thresholds': {{dim: value}}}}")
    return {int(k): float(v) for k, v in thr.items()}
