"""Reading images and saliency masks the same way in every stage.

Images are decoded with Pillow, turned upright according to their EXIF
orientation tag, and converted to RGB. Masks are turned upright the same way,
read as 8-bit grayscale and binarized with a threshold, so a value above the
threshold is salient. Sizes reported anywhere in the pipeline are sizes after
EXIF orientation.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

ImageSource = str | os.PathLike | BinaryIO

# EXIF orientations 5 to 8 rotate by 90 or 270 degrees and so swap width and height.
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class ImageTooLarge(ValueError):
    """The image has more pixels than the caller allows; raised before its pixels are decoded."""

    def __init__(self, width: int, height: int, max_pixels: int):
        super().__init__(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
        self.width, self.height, self.max_pixels = width, height, max_pixels


@dataclass
class DecodedImage:
    """An image decoded to upright RGB, with what was found in the file."""

    rgb: Image.Image
    mode: str  # Pillow mode of the file before conversion to RGB
    format: str | None  # Pillow format name, such as "JPEG" or "PNG"
    orientation: int  # EXIF orientation that was applied; 1 when the file has none
    frames: int  # frames in the file; only the first is decoded
    notes: list[str] = field(default_factory=list)


def mode_note(mode: str) -> str:
    """Return the manifest note for a conversion from ``mode``, such as ``converted_from_cmyk`` or ``converted_from_i16``."""
    return "converted_from_" + "".join(ch for ch in mode.lower() if ch.isalnum())


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Let the caller's ``max_pixels`` replace Pillow's own decompression-bomb limit while a file is opened.

    Pillow raises ``DecompressionBombError`` above twice ``Image.MAX_IMAGE_PIXELS``
    in ``Image.open``, which would hide the caller's limit. This changes a
    module-level setting of Pillow, so it is not safe with threads that open
    images at the same time.
    """
    if max_pixels is None:
        yield
        return
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def exif_orientation(image: Image.Image) -> int:
    """Return the EXIF orientation tag (1 to 8), or 1 when it is missing or invalid."""
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on black rather than keeping stale colour values.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in {"I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def decode_image(source: ImageSource, max_pixels: int | None = None) -> DecodedImage:
    """Decode every pixel of the first frame, apply the EXIF orientation and convert to RGB.

    Raises ``ImageTooLarge`` before decoding when ``max_pixels`` is given and
    exceeded, ``PIL.UnidentifiedImageError`` for files that are not images,
    and ``OSError`` or ``ValueError`` for damaged or truncated ones.
    """
    with _pillow_pixel_limit(max_pixels):
        image_file = Image.open(source)
    with image_file as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageTooLarge(image.width, image.height, max_pixels)
        image.load()
        orientation = exif_orientation(image)
        upright = ImageOps.exif_transpose(image) if orientation != 1 else image
        decoded = DecodedImage(
            rgb=_to_rgb(upright),
            mode=image.mode,
            format=image.format,
            orientation=orientation,
            frames=getattr(image, "n_frames", 1),
        )
    if decoded.mode != "RGB":
        decoded.notes.append(mode_note(decoded.mode))
    if orientation != 1:
        decoded.notes.append("exif_rotated")
    if decoded.frames > 1:
        decoded.notes.append("multi_frame")
    return decoded


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image, apply its EXIF orientation and return it in RGB mode."""
    return decode_image(path).rgb


def mask_to_gray8(image: Image.Image) -> np.ndarray:
    """Convert a mask image of any common mode to an 8-bit grayscale array (H×W, uint8).

    Transparent pixels count as black (the luminance is multiplied by alpha),
    and 16-bit or integer masks are scaled from 0-65535 to 0-255 only when
    some value exceeds 255, so a 16-bit mask that stores 0 and 255 keeps them.
    """
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if image.mode.startswith("I;16") or image.mode in {"I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0) > 255:
            array = array * (255.0 / 65535.0)
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        luminance = np.asarray(rgba.convert("L"), dtype=np.uint16)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint16)
        return ((luminance * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


@dataclass
class DecodedMask:
    """A mask read as upright 8-bit grayscale, with the conversions that were needed."""

    gray: np.ndarray  # H×W uint8
    mode: str
    format: str | None
    notes: list[str] = field(default_factory=list)


def read_mask(path: ImageSource) -> DecodedMask:
    """Read a mask as upright 8-bit grayscale and list the conversions applied (mode, EXIF orientation, JPEG)."""
    with Image.open(path) as image:
        image.load()
        orientation = exif_orientation(image)
        upright = ImageOps.exif_transpose(image) if orientation != 1 else image
        mask = DecodedMask(gray=mask_to_gray8(upright), mode=image.mode, format=image.format)
    if mask.mode not in {"L", "1"}:
        mask.notes.append(mode_note(mask.mode))
    if orientation != 1:
        mask.notes.append("exif_rotated")
    if mask.format == "JPEG":
        mask.notes.append("jpeg_mask")
    return mask


def open_mask(path: str | os.PathLike, threshold: int = 128) -> np.ndarray:
    """Read a saliency mask and return a boolean H×W array: True where the value exceeds ``threshold``."""
    return read_mask(path).gray > threshold
