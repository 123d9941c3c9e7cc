"""Reading images and saliency masks the same way in every stage.

Images are decoded with Pillow, turned upright according to their EXIF
orientation tag, and converted to RGB. Masks are read as 8-bit grayscale and
binarized with a threshold, so a value above the threshold is salient.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image, apply its EXIF orientation and return it in RGB mode."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode == "RGB":
            return image.copy()
        if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
            # Composite transparent pixels on black rather than keeping stale colour values.
            background = Image.new("RGB", image.size)
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return background
        if image.mode.startswith("I;16") or image.mode in {"I", "F"}:
            array = np.asarray(image, dtype=np.float64)
            scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 1.0
            return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8)).convert("RGB")
        return image.convert("RGB")


def mask_to_gray8(image: Image.Image) -> np.ndarray:
    """Convert a mask image of any common mode to an 8-bit grayscale array (H×W, uint8)."""
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if image.mode.startswith("I;16") or image.mode in {"I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0) > 255:
            array = array * (255.0 / 65535.0)
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if image.mode in {"RGBA", "LA", "PA"}:
        image = image.convert("RGBA").convert("L")
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def open_mask(path: str | os.PathLike, threshold: int = 128) -> np.ndarray:
    """Read a saliency mask and return a boolean H×W array: True where the value exceeds ``threshold``."""
    with Image.open(path) as image:
        gray = mask_to_gray8(image)
    return gray > threshold
