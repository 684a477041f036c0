"""ONNX export, verification and INT8 quantisation of a trained model.

:func:`export_onnx` writes one self-describing ``.onnx`` file (plus ``model.json``) and refuses to
keep it unless onnxruntime reproduces PyTorch's outputs; :func:`quantize_int8` makes a static QDQ
INT8 copy and measures what it costs in accuracy.
"""

from tlsearch.export._onnx import EXPORTERS, ExportReport, export_onnx
from tlsearch.export._quantize import QuantizationReport, quantize_int8

__all__ = ["EXPORTERS", "ExportReport", "QuantizationReport", "export_onnx", "quantize_int8"]
