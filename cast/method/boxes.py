"""Saliency-constrained random crop boxes, and plain random resized crop boxes.

Boxes are ``(x1, y1, x2, y2)`` in pixels with ``x2`` and ``y2`` exclusive, so
a box covers the columns ``x1 .. x2 - 1``. The number of salient pixels in any
box comes from a summed-area table built once per image, which makes each
coverage check four look-ups instead of a sum over the box.

A constrained box is drawn as in CAST (Selvaraju et al., CVPR 2021). Its
area is a uniform fraction of the image area in ``scale`` and its aspect
ratio is log-uniform in ``ratio``. Its centre follows a normal distribution
around the mask's centre of mass, with the image width and height as
standard deviations, truncated so the box stays inside the image.
The box is accepted when, for every constraint box ``c``, it contains at
least ``min_areacover`` of the salient pixels inside ``c``. After
``max_crop_attempts`` rejections it falls back to the mask's bounding box
grown by random margins and trimmed towards the ratio limits.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from cast.errors import DataError

if TYPE_CHECKING:
    from cast.method.config import MethodConfig

Box = tuple[int, int, int, int]

_STANDARD_NORMAL = NormalDist()
# Keeps inverse-CDF arguments strictly inside (0, 1).
_PROBABILITY_EPS = 1e-12
# Uniform numbers one box may consume: four per attempt plus four for the fallback margins.
_NUMBERS_PER_ATTEMPT = 4
_FALLBACK_NUMBERS = 4


class MaskStats(NamedTuple):
    """Salient pixel count, bounding box (x2, y2 exclusive) and centre of mass (x, y) of a binary mask."""

    salient_pixels: int
    bbox: Box
    com: tuple[float, float]


class BoxPair(NamedTuple):
    """Query and key boxes, and whether each one is a fallback box."""

    query: Box
    key: Box
    query_fallback: bool
    key_fallback: bool

    @property
    def fallback(self) -> bool:
        return self.query_fallback or self.key_fallback


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """Return the summed-area table ((H+1)×(W+1), integer) of an H×W mask; nonzero pixels are salient.

    Entry ``[y, x]`` is the number of salient pixels above row ``y`` and left
    of column ``x``, so the count inside a box needs four look-ups.
    """
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D array, got shape {mask.shape}")
    binary = mask.astype(bool, copy=False).view(np.uint8)
    height, width = mask.shape
    if height * width < 2**31:
        return cv2.integral(binary)  # int32, about 20 times faster than two NumPy cumulative sums
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    np.cumsum(binary, axis=0, dtype=np.int64, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


def count_in_box(table: np.ndarray, box: Box) -> int:
    """Return the number of salient pixels inside ``box``, from a summed-area table."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return 0
    item = table.item
    return item(y2, x2) - item(y1, x2) - item(y2, x1) + item(y1, x1)


def mask_stats(table: np.ndarray) -> MaskStats:
    """Return the salient pixel count, bounding box and centre of mass of the mask behind a summed-area table.

    The centre of mass is the mean pixel index (pixel ``(i, j)`` at ``x = j,
    y = i``), as ``scipy.ndimage.center_of_mass`` returns it. Raises DataError
    for an empty mask.
    """
    row_counts = np.diff(table[:, -1])  # salient pixels per row
    column_counts = np.diff(table[-1, :])  # salient pixels per column
    total = int(table[-1, -1])
    if total == 0:
        raise DataError("the saliency mask is empty; CAST needs at least one salient pixel (check-masks rejects such images)")
    rows = np.flatnonzero(row_counts)
    columns = np.flatnonzero(column_counts)
    bbox = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    com_x = float(np.dot(column_counts, np.arange(column_counts.size, dtype=np.float64))) / total
    com_y = float(np.dot(row_counts, np.arange(row_counts.size, dtype=np.float64))) / total
    return MaskStats(total, bbox, (com_x, com_y))


def _truncated_normal(uniform: float, mean: float, std: float, low: float, high: float) -> float:
    """Map a uniform number in [0, 1) to a normal(mean, std) sample truncated to [low, high], by the inverse CDF."""
    if high <= low:
        return low
    cdf_low = _STANDARD_NORMAL.cdf((low - mean) / std)
    cdf_high = _STANDARD_NORMAL.cdf((high - mean) / std)
    probability = cdf_low + uniform * (cdf_high - cdf_low)
    probability = min(max(probability, _PROBABILITY_EPS), 1.0 - _PROBABILITY_EPS)
    value = mean + std * _STANDARD_NORMAL.inv_cdf(probability)
    return min(max(value, low), high)


