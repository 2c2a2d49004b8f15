"""AdamW, or bitsandbytes' 8-bit AdamW, with its state and update in host memory, for full finetuning on a small
GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")


class OffloadedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW run on fp32 host copies of the weights: at each step the gradients go to the CPU, the
    update runs there, and the new weights are copied back. The device keeps weights and gradients only; the
    two moments (8 bytes per weight) and the host copies stay in CPU memory. Same arithmetic as AdamW.

    Works with gradient clipping and fp16 loss scaling, which act on the device gradients before `step`.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        pin = torch.cuda.is_available()
        host_groups = []
        for group in self.param_groups:
            copies = [p.detach().to("cpu", torch.float32, copy=True) for p in group["params"]]
            host_groups.append({**{k: group[k] for k in _HYPERPARAMETERS},
                                "params": [c.pin_memory() if pin else c for c in copies]})
        self.host = self.host_optimizer(host_groups)

    @staticmethod
    def host_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
        """The optimizer that updates the host copies."""
        return torch.optim.AdamW(groups, foreach=True)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pairs = list(self._pairs())
        for device_param, host_param, _ in pairs:
            host_param.grad = None if device_param.grad is None else device_param.grad.to("cpu", torch.float32)
        for group, host_group in zip(self.param_groups, self.host.param_groups):
            host_group.update({k: group[k] for k in _HYPERPARAMETERS})  # the LR schedule writes to our groups
        self.host.step()
        for device_param, host_param, _ in pairs:
            if host_param.grad is not None:
                device_param.copy_(host_param, non_blocking=True)
                host_param.grad = None
        return loss

    def _pairs(self):
        for group, host_group in zip(self.param_groups, self.host.param_groups):
            for device_param, host_param in zip(group["params"], host_group["params"]):
                yield device_param, host_param, group

    def state_dict(self) -> dict:
        return self.host.state_dict()

    def release_state(self) -> None:
        """Free the moments in host memory (once the fit is over and its checkpoint holds them)."""
        self.host.state.clear()

    def load_state_dict(self, state_dict: dict) -> None:
        self.host.load_state_dict(state_dict)
        # The host copies start from the device weights, which a resumed run has already restored.
        for device_param, host_param, _ in self._pairs():
            host_param.copy_(device_param.detach())


class OffloadedAdamW8bit(OffloadedAdamW):
    """bitsandbytes' AdamW8bit run on fp32 host copies of the weights, as OffloadedAdamW runs AdamW: the device keeps
    weights and gradients only. The update is that of bitsandbytes' CPU kernels (same 8-bit blockwise algorithm)."""

    @staticmethod
    def host_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups)
