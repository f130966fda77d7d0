"""One Adam for a whole population, with a per-member gradient check, clipping and update mask.

Why not ``torch.optim.Adam`` over the stacked parameters: Adam is elementwise, so one Adam over an (M, P) tensor
is M independent Adams -- until a member's gradient is non-finite. Clipping by the global norm would then mix the
members (one NaN poisons the norm), zeroing the bad member's gradient would still move it (momentum), and its
step count, which sets the bias correction, would advance although it took no step. Here every member has its
own gradient norm, clipping factor and step count; a member with a non-finite loss or gradient, or one that has
failed, is left out of the update (parameters, both moments and step count unchanged), exactly as a single run
that skips the step.

Why whole-matrix tensor ops with a mask, not a call per member: the update must neither read the device from the
host (which member steps is a device tensor) nor grow with M (one Python view per member is one dispatched op
per member), so that a CUDA graph can capture it and a GPU never waits for the host. Each member's row gets its
own bias correction from its own step count (M, 1); a masked row gets weight 0 everywhere, which leaves it
bit-for-bit unchanged. Cost on a CPU: ~2 ms against ~0.6 ms for PyTorch's fused Adam per member-step of the
4x40 MLP (BENCHMARKS.md), a few per cent of the step.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


class MemberAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, no weight decay) on the (M, P) parameter `param`, one member per row; the
    trainer writes each step's gradient into `grad` (it may compute it a chunk of members at a time). With
    `decay_steps` d > 0 a member's k-th update uses lr / (1 + k/d)^a (a = `decay_power`): a function of its own step count (a device
    tensor, so no host sync), hence the same whether a run is trained in one go or continued from a checkpoint."""

    def __init__(self, param: torch.nn.Parameter, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, decay_steps: int = 0, decay_power: float = 1.0):
        if param.dim() != 2:
            raise ValueError(f"MemberAdam expects an (M, P) parameter, got shape {tuple(param.shape)}")
        self.param, self.lr, self.betas, self.eps = param, float(lr), betas, eps
        self.decay_steps = int(decay_steps)  # > 0: the k-th update of a member uses lr / (1 + k / decay_steps)^a
        self.decay_power = float(decay_power)  # a; 1 computes exactly what it did before the power existed
        self.grad = torch.zeros_like(param, memory_format=torch.contiguous_format)  # filled by the trainer
        self.exp_avg = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.steps = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)

    def tensors(self) -> list[Tensor]:
        """The state the update writes in place (a CUDA graph needs their addresses fixed)."""
        return [self.grad, self.exp_avg, self.exp_avg_sq, self.steps]

    def check_and_clip(self, loss: Tensor, clip: float | None, active: Tensor) -> Tensor:
        """Per-member finiteness of the loss (M,) and of the gradient, and clipping of each member's gradient to
        norm `clip` (as clip_grad_norm_ does for one model). Returns ok (M,) bool. The gradients of members that
        will not step (not ok, or not `active`) are zeroed, so nothing non-finite reaches the update."""
        grad = self.grad
        norm = torch.linalg.vector_norm(grad, dim=1)
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        grad.masked_fill_(~(ok & active).unsqueeze(1), 0.0)
        if clip is not None and math.isfinite(clip):
            scale = (clip / (norm + 1e-6)).clamp(max=1.0)
            grad.mul_(torch.where(ok, scale, torch.ones_like(scale)).unsqueeze(1))
        return ok

    @torch.no_grad()
    def step(self, update: Tensor) -> None:
        """One Adam step of the members where `update` (M,) is true; the others keep parameters, moments and
        step counts bit for bit. Their gradient rows must be zero (check_and_clip does that)."""
        beta1, beta2 = self.betas
        mask = update.unsqueeze(1)
        steps = self.steps.unsqueeze(1)
        steps.add_(mask.to(steps.dtype))
        count = torch.where(mask, steps, 1.0)  # a masked member's factors below are finite and then unused
        bias1 = 1.0 - torch.pow(beta1, count)
        bias2_sqrt = (1.0 - torch.pow(beta2, count)).sqrt()
        self.exp_avg.lerp_(self.grad, torch.where(mask, 1.0 - beta1, 0.0))
        self.exp_avg_sq.mul_(torch.where(mask, beta2, 1.0)).addcmul_(self.grad, self.grad, value=1.0 - beta2)
        denom = self.exp_avg_sq.sqrt().div_(bias2_sqrt).add_(self.eps)
        # param -= lr / bias1 * exp_avg / denom, with the step size dividing denom: a masked row's divisor 0 makes
        # its denom infinite and its change exactly 0 (exp_avg / inf)
        if self.decay_steps > 0:
            decay = 1.0 + count / self.decay_steps
            lr = self.lr / (decay if self.decay_power == 1.0 else decay.pow(self.decay_power))
        else:
            lr = self.lr
        denom.div_(torch.where(mask, -lr / bias1, 0.0))
        self.param.addcdiv_(self.exp_avg, denom)

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
