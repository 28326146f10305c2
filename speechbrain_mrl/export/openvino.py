"""OpenVINO deployment of an exported model: bf16 (or fp32) on x86 CPUs.

OpenVINO reads the ONNX export of :func:`speechbrain_mrl.export.onnx.export_onnx`
(or the OpenVINO IR that ``speechbrain-mrl export --openvino`` writes) and runs
it with oneDNN kernels; on CPUs with AVX-512 BF16 or AMX, ``precision="bf16"``
runs the matrix products and convolutions in bfloat16 (about 2-3x the
throughput of ONNX Runtime fp32 on ReDimNet-b2 and the demo model, equal error
rates within 0.1 point; see ``docs/benchmarks.md``).

OpenVINO is fast only with static shapes: each ``(batch, padded length)`` is
compiled once (about half a second for b2) and kept; the time axis is padded
up to a multiple of ``bucket_samples`` so that nearby lengths share one
compiled model. The graph is padding-aware, so the padding does not change
the embeddings.

Long recordings: the graph's attention is quadratic in the length, so an
utterance longer than ``long_seconds`` is embedded window by window exactly as
:meth:`MRLEncoder.embed <speechbrain_mrl.model.encoder.MRLEncoder.embed>` does: the
graph is split at the pooled statistics (the head's input), each window's
statistics come from the first part, they are merged by frame count
(:func:`~speechbrain_mrl.model.encoder.merge_window_stats`) and the head (second
part) embeds them. Time and memory grow linearly with the duration.

Which model a file embeds with: the IR records the model fingerprint of the
ONNX file it was converted from and the SHA-256 of its ``.bin`` in its
``rt_info`` (``speechbrain_mrl`` section). :class:`OpenVinoEncoder` checks the
``.bin`` against it and the fingerprint against the export record beside the
file (:func:`~speechbrain_mrl.export.onnx.check_record`) when it opens a model,
and refuses a file without the export's inputs and outputs, naming it.

Needs the ``openvino`` extra: ``pip install -e ".[openvino]"``.

Authors
-------
 * speechbrain-mrl developers
"""
import collections
import hashlib
import importlib
import logging
import math
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
import torch

from speechbrain_mrl.data.audio import check_waveforms
from speechbrain_mrl.export.onnx import (check_io, check_record, recorded_metadata, recorded_size,
                                         write_record)
from speechbrain_mrl.model.encoder import merge_window_stats, window_bounds
from speechbrain_mrl.utils.files import atomic_output

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "OpenVinoEncoder", "cpu_has_bf16", "export_openvino", "split_at_pooling",
           "use_openvino"]

#: OpenVINO ``INFERENCE_PRECISION_HINT`` of each precision name.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def _openvino():
    try:
        return importlib.import_module("openvino")
    except ImportError as err:
        raise ModuleNotFoundError("OpenVINO deployment needs the 'openvino' package: "
                                  "pip install -e \".[openvino]\" (or pip install openvino)",
                                  name="openvino") from err


def _sha256(path):
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_model(core, path):
    """``core.read_model(path)``; OpenVINO's failure as one line naming the file."""
    try:
        return core.read_model(str(path))
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(f"{path}: OpenVINO cannot read it ({lines[-1] if lines else err})") from err


def _onnx_record(model):
    """What the export recorded in the ONNX file ``model`` was read from (its metadata_props)."""
    if not model.has_rt_info(["framework"]):
        return {}
    props = model.get_rt_info(["framework"]).astype(dict)
    return recorded_metadata({k: v.astype(str) for k, v in props.items()})


def _ir_record(xml_path):
    """What :func:`export_openvino` recorded in an IR ``.xml`` (read without its ``.bin``)."""
    try:
        section = ET.parse(xml_path).getroot().find("rt_info/speechbrain_mrl")
    except (OSError, ET.ParseError) as err:
        raise ValueError(f"{xml_path}: not readable OpenVINO IR ({err})") from err
    return {} if section is None else {c.tag: c.get("value") for c in section}


