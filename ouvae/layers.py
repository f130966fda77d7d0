"""Layers with a leading member dimension: M independent networks of one architecture evaluated as one.

Why: a sweep trains many small models that differ only in scalars; stacked along a leading member dimension they
become a few large batched operations (docs/populations.md). A single run is a population of one, so there is
exactly one model code path.

Storage: every parameter of every member lives in ONE tensor ``flat`` of shape (M, P), one row per member. A
forward pass splits it once (``torch.split`` along dim 1: its backward is a single concatenation) and each layer
views its slice, e.g. a linear weight as (M, in, out) for ``torch.baddbmm``. One flat gradient then gives each
member's gradient norm in one reduction and lets the optimizer update all members with a handful of kernels
(``ouvae/optim.py``).

Initialisation is per member from that member's own ``torch.Generator`` seeded with its seed, in a fixed order
and on the CPU, so a member starts from the same weights whatever population it is in and on whatever device.
The distributions are PyTorch's defaults (``nn.Linear`` / ``nn.Conv2d``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
weight and bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of one member: its name, shape and the bound of its uniform initialisation."""

    name: str
    shape: tuple[int, ...]
    bound: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ParamLayout:
    """The ordered list of parameters of one member; layers register here while the model is built."""

    def __init__(self) -> None:
        self.specs: list[ParamSpec] = []

    def add(self, name: str, shape: Sequence[int], fan_in: int) -> str:
        if any(s.name == name for s in self.specs):
            raise ValueError(f"parameter {name!r} registered twice")
        self.specs.append(ParamSpec(name, tuple(int(s) for s in shape), 1.0 / math.sqrt(fan_in)))
        return name

    def sizes(self) -> list[int]:
        return [s.numel for s in self.specs]

    def init_member(self, seed: int) -> Tensor:
        """The (P,) parameters of one member, drawn from its own generator in registration order (float32, CPU)."""
        g = torch.Generator().manual_seed(int(seed))
        parts = [torch.rand(s.numel, generator=g).mul_(2 * s.bound).sub_(s.bound) for s in self.specs]
        return torch.cat(parts) if parts else torch.zeros(0)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """name -> (M, *shape) view of `flat` (M, P); one split, so the backward is one concatenation."""
        m = flat.shape[0]
        chunks = flat.split(self.sizes(), dim=1)
        return {s.name: c.view(m, *s.shape) for s, c in zip(self.specs, chunks)}

    def describe(self) -> list[list]:
        """[[name, [shape...]], ...]: stored with checkpoints to check that a file fits this model."""
        return [[s.name, list(s.shape)] for s in self.specs]


def member_slices(members: int, chunk: int | None) -> list[slice]:
    """The members in consecutive chunks of at most `chunk` (None: all at once). A chunk's rows of ``flat`` are a
    population of their own for one pass, which bounds the working set (docs/architecture.md, section 3)."""
    size = members if not chunk else max(1, int(chunk))
    return [slice(a, min(a + size, members)) for a in range(0, members, size)]


def fast_tanh(x: Tensor) -> Tensor:
    """tanh(x) computed as 2 sigmoid(2x) - 1, the same function.

    Why: PyTorch's CPU tanh costs ~2 ns per float32 element here, sigmoid ~0.2 ns, and tanh was ~18% of a
    training step of the MLP models (BENCHMARKS.md). The absolute difference from torch.tanh is below 2.4e-7.
    Only on a CPU: elsewhere (CUDA) tanh is one kernel and the rewrite would be four.
    """
    if x.device.type != "cpu":
        return torch.tanh(x)
    if torch.is_grad_enabled():
        return _FastTanh.apply(x)
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


class _FastTanh(torch.autograd.Function):
    """fast_tanh with tanh's own one-kernel backward, g * (1 - y^2), instead of the chain rule through 3 ops."""

    generate_vmap_rule = True  # usable under torch.func.vmap (benchmarks/population_bench.py compares it)

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd's signature
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": fast_tanh, "relu": F.relu, "elu": F.elu, "gelu": F.gelu, "softplus": F.softplus}


