"""speechbrain-mrl: Matryoshka speaker embeddings on a ReDimNet backbone for SpeechBrain."""
from speechbrain_mrl.matryoshka import MatryoshkaProjection  # noqa: F401
from speechbrain_mrl.losses import MatryoshkaAAMLoss  # noqa: F401
