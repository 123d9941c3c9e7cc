"""``cast estimate-saliency``: unsupervised binary saliency masks for images that come without masks.

The saliency map comes from OpenCV's contrib module ``cv2.saliency``: the
spectral residual method (Hou and Zhang, CVPR 2007) or the fine-grained
static method (centre-surround differences). The map is computed on a copy whose
longer side is ``work_size`` pixels, then smoothed with a Gaussian and
multiplied by a centre prior. It is scaled back to the image size and
binarized with Otsu's threshold or by keeping a fixed fraction of the pixels.
Every image that is
not blank (one colour everywhere) gets a mask with at least ``min_fraction``
of its pixels salient. A blank image gets an all-zero mask, which
``cast check-masks`` rejects as empty.

Masks are written as 0/255 8-bit PNG files at ``<masks>/<manifest path with
.png suffix>``. Existing valid masks are kept unless ``--overwrite`` is given,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cast.data.common import count_values, describe_files, parallel_map, read_manifest, resolve_workers
from cast.errors import ConfigError, DataError
from cast.imageio import decode_image
from cast.io import atomic_open, write_json
from cast.options import add_option

log = logging.getLogger(__name__)

METHODS = ("spectral_residual", "fine_grained")
BINARIZATIONS = ("otsu", "fraction")


@dataclass(frozen=True)
class SaliencyParams:
    """Parameters of the estimator; the defaults are those of the command line."""

    method: str = "spectral_residual"
    work_size: int = 256
    blur: float = 0.04
    center_prior: float = 0.5
    center_sigma: float = 0.3
    binarize: str = "otsu"
    fraction: float = 0.25
    min_fraction: float = 0.01

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.binarize not in BINARIZATIONS:
            raise ConfigError(f"binarize must be one of {BINARIZATIONS}, got {self.binarize!r}.")
        if self.work_size < 16:
            raise ConfigError(f"work_size must be at least 16 pixels, got {self.work_size}.")
        if self.blur < 0:
            raise ConfigError(f"blur must be 0 (off) or a positive fraction of the longer side, got {self.blur}.")
        if not 0 <= self.center_prior <= 1:
            raise ConfigError(f"center_prior must be between 0 (off) and 1, got {self.center_prior}.")
        if self.center_sigma <= 0:
            raise ConfigError(f"center_sigma must be a positive fraction of the image size, got {self.center_sigma}.")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}.")
        if not 0 < self.min_fraction <= 1:
            raise ConfigError(f"min_fraction must be in (0, 1], got {self.min_fraction}.")


@dataclass
class Estimate:
    """A saliency map scaled to [0, 1] and its binary mask, both at the image's size."""

    saliency: np.ndarray  # H×W float32
    mask: np.ndarray  # H×W bool
    blank: bool  # the image has one colour everywhere, so the mask is empty
    raised_to_min_fraction: bool  # the thresholded mask was too small and was replaced by the top min_fraction


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image root folder, as given to verify-data")
    parser.add_argument("--manifest", type=Path, required=True, help="manifest CSV written by verify-data")
    parser.add_argument("--masks", type=Path, required=True, help="output folder; masks mirror the image tree as PNG")
    parser.add_argument("--summary", type=Path, required=True, help="output JSON with counts and parameters")
    defaults = SaliencyParams()
    add_option(parser, "method", choices=METHODS, default=defaults.method, help="OpenCV saliency method (default: %(default)s)")
    add_option(parser, "work_size", type=int, default=defaults.work_size, help="longer side in pixels of the copy the map is computed on (default: %(default)s)")
    add_option(parser, "blur", type=float, default=defaults.blur, help="Gaussian smoothing sigma as a fraction of the longer side, where 0 turns it off (default: %(default)s)")
    add_option(parser, "center_prior", type=float, default=defaults.center_prior, help="weight of the centre prior in [0, 1], where 0 turns it off (default: %(default)s)")
    add_option(parser, "center_sigma", type=float, default=defaults.center_sigma, help="standard deviation of the centre prior as a fraction of width and height (default: %(default)s)")
    add_option(parser, "binarize", choices=BINARIZATIONS, default=defaults.binarize, help="Otsu's threshold, or keep the top --fraction of pixels (default: %(default)s)")
    add_option(parser, "fraction", type=float, default=defaults.fraction, help="fraction of pixels kept salient with --binarize fraction (default: %(default)s)")
    add_option(parser, "min_fraction", type=float, default=defaults.min_fraction, help="smallest salient fraction of a mask. A smaller mask is replaced by the top pixels of the map (default: %(default)s)")
    add_option(parser, "overwrite", default=False, help="recompute masks that already exist and are valid (default: keep them)")
    add_option(parser, "workers", type=int, default=0, help="worker processes; 0 uses one per available CPU (default: 0)")


