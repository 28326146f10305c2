"""Lowest layer: atomic files, downloads, safe checkpoints, verification metrics.

* :mod:`~speechbrain_mrl.utils.files`: ``atomic_output`` and folder staging (every file
  written complete, never through a link, as the umask says).
* :mod:`~speechbrain_mrl.utils.download`: bounded, retried, checksum-checked downloads.
* :mod:`~speechbrain_mrl.utils.checkpoints`: ``SafeCheckpointer`` (atomic saves, weights-only loads).
* :mod:`~speechbrain_mrl.utils.metrics`: EER, minDCF, trial scoring with score normalisation.
* :mod:`~speechbrain_mrl.utils.lazy`: the lazy re-exports of the packages' ``__init__``.

Nothing here imports another layer of the package.
"""