class MemberLinear:
    """y[m] = x[m] @ W[m] + b[m] for every member m in one ``baddbmm``; x is (M, N, in)."""

    def __init__(self, layout: ParamLayout, name: str, n_in: int, n_out: int):
        self.w = layout.add(f"{name}.weight", (n_in, n_out), n_in)  # stored (in, out): no transpose per call
        self.b = layout.add(f"{name}.bias", (1, n_out), n_in)
        self.n_out = n_out

    def __call__(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.baddbmm(p[self.b], x, p[self.w])


class MemberMLP:
    """`hidden_layers` x (linear, activation) then a linear output: the maps of the MLP models."""

    def __init__(self, layout: ParamLayout, name: str, n_in: int, n_out: int, hidden_units: int,
                 hidden_layers: int, activation: str):
        widths = [n_in] + [hidden_units] * hidden_layers + [n_out]
        self.layers = [MemberLinear(layout, f"{name}.{i}", a, b) for i, (a, b) in enumerate(zip(widths, widths[1:]))]
        self.act = ACTIVATIONS[activation]

    def __call__(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(p, x))
        return self.layers[-1](p, x)


# ----- convolutions: members folded into the channels, one grouped convolution (groups = M) -----------------------
def to_grouped(x: Tensor) -> Tensor:
    """(M, N, C, H, W) -> (N, M*C, H, W): each member's channels form one group."""
    m, n = x.shape[:2]
    return x.transpose(0, 1).reshape(n, m * x.shape[2], *x.shape[3:])


def from_grouped(y: Tensor, m: int) -> Tensor:
    """(N, M*C, H, W) -> (M, N, C, H, W)."""
    n, mc = y.shape[:2]
    return y.view(n, m, mc // m, *y.shape[2:]).transpose(0, 1)


class MemberConv2d:
    """A Conv2d per member as one grouped convolution on (N, M*C, H, W) tensors."""

    def __init__(self, layout: ParamLayout, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: int = 0, transposed: bool = False):
        fan_in = (c_out if transposed else c_in) * kernel * kernel  # as torch's _calculate_fan_in_and_fan_out
        shape = (c_in, c_out, kernel, kernel) if transposed else (c_out, c_in, kernel, kernel)
        self.w = layout.add(f"{name}.weight", shape, fan_in)
        self.b = layout.add(f"{name}.bias", (c_out,), fan_in)
        self.stride, self.padding, self.transposed = stride, padding, transposed

    def __call__(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        w, b = p[self.w], p[self.b]
        m = w.shape[0]
        weight = w.reshape(m * w.shape[1], *w.shape[2:])
        if self.transposed:
            return F.conv_transpose2d(x, weight, b.reshape(-1), self.stride, self.padding, groups=m)
        return F.conv2d(x, weight, b.reshape(-1), self.stride, self.padding, groups=m)


class ConvEncoder:
    """Strided convolutions down to a ~4x4-7x7 map, then a linear head (the map that reads x)."""

    def __init__(self, layout: ParamLayout, image_shape: tuple[int, int, int], n_out: int, channels: int,
                 activation: str):
        c, h, w = image_shape
        self.convs = [MemberConv2d(layout, "encode_x.conv0", c, channels, 3, padding=1)]
        while h > 7:
            self.convs.append(MemberConv2d(layout, f"encode_x.conv{len(self.convs)}", channels, channels, 4, 2, 1))
            h, w = h // 2, w // 2
        self.head = MemberLinear(layout, "encode_x.head", channels * h * w, n_out)
        self.act = ACTIVATIONS[activation]

    def __call__(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        m = x.shape[0]
        y = to_grouped(x)
        for conv in self.convs:
            y = self.act(conv(p, y))
        return self.head(p, from_grouped(y, m).flatten(2))


class ConvDecoder:
    """Linear to a small feature map, transposed convolutions up to the image (the map that writes x)."""

    def __init__(self, layout: ParamLayout, n_in: int, image_shape: tuple[int, int, int], out_channels: int,
                 channels: int, activation: str):
        _, h, w = image_shape
        ups = 0
        while h > 7:
            h, w, ups = h // 2, w // 2, ups + 1
        self.start = (channels, h, w)
        self.fc = MemberLinear(layout, "decode_x.fc", n_in, channels * h * w)
        self.ups = [MemberConv2d(layout, f"decode_x.up{i}", channels, channels, 4, 2, 1, transposed=True)
                    for i in range(ups)]
        self.out = MemberConv2d(layout, "decode_x.out", channels, out_channels, 3, padding=1)
        self.act = ACTIVATIONS[activation]
        self.image_hw = tuple(image_shape[1:])

    def __call__(self, p: dict[str, Tensor], z: Tensor) -> Tensor:
        m, n = z.shape[:2]
        y = to_grouped(self.act(self.fc(p, z)).view(m, n, *self.start))
        for up in self.ups:
            y = self.act(up(p, y))
        y = from_grouped(self.out(p, y), m)
        if tuple(y.shape[-2:]) != self.image_hw:  # odd sizes are cropped (28 -> 7 -> 28 is exact)
            y = y[..., : self.image_hw[0], : self.image_hw[1]]
        return y
