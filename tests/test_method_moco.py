"""Tests of the MoCo model: encoders, momentum update, queue, logits and batch shuffling on one process."""

import pytest
import torch
from torch.nn import functional as F

from cast.errors import ConfigError
from cast.method import distributed
from cast.method.moco import MoCo, check_queue_size, enqueue, momentum_update

torch.set_num_threads(1)


def small_model(**changes) -> MoCo:
    torch.manual_seed(0)
    options = {"arch": "resnet18", "dim": 16, "queue_size": 32, "momentum": 0.9, "temperature": 0.2}
    options.update(changes)
    return MoCo(**options)


def test_state_dict_keys_follow_torchvision():
    keys = set(small_model().state_dict())
    assert {"encoder_q.conv1.weight", "encoder_q.fc.weight", "encoder_q.fc.bias", "encoder_k.fc.weight", "queue", "queue_ptr"} <= keys
    mlp_keys = set(small_model(mlp=True).state_dict())
    assert {"encoder_q.fc.0.weight", "encoder_q.fc.2.weight", "encoder_k.fc.2.bias"} <= mlp_keys
    assert "encoder_q.fc.weight" not in mlp_keys


def test_initial_state():
    model = small_model()
    assert model.queue.shape == (16, 32)
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(32), atol=1e-5)
    assert int(model.queue_ptr) == 0
    for param_q, param_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(param_q, param_k)
        assert not param_k.requires_grad


def test_invalid_arguments_rejected():
    with pytest.raises(ConfigError, match="not a torchvision ResNet"):
        MoCo(arch="vgg11")
    with pytest.raises(ConfigError, match="temperature"):
        MoCo(arch="resnet18", temperature=0.0)


def test_momentum_update_formula():
    model = small_model()
    with torch.no_grad():
        for param in model.encoder_q.parameters():
            param.add_(torch.randn_like(param))
    before_q = [param.clone() for param in model.encoder_q.parameters()]
    before_k = [param.clone() for param in model.encoder_k.parameters()]
    model.momentum_update()
    for param_k, old_k, param_q in zip(model.encoder_k.parameters(), before_k, before_q):
        assert torch.allclose(param_k, 0.9 * old_k + 0.1 * param_q, atol=1e-6)


def test_momentum_update_reaches_through_wrapper():
    model = small_model()
    wrapped = torch.nn.DataParallel(model.encoder_q)
    assert distributed.unwrap(wrapped) is model.encoder_q
    with torch.no_grad():
        next(model.encoder_q.parameters()).fill_(1.0)
    momentum_update(wrapped, model.encoder_k, 0.0)
    assert torch.equal(next(model.encoder_k.parameters()), torch.ones_like(next(model.encoder_k.parameters())))


def test_queue_pointer_wraps():
    queue = torch.zeros(4, 12)
    pointer = torch.zeros(1, dtype=torch.long)
    for step in range(5):
        keys = torch.full((4, 4), float(step + 1))
        enqueue(queue, pointer, keys)
        assert int(pointer) == (step + 1) * 4 % 12
    # Steps 1..5 wrote columns 0-3, 4-7, 8-11, 0-3, 4-7.
    assert queue[0].tolist() == [4.0] * 4 + [5.0] * 4 + [3.0] * 4


def test_enqueue_rejects_batch_not_dividing_queue():
    with pytest.raises(ConfigError, match="moco_k \\(queue size\\) 10 is not a multiple of the global batch size 4"):
        enqueue(torch.zeros(2, 10), torch.zeros(1, dtype=torch.long), torch.zeros(4, 2))


def test_check_queue_size():
    check_queue_size(65536, 256)
    with pytest.raises(ConfigError, match="such as 300"):
        check_queue_size(310, 100)


def test_contrastive_logits_by_hand():
    model = small_model()
    query = F.normalize(torch.randn(3, 16), dim=1)
    keys = F.normalize(torch.randn(3, 16), dim=1)
    logits = model.contrastive_logits(query, keys)
    assert logits.shape == (3, 33)
    for i in range(3):
        assert logits[i, 0].item() == pytest.approx(float(sum(query[i, c] * keys[i, c] for c in range(16))) / 0.2, abs=1e-5)
        for j in range(32):
            expected = float(sum(query[i, c] * model.queue[c, j] for c in range(16))) / 0.2
            assert logits[i, 1 + j].item() == pytest.approx(expected, abs=1e-5)


def test_shuffle_then_unshuffle_is_identity():
    batch = torch.arange(24, dtype=torch.float32).view(8, 3)
    torch.manual_seed(1)
    shuffled, unshuffle = distributed.shuffle_batch(batch)
    assert not torch.equal(shuffled, batch)
    assert sorted(shuffled[:, 0].tolist()) == batch[:, 0].tolist()
    assert torch.equal(distributed.unshuffle_batch(shuffled, unshuffle), batch)


def test_key_encoding_independent_of_shuffle():
    model = small_model()
    images = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    first = model.encode_keys(images)
    torch.manual_seed(1)
    second = model.encode_keys(images)
    assert torch.allclose(first, second, atol=1e-5)
    assert torch.allclose(first.norm(dim=1), torch.ones(4), atol=1e-5)


def test_forward_leaves_queue_unchanged():
    model = small_model()
    queue = model.queue.clone()
    logits, keys = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 33)
    assert torch.equal(model.queue, queue)
    model.enqueue(keys)
    assert torch.equal(model.queue[:, :4], keys.T)
    assert int(model.queue_ptr) == 4


def test_unwrapped_state_dict_round_trip():
    model = small_model()
    model.encoder_q = torch.nn.DataParallel(model.encoder_q)
    state = model.unwrapped_state_dict()
    assert "encoder_q.fc.weight" in state and not any(".module." in key for key in state)
    other = small_model()
    with torch.no_grad():
        for param in other.parameters():
            param.zero_()
    other.load_unwrapped_state_dict(state)
    assert torch.equal(other.encoder_q.fc.weight, distributed.unwrap(model.encoder_q).fc.weight)
    with pytest.raises(ValueError, match="missing"):
        other.load_unwrapped_state_dict({key: value for key, value in state.items() if key != "queue"})


def test_unwrap_compiled_module():
    model = small_model()
    compiled = torch.compile(model.encoder_q)
    assert distributed.unwrap(compiled) is model.encoder_q
    assert distributed.unwrap(model.encoder_q) is model.encoder_q
