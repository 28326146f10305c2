"""Writing a trained Matryoshka ReDimNet as a self-describing model folder.

:func:`write_model_folder` turns the weights of a trained model into a folder
that :class:`speechbrain_mrl.inference.interface.MRLEncoderClassifier` loads with
``from_hparams(source=folder)`` (and that ``speechbrain-mrl package`` turns
into a HuggingFace Hub repository):

* ``hyperparams.yaml``: HyperPyYAML building the front end
  (:class:`~speechbrain_mrl.model.features.ReDimNetFbank`, or for a ReDimNet2 the one
  of its ``feat_type``), the ReDimNet or ReDimNet2 lobe and the
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

The folder is written whole or not at all: the files go to a hidden sibling
folder that replaces the previous folder only once complete, so a failure
(a full disk, a kill) never leaves a new backbone beside an old head.

Authors
-------
 * speechbrain-mrl developers
"""
import hashlib
import importlib.resources
import json
import math
import os
import pathlib
import re
import shutil

from speechbrain_mrl.utils.files import (STAGING_MARKER, aside_folder, is_staging, remove_stale_staging,
                                   save_torch_atomic, staging_folder, swap_folder, write_text_atomic)
from speechbrain_mrl.model.sizes import check_thresholds
from speechbrain_mrl.model.features import ReDimNetFbank
from speechbrain_mrl.model.redimnet import ReDimNet, plain_config
from speechbrain_mrl.model.redimnet2 import ReDimNet2, is_redimnet2_config, redimnet2_frontend_args

__all__ = [
    "SHIPPED_MODELS",
    "model_parts",
    "resolve_model_source",
    "write_model_folder",
    "model_fingerprint",
    "render_hyperparams",
    "read_calibration",
    "shorten_paths",
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

#: Models installed with the package, by name: ``from_hparams(source=NAME)`` and every
#: ``--model_folder NAME`` load them offline (:func:`resolve_model_source`).
SHIPPED_MODELS = {"speechbrain-mrl/demo-sc": "pretrained/demo-sc"}

#: Files :func:`model_fingerprint` covers: all that decide embeddings and decisions.
FINGERPRINT_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "mrl_head.ckpt",
                     "calibration.json")

#: An absolute path in a command line (at its start or after a space, bracket, comma or quote).
_ABSOLUTE_PATH = re.compile(r"(?<![^\s\[{(,'\"])(?:/|~/|\.\./)[^\s\]}),'\"]*")

#: Template of the inference ``hyperparams.yaml`` (``{name}`` fields are filled
#: by :func:`render_hyperparams`), shipped as package data.
HYPERPARAMS_TEMPLATE = (
    importlib.resources.files("speechbrain_mrl.templates").joinpath("hyperparams.yaml").read_text()
)


def _yaml_block(kwargs, indent=4):
    """Mapping as indented YAML lines with JSON (flow-style YAML) values."""
    lines = []
    for key, value in kwargs.items():
        lines.append(" " * indent + f"{key}: {json.dumps(plain_config(value))}")
    return "\n".join(lines) if lines else " " * indent + "{}"