def run(args: argparse.Namespace) -> int:
    params = SaliencyParams(
        method=args.method,
        work_size=args.work_size,
        blur=args.blur,
        center_prior=args.center_prior,
        center_sigma=args.center_sigma,
        binarize=args.binarize,
        fraction=args.fraction,
        min_fraction=args.min_fraction,
    )
    params.check()
    manifest = read_manifest(args.manifest)
    if manifest.empty:
        raise DataError(f"Manifest {args.manifest} lists no images. Run cast verify-data on a tree with images.")
    images_root = Path(args.images)
    if not images_root.is_dir():
        raise DataError(f"Image root {images_root} not found. Correct --images.")

    mask_paths = manifest["path"].map(lambda path: str(mask_path_for(path)))
    clashing = manifest.loc[mask_paths.duplicated(keep=False), "path"].tolist()
    if clashing:
        raise DataError(
            f"Manifest {args.manifest}: {describe_files(clashing)} differ only in their extension, so they would share one mask. "
            "Regenerate the manifest with cast verify-data, which rejects such repeats."
        )
    tasks = [
        MaskTask(
            image=str(images_root / row.path),
            mask=str(Path(args.masks) / mask_path_for(row.path)),
            path=row.path,
            width=row.width,
            height=row.height,
            params=params,
            overwrite=args.overwrite,
        )
        for row in manifest.itertuples()
    ]
    results = list(parallel_map(make_mask, tasks, resolve_workers(args.workers), "estimate-saliency"))

    failed = [r for r in results if r.status == "failed"]
    blank = [r.path for r in results if r.blank]
    fractions = [r.salient_fraction for r in results if r.status != "failed"]
    summary = {
        "images": len(results),
        "by_status": count_values(r.status for r in results),
        "blank_images": blank,
        "raised_to_min_fraction": sum(r.raised for r in results),
        "mean_salient_fraction": float(np.mean(fractions)) if fractions else None,
        "failed": [{"path": r.path, "detail": r.detail} for r in failed],
        "params": params.__dict__,
    }
    write_json(args.summary, summary)
    log.info("estimate-saliency: %s, masks in %s", summary["by_status"], args.masks)
    if blank:
        log.warning("%d blank image(s) got an empty mask, which check-masks will reject: %s", len(blank), describe_files(blank))
    if failed:
        raise DataError(
            f"{len(failed)} image(s) of the manifest could not be read: "
            f"{describe_files([f'{r.path} ({r.detail})' for r in failed])}. Rerun cast verify-data on the current tree."
        )
    return 0


def mask_path_for(image_path: str) -> PurePosixPath:
    """Return the mirrored mask path of a manifest image path: the same path with a ``.png`` suffix."""
    return PurePosixPath(image_path).with_suffix(".png")


@dataclass(frozen=True)
class MaskTask:
    image: str
    mask: str
    path: str
    width: int
    height: int
    params: SaliencyParams
    overwrite: bool


@dataclass
class MaskResult:
    path: str
    status: str  # written, kept_existing, replaced_invalid or failed
    detail: str = ""
    salient_fraction: float = 0.0
    blank: bool = False
    raised: bool = False


