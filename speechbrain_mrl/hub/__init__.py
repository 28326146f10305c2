"""Publishing: a hub folder from a trained model (model card, checked files) and its upload.

What a hub repository receives is templated in the repository's top-level ``hub_upload/``
(installed as :mod:`speechbrain_mrl.hub.templates`).
"""
