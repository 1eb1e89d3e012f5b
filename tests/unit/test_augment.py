"""The batched on-device augmentation against torchvision's transforms, with the same offsets."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from lsdc.augment import Augmenter
from lsdc.data import DATASETS


@pytest.mark.parametrize("name", ["cifar10", "digits"])
def test_crop_flip_normalise_equal_torchvision_per_image(name):
    spec = DATASETS[name]
    rng = np.random.default_rng(0)
    b, s, c = 12, spec.size, spec.channels
    x = torch.from_numpy(rng.integers(0, 256, (b, s, s, c), dtype=np.uint8))
    aug = Augmenter(spec, "cpu")
    out = aug.standard(x, torch.Generator().manual_seed(5))
    # the same draws, in the same order, from the same seed: offsets, then flips
    g = torch.Generator().manual_seed(5)
    p = spec.pad
    oy = torch.randint(0, 2 * p + 1, (b, 1), generator=g)
    ox = torch.randint(0, 2 * p + 1, (b, 1), generator=g)
    flips = torch.rand(b, 1, generator=g) < 0.5 if spec.flip else torch.zeros(b, 1, dtype=torch.bool)
    for i in range(b):
        img = x[i].permute(2, 0, 1)                                   # C x H x W uint8, as torchvision takes it
        ref = TF.crop(TF.pad(img, [p], fill=0), int(oy[i]), int(ox[i]), s, s)
        if flips[i]:
            ref = TF.hflip(ref)
        ref = TF.normalize(ref.float() / 255.0, list(spec.mean), list(spec.std))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)
    assert flips.any() or not spec.flip


def test_plain_is_normalisation_only():
    spec = DATASETS["cifar10"]
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    out = Augmenter(spec, "cpu").plain(x)
    ref = torch.stack([TF.normalize(x[i].permute(2, 0, 1).float() / 255.0, list(spec.mean), list(spec.std))
                       for i in range(3)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