def _class_path(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def model_parts(model_config):
    """``(lobe class, front-end class, front-end kwargs)`` a model folder builds for a config.

    A ReDimNet2 ``model_config`` (:func:`~speechbrain_mrl.model.redimnet2.is_redimnet2_config`)
    gives :class:`~speechbrain_mrl.model.redimnet2.ReDimNet2` and the front end of its
    ``feat_type`` (:func:`~speechbrain_mrl.model.redimnet2.redimnet2_frontend_args`); any
    other gives :class:`~speechbrain_mrl.model.redimnet.ReDimNet` and
    :class:`~speechbrain_mrl.model.features.ReDimNetFbank`. The kwargs start with
    ``n_mels`` and ``hop_length``, then the ``spec_params`` the front end takes.

    Example
    -------
    >>> [c.__name__ for c in model_parts(dict(F=16, causal="none", feat_type="tf"))[:2]]
    ['ReDimNet2', 'TFMelFbank']
    >>> lobe, fbank, kwargs = model_parts(dict(F=16, hop_length=160, spec_params={}))
    >>> lobe.__name__, fbank.__name__, kwargs
    ('ReDimNet', 'ReDimNetFbank', {'n_mels': 16, 'hop_length': 160})
    """
    cfg = plain_config(dict(model_config))
    if is_redimnet2_config(cfg):
        fbank_cls, kwargs = redimnet2_frontend_args(cfg)
        return ReDimNet2, fbank_cls, kwargs
    kwargs = {"n_mels": cfg.get("F", 72), "hop_length": cfg.get("hop_length", 160)}
    kwargs.update(dict(cfg.get("spec_params") or {}))
    return ReDimNet, ReDimNetFbank, kwargs


def render_hyperparams(model_config, pool_dim, embed_dim, mrl_dims, thresholds=None,
                       sample_rate=16000, min_duration=0.0, short_duration=0.5,
                       recommended_dim=None):
    """Inference ``hyperparams.yaml`` text for a Matryoshka ReDimNet or ReDimNet2.

    The lobe and front end classes (and the front end's arguments) are those of
    :func:`model_parts`.

    Arguments
    ---------
    model_config : dict
        Official-style ReDimNet or ReDimNet2 ``model_config`` (``F``, ``C``,
        ``stages_setup``, ``hop_length``, ``spec_params``, ...).
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
        Shortest accepted input, seconds (0: what the front end can take).
    short_duration : float
        Shorter inputs are embedded with a warning, seconds.
    recommended_dim : int, optional
        The size with the best validation EER (see :func:`recommended_dim`).

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
    cfg = plain_config(dict(model_config))
    lobe_cls, fbank_cls, fbank_kwargs = model_parts(cfg)
    fbank = {"n_mels": fbank_kwargs.pop("n_mels"), "hop_length": fbank_kwargs.pop("hop_length"),
             "sample_rate": int(sample_rate)}
    fbank.update(fbank_kwargs)
    fbank["do_spec_aug"] = False
    lobe = dict(cfg)
    thr = check_thresholds(thresholds, list(mrl_dims))
    thr_text = "{" + ", ".join(f"{d}: {v!r}" for d, v in thr.items()) + "}"
    return HYPERPARAMS_TEMPLATE.format(
        sample_rate=int(sample_rate),
        min_duration=float(min_duration),
        short_duration=float(short_duration),
        recommended_dim="null" if recommended_dim is None else int(recommended_dim),
        embed_dim=int(embed_dim),
        mrl_dims=json.dumps([int(d) for d in mrl_dims]),
        thresholds=thr_text,
        fbank_class=_class_path(fbank_cls),
        fbank_kwargs=_yaml_block(fbank),
        lobe_name=lobe_cls.__name__,
        lobe_class=_class_path(lobe_cls),
        lobe_kwargs=_yaml_block(lobe),
        pool_dim=int(pool_dim),
    )


def _cpu_state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def recommended_dim(validation):
    """The size with the lowest validation EER, averaged over the lists (ties: the smaller).

    Arguments
    ---------
    validation : dict of str to dict
        ``{list name: {size: EER}}``, every list with the same sizes.

    Returns
    -------
    int

    Example
    -------
    >>> recommended_dim({"clips": {64: 7.9, 192: 8.3}, "long": {64: 1.2, 192: 0.6}})
    192
    >>> recommended_dim({"clips": {64: 7.9, 192: 8.3}})
    64
    """
    sizes = [sorted(int(d) for d in eers) for eers in validation.values()]
    if not sizes or any(s != sizes[0] for s in sizes) or not sizes[0]:
        raise ValueError(f"validation must give an EER for the same sizes on every list, got "
                         f"{ {name: sorted(e) for name, e in validation.items()} }")
    mean = {d: sum(float({int(k): v for k, v in eers.items()}[d]) for eers in validation.values())
            / len(validation) for d in sizes[0]}
    if not all(math.isfinite(v) for v in mean.values()):
        raise ValueError(f"validation EERs must be finite, got {validation}")
    return min(sizes[0], key=lambda d: (mean[d], d))


def write_model_folder(folder, encoder, thresholds=None, extra_info=None, validation=None):
    """Writes a model folder loadable by ``MRLEncoderClassifier.from_hparams``.

    The folder's names are the encoder's own: ``embedding_model.ckpt`` and
    ``mrl_head.ckpt`` hold the state dicts of ``encoder.embedding_model`` and
    ``encoder.mrl_head``, and ``hyperparams.yaml`` builds ``compute_features``,
    ``embedding_model`` and ``mrl_head``. The files are written into a hidden
    sibling folder (:func:`~speechbrain_mrl.utils.files.staging_folder`) that replaces ``folder`` only once
    complete (:func:`~speechbrain_mrl.utils.files.swap_folder`): a failure leaves
    the previous model folder as it was, never a mix of old and new files.

    Arguments
    ---------
    folder : str or os.PathLike
        Output folder: new, or a model folder (replaced as a whole). A folder
        holding other files is refused; a symlink to a folder is followed.
    encoder : MRLEncoder
        The trained encoder, with its Matryoshka head.
    thresholds : dict of int to float, optional
        Calibrated cosine decision threshold per size (e.g. EER thresholds on
        a validation trial list).
    extra_info : dict, optional
        JSON-serialisable information stored in ``model_info.json`` (training
        data, epochs, ...).
    validation : dict, optional
        ``{list name: {size: EER %}}`` on validation trial lists: stored as
        ``validation_EER`` in ``model_info.json``, with the
        :func:`recommended_dim` also in ``hyperparams.yaml``
        (``MRLEncoderClassifier.recommended_dim``).

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    FileExistsError
        ``folder`` holds files other than the model files (nothing written).
    NotADirectoryError
        ``folder`` is a file.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> enc.mrl_head = MatryoshkaProjection(enc.pool_dim, embed_dim=8, mrl_dims=[4, 8])
    >>> out = write_model_folder(tempfile.mkdtemp(), enc, thresholds={4: 0.3, 8: 0.4})
    >>> sorted(p.name for p in out.iterdir())
    ['calibration.json', 'embedding_model.ckpt', 'hyperparams.yaml', 'model_info.json', 'mrl_head.ckpt']
    """
    if getattr(encoder, "mrl_head", None) is None:
        raise ValueError("write_model_folder needs an MRLEncoder with a Matryoshka head (mrl_head)")
    lobe_cls, fbank_cls, _ = model_parts(encoder.model_config)
    built = (type(encoder.embedding_model), type(encoder.compute_features))
    if built != (lobe_cls, fbank_cls):
        raise ValueError(f"the encoder's {built[0].__name__} + {built[1].__name__} is not what its "
                         f"model_config builds ({lobe_cls.__name__} + {fbank_cls.__name__}): the "
                         "model folder would compute other embeddings")
    mrl_dims = encoder.mrl_dims
    thr = check_thresholds(thresholds, mrl_dims)
    info = {
        "model": f"{lobe_cls.__name__} + Matryoshka projection (speechbrain-mrl)",
        "embed_dim": encoder.embed_dim,
        "mrl_dims": mrl_dims,
        "pool_dim": encoder.pool_dim,
        "sample_rate": int(encoder.compute_features.sample_rate),
        "model_config": plain_config(encoder.model_config),
        "extra_info": plain_config(extra_info) if extra_info is not None else {},
    }
    recommended = None
    if validation:
        recommended = recommended_dim(validation)
        info["validation_EER"] = {name: {str(int(d)): float(v) for d, v in sorted(
            eers.items(), key=lambda kv: int(kv[0]))} for name, eers in validation.items()}
        info["recommended_dim"] = recommended
        if recommended not in mrl_dims:
            raise ValueError(f"validation sizes {sorted(validation[next(iter(validation))])} "
                             f"are not the model's mrl_dims={mrl_dims}")
    try:
        info_text = json.dumps(info, indent=2) + "\n"
    except TypeError as err:
        raise ValueError(f"extra_info must be JSON-serialisable: {err}") from err
    calibration = {
        "thresholds": {str(d): v for d, v in thr.items()},
        "score": "cosine",
        "note": "default decision threshold per embedding size (score > threshold: same speaker)",
    }
    given = pathlib.Path(folder)
    folder = pathlib.Path(os.path.realpath(os.path.expanduser(given)))
    aside = aside_folder(folder)
    if is_staging(aside) and not folder.exists():  # a write killed between its two renames
        os.replace(aside, folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give a folder for the model")
    foreign = sorted(p.name for p in folder.glob("*")
                     if p.name not in MODEL_FILES and p.name != STAGING_MARKER)
    if foreign:
        raise FileExistsError(f"{folder} holds files that are not a model's ({foreign[:5]}); "
                              "write the model to a new folder or over a model folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)  # left by killed writes
    staging = staging_folder(folder)
    try:
        save_torch_atomic(_cpu_state(encoder.embedding_model), staging / "embedding_model.ckpt")
        save_torch_atomic(_cpu_state(encoder.mrl_head), staging / "mrl_head.ckpt")
        write_text_atomic(staging / "hyperparams.yaml", render_hyperparams(
            encoder.model_config, encoder.pool_dim, encoder.embed_dim, mrl_dims, thr,
            sample_rate=info["sample_rate"], recommended_dim=recommended))
        write_text_atomic(staging / "calibration.json", json.dumps(calibration, indent=2) + "\n")
        write_text_atomic(staging / "model_info.json", info_text)
        swap_folder(staging, folder, aside)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return given


def resolve_model_source(source):
    """The folder of a shipped model's name (:data:`SHIPPED_MODELS`), else ``source`` unchanged.

    A local folder of the same name takes precedence, as any local path does.

    Example
    -------
    >>> resolve_model_source("speechbrain-mrl/demo-sc").name
    'demo-sc'
    >>> resolve_model_source("results/demo/mrl/model")
    'results/demo/mrl/model'
    """
    name = str(source)
    if name in SHIPPED_MODELS and not pathlib.Path(name).is_dir():
        return pathlib.Path(str(importlib.resources.files("speechbrain_mrl.model")
                                .joinpath(SHIPPED_MODELS[name])))
    return source


def model_fingerprint(folder):
    """SHA-256 of a model folder: the files that decide its embeddings and decisions.

    Covers :data:`FINGERPRINT_FILES` (``hyperparams.yaml``, both checkpoints and
    ``calibration.json``, each with its name and size), so that edited weights
    or thresholds are another model (a folder without ``calibration.json``, which loads
    with the hyperparameters' thresholds, has a fingerprint too). The scoring script records it with its
    results (``speechbrain-mrl package`` checks it), and speaker indexes and
    extracted embeddings record the model they were built with. Fingerprints
    recorded before ``calibration.json`` was covered differ: score, enrol or
    extract again.

    Arguments
    ---------
    folder : str or os.PathLike
        A folder written by :func:`write_model_folder`.

    Returns
    -------
    str
        Hex digest.

    Raises
    ------
    FileNotFoundError
        A covered file is missing.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> enc.mrl_head = MatryoshkaProjection(enc.pool_dim, embed_dim=8, mrl_dims=[4, 8])
    >>> out = write_model_folder(tempfile.mkdtemp(), enc, thresholds={4: 0.3, 8: 0.4})
    >>> before = model_fingerprint(out)
    >>> _ = write_model_folder(out, enc, thresholds={4: 0.3, 8: -1.0})
    >>> model_fingerprint(out) == before
    False
    """
    folder = resolve_model_source(folder)
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = pathlib.Path(folder) / name
        if name == "calibration.json" and not path.exists():
            digest.update(b"calibration.json\0absent\0")  # optional, as for loading the model
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a model folder: {name} is missing")
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def shorten_paths(text):
    """``text`` (a command line) with every absolute, ``~/`` or ``../`` path cut to its last part.

    For a training command shown in ``model_info.json`` and on a model card,
    which should not publish the trainer's folders.

    Arguments
    ---------
    text : str
        The command line.

    Returns
    -------
    str

    Example
    -------
    >>> shorten_paths("python train.py x.yaml noise: !ref /home/alice/noise lists: [/d/a.csv, b]")
    'python train.py x.yaml noise: !ref noise lists: [a.csv, b]'
    >>> shorten_paths("--noise ~/data/noise --rir ../corpora/rir --out results/x")
    '--noise noise --rir rir --out results/x'
    """
    return _ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group().rstrip("/")), str(text))


def read_calibration(path, mrl_dims):
    """Reads ``calibration.json`` -> ``{int dim: float threshold}``, checked.

    Arguments
    ---------
    path : str or os.PathLike
        The file.
    mrl_dims : list of int
        The model's sizes (a threshold for another size is an error).

    Returns
    -------
    dict of int to float

    Raises
    ------
    ValueError
        Naming the file: unreadable, not ``{"thresholds": {...}}``, or a
        threshold that :func:`~speechbrain_mrl.model.sizes.check_thresholds`
        refuses (NaN, Infinity, strings, unknown sizes).
    """
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read calibration file {path}: {err}") from err
    thr = data.get("thresholds", {}) if isinstance(data, dict) else None
    if not isinstance(thr, dict):
        raise ValueError(f"{path}: expected {{'thresholds': {{dim: value}}}}")
    return check_thresholds(thr, list(mrl_dims), str(path))
