"""Augmentations in two parts.

- `pipeline.augment.cpu`: per-sample work on reader actors (decode with DCT downscaling,
  random resized crop, flip) -> two uint8 views.
- `pipeline.augment.device`: batched work on the train worker's device (colour jitter,
  grayscale, blur, solarize, normalize) on a whole (N, C, H, W) uint8 batch.
"""

from pipeline.augment.cpu import (JPEG_EXTS, decode_image, decode_min_side, eval_view,
                                  random_resized_crop_params, two_views)
from pipeline.augment.device import BatchAugment, normalize

__all__ = ["JPEG_EXTS", "BatchAugment", "decode_image", "decode_min_side", "eval_view",
           "normalize", "random_resized_crop_params", "two_views"]
