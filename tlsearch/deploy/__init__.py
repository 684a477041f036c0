"""Prediction with an exported tlsearch model, using onnxruntime, numpy and pillow only (never torch).

>>> from tlsearch.deploy import Predictor                            # doctest: +SKIP
>>> Predictor("model.onnx").predict(["photo.jpg"], top_k=3)[0].top_k  # doctest: +SKIP
"""

from tlsearch.deploy._files import IMAGE_EXTENSIONS, collect_images
from tlsearch.deploy._format import METADATA_KEY, TASKS, ModelFormatError, read_metadata
from tlsearch.deploy._predictor import Prediction, Predictor
from tlsearch.deploy._provenance import PluginSource, Provenance

__all__ = [
    "IMAGE_EXTENSIONS",
    "METADATA_KEY",
    "TASKS",
    "ModelFormatError",
    "PluginSource",
    "Prediction",
    "Predictor",
    "Provenance",
    "collect_images",
    "read_metadata",
]
