"""Waveform augmentation of the training recipe, built from HyperPyYAML.

Authors
-------
 * speechbrain-mrl developers
"""
import logging
import pathlib

from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import AddNoise, AddReverb

from speechbrain_mrl.data.audio import AUDIO_EXTENSIONS, AudioError, audio_info
from speechbrain_mrl.data.manifests import write_manifest

__all__ = ["build_augmenter", "audio_csv"]

logger = logging.getLogger(__name__)


def audio_csv(source, csv_path):
    """The CSV (``ID,duration,wav``) that AddNoise/AddReverb read.

    Arguments
    ---------
    source : str or os.PathLike
        A CSV file (returned as it is) or a folder, whose readable audio files
        (searched recursively) are listed into ``csv_path``.
    csv_path : str or os.PathLike
        Where a folder's listing is written (atomically).

    Returns
    -------
    str
        The CSV to use.

    Example
    -------
    >>> import tempfile, os, numpy as np, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "n.wav"), np.zeros(1600, dtype="float32"), 16000)
    >>> print(open(audio_csv(d, os.path.join(d, "noise.csv"))).read().splitlines()[1][:14])
    n_0,0.100,/tmp
    """
    source = pathlib.Path(source)
    if source.is_file():
        return str(source)
    if not source.is_dir():
        raise FileNotFoundError(f"augmentation data not found: {source} (a folder or a CSV)")
    rows, unusable = [], []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        try:
            frames, sr = audio_info(path)
        except AudioError as err:
            unusable.append(f"{path} ({err})")
            continue
        if frames > 0:
            rows.append([f"{path.stem}_{len(rows)}", f"{frames / sr:.3f}", str(path)])
        else:
            unusable.append(f"{path} (empty)")
    if unusable:
        logger.warning("%d unreadable or empty audio files in %s left out, e.g. %s",
                       len(unusable), source, unusable[0])
    if not rows:
        raise ValueError(f"no readable audio file in {source}")
    write_manifest(csv_path, rows, header=["ID", "duration", "wav"])
    return str(csv_path)


def build_augmenter(augmentations, noise=None, rir=None, csv_folder=".", snr_low=0, snr_high=15,
                    sample_rate=16000, max_augmentations=None, **augmenter_kwargs):
    """A SpeechBrain ``Augmenter``, with noise and reverberation when their data are given.

    Arguments
    ---------
    augmentations : list of torch.nn.Module
        The augmentations always available (e.g. speed perturbation, drops).
    noise, rir : str or os.PathLike, optional
        Noise / room impulse responses: a folder of audio or a CSV (see
        :func:`audio_csv`); each adds ``AddNoise`` / ``AddReverb``.
    csv_folder : str or os.PathLike
        Where the listings of folders are written.
    snr_low, snr_high : float
        SNR range of the added noise (dB).
    sample_rate : int
        Rate of the speech (noise and impulse responses are resampled to it).
    max_augmentations : int, optional
        As in ``Augmenter``; raised by one for each of noise and reverberation.
    **augmenter_kwargs
        Other ``Augmenter`` arguments.

    Returns
    -------
    speechbrain.augment.augmenter.Augmenter

    Example
    -------
    >>> from speechbrain.augment.time_domain import DropChunk
    >>> aug = build_augmenter([DropChunk()], max_augmentations=1)
    >>> list(aug.augmentations), aug.max_augmentations
    (['DropChunk0'], 1)
    """
    augmentations = list(augmentations)
    folder = pathlib.Path(csv_folder)
    if noise:
        augmentations.append(AddNoise(csv_file=audio_csv(noise, folder / "noise.csv"),
                                      snr_low=snr_low, snr_high=snr_high,
                                      noise_sample_rate=sample_rate,
                                      clean_sample_rate=sample_rate, num_workers=0))
    if rir:
        augmentations.append(AddReverb(csv_file=audio_csv(rir, folder / "rir.csv"),
                                       reverb_sample_rate=sample_rate,
                                       clean_sample_rate=sample_rate, num_workers=0))
    if max_augmentations is not None:
        max_augmentations += bool(noise) + bool(rir)
    return Augmenter(augmentations=augmentations, max_augmentations=max_augmentations,
                     **augmenter_kwargs)
