"""Report figures: training curves of the methods, and Grad-CAM maps beside saliency masks.

Figures are drawn with Matplotlib's Agg backend, so no display is needed, and
written atomically as PNG.
"""

from __future__ import annotations

import io as bytes_io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from cast import io
from cast.devices import resolve_device
from cast.errors import DataError
from cast.imageio import open_mask, open_rgb
from cast.report.collect import PretrainRun

log = logging.getLogger(__name__)

DPI = 110


def pyplot():
    """Return matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(figure)
    with io.atomic_open(path, "wb") as stream:
        stream.write(buffer.getvalue())


def plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def method_colors(methods: list[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    return {method: palette[index % len(palette)] for index, method in enumerate(methods)}


def plot_training_curves(runs: list[PretrainRun], methods: list[str], curves: list[str], path: Path) -> None:
    """Draw one panel per metric in ``curves`` with a line per pretraining run, coloured by method."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = min(len(curves), 2)
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    colors = method_colors(methods)

    for axis, name in zip(axes.flat, curves):
        drawn = False
        epochs: set[int] = set()
        for method in methods:
            method_runs = [run for run in runs if run.method == method and name in run.curves]
            for index, run in enumerate(method_runs):
                series = run.curves[name]
                label = method if index == 0 else None
                marker = "o" if len(series) <= 20 else None
                axis.plot(series.index, series.to_numpy(), color=colors[method], marker=marker, markersize=3, linewidth=1.5, label=label)
                epochs.update(int(epoch) for epoch in series.index)
                drawn = True
        axis.set_title(name.replace("_", " "))
        axis.set_xlabel("epoch")
        if 0 < len(epochs) <= 12:
            axis.set_xticks(sorted(epochs))
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if drawn:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, f"no '{name}' values", ha="center", va="center", transform=axis.transAxes, color="grey")
    for axis in list(axes.flat)[len(curves):]:
        axis.set_visible(False)

    seeds = sorted({run.seed for run in runs})
    figure.suptitle(f"Pretraining curves ({plural(len(seeds), 'seed')} {', '.join(map(str, seeds))})")
    figure.tight_layout()
    save_figure(figure, path)


