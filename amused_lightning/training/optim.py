"""Parameter groups, the fused optimizer step, and learning-rate schedules."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from diffusers.models.normalization import GlobalResponseNorm, RMSNorm
from diffusers.optimization import SchedulerType, get_scheduler
from torch import nn

from amused_lightning.errors import SettingError

# Weights of these modules scale or shift activations, or look up embeddings: decaying them towards zero only hurts.
NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, RMSNorm, GlobalResponseNorm, nn.Embedding)
LR_SCHEDULES = tuple(kind.value for kind in (
    SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP, SchedulerType.LINEAR, SchedulerType.COSINE,
    SchedulerType.COSINE_WITH_RESTARTS, SchedulerType.POLYNOMIAL))


def parameter_groups(modules: Iterable[nn.Module], exempt_modules: tuple[type[nn.Module], ...] = ()) -> list[dict]:
    """Trainable parameters: one group at the optimizer's weight decay, one without (biases, norms, embeddings, and
    the weights of `exempt_modules`, which the finetuning mode names)."""
    decay, no_decay, seen = [], [], set()
    exempt_modules = (*NO_DECAY_MODULES, *exempt_modules)
    for module in modules:
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                exempt = name == "bias" or isinstance(submodule, exempt_modules)
                (no_decay if exempt else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


# torch's optimizers whose fused step is the same arithmetic as their default one, on these devices.
FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW)
FUSED_DEVICES = ("cpu", "cuda")


def with_fused_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`optimizer` rebuilt with `fused=True` when it is torch's Adam or AdamW, neither `fused` nor `foreach` was
    chosen, and every weight it updates is a floating tensor on the CPU or a CUDA device; else `optimizer` itself.
    Torch's default on a CPU is a loop over the weights, about 3x slower than the one fused kernel (BENCHMARKS.md)."""
    defaults = optimizer.defaults
    if (type(optimizer) not in FUSED_CLASSES or defaults.get("fused") is not None
            or defaults.get("foreach") is not None or defaults.get("differentiable")):
        return optimizer
    weights = [param for group in optimizer.param_groups for param in group["params"]]
    if not all(param.is_floating_point() and param.device.type in FUSED_DEVICES for param in weights):
        return optimizer
    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {key: value for key, value in defaults.items() if key in accepted}
    groups = [{**group, "fused": True} for group in optimizer.param_groups]
    return type(optimizer)(groups, **{**settings, "fused": True})


def lr_schedule(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int,
                total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-optimizer-step schedule; warmup counts optimizer steps, whatever the number of devices."""
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each parameter group's settings (initial_lr, betas, weight_decay, ...) without its parameters."""
    return [{key: value for key, value in group.items() if key not in ("params", "lr")}
            for group in optimizer.param_groups]


def class_path(optimizer: torch.optim.Optimizer) -> str:
    """`module.Class` of an optimizer, as a checkpoint records it."""
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def check_same_optimizer(saved: str | None, optimizer: torch.optim.Optimizer) -> None:
    """Refuse to resume a checkpoint's optimizer state into an optimizer of another class (its state would not fit)."""
    if saved is not None and saved != class_path(optimizer):
        raise SettingError(f"model.optimizer changed on resume: {saved} -> {class_path(optimizer)}: the checkpoint's "
                           "optimizer state belongs to the first; resume with it, or start a new run in another "
                           "trainer.default_root_dir")


# Group settings that choose how the step runs, not what it computes: applied on resume without a line (a
# checkpoint written before the fused step was the default says fused None).
HOW_IT_STEPS = ("fused", "foreach")


def place_step_counts(optimizer: torch.optim.Optimizer) -> None:
    """Put each weight's step count where a fused or capturable step reads it (on the weight's device, float32):
    a checkpoint's state written by the loop over the weights keeps it on the CPU, which a fused CUDA step refuses."""
    for group in optimizer.param_groups:
        if not (group.get("fused") or group.get("capturable")):
            continue
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if torch.is_tensor(step) and (step.device != param.device or step.dtype != torch.float32):
                state["step"] = step.to(param.device, torch.float32)


def reapply_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                     configured: list[dict[str, Any]]) -> list[str]:
    """After a checkpoint's optimizer and scheduler states were loaded: the configured settings replace those it
    carried, and the learning rate follows the configured schedule from the restored step. Returns what changed."""
    changed: dict[str, str] = {}
    for group, settings in zip(optimizer.param_groups, configured):
        for key, value in settings.items():
            if group.get(key) != value:
                name = "learning rate" if key == "initial_lr" else f"model.optimizer {key}"
                if key not in HOW_IT_STEPS:
                    changed.setdefault(name, f"{name} changed on resume: {group.get(key)} -> {value}")
                group[key] = value
    place_step_counts(optimizer)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    rates = [base * rate(scheduler.last_epoch) for rate, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    scheduler._last_lr = rates  # what get_last_lr() reports until the next scheduler step
    return list(changed.values())
