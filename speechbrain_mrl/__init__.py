"""speechbrain-mrl: Matryoshka speaker embeddings on a ReDimNet backbone for SpeechBrain."""
from speechbrain_mrl.matryoshka import MatryoshkaProjection  # noqa: F401
from speechbrain_mrl.losses import MatryoshkaAAMLoss  # noqa: F401
from speechbrain_mrl.features import ReDimNetFbank  # noqa: F401
from speechbrain_mrl.redimnet import REDIMNET_PRESETS, ReDimNet  # noqa: F401
from speechbrain_mrl.official import ReDimNetEncoder, load_official_redimnet  # noqa: F401
from speechbrain_mrl.packaging import write_model_folder  # noqa: F401
from speechbrain_mrl.inference import MRLEncoderClassifier  # noqa: F401