def choose_images(pairs_path: Path, split: str, count: int) -> pd.DataFrame:
    """Return up to ``count`` pairs of ``split``, taking the classes in turn so that several classes appear."""
    try:
        pairs = pd.read_csv(pairs_path, dtype={"label": str}, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"pairs file {pairs_path} not found; run 'cast check-masks' first") from None
    missing = [column for column in ("image", "mask", "split", "label") if column not in pairs.columns]
    if missing:
        raise DataError(f"{pairs_path} lacks the column(s) {', '.join(missing)}; it must be written by 'cast check-masks'")
    selected = pairs[pairs["split"] == split].sort_values("image")
    if selected.empty:
        splits = ", ".join(sorted(pairs["split"].unique()))
        raise DataError(f"{pairs_path} has no pairs of split {split!r} (splits: {splits}); set data.val_split to one of them")

    queues = [group.reset_index(drop=True) for _, group in selected.groupby("label", sort=True)]
    chosen = []
    position = 0
    while len(chosen) < count and any(position < len(queue) for queue in queues):
        for queue in queues:
            if position < len(queue) and len(chosen) < count:
                chosen.append(queue.iloc[position])
        position += 1
    return pd.DataFrame(chosen).reset_index(drop=True)


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Return the largest centred square box ``(x1, y1, x2, y2)`` of an image."""
    side = min(width, height)
    x1 = (width - side) // 2
    y1 = (height - side) // 2
    return x1, y1, x1 + side, y1 + side


class GradCamModel:
    """A pretrained MoCo model from ``final.pt`` with the settings to draw its Grad-CAM maps."""

    def __init__(self, run: PretrainRun, device: torch.device):
        from cast.method.moco import MoCo
        from cast.train.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(run.checkpoint)
        params = checkpoint["params"]
        self.run = run
        self.params = params
        self.model = MoCo(
            arch=params["arch"],
            dim=params["moco_dim"],
            queue_size=params["moco_k"],
            momentum=params["moco_m"],
            temperature=params["moco_t"],
            mlp=params["mlp"],
        )
        self.model.load_state_dict(checkpoint["model"])
        self.model.to(device).eval()
        self.device = device
        self.image_size = int(params["image_size"])
        self.mean = torch.tensor(params["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(params["std"], dtype=torch.float32).view(3, 1, 1)

    def prepare(self, pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the centre square of an image and of its mask, resized to the training size."""
        from cast.method.transforms import crop_image, crop_mask

        box = centre_box(pixels.shape[1], pixels.shape[0])
        return crop_image(pixels, box, self.image_size), crop_mask(mask, box, self.image_size)

    def maps(self, crops: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, list[float], tuple[int, int]]:
        """Return the Grad-CAM maps upsampled to the crop size (N×S×S), each map's cosine similarity to its mask, and the maps' own resolution.

        The query is the crop and the masked key the crop with its background
        set to zero, as in CAST's training step.
        """
        from cast.method.gradcam import query_gradcam_maps
        from cast.method.transforms import downsample_mask

        images = torch.stack([torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0 for crop in crops])
        images = (images - self.mean) / self.std
        mask_tensor = torch.stack([torch.from_numpy(mask) for mask in masks]).float()
        masked = images * mask_tensor[:, None]
        cams = query_gradcam_maps(
            self.model,
            images.to(self.device),
            masked.to(self.device),
            layer=self.params["gradcam_layer"],
            relu=self.params["gradcam_relu"],
        ).float().cpu()

        similarities = []
        for cam, mask in zip(cams, mask_tensor):
            target = downsample_mask(mask, tuple(cam.shape))
            similarities.append(float(F.cosine_similarity(cam.flatten(), target.flatten(), dim=0)))
        upsampled = F.interpolate(cams[:, None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)[:, 0]
        return upsampled.numpy(), similarities, tuple(cams.shape[1:])


def plot_gradcam(
    runs: list[PretrainRun],
    methods: list[str],
    pairs: Path,
    images: Path,
    masks: Path,
    split: str,
    count: int,
    device: str,
    path: Path,
) -> None:
    """Draw a grid: one row per validation image with the image, its saliency mask and each method's Grad-CAM map.

    Each method is shown with its run of the lowest seed. The title of a map
    gives its cosine similarity to the mask at the Grad-CAM resolution, the
    quantity that CAST's attention loss raises.
    """
    first_runs = {}
    for run in runs:
        if run.method not in first_runs or run.seed < first_runs[run.method].seed:
            first_runs[run.method] = run
    shown_methods = [method for method in methods if method in first_runs]
    if not shown_methods:
        raise DataError(f"no pretraining run (final.pt) of methods {methods} was found; the Grad-CAM figure needs one")

    torch_device = resolve_device(device)
    models = {method: GradCamModel(first_runs[method], torch_device) for method in shown_methods}
    chosen = choose_images(pairs, split, count)
    reference = models[shown_methods[0]]
    threshold = int(reference.params.get("mask_threshold", 128))

    rows = []
    for pair in chosen.itertuples(index=False):
        pixels = np.asarray(open_rgb(images / pair.image))
        mask = open_mask(masks / pair.mask, threshold=threshold)
        if mask.shape != pixels.shape[:2]:
            raise DataError(f"mask {masks / pair.mask} is {mask.shape[1]}x{mask.shape[0]} but image {pair.image} is {pixels.shape[1]}x{pixels.shape[0]}")
        rows.append((pair, pixels, mask))

    results = {}
    resolutions = set()
    for method, model in models.items():
        prepared = [model.prepare(pixels, mask) for _, pixels, mask in rows]
        maps, similarities, resolution = model.maps([crop for crop, _ in prepared], [crop_mask for _, crop_mask in prepared])
        results[method] = (prepared, maps, similarities)
        resolutions.add(resolution)

    plt = pyplot()
    columns = 2 + len(shown_methods)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.3 * columns, 2.4 * len(rows)), squeeze=False)
    for index, (pair, _, _) in enumerate(rows):
        crop, crop_mask = results[shown_methods[0]][0][index]
        axes[index, 0].imshow(crop)
        axes[index, 0].set_title(f"{pair.label or pair.image}", fontsize="small")
        axes[index, 1].imshow(crop)
        axes[index, 1].imshow(crop_mask, cmap="gray", alpha=0.6, vmin=0, vmax=1)
        axes[index, 1].set_title("saliency mask", fontsize="small")
        for column, method in enumerate(shown_methods, start=2):
            prepared, maps, similarities = results[method]
            axes[index, column].imshow(prepared[index][0])
            axes[index, column].imshow(maps[index], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[index, column].set_title(f"{method} (cos {similarities[index]:.2f})", fontsize="small")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    seeds = ", ".join(f"{method} seed {first_runs[method].seed}" for method in shown_methods)
    if len(resolutions) == 1:
        height, width = resolutions.pop()
        resolution_text = f"the {height}×{width} Grad-CAM resolution"
    else:
        resolution_text = "each model's Grad-CAM resolution"
    figure.suptitle(
        f"Grad-CAM of the query towards its masked key, split {split} ({seeds});\n"
        f"cos: cosine similarity to the mask at {resolution_text}",
        fontsize="medium",
    )
    figure.tight_layout()
    save_figure(figure, path)
