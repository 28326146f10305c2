"""Deployment: TorchScript, ONNX (fp32, int8) and OpenVINO, and their runtimes.

* :mod:`~speechbrain_mrl.export.onnx`: TorchScript / ONNX export, int8, ``OnnxEncoder``.
* :mod:`~speechbrain_mrl.export.openvino`: ``OpenVinoEncoder`` (bf16/fp32), ``export_openvino``.
"""
from speechbrain_mrl.utils.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "OnnxEncoder": "onnx", "export_onnx": "onnx", "export_torchscript": "onnx",
    "quantize_onnx": "onnx", "OpenVinoEncoder": "openvino", "export_openvino": "openvino",
})
__all__ = __dir__()
