"""Data: finding labelled images, decoding them once into a uint8 cache, and batches on the device."""

from tlsearch.data.augment import (
    Normalizer,
    batch_indices,
    draw_crop_params,
    normalize,
    random_resized_crop_flip,
)
from tlsearch.data.batches import (
    Placement,
    ResidentBatches,
    StreamingBatches,
    TensorBatches,
    batch_source,
    plan_placement,
)
from tlsearch.data.cache import DecodedImages, cache_key, decode_images
from tlsearch.data.check import CheckedImages, check_images
from tlsearch.data.lock import LockTimeout, file_lock
from tlsearch.data.sources import (
    IMAGE_EXTENSIONS,
    ImageList,
    Splits,
    load_all_splits,
    load_splits,
    read_csv,
    scan_folder,
    split,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "CheckedImages",
    "DecodedImages",
    "ImageList",
    "LockTimeout",
    "Normalizer",
    "Placement",
    "ResidentBatches",
    "Splits",
    "StreamingBatches",
    "TensorBatches",
    "batch_indices",
    "batch_source",
    "cache_key",
    "check_images",
    "decode_images",
    "draw_crop_params",
    "file_lock",
    "load_all_splits",
    "load_splits",
    "normalize",
    "plan_placement",
    "random_resized_crop_flip",
    "read_csv",
    "scan_folder",
    "split",
]
