"""The authors' CIFAR train augmentation in plain torch (ARTURO.md, "The paper's experiments"):
RandomCrop(32, padding 4; zeros for CIFAR-10, reflect for CIFAR-100) and RandomHorizontalFlip,
checked against a per-example numpy reference, seeded, shape-preserving; and the training loop
applies it to train minibatches only."""

import numpy as np
import pytest
import torch

from arturo_diag.training.datasets import ArrayDataset
from arturo_diag.training.datasets.cifar import CIFAR_NORMALIZE, CifarAugment, cifar_augment

AUTHORS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)),
}


def _batch(n=16, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(x, name, seed):
    """Per example with numpy: the documented draws (rand(n) < 0.5 flips, then randint(0, 9, (n, 2))
    row/column offsets), np.pad (constant -mean/std, or reflect) and slicing, in the dataset's order."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    flips = (torch.rand(n, generator=g) < 0.5).numpy()
    offsets = torch.randint(0, 9, (n, 2), generator=g).numpy()
    mean, std = AUTHORS[name]
    out = []
    for i, img in enumerate(x.numpy()):

        def crop(a, i=i):
            if name == "cifar10":
                padded = np.stack(
                    [np.pad(a[c], 4, mode="constant", constant_values=-mean[c] / std[c]) for c in range(3)]
                )
            else:
                padded = np.pad(a, ((0, 0), (4, 4), (4, 4)), mode="reflect")
            r, c = offsets[i]
            return padded[:, r : r + 32, c : c + 32]

        def flip(a, i=i):
            return a[:, :, ::-1] if flips[i] else a

        out.append(flip(crop(img)) if name == "cifar10" else crop(flip(img)))
    return np.stack(out)


def test_the_authors_constants():
    assert CIFAR_NORMALIZE == AUTHORS
    assert cifar_augment("cifar10").padding_mode == "zeros" and cifar_augment("cifar100").padding_mode == "reflect"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_augmentation_matches_a_per_example_numpy_reference(name):
    x = _batch()
    out = cifar_augment(name)(x, torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out.numpy(), _reference(x, name, 7))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_augmentation_is_seeded(name):
    x = _batch(32)
    augment = cifar_augment(name)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)  # it does change the batch


def test_zero_padding_is_a_black_pixel_after_normalize():
    # an all-black image normalised is -mean/std everywhere: cropping with zero padding keeps it so
    mean, std = AUTHORS["cifar10"]
    black = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float64).view(1, 3, 1, 1)
    x = black.expand(64, 3, 32, 32).clone()
    out = cifar_augment("cifar10")(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-15)


def test_flip_only_and_crop_statistics():
    x = _batch(2000, seed=1).float()
    flip_only = CifarAugment("zeros", (0.0, 0.0, 0.0), ("crop", "flip"), padding=0)
    out = flip_only(x, torch.Generator().manual_seed(5))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all())  # each example is either flipped or kept
    assert 0.45 < flipped.float().mean().item() < 0.55  # p = 0.5: 2000 draws, sd 0.011


def _tiny_cifar_shaped(transform):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    return ArrayDataset("synthetic", x, y, x[:16].clone(), y[:16].clone(), 10, (3, 32, 32), train_transform=transform)


def test_the_loop_augments_train_minibatches_only(tmp_path):
    from arturo_diag.training.config import RunConfig
    from arturo_diag.training.loop import run

    seen = []

    class Spy:
        def __call__(self, x, generator):
            seen.append(x.shape)
            return cifar_augment("cifar10")(x, generator)

    config = RunConfig(
        model="cifar_cnn", dataset="cifar10", batch_size=16, steps=3, every=1, probe_size=8, out=str(tmp_path / "r")
    )
    run(config, dataset=_tiny_cifar_shaped(Spy()))
    assert seen == [(16, 3, 32, 32)] * 3  # once per training step, never for evaluation or the probe


def test_same_seed_same_augmented_run(tmp_path):
    from arturo_diag.training.config import RunConfig
    from arturo_diag.training.loop import run

    losses = []
    for i in range(2):
        config = RunConfig(
            model="cifar_cnn", dataset="cifar10", batch_size=16, steps=3, reference="none", out=str(tmp_path / f"r{i}")
        )
        run(config, dataset=_tiny_cifar_shaped(cifar_augment("cifar10")))
        losses.append((tmp_path / f"r{i}" / "steps.csv").read_text())
    assert losses[0] == losses[1]
