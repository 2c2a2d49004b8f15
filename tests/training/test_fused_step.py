"""torch's Adam and AdamW take their fused step unless the user chose how they step; nothing else changes."""

import functools
from types import SimpleNamespace

import pytest
import torch

from amused_lightning.training.module import AmusedModule
from amused_lightning.training.optim import (
    group_settings,
    parameter_groups,
    place_step_counts,
    reapply_settings,
    with_fused_step,
)


def groups() -> list[dict]:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    return parameter_groups([net])


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, torch.optim.Adam])
def test_an_unchosen_step_becomes_fused_with_every_setting_kept(optimizer_class):
    given = optimizer_class(groups(), lr=3e-4, betas=(0.8, 0.95), weight_decay=0.05, eps=1e-6)
    fused = with_fused_step(given)
    assert type(fused) is optimizer_class and fused.defaults["fused"] is True
    assert all(group["fused"] for group in fused.param_groups)
    for before, after in zip(given.param_groups, fused.param_groups):
        assert {k: v for k, v in before.items() if k != "fused"} == {k: v for k, v in after.items() if k != "fused"}
    assert fused.param_groups[1]["weight_decay"] == 0.0, "the no-decay group keeps its own setting"


@pytest.mark.parametrize("factory", [
    functools.partial(torch.optim.AdamW, fused=False),
    functools.partial(torch.optim.AdamW, foreach=True),
    functools.partial(torch.optim.SGD, lr=0.1),
    type("MyAdamW", (torch.optim.AdamW,), {}),
    functools.partial(torch.optim.AdamW, differentiable=True),
])
def test_a_chosen_step_or_another_optimizer_is_kept(factory):
    given = factory(groups())
    assert with_fused_step(given) is given


def test_weights_on_a_device_without_the_fused_kernel_keep_the_loop():
    given = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4, device="meta"))])
    assert with_fused_step(given) is given


def test_a_resumed_state_from_the_loop_steps_fused():
    # A checkpoint written before the fused step was the default: its groups say fused None, its step counts sit
    # on the CPU; resumed into the fused step they are moved where it reads them, and no setting is said to change.
    weight = torch.nn.Parameter(torch.ones(3))
    looped = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    looped.step()
    fused = with_fused_step(torch.optim.AdamW([weight], lr=0.1))
    configured = group_settings(fused)
    fused.load_state_dict(looped.state_dict())
    assert fused.param_groups[0]["fused"] is None, "the checkpoint's groups came back with its settings"
    scheduler = torch.optim.lr_scheduler.LambdaLR(fused, lambda step: 1.0)
    assert reapply_settings(fused, scheduler, configured) == []
    assert fused.param_groups[0]["fused"] is True
    state = fused.state[weight]["step"]
    assert state.device == weight.device and state.dtype == torch.float32 and state.item() == 1
    fused.step()
    assert fused.state[weight]["step"].item() == 2


def test_step_counts_move_to_the_weights_device_for_a_fused_step():
    weight = torch.nn.Parameter(torch.zeros(2, device="meta"))
    optimizer = SimpleNamespace(param_groups=[{"params": [weight], "fused": True}],
                                state={weight: {"step": torch.tensor(5.0, dtype=torch.float64)}})
    place_step_counts(optimizer)
    assert optimizer.state[weight]["step"].device.type == "meta"
    assert optimizer.state[weight]["step"].dtype == torch.float32


def test_the_module_builds_the_fused_step():
    # test_module.test_fused_adamw_gives_the_same_update: the fused step updates as the loop does.
    module = AmusedModule("tiny")
    assert all(group["fused"] for group in module.build_optimizer().param_groups)
