"""speechbrain-mrl: Matryoshka speaker embeddings on a ReDimNet backbone for SpeechBrain."""
import importlib

#: The public names, imported on first use so that a light module (the speaker index,
#: the command line's help) does not load torch and SpeechBrain.
_HOME = {
    "MRLEncoder": "encoder",
    "MRLEncoderClassifier": "inference",
    "MatryoshkaAAMLoss": "losses",
    "MatryoshkaProjection": "matryoshka",
    "REDIMNET_PRESETS": "redimnet",
    "ReDimNet": "redimnet",
    "ReDimNetFbank": "features",
    "load_official_redimnet": "official",
    "save_official_checkpoint": "official",
    "write_model_folder": "packaging",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module 'speechbrain_mrl' has no attribute {name!r}")
    return getattr(importlib.import_module(f"speechbrain_mrl.{_HOME[name]}"), name)


def __dir__():
    return sorted(list(globals()) + list(_HOME))
