"""Backbones (CIFAR ResNet-18, an MLP for vectors), heads, freezing and strict loading.

Parameter names of :class:`ResNet18` follow the reference code (``conv1``, ``bn1``,
``layer1``..``layer4``), so the authors' RotNet checkpoint loads into it by name.

Macro blocks (Table 3 numbering): ``#0`` = stem + layer1, ``#1`` = layer2, ``#2`` = layer3,
``#3`` = layer4, ``#4`` = the head. "Trainable from #k" freezes blocks ``0..k-1``: ``#3``
(the paper's default) trains layer4 + head, ``#4`` trains the head alone, ``#0`` trains all.
The MLP has blocks ``#0..#2`` (its three layers) and the head is ``#3``.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import HEADS, RegistryError


class CheckpointError(ValueError):
    """A checkpoint that does not match the model; the message names the keys."""


def load_error_reason(e: Exception) -> str:
    """One line out of torch.load's (often long, multi-line) error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    key = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln.split(" ")[:4]), None)
    return f"{type(e).__name__}: {(key or (lines[0] if lines else ''))[:240]}"


#: Environment variable that picks the CPU weight gradient of small-map convolutions:
#: ``gemm`` (default, :class:`Conv2d`) or ``onednn`` (PyTorch's own kernel for every map).
CPU_WGRAD_ENV = "LSDC_CPU_CONV_WGRAD"
CPU_WGRAD_MODES = ("gemm", "onednn")
#: Output maps of at most this many pixels (2x2) take the GEMM weight gradient on CPU.
GEMM_WGRAD_MAX_PIXELS = 4


def cpu_weight_grad_mode() -> str:
    """``gemm`` or ``onednn``, from :data:`CPU_WGRAD_ENV` (read, never set); a one-line error otherwise."""
    mode = os.environ.get(CPU_WGRAD_ENV, "gemm") or "gemm"
    if mode not in CPU_WGRAD_MODES:
        raise ValueError(f"{CPU_WGRAD_ENV}: unknown {mode!r}; allowed: {', '.join(CPU_WGRAD_MODES)}")
    return mode


def _taps(size: int, k: int, stride: int, pad: int, out: int) -> tuple[int, int]:
    """The range [first, last + 1) of kernel taps that meet at least one input pixel (not
    only padding) along a dimension of ``size`` pixels."""
    valid = [u for u in range(k) if any(0 <= i * stride + u - pad < size for i in range(out))]
    return (valid[0], valid[-1] + 1) if valid else (0, 0)


class _GemmWeightGradConv2d(torch.autograd.Function):
    """conv2d (no bias, no groups, no dilation) whose weight gradient is one matrix product of
    the output gradient with the unfolded input. The forward and the input gradient are
    PyTorch's own kernels."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):          # differentiable ops only: a double backward works
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride, padding)
        if ctx.needs_input_grad[1]:
            n, o, ho, wo = grad_out.shape
            kh, kw = weight.shape[2:]
            # taps that only ever meet the zero padding (all but the centre of a 3x3 kernel on a
            # 1x1 map) have a zero gradient: the product runs over the others only
            (u0, u1), (v0, v1) = (_taps(x.shape[2], kh, stride[0], padding[0], ho),
                                  _taps(x.shape[3], kw, stride[1], padding[1], wo))
            if u0 == u1 or v0 == v1:                   # no tap ever meets the map
                return grad_x, weight.new_zeros(weight.shape), None, None
            xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
            # N x C x Ho x Wo x ku x kv (a view); rows (n, i, j), columns (c, u, v) as weight's layout
            cols = xp[:, :, u0:, v0:].unfold(2, u1 - u0, stride[0]).unfold(3, v1 - v0, stride[1])[:, :, :ho, :wo]
            cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
            g = grad_out.permute(1, 0, 2, 3).reshape(o, n * ho * wo).matmul(cols)
            if (u0, u1, v0, v1) == (0, kh, 0, kw):
                grad_w = g.view_as(weight)
            else:
                grad_w = weight.new_zeros(weight.shape)
                grad_w[:, :, u0:u1, v0:v1] = g.view(o, -1, u1 - u0, v1 - v0)
        return grad_x, grad_w, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same parameters and state dict, the same forward, the same gradients up to
    float32 rounding) with a faster weight gradient on CPU for small output maps.

    Why not PyTorch's kernel: on CPU, oneDNN computes the weight gradient of a convolution whose
    output map is 2x2 or 1x1 (layer3 / layer4 of the ResNet on 8x8 digits) with a generic GEMM
    path that ran at 5-10 ms for 64-128 channels at batch 256 on the 2-core VM, 40 % of a digits
    epoch; the same gradient as one matrix product over the unfolded input takes a fraction of
    that. It is the same sum in another order (float32 rounding differs, ~1e-6 relative). Used
    only on CPU, in float32 without autocast, outside ``torch.compile``, for maps of at most
    :data:`GEMM_WGRAD_MAX_PIXELS` output pixels, and unless ``LSDC_CPU_CONV_WGRAD=onednn``
    (lsdc forwards the variable to the Ray workers of its studies). A FLOP counter sees the
    smaller product (taps that meet only padding are skipped), so CPU FLOP counts of a step fall.
    """

    def _gemm_weight_grad(self, x: torch.Tensor) -> bool:
        if not (not torch.compiler.is_compiling() and self.weight.requires_grad and torch.is_grad_enabled()
                and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32 and x.dim() == 4
                and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and not torch.is_autocast_enabled("cpu")):
            return False
        ho = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return ho * wo <= GEMM_WGRAD_MAX_PIXELS and cpu_weight_grad_mode() == "gemm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gemm_weight_grad(x):
            out = _GemmWeightGradConv2d.apply(x, self.weight, self.stride, self.padding)
            return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
        return super().forward(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "free"):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.extra_channels = 0
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "free":   # the reference code: 2x2 average pool, then zero channels
                # ceil_mode: odd maps (MNIST's 7x7 before layer4) pool to the conv's output size;
                # identical to the reference on even sizes
                self.shortcut = nn.AvgPool2d(stride, ceil_mode=True) if stride != 1 else nn.Identity()
                self.extra_channels = planes - in_planes
            else:
                self.shortcut = nn.Sequential(Conv2d(in_planes, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = self.shortcut(x)
        if self.extra_channels:
            sc = F.pad(sc, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(out + sc)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem (stride 1, no max-pool), 4 stages of 2 BasicBlocks.

    ``width`` scales the channels (1.0: 64/128/256/512). Input N x C x H x W; the pooled
    feature is ``feat_dim`` wide (512 * width). Any input size works (adaptive pooling):
    32x32 gives a 4x4 map as in the reference, STL-10's 96x96 a 12x12 map.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, shortcut: str = "free"):
        super().__init__()
        w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        planes = w[0]
        layers = []
        for i, (width_i, stride) in enumerate(zip(w, (1, 2, 2, 2))):
            blocks = [BasicBlock(planes, width_i, stride, shortcut), BasicBlock(width_i, width_i, 1, shortcut)]
            planes = width_i
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feat_dim = w[3]

    def macro_blocks(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1, self.layer1]), self.layer2, self.layer3, self.layer4]

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Apply macro blocks ``start..stop-1`` (pooling after the last one)."""
        if start >= stop:
            return x
        if start == 0:
            x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer2, self.layer3, self.layer4)[max(start, 1) - 1:stop - 1]:
            x = layer(x)
        if stop == 4:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(x, 0, 4)


class MLPBackbone(nn.Module):
    """DEC's encoder for vectors: d-500-500-2000 with ReLU; the 2000-d output is the feature."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (500, 500, 2000)):
        super().__init__()
        dims = (in_dim,) + tuple(hidden)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:]))
        self.feat_dim = dims[-1]

    def macro_blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(x, 0, len(self.layers))


