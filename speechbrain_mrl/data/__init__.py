"""Data: audio in, manifests and trial lists, audio sources, dataset preparations.

* :mod:`speechbrain_mrl.data.audio`: the one audio reader and waveform check.
* :mod:`speechbrain_mrl.data.manifests`, :mod:`speechbrain_mrl.data.sources`: CSV manifests,
  trial lists, and the one reader of ``--csv``/``--folder``/``--files``/``--file_list``.
* :mod:`speechbrain_mrl.data.charts`: the chart of prepared data.

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

The preparations run as commands too (``speechbrain-mrl prepare-voxceleb --help``,
``prepare-librispeech``, ``prepare-demo``).
"""
