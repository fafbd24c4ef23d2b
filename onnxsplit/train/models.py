"""Torch modules of `onnxsplit train`: f = g - h with g and h monotone networks, and baselines.

A *branch* is an MLP or a small fully convolutional CNN whose affine layers (:class:`Affine`)
take their weight from a parametrisation (:class:`Weight`):

* ``"softplus"``: w = softplus(v) (strictly positive);
* ``"square"``:   w = v ** 2;
* ``"clamp"``:    w = v, projected onto w >= 0 after every optimizer step (:func:`project`);
* ``"free"``:     w = v, unconstrained (the ReLU baseline);
* ``"fixed"``:    a materialised weight (the export copy, see :meth:`Affine.folded`).

Biases have any sign. Hidden affine layers are followed by batch normalisation without scale
(``BatchNorm(affine=False)`` plus a learned shift): it divides by a positive running standard
deviation, so folding it into the layer keeps every weight non-negative. Activations are ReLU
and max pooling (convex, non-decreasing); the residual skip has coefficient 1; global average
pooling and zero padding are linear with non-negative coefficients. With non-negative weights
every output of a branch is therefore monotone non-decreasing and convex in its input.

Models (all take ``[N, C, H, W]`` and return the logits in training):

* :class:`DCNet` (kind ``"dc"``): two non-negative branches g, h on the split input
  (x+, x-) = (relu(x), relu(-x)) stacked on the channel axis; logits = g - h;
* :class:`MonotoneNet` (kind ``"monotone"``): one non-negative branch on (x+, x-), logits = it;
* :class:`PlainNet` (kind ``"relu"``): one unconstrained branch on x (same widths as g).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

PARAMETRISATIONS = ("softplus", "square", "clamp")
WEIGHT_MODES = (*PARAMETRISATIONS, "free", "fixed")
KINDS = ("dc", "relu", "monotone")
ARCHS = ("mlp", "cnn")


class Weight(nn.Module):
    """A weight tensor under one parametrisation (see the module docstring)."""

    def __init__(self, shape: tuple[int, ...], fan_in: int, mode: str):
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"unknown weight parametrisation {mode!r}; choose {WEIGHT_MODES}")
        self.mode = mode
        std = math.sqrt(2.0 / fan_in)
        w = torch.randn(shape) * std
        if mode in PARAMETRISATIONS:
            # half-normal magnitudes: non-negative, with spread (distinct units)
            w = w.abs().clamp_min(1e-3)
        if mode == "softplus":
            v = torch.log(torch.expm1(w))
        elif mode == "square":
            v = w.sqrt()
        else:
            v = w
        self.v = nn.Parameter(v)

    def forward(self) -> torch.Tensor:
        if self.mode == "softplus":
            return F.softplus(self.v)
        if self.mode == "square":
            return self.v * self.v
        return self.v

    @torch.no_grad()
    def project(self) -> None:
        if self.mode == "clamp":
            self.v.clamp_(min=0.0)

    def non_negative(self) -> bool:
        return self.mode in PARAMETRISATIONS


class Affine(nn.Module):
    """Linear (``kernel=None``) or Conv2d (square kernel, stride 1) with a parametrised weight,
    optionally followed by BatchNorm(affine=False) + a learned shift."""

    def __init__(
        self,
        fan_in_channels: int,
        out_channels: int,
        mode: str,
        kernel: int | None = None,
        padding: int = 0,
        norm: bool = False,
    ):
        super().__init__()
        self.kernel, self.padding = kernel, padding
        if kernel is None:
            shape: tuple[int, ...] = (out_channels, fan_in_channels)
            fan_in = fan_in_channels
        else:
            shape = (out_channels, fan_in_channels, kernel, kernel)
            fan_in = fan_in_channels * kernel * kernel
        self.weight = Weight(shape, fan_in, mode)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if norm:
            bn = nn.BatchNorm1d if kernel is None else nn.BatchNorm2d
            self.norm: nn.Module | None = bn(out_channels, affine=False)
        else:
            self.norm = None

    def _apply_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        if self.kernel is None:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if self.norm is None:
            return self._apply_op(x, w, self.bias)
        y = self.norm(self._apply_op(x, w, None))
        shape = (1, -1) if self.kernel is None else (1, -1, 1, 1)
        return y + self.bias.view(shape)

    @torch.no_grad()
    def folded(self) -> Affine:
        """A copy with the weight materialised (mode "fixed") and the norm folded in."""
        w = self.weight().detach().clone()
        b = self.bias.detach().clone()
        if self.norm is not None:
            scale = 1.0 / torch.sqrt(self.norm.running_var + self.norm.eps)
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
            b = b - self.norm.running_mean * scale
        out = copy.copy(self)
        out._parameters, out._modules, out._buffers = {}, {}, {}
        out.weight = Weight(tuple(w.shape), 1, "fixed")
        out.weight.v = nn.Parameter(w)
        out.bias = nn.Parameter(b)
        out.norm = None
        return out


class MLPBranch(nn.Module):
    """Flatten -> [Affine + norm -> ReLU] x len(hidden) -> Affine(classes)."""

    def __init__(self, in_features: int, classes: int, mode: str, hidden=(64, 32)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [Affine(width, h, mode, norm=True), nn.ReLU()]
            width = h
        layers.append(Affine(width, classes, mode))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """relu(conv(relu(conv(a))) + a): the skip has coefficient 1 (non-negative)."""

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.conv1 = Affine(channels, channels, mode, kernel=3, padding=1, norm=True)
        self.conv2 = Affine(channels, channels, mode, kernel=3, padding=1, norm=True)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(a))) + a)


class CNNBranch(nn.Module):
    """Fully convolutional: conv3x3 -> ReLU -> pool 2x2 (max or average) -> residual block ->
    conv3x3 -> ReLU -> global average pool -> linear. Accepts any spatial size >= 2 (trained
    on 8x8 digits, run on 16x16 digit grids)."""

    def __init__(
        self,
        in_channels: int,
        classes: int,
        mode: str,
        channels=(16, 32),
        pool: str = "max",
        global_pool: str = "avg",
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = Affine(in_channels, c1, mode, kernel=3, padding=1, norm=True)
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.block = ResidualBlock(c1, mode)
        self.conv2 = Affine(c1, c2, mode, kernel=3, padding=1, norm=True)
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', got {global_pool!r}")
        self.global_pool = global_pool
        self.fc = Affine(c2, classes, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool(F.relu(self.conv1(x)))
        a = F.relu(self.conv2(self.block(a)))
        if self.global_pool == "max":  # exported as ReduceMax (any spatial size)
            return self.fc(torch.amax(a, dim=(2, 3)))
        return self.fc(torch.mean(a, dim=(2, 3)))  # ReduceMean


def split_input(x: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """(x+, x-) = (relu(x - c), relu(c - x)) stacked on the channel axis (c = ``center``)."""
    if center:
        x = x - center
    return torch.cat([F.relu(x), F.relu(-x)], dim=1)


class DCNet(nn.Module):
    """logits = g(x+, x-) - h(x+, x-), g and h non-negative branches."""

    kind = "dc"

    def __init__(self, g: nn.Module, h: nn.Module, center: float = 0.0):
        super().__init__()
        self.g, self.h = g, h
        self.center = float(center)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = split_input(x, self.center)
        return self.g(s), self.h(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, h = self.branches(x)
        return g - h


class MonotoneNet(nn.Module):
    """logits = m(x+, x-), one non-negative branch."""

    kind = "monotone"

    def __init__(self, net: nn.Module, center: float = 0.0):
        super().__init__()
        self.net = net
        self.center = float(center)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(split_input(x, self.center))


class PlainNet(nn.Module):
    """logits = n(x), one unconstrained branch."""

    kind = "relu"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ExportDC(nn.Module):
    """The export form of a DCNet: outputs (logits, g, h)."""

    def __init__(self, model: DCNet):
        super().__init__()
        self.g, self.h = model.g, model.h
        self.center = model.center

    def forward(self, x: torch.Tensor):
        if self.center:
            x = x - self.center
        x_pos = F.relu(x)
        x_neg = F.relu(-x)
        s = torch.cat([x_pos, x_neg], dim=1)
        g = self.g(s)
        h = self.h(s)
        return g - h, g, h


def build_model(
    arch: str,
    kind: str,
    input_shape: tuple[int, int, int],
    classes: int,
    parametrisation: str = "softplus",
    hidden=(64, 32),
    channels=(16, 32),
    pool: str = "max",
    center: float = 0.0,
    global_pool: str = "avg",
) -> nn.Module:
    """The model of ``kind`` (call ``torch.manual_seed`` first for a seeded init)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose {ARCHS}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose {KINDS}")
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"unknown parametrisation {parametrisation!r}; choose {PARAMETRISATIONS}")
    c, hgt, wid = input_shape
    in_channels = c if kind == "relu" else 2 * c
    mode = "free" if kind == "relu" else parametrisation

    def branch() -> nn.Module:
        if arch == "mlp":
            return MLPBranch(in_channels * hgt * wid, classes, mode, hidden)
        return CNNBranch(in_channels, classes, mode, channels, pool, global_pool)

    if kind == "dc":
        return DCNet(branch(), branch(), center)
    if kind == "monotone":
        return MonotoneNet(branch(), center)
    return PlainNet(branch())


def project(model: nn.Module) -> None:
    """Project every clamp-parametrised weight onto w >= 0 (call after each optimizer step)."""
    for module in model.modules():
        if isinstance(module, Weight):
            module.project()


def materialise(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every Affine folded (plain weights, norms folded in)."""
    model = copy.deepcopy(model).eval()

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, Affine):
                setattr(parent, name, child.folded())
            else:
                replace(child)

    replace(model)
    return model


def export_module(model: nn.Module) -> nn.Module:
    """The module to export: DCNet -> outputs (logits, g, h); others -> logits."""
    folded = materialise(model)
    if isinstance(folded, DCNet):
        return _ExportDC(folded).eval()
    return folded


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
