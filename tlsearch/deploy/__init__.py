"""Prediction with an exported tlsearch model, using onnxruntime, numpy and pillow only (never torch)."""

from tlsearch.deploy._format import METADATA_KEY, ModelFormatError, read_metadata

__all__ = ["METADATA_KEY", "ModelFormatError", "read_metadata"]
