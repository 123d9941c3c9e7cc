"""Crop pairs for MoCo and CAST: boxes, resized crops, crop masks and per-crop augmentation.

:func:`build_pair_transform` returns a callable ``(image, mask, rng)`` whose
output is a deterministic function of the image, the mask and the state of
the NumPy generator ``rng``. Boxes and augmentations draw only from ``rng``,
never from the global random state of NumPy or torch.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from cast.errors import ConfigError, DataError
from cast.method import boxes
from cast.method.augment import CropAugmentation
from cast.method.boxes import Box
from cast.method.config import METHODS, MethodConfig
from cast.method.gradcam import gradcam_resolution


def crop_image(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Cut ``box`` out of an H×W×3 array and resize it to ``size``×``size``.

    Bilinear interpolation without antialiasing (OpenCV ``INTER_LINEAR``),
    as in the released CAST code.
    """
    x1, y1, x2, y2 = box
    return cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def crop_mask(mask: np.ndarray, box: Box, size: int, region: Box | None = None) -> np.ndarray:
    """Cut ``box`` out of a boolean mask and resize it to ``size``×``size`` by nearest neighbour.

    Output pixel ``i`` takes source pixel ``floor((i + 0.5) * extent / size)``
    of the box (OpenCV ``INTER_NEAREST_EXACT``, the convention of PIL). With
    ``region`` given, output pixels whose source pixel lies outside
    ``region`` (image coordinates) are set to False.
    """
    x1, y1, x2, y2 = box
    source = np.ascontiguousarray(mask[y1:y2, x1:x2]).view(np.uint8)
    cropped = cv2.resize(source, (size, size), interpolation=cv2.INTER_NEAREST_EXACT).view(bool)
    if region is not None:
        rx1, ry1, rx2, ry2 = region
        centres = (np.arange(size) + 0.5) / size
        rows = y1 + (centres * (y2 - y1)).astype(np.intp)
        columns = x1 + (centres * (x2 - x1)).astype(np.intp)
        inside_rows = (rows >= ry1) & (rows < ry2)
        inside_columns = (columns >= rx1) & (columns < rx2)
        cropped &= inside_rows[:, None] & inside_columns[None, :]
    return cropped


def downsample_mask(mask: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Resize an H×W mask to the Grad-CAM resolution: bilinear with ``align_corners=True``, as released."""
    resized = F.interpolate(mask[None, None].float(), size=resolution, mode="bilinear", align_corners=True)
    return resized[0, 0]


def intersection(first: Box, second: Box) -> Box:
    """Return the overlap of two boxes; it is empty (x2 <= x1 or y2 <= y1) when they do not overlap."""
    return max(first[0], second[0]), max(first[1], second[1]), min(first[2], second[2]), min(first[3], second[3])


class PairTransform:
    """Callable that turns one image (and for CAST its saliency mask) into a training sample.

    The output contains ``query`` and ``key`` (3×S×S, normalized) and
    ``fallback`` (bool: whether a fallback box was used). For CAST it also
    contains ``masked_key`` (the normalized key times its crop mask, so the
    background is zero, the dataset mean colour) and ``query_mask`` (the
    query's crop mask at the Grad-CAM resolution, float). With
    ``output_mask_region: all`` both crop masks are zero outside the overlap
    of the two boxes.
    """

    def __init__(self, config: MethodConfig, method: str):
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self.config = config
        self.method = method
        self.augment = CropAugmentation(config)
        self.mask_resolution = gradcam_resolution(config.arch, config.image_size, config.gradcam_layer)

    def __call__(
        self,
        image: Image.Image | np.ndarray,
        mask: np.ndarray | None,
        rng: np.random.Generator,
        *,
        mask_bbox: Box | None = None,
        com: tuple[float, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return the sample of one RGB image; ``mask_bbox`` and ``com`` may come precomputed from ``pairs.csv``."""
        pixels = np.asarray(image)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise DataError(f"expected an 8-bit RGB image, got an array of shape {pixels.shape} and type {pixels.dtype}")
        if self.method == "moco":
            return self.moco_sample(pixels, rng)
        return self.cast_sample(pixels, mask, rng, mask_bbox, com)

    def moco_sample(self, pixels: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        config = self.config
        height, width = pixels.shape[:2]
        query_box, query_fallback = boxes.sample_random_box(width, height, config.scale, config.ratio, config.max_crop_attempts, rng)
        key_box, key_fallback = boxes.sample_random_box(width, height, config.scale, config.ratio, config.max_crop_attempts, rng)
        query, _ = self.augment(crop_image(pixels, query_box, config.image_size), None, rng)
        key, _ = self.augment(crop_image(pixels, key_box, config.image_size), None, rng)
        return {"query": query, "key": key, "fallback": torch.tensor(query_fallback or key_fallback)}

    def cast_sample(
        self,
        pixels: np.ndarray,
        mask: np.ndarray | None,
        rng: np.random.Generator,
        mask_bbox: Box | None,
        com: tuple[float, float] | None,
    ) -> dict[str, torch.Tensor]:
        config = self.config
        height, width = pixels.shape[:2]
        if mask is None:
            raise DataError("CAST needs a saliency mask for every image, but the mask is None")
        if mask.shape != (height, width):
            raise DataError(f"the saliency mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}; they must match")
        mask = mask.astype(bool, copy=False)

        table = boxes.summed_area_table(mask)
        pair = boxes.sample_box_pair(table, mask_bbox, com, (width, height), config, rng)
        size = config.image_size
        overlap = intersection(pair.query, pair.key) if config.output_mask_region == "all" else None

        query, query_mask = self.augment(crop_image(pixels, pair.query, size), crop_mask(mask, pair.query, size, overlap), rng)
        key, key_mask = self.augment(crop_image(pixels, pair.key, size), crop_mask(mask, pair.key, size, overlap), rng)
        return {
            "query": query,
            "key": key,
            "masked_key": key * torch.from_numpy(key_mask),
            "query_mask": downsample_mask(torch.from_numpy(query_mask), self.mask_resolution),
            "fallback": torch.tensor(pair.fallback),
        }


def build_pair_transform(config: MethodConfig, method: str) -> Callable[..., dict[str, torch.Tensor]]:
    """Return the sample transform of ``method`` ('moco': random resized crops; 'cast': saliency-constrained crops)."""
    return PairTransform(config, method)
