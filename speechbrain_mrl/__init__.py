"""speechbrain-mrl: Matryoshka speaker embeddings on a ReDimNet backbone for SpeechBrain.

The layers, each importing only from those before it: :mod:`~speechbrain_mrl.utils`,
:mod:`~speechbrain_mrl.data`, :mod:`~speechbrain_mrl.model`, :mod:`~speechbrain_mrl.training`,
:mod:`~speechbrain_mrl.inference`, :mod:`~speechbrain_mrl.search` and
:mod:`~speechbrain_mrl.export`, :mod:`~speechbrain_mrl.hub`, :mod:`~speechbrain_mrl.cli`.
"""
from speechbrain_mrl.utils.lazy import lazy_exports

#: The public names, imported on first use so that a light module (the speaker index,
#: the command line's help) does not load torch and SpeechBrain.
__getattr__, __dir__ = lazy_exports(__name__, {
    "MRLEncoder": "model.encoder",
    "MRLEncoderClassifier": "inference.interface",
    "MatryoshkaAAMLoss": "training.losses",
    "MatryoshkaProjection": "model.matryoshka",
    "REDIMNET_PRESETS": "model.redimnet",
    "ReDimNet": "model.redimnet",
    "ReDimNetFbank": "model.features",
    "load_official_redimnet": "model.official",
    "save_official_checkpoint": "model.official",
    "write_model_folder": "model.folder",
})
__all__ = __dir__()
