"""Seeded small problems and the step-by-step comparison driver shared by tests/optim.

Everything is float64. A "case" is a tiny model plus a fixed stream of random minibatches; the
driver computes the minibatch gradient once per step at the optimizer's weights (after checking
they equal the reference's) and feeds that same gradient to ``Arturo`` and to the reference.
"""

from __future__ import annotations

import math

import torch
from arturo_reference import ArturoReference
from torch import nn

RTOL = 1e-10
ATOL = 1e-12
STATE_KEYS = ("step", "mean", "precision", "curvature", "intercept", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")


# ---------------------------------------------------------------- models and data
class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Case:
    """A tiny model with a fixed stream of minibatches (cross-entropy, 3 classes)."""

    def __init__(self, kind: str, seed: int = 0, batch: int = 16):
        torch.manual_seed(seed)
        self.model = (TinyMLP() if kind == "mlp" else TinyCNN()).to(torch.float64)
        self.kind = kind
        self.seed = seed
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed + 1000)

    def minibatch(self):
        shape = (self.batch, 5) if self.kind == "mlp" else (self.batch, 1, 6, 6)
        x = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        y = torch.randint(0, 3, (self.batch,), generator=self.generator)
        return x, y

    def minibatch_at(self, k: int):
        """The k-th minibatch of a stream fixed by the case's seed, independent of call order."""
        gen = torch.Generator().manual_seed(self.seed * 100003 + k)
        shape = (self.batch, 5) if self.kind == "mlp" else (self.batch, 1, 6, 6)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (self.batch,), generator=gen)
        return x, y

    def loss(self, x, y):
        return nn.functional.cross_entropy(self.model(x), y)


def reference_for(opt, *, kl="decoupled", fixed_eta=None, hyper=None):
    """A reference whose groups mirror ``opt``'s: own float64 copies of the weights.

    ``hyper`` is a list (one dict per group) of the hyperparameters the test typed literally;
    the reference never reads the optimizer's hyperparameters.
    """
    groups = []
    for gi, group in enumerate(opt.param_groups):
        ref_group = dict(hyper[gi])
        ref_group["params"] = [p.detach().clone().to(torch.float64) for p in group["params"]]
        groups.append(ref_group)
    return ArturoReference(groups, kl=kl, fixed_eta=fixed_eta)


# ---------------------------------------------------------------- comparison
def _close(got, expected, what):
    # A cheap check first; torch.testing's (slow) comparison only to explain a failure.
    if (
        got.shape == expected.shape
        and got.dtype == expected.dtype
        and bool(((got - expected).abs() <= ATOL + RTOL * expected.abs()).all())
    ):
        return
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def _scalar_close(got, expected, what):
    got, expected = float(got), float(expected)
    assert math.isclose(got, expected, rel_tol=RTOL, abs_tol=ATOL), f"{what}: got {got!r}, expected {expected!r}"


def compare_weights(opt, ref, when):
    for gi, group in enumerate(opt.param_groups):
        for pj, p in enumerate(group["params"]):
            _close(p.detach(), ref.groups[gi]["params"][pj], f"{when} weight [{gi}][{pj}]")


def compare_step(opt, ref, when, *, bracket=True):
    """Compare weights, eta and its bracket, iterations, kl_ratio and all state tensors."""
    compare_weights(opt, ref, when)
    last = opt.last_step
    assert int(last["step"]) == ref.step_count, f"{when} step: got {last['step']}"
    if "numel" in last:
        expected_numel = sum(ref.state[key]["mean"].numel() for key in ref.last_active)
        assert int(last["numel"]) == expected_numel, f"{when} numel: got {last['numel']}"
    _scalar_close(last["eta"], ref.eta, f"{when} eta")
    _scalar_close(opt.eta, ref.eta, f"{when} opt.eta")
    if bracket:
        _scalar_close(last["eta_lo"], ref.eta_lo, f"{when} eta_lo")
        _scalar_close(last["eta_hi"], ref.eta_hi, f"{when} eta_hi")
    assert int(last["iterations"]) == ref.iterations, (
        f"{when} iterations: got {last['iterations']}, expected {ref.iterations}"
    )
    _scalar_close(last["kl_ratio"], ref.kl_ratio, f"{when} kl_ratio")
    _scalar_close(last["kl_bound"], ref.kl_bound, f"{when} kl_bound")
    assert int(last["precision_nonpos"]) == ref.precision_nonpos, (
        f"{when} precision_nonpos: got {last['precision_nonpos']}, expected {ref.precision_nonpos}"
    )
    assert int(last["denominator_nonpos"]) == ref.denominator_nonpos, (
        f"{when} denominator_nonpos: got {last['denominator_nonpos']}, expected {ref.denominator_nonpos}"
    )
    for gi, group in enumerate(opt.param_groups):
        for pj, p in enumerate(group["params"]):
            key = (gi, pj)
            if key not in ref.state:
                assert len(opt.state.get(p, {})) == 0, f"{when} state created for skipped {key}"
                continue
            st = opt.state[p]
            for name in STATE_KEYS:
                assert name in st, f"{when} state key {name!r} missing for [{gi}][{pj}]"
                expected = ref.state[key][name]
                if name == "step":
                    assert float(st[name]) == float(expected), (
                        f"{when} state step [{gi}][{pj}]: got {st[name]}, expected {expected}"
                    )
                else:
                    _close(st[name], expected, f"{when} state {name} [{gi}][{pj}]")


def gradients(opt):
    """The gradients currently on ``opt``'s parameters, cloned, one list per group."""
    return [
        [None if p.grad is None else p.grad.detach().clone() for p in group["params"]] for group in opt.param_groups
    ]


def run_against_reference(case, opt, ref, steps, *, scheduler=None, lr_of_step=None, skip=None, bracket=True):
    """Run ``steps`` steps of ``opt`` and ``ref`` on the same gradients, comparing after each.

    ``lr_of_step(k)`` (k 1-based) gives the list of group lrs the reference uses at step k
    (computed by the test independently of torch's scheduler). ``skip(k)`` returns the set of
    (group, index) whose gradient is withheld at step k.
    """
    compare_weights(opt, ref, "before step 1")
    for k in range(1, steps + 1):
        if lr_of_step is not None:
            lrs = lr_of_step(k)
            for gi, lr in enumerate(lrs):
                ref.groups[gi]["lr"] = lr
                assert math.isclose(float(opt.param_groups[gi]["lr"]), lr, rel_tol=1e-15), (
                    f"scheduler lr at step {k}: {opt.param_groups[gi]['lr']} vs {lr}"
                )
        x, y = case.minibatch()
        opt.zero_grad(set_to_none=True)
        case.loss(x, y).backward()
        if skip is not None:
            for gi, pj in skip(k):
                opt.param_groups[gi]["params"][pj].grad = None
        grads = gradients(opt)
        opt.step()
        ref.step(grads)
        compare_step(opt, ref, f"step {k}", bracket=bracket)
        if scheduler is not None:
            scheduler.step()
