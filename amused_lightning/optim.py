"""Parameter groups and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.models.normalization import GlobalResponseNorm, RMSNorm
from diffusers.optimization import SchedulerType, get_scheduler
from torch import nn

# Weights of these modules scale or shift activations, or look up embeddings: decaying them towards zero only hurts.
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, RMSNorm, GlobalResponseNorm, nn.Embedding)
LR_SCHEDULES = tuple(kind.value for kind in (
    SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP, SchedulerType.LINEAR, SchedulerType.COSINE,
    SchedulerType.COSINE_WITH_RESTARTS, SchedulerType.POLYNOMIAL))


def parameter_groups(modules: Iterable[nn.Module]) -> list[dict]:
    """Trainable parameters: one group at the optimizer's weight decay, one without (biases, norms, embeddings)."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                exempt = name == "bias" or isinstance(submodule, _NO_DECAY_MODULES)
                (no_decay if exempt else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def lr_schedule(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int,
                total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-optimizer-step schedule; warmup counts optimizer steps, whatever the number of devices."""
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
