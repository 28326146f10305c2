"""The ``export`` command: TorchScript, ONNX (fp32, int8) and OpenVINO files of a model folder."""
import math
import pathlib
import tempfile

from speechbrain_mrl.export.onnx import (PerSizeOutputs, _example, calibration_waveforms, export_onnx,
                                         export_torchscript, input_length_note, load_encoder,
                                         onnx_parity, quantize_onnx)
from speechbrain_mrl.cli.options import Command, OptionError, positive_int


def _fingerprint(source):
    """The model folder's fingerprint, recorded in the files; None for a hub id (no local folder)."""
    from speechbrain_mrl.model.folder import model_fingerprint, resolve_model_source

    folder = pathlib.Path(resolve_model_source(source))
    return model_fingerprint(folder) if folder.is_dir() else None


def run_export(args):
    """The ``speechbrain-mrl export`` job: any of TorchScript, ONNX, int8 ONNX and OpenVINO.

    OpenVINO IR and int8 are made from an ONNX graph: without ``--onnx`` it is written to a
    temporary file and removed. Returns ``{kind: path}`` of the files written.
    """
    if not (args.torchscript or args.onnx or args.openvino or args.int8):
        raise OptionError("nothing to write: give one or more of --torchscript, --onnx, "
                          "--openvino, --int8")
    if args.check and not args.onnx:
        raise OptionError("argument --check: compares the --onnx file with PyTorch; give --onnx")
    enc = load_encoder(args.model_folder)
    written = {}
    if args.torchscript:  # needs nothing beyond torch: written even without the ONNX extra
        written["torchscript"] = str(export_torchscript(enc, args.torchscript))
        print(f"TorchScript model: {written['torchscript']}")
    if not (args.onnx or args.openvino or args.int8):
        return written
    with tempfile.TemporaryDirectory(prefix="mrl-export-") as tmp:
        out = export_onnx(enc, args.onnx or pathlib.Path(tmp) / "model.onnx",
                          opset_version=args.opset, model_sha256=_fingerprint(args.model_folder))
        if args.onnx:
            written["onnx"] = str(out)
            print(f"ONNX model: {out} (outputs {PerSizeOutputs(enc).output_names})")
            print(input_length_note(enc))
        if args.check:
            diff = onnx_parity(enc, out, *_example(seconds=3.1, batch=3, seed=1))
            if not math.isfinite(diff):
                raise ValueError(f"model {args.model_folder}: onnxruntime vs PyTorch max abs "
                                 f"difference is {diff} (NaN/Inf embeddings); {out} is not usable")
            print(f"onnxruntime vs PyTorch max abs difference: {diff:.3g}")
            written["onnx_max_abs_difference"] = diff
        if args.openvino:
            from speechbrain_mrl.export.openvino import export_openvino

            written["openvino"] = str(export_openvino(out, args.openvino))
            print(f"OpenVINO IR: {written['openvino']}")
        if args.int8:
            calibration = (calibration_waveforms(args.calibration_csv, args.calibration_clips,
                                                 enc.compute_features.sample_rate)
                           if args.calibration_csv else None)
            kind = "dynamic" if calibration is None else f"static, {len(calibration)} clips"
            written["int8"] = str(quantize_onnx(out, args.int8, calibration))
            print(f"int8 ONNX model ({kind}): {written['int8']}")
    return written


def _arguments(parser):
    parser.add_argument("--model_folder", required=True,
                        help="model folder (written by the recipe), hub id or shipped model name")
    parser.add_argument("--onnx", default=None, help="write an ONNX file here")
    parser.add_argument("--torchscript", default=None, help="write a TorchScript file here")
    parser.add_argument("--opset", type=positive_int, default=20, help="ONNX opset")
    parser.add_argument("--openvino", default=None,
                        help="write OpenVINO IR here (.xml, weights in the .bin beside it; "
                             "run it with speechbrain_mrl.export.openvino.OpenVinoEncoder)")
    parser.add_argument("--int8", default=None,
                        help="write an int8 ONNX model here (static with --calibration_csv, "
                             "else dynamic)")
    parser.add_argument("--calibration_csv", default=None,
                        help="manifest of real speech for static int8 scales")
    parser.add_argument("--calibration_clips", type=positive_int, default=64,
                        help="clips of --calibration_csv used")
    parser.add_argument("--check", action="store_true",
                        help="compare ONNX Runtime with PyTorch on random audio (max abs difference)")


COMMANDS = {"export": Command("write TorchScript, ONNX (fp32, int8) and/or OpenVINO models",
                              _arguments, run_export)}
