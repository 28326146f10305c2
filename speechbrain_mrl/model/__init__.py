"""The model: waveform in, every nested embedding size out.

* :mod:`~speechbrain_mrl.model.features`: ``ReDimNetFbank``, the official log-mel front end.
* :mod:`~speechbrain_mrl.model.redimnet`: the ``ReDimNet`` lobe and its presets.
* :mod:`~speechbrain_mrl.model.matryoshka`: ``MatryoshkaProjection``, the nested head.
* :mod:`~speechbrain_mrl.model.encoder`: ``MRLEncoder``, the one waveform -> embedding chain.
* :mod:`~speechbrain_mrl.model.sizes`: the one check of nested sizes and thresholds.
* :mod:`~speechbrain_mrl.model.official`: official ReDimNet checkpoints (load, save).
* :mod:`~speechbrain_mrl.model.folder`: the model folder on disk (write, read, fingerprint).
"""
