"""Per-crop augmentation of uint8 RGB arrays: flip, grayscale, colour jitter, blur and normalization.

The colour operations follow the definitions of torchvision's
``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation`` and
``adjust_hue``: blends with black, with the mean gray level and with the
grayscale image, and a rotation of the HSV hue. They are computed with
OpenCV, which is several times faster than PIL or torch for 8-bit crops.
On the test photographs the results differ from torchvision's by at most
one gray level. The hue rotation is the exception: it uses OpenCV's 256-step
hue circle instead of PIL's, so dark and nearly gray pixels can differ more.

Every random number comes from a NumPy generator, one draw of a fixed size
per crop, so an augmented crop is a deterministic function of the crop and
the generator state.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from cast.method.config import MethodConfig

# Uniform numbers drawn per crop: flip, grayscale, jitter, four jitter factors, four order keys, blur, blur sigma.
NUMBERS_PER_CROP = 13
# OpenCV's full-range 8-bit HSV encodes the hue circle in 256 steps.
_HUE_STEPS = 256


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the image with black: ``factor * image``, saturated to [0, 255]."""
    return cv2.addWeighted(image, factor, image, 0.0, 0.0)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the image with its mean gray level: ``factor * image + (1 - factor) * mean``."""
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    return cv2.addWeighted(image, factor, image, 0.0, (1.0 - factor) * mean)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend the image with its grayscale version: ``factor * image + (1 - factor) * gray``."""
    return cv2.addWeighted(image, factor, to_grayscale(image), 1.0 - factor, 0.0)


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` of a full turn (``shift`` in [-0.5, 0.5])."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
    steps = np.uint8(round(shift * _HUE_STEPS) % _HUE_STEPS)
    hsv[..., 0] += steps  # uint8 addition wraps around the hue circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Return the ITU-R 601 luma of the image, repeated in three channels."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur with a Gaussian of standard deviation ``sigma`` pixels; OpenCV derives the kernel size from sigma."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)


class CropAugmentation:
    """Callable ``(crop, mask, rng) -> (normalized 3×S×S tensor, mask)`` with the augmentations of a MethodConfig.

    The steps follow the released CAST code: horizontal flip of the crop and
    its mask together (``hflip_p``), grayscale (``grayscale_p``), colour
    jitter in random order (``jitter_p``, factors as torchvision's
    ColorJitter draws them), Gaussian blur (``blur_p``), then normalization
    with ``mean`` and ``std``.
    """

    def __init__(self, config: MethodConfig):
        self.config = config
        self.jitter_ranges = (
            (max(0.0, 1.0 - config.brightness), 1.0 + config.brightness),
            (max(0.0, 1.0 - config.contrast), 1.0 + config.contrast),
            (max(0.0, 1.0 - config.saturation), 1.0 + config.saturation),
            (-config.hue, config.hue),
        )
        self.jitter_functions = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self.inverse_std = 1.0 / (torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1) * 255.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray | None]:
        config = self.config
        u = rng.random(NUMBERS_PER_CROP).tolist()

        if u[0] < config.hflip_p:
            image = cv2.flip(image, 1)
            if mask is not None:
                mask = np.ascontiguousarray(mask[:, ::-1])
        if u[1] < config.grayscale_p:
            image = to_grayscale(image)
        if u[2] < config.jitter_p:
            image = self.jitter(image, u[3:7], u[7:11])
        if u[11] < config.blur_p:
            low, high = config.blur_sigma
            image = gaussian_blur(image, low + (high - low) * u[12])
        return self.normalize(image), mask

    def jitter(self, image: np.ndarray, factor_uniforms: list[float], order_keys: list[float]) -> np.ndarray:
        """Apply brightness, contrast, saturation and hue jitter in the random order given by ``order_keys``."""
        for index in sorted(range(4), key=order_keys.__getitem__):
            low, high = self.jitter_ranges[index]
            if low == high:
                continue  # zero strength: the operation would be the identity
            factor = low + (high - low) * factor_uniforms[index]
            image = self.jitter_functions[index](image, factor)
        return image

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """Convert an H×W×3 uint8 array to a 3×H×W float tensor normalized with ``mean`` and ``std``."""
        # A contiguous channels-first copy first: broadcasting over a channels-last view is several times slower.
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        return tensor.sub_(self.mean).mul_(self.inverse_std)
