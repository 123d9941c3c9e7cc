"""The pretraining dataset: usable (image, mask) pairs from the mask-check stage, turned into crop pairs.

Every sample is a deterministic function of (seed, epoch, index, attempt), so
the data of a run does not depend on the number of loader workers or on
where a resumed run restarted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cast.errors import DataError
from cast.imageio import open_mask, open_rgb

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("image", "mask", "split")


def read_pairs(path: Path, split: str) -> pd.DataFrame:
    """Read ``pairs.csv`` and keep the rows of one split, sorted by image path."""
    try:
        pairs = pd.read_csv(path, dtype={"image": str, "mask": str, "split": str, "label": str}, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"pairs file {path} not found; run 'cast check-masks' first") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"pairs file {path} is empty; rerun 'cast check-masks'") from None
    missing = [column for column in PAIR_COLUMNS if column not in pairs.columns]
    if missing:
        raise DataError(f"pairs file {path} lacks the columns {missing}; it must come from 'cast check-masks'")
    selected = pairs[pairs["split"] == split].sort_values("image").reset_index(drop=True)
    if selected.empty:
        splits = sorted(set(pairs["split"]))
        raise DataError(
            f"pairs file {path} has no usable pairs in split {split!r} (splits present: {splits}). "
            "Check the split name, or the rejection report of 'cast check-masks'."
        )
    return selected


class PairDataset(Dataset):
    """Crop pairs of the usable images; each item is the transform's dict plus resampling counts.

    ``transform(image, mask, rng)`` returns tensors; for CAST a ``query_mask``
    that can come out empty at the Grad-CAM resolution. Such a crop is drawn
    again from the same image up to ``max_resample`` times. Every redraw is
    counted in ``resampled`` and a crop still empty after the last one in
    ``empty_query_mask``, so the trainer can log both.
    """

    def __init__(
        self,
        pairs: pd.DataFrame,
        images_root: Path,
        masks_root: Path | None,
        transform: Callable,
        seed: int,
        max_resample: int,
        mask_threshold: int = 128,
    ):
        self.pairs = pairs
        self.images_root = Path(images_root)
        self.masks_root = Path(masks_root) if masks_root is not None else None
        self.transform = transform
        self.seed = seed
        self.max_resample = max_resample
        self.mask_threshold = mask_threshold
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple:
        row = self.pairs.iloc[index]
        image_path = self.images_root / row["image"]
        try:
            image = open_rgb(image_path)
        except (OSError, ValueError) as error:
            raise DataError(
                f"image {image_path} cannot be decoded ({error}); it passed 'cast verify-data' before, "
                "so it changed since: rerun the data stages"
            ) from None
        mask = None
        if self.masks_root is not None:
            mask_path = self.masks_root / row["mask"]
            try:
                mask = open_mask(mask_path, self.mask_threshold)
            except (OSError, ValueError) as error:
                raise DataError(f"mask {mask_path} cannot be read ({error}); rerun 'cast check-masks'") from None
            if mask.shape != (image.height, image.width):
                raise DataError(
                    f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                    f"{image.width}x{image.height}; rerun 'cast check-masks'"
                )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.load(index)
        resampled = 0
        for attempt in range(self.max_resample + 1):
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
            sample = self.transform(image, mask, rng)
            if "query_mask" not in sample or bool(sample["query_mask"].any()):
                break
            if attempt < self.max_resample:
                resampled += 1
        sample["resampled"] = torch.tensor(resampled)
        sample["empty_query_mask"] = torch.tensor(int("query_mask" in sample and not bool(sample["query_mask"].any())))
        return sample
