"""Training: SpeechBrain ``Brain``, losses, head initialisation, augmentation, pictures.

* :mod:`~speechbrain_mrl.training.brain`: ``MRLBrain``, ``dataio_prep``, ``train_and_evaluate``
  (the recipes' ``train.py`` are thin calls to them).
* :mod:`~speechbrain_mrl.training.losses`: ``MatryoshkaAAMLoss``.
* :mod:`~speechbrain_mrl.training.head_init`: the head from the backbone's embedding layer.
* :mod:`~speechbrain_mrl.training.augment`, :mod:`~speechbrain_mrl.training.schedulers`,
  :mod:`~speechbrain_mrl.training.loggers`, :mod:`~speechbrain_mrl.training.plots`.
"""
