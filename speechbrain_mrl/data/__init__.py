"""Data preparation: manifests and trial lists for speaker verification.

* :mod:`speechbrain_mrl.data.preparation`: helpers every preparation shares (scanning,
  manifest rows, trial lists, skip-when-unchanged).
* :mod:`speechbrain_mrl.data.voxceleb`: VoxCeleb-style folders
  (``<spk>/<video>/<utt>.wav``), :func:`~speechbrain_mrl.data.voxceleb.prepare_voxceleb`.
* :mod:`speechbrain_mrl.data.librispeech`: LibriSpeech in its official layout
  (training splits, speaker-disjoint trial lists from ``dev-*``/``test-*``, download),
  :func:`~speechbrain_mrl.data.librispeech.prepare_librispeech`.
* :mod:`speechbrain_mrl.data.speech_commands`: the CPU-sized demo data
  (Speech Commands regrouped by speaker, optional LibriSpeech readers),
  :func:`~speechbrain_mrl.data.speech_commands.prepare_demo`.

The preparations run as scripts too (``python -m speechbrain_mrl.data.voxceleb --help``,
``python -m speechbrain_mrl.data.librispeech --help``).
"""
