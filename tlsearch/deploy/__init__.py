"""Prediction with an exported tlsearch model, using onnxruntime, numpy and pillow only (never torch).

>>> from tlsearch.deploy import Predictor                            # doctest: +SKIP
>>> Predictor("model.onnx").predict(["photo.jpg"], top_k=3)[0].top_k  # doctest: +SKIP
>>> Predictor("s3://bucket/studies/pets/model.onnx")                 # doctest: +SKIP

A store URL's model is downloaded once into a local cache (:func:`fetch_model`).
"""

from tlsearch.deploy._files import IMAGE_EXTENSIONS, collect_images
from tlsearch.deploy._format import METADATA_KEY, TASKS, ModelFormatError, read_metadata
from tlsearch.deploy._predictor import Prediction, Predictor
from tlsearch.deploy._provenance import PluginSource, Provenance
from tlsearch.deploy._remote import ModelFetchError, default_cache_dir, fetch_model, is_remote

__all__ = [
    "IMAGE_EXTENSIONS",
    "METADATA_KEY",
    "TASKS",
    "ModelFetchError",
    "ModelFormatError",
    "PluginSource",
    "Prediction",
    "Predictor",
    "Provenance",
    "collect_images",
    "default_cache_dir",
    "fetch_model",
    "is_remote",
    "read_metadata",
]
