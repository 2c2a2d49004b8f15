"""Non-finite values: a NaN loss or gradient stops the run before the update, nothing non-finite is saved or
exported, fp16 skips are counted, and the run resumes from its last good checkpoint. With a fused optimizer the check
waits for no device: a non-finite step's update is skipped where it runs and the run stops at the next step or
checkpoint, with the same guarantee."""

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from amused_lightning.__main__ import main
from amused_lightning.callbacks import guard as guard_module
from amused_lightning.callbacks.guard import (
    NonFiniteGuard,
    SkipCounter,
    all_finite,
    defers_check,
    first_non_finite,
    skips_on_device,
    where_to_continue,
)
from amused_lightning.errors import NonFiniteError
from amused_lightning.training import module

from helpers import fails_with, tiny_fit


def finite_checkpoint(path) -> int:
    """The checkpoint's step, after checking that every weight it holds is finite."""
    checkpoint = torch.load(path, weights_only=True)
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values()), path
    return checkpoint["global_step"]


def test_a_nan_loss_stops_before_the_update(tmp_path, toy_dataset, capsys):
    # lr 1e30 in fp32: the first update makes the weights huge, the next forward pass gives a NaN loss. The run's
    # AdamW is fused (the default), and on a CPU its check is read at once all the same.
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "5", "--model.optimizer.init_args.lr", "1e30",
                      "--checkpoint.every_n_train_steps", "1",
                      "--model.validation.prompts", '["a pixel art character"]'))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1
    assert error.startswith("error: optimizer step 2: the loss is nan; training stopped before the update"), error
    assert f"(the last good checkpoint is in {(tmp_path / 'checkpoints').resolve()}): " in error
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step=1.ckpt"]
    assert finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt") == 1
    assert not (tmp_path / "export").exists() and not (tmp_path / "validation").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_sum_screen_finds_every_non_finite_value_and_no_overflowing_finite_one(bad, dtype):
    huge = torch.full((10,), torch.finfo(dtype).max, dtype=dtype)  # finite, but its sum overflows
    broken = torch.zeros(1000, dtype=dtype)
    broken[517] = bad
    assert all_finite([huge, torch.ones(3, dtype=dtype)]) and first_non_finite([("huge", huge)]) is None
    assert not all_finite([huge, broken]) and first_non_finite([("huge", huge), ("broken", broken)]) == "broken"
    both = torch.tensor([float("inf"), -float("inf")], dtype=dtype)
    assert not all_finite([both]) and all_finite([])


def test_the_error_says_when_no_checkpoint_was_written_yet(tmp_path):
    folder = tmp_path / "checkpoints"
    assert where_to_continue(folder).startswith(f"(no checkpoint was written yet in {folder}): ")
    assert where_to_continue(folder).endswith("then start the run again")
    folder.mkdir()
    (folder / "step=2.ckpt").touch()
    assert where_to_continue(folder).startswith(f"(the last good checkpoint is in {folder}): ")


def test_the_run_resumes_from_the_last_good_checkpoint(tmp_path, toy_dataset, capsys, monkeypatch, caplog):
    original, calls = module.masked_token_loss, []

    def nan_from_the_third_step(*args):
        calls.append(1)
        return original(*args) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(module, "masked_token_loss", nan_from_the_third_step)
    run = ("--checkpoint.every_n_train_steps", "1")
    with pytest.raises(SystemExit):
        main(tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "4", *run))
    assert "optimizer step 3: the loss is nan" in capsys.readouterr().err
    good = torch.load(tmp_path / "checkpoints" / "step=2.ckpt", weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(good[key], last[key]) for key in good), "last.ckpt is the step before the NaN"
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="amused_lightning"):
        main(tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "4", "--model.optimizer.init_args.lr", "1e-4",
                      *run, "--ckpt_path", "last"))
    assert "learning rate changed on resume: 0.001 -> 0.0001" in caplog.messages
    assert finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt") == 4


def guarded_step(guard: NonFiniteGuard, module: nn.Module, scaler: object = None, loss: float = 1.0) -> list:
    """Runs the guard's hooks around one optimizer step of `module` (gradients already set); returns what it logged."""
    logged = []
    module.log = lambda name, value: logged.append((name, value))
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), global_step=6,
                              checkpoint_callback=SimpleNamespace(dirpath="runs/x/checkpoints"))
    guard.on_before_backward(trainer, module, torch.tensor(loss))
    guard.on_before_optimizer_step(trainer, module, None)
    return logged