def _check_weights(xml_path, recorded):
    """Refuses a ``.bin`` other than the one the ``.xml`` records the SHA-256 of."""
    if "weights_sha256" not in recorded:
        return  # an older export: check_record warns
    bin_path = pathlib.Path(xml_path).with_suffix(".bin")
    got = _sha256(bin_path)
    if got != recorded["weights_sha256"]:
        raise ValueError(f"{bin_path} is not the weights {pathlib.Path(xml_path).name} was exported "
                         f"with (SHA-256 {got}, the .xml records {recorded['weights_sha256']}): "
                         "another model's .bin under this .xml; export it again")


def _ports(ports):
    """``(name, rank)`` of OpenVINO inputs or outputs (rank None: dynamic)."""
    def rank(port):
        r = port.get_partial_shape().rank
        return r.get_length() if r.is_static else None

    return [(next(iter(sorted(p.get_names())), "?"), rank(p)) for p in ports]


def export_openvino(onnx_path, xml_path):
    """Converts an ONNX export to OpenVINO IR (``.xml`` + ``.bin``, weights kept fp32).

    The ``.xml`` records in its ``rt_info`` (``speechbrain_mrl`` section) what the
    ONNX file records (the model fingerprint) and the SHA-256 of the ``.bin``;
    the export record ``<xml_path>.json`` is written beside it.

    Arguments
    ---------
    onnx_path : str or os.PathLike
        A model written by :func:`speechbrain_mrl.export.onnx.export_onnx`.
    xml_path : str or os.PathLike
        The IR's ``.xml`` file; the weights go to the ``.bin`` beside it. Both
        are written to temporary files and renamed into place when complete.

    Returns
    -------
    pathlib.Path
    """
    ov = _openvino()
    xml_path = pathlib.Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR path must end in .xml, got {xml_path}")
    model = _read_model(ov.Core(), onnx_path)
    recorded = _onnx_record(model)
    with atomic_output(xml_path.with_suffix(".bin")) as tmp_bin, atomic_output(xml_path) as tmp_xml:
        # save_model writes the weights beside its .xml, under the same stem; saved once for
        # the SHA-256 of the weights, again with it in the .xml (the weights are the same bytes)
        saved_bin = tmp_xml.with_suffix(".bin")
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            recorded["weights_sha256"] = _sha256(saved_bin)
            for key, value in recorded.items():
                model.set_rt_info(value, ["speechbrain_mrl", key])
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            if _sha256(saved_bin) != recorded["weights_sha256"]:
                raise RuntimeError(f"{xml_path}: OpenVINO wrote other weights the second time; "
                                   "their SHA-256 cannot be recorded")
            saved_bin.replace(tmp_bin)
        finally:
            saved_bin.unlink(missing_ok=True)
    write_record(xml_path, recorded)
    return xml_path


