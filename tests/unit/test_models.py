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


# --- lsdc.models.Conv2d: the CPU weight gradient of small maps as one matrix product -------------

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _slow_conv_weight_grad(x, grad_out, k, stride, pad):
    """The weight gradient by its definition: a loop over taps, output pixels and samples."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(stride), _pair(pad)
    n, c, h, w = x.shape
    _, o, ho, wo = grad_out.shape
    gw = torch.zeros(o, c, kh, kw, dtype=torch.float64)
    for u in range(kh):
        for v in range(kw):
            for i in range(ho):
                for j in range(wo):
                    r, s = i * sh + u - ph, j * sw + v - pw
                    if 0 <= r < h and 0 <= s < w:
                        gw[:, :, u, v] += grad_out[:, :, i, j].double().t() @ x[:, :, r, s].double()
    return gw


@pytest.mark.parametrize("c,o,hw,k,stride,pad,channels_last", [
    (128, 128, (1, 1), 3, 1, 1, False),   # layer4 on 8x8 digits: only the centre tap meets the map
    (64, 64, (2, 2), 3, 1, 1, False),     # layer3 on digits
    (64, 128, (2, 2), 3, 2, 1, False),    # layer4's downsampling conv: 2x2 -> 1x1
    (32, 64, (3, 3), 1, 2, 0, False),     # a 1x1 shortcut conv, odd map
    (8, 8, (2, 2), 5, 1, 2, True),
    (4, 5, (3, 2), (3, 2), (2, 1), (1, 0), False),   # every pair asymmetric: rows and columns apart
    (4, 5, (1, 4), (5, 1), (2, 3), (3, 0), True),
    (4, 5, (1, 1), 5, 2, 3, False),       # stride 2, first tap meeting the map is not the first
    (4, 5, (1, 1), 1, 2, 1, False)])      # no tap ever meets the map: a zero gradient
def test_conv2d_gemm_weight_grad_matches_definition_and_pytorch(monkeypatch, c, o, hw, k, stride, pad, channels_last):
    monkeypatch.delenv("LSDC_CPU_CONV_WGRAD", raising=False)
    from lsdc.models import Conv2d
    torch.manual_seed(0)
    conv = Conv2d(c, o, k, stride, pad, bias=False)
    ref = torch.nn.Conv2d(c, o, k, stride, pad, bias=False)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(16, c, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = conv(x), ref(x_ref)
    assert type(y.grad_fn).__name__.startswith("_GemmWeightGradConv2d")   # the GEMM path ran
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)                   # the forward is PyTorch's
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    slow = _slow_conv_weight_grad(x.detach(), g, k, stride, pad)
    torch.testing.assert_close(conv.weight.grad.double(), slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_conv2d_gemm_weight_grad_double_backward():
    from lsdc.models import _GemmWeightGradConv2d
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: _GemmWeightGradConv2d.apply(x, w, (1, 1), (1, 1))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_conv2d_gemm_path_only_where_it_is_meant(monkeypatch):
    monkeypatch.delenv("LSDC_CPU_CONV_WGRAD", raising=False)
    from lsdc.models import Conv2d
    conv = Conv2d(8, 8, 3, 1, 1, bias=False)
    small, large = torch.randn(4, 8, 2, 2), torch.randn(4, 8, 3, 3)
    name = lambda y: type(y.grad_fn).__name__ if y.grad_fn is not None else None  # noqa: E731
    gemm = lambda y: name(y) is not None and name(y).startswith("_Gemm")  # noqa: E731
    assert gemm(conv(small))
    assert not gemm(conv(large))                                           # a 3x3 output map: 9 > 4 pixels
    with torch.no_grad():
        assert name(conv(small)) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gemm(conv(small))
    assert not gemm(conv.double()(small.double()))
    conv.float()
    # each condition apart, on a 2x2 output map
    assert not gemm(Conv2d(8, 8, 3, 1, 1, groups=2, bias=False)(small))
    assert not gemm(Conv2d(8, 8, 3, 1, 2, dilation=2, bias=False)(small))
    assert not gemm(Conv2d(8, 8, 3, 1, "same", bias=False)(small))
    assert not gemm(Conv2d(8, 8, 3, 1, 1, padding_mode="reflect", bias=False)(small))
    conv.weight.requires_grad_(False)                                      # a frozen block
    assert not gemm(conv(small.requires_grad_()))
    conv.weight.requires_grad_(True)
    monkeypatch.setenv("LSDC_CPU_CONV_WGRAD", "onednn")
    assert not gemm(conv(small))
    monkeypatch.setenv("LSDC_CPU_CONV_WGRAD", "fast")
    with pytest.raises(ValueError, match=r"^LSDC_CPU_CONV_WGRAD: unknown 'fast'; allowed: gemm, onednn$"):
        conv(small)


def test_conv2d_keeps_nn_conv2d_state_dict_and_bias(monkeypatch):
    monkeypatch.delenv("LSDC_CPU_CONV_WGRAD", raising=False)
    from lsdc.models import Conv2d
    conv = Conv2d(4, 6, 3, 1, 1, bias=True)
    ref = torch.nn.Conv2d(4, 6, 3, 1, 1, bias=True)
    ref.load_state_dict(conv.state_dict())
    assert isinstance(conv, torch.nn.Conv2d)
    x = torch.randn(3, 4, 2, 2)
    y, y_ref = conv(x), ref(x)
    assert type(y.grad_fn).__name__ != type(y_ref.grad_fn).__name__        # the GEMM path ran
    torch.testing.assert_close(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
