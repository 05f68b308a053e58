"""Exporting our networks to deployment formats (ONNX) and running them without PyTorch."""

from talkinghead.export.onnx import (
    ONNX_FILE_NAMES,
    ONNX_IO_NAMES,
    OnnxNetwork,
    example_inputs,
    export_onnx,
)

__all__ = ["ONNX_FILE_NAMES", "ONNX_IO_NAMES", "OnnxNetwork", "example_inputs", "export_onnx"]
