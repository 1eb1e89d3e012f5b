import pytest
import torch

from lsdc.models import (CheckpointError, ClusterNet, MLPBackbone, ResNet18, build_model, load_strict,
                         make_head)
from conftest import tiny


def test_resnet18_shapes_and_parameter_free_shortcut():
    net = ResNet18(3, 1.0)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 512)
    # stem 3x3 stride 1, no max-pool: layer1 keeps 32x32
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert not any("shortcut" in k for k in net.state_dict())  # reference: no shortcut parameters
    n_params = sum(p.numel() for p in net.parameters())
    assert 10.9e6 < n_params < 11.2e6                         # ResNet-18 without 1x1 shortcut convs
    conv = ResNet18(3, 1.0, shortcut="conv")
    assert any("shortcut" in k for k in conv.state_dict())


def test_width_multiplier_and_grayscale():
    net = ResNet18(1, 0.125)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 64)
    assert ResNet18(3, 1.0)(torch.randn(1, 3, 96, 96)).shape == (1, 512)  # STL-10: adaptive pooling


def test_reference_state_dict_names():
    keys = ResNet18(3).state_dict().keys()
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight"):
        assert k in keys


@pytest.mark.parametrize("k,trainable", [(0, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "head"}),
                                         (2, {"layer3", "layer4", "head"}),
                                         (3, {"layer4", "head"}), (4, {"head"})])
def test_freeze_from_block_k(k, trainable):
    net = ClusterNet(ResNet18(3, 0.25), make_head("linear", 128, 10), freeze_from=k)
    names = {n.split(".")[1] if n.startswith("backbone.") else n.split(".")[0]
             for n, p in net.named_parameters() if p.requires_grad}
    assert names == trainable
    logits, feats = net(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10) and feats.shape == (4, 128)
    assert logits.requires_grad


def test_frozen_blocks_keep_no_graph():
    net = ClusterNet(ResNet18(3, 0.25), make_head("linear", 128, 10), freeze_from=3)
    h = net.frozen_features(torch.randn(2, 3, 32, 32))
    assert not h.requires_grad and h.grad_fn is None


@pytest.mark.parametrize("mode,updates", [("train", True), ("eval", False)])
def test_frozen_batchnorm_switch(mode, updates):
    net = ClusterNet(ResNet18(3, 0.25), make_head("linear", 128, 10), freeze_from=3, frozen_bn=mode)
    net.train()
    before = net.backbone.bn1.running_mean.clone()
    trainable_before = net.backbone.layer4[0].bn1.running_mean.clone()
    net(torch.randn(8, 3, 32, 32) + 3)
    assert (not torch.equal(before, net.backbone.bn1.running_mean)) == updates
    assert not torch.equal(trainable_before, net.backbone.layer4[0].bn1.running_mean)


def test_mlp_backbone_and_heads():
    mlp = MLPBackbone(2000)
    assert mlp(torch.randn(3, 2000)).shape == (3, 2000)
    net = ClusterNet(mlp, make_head("mlp", 2000, 4), freeze_from=1)
    assert net(torch.randn(5, 2000))[0].shape == (5, 4)
    assert not any(p.requires_grad for p in mlp.layers[0].parameters())
    assert all(p.requires_grad for p in mlp.layers[1].parameters())
    with pytest.raises(ValueError, match="freeze_from"):
        ClusterNet(MLPBackbone(10), make_head("linear", 2000, 4), freeze_from=4)


def test_strict_loading_names_missing_and_unexpected_keys():
    net = ResNet18(3, 0.25)
    sd = net.state_dict()
    load_strict(ResNet18(3, 0.25), sd)                    # matching: fine
    bad = dict(sd)
    bad.pop("layer4.1.bn2.weight")
    bad["linear.weight"] = torch.zeros(4, 128)
    with pytest.raises(CheckpointError, match=r"missing keys: layer4\.1\.bn2\.weight.*unexpected keys: linear\.weight"):
        load_strict(ResNet18(3, 0.25), bad)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_strict(ResNet18(3, 0.5), sd)


def test_build_model_from_config():
    model = build_model(tiny(head="mlp", freeze_from=4))
    assert isinstance(model.head, torch.nn.Sequential)
    assert [p.requires_grad for p in model.backbone.parameters()] == [False] * len(list(model.backbone.parameters()))