def test_a_non_finite_gradient_is_named():
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    for param in module.parameters():
        param.grad = torch.ones_like(param)
    guarded_step(NonFiniteGuard(), module)  # all finite: nothing happens
    module[1].bias.grad[0] = float("inf")
    with pytest.raises(NonFiniteError, match="optimizer step 7: the gradient of 1.bias is not finite"):
        guarded_step(NonFiniteGuard(), module)


def test_no_checkpoint_holds_a_weight_an_update_made_infinite():
    # An update can overflow with finite gradients (a learning rate near float32's limit): the save is refused.
    module, trainer = nn.Linear(2, 1), SimpleNamespace(global_step=4, checkpoint_callback=None, default_root_dir="x")
    NonFiniteGuard().on_save_checkpoint(trainer, module, {})
    with torch.no_grad():
        module.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="step 4: the weight bias is not finite .* no checkpoint was written"):
        NonFiniteGuard().on_save_checkpoint(trainer, module, {})


def test_fp16_skips_are_counted_and_too_many_in_a_row_stop():
    # CPU has no fp16 loss scaler (Lightning refuses 16-mixed on CPU): the counting is checked on its own here.
    counter = SkipCounter(limit=3)
    assert [counter.record(skipped) for skipped in (True, True, False, True, True)] == [False] * 5
    assert (counter.total, counter.in_a_row) == (4, 2) and counter.record(True)
    guard, module = NonFiniteGuard(max_skipped_in_a_row=2), nn.Linear(2, 1)
    module.weight.grad, module.bias.grad = torch.full((1, 2), float("nan")), torch.zeros(1)
    # Under the scaler a NaN loss or gradient is a skipped step, not an error, until it happens twice in a row.
    assert guarded_step(guard, module, scaler=object(), loss=float("nan")) == [("train/skipped_steps", 1.0)]
    with pytest.raises(NonFiniteError, match="skipped 2 optimizer steps in a row"):
        guarded_step(guard, module, scaler=object())


def test_the_skip_limit_is_checked(tmp_path, toy_dataset, capsys):
    line = fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--guard.max_skipped_in_a_row", "0"))
    assert "guard.max_skipped_in_a_row=0 must be at least 1" in line


@pytest.fixture
def deferred_on_cpu(monkeypatch):
    """The check an accelerator's fused step defers, run on this CPU."""
    monkeypatch.setattr(guard_module, "defers_check", lambda optimizer, device: skips_on_device(optimizer))


def test_only_a_fused_step_on_an_accelerator_defers_its_check():
    net = nn.Linear(2, 1)
    fused, looped = torch.optim.AdamW(net.parameters(), fused=True), torch.optim.AdamW(net.parameters())
    assert skips_on_device(fused) and not skips_on_device(looped)
    assert defers_check(fused, torch.device("cuda", 0)) and not defers_check(looped, torch.device("cuda", 0))
    assert not defers_check(fused, torch.device("cpu")), "nothing to wait for on a CPU"


def test_a_fused_optimizer_skips_the_non_finite_update_and_the_next_check_names_it(deferred_on_cpu):
    net = nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(net.parameters(), fused=True)
    for param in net.parameters():
        param.grad = torch.ones_like(param)
    net.bias.grad[0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None), global_step=6,
                              checkpoint_callback=SimpleNamespace(dirpath="runs/x/checkpoints"))
    guard = NonFiniteGuard()
    guard.on_before_backward(trainer, net, torch.tensor(1.0))
    guard.on_before_optimizer_step(trainer, net, optimizer)  # no wait, no error yet
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())), "the update was skipped"
    assert optimizer.state[net.bias]["step"] == 0
    with pytest.raises(NonFiniteError, match="optimizer step 7: the gradient of bias is not finite; the optimizer "
                                             "skipped that update"):
        guard.on_save_checkpoint(trainer, net, {})


def test_a_fused_run_stops_at_the_step_after_a_nan_and_saves_nothing_of_it(tmp_path, toy_dataset, capsys,
                                                                           monkeypatch, deferred_on_cpu):
    original, calls = module.masked_token_loss, []

    def nan_from_the_third_step(*args):
        calls.append(1)
        return original(*args) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(module, "masked_token_loss", nan_from_the_third_step)
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "1",
                      "--model.optimizer.init_args.fused", "true"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1
    assert error.startswith("error: optimizer step 3: the loss of micro-batch 0 is not finite; the optimizer skipped "
                            "that update and training stopped"), error
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    good = torch.load(checkpoints / "step=2.ckpt", weights_only=True)["state_dict"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(good[key], last[key]) and torch.isfinite(good[key]).all() for key in good)
