"""``cast pretrain``: MoCo or CAST pretraining on the usable pairs, on CPU or GPU, resumable.

Started directly, with ``--nproc_per_node``/``--nnodes`` above 1, it starts its
own workers through torchrun's launcher; started by ``torchrun`` it is one
worker. Rank 0 writes every file.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cast import io
from cast.errors import ConfigError, DataError
from cast.method.config import MethodConfig, add_method_options
from cast.method.moco import MoCo
from cast.method.step import training_step
from cast.method.transforms import build_pair_transform
from cast.options import add_option
from cast.train import checkpoint as ckpt
from cast.train import distributed
from cast.train.dataset import PairDataset, read_pairs
from cast.train.history import write_history
from cast.train.runinfo import describe_environment

logger = logging.getLogger("cast.pretrain")

METHODS = ("moco", "cast")


def configure(parser: argparse.ArgumentParser) -> None:
    paths = parser.add_argument_group("inputs and outputs")
    add_option(paths, "images", type=Path, required=True, help="root of the image tree (paths in --pairs are relative to it)")
    add_option(paths, "masks", type=Path, required=True, help="root of the mask tree (mask paths in --pairs are relative to it)")
    add_option(paths, "pairs", type=Path, required=True, help="usable pairs written by 'cast check-masks'")
    add_option(paths, "split", default="train", help="split of --pairs to train on (default: train)")
    add_option(paths, "out_dir", type=Path, required=True, help="folder for checkpoints, metrics and plots")
    add_option(paths, "resume", type=Path, default=None, help="resume from this checkpoint instead of the newest one in out_dir")
    add_option(parser, "method", choices=METHODS, required=True, help="moco: plain MoCo; cast: saliency-constrained crops and attention loss")
    add_option(parser, "seed", type=int, default=0, help="random seed of model initialisation, data order and augmentation")
    add_option(parser, "mask_threshold", type=int, default=128, help="mask values above this are salient; use the value given to check-masks")

    trainer = parser.add_argument_group("optimisation")
    add_option(trainer, "epochs", type=int, default=200, help="training epochs (default: %(default)s)")
    add_option(trainer, "batch_size", type=int, default=256, help="global batch size, split evenly over all processes (default: %(default)s)")
    add_option(trainer, "lr", type=float, default=0.5, help="base learning rate of SGD (default: %(default)s)")
    add_option(trainer, "momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    add_option(trainer, "weight_decay", type=float, default=1e-4, help="SGD weight decay (default: %(default)s)")
    add_option(trainer, "schedule", choices=["cosine", "step"], default="cosine", help="learning-rate schedule over epochs (default: %(default)s)")
    add_option(trainer, "milestones", type=int, nargs="+", default=[120, 160], help="epochs where the step schedule multiplies the learning rate by 0.1 (default: %(default)s)")
    add_option(trainer, "max_resample", type=int, default=5, help="redraws of a crop pair whose downsampled query mask is empty (CAST) (default: %(default)s)")

    system = parser.add_argument_group("processes and devices")
    add_option(system, "device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available, else CPU (default: %(default)s)")
    add_option(system, "nproc_per_node", type=int, default=1, help="worker processes per machine (one per GPU, or CPU processes) (default: %(default)s)")
    add_option(system, "nnodes", type=int, default=1, help="machines in the job (default: %(default)s)")
    add_option(system, "rdzv_endpoint", default="", help="HOST:PORT of the rendezvous for several machines; empty on one machine picks a free port (default: %(default)s)")
    add_option(system, "rdzv_id", default="cast-pretrain", help="job id shared by the machines of one run (default: %(default)s)")
    add_option(system, "dist_timeout_s", type=float, default=1800.0, help="timeout in seconds of process-group start and collectives (default: %(default)s)")
    add_option(system, "workers", type=int, default=4, help="data-loader worker processes per training process (default: %(default)s)")
    add_option(system, "amp", default=True, help="bf16 autocast on CUDA (ignored on CPU) (default: %(default)s)")
    add_option(system, "channels_last", default=True, help="channels-last memory format on CUDA (ignored on CPU) (default: %(default)s)")
    add_option(system, "deterministic", default=False, help="deterministic algorithms only (slower on GPU) (default: %(default)s)")
    add_option(system, "checkpoint_every", type=int, default=1, help="write a checkpoint every N epochs (and after the last) (default: %(default)s)")
    add_option(system, "keep_checkpoints", type=int, default=2, help="checkpoints kept per run; older ones are deleted (default: %(default)s)")

    add_method_options(parser.add_argument_group("method"))


def resolved_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Return the command's values as a dict of plain types, as stored in checkpoints."""
    params = {}
    for key, value in sorted(vars(args).items()):
        if key in {"run", "argv"}:
            continue
        params[key] = str(value) if isinstance(value, Path) else value
    return params


