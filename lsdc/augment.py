"""Batched augmentation on the device that holds the data (GPU or CPU).

Images stay uint8 N x H x W x C on the device; a batch is augmented with one gather
(random crop with zero padding + horizontal flip, as torchvision's ``RandomCrop(pad)`` +
``RandomHorizontalFlip`` on the uint8 image) and normalised in float32. Outputs are
N x C x H x W tensors in channels_last memory layout. Vectors (Reuters-10K) get masking
noise (20 % of the entries zeroed, the corruption of DEC's autoencoder) as augmentation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VECTOR_MASK = 0.2


class Augmenter:
    """Augmentations of one dataset on one device; random draws come from ``gen``."""

    def __init__(self, spec, device: torch.device | str):
        self.spec = spec
        self.device = torch.device(device)
        if spec.is_image:
            shape = (1, spec.channels, 1, 1)
            self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(shape)
            self.inv_std = 1.0 / torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(shape)

    # -- images ------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B x C x H x W) -> float32, (x / 255 - mean) / std."""
        return (x.float().mul_(1.0 / 255.0) - self.mean).mul_(self.inv_std)

    @staticmethod
    def to_nchw(x_nhwc: torch.Tensor) -> torch.Tensor:
        return x_nhwc.permute(0, 3, 1, 2)

    def crop_flip(self, x: torch.Tensor, gen: torch.Generator, pad: int | None = None,
                  flip: bool | None = None) -> torch.Tensor:
        """uint8 B x H x W x C -> uint8 B x C x H x W: random crop after zero padding, random flip."""
        pad = self.spec.pad if pad is None else pad
        flip = self.spec.flip if flip is None else flip
        b, h, w, _ = x.shape
        dev = x.device
        xp = F.pad(x, (0, 0, pad, pad, pad, pad)) if pad else x
        oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen, device=dev)
        rows = oy + torch.arange(h, device=dev)
        cols = ox + torch.arange(w, device=dev)
        if flip:
            flipped = torch.rand(b, 1, generator=gen, device=dev) < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        out = xp[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """No augmentation (evaluation): normalised images, or the vectors as they are."""
        if not self.spec.is_image:
            return x.float()
        return self.normalize(self.to_nchw(x)).contiguous(memory_format=torch.channels_last)

    def standard(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The reference augmentation: random crop (zero padding) + flip; masking noise on vectors."""
        if not self.spec.is_image:
            keep = torch.rand(x.shape, generator=gen, device=x.device) >= VECTOR_MASK
            return x.float() * keep
        return self.normalize(self.crop_flip(x, gen)).contiguous(memory_format=torch.channels_last)

    def strong(self, x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.2, 1.0),
               jitter: float = 0.4, hue: float = 0.1, p_jitter: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
        """SimCLR's augmentation, batched: random resized crop (scale, ratio 3/4..4/3) + flip
        (where the dataset's standard augmentation flips),
        colour jitter (brightness, contrast, saturation, hue; applied with p_jitter, in that
        fixed order; hue rotates the chroma in YIQ space) and grayscale with p_gray."""
        if not self.spec.is_image:
            return self.standard(x, gen)
        b, h, w, c = x.shape
        dev = x.device

        def u(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(b, *shape, generator=gen, device=dev)
        img = self.to_nchw(x).float() / 255.0
        area = u(*scale)
        log_r = u(math.log(3 / 4), math.log(4 / 3))
        cw = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
        ch = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx = (u(0, 1) * (1 - cw) + cw / 2) * 2 - 1
        cy = (u(0, 1) * (1 - ch) + ch / 2) * 2 - 1
        sign = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0) if self.spec.flip \
            else torch.ones(b, device=dev)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = cw * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = ch, cy
        grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        def gray(t):
            if c == 1:
                return t
            return (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])
        on = (torch.rand(b, 1, 1, 1, generator=gen, device=dev) < p_jitter).float()

        def blend(new, old):
            return (on * new + (1 - on) * old).clamp(0, 1)
        img = blend(img * u(1 - jitter, 1 + jitter, 1, 1, 1), img)
        m = gray(img).mean(dim=(1, 2, 3), keepdim=True)
        img = blend((img - m) * u(1 - jitter, 1 + jitter, 1, 1, 1) + m, img)
        if c == 3:
            g = gray(img)
            img = blend((img - g) * u(1 - jitter, 1 + jitter, 1, 1, 1) + g, img)
            yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
            t = torch.einsum("ij,bjhw->bihw", yiq, img)
            ang = u(-hue, hue) * 2 * math.pi
            cos, sin = torch.cos(ang).view(b, 1, 1), torch.sin(ang).view(b, 1, 1)
            i2 = t[:, 1] * cos - t[:, 2] * sin
            q2 = t[:, 1] * sin + t[:, 2] * cos
            rot = torch.stack([t[:, 0], i2, q2], 1)
            img = blend(torch.einsum("ij,bjhw->bihw", torch.linalg.inv(yiq), rot), img)
            to_gray = (torch.rand(b, 1, 1, 1, generator=gen, device=dev) < p_gray).float()
            img = to_gray * gray(img).expand_as(img) + (1 - to_gray) * img
        out = (img - self.mean) * self.inv_std
        return out.contiguous(memory_format=torch.channels_last)
