"""Process-group set-up for pretraining: one process per GPU, or several CPU processes with gloo.

Workers are started by ``torchrun`` (or by :func:`launch`, which calls the same
launcher in-process). Each worker reads its rank from the environment that the
launcher sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cast.devices import resolve_device
from cast.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    """Position of this process in the job: rank, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_launcher() -> bool:
    """Return whether this process was started by torchrun (or another launcher that sets RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_worker(requested_device: str, timeout_s: float) -> WorkerContext:
    """Join the process group (gloo on CPU, NCCL on CUDA) when started by a launcher with world size > 1."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    if device.type == "cpu":
        # Share the cores of this machine between its worker processes.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))

    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        logger.debug("rank %d: joining a %s process group of %d", rank, backend, world_size)
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return WorkerContext(rank, local_rank, world_size, local_world_size, device)


def finish_worker(context: WorkerContext) -> None:
    """Wait for every rank, then leave the process group."""
    if dist.is_initialized():
        if context.device.type == "cuda":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()
        dist.destroy_process_group()


def abort_worker() -> None:
    """Leave the process group after an error without waiting for the other ranks."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over all ranks (identity on one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over all ranks (identity on one process)."""
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return {key: total / world_size for key, total in all_reduce_sum(values, device).items()}


def check_port_free(endpoint: str) -> None:
    """Raise ConfigError when ``host:port`` names a port on this machine that is already in use."""
    host, _, port_text = endpoint.rpartition(":")
    if not host or not port_text.isdigit():
        raise ConfigError(f"rdzv_endpoint must look like HOST:PORT, not {endpoint!r}")
    port = int(port_text)
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"rendezvous port {port} on {host} is already in use ({error.strerror}). "
                "Stop the process that holds it, choose another port with --rdzv_endpoint, "
                "or leave --rdzv_endpoint empty on one machine to pick a free port automatically."
            ) from None


SLURM_RENDEZVOUS_PORT = 29400


def slurm_rendezvous_endpoint() -> str:
    """Return ``HOST:PORT`` on the first node of the current SLURM job, or an empty string outside SLURM.

    Every node of a job runs the same command, and each derives the same
    endpoint from ``SLURM_JOB_NODELIST`` through ``scontrol show hostnames``.
    """
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return ""
    try:
        result = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(
            f"cannot expand SLURM_JOB_NODELIST {nodelist!r} with scontrol ({error}); pass --rdzv_endpoint HOST:PORT"
        ) from None
    hosts = result.stdout.split()
    if not hosts:
        raise ConfigError(f"scontrol listed no host for SLURM_JOB_NODELIST {nodelist!r}; pass --rdzv_endpoint HOST:PORT")
    return f"{hosts[0]}:{SLURM_RENDEZVOUS_PORT}"


def launch(worker_argv: list[str], nproc_per_node: int, nnodes: int, rdzv_endpoint: str, rdzv_id: str) -> int:
    """Start ``python -m cast <worker_argv>`` as torchrun workers and wait for them.

    One machine without an endpoint uses torchrun's ``--standalone`` mode, which
    picks a free port. Several machines need the same ``rdzv_endpoint`` on each.
    Torchrun stops every worker as soon as one fails and reports the failing
    rank's exception, so a failure on one rank never leaves the others waiting.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launcher_argv = [f"--nproc_per_node={nproc_per_node}", f"--nnodes={nnodes}", "--max_restarts=0"]
    if nnodes > 1 and not rdzv_endpoint:
        rdzv_endpoint = slurm_rendezvous_endpoint()
        if rdzv_endpoint:
            rdzv_id = os.environ.get("SLURM_JOB_ID", rdzv_id)
            logger.info("SLURM job: rendezvous at %s, id %s", rdzv_endpoint, rdzv_id)
    if nnodes == 1 and not rdzv_endpoint:
        launcher_argv.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ConfigError(
                f"nnodes is {nnodes}: pass the same --rdzv_endpoint HOST:PORT (a machine of the job) on every node, "
                "or run inside a SLURM allocation, where the first node of the job is used"
            )
        if nnodes == 1:
            check_port_free(rdzv_endpoint)
        launcher_argv += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    launcher_argv += ["--module", "cast", *worker_argv]

    logger.info("starting %d worker process(es) per node on %d node(s)", nproc_per_node, nnodes)
    try:
        run(parse_args(launcher_argv))
    except ChildFailedError as error:
        failures = "; ".join(
            f"rank {rank} exited with code {failure.exitcode}" for rank, failure in sorted(error.failures.items())
        )
        logger.error("pretraining failed: %s (the failing rank's error is logged above)", failures)
        return 1
    return 0
