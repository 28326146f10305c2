"""Our model folders as pyannote.audio's speaker-embedding model.

pyannote.audio (4.0) loads SpeechBrain speaker models through
``SpeechBrainPretrainedSpeakerEmbedding``, which passes ``token=`` and a ``torch.device`` to
``EncoderClassifier.from_hparams``: SpeechBrain 1.1 refuses both, for every SpeechBrain
model. :func:`pyannote_embedding` gives the same pyannote object (``sample_rate``,
``dimension``, ``metric``, ``min_num_samples``, ``__call__(waveforms, masks)``) over
SpeechBrain's own ``EncoderClassifier`` on a model folder of this package, so pyannote code
that takes a speaker-embedding model (e.g. a diarization pipeline's ``_embedding``) runs
on the full-size Matryoshka embedding. Needs ``pip install "speechbrain-mrl[pyannote]"``.
"""
import torch

__all__ = ["pyannote_embedding"]


def pyannote_embedding(source, device="cpu"):
    """A pyannote.audio speaker-embedding model of a model folder, hub id or shipped name.

    Arguments
    ---------
    source : str or os.PathLike
        What :func:`~speechbrain_mrl.inference.interface.load_model` takes.
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    pyannote.audio.pipelines.speaker_verification.SpeechBrainPretrainedSpeakerEmbedding
    """
    from pyannote.audio.pipelines.speaker_verification import SpeechBrainPretrainedSpeakerEmbedding
    from speechbrain.inference.classifiers import EncoderClassifier

    from speechbrain_mrl.model.folder import resolve_model_source

    class MatryoshkaEmbedding(SpeechBrainPretrainedSpeakerEmbedding):
        """pyannote's SpeechBrain embedding, loaded the way SpeechBrain 1.1 accepts."""

        def __init__(self, source, device):
            super(SpeechBrainPretrainedSpeakerEmbedding, self).__init__()
            self.embedding, self.revision, self.token, self.cache_dir = str(source), None, None, None
            self.to(torch.device(device))

        def to(self, device):
            self.classifier_ = EncoderClassifier.from_hparams(source=self.embedding,
                                                              run_opts={"device": str(device)})
            self.device = device
            return self

    return MatryoshkaEmbedding(resolve_model_source(source), device)
