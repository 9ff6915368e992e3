"""Models: parameter counts, output shapes, registry errors, the piecewise-linear flag."""

import pytest
import torch
from torch import nn

from arturo_diag.errors import ConfigError
from arturo_diag.training.models import (
    MLP,
    MODELS,
    CifarCNN,
    FashionCNN,
    SmallCNN,
    build_model,
    count_parameters,
    model_inputs,
    resnet18,
    resnet34,
)

# (in_channels, image_size, num_classes) of each dataset
DIGITS = (1, 8, 10)
FASHION = (1, 28, 10)
CIFAR10 = (3, 32, 10)
CIFAR100 = (3, 32, 100)
# the image models (the transformer reads tokens and is not piecewise linear: tests/training/test_transformer_models.py)
IMAGE_MODELS = sorted(name for name in MODELS if model_inputs(name) == "image")


def test_fashion_cnn_has_the_papers_390410_parameters():
    assert count_parameters(FashionCNN()) == 390_410
    assert count_parameters(FashionCNN(num_classes=10)) == 390_410


def test_fashion_cnn_module_names_are_stable():
    names = [n for n, _ in FashionCNN().named_parameters()]
    assert names == [f"net.{i}.{k}" for i in (0, 4, 8, 12, 15) for k in ("weight", "bias")]


def _conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def _torchvision_resnet_count(blocks, num_classes, in_channels=3):
    """Straight-line count of torchvision's basic-block ResNet: stem, stages, fc (BN: 2 per channel)."""
    total = _conv(in_channels, 64, 7, bias=False) + 2 * 64
    c_in = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            total += _conv(c_in, width, 3, False) + 2 * width + _conv(width, width, 3, False) + 2 * width
            if b == 0 and (stage > 0 or c_in != width):
                total += _conv(c_in, width, 1, False) + 2 * width  # downsample
            c_in = width
    return total + 512 * num_classes + num_classes


def test_resnets_have_torchvisions_published_parameter_counts():
    # torchvision's documented counts for the ImageNet models (1000 classes, 3 channels)
    assert count_parameters(resnet18(num_classes=1000)) == 11_689_512
    assert count_parameters(resnet34(num_classes=1000)) == 21_797_672
    assert _torchvision_resnet_count((2, 2, 2, 2), 1000) == 11_689_512  # the straight-line count agrees
    assert _torchvision_resnet_count((3, 4, 6, 3), 1000) == 21_797_672


@pytest.mark.parametrize(
    "factory,blocks,num_classes,in_channels",
    [
        (resnet18, (2, 2, 2, 2), 10, 1),
        (resnet18, (2, 2, 2, 2), 10, 3),
        (resnet34, (3, 4, 6, 3), 10, 3),
        (resnet34, (3, 4, 6, 3), 100, 3),
    ],
)
def test_resnet_parameter_counts_of_the_papers_setups(factory, blocks, num_classes, in_channels):
    model = factory(num_classes=num_classes, in_channels=in_channels)
    assert count_parameters(model) == _torchvision_resnet_count(blocks, num_classes, in_channels)
    assert count_parameters(resnet18(num_classes=10)) == 11_181_642
    assert count_parameters(resnet18(num_classes=10, in_channels=1)) == 11_175_370  # Fashion-MNIST stem


def test_resnet_is_imagenet_style_with_torchvisions_names():
    model = resnet18(num_classes=10, in_channels=1)
    assert tuple(model.conv1.weight.shape) == (64, 1, 7, 7) and model.conv1.bias is None
    assert model.conv1.stride == (2, 2) and model.conv1.padding == (3, 3)
    assert (model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding) == (3, 2, 1)
    names = {n for n, _ in model.named_parameters()}
    assert {
        "conv1.weight",
        "bn1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "fc.weight",
    } <= names
    assert not any("downsample" in n for n in names if n.startswith("layer1."))
    # 28x28 -> stem 14 -> max-pool 7 -> stages 7, 4, 2, 1
    model.eval()
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(torch.zeros(1, 1, 28, 28)))))
        assert tuple(x.shape) == (1, 64, 7, 7)
        sides = []
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = stage(x)
            sides.append(x.shape[-1])
    assert sides == [7, 4, 2, 1]


def test_cifar_cnn_parameter_count_and_layout():
    expected = _conv(3, 32, 3) + _conv(32, 64, 3) + _conv(64, 128, 3) + _conv(128, 256, 3)
    expected += 1024 * 256 + 256
    assert count_parameters(CifarCNN(num_classes=10)) == expected + 256 * 10 + 10 == 653_386
    assert count_parameters(CifarCNN(num_classes=100)) == expected + 256 * 100 + 100 == 676_516
    model = CifarCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (a, b, (3, 3), (1, 1), (1, 1)) for a, b in ((3, 32), (32, 64), (64, 128), (128, 256))
    ]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.2, 0.2, 0.2, 0.5]


@pytest.mark.parametrize("shape", [DIGITS, FASHION, (3, 28, 10)])
def test_cifar_cnn_rejects_other_input_shapes(shape):
    with pytest.raises(ConfigError, match="3x32x32"):
        build_model("cifar_cnn", in_channels=shape[0], num_classes=shape[2], image_size=shape[1])


