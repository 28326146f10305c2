"""TorchScript and ONNX export of a Matryoshka ReDimNet: waveform -> every-size embedding.

The exported graph contains the whole pipeline: the log-mel front end
(:class:`~speechbrain_mrl.model.features.ReDimNetFbank`, or ReDimNet2's TF-style
:class:`~speechbrain_mrl.model.features_tf.TFMelFbank`),
the ReDimNet or ReDimNet2 lobe and the Matryoshka head. Inputs ``wavs`` ``[batch, time]``
(16 kHz, float32, zero-padded; both axes dynamic) and ``wav_lens``
``[batch]`` (relative lengths in ``(0, 1]``, as in SpeechBrain), so one batch
may mix lengths; outputs ``embedding_<d>`` ``[batch, d]`` for every
Matryoshka size ``d`` (prefixes of one projection, not normalised; the same
as ``MRLEncoderClassifier.encode_batch`` with the same lengths).

ONNX export uses the ``torch.export``-based (dynamo) exporter, opset 20 (GELU
as one ``Gelu`` node). In the graph the front end's spectrogram is a strided
convolution with windowed DFT rows instead of an ``STFT`` node (equal to
float rounding; OpenVINO cannot read a dynamic-length ``STFT``), so ONNX
Runtime and OpenVINO both run the file; :class:`OnnxEncoder` and
:class:`~speechbrain_mrl.export.openvino.OpenVinoEncoder` check the inputs.
On x86 CPUs with AVX-512 BF16/AMX, OpenVINO in bf16 is the fast path
(``--openvino`` writes OpenVINO IR); ONNX Runtime's int8 is not faster than
its fp32 on this network (see ``docs/benchmarks.md``).

Input lengths: the graph runs any length in one pass (ONNX Runtime does not
enforce the time range the export traces over), but the self-attention of
the 1-D blocks becomes plain MatMul/Softmax over all frames (100 per second),
so memory and time grow with the square of the length: the attention scores
take ``4 bytes x heads x frames^2`` per utterance, about 0.6 GB at 60 s and
58 GB at 600 s with 4 heads. Feed at most about a minute per utterance;
:class:`~speechbrain_mrl.export.openvino.OpenVinoEncoder` embeds longer
utterances window by window exactly as the PyTorch model does (the graph
split at the pooled statistics, the windows' statistics merged), in memory
and time linear in the duration. The export command prints this model's
figures.

Every file is written to a temporary file in its folder and renamed into
place when complete: a failed export leaves the previous file as it was.

Which model a file embeds with: the ONNX file records the model folder's
fingerprint (:func:`~speechbrain_mrl.model.folder.model_fingerprint`) in its
``metadata_props`` (``speechbrain_mrl.model_sha256``, with
``speechbrain_mrl.export_format``), and every exported file gets an export
record beside it, ``<file>.json``, saying the same. :class:`OnnxEncoder` and
:class:`~speechbrain_mrl.export.openvino.OpenVinoEncoder` check the two agree
when they open a file (:func:`check_record`): another model's file put in its
place is refused. A file of an older export, which records nothing, opens with
a warning.

Command line::

    speechbrain-mrl export --model_folder results/mrl_b2/1986/model --onnx mrl_b2.onnx \\
        [--torchscript mrl_b2.pt] [--int8 mrl_b2.int8.onnx] [--openvino mrl_b2.xml] [--check]

Authors
-------
 * speechbrain-mrl developers
"""
import contextlib
import importlib
import io
import json
import logging
import pathlib
import re
import warnings

import torch
from torch import nn

from speechbrain_mrl.utils.files import atomic_output, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "PerSizeOutputs",
    "load_encoder",
    "export_torchscript",
    "export_onnx",
    "quantize_onnx",
    "onnx_parity",
    "OnnxEncoder",
    "inference_session",
    "check_io",
    "check_record",
    "record_path",
    "recorded_size",
    "RECORDED_SIZES",
]

#: Prefix of the keys the export records in an ONNX file's ``metadata_props``.
METADATA_PREFIX = "speechbrain_mrl."
#: Version of what the export records (a file recording none is from an older export).
EXPORT_FORMAT = "1"
#: Input sizes an export records, with the values the wrappers assume for an export
#: recording none (a ReDimNet's: 257 samples at least, 10-ms frames).
RECORDED_SIZES = {"min_samples": 257, "hop_length": 160}