@HEADS.register("linear", label="linear")
def linear_head(feat_dim: int, num_out: int) -> nn.Module:
    """Linear(D, C): the paper's head."""
    return nn.Linear(feat_dim, num_out)


@HEADS.register("mlp", label="non-linear")
def mlp_head(feat_dim: int, num_out: int) -> nn.Module:
    """Linear(D, D) - BatchNorm - ReLU - Linear(D, C): Table 2's non-linear head."""
    return nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU(),
                         nn.Linear(feat_dim, num_out))


def make_head(kind: str, feat_dim: int, num_out: int) -> nn.Module:
    """The registered head ``kind`` (see :data:`lsdc.registry.HEADS`)."""
    try:
        entry = HEADS.get(kind)
    except RegistryError as e:
        raise ValueError(str(e)) from None
    return entry.fn(feat_dim, num_out)


def make_backbone(arch: str, in_channels_or_dim: int, width: float = 1.0, shortcut: str = "free") -> nn.Module:
    if arch == "resnet18":
        return ResNet18(in_channels_or_dim, width, shortcut)
    if arch == "mlp":
        return MLPBackbone(in_channels_or_dim)
    raise ValueError(f"arch: unknown {arch!r}; allowed: resnet18, mlp")


class ClusterNet(nn.Module):
    """Backbone + head with the first ``freeze_from`` macro blocks frozen.

    ``forward(x)`` returns (logits, pooled features). Frozen blocks run under ``no_grad``
    (no activations kept); their BatchNorm layers run in train mode (running statistics
    updated, batch statistics used: the reference code) or eval mode, per ``frozen_bn``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_from: int = 3, frozen_bn: str = "train"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_blocks = len(backbone.macro_blocks())
        if not 0 <= freeze_from <= self.num_blocks:
            raise ValueError(f"freeze_from: must be in 0..{self.num_blocks}, got {freeze_from}")
        self.freeze_from = freeze_from
        self.frozen_bn = frozen_bn
        for block in self.frozen_modules():
            for p in block.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return self.backbone.macro_blocks()[:self.freeze_from]

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "ClusterNet":
        super().train(mode)
        if mode and self.frozen_bn == "eval":
            for block in self.frozen_modules():
                block.eval()
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone.run_blocks(x, 0, self.freeze_from)

    def trainable_forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone.run_blocks(h, self.freeze_from, self.num_blocks)
        return self.head(feats), feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.trainable_forward(self.frozen_features(x))


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load every key or fail, naming the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict)
                    if tuple(own[k].shape) != tuple(state_dict[k].shape))

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {show(shapes)}")
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def build_model(cfg, num_clusters: int | None = None) -> ClusterNet:
    """The clustering network of a :class:`~lsdc.config.TrialConfig` (backbone randomly initialised)."""
    spec = cfg.spec
    backbone = make_backbone(cfg.arch, spec.channels if spec.is_image else spec.size, cfg.width, cfg.shortcut)
    head = make_head(cfg.head, backbone.feat_dim, num_clusters or spec.num_clusters)
    return ClusterNet(backbone, head, cfg.freeze_from, cfg.frozen_bn)