def test_small_cnn_is_small():
    assert count_parameters(SmallCNN()) == 3_658
    assert 2_000 <= count_parameters(build_model("small_cnn", in_channels=1, num_classes=10, image_size=8)) <= 6_000


def test_mlp_flattens_and_has_the_given_widths():
    model = MLP(64, hidden=(16, 8), num_classes=3)
    assert count_parameters(model) == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 3)
    assert MLP(64, hidden=(), num_classes=10)(torch.zeros(2, 64)).shape == (2, 10)


SHAPES = [
    ("mlp", DIGITS),
    ("mlp", FASHION),
    ("mlp", CIFAR10),
    ("mlp", CIFAR100),
    ("small_cnn", DIGITS),
    ("small_cnn", FASHION),
    ("small_cnn", CIFAR10),
    ("small_cnn", CIFAR100),
    ("fashion_cnn", FASHION),
    ("cifar_cnn", CIFAR10),
    ("cifar_cnn", CIFAR100),
    ("resnet18", DIGITS),
    ("resnet18", FASHION),
    ("resnet18", CIFAR10),
    ("resnet18", CIFAR100),
    ("resnet34", DIGITS),  # its CIFAR shape is covered by resnet18's: same stem, stages and head
]


@pytest.mark.parametrize("name,shape", SHAPES, ids=[f"{n}-{s[0]}x{s[1]}-{s[2]}" for n, s in SHAPES])
def test_output_shape(name, shape):
    in_channels, image_size, num_classes = shape
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_model_is_flagged_piecewise_linear(name):
    shape = FASHION if name == "fashion_cnn" else CIFAR10 if name == "cifar_cnn" else DIGITS
    model = build_model(name, in_channels=shape[0], num_classes=shape[2], image_size=shape[1])
    assert type(model).arturo_diag_piecewise_linear is True
    allowed = (
        nn.Linear,
        nn.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.AdaptiveMaxPool2d,
        nn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Dropout,
        nn.BatchNorm2d,
        nn.Sequential,
    )
    for module in model.modules():
        if module is model or getattr(module, "arturo_diag_piecewise_linear", False):
            continue
        assert isinstance(module, allowed), type(module)


def test_small_cnn_diag_hessian_equals_diag_ggn_in_float64():
    """The flag's claim, brute force: for a piecewise-linear net, d2(loss)/dw_i^2 = GGN_ii."""
    torch.manual_seed(0)
    model = SmallCNN().double()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 5, 9, 1, 1])
    params = {k: v.detach() for k, v in model.named_parameters()}
    positive = 0
    for name in ("net.0.weight", "net.0.bias", "net.3.weight", "net.7.weight", "net.9.weight"):
        for i in (0, params[name].numel() - 1):
            direction = torch.zeros_like(params[name]).flatten()
            direction[i] = 1.0

            def logits_of(t, name=name, direction=direction):
                p = {**params, name: params[name] + t * direction.view_as(params[name])}
                return torch.func.functional_call(model, p, (x,))

            def loss_of(t, logits_of=logits_of):
                return nn.functional.cross_entropy(logits_of(t), y)

            t0 = torch.zeros((), dtype=torch.float64)
            hessian_ii = torch.func.grad(torch.func.grad(loss_of))(t0)
            jac = torch.func.jacrev(logits_of)(t0)  # d logits / d w_i: (N, K)
            probs = logits_of(t0).softmax(-1)
            ggn_ii = ((probs * jac**2).sum(-1) - (probs * jac).sum(-1) ** 2).mean()
            torch.testing.assert_close(hessian_ii, ggn_ii, rtol=1e-10, atol=1e-14)
            positive += int(ggn_ii > 1e-8)
    assert positive >= 7  # not vacuous: most coordinates have curvature (a few hit dead units)


def test_unknown_model_raises_config_error():
    with pytest.raises(ConfigError) as info:
        build_model("vgg", in_channels=1, num_classes=10, image_size=8)
    assert info.value.field == "model"
    assert info.value.value == "vgg"
    for name in MODELS:
        assert name in info.value.allowed


@pytest.mark.parametrize("shape", [DIGITS, CIFAR10, (3, 28, 10)])
def test_fashion_cnn_rejects_other_input_shapes(shape):
    with pytest.raises(ConfigError) as info:
        build_model("fashion_cnn", in_channels=shape[0], num_classes=shape[2], image_size=shape[1])
    assert info.value.field == "model"
    assert "1x28x28" in str(info.value)


def test_resnet_rejects_tiny_inputs():
    with pytest.raises(ConfigError, match="model"):
        build_model("resnet18", in_channels=1, num_classes=10, image_size=4)


def test_nonpositive_sizes_are_rejected():
    with pytest.raises(ConfigError, match="model"):
        build_model("mlp", in_channels=1, num_classes=0, image_size=8)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_curvature_package_accepts_every_model_as_ggn_exact(name):
    from arturo_diag.curvature.exact import check_ggn_exact

    shape = FASHION if name == "fashion_cnn" else CIFAR10 if name.startswith(("resnet", "cifar")) else DIGITS
    model = build_model(name, in_channels=shape[0], num_classes=shape[2], image_size=shape[1])
    assert check_ggn_exact(model, nn.functional.cross_entropy) == "cross_entropy"