def _box_size(uniform_area: float, uniform_ratio: float, image_area: int, scale: tuple[float, float], log_ratio: tuple[float, float]) -> tuple[int, int]:
    """Return the rounded (width, height) of a box with a uniform area fraction and a log-uniform aspect ratio."""
    area = image_area * (scale[0] + (scale[1] - scale[0]) * uniform_area)
    aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniform_ratio)
    return round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))


def fallback_box(bbox: Box, width: int, height: int, ratio: tuple[float, float], uniforms: list[float]) -> Box:
    """Return a box that contains ``bbox``: grown by random margins, then trimmed towards the ratio limits.

    Trimming never cuts into ``bbox``, so the result violates the ratio
    limits when the bounding box alone does.
    """
    bx1, by1, bx2, by2 = bbox
    x1 = bx1 - int(uniforms[0] * (bx1 + 1))
    y1 = by1 - int(uniforms[1] * (by1 + 1))
    x2 = bx2 + int(uniforms[2] * (width - bx2 + 1))
    y2 = by2 + int(uniforms[3] * (height - by2 + 1))

    box_width, box_height = x2 - x1, y2 - y1
    if box_width > box_height * ratio[1]:
        # Too wide: narrow it from the right, then slide right if that cut into the bounding box.
        x2 = x1 + max(bx2 - bx1, int(box_height * ratio[1]))
        if x2 < bx2:
            x1, x2 = x1 + (bx2 - x2), bx2
    elif box_width < box_height * ratio[0]:
        # Too tall: shorten it from the bottom, then slide down if that cut into the bounding box.
        y2 = y1 + max(by2 - by1, int(box_width / ratio[0]))
        if y2 < by2:
            y1, y2 = y1 + (by2 - y2), by2
    return x1, y1, x2, y2


def sample_constrained_box(
    table: np.ndarray,
    stats: MaskStats,
    constraints: list[tuple[Box, float]],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int,
    uniforms: list[float],
) -> tuple[Box, bool]:
    """Draw one box that satisfies every ``(constraint box, required salient pixels)`` pair; return it and whether it is a fallback.

    ``uniforms`` contains ``4 * attempts + 4`` numbers in [0, 1), so the result
    is a deterministic function of them.
    """
    height, width = table.shape[0] - 1, table.shape[1] - 1
    image_area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    com_x, com_y = stats.com
    item = table.item

    for attempt in range(attempts):
        u = _NUMBERS_PER_ATTEMPT * attempt
        box_width, box_height = _box_size(uniforms[u], uniforms[u + 1], image_area, scale, log_ratio)
        if not (0 < box_width <= width and 0 < box_height <= height):
            continue
        half_width, half_height = box_width / 2, box_height / 2
        centre_x = _truncated_normal(uniforms[u + 2], com_x, width, half_width, width - half_width)
        centre_y = _truncated_normal(uniforms[u + 3], com_y, height, half_height, height - half_height)
        x1 = min(max(round(centre_x - half_width), 0), width - box_width)
        y1 = min(max(round(centre_y - half_height), 0), height - box_height)
        x2, y2 = x1 + box_width, y1 + box_height

        for (cx1, cy1, cx2, cy2), required in constraints:
            ix1, iy1, ix2, iy2 = max(x1, cx1), max(y1, cy1), min(x2, cx2), min(y2, cy2)
            if ix2 <= ix1 or iy2 <= iy1:
                covered = 0
            else:
                covered = item(iy2, ix2) - item(iy1, ix2) - item(iy2, ix1) + item(iy1, ix1)
            if covered < required:
                break
        else:
            return (x1, y1, x2, y2), False

    start = _NUMBERS_PER_ATTEMPT * attempts
    return fallback_box(stats.bbox, width, height, ratio, uniforms[start : start + _FALLBACK_NUMBERS]), True


def effective_min_areacover(min_areacover: float, scale_min: float, image_area: int, salient_pixels: int) -> float:
    """Return ``min_areacover`` lowered to ``scale_min * image_area / salient_pixels`` for large masks.

    A crop of the smallest allowed area could otherwise never contain enough
    of a mask that covers most of the image.
    """
    return min(min_areacover, scale_min * image_area / salient_pixels)