def recorded_size(recorded, name, given=None):
    """``given`` if not None, else what an export ``recorded`` of ``name`` (a key of
    :data:`RECORDED_SIZES`), else its value for older exports.

    Example
    -------
    >>> recorded_size({"min_samples": "480"}, "min_samples"), recorded_size({}, "min_samples")
    (480, 257)
    >>> recorded_size({"min_samples": "480"}, "min_samples", given=600)
    600
    """
    if given is not None:
        return given
    return int(recorded.get(name, RECORDED_SIZES[name]))


class PerSizeOutputs(nn.Module):
    """An :class:`~speechbrain_mrl.model.encoder.MRLEncoder` with one output per Matryoshka size.

    Graph formats name each output; this wrapper returns ``(emb_d1, emb_d2, ...)``
    for ``encoder.mrl_dims`` from one pass of the encoder.

    Arguments
    ---------
    encoder : MRLEncoder
        The model (front end, lobe, Matryoshka head).

    Example
    -------
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> from speechbrain_mrl.model.matryoshka import MatryoshkaProjection
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> enc.mrl_head = MatryoshkaProjection(enc.pool_dim, 8, [4, 8])
    >>> outputs = PerSizeOutputs(enc).eval()
    >>> [e.shape for e in outputs(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))]
    [torch.Size([2, 4]), torch.Size([2, 8])]
    >>> outputs.input_names, outputs.output_names
    (['wavs', 'wav_lens'], ['embedding_4', 'embedding_8'])
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    @property
    def output_names(self):
        """``embedding_<d>`` for every size."""
        return [f"embedding_{d}" for d in self.encoder.mrl_dims]

    #: Graph input names.
    input_names = ["wavs", "wav_lens"]

    def forward(self, wavs, wav_lens):
        """Embeds zero-padded waveforms ``[B, T]`` of relative lengths ``[B]``.

        Returns ``(emb_d1, emb_d2, ...)``.
        """
        return tuple(self.encoder.all_dims(wavs, wav_lens).values())


def load_encoder(model_folder):
    """The :class:`~speechbrain_mrl.model.encoder.MRLEncoder` (CPU, eval) of a model folder.

    Raises
    ------
    ValueError
        NaN/Inf weights or statistics, naming the folder and the tensors
        (:meth:`~speechbrain_mrl.inference.interface.MRLEncoderClassifier.check_weights`).
    """
    from speechbrain_mrl.inference.interface import load_model

    return load_model(model_folder).encoder.eval()


def require_export_extra(*modules):
    """Raises ``ModuleNotFoundError`` naming the extra to install when a module is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ModuleNotFoundError(
                f"ONNX export needs the '{name}' package: pip install -e \".[export]\" "
                "(or pip install onnx onnxruntime onnxscript)", name=name) from err


def _example(seconds=2.0, batch=2, sample_rate=16000, seed=0):
    """``(wavs, wav_lens)``: noise, the last utterance 3/4 of the others' length (zero-padded)."""
    g = torch.Generator().manual_seed(seed)
    wavs = 0.1 * torch.randn(batch, int(seconds * sample_rate), generator=g)
    lens = torch.ones(batch)
    lens[-1] = 0.75
    wavs[-1, int(0.75 * wavs.shape[1]):] = 0.0
    return wavs, lens


@contextlib.contextmanager
def _graph_front_end(encoder):
    """While exporting: the front end's spectrogram as a convolution (any runtime reads it).

    ReDimNet2's TF-style front end (``TFMelFbank``) always is one: nothing to switch.
    """
    fbank = encoder.compute_features
    if not hasattr(fbank, "stft_as_matmul"):
        yield
        return
    before, fbank.stft_as_matmul = fbank.stft_as_matmul, True
    try:
        yield
    finally:
        fbank.stft_as_matmul = before


