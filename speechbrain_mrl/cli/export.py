"""The ``export`` command: TorchScript, ONNX (fp32, int8) and OpenVINO files of a model folder."""
import math

from speechbrain_mrl.export.onnx import (PerSizeOutputs, _example, calibration_waveforms, export_onnx,
                                         export_torchscript, input_length_note, load_encoder,
                                         onnx_parity, quantize_onnx)
from speechbrain_mrl.cli.options import Command, positive_int



def run_export(args):
    """The ``speechbrain-mrl export`` job; returns the ONNX file."""
    enc = load_encoder(args.model_folder)
    if args.torchscript:  # needs nothing beyond torch: written even without the ONNX extra
        print(f"TorchScript model: {export_torchscript(enc, args.torchscript)}")
    out = export_onnx(enc, args.onnx, opset_version=args.opset)
    print(f"ONNX model: {out} (outputs {PerSizeOutputs(enc).output_names})")
    print(input_length_note(enc))
    if args.check:
        diff = onnx_parity(enc, out, *_example(seconds=3.1, batch=3, seed=1))
        if not math.isfinite(diff):
            raise ValueError(f"model {args.model_folder}: onnxruntime vs PyTorch max abs "
                             f"difference is {diff} (NaN/Inf embeddings); {out} is not usable")
        print(f"onnxruntime vs PyTorch max abs difference: {diff:.3g}")
    if args.openvino:
        from speechbrain_mrl.export.openvino import export_openvino

        print(f"OpenVINO IR: {export_openvino(out, args.openvino)}")
    if args.int8:
        calibration = (calibration_waveforms(args.calibration_csv, args.calibration_clips,
                                             enc.compute_features.sample_rate)
                       if args.calibration_csv else None)
        kind = "dynamic" if calibration is None else f"static, {len(calibration)} clips"
        print(f"int8 ONNX model ({kind}): {quantize_onnx(out, args.int8, calibration)}")
    return out


def _arguments(parser):
    parser.add_argument("--model_folder", required=True, help="model folder written by the recipe")
    parser.add_argument("--onnx", required=True, help="ONNX file to write")
    parser.add_argument("--torchscript", default=None, help="also write a TorchScript file here")
    parser.add_argument("--opset", type=positive_int, default=20, help="ONNX opset")
    parser.add_argument("--openvino", default=None,
                        help="also write OpenVINO IR here (.xml, weights in the .bin beside it; "
                             "run it with speechbrain_mrl.export.openvino.OpenVinoEncoder)")
    parser.add_argument("--int8", default=None,
                        help="also write an int8 ONNX model here (static with --calibration_csv, "
                             "else dynamic)")
    parser.add_argument("--calibration_csv", default=None,
                        help="manifest of real speech for static int8 scales")
    parser.add_argument("--calibration_clips", type=positive_int, default=64,
                        help="clips of --calibration_csv used")
    parser.add_argument("--check", action="store_true",
                        help="compare ONNX Runtime with PyTorch on random audio (max abs difference)")


COMMANDS = {"export": Command("export the model to ONNX (and TorchScript, int8 ONNX)", _arguments,
                              run_export)}