def make_mask(task: MaskTask) -> MaskResult:
    """Write the mask of one image unless a valid one exists and ``overwrite`` is off."""
    mask_path = Path(task.mask)
    replacing = False
    if mask_path.exists():
        problem = existing_mask_problem(mask_path, task.width, task.height)
        if problem is None and not task.overwrite:
            with Image.open(mask_path) as existing:
                fraction = float(np.mean(np.asarray(existing) > 0))
            return MaskResult(task.path, "kept_existing", salient_fraction=fraction)
        if problem is not None:
            log.warning("replacing invalid mask %s: %s", mask_path, problem)
            replacing = True

    try:
        rgb = np.asarray(decode_image(task.image).rgb)
    except FileNotFoundError:
        return MaskResult(task.path, "failed", "image file not found")
    except UnidentifiedImageError:
        return MaskResult(task.path, "failed", "not an image")
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many exception types for damaged files
        return MaskResult(task.path, "failed", f"{type(error).__name__}: {error}")
    if rgb.shape[:2] != (task.height, task.width):
        return MaskResult(task.path, "failed", f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the manifest's {task.width}x{task.height}")

    estimate = estimate_saliency(rgb, task.params)
    mask_image = Image.fromarray(np.where(estimate.mask, 255, 0).astype(np.uint8), mode="L")
    with atomic_open(mask_path, "wb") as stream:
        mask_image.save(stream, format="PNG", optimize=True)
    return MaskResult(
        task.path,
        "replaced_invalid" if replacing else "written",
        salient_fraction=float(estimate.mask.mean()),
        blank=estimate.blank,
        raised=estimate.raised_to_min_fraction,
    )


def existing_mask_problem(path: Path, width: int, height: int) -> str | None:
    """Return why an existing mask file cannot be kept, or None when it is a 0/255 8-bit PNG of the right size."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG" or image.mode != "L":
                return f"{image.format} file in mode {image.mode}, expected an 8-bit grayscale PNG"
            if image.size != (width, height):
                return f"size {image.width}x{image.height}, expected {width}x{height}"
            values = np.unique(np.asarray(image))
    except (OSError, ValueError, SyntaxError) as error:
        return f"unreadable ({error})"
    if not set(values.tolist()) <= {0, 255}:
        return "values other than 0 and 255"
    return None


def compute_map(bgr: np.ndarray, method: str) -> np.ndarray:
    """Return OpenCV's saliency map of a BGR uint8 image as float32, before any scaling."""
    if method == "spectral_residual":
        estimator = cv2.saliency.StaticSaliencySpectralResidual_create()
    else:
        estimator = cv2.saliency.StaticSaliencyFineGrained_create()
    ok, saliency = estimator.computeSaliency(bgr)
    if not ok:
        raise RuntimeError(f"cv2.saliency {method} failed on an image of shape {bgr.shape}")
    return np.asarray(saliency, dtype=np.float32)


def center_prior_map(height: int, width: int, sigma: float) -> np.ndarray:
    """Return a Gaussian centred on the image with standard deviation ``sigma`` times width and height, peak 1."""
    y = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (sigma * height)
    x = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (sigma * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def rescale(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def estimate_saliency(rgb: np.ndarray, params: SaliencyParams = SaliencyParams()) -> Estimate:
    """Estimate the saliency map and binary mask of an RGB uint8 image (H×W×3)."""
    height, width = rgb.shape[:2]
    if int(rgb.max()) == int(rgb.min()) or np.all(rgb == rgb[0, 0]):
        empty = np.zeros((height, width), dtype=bool)
        return Estimate(np.zeros((height, width), np.float32), empty, blank=True, raised_to_min_fraction=False)

    scale = min(1.0, params.work_size / max(height, width))
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale < 1:
        bgr = cv2.resize(bgr, small_size, interpolation=cv2.INTER_AREA)

    saliency = rescale(compute_map(bgr, params.method))
    if params.blur > 0:
        saliency = cv2.GaussianBlur(saliency, (0, 0), params.blur * max(saliency.shape))
    if params.center_prior > 0:
        prior = center_prior_map(*saliency.shape, params.center_sigma)
        saliency = saliency * ((1 - params.center_prior) + params.center_prior * prior)
    saliency = rescale(saliency)
    if saliency.shape != (height, width):
        saliency = cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)

    if params.binarize == "otsu":
        level, _ = cv2.threshold(np.round(saliency * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = saliency * 255 > level
    else:
        mask = top_fraction(saliency, params.fraction)
    raised = False
    if mask.mean() < params.min_fraction:
        mask = top_fraction(saliency, params.min_fraction)
        raised = True
    return Estimate(saliency, mask, blank=False, raised_to_min_fraction=raised)


def top_fraction(saliency: np.ndarray, fraction: float) -> np.ndarray:
    """Mark the ``fraction`` of pixels with the highest saliency (ties broken by position), at least one pixel."""
    count = max(1, int(round(fraction * saliency.size)))
    order = np.argsort(-saliency, axis=None, kind="stable")[:count]
    mask = np.zeros(saliency.size, dtype=bool)
    mask[order] = True
    return mask.reshape(saliency.shape)