def sample_box_pair(
    mask_integral: np.ndarray,
    mask_bbox: Box | None,
    com: tuple[float, float] | None,
    image_size: tuple[int, int],
    config: "MethodConfig",
    rng: np.random.Generator,
) -> BoxPair:
    """Draw the query and key boxes of one image under the saliency constraints of ``config``.

    ``mask_integral`` is the mask's :func:`summed_area_table`, ``image_size``
    is ``(width, height)``. ``mask_bbox`` (x2, y2 exclusive) and ``com``
    (x, y) may come precomputed from ``pairs.csv``; ``None`` computes them
    from the table. Both boxes must contain ``min_areacover`` of the mask.
    With ``second_constraint: all`` the key box must also contain
    ``min_areacover`` of the salient pixels inside the query box. ``config``
    is a :class:`~cast.method.config.MethodConfig` (``scale``, ``ratio``,
    ``min_areacover``, ``second_constraint``, ``max_crop_attempts``).
    """
    width, height = image_size
    if mask_integral.shape != (height + 1, width + 1):
        raise ValueError(
            f"summed-area table has shape {mask_integral.shape} but the image is {width}x{height}; "
            f"expected ({height + 1}, {width + 1})"
        )
    salient_pixels = int(mask_integral[-1, -1])
    if salient_pixels == 0:
        raise DataError("the saliency mask is empty; CAST needs at least one salient pixel (check-masks rejects such images)")
    if mask_bbox is None or com is None:
        computed = mask_stats(mask_integral)
        mask_bbox = mask_bbox if mask_bbox is not None else computed.bbox
        com = com if com is not None else computed.com
    bx1, by1, bx2, by2 = (int(value) for value in mask_bbox)
    if not (0 <= bx1 < bx2 <= width and 0 <= by1 < by2 <= height):
        raise DataError(f"mask bounding box {tuple(mask_bbox)} does not lie inside the {width}x{height} image; rerun 'cast check-masks'")
    stats = MaskStats(salient_pixels, (bx1, by1, bx2, by2), (float(com[0]), float(com[1])))

    min_cover = effective_min_areacover(config.min_areacover, config.scale[0], width * height, salient_pixels)
    attempts = config.max_crop_attempts
    per_box = _NUMBERS_PER_ATTEMPT * attempts + _FALLBACK_NUMBERS
    uniforms = rng.random(2 * per_box).tolist()

    query, query_fallback = sample_constrained_box(
        mask_integral, stats, [(stats.bbox, min_cover * salient_pixels)], config.scale, config.ratio, attempts, uniforms[:per_box]
    )
    key_constraints = [(stats.bbox, min_cover * salient_pixels)]
    if config.second_constraint == "all":
        key_constraints.append((query, min_cover * count_in_box(mask_integral, query)))
    key, key_fallback = sample_constrained_box(
        mask_integral, stats, key_constraints, config.scale, config.ratio, attempts, uniforms[per_box:]
    )
    return BoxPair(query, key, query_fallback, key_fallback)


def sample_random_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], attempts: int, rng: np.random.Generator) -> tuple[Box, bool]:
    """Draw a random resized crop box that ignores the mask; return it and whether the centre-crop fallback was used.

    Area and aspect ratio are drawn as for constrained boxes and the position
    is uniform. After ``attempts`` sizes that do not fit the image, the
    fallback is the largest centred box within the ratio limits, as in
    torchvision's RandomResizedCrop.
    """
    uniforms = rng.random(4 * attempts).tolist()
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(attempts):
        u = 4 * attempt
        box_width, box_height = _box_size(uniforms[u], uniforms[u + 1], width * height, scale, log_ratio)
        if 0 < box_width <= width and 0 < box_height <= height:
            x1 = int(uniforms[u + 2] * (width - box_width + 1))
            y1 = int(uniforms[u + 3] * (height - box_height + 1))
            return (x1, y1, x1 + box_width, y1 + box_height), False

    image_ratio = width / height
    if image_ratio < ratio[0]:
        box_width, box_height = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        box_width, box_height = int(round(height * ratio[1])), height
    else:
        box_width, box_height = width, height
    x1 = (width - box_width) // 2
    y1 = (height - box_height) // 2
    return (x1, y1, x1 + box_width, y1 + box_height), True
