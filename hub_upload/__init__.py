"""What a HuggingFace Hub repository of a speechbrain-mrl model receives, as templates.

Installed as ``speechbrain_mrl.templates``: ``hyperparams.yaml`` (every model folder's
inference hyperparameters), ``custom_interface.py`` and ``model_card.md``. ``upload.py`` is a
thin script over ``speechbrain-mrl package``.
"""
