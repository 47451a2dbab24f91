"""File formats: detector images, masks, .chi curves, atomic writes."""

from .atomic import atomic_save_bytes, atomic_write
from .chi import ChiCurve, format_chi_rows, read_chi, write_chi
from .images import IMAGE_SUFFIXES, image_complete, is_image_file, read_image
from .masks import fit2d_mask_bytes, read_fit2d_mask, read_mask, write_fit2d_mask

__all__ = [
    "atomic_write",
    "atomic_save_bytes",
    "IMAGE_SUFFIXES",
    "is_image_file",
    "read_image",
    "image_complete",
    "read_mask",
    "read_fit2d_mask",
    "write_fit2d_mask",
    "fit2d_mask_bytes",
    "ChiCurve",
    "write_chi",
    "read_chi",
    "format_chi_rows",
]
