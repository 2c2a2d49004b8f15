"""torch's Adam and AdamW take their fused step unless the user chose how they step; nothing else changes."""

import functools

import pytest
import torch

from amused_lightning.training.module import AmusedModule
from amused_lightning.training.optim import parameter_groups, with_fused_step


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
])
def test_a_chosen_step_or_another_optimizer_is_kept(factory):
    given = factory(groups())
    assert with_fused_step(given) is given


def test_the_module_builds_the_fused_step():
    # test_module.test_fused_adamw_gives_the_same_update: the fused step updates as the loop does.
    module = AmusedModule("tiny")
    assert all(group["fused"] for group in module.build_optimizer().param_groups)