def export_torchscript(encoder, path, example=None):
    """Traces the encoder to TorchScript and saves it.

    Arguments
    ---------
    encoder : MRLEncoder
        In eval mode.
    path : str or os.PathLike
        Output ``.pt`` file (``torch.jit.load`` reads it).
    example : tuple of torch.Tensor, optional
        Example ``(wavs [B, T], wav_lens [B])`` (default: 2 x 2 s of noise,
        one of them padded).

    Returns
    -------
    pathlib.Path
    """
    module = PerSizeOutputs(encoder).eval()
    example = _example() if example is None else example
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks of the lobe/head become constants: expected, not a problem
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, tuple(example), check_trace=False, strict=False)
    buffer = io.BytesIO()  # a failed write to a file aborts the process inside torch.jit.save
    torch.jit.save(traced, buffer)
    path = pathlib.Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def export_onnx(encoder, path, example=None, min_seconds=0.5, max_seconds=600.0,
                sample_rate=16000, opset_version=20, optimize=True, model_sha256=None):
    """Exports the encoder to ONNX with dynamic batch and time axes.

    Arguments
    ---------
    encoder : MRLEncoder
        In eval mode.
    path : str or os.PathLike
        Output ``.onnx`` file (weights embedded).
    example : tuple of torch.Tensor, optional
        Example ``(wavs [B, T], wav_lens [B])`` (default: 2 x 2 s of noise,
        one of them padded).
    min_seconds, max_seconds : float
        Range ``torch.export`` traces the time axis over (the graph's shape
        logic holds in it); ONNX Runtime does not enforce it. Memory grows
        with the square of the length (see the module documentation).
    sample_rate : int
        Sample rate of the model.
    opset_version : int
        ONNX opset.
    model_sha256 : str, optional
        The model folder's fingerprint, recorded in the file's ``metadata_props``
        and in its export record ``<path>.json`` (:func:`check_record`).

    The file also records the encoder's ``min_samples`` and its front end's ``hop_length``,
    which :class:`OnnxEncoder` and the OpenVINO wrapper take as their defaults.

    Returns
    -------
    pathlib.Path
    """
    require_export_extra("onnx", "onnxscript")
    module = PerSizeOutputs(encoder).eval()
    example = _example() if example is None else example
    batch = torch.export.Dim("batch", min=1, max=4096)
    time = torch.export.Dim("time", min=int(min_seconds * sample_rate),
                            max=int(max_seconds * sample_rate))
    with torch.no_grad(), _graph_front_end(encoder):
        program = torch.onnx.export(
            module, tuple(example), dynamo=True, input_names=module.input_names,
            output_names=module.output_names,
            dynamic_shapes={"wavs": {0: batch, 1: time}, "wav_lens": {0: batch}},
            opset_version=opset_version, external_data=False, verbose=False, optimize=optimize,
        )
    recorded = {"export_format": EXPORT_FORMAT, "min_samples": str(int(encoder.min_samples)),
                "hop_length": str(int(encoder.compute_features.hop_length))}
    if model_sha256 is not None:
        recorded["model_sha256"] = str(model_sha256)
    program.model.metadata_props.update({METADATA_PREFIX + k: v for k, v in recorded.items()})
    path = pathlib.Path(path)
    with atomic_output(path) as tmp:
        program.save(str(tmp), external_data=False)
    write_record(path, recorded)
    return path


