"""Inference: the interface, the one embedding path over many files, extraction.

* :mod:`~speechbrain_mrl.inference.interface`: ``MRLEncoderClassifier``.
* :mod:`~speechbrain_mrl.inference.embeddings`: ``embed_manifest``, the one batched path.
* :mod:`~speechbrain_mrl.inference.extract`: resumable sharded extraction, ``load_embeddings``.
* :mod:`~speechbrain_mrl.inference.scoring`: trial lists scored at every size.
* :mod:`~speechbrain_mrl.inference.diarization`: ``Diarizer``, who spoke when.
* :mod:`~speechbrain_mrl.inference.pyannote`: our models as pyannote.audio's speaker embedding.
"""
from speechbrain_mrl.utils.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "MRLEncoderClassifier": "interface", "AudioError": "interface",
    "embed_manifest": "embeddings", "load_embeddings": "extract", "Diarizer": "diarization",
})
__all__ = __dir__()
