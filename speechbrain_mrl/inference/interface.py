"""Ready-to-use interface for Matryoshka ReDimNet speaker embeddings.

:class:`MRLEncoderClassifier` is a SpeechBrain
:class:`~speechbrain.inference.classifiers.EncoderClassifier` whose calls take
a ``target_dim``: one forward pass gives the nested embedding, and the first
``target_dim`` coordinates are returned (any size from 1 to ``embed_dim``;
the sizes in ``mrl_dims`` are the trained ones).

It loads a folder written by :func:`speechbrain_mrl.model.folder.write_model_folder`
(or a HuggingFace Hub repository made from one by ``speechbrain-mrl package``)::

    from speechbrain_mrl.inference.interface import MRLEncoderClassifier
    model = MRLEncoderClassifier.from_hparams(source="results/mrl_b2/model",
                                              savedir="pretrained/mrl_b2")
    emb = model.encode_file("speech.wav", target_dim=128)        # [1, 1, 128]
    score, same = model.verify_files("a.wav", "b.wav", target_dim=64)

Input audio of any sample rate is resampled to the model rate (16 kHz) and
multi-channel audio is averaged to mono. Empty, silent (all-zero), non-finite,
too short or unreadable audio raises :class:`ValueError` naming the problem.

Authors
-------
 * speechbrain-mrl developers
"""
import difflib
import logging
import os
import pathlib
import socket
import urllib.parse
import urllib.request

import torch
import torch.nn.functional as F
import torchaudio
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

from speechbrain_mrl.data.audio import AudioError, check_waveforms, load_audio, warn_short
from speechbrain_mrl.model.encoder import SpeechBrainEmbedding
from speechbrain_mrl.model.folder import resolve_model_source
from speechbrain_mrl.model.sizes import check_target_dim, check_threshold, check_thresholds
from speechbrain_mrl.utils.errors import hinted

logger = logging.getLogger(__name__)

__all__ = ["MRLEncoderClassifier", "AudioError", "load_model"]


