import bitsandbytes
import pytest
import torch

from amused_lightning.model.components import load_components
from amused_lightning.training.offload import OffloadedAdamW, OffloadedAdamW8bit
from amused_lightning.training.optim import parameter_groups

from helpers import fit, train_two_layer_net, two_layer_net


def test_offloaded_adamw_equals_adamw_with_groups_and_schedule():
    reference, _ = train_two_layer_net(torch.optim.AdamW, foreach=True)
    offloaded, optimizer = train_two_layer_net(OffloadedAdamW)
    for a, b in zip(reference.parameters(), offloaded.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    state = optimizer.state_dict()["state"]
    assert len(state) == 6 and all(s["exp_avg"].device.type == "cpu" for s in state.values())


def test_offloaded_adamw8bit_equals_bitsandbytes_adamw8bit_with_groups_and_schedule():
    # 1500 x 6 weights: above bitsandbytes' 4096-element threshold, so that tensor gets 8-bit moments.
    reference, _ = train_two_layer_net(bitsandbytes.optim.AdamW8bit, width=1500)
    offloaded, optimizer = train_two_layer_net(OffloadedAdamW8bit, width=1500)
    for a, b in zip(reference.parameters(), offloaded.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    state = optimizer.host.state.values()
    assert {s["state1"].dtype for s in state} == {torch.uint8, torch.float32}
    assert all(s["state1"].device.type == "cpu" for s in state)


@pytest.mark.parametrize("optimizer_class", [OffloadedAdamW, OffloadedAdamW8bit])
def test_offloaded_optimizer_state_round_trips(optimizer_class):
    net, optimizer = train_two_layer_net(optimizer_class, steps=2, width=1500)
    clone = optimizer_class(parameter_groups([net]), lr=0.05, weight_decay=0.1)
    clone.load_state_dict(optimizer.state_dict())
    params = [p for group in optimizer.host.param_groups for p in group["params"]]
    clone_params = [p for group in clone.host.param_groups for p in group["params"]]
    for param, clone_param in zip(params, clone_params, strict=True):
        state, restored = optimizer.host.state[param], clone.host.state[clone_param]
        assert state.keys() == restored.keys()
        assert all(torch.equal(torch.as_tensor(state[k]), torch.as_tensor(restored[k])) for k in state)


@pytest.mark.parametrize("optimizer_class", [OffloadedAdamW, OffloadedAdamW8bit])
def test_the_export_releases_the_moments_held_on_the_host(optimizer_class):
    from types import SimpleNamespace

    from amused_lightning.callbacks.final_export import release_optimizer_state

    net, optimizer = train_two_layer_net(optimizer_class, steps=1, width=1500)
    assert optimizer.host.state
    release_optimizer_state(SimpleNamespace(optimizers=[optimizer]))
    assert not optimizer.host.state and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("optimizer_class", [OffloadedAdamW, OffloadedAdamW8bit])
def test_offloaded_optimizer_trains_and_resumes_exactly(tmp_path, toy_dataset, optimizer_class):
    common = ("--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2", "--checkpoint.every_n_train_steps",
              "2", "--model.optimizer", f"amused_lightning.training.offload.{optimizer_class.__name__}",
              "--model.optimizer.init_args.lr", "1e-3", "--trainer.gradient_clip_val", "1.0")
    straight = fit(tmp_path / "straight", toy_dataset, "--trainer.max_steps", "4", *common)
    fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "2", *common)
    resumed = fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "4", "--ckpt_path", "last", *common)
    assert type(straight.trainer.optimizers[0]) is optimizer_class
    initial = load_components("tiny", seed=straight.model.hparams.seed).transformer.state_dict()
    moved = [k for k, v in straight.model.model.transformer.state_dict().items() if not torch.equal(v, initial[k])]
    assert len(moved) == len(initial)  # every weight was updated
    for key, value in straight.model.model.transformer.state_dict().items():
        assert torch.allclose(value, resumed.model.model.transformer.state_dict()[key], atol=1e-6, rtol=0), key


@pytest.mark.parametrize("reference_class, offloaded_class", [(torch.optim.AdamW, OffloadedAdamW),
                                                              (bitsandbytes.optim.AdamW8bit, OffloadedAdamW8bit)])
def test_offloaded_optimizer_under_loss_scaling_skips_and_steps_like_its_reference(reference_class, offloaded_class):
    results = []
    for optimizer_class in (reference_class, offloaded_class):
        net = two_layer_net(width=1500)
        optimizer = optimizer_class(net.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        generator = torch.Generator().manual_seed(2)
        for step in range(3):
            optimizer.zero_grad()
            loss = net(torch.randn(5, 6, generator=generator)).square().mean()
            scaler.scale(loss * (float("inf") if step == 1 else 1.0)).backward()  # step 1 overflows: skipped
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*results))
