"""speechbrain-mrl: Matryoshka speaker embeddings on a ReDimNet backbone for SpeechBrain."""
from speechbrain_mrl.encoder import MRLEncoder
from speechbrain_mrl.features import ReDimNetFbank
from speechbrain_mrl.inference import MRLEncoderClassifier
from speechbrain_mrl.losses import MatryoshkaAAMLoss
from speechbrain_mrl.matryoshka import MatryoshkaProjection
from speechbrain_mrl.official import load_official_redimnet, save_official_checkpoint
from speechbrain_mrl.packaging import write_model_folder
from speechbrain_mrl.redimnet import REDIMNET_PRESETS, ReDimNet

__all__ = [
    "MRLEncoder",
    "MRLEncoderClassifier",
    "MatryoshkaAAMLoss",
    "MatryoshkaProjection",
    "REDIMNET_PRESETS",
    "ReDimNet",
    "ReDimNetFbank",
    "load_official_redimnet",
    "save_official_checkpoint",
    "write_model_folder",
]