class MRLEncoderClassifier(EncoderClassifier):
    """Matryoshka speaker embeddings and cosine verification, any size.

    Loads the model folders that SpeechBrain's own ``EncoderClassifier`` loads: their
    ``modules.embedding_model`` is a
    :class:`~speechbrain_mrl.model.encoder.SpeechBrainEmbedding` whose :attr:`encoder`
    (:class:`~speechbrain_mrl.model.encoder.MRLEncoder`: front end, ReDimNet lobe,
    Matryoshka head) this class calls directly, with every size. Optional hparams:
    ``thresholds``, ``sample_rate``, ``min_duration`` (shorter audio is refused; never
    below what the front end needs, :attr:`MRLEncoder.min_samples`), ``short_duration``
    (shorter audio is embedded with a :class:`~speechbrain_mrl.data.audio.ShortAudioWarning`),
    ``long_audio_seconds`` and ``window_seconds``.

    Arguments
    ---------
    *args, **kwargs
        Forwarded to :class:`~speechbrain.inference.interfaces.Pretrained`.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    >>> from speechbrain_mrl.model.folder import write_model_folder
    >>> cfg = dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)], group_divisor=2, embed_dim=8)
    >>> encoder = MRLEncoder.from_config(cfg)
    >>> encoder.mrl_head = MatryoshkaProjection(encoder.pool_dim, embed_dim=8, mrl_dims=[4, 8])
    >>> folder = write_model_folder(tempfile.mkdtemp(), encoder, thresholds={4: 0.3, 8: 0.4})
    >>> model = MRLEncoderClassifier.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    >>> wavs = torch.randn(2, 16000)
    >>> model.encode_batch(wavs, target_dim=4).shape
    torch.Size([2, 1, 4])
    >>> {d: e.shape for d, e in model.encode_batch_all(wavs).items()}
    {4: torch.Size([2, 4]), 8: torch.Size([2, 8])}
    >>> model.threshold_for(4)
    0.3
    """

    MODULES_NEEDED = ["embedding_model"]
    HPARAMS_NEEDED = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        embedding = self.mods["embedding_model"] if "embedding_model" in self.mods else None
        if not isinstance(embedding, SpeechBrainEmbedding):
            raise ValueError(
                "not a speechbrain-mrl model folder: its hyperparams 'modules' has no "
                f"embedding_model of type SpeechBrainEmbedding (got {type(embedding).__name__})")
        #: The waveform -> embeddings ``[B, D]`` module (inside ``self.mods``).
        self.encoder = embedding.encoder.eval()
        self.embed_dim = self.encoder.embed_dim
        self.mrl_dims = self.encoder.mrl_dims
        self.sample_rate = int(getattr(self.hparams, "sample_rate", 16000))
        self.min_duration = float(getattr(self.hparams, "min_duration", 0.0) or 0.0)
        self.short_duration = float(getattr(self.hparams, "short_duration", 0.0) or 0.0)
        #: Audio longer than this (seconds) is embedded window by window
        #: (:meth:`MRLEncoder.pool_windows`), in ``window_seconds`` windows; None: never.
        self.long_audio_seconds = getattr(self.hparams, "long_audio_seconds", 60.0)
        self.window_seconds = float(getattr(self.hparams, "window_seconds", 30.0))
        recommended = getattr(self.hparams, "recommended_dim", None)
        #: The size with the best validation EER when the model folder records it, else None.
        self.recommended_dim = None if recommended is None else int(recommended)
        self.thresholds = check_thresholds(getattr(self.hparams, "thresholds", None) or {},
                                           self.mrl_dims, "hyperparams.yaml")
        self.similarity = torch.nn.CosineSimilarity(dim=-1, eps=1e-6)

    # ------------------------------------------------------------ loading
    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", savedir=None,
                     local_strategy=LocalStrategy.SYMLINK, fetch_config=None, **kwargs):
        """Loads a model folder or hub repository (see ``Pretrained.from_hparams``).

        The ``calibration.json`` next to the hyperparameters, when present,
        gives the default thresholds (it takes precedence over the copy in
        ``hyperparams.yaml``).

        A ``source`` that is no local folder but reads as a hub id
        (``user/name``) is fetched from the HuggingFace Hub, from its cache only
        when ``HF_HUB_OFFLINE`` is set (even if set after ``huggingface_hub``
        was imported). If that fails, the error names both possibilities (no
        local folder, hub unreachable or no such repo); when a local model
        folder's name differs from it by a typo in the first part, the hub is
        not asked and the error names that folder. Before a download, one quick
        connection to the hub (3 s at most) decides whether it is reachable: if
        not, the cached copy is used, or the error comes at once.

        Arguments
        ---------
        source : str or os.PathLike
            Local folder or HuggingFace Hub repo id.
        hparams_file : str
            Hyperparameter file name.
        savedir : str or os.PathLike, optional
            Where to collect the files. For a local ``source`` it may be left
            out: files are then read in place (no links, nothing written).
        local_strategy : LocalStrategy
            How local files are placed into ``savedir``.
        fetch_config : FetchConfig, optional
            Fetching options (e.g. ``FetchConfig(allow_network=False)``). Default:
            for a local ``source`` with a ``savedir``, links are always renewed
            (``overwrite=True``), so a ``savedir`` reused for another folder
            never serves stale files; otherwise SpeechBrain's defaults.
        **kwargs
            Forwarded (``run_opts``, ``overrides``, ...).

        Returns
        -------
        MRLEncoderClassifier

        Raises
        ------
        FileNotFoundError
            No such local folder (or no ``hparams_file`` in it), and for a hub
            id, no such repository, or the hub cannot be reached.
        """
        from huggingface_hub import constants as hf_constants
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

        source = resolve_model_source(source)
        source = str(source) if isinstance(source, pathlib.Path) else source
        if isinstance(source, str) and source.startswith("~"):
            source = str(pathlib.Path(source).expanduser())
        if isinstance(source, str) and _looks_like_a_path(source) and not pathlib.Path(source).is_dir():
            raise FileNotFoundError(f"model folder not found: {source} (a hub model is named "
                                    "'user/name')")
        if isinstance(source, str) and pathlib.Path(source).is_dir():
            source = str(pathlib.Path(source).resolve())
            if not (pathlib.Path(source) / hparams_file).is_file():
                raise FileNotFoundError(f"{source} holds no {hparams_file}: not a model folder")
            if not (pathlib.Path(source) / hparams_file).read_text().strip():
                raise ValueError(f"{pathlib.Path(source) / hparams_file} is empty")
            if savedir is not None and pathlib.Path(savedir).resolve() == pathlib.Path(source):
                # collecting a folder into itself would make self-referencing symlinks
                savedir = None
            if fetch_config is None and savedir is not None:
                fetch_config = FetchConfig(overwrite=True)
        hub_id = (isinstance(source, str) and not _looks_like_a_path(source)
                  and not source.startswith(("http://", "https://")))
        offline = hf_constants.HF_HUB_OFFLINE or os.environ.get(
            "HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        if hub_id:
            similar = _similar_model_folder(source, hparams_file)
            if similar is not None:
                raise FileNotFoundError(f"no local folder {source!r} (did you mean {similar!r}?); "
                                        "not fetched from the HuggingFace Hub")
            if fetch_config is None and offline:
                fetch_config = FetchConfig(allow_network=False)
            unreachable = None if offline else _hub_unreachable(hf_constants.ENDPOINT)
            if unreachable and not _hub_cache_has(source, hparams_file):
                raise FileNotFoundError(f"no local folder {source!r} in {os.getcwd()}, and the "
                                        f"HuggingFace Hub cannot be reached ({unreachable})")
            if unreachable and fetch_config is None:
                fetch_config = FetchConfig(allow_network=False)  # the cached copy, at once
        if fetch_config is None:
            fetch_config = FetchConfig()
        try:
            model = super().from_hparams(source, hparams_file=hparams_file, savedir=savedir,
                                         local_strategy=local_strategy,
                                         fetch_config=fetch_config, **kwargs)
        except (EntryNotFoundError, HfHubHTTPError, HFValidationError, ConnectionError,
                TimeoutError) as err:
            if not hub_id:
                raise
            hub = ("is offline (HF_HUB_OFFLINE) and its cache holds no" if offline
                   else "could not be reached or has no")
            raise FileNotFoundError(
                f"no local folder {source!r} in {os.getcwd()}, and the HuggingFace Hub {hub} "
                f"repository {source!r} ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from err
        model.check_weights(source)
        local = isinstance(source, str) and pathlib.Path(source).is_dir()
        if local and not (pathlib.Path(source) / "calibration.json").is_file():
            logger.info("no calibration.json in %s; using hyperparams thresholds", source)
            return model
        try:
            path = fetch(filename="calibration.json", source=source, savedir=savedir,
                         local_strategy=local_strategy, fetch_config=fetch_config)
        except Exception as err:  # noqa: BLE001 - the file is optional
            logger.info("no calibration.json in %s (%s); using hyperparams thresholds", source, err)
        else:
            model.load_calibration(path)
        return model

    def check_weights(self, source="the model"):
        """Refuses a model whose weights or statistics hold NaN/Inf (a corrupt model file).

        Arguments
        ---------
        source : str
            The model's name for the message.

        Raises
        ------
        ValueError
            Naming the model and the first bad tensors.
        """
        bad = [name for name, tensor in self.encoder.state_dict().items()
               if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if bad:
            raise ValueError(f"model {source}: NaN/Inf values in its weights ({', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''}): the model files are corrupt")

    def load_calibration(self, path):
        """Sets the default thresholds from a ``calibration.json`` file.

        Arguments
        ---------
        path : str or os.PathLike
            ``{"thresholds": {"<dim>": value}}``.
        """
        from speechbrain_mrl.model.folder import read_calibration

        thr = read_calibration(path, self.mrl_dims)
        if self.thresholds and thr and thr != self.thresholds:
            logger.warning("calibration.json thresholds %s differ from hyperparams.yaml %s; "
                           "using calibration.json", thr, self.thresholds)
        if thr:
            self.thresholds = thr

    def threshold_for(self, target_dim=None):
        """Calibrated default cosine threshold for an embedding size.

        Arguments
        ---------
        target_dim : int, optional
            Embedding size (None: ``embed_dim``).

        Returns
        -------
        float

        Raises
        ------
        ValueError
            When no threshold was calibrated for that size.
        """
        return self._threshold(check_target_dim(target_dim, self.embed_dim))

    def _threshold(self, d, threshold=None):
        """``threshold`` checked, or the calibrated one of the (already checked) size ``d``."""
        if threshold is not None:
            return check_threshold(threshold)
        if d not in self.thresholds:
            problem = (f"no calibrated threshold for target_dim={d} (calibrated sizes: "
                       f"{sorted(self.thresholds)})")
            raise hinted(ValueError(f"{problem}; pass threshold= explicitly"),
                         f"{problem}: choose a calibrated size, or give --threshold where the "
                         "command has it")
        return self.thresholds[d]

    # ------------------------------------------------------------ audio
    def load_audio(self, path, savedir=None):
        """Loads an audio file as a mono waveform at the model sample rate.

        Arguments
        ---------
        path : str or os.PathLike
            Audio file (any format torchaudio/soundfile can read).
        savedir : str, optional
            Unused (kept for the parent signature).

        Returns
        -------
        torch.Tensor
            ``[T]`` float waveform.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        signal, sr = load_audio(path)
        if signal.numel() == 0:
            raise AudioError(f"audio file {path} is empty (no samples)")
        return self._to_model_rate(signal, sr, what=str(path))

    def _to_model_rate(self, signal, sample_rate, what="input"):
        """``[T]`` or ``[T, C]`` (time-major) -> mono ``[T]`` at the model rate.

        Uses the toolkit's ``AudioNormalizer`` (hparams ``audio_normalizer``:
        resampling, then channel averaging).
        """
        if signal.dim() not in (1, 2):
            raise AudioError(f"{what}: expected [time] or [time, channels] audio, got {tuple(signal.shape)}")
        signal = signal.float()
        if not torch.isfinite(signal).all():
            raise AudioError(f"{what}: audio contains NaN or Inf values")
        signal = self.audio_normalizer(signal, int(sample_rate))
        if signal.dim() == 2:  # an audio_normalizer that keeps channels
            signal = signal.mean(dim=1)
        return signal

    # ------------------------------------------------------------ embedding
    def _full_embedding(self, wavs, wav_lens=None, sample_rate=None):
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wavs, wav_lens = check_waveforms(wavs, wav_lens)  # relative lengths survive resampling
            wavs = torchaudio.functional.resample(wavs, int(sample_rate), self.sample_rate)
        min_samples = max(int(round(self.min_duration * self.sample_rate)), self.encoder.min_samples)
        wavs, wav_lens = check_waveforms(wavs, wav_lens, min_samples, self.sample_rate)
        warn_short(wav_lens, wavs.shape[1], int(round(self.short_duration * self.sample_rate)),
                   self.sample_rate)
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        with torch.no_grad():
            return self.encoder.embed(wavs, wav_lens, **self._window_options())

    def _window_options(self):
        """``long_samples`` / ``window_samples`` of :meth:`MRLEncoder.embed` for this model."""
        if self.long_audio_seconds is None:
            return {"long_samples": None, "window_samples": None}
        return {"long_samples": float(self.long_audio_seconds) * self.sample_rate,
                "window_samples": int(round(self.window_seconds * self.sample_rate))}

    def embedding_options(self):
        """This model's settings for :func:`speechbrain_mrl.inference.embeddings.embed_manifest`.

        Returns
        -------
        dict
            ``sample_rate``, ``min_duration``, ``short_duration``,
            ``long_audio_seconds``, ``window_seconds`` and ``device``, so that
            ``embed_manifest(model.encoder, rows, **model.embedding_options())``
            embeds each file exactly as :meth:`encode_file` does (short audio
            warned about alike).
        """
        return {"sample_rate": self.sample_rate, "min_duration": self.min_duration,
                "short_duration": self.short_duration,
                "long_audio_seconds": self.long_audio_seconds,
                "window_seconds": self.window_seconds, "device": self.device}

    def encode_batch(self, wavs, wav_lens=None, normalize=False, target_dim=None, sample_rate=None):
        """Embeds a batch of waveforms, returning the size-``target_dim`` prefix.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, time]`` or ``[batch, time, channels]`` (channels are
            averaged) or ``[time]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in ``(0, 1]``; padding is ignored.
        normalize : bool
            L2-normalise the returned prefix (the model has no embedding
            mean/variance normalisation).
        target_dim : int, optional
            Embedding size (default ``embed_dim``).
        sample_rate : int, optional
            Rate of ``wavs`` when it is not the model rate (resampled).

        Returns
        -------
        torch.Tensor
            ``[batch, 1, target_dim]``.
        """
        d = check_target_dim(target_dim, self.embed_dim)
        emb = self._full_embedding(wavs, wav_lens, sample_rate)[:, :d]
        if normalize:
            emb = F.normalize(emb, dim=-1)
        return emb.unsqueeze(1)

    def encode_batch_all(self, wavs, wav_lens=None, normalize=False, sample_rate=None):
        """Every Matryoshka size from one forward pass.

        Arguments
        ---------
        wavs, wav_lens, sample_rate
            As in :meth:`encode_batch`.
        normalize : bool
            L2-normalise each prefix.

        Returns
        -------
        dict of int to torch.Tensor
            ``{d: [batch, d]}`` for every ``d`` in ``mrl_dims``.
        """
        emb = self._full_embedding(wavs, wav_lens, sample_rate)
        out = {}
        for d in self.mrl_dims:
            e = emb[:, :d]
            out[d] = F.normalize(e, dim=-1) if normalize else e
        return out

    def encode_file(self, path, target_dim=None, normalize=False):
        """Embeds one audio file (any rate / channel count).

        Arguments
        ---------
        path : str or os.PathLike
            Audio file.
        target_dim : int, optional
            Embedding size.
        normalize : bool
            L2-normalise.

        Returns
        -------
        torch.Tensor
            ``[1, 1, target_dim]``.
        """
        emb = self._file_embedding(path)[:, :check_target_dim(target_dim, self.embed_dim)]
        return (F.normalize(emb, dim=-1) if normalize else emb).unsqueeze(1)

    def _file_embedding(self, path):
        """Full-size embedding ``[1, embed_dim]`` of one audio file."""
        wav = self.load_audio(path)
        try:
            return self._full_embedding(wav.unsqueeze(0), torch.ones(1))
        except AudioError as err:
            raise AudioError(f"{path}: {str(err).removeprefix('utterance 0: ')}") from err

    def classify_batch(self, wavs, wav_lens=None):
        """Not available: the packaged model has no speaker classifier."""
        raise NotImplementedError("MRLEncoderClassifier has no classifier; use encode_batch/verify_batch")

    def classify_file(self, path, **kwargs):
        """Not available: the packaged model has no speaker classifier."""
        raise NotImplementedError("MRLEncoderClassifier has no classifier; use encode_file/verify_files")

    def forward(self, wavs, wav_lens=None):
        """Full-size embeddings ``[batch, 1, embed_dim]``."""
        return self.encode_batch(wavs, wav_lens)

    # ------------------------------------------------------------ verification
    def verify_batch(self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None,
                     target_dim=None):
        """Cosine verification of paired utterances.

        Arguments
        ---------
        wavs1, wavs2 : torch.Tensor
            Two batches of waveforms (same batch size).
        wav1_lens, wav2_lens : torch.Tensor, optional
            Relative lengths.
        threshold : float, optional
            Decision threshold; default: the calibrated one for ``target_dim``
            (see :meth:`threshold_for`).
        target_dim : int, optional
            Embedding size.

        Returns
        -------
        score : torch.Tensor
            Cosine scores ``[batch, 1]``.
        decision : torch.Tensor
            ``score > threshold`` (True: same speaker).
        """
        d = check_target_dim(target_dim, self.embed_dim)
        thr = self._threshold(d, threshold)
        emb1 = self._full_embedding(wavs1, wav1_lens)[:, None, :d]
        emb2 = self._full_embedding(wavs2, wav2_lens)[:, None, :d]
        if emb1.shape[0] != emb2.shape[0]:
            raise ValueError(f"batch sizes differ: {emb1.shape[0]} vs {emb2.shape[0]}")
        score = self.similarity(emb1, emb2)
        return score, score > thr

    def verify_files(self, path_x, path_y, threshold=None, target_dim=None):
        """Cosine verification of two audio files.

        Arguments
        ---------
        path_x, path_y : str or os.PathLike
            Audio files.
        threshold : float, optional
            Decision threshold (default: calibrated for ``target_dim``).
        target_dim : int, optional
            Embedding size.

        Returns
        -------
        score : torch.Tensor
            Scalar cosine score.
        decision : torch.Tensor
            Scalar bool.
        """
        d = check_target_dim(target_dim, self.embed_dim)
        thr = self._threshold(d, threshold)
        ex = self._file_embedding(path_x)[:, :d]
        ey = self._file_embedding(path_y)[:, :d]
        score = self.similarity(ex, ey)[0]
        return score, score > thr


def load_model(source, device="cpu", **kwargs):
    """The one loader of the package: a model folder, a hub id or a shipped model's name.

    The commands, export, extraction and the scoring script all load through it.

    Arguments
    ---------
    source : str or os.PathLike
        A model folder, a HuggingFace Hub id or a name of
        :data:`~speechbrain_mrl.model.folder.SHIPPED_MODELS` (``speechbrain-mrl/demo-sc``).
    device : str
        ``cpu``, ``cuda``, ``cuda:1``, ...
    **kwargs
        Forwarded to :meth:`MRLEncoderClassifier.from_hparams` (``savedir``, ...).

    Returns
    -------
    MRLEncoderClassifier
    """
    return MRLEncoderClassifier.from_hparams(source=source, run_opts={"device": str(device)},
                                             **kwargs)


def _looks_like_a_path(source):
    """True for a local path (existing or mistyped), False for a hub id ``user/name`` or a URL."""
    if source.startswith(("http://", "https://")):
        return False
    path = pathlib.Path(source).expanduser()
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1
            or path.exists() or path.parent.is_dir())


def _hub_unreachable(endpoint, timeout=3.0):
    """Why the hub at ``endpoint`` cannot be reached (one quick connection), or None.

    Asked once before a hub download, so that a mistyped local path fails in
    seconds rather than after ``huggingface_hub``'s retries; behind a proxy the
    download's own connection decides (None).
    """
    url = urllib.parse.urlsplit(endpoint)
    if urllib.request.getproxies().get(url.scheme) or url.hostname is None:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{url.hostname}:{port}: {err.strerror or err}"
    return None


def _hub_cache_has(repo_id, filename):
    """True when the HuggingFace cache holds ``filename`` of ``repo_id`` (usable offline)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id
        return False


def _similar_model_folder(source, hparams_file="hyperparams.yaml"):
    """A local model folder ``source`` may be a typo of (``models/m1`` for ``modles/m1``), or None.

    Only the first part of ``source`` may differ (close match among the folders
    of the working directory); the folder must hold ``hparams_file``.
    """
    first, _, rest = source.partition("/")
    try:
        names = [p.name for p in pathlib.Path.cwd().iterdir() if p.is_dir()]
    except OSError:
        return None
    for name in difflib.get_close_matches(first, names, n=3, cutoff=0.8):
        if (pathlib.Path(name) / rest / hparams_file).is_file():
            return f"{name}/{rest}"
    return None
