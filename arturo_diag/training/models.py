"""Models of arturo-diag, in plain torch: an MLP, small CNNs, the paper's CNNs, torchvision-style ResNets,
a small ResNet block model, and a small pre-norm transformer on characters.

Every image model here is built only from Linear/Conv2d/ReLU/pooling/Flatten/Dropout/BatchNorm layers and
residual additions, and carries the class attribute ``arturo_diag_piecewise_linear = True``:

    the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature package's
    fast exact method may use that (BatchNorm only in eval mode).

(For a weight ``w`` of one layer, the logits are an affine function of ``w`` with every other weight
fixed, up to the ReLU/max-pool activation pattern, which is locally constant; so the second
derivative of the logits in ``w`` vanishes and the Hessian diagonal equals the GGN diagonal.)

The transformer (:class:`CharTransformer`, ``transformer``) is not: LayerNorm, GELU, softmax
attention and products of weights make its logits nonlinear in single weights, so its Hessian
diagonal is not its GGN diagonal and it carries no such flag. It reads token ids, not images
(:data:`MODEL_INPUTS`), and runs on the built-in ``chars`` corpus by default (:data:`DEFAULT_DATASETS`).

``build_model(name, in_channels=..., num_classes=..., image_size=...)`` builds one by name from the
``MODELS`` registry and checks it can take a ``(in_channels, image_size, image_size)`` input. For
a token model the dataset's ``in_channels`` is 1 and ``image_size`` the context length ``T``
(:class:`~arturo_diag.training.datasets.ArrayDataset`), and ``num_classes`` the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arturo_diag.errors import ConfigError

__all__ = [
    "MLP",
    "SmallCNN",
    "FashionCNN",
    "CifarCNN",
    "BasicBlock",
    "ResNet",
    "resnet18",
    "resnet34",
    "ResNetBlockNet",
    "CharTransformer",
    "MODELS",
    "MODEL_INPUTS",
    "DEFAULT_DATASETS",
    "model_inputs",
    "build_model",
    "count_parameters",
]


class MLP(nn.Module):
    """A ReLU multilayer perceptron that flattens its input: Linear-ReLU blocks, then a Linear head.

    Args:
        in_features: number of input features after flattening (e.g. ``C * H * W``).
        hidden: widths of the hidden layers (empty for a linear model).
        num_classes: number of output logits.
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    def __init__(self, in_features: int, hidden: Sequence[int] = (64,), num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A tiny CNN for 8x8 images, small enough that an exact diagonal Hessian is cheap.

    conv ``in_channels``->8 (3x3, pad 1) ReLU maxpool2, conv 8->16 (3x3, pad 1) ReLU, adaptive
    max-pool to 2x2, flatten, linear 64->32 ReLU, linear 32->``num_classes``.
    On 1x8x8 digits with 10 classes it has 3,658 parameters. The adaptive pool lets it take any
    ``image_size`` >= 2 (for 8x8 it is an ordinary 2x2 max-pool).
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8):
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FashionCNN(nn.Module):
    """The arTuRO paper's Fashion-MNIST CNN (390,410 parameters with 10 classes), input 1x28x28.

    conv 1->32 (3x3) ReLU maxpool2 dropout0.2, conv 32->64 (3x3) ReLU maxpool2 dropout0.2,
    conv 64->128 (3x3) ReLU dropout0.2, flatten, linear 1152->256 ReLU dropout0.5, linear 256->10.
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    #: the only input shape the fixed 1152-wide linear layer accepts.
    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.2),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Flatten(),
            nn.Linear(1152, 256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CifarCNN(nn.Module):
    """The arTuRO paper's CIFAR CNN (CIFAR-10 and CIFAR-100), input 3x32x32 (ARTURO.md, "Models").

    Four blocks conv (3x3, stride 1, padding 1) ReLU maxpool2 dropout0.2 with channels
    3->32->64->128->256, flatten (2*2*256 = 1024), linear 1024->256 ReLU dropout0.5, linear
    256->``num_classes``: 653,386 parameters with 10 classes, 676,516 with 100.
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    #: the only input shape the fixed 1024-wide linear layer accepts.
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 64), (64, 128), (128, 256)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2)]
        layers += [nn.Flatten(), nn.Linear(2 * 2 * 256, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: conv3x3(stride)-BN-ReLU, conv3x3-BN, plus the identity or
    a 1x1 conv(stride)-BN ``downsample``, then ReLU. Same parameters and names as torchvision's
    (its one ReLU module, applied twice, is two modules here so each module runs once per pass)."""

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """torchvision's ImageNet-style ResNet with basic blocks, as the paper ran it (ARTURO.md:
    "not a CIFAR variant"): 7x7 stride-2 stem conv (``in_channels`` -> 64, padding 3, no bias), BN,
    ReLU, 3x3 stride-2 max-pool, four stages of widths 64, 128, 256, 512 (stages 2-4 halve the
    resolution), global average pooling and a linear head ``fc``. Initialised as torchvision does
    (Kaiming-normal fan-out conv weights, BN weight 1 and bias 0, torch's default Linear).

    Args:
        num_blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: number of output logits.
        in_channels: channels of the input image (1 for Fashion-MNIST: the authors' stem
            ``Conv2d(1, 64, 7, stride 2, padding 3, bias=False)``).
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.flatten(self.avgpool(out)))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """torchvision's ``resnet18`` (blocks 2, 2, 2, 2): 11,181,642 parameters with 10 classes
    (11,689,512 with torchvision's 1000), 11,175,370 with the 1-channel Fashion-MNIST stem."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """torchvision's ``resnet34`` (blocks 3, 4, 6, 3): 21,289,802 parameters with 10 classes,
    21,335,972 with 100 (21,797,672 with torchvision's 1000)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


class ResNetBlockNet(nn.Module):
    """A small ResNet for small images: conv3x3 stem (``in_channels`` -> ``width``, no bias), BN,
    ReLU, a :class:`BasicBlock` ``width -> width``, a :class:`BasicBlock` ``width -> 2 width``
    with stride 2 (its 1x1-conv + BN shortcut), global average pooling and a linear head ``fc``.

    On 1x8x8 digits with 10 classes and ``width=8``: 5,122 parameters (stem 72 + BN 16, first
    block 2 x 576 + 2 x 16, second block 1,152 + 32 + 2,304 + 32 + shortcut 128 + 32, head 170).
    With BatchNorm in train mode (``--reference-mode train``) the batch statistics couple the
    samples and the Hessian diagonal is no longer the GGN diagonal; in eval mode it is.
    """

    #: the network is linear in each single weight, so diag(H) = diag(GGN) — the curvature
    #: package's fast exact method may use that (BatchNorm only in eval mode).
    arturo_diag_piecewise_linear = True

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.flatten(self.avgpool(out)))


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention in plain torch (one ``qkv`` Linear, softmax of masked
    scaled dot products, an output Linear ``proj``), so torch.func's vmap/jvp/grad trace it."""

    def __init__(self, dim: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (N, H, T, d/H)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))  # position i sees positions <= i
        out = torch.softmax(scores, dim=-1) @ v  # (N, H, T, d/H)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class _PreNormBlock(nn.Module):
    """``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP ``dim -> hidden -> dim``."""

    def __init__(self, dim: int, heads: int, hidden: int, context: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, heads, context)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class CharTransformer(nn.Module):
    """A small pre-norm transformer that predicts the character after a context window.

    Token embedding (``vocab`` x ``dim``) plus a learned positional embedding (``context`` x
    ``dim``), ``blocks`` pre-norm blocks (causal ``heads``-head self-attention and a GELU MLP of
    width ``hidden``, each as a residual ``x + f(LN(x))``), a final LayerNorm and a linear head.
    Input: int64 token ids ``(N, T)``, ``T <= context``; output: the logits ``(N, vocab)`` of the
    next token after the window (the last position's), so ``F.cross_entropy(model(x), y)`` with
    ``y`` of shape ``(N,)`` trains it. :meth:`all_logits` gives every position's ``(N, T, vocab)``.

    Parameters: ``vocab*dim + context*dim + blocks*(4*dim + 3*dim*dim + 3*dim + dim*dim + dim +
    2*dim*hidden + hidden + dim) + 2*dim + dim*vocab + vocab``; with the defaults (context 32,
    dim 32, 2 heads, 2 blocks, hidden 64) that is ``18,176 + 65*vocab`` (20,061 on the 29
    characters of the ``chars`` corpus). Attention is plain torch (no ``nn.MultiheadAttention``),
    so ``torch.func`` traces it.
    """

    def __init__(self, vocab: int, context: int = 32, dim: int = 32, heads: int = 2, blocks: int = 2, hidden: int = 64):
        super().__init__()
        if dim % heads:
            raise ConfigError("model", "transformer", f"dim divisible by heads (got dim {dim}, heads {heads})")
        self.context = context
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.empty(context, dim))
        self.blocks = nn.ModuleList(_PreNormBlock(dim, heads, hidden, context) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream after the blocks and the final LayerNorm, ``(N, T, dim)``."""
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:t]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def all_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position, ``(N, T, vocab)``; position ``i`` sees tokens ``<= i``."""
        return self.head(self.features(tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens)[:, -1])


def _build_mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MLP(in_channels * image_size * image_size, (64,), num_classes)


def _build_small_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if image_size < 2:
        raise ConfigError("model", "small_cnn", f"an input of at least 2x2 pixels (got {image_size}x{image_size})")
    return SmallCNN(in_channels, num_classes, image_size)


def _build_fashion_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if (in_channels, image_size) != (1, 28):
        raise ConfigError(
            "model",
            "fashion_cnn",
            "a dataset with 1x28x28 inputs such as fashion_mnist "
            f"(this dataset's inputs are {in_channels}x{image_size}x{image_size})",
        )
    return FashionCNN(num_classes)


def _build_cifar_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if (in_channels, image_size) != (3, 32):
        raise ConfigError(
            "model",
            "cifar_cnn",
            "a dataset with 3x32x32 inputs such as cifar10 or cifar100 "
            f"(this dataset's inputs are {in_channels}x{image_size}x{image_size})",
        )
    return CifarCNN(num_classes)


def _build_resnet(factory: Callable[..., ResNet], name: str):
    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        # The stem and max-pool divide the side by 4 and stage 2 halves it: below 8x8 stages 2-4
        # would all see a single pixel.
        if image_size < 8:
            raise ConfigError("model", name, f"an input of at least 8x8 pixels (got {image_size}x{image_size})")
        return factory(num_classes=num_classes, in_channels=in_channels)

    return build


def _build_resnet_block(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNetBlockNet(in_channels, num_classes)


def _build_transformer(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    # a token dataset: one "channel", image_size = the context length T, num_classes = the vocabulary
    if in_channels != 1:
        raise ConfigError("model", "transformer", f"token ids (N, T) (got inputs with {in_channels} channels)")
    return CharTransformer(vocab=num_classes, context=image_size)


#: Model name -> builder ``(in_channels, num_classes, image_size) -> nn.Module``.
MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mlp": _build_mlp,
    "small_cnn": _build_small_cnn,
    "fashion_cnn": _build_fashion_cnn,
    "cifar_cnn": _build_cifar_cnn,
    "resnet18": _build_resnet(resnet18, "resnet18"),
    "resnet34": _build_resnet(resnet34, "resnet34"),
    "resnet_block": _build_resnet_block,
    "transformer": _build_transformer,
}

#: What a model reads where it is not an image (float ``(N, C, H, W)``): ``"tokens"``, int64 ids ``(N, T)``.
MODEL_INPUTS: dict[str, str] = {"transformer": "tokens"}

#: The dataset of each kind of input that a run takes when its config names a dataset of the other
#: kind only by default (``--model transformer`` alone runs on ``chars``).
DEFAULT_DATASETS: dict[str, str] = {"image": "digits", "tokens": "chars"}


def model_inputs(name: str) -> str:
    """``"tokens"`` or ``"image"``: what the model registered as ``name`` reads."""
    return MODEL_INPUTS.get(name, "image")


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the model registered as ``name`` for square ``in_channels x image_size x image_size``
    inputs and ``num_classes`` outputs.

    Raises:
        ConfigError: ``model`` if the name is unknown or the model cannot take that input shape.
    """
    if name not in MODELS:
        raise ConfigError("model", name, "one of " + ", ".join(sorted(MODELS)))
    if in_channels < 1 or num_classes < 1 or image_size < 1:
        raise ConfigError(
            "model",
            name,
            f"positive in_channels, num_classes and image_size (got {in_channels}, {num_classes}, {image_size})",
        )
    return MODELS[name](in_channels, num_classes, image_size)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
