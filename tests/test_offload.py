import torch

from amused_lightning.offload import OffloadedAdamW
from amused_lightning.optim import parameter_groups

from helpers import fit


def two_layer_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def train(optimizer_class, steps=4, **kwargs):
    net = two_layer_net()
    optimizer = optimizer_class(parameter_groups([net]), lr=0.05, weight_decay=0.1, **kwargs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        net(torch.randn(5, 6, generator=generator)).square().mean().backward()
        optimizer.step()
        schedule.step()
    return net, optimizer


def test_offloaded_adamw_equals_adamw_with_groups_and_schedule():
    reference, _ = train(torch.optim.AdamW, foreach=True)
    offloaded, optimizer = train(OffloadedAdamW)
    for a, b in zip(reference.parameters(), offloaded.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    state = optimizer.state_dict()["state"]
    assert len(state) == 6 and all(s["exp_avg"].device.type == "cpu" for s in state.values())


def test_offloaded_adamw_state_round_trips():
    net, optimizer = train(OffloadedAdamW, steps=2)
    clone = OffloadedAdamW(parameter_groups([net]), lr=0.05, weight_decay=0.1)
    clone.load_state_dict(optimizer.state_dict())
    for key, value in optimizer.state_dict()["state"].items():
        assert torch.equal(value["exp_avg_sq"], clone.state_dict()["state"][key]["exp_avg_sq"])


def test_offloaded_adamw_trains_and_resumes_exactly(tmp_path, toy_dataset):
    common = ("--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2", "--checkpoint.every_n_train_steps",
              "2", "--model.optimizer", "amused_lightning.offload.OffloadedAdamW",
              "--model.optimizer.init_args.lr", "1e-3", "--trainer.gradient_clip_val", "1.0")
    straight = fit(tmp_path / "straight", toy_dataset, "--trainer.max_steps", "4", *common)
    fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "2", *common)
    resumed = fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "4", "--ckpt_path", "last", *common)
    assert isinstance(straight.trainer.optimizers[0], OffloadedAdamW)
    for key, value in straight.model.transformer.state_dict().items():
        assert torch.allclose(value, resumed.model.transformer.state_dict()[key], atol=1e-6, rtol=0), key


def test_offloaded_adamw_under_loss_scaling_skips_and_steps_like_adamw():
    results = []
    for optimizer_class in (torch.optim.AdamW, OffloadedAdamW):
        net = two_layer_net()
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
