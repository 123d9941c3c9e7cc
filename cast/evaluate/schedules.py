"""Per-epoch learning-rate schedules for the linear classifier.

``step`` multiplies the learning rate by 0.1 at each milestone epoch (MoCo's
linear evaluation: 100 epochs, milestones 60 and 80). ``cosine`` anneals it
from the base value towards zero over all epochs, without warm-up. Both are
torch schedulers stepped once at the end of every epoch, so epoch ``e``
(counted from 0) trains with::

    step:   lr * 0.1 ** (number of milestones <= e)
    cosine: lr * 0.5 * (1 + cos(pi * e / epochs))
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR

from cast.errors import ConfigError

SCHEDULES = ("step", "cosine")
STEP_FACTOR = 0.1


def check_milestones(milestones: list[int], epochs: int) -> None:
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:])):
        raise ConfigError(f"milestones {milestones} must be strictly increasing.")
    outside = [epoch for epoch in milestones if not 0 < epoch < epochs]
    if outside:
        raise ConfigError(
            f"milestones {outside} lie outside 1..{epochs - 1}, so they would never lower the learning rate "
            f"in a run of {epochs} epochs. Choose milestones below epochs."
        )


def build_scheduler(optimizer: Optimizer, schedule: str, epochs: int, milestones: list[int]) -> LRScheduler:
    """Return the scheduler for ``schedule``, whose ``step()`` must run once after each epoch."""
    if schedule == "step":
        check_milestones(milestones, epochs)
        return MultiStepLR(optimizer, milestones=milestones, gamma=STEP_FACTOR)
    if schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)
    raise ConfigError(f"unknown schedule {schedule!r}. Use one of {', '.join(SCHEDULES)}.")

