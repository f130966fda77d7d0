"""One Adam for a whole population, with a per-member gradient check, clipping and update mask.

Why not ``torch.optim.Adam`` over the stacked parameters: Adam is elementwise, so one Adam over an (M, P) tensor
is M independent Adams -- until a member's gradient is non-finite. Clipping by the global norm would then mix the
members (one NaN poisons the norm), zeroing the bad member's gradient would still move it (momentum), and its
step count, which sets the bias correction, would advance although it took no step. Here every member has its
own gradient norm, clipping factor and step count; a member with a non-finite loss or gradient is simply left out
of the update (parameters and both moments unchanged, step count unchanged), exactly as a single run that skips
the step. The update itself is PyTorch's fused Adam (``torch.optim.adam.adam(fused=True)``, one call for all
members that step), so a population of one is numerically the optimizer a single run always used.
"""

from __future__ import annotations

import math

import torch
from torch.optim.adam import adam

Tensor = torch.Tensor


class MemberAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, no weight decay) on the (M, P) parameter `param`, one member per row; the
    trainer writes each step's gradient into `grad` (it may compute it a chunk of members at a time)."""

    def __init__(self, param: torch.nn.Parameter, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if param.dim() != 2:
            raise ValueError(f"MemberAdam expects an (M, P) parameter, got shape {tuple(param.shape)}")
        self.param, self.lr, self.betas, self.eps = param, float(lr), betas, eps
        self.grad = torch.zeros_like(param, memory_format=torch.contiguous_format)  # filled by the trainer
        self.exp_avg = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.steps = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
        self._fused = param.device.type in ("cpu", "cuda")  # PyTorch's fused Adam exists for these devices

    def check_and_clip(self, loss: Tensor, clip: float | None) -> Tensor:
        """Per-member finiteness of the loss (M,) and of the gradient, and clipping of each member's gradient to
        norm `clip` (as clip_grad_norm_ does for one model). Returns ok (M,) bool; bad members' gradients are
        zeroed so that nothing non-finite reaches the update."""
        grad = self.grad
        norm = torch.linalg.vector_norm(grad, dim=1)
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        grad.masked_fill_(~ok.unsqueeze(1), 0.0)
        if clip is not None and math.isfinite(clip):
            scale = (clip / (norm + 1e-6)).clamp(max=1.0)
            grad.mul_(torch.where(ok, scale, torch.ones_like(scale)).unsqueeze(1))
        return ok

    def step(self, members: list[int]) -> None:
        """One Adam step for the listed members (the others keep parameters, moments and step counts)."""
        if not members:
            return
        rows = lambda t: [t[i] for i in members]  # noqa: E731 - row views: the update writes through them
        beta1, beta2 = self.betas
        with torch.no_grad():
            adam(rows(self.param), rows(self.grad), rows(self.exp_avg), rows(self.exp_avg_sq), [],
                 [self.steps[i] for i in members], fused=self._fused, foreach=None if self._fused else False,
                 amsgrad=False, beta1=beta1, beta2=beta2, lr=self.lr, weight_decay=0.0, eps=self.eps,
                 maximize=False)

    # ----- checkpoints: plain tensors only -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key in ("exp_avg", "exp_avg_sq", "steps"):
            current = getattr(self, key)
            value = state[key]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}, this population needs "
                                 f"{tuple(current.shape)}")
            current.copy_(value)
