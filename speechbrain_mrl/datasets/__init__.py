"""Data preparation: manifests and trial lists for speaker verification.

* :mod:`speechbrain_mrl.datasets.voxceleb`: VoxCeleb-style folders
  (``<spk>/<video>/<utt>.wav``), :func:`~speechbrain_mrl.datasets.voxceleb.prepare_voxceleb`.
* :mod:`speechbrain_mrl.datasets.speech_commands`: the CPU-sized demo data
  (Speech Commands regrouped by speaker, optional LibriSpeech readers),
  :func:`~speechbrain_mrl.datasets.speech_commands.prepare_demo`.

Both run as scripts too (``python -m speechbrain_mrl.datasets.voxceleb --help``).
"""