def validate(args: argparse.Namespace, world_size: int) -> MethodConfig:
    """Check values that would otherwise fail late, inside workers."""
    for name in ("epochs", "batch_size", "nproc_per_node", "nnodes", "checkpoint_every", "keep_checkpoints"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{name} must be at least 1, not {getattr(args, name)}")
    if args.workers < 0 or args.max_resample < 0:
        raise ConfigError("workers and max_resample must not be negative")
    if args.schedule == "step" and not all(0 < milestone < args.epochs for milestone in args.milestones):
        raise ConfigError(
            f"milestones {args.milestones} must lie between 1 and epochs - 1 = {args.epochs - 1} "
            "for the step schedule to lower the learning rate; choose milestones below epochs"
        )
    if args.batch_size % world_size:
        raise ConfigError(
            f"batch_size {args.batch_size} cannot be split evenly over {world_size} processes; "
            f"choose a multiple of {world_size} or change nproc_per_node/nnodes"
        )
    config = MethodConfig.from_mapping(vars(args))
    if config.moco_k % args.batch_size:
        raise ConfigError(
            f"moco_k {config.moco_k} (queue size) must be a multiple of the global batch_size {args.batch_size}; "
            f"for example {args.batch_size * max(1, config.moco_k // args.batch_size)}"
        )
    return config


def run(args: argparse.Namespace) -> int:
    if not distributed.under_launcher() and (args.nproc_per_node > 1 or args.nnodes > 1):
        validate(args, args.nproc_per_node * args.nnodes)
        read_pairs(args.pairs, args.split)
        return distributed.launch(args.argv, args.nproc_per_node, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    return run_worker(args)


def run_worker(args: argparse.Namespace) -> int:
    context = distributed.init_worker(args.device, args.dist_timeout_s)
    try:
        Pretrainer(args, context).fit()
    except BaseException as error:
        # Every rank reports its own failure; torchrun then stops the others.
        if context.world_size > 1:
            logger.error("rank %d failed: %s", context.rank, error, exc_info=not isinstance(error, DataError))
        distributed.abort_worker()
        raise
    distributed.finish_worker(context)
    return 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise DataError(f"pairs file {path} not found; run 'cast check-masks' first") from None
    return digest.hexdigest()


def set_learning_rate(optimizer: torch.optim.Optimizer, args: argparse.Namespace, epoch: int) -> float:
    """Set the learning rate of this epoch: half-cosine from lr to 0, or x0.1 at each milestone."""
    if args.schedule == "cosine":
        lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    else:
        lr = args.lr * 0.1 ** sum(epoch >= milestone for milestone in args.milestones)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Pretrainer:
    """One worker's training run: model, data, optimizer, checkpoints and metrics."""

    def __init__(self, args: argparse.Namespace, context: distributed.WorkerContext):
        self.args = args
        self.context = context
        self.params = resolved_parameters(args)
        # The pairs file changes whenever images or masks change what training reads, so its
        # checksum is part of the run id: new masks start a new run instead of resuming an old one.
        self.params["pairs_sha256"] = file_sha256(args.pairs)
        self.config = validate(args, context.world_size)
        self.out_dir = Path(args.out_dir)
        self.run_folder = ckpt.CheckpointFolder(self.out_dir / "checkpoints" / ckpt.run_id(self.params), args.keep_checkpoints)
        self.use_cuda_features = context.device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if (args.amp and self.use_cuda_features) else None
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0

    # -- set-up ---------------------------------------------------------

    def log_to_file(self) -> logging.Handler | None:
        """Send rank 0's log to ``train.log`` as well; other ranks log warnings and errors only."""
        if not self.context.is_main:
            logging.getLogger("cast").setLevel(logging.WARNING)
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("cast").addHandler(handler)
        return handler

    def build_model(self) -> MoCo:
        # Every rank builds the same initial model and queue from the same seed.
        seed_everything(self.args.seed)
        if self.args.deterministic:
            torch.use_deterministic_algorithms(True)
        config = self.config
        model = MoCo(
            arch=config.arch,
            dim=config.moco_dim,
            queue_size=config.moco_k,
            momentum=config.moco_m,
            temperature=config.moco_t,
            mlp=config.mlp,
        )
        model.to(self.context.device)
        if self.use_cuda_features and self.args.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def build_loader(self) -> tuple[DataLoader, PairDataset, DistributedSampler]:
        pairs = read_pairs(self.args.pairs, self.args.split)
        per_process_batch = self.args.batch_size // self.context.world_size
        per_process_samples = len(pairs) // self.context.world_size
        if per_process_samples < per_process_batch:
            raise DataError(
                f"{len(pairs)} usable pairs in {self.args.pairs} give each of {self.context.world_size} processes "
                f"{per_process_samples} samples, fewer than one batch of {per_process_batch}; "
                "lower batch_size or add data"
            )
        transform = build_pair_transform(self.config, self.args.method)
        dataset = PairDataset(
            pairs,
            self.args.images,
            self.args.masks if self.args.method == "cast" else None,
            transform,
            seed=self.args.seed,
            max_resample=self.args.max_resample,
            mask_threshold=self.args.mask_threshold,
        )
        sampler = DistributedSampler(
            dataset,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=self.args.seed,
            drop_last=True,
        )
        loader = DataLoader(
            dataset,
            batch_size=per_process_batch,
            sampler=sampler,
            num_workers=self.args.workers,
            pin_memory=self.use_cuda_features,
            drop_last=True,
            persistent_workers=False,  # workers are re-created each epoch, so they see set_epoch
        )
        return loader, dataset, sampler

    def resume(self, model: MoCo, optimizer: torch.optim.Optimizer) -> None:
        path = self.args.resume or self.run_folder.latest()
        if path is None:
            others = sorted(p.name for p in self.run_folder.folder.parent.glob("*") if p != self.run_folder.folder)
            if others:
                logger.info("no checkpoint of these parameters; runs with other parameters are kept in %s: %s",
                            self.run_folder.folder.parent, ", ".join(others))
            return
        checkpoint = ckpt.load_checkpoint(Path(path))
        ckpt.check_compatible(checkpoint, self.params, Path(path))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ckpt.restore_rng_state(checkpoint["rng"])
        self.start_epoch = int(checkpoint["epoch"])
        self.history = list(checkpoint.get("history", []))
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)

    # -- training -------------------------------------------------------

    def fit(self) -> None:
        handler = self.log_to_file()
        try:
            self.train()
        finally:
            if handler is not None:
                logging.getLogger("cast").removeHandler(handler)
                handler.close()

    def train(self) -> None:
        if self.context.is_main:
            logger.info("environment: %s", describe_environment())
            logger.info("parameters: %s", self.params)
        model = self.build_model()
        optimizer = torch.optim.SGD(
            model.encoder_q.parameters(),
            lr=self.args.lr,
            momentum=self.args.momentum,
            weight_decay=self.args.weight_decay,
        )
        self.resume(model, optimizer)
        loader, dataset, sampler = self.build_loader()

        if self.context.world_size > 1:
            device_ids = [self.context.device.index] if self.use_cuda_features else None
            model.encoder_q = DistributedDataParallel(model.encoder_q, device_ids=device_ids)

        for epoch in range(self.start_epoch, self.args.epochs):
            record = self.train_epoch(model, optimizer, loader, dataset, sampler, epoch)
            self.history.append(record)
            done = epoch + 1
            if self.context.is_main:
                write_history(self.out_dir, self.history)
                logger.info(
                    "epoch %d/%d: loss %.4f, contrastive %.4f, attention %s, accuracy %.1f%%, lr %.4g, %.1f images/s, %d resampled crops",
                    done, self.args.epochs, record["loss"], record["contrastive_loss"],
                    f"{record['attention_loss']:.4f}" if "attention_loss" in record else "none",
                    record["accuracy"], record["lr"], record["images_per_second"], record["resampled_crops"],
                )
                if done % self.args.checkpoint_every == 0 or done == self.args.epochs:
                    path = self.run_folder.save(self.make_checkpoint(model, optimizer, done))
                    logger.info("wrote %s", path)

        if self.context.is_main:
            self.write_final(model, optimizer)

    def make_checkpoint(self, model: MoCo, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
        return ckpt.build_checkpoint(model, optimizer, epoch, self.params, self.history)

    def write_final(self, model: MoCo, optimizer: torch.optim.Optimizer) -> None:
        final = self.out_dir / "final.pt"
        latest = self.run_folder.latest()
        if latest is not None and ckpt.CHECKPOINT_PATTERN.match(latest.name) and int(latest.stem.split("_")[1]) == self.args.epochs:
            # Copy through a temporary file, so final.pt is either complete or absent.
            with open(latest, "rb") as source, io.atomic_open(final, "wb") as target:
                shutil.copyfileobj(source, target)
        else:
            io.torch_save(final, self.make_checkpoint(model, optimizer, self.args.epochs))
        write_history(self.out_dir, self.history)
        logger.info("wrote %s", final)

    def train_epoch(self, model, optimizer, loader, dataset, sampler, epoch: int) -> dict[str, float]:
        # Seeding per epoch and rank makes a resumed run draw the same random numbers
        # (batch shuffles of shuffle BN) as an uninterrupted one.
        torch.manual_seed(self.args.seed * 1_000_003 + epoch * 1_009 + self.context.rank)
        lr = set_learning_rate(optimizer, self.args, epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()

        sums = {"loss": 0.0, "contrastive_loss": 0.0, "attention_loss": 0.0, "accuracy": 0.0}
        counts = {"resampled_crops": 0.0, "empty_query_masks": 0.0, "fallback_crops": 0.0, "images": 0.0}
        steps = 0
        started = time.perf_counter()
        batches = loader
        if self.context.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{self.args.epochs}", leave=False)
        for batch in batches:
            counts["resampled_crops"] += float(batch.pop("resampled").sum())
            counts["empty_query_masks"] += float(batch.pop("empty_query_mask").sum())
            if "fallback" in batch:
                counts["fallback_crops"] += float(batch.pop("fallback").sum())
            batch = self.to_device(batch)
            counts["images"] += batch["query"].shape[0]
            result = training_step(model, batch, optimizer, self.config, self.args.method, autocast_dtype=self.autocast_dtype)
            for key in sums:
                sums[key] += float(result[key])
            steps += 1
        elapsed = time.perf_counter() - started

        means = distributed.all_reduce_mean({key: value / max(steps, 1) for key, value in sums.items()}, self.context.device)
        totals = distributed.all_reduce_sum(counts, self.context.device)
        if counts["empty_query_masks"]:
            logger.warning(
                "rank %d, epoch %d: %d crops kept an empty query mask after %d redraws",
                self.context.rank, epoch + 1, int(counts["empty_query_masks"]), self.args.max_resample,
            )
        if self.args.method == "moco":
            del means["attention_loss"]  # not defined for MoCo, so neither plotted nor reported
        return {
            "epoch": epoch + 1,
            **means,
            "lr": lr,
            "images_per_second": totals["images"] / max(elapsed, 1e-9),
            "resampled_crops": totals["resampled_crops"],
            "empty_query_masks": totals["empty_query_masks"],
            "fallback_crops": totals["fallback_crops"],
        }

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {}
        for key, tensor in batch.items():
            tensor = tensor.to(self.context.device, non_blocking=True)
            if self.use_cuda_features and self.args.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            moved[key] = tensor
        return moved