def cpu_has_bf16(core):
    """True when OpenVINO's CPU plugin runs bf16 natively (AVX-512 BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _head_input(model):
    """The op where the Matryoshka head (or the lobe's embedding layer) starts: its BatchNorm."""
    heads = ("encoder.mrl_head.norm.running_mean", "encoder.embedding_model.bn.running_mean")
    for op in model.get_ordered_ops():
        names = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        if op.get_type_name() == "BatchNormInference" and any(n in heads for n in names):
            return op
    raise ValueError("no Matryoshka head / embedding BatchNorm found in the model: not an "
                     "export of speechbrain_mrl.export.onnx.export_onnx")


def split_at_pooling(model):
    """``(pool, head)``: waveforms -> pooled statistics, and pooled statistics -> embeddings."""
    ov = _openvino()
    pool_model = model.clone()
    pooled = _head_input(pool_model).input_value(0)
    pool = ov.Model([pooled], pool_model.get_parameters(), "pool")
    head_model = model.clone()
    bn = _head_input(head_model)
    stats = ov.opset13.parameter([-1, bn.input_value(0).get_partial_shape()[1]], ov.Type.f32,
                                 name="pooled")
    bn.input(0).replace_source_output(stats.output(0))
    head = ov.Model(head_model.get_results(), [stats], "head")
    return pool, head


class OpenVinoEncoder:
    """An exported model run by OpenVINO, its inputs checked as the PyTorch interface does.

    Bad input raises :class:`~speechbrain_mrl.data.audio.AudioError` naming the
    utterance (:func:`~speechbrain_mrl.data.audio.check_waveforms`, the check of
    ``MRLEncoderClassifier`` and :class:`~speechbrain_mrl.export.onnx.OnnxEncoder`).

    When opened, an IR's ``.bin`` must be the one its ``.xml`` records the SHA-256
    of, the model must have the export's inputs and outputs
    (:func:`~speechbrain_mrl.export.onnx.check_io`) and record the model
    fingerprint its export record and ``model_sha256`` say
    (:func:`~speechbrain_mrl.export.onnx.check_record`); else ``ValueError``
    naming the file. ``model_sha256`` (attribute): the fingerprint it records,
    None if none.

    Arguments
    ---------
    model_path : str or os.PathLike
        An ONNX export (:func:`~speechbrain_mrl.export.onnx.export_onnx`) or its
        OpenVINO IR ``.xml`` (:func:`export_openvino`).
    precision : str
        ``"bf16"`` (refused on a CPU without native bf16) or ``"fp32"``.
    threads : int, optional
        CPU threads (default: OpenVINO's choice, all cores).
    sample_rate : int
        The model's rate.
    min_samples : int, optional
        Shortest waveform the model embeds (``MRLEncoder.min_samples``; default: what
        the export records, 257 for an older export).
    hop_length : int, optional
        The front end's frame shift (weights windows by their frame counts; default:
        what the export records, 160 for an older export).
    bucket_samples : int
        The time axis is zero-padded up to a multiple of this (one compiled
        model per batch size and padded length).
    long_seconds : float
        Utterances longer than this are embedded window by window.
    window_seconds : float
        Window length for long utterances.
    window_batch : int
        Windows run together (bounds the memory).
    cache_size : int
        Compiled shapes kept (least recently used dropped first).
    model_sha256 : str, optional
        The model folder's fingerprint the file must record
        (:func:`~speechbrain_mrl.model.folder.model_fingerprint`).

    Example
    -------
    >>> encoder = OpenVinoEncoder("mrl.onnx", precision="bf16")     # doctest: +SKIP
    >>> encoder(wavs, wav_lens)["embedding_64"].shape                # doctest: +SKIP
    (2, 64)
    """

    def __init__(self, model_path, precision="bf16", threads=None, sample_rate=16000,
                 min_samples=None, hop_length=None, bucket_samples=4000, long_seconds=60.0, window_seconds=30.0,
                 window_batch=1, cache_size=16, model_sha256=None):
        ov = _openvino()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        for name, value in (("sample_rate", sample_rate), ("min_samples", min_samples),
                            ("hop_length", hop_length), ("bucket_samples", bucket_samples),
                            ("window_batch", window_batch), ("cache_size", cache_size)):
            if value is None and name in ("min_samples", "hop_length"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if not 0 < window_seconds <= long_seconds:
            raise ValueError(f"need 0 < window_seconds <= long_seconds, got {window_seconds} "
                             f"and {long_seconds}")
        self.core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(self.core):
            raise RuntimeError("this CPU has no native bf16 (AVX-512 BF16 or AMX): use "
                               "precision='fp32'")
        self.model_path = str(model_path)
        self.models = {"whole": self._open(pathlib.Path(model_path), model_sha256)}
        self.output_names = [o.get_any_name() for o in self.models["whole"].outputs]
        self.config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                       "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.precision = precision
        self.sample_rate = int(sample_rate)
        self.min_samples = int(recorded_size(self._recorded, "min_samples", min_samples))
        self.hop_length = int(recorded_size(self._recorded, "hop_length", hop_length))
        self.bucket_samples = int(bucket_samples)
        self.long_samples = int(long_seconds * sample_rate)
        self.window_samples = int(window_seconds * sample_rate)
        self.window_batch = int(window_batch)
        self.cache_size = int(cache_size)
        self._compiled = collections.OrderedDict()

    def _open(self, path, model_sha256):
        """The model at ``path``, checked (the ``.bin`` of an IR before OpenVINO reads it)."""
        is_ir = path.suffix == ".xml"
        recorded = _ir_record(path) if is_ir else None
        if is_ir:
            _check_weights(path, recorded)
        model = _read_model(self.core, path)
        check_io(path, _ports(model.inputs), _ports(model.outputs))
        if not is_ir:
            recorded = _onnx_record(model)
        check_record(path, recorded, model_sha256,
                     required=("export_format", "weights_sha256") if is_ir else ("export_format",))
        self.model_sha256 = recorded.get("model_sha256")
        self._recorded = recorded
        return model

    def _request(self, part, shapes):
        """The infer request of model ``part`` compiled for inputs of ``shapes``."""
        key = (part, *map(tuple, shapes))
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        if part not in self.models:
            self.models["pool"], self.models["head"] = split_at_pooling(self.models["whole"])
        model = self.models[part].clone()
        model.reshape(dict(zip(model.inputs, shapes)))
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        self._compiled[key] = request
        if len(self._compiled) > self.cache_size:
            self._compiled.popitem(last=False)
        return request

    def _run(self, part, wavs, samples):
        """Outputs of ``part`` (``whole`` or ``pool``) on 1-D waveforms ``[n]`` padded together."""
        width = max(samples)
        padded = max(self.bucket_samples, math.ceil(width / self.bucket_samples)
                     * self.bucket_samples)
        x = np.zeros((len(wavs), padded), dtype=np.float32)
        for row, (wav, n) in enumerate(zip(wavs, samples)):
            x[row, :n] = wav[:n]
        lens = (np.asarray(samples, dtype=np.float64) / padded).astype(np.float32)
        request = self._request(part, [x.shape, lens.shape])
        request.infer([x, lens])
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]

    def pool_windows(self, wav):
        """Pooled statistics ``[1, pool_dim]`` of one long 1-D waveform, window by window
        (:meth:`MRLEncoder.pool_windows <speechbrain_mrl.model.encoder.MRLEncoder.pool_windows>`)."""
        bounds = window_bounds(len(wav), self.window_samples)
        stats = []
        for i in range(0, len(bounds), self.window_batch):
            chunk = bounds[i:i + self.window_batch]
            stats.append(self._run("pool", [wav[a:b] for a, b in chunk],
                                   [b - a for a, b in chunk])[0])
        frames = [1 + (b - a) // self.hop_length for a, b in bounds]
        return merge_window_stats(torch.from_numpy(np.concatenate(stats)), frames).numpy()

    def __call__(self, wavs, wav_lens=None):
        """``{output name: [B, d] array}`` of a zero-padded batch ``[B, T]`` (+ relative lengths).

        Utterances longer than ``long_seconds`` are pooled window by window.
        """
        wavs, wav_lens = check_waveforms(torch.as_tensor(wavs), wav_lens, self.min_samples,
                                         self.sample_rate)
        x = wavs.float().numpy()
        samples = torch.round(wav_lens.double() * x.shape[1]).long().tolist()
        long = [i for i, n in enumerate(samples) if n > self.long_samples]
        rest = [i for i in range(len(samples)) if i not in long]
        rows = {}
        if rest:
            for i, o in zip(rest, zip(*self._run("whole", [x[i] for i in rest],
                                                 [samples[i] for i in rest]))):
                rows[i] = o
        if long:
            stats = np.concatenate([self.pool_windows(x[i, :samples[i]]) for i in long])
            request = self._request("head", [stats.shape])
            request.infer([stats])
            embs = [request.get_output_tensor(k).data.copy()
                    for k in range(len(self.output_names))]
            for j, i in enumerate(long):
                rows[i] = [e[j] for e in embs]
        return {name: np.stack([rows[i][k] for i in range(len(samples))])
                for k, name in enumerate(self.output_names)}


class _OpenVinoEmbedding(torch.nn.Module):
    """What the one embedding path asks of an encoder (``embed``, sizes, ``min_samples``), on
    OpenVINO: a model's :attr:`~speechbrain_mrl.inference.interface.MRLEncoderClassifier.encoder`
    replaced by the fast runtime."""

    def __init__(self, runtime, encoder, folder=None):
        super().__init__()
        self.runtime = runtime
        self._folder = folder  # a TemporaryDirectory holding the ONNX file: removed with this object
        self.embed_dim, self.mrl_dims = encoder.embed_dim, list(encoder.mrl_dims)
        self.min_samples = encoder.min_samples
        self.output = f"embedding_{encoder.embed_dim}"
        self.eval()

    def embed(self, wavs, wav_lens=None, long_samples=None, window_samples=None):
        """``[B, embed_dim]`` float32 on the CPU (long audio windowed by the runtime, as configured)."""
        out = self.runtime(wavs.detach().float().cpu(), None if wav_lens is None else wav_lens.cpu())
        return torch.from_numpy(out[self.output])


def use_openvino(model, precision="bf16", folder=None):
    """Runs ``model`` (an ``MRLEncoderClassifier``) on OpenVINO: every later embedding of it
    (``encode_*``, ``verify_*``, the commands) goes through :class:`OpenVinoEncoder`.

    The encoder is exported to ONNX once (into ``folder``, else a temporary folder removed
    with the model). Where OpenVINO is not installed, or the CPU has no bf16, a one-line
    warning says so and the model runs as before (PyTorch) or in OpenVINO fp32.

    Arguments
    ---------
    model : MRLEncoderClassifier
        A model on the CPU.
    precision : str
        ``bf16`` (the fast path on CPUs with AVX-512 BF16 or AMX) or ``fp32``.
    folder : str, optional
        Where the ONNX file goes.

    Returns
    -------
    str
        The runtime now used: ``openvino-bf16``, ``openvino-fp32`` or ``pytorch``.
    """
    import tempfile

    from speechbrain_mrl.export.onnx import export_onnx

    try:
        core = _openvino().Core()
    except ModuleNotFoundError as err:
        logger.warning("%s; embedding with PyTorch", err)
        return "pytorch"
    if str(model.device) != "cpu":
        logger.warning("--runtime openvino runs on the CPU; embedding with PyTorch on %s", model.device)
        return "pytorch"
    if precision == "bf16" and not cpu_has_bf16(core):
        logger.warning("this CPU has no native bf16 (AVX-512 BF16 or AMX): OpenVINO in fp32")
        precision = "fp32"
    temporary = None if folder else tempfile.TemporaryDirectory(prefix="mrl-openvino-")
    folder = pathlib.Path(folder or temporary.name)
    encoder = model.encoder
    onnx_path = export_onnx(encoder, folder / "model.onnx")
    runtime = OpenVinoEncoder(onnx_path, precision=precision, sample_rate=model.sample_rate,
                              min_samples=encoder.min_samples,
                              hop_length=encoder.compute_features.hop_length,
                              long_seconds=model.long_audio_seconds or 1e9,
                              window_seconds=model.window_seconds)
    model.encoder = _OpenVinoEmbedding(runtime, encoder, temporary)
    return f"openvino-{precision}"
