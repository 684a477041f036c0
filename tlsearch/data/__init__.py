"""Data: finding labelled images, decoding them once into a uint8 cache, and batches on the device."""

from tlsearch.data.augment import batch_indices, normalize, random_resized_crop_flip
from tlsearch.data.cache import DecodedImages, decode_images
from tlsearch.data.sources import IMAGE_EXTENSIONS, ImageList, load_splits, read_csv, scan_folder, split

__all__ = [
    "IMAGE_EXTENSIONS",
    "DecodedImages",
    "ImageList",
    "load_splits",
    "batch_indices",
    "decode_images",
    "normalize",
    "random_resized_crop_flip",
    "read_csv",
    "scan_folder",
    "split",
]
