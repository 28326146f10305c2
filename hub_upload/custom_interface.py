"""Custom interface of a speechbrain-mrl Matryoshka ReDimNet hub model.

For ``speechbrain.inference.interfaces.foreign_class``::

    from speechbrain.inference.interfaces import foreign_class
    model = foreign_class(source="<hub repo id or folder>", pymodule_file="custom_interface.py",
                          classname="CustomInterface", savedir="pretrained_models/mrl")
    emb = model.encode_file("speech.wav", target_dim=128)

This file is NOT self-contained: the model's ``hyperparams.yaml`` builds the
ReDimNet lobe, its front end and the Matryoshka head from the
``speechbrain_mrl`` package, so that package must be installed
(not on PyPI: ``pip install /path/to/speechbrain-mrl`` or ``pip install -e .`` in a clone of the
repository). ``CustomInterface`` is
:class:`speechbrain_mrl.inference.interface.MRLEncoderClassifier` itself; the default
verification thresholds come from the ``thresholds`` entry of
``hyperparams.yaml`` (a copy of ``calibration.json``).
"""
try:
    from speechbrain_mrl.inference.interface import MRLEncoderClassifier
except ImportError as err:  # pragma: no cover - exercised only without the package
    raise ImportError(
        "this SpeechBrain model needs the 'speechbrain_mrl' package (Matryoshka ReDimNet "
        "lobe, front end and interface): install it from a checkout of its repository "
        f"(pip install /path/to/speechbrain-mrl), then load the model again ({err})"
    ) from err


class CustomInterface(MRLEncoderClassifier):
    """Matryoshka speaker embeddings: ``encode_batch``/``encode_file``/``verify_batch``/
    ``verify_files`` take ``target_dim`` (see ``MRLEncoderClassifier``)."""