def quantize_onnx(onnx_path, out_path, calibration=None, op_types=("MatMul", "Gemm", "Conv")):
    """int8 quantisation of an exported model (ONNX Runtime; weights int8 per channel).

    With ``calibration`` waveforms (real speech), static quantisation: each
    activation gets a fixed scale from its range over them (QDQ format, which
    ONNX Runtime runs with integer convolutions; the faster of the two on CPU).
    Without, dynamic quantisation: activations are scaled on the fly, no data
    needed. The front end (spectrogram, mel filterbank) stays in float either
    way. Neither is faster than fp32 ONNX Runtime on ReDimNet (grouped
    convolutions of 4 channels gain nothing from int8, and every boundary to
    the float layers costs a (de)quantisation; ``docs/benchmarks.md``): the
    int8 file keeps the EER and is a fifth smaller.

    Arguments
    ---------
    onnx_path : str or os.PathLike
        The float model (:func:`export_onnx`).
    out_path : str or os.PathLike
        The int8 model.
    calibration : list of torch.Tensor, optional
        1-D waveforms at the model's sample rate (a few dozen utterances;
        silent or NaN/Inf ones are refused).
    op_types : sequence of str
        ONNX operators to quantise.

    Returns
    -------
    pathlib.Path
    """
    from speechbrain_mrl.data.audio import signal_problem

    if calibration is not None:
        if not len(calibration):
            raise ValueError("static int8 quantisation needs calibration waveforms, got none")
        for i, wav in enumerate(calibration):
            problem = signal_problem(wav)
            if problem:
                raise ValueError(f"calibration waveform {i}: {problem}; static int8 scales need "
                                 "real speech")
    require_export_extra("onnx", "onnxruntime")
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    source = onnx.load(str(onnx_path))
    front_end = _front_end_nodes(source.graph)
    # the quantised file keeps the source's metadata_props: the same model
    recorded = recorded_metadata({p.key: p.value for p in source.metadata_props})

    class Waveforms(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(calibration)

        def get_next(self):
            wav = next(self.remaining, None)
            if wav is None:
                return None
            return {"wavs": wav.float().reshape(1, -1).numpy(), "wav_lens": torch.ones(1).numpy()}

    out_path = pathlib.Path(out_path)
    with atomic_output(out_path) as tmp:
        if calibration is None:
            quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=list(op_types),
                             nodes_to_exclude=front_end)
        else:
            quantize_static(str(onnx_path), str(tmp), Waveforms(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                            nodes_to_exclude=front_end)
    write_record(out_path, recorded)
    return out_path


def _front_end_nodes(graph):
    """Names of the nodes of the log-mel front end: the mel product and all it depends on.

    The spectrogram and mel products see power spectra (a huge dynamic range):
    quantised, real speech fell to a cosine of 0.35 with fp32; they stay in float.
    """
    producer = {out: n for n in graph.node for out in n.output}
    todo = [n for n in graph.node if any("compute_features.mel_fb" in i for i in n.input)]
    names = set()
    while todo:
        node = todo.pop()
        if node.name not in names:
            names.add(node.name)
            todo += [producer[i] for i in node.input if i in producer]
    return sorted(names)


def calibration_waveforms(manifest, n_clips=64, sample_rate=16000):
    """``n_clips`` waveforms spread evenly over a manifest's rows (sorted by ID).

    Silent (all-zero or empty) clips are left out with a warning: their
    activations would set the int8 scales far from those of speech.

    Raises
    ------
    ValueError
        No rows, a clip with NaN/Inf samples (naming its row), or only silent clips.
    """
    from speechbrain_mrl.data.audio import read_row_audio, signal_problem
    from speechbrain_mrl.data.manifests import read_manifest

    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"{manifest}: no rows to calibrate on")
    ids = sorted(rows)
    picked = [ids[round(i * len(ids) / min(n_clips, len(ids)))] for i in range(min(n_clips, len(ids)))]
    clips, silent = [], []
    for uid in picked:
        wav = read_row_audio(rows[uid], sample_rate)
        if not torch.isfinite(wav).all():
            raise ValueError(f"{manifest}: calibration clip {uid} ({rows[uid]['wav']}) has NaN/Inf "
                             "samples")
        if signal_problem(wav) is None:
            clips.append(wav)
        else:
            silent.append(uid)
    if not clips:
        raise ValueError(f"{manifest}: all {len(picked)} calibration clips are silent; "
                         "static int8 scales need real speech")
    if silent:
        warnings.warn(f"{manifest}: {len(silent)} silent calibration clips left out, "
                      f"e.g. {silent[:3]}")
    return clips


def record_path(path):
    """The export record beside an exported file: ``<file>.json``.

    Example
    -------
    >>> record_path("out/mrl_b2.onnx").name
    'mrl_b2.onnx.json'
    """
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def write_record(path, recorded):
    """Writes the export record of ``path``: the model fingerprint the file records (or null),
    and the input sizes it records (shortest waveform, frame shift) where it records them."""
    record = {"file": pathlib.Path(path).name, "export_format": EXPORT_FORMAT,
              "model_sha256": recorded.get("model_sha256")}
    record.update({k: int(recorded[k]) for k in RECORDED_SIZES if k in recorded})
    return write_text_atomic(record_path(path), json.dumps(record, indent=1) + "\n")


def recorded_metadata(props):
    """What the export recorded, ``{key: value}``, of a file's metadata ``{name: value}``.

    Example
    -------
    >>> recorded_metadata({"speechbrain_mrl.model_sha256": "ab12", "onnx.infer": "x"})
    {'model_sha256': 'ab12'}
    """
    return {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}


