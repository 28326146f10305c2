"""Speaker search: Matryoshka funnels over FAISS or Qdrant, open-set thresholds.

* :mod:`~speechbrain_mrl.search.index`: ``SpeakerIndex`` (FAISS) and ``SpeakerIndexBase``.
* :mod:`~speechbrain_mrl.search.folder`: an index folder on disk, its locks and errors.
* :mod:`~speechbrain_mrl.search.qdrant`: ``QdrantSpeakerIndex``.
* :mod:`~speechbrain_mrl.search.locations`: ``open_index``, ``copy_index`` (folders and collections).
* :mod:`~speechbrain_mrl.search.thresholds`: calibration, cascade verification, open-set rates.
* :mod:`~speechbrain_mrl.search.cosine`: the prefix cosine they share.

Imports without torch.
"""
from speechbrain_mrl.utils.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "SpeakerIndex": "index", "SpeakerIndexBase": "index",
    "IndexLockedError": "folder", "IndexChangedError": "folder", "IndexExistsError": "folder",
    "calibrate_thresholds": "thresholds", "cascade_verify": "thresholds",
    "calibrate_margin": "thresholds", "open_set_rates": "thresholds",
    "QdrantSpeakerIndex": "qdrant",
    "open_index": "locations", "index_exists": "locations", "index_for_model": "locations",
    "writing_index": "locations", "copy_index": "locations",
})
__all__ = __dir__()