def _read_record(path):
    """The export record at ``path`` as a dict (ValueError naming it when unreadable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable export record ({err}); export again") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: an export record must be a JSON object; export again")
    return record


def check_record(path, recorded, model_sha256=None, required=("export_format",)):
    """Refuses an exported file whose model fingerprint is not the one expected of it.

    Expected: the fingerprint in the export record beside the file
    (:func:`record_path`, when there is one) and ``model_sha256`` (when given).
    A file recording nothing (an older export, or another program's) is refused when
    something is expected of it; otherwise it opens with a warning.

    Arguments
    ---------
    path : str or os.PathLike
        The file opened.
    recorded : dict
        What it records (:func:`recorded_metadata`).
    model_sha256 : str, optional
        The model folder fingerprint it must record.
    required : sequence of str
        The keys an export of this version records.

    Raises
    ------
    ValueError
        Another fingerprint than expected, naming the file and both fingerprints.
    """
    path = pathlib.Path(path)
    expected = []
    if record_path(path).is_file():
        expected.append((f"{record_path(path).name} beside it",
                         _read_record(record_path(path)).get("model_sha256")))
    if model_sha256 is not None:
        expected.append(("the model_sha256 asked for", model_sha256))
    if any(key not in recorded for key in required):
        if expected:
            where, sha = expected[0]
            raise ValueError(f"{path} records no export metadata, but {where} says model "
                             f"{sha or '(none recorded)'}: not the file exported; export it again")
        warnings.warn(f"{path} records no model fingerprint (exported by an older speechbrain-mrl "
                      "or by another program): which model it embeds with is not checked; export "
                      "it again to record it")
        return
    got = recorded.get("model_sha256")
    for where, sha in expected:
        if got != sha:
            raise ValueError(f"{path} is an export of model {got or '(none recorded)'}, but "
                             f"{where} says model {sha or '(none recorded)'}: a swapped or stale "
                             "file; export it again")


def check_io(path, inputs, outputs):
    """Refuses a model without the inputs and outputs of :func:`export_onnx`, naming the file.

    Arguments
    ---------
    path : str or os.PathLike
        The model file (named in the error).
    inputs, outputs : list of tuple
        ``(name, rank)`` of the model's inputs and outputs (rank None: unknown).

    Example
    -------
    >>> check_io("m.onnx", [("wavs", 2), ("wav_lens", 1)], [("embedding_64", 2)])
    >>> check_io("m.onnx", [("x", 3)], [("y", 3)])
    Traceback (most recent call last):
    ...
    ValueError: m.onnx is not a speechbrain-mrl export: inputs x (rank 3), outputs y (rank 3); \
expected inputs wavs [batch, time] and wav_lens [batch], outputs embedding_<d> [batch, d]
    """
    def listed(ports):
        return ", ".join(f"{n} (rank {'?' if r is None else r})" for n, r in ports) or "none"

    good_outputs = outputs and all(re.fullmatch(r"embedding_\d+", n) and r == 2
                                   for n, r in outputs)
    if list(inputs) != [("wavs", 2), ("wav_lens", 1)] or not good_outputs:
        raise ValueError(f"{path} is not a speechbrain-mrl export: inputs {listed(inputs)}, "
                         f"outputs {listed(outputs)}; expected inputs wavs [batch, time] and "
                         "wav_lens [batch], outputs embedding_<d> [batch, d]")


class OnnxEncoder:
    """An exported model run by ONNX Runtime, its inputs checked as the PyTorch interface does.

    The ONNX graph does not check its inputs: relative lengths of 0, NaN, -1 or
    1.5, silent or NaN audio give meaningless embeddings. This wrapper checks
    them first with :func:`speechbrain_mrl.data.audio.check_waveforms` (the check of
    ``MRLEncoderClassifier``), so bad input raises
    :class:`~speechbrain_mrl.data.audio.AudioError` naming the utterance.

    When opened, the file must have the export's inputs and outputs
    (:func:`check_io`) and record the model fingerprint its export record
    ``<file>.json`` and ``model_sha256`` say (:func:`check_record`); else
    ``ValueError`` naming the file. ``model_sha256`` (attribute): the fingerprint
    it records, None if none.

    Arguments
    ---------
    onnx_path : str or os.PathLike
        A model written by :func:`export_onnx` (or its int8 version).
    sample_rate : int
        The model's rate.
    min_samples : int, optional
        Shortest waveform the model embeds (``MRLEncoder.min_samples``; default: what
        the file records, 257 for an older export).
    providers : sequence of str
        ONNX Runtime execution providers.
    threads : int, optional
        Intra-op threads (default: ONNX Runtime's choice, one per core).
    spinning : bool
        Let idle threads spin after a call (lower latency when nothing else
        runs; off by default, as spinning threads slow whatever the process
        does between calls, e.g. decoding audio or a PyTorch model).
    model_sha256 : str, optional
        The model folder's fingerprint the file must record
        (:func:`~speechbrain_mrl.model.folder.model_fingerprint`).

    Example
    -------
    >>> encoder = OnnxEncoder("mrl.onnx")                     # doctest: +SKIP
    >>> encoder(wavs, wav_lens)["embedding_64"].shape          # doctest: +SKIP
    (2, 64)
    """

    def __init__(self, onnx_path, sample_rate=16000, min_samples=None,
                 providers=("CPUExecutionProvider",), threads=None, spinning=False,
                 model_sha256=None):
        require_export_extra("onnxruntime")
        self.session = inference_session(onnx_path, threads, spinning, providers)
        check_io(onnx_path, *([(p.name, None if p.shape is None else len(p.shape)) for p in ports]
                              for ports in (self.session.get_inputs(), self.session.get_outputs())))
        recorded = recorded_metadata(self.session.get_modelmeta().custom_metadata_map)
        check_record(onnx_path, recorded, model_sha256)
        self.model_sha256 = recorded.get("model_sha256")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.sample_rate = int(sample_rate)
        self.min_samples = int(recorded_size(recorded, "min_samples", min_samples))

    def __call__(self, wavs, wav_lens=None):
        """``{output name: [B, d] array}`` of a zero-padded batch ``[B, T]`` (+ relative lengths)."""
        from speechbrain_mrl.data.audio import check_waveforms

        wavs, wav_lens = check_waveforms(torch.as_tensor(wavs), wav_lens, self.min_samples,
                                         self.sample_rate)
        outs = self.session.run(None, {"wavs": wavs.float().numpy(),
                                       "wav_lens": wav_lens.float().numpy()})
        return dict(zip(self.output_names, outs))


def inference_session(onnx_path, threads=None, spinning=False,
                      providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session set for inference (all graph optimisations, one inter-op thread).

    Arguments as in :class:`OnnxEncoder`.
    """
    require_export_extra("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # ONNX Runtime's C++ log (graph-optimiser notes) follows its Python logger's level, which
    # the commands raise to errors unless --verbose
    quiet = logging.getLogger("onnxruntime").getEffectiveLevel() >= logging.ERROR
    opts.log_severity_level = 3 if quiet else 2
    return ort.InferenceSession(str(onnx_path), opts, providers=list(providers))


def onnx_parity(encoder, onnx_path, wavs, wav_lens=None):
    """Max absolute difference between PyTorch and onnxruntime outputs.

    Arguments
    ---------
    encoder : MRLEncoder
        Reference model.
    onnx_path : str or os.PathLike
        Exported model.
    wavs : torch.Tensor
        Input ``[B, T]``, zero-padded.
    wav_lens : torch.Tensor, optional
        Relative lengths ``[B]`` (default: all 1).

    Returns
    -------
    float
        NaN or Inf where either side gives NaN/Inf embeddings.
    """
    require_export_extra("onnxruntime")
    import onnxruntime as ort

    wav_lens = torch.ones(wavs.shape[0]) if wav_lens is None else wav_lens.float()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"wavs": wavs.float().numpy(), "wav_lens": wav_lens.numpy()})
    with torch.no_grad():
        refs = PerSizeOutputs(encoder).eval()(wavs.float(), wav_lens)
    if len(outs) != len(refs):
        raise RuntimeError(f"ONNX model gives {len(outs)} outputs, expected {len(refs)}")
    # a tensor max propagates NaN (Python's max() keeps the first value it compares NaN with)
    return float(torch.stack([(torch.from_numpy(o) - r).abs().max() for o, r in zip(outs, refs)])
                 .max())


def input_length_note(encoder):
    """One line on the input lengths the exported graph runs with reasonable memory.

    Example
    -------
    >>> from speechbrain_mrl.model.encoder import MRLEncoder
    >>> enc = MRLEncoder.from_config(dict(F=16, C=4, stages_setup=[(1, 1, 1, [(3, 3)], 4)],
    ...                                   group_divisor=2, embed_dim=8))
    >>> note = input_length_note(enc)
    >>> note[note.index("4 heads"):note.index("):")]
    '4 heads: 0.58 GB per utterance at 60 s, 57.6 GB at 600 s'
    """
    from speechbrain_mrl.model.redimnet import MultiHeadSelfAttention

    heads = max((m.num_heads for m in encoder.modules() if isinstance(m, MultiHeadSelfAttention)),
                default=0)
    if not heads:
        return "input length: any, in one pass; memory and time grow linearly with it"
    fps = encoder.compute_features.sample_rate / encoder.compute_features.hop_length
    gb = [4 * heads * (fps * s) ** 2 / 1e9 for s in (60, 600)]
    return (f"input length: any, in one pass; memory and time grow with its square (attention "
            f"scores over {fps:g} frames/s, {heads} heads: {gb[0]:.2g} GB per utterance at 60 s, "
            f"{gb[1]:.3g} GB at 600 s): window audio longer than about 60 s outside the graph")
