"""Tiny float64 models beyond Sequential stacks, and dense references for their Hessian and GGN.

The references never go through arturo_diag: parameters are flattened here, the model is run with
torch.func.functional_call on a private copy (train mode without running-statistics updates, or
eval mode), the Hessian diagonal comes from a dense torch.autograd.functional.hessian and the GGN
diagonal from a dense J^T H_out J, J = torch.func.jacrev of the whole batch's outputs in the
flattened parameters (so rows coupled by batch norm are coupled here too) and H_out the dense
autograd Hessian of the loss in the outputs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

DTYPE = torch.float64


# --- references ---------------------------------------------------------------------------


def _runner(model: nn.Module, train: bool):
    twin = copy.deepcopy(model)
    twin.train(train)
    if train:
        for m in twin.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False  # batch statistics, buffers never written
    named = [(n, p) for n, p in twin.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    sizes = [p.numel() for _, p in named]

    def outputs_of(vector, inputs):
        state = {n: part.view_as(p) for (n, p), part in zip(named, vector.split(sizes))}
        return functional_call(twin, state, (inputs,))

    def split(vector):
        return {n: part.view_as(p) for (n, p), part in zip(named, vector.split(sizes))}

    return flat, outputs_of, split


def dense_hessian_diagonal(model, loss_fn, inputs, targets, train=False):
    flat, outputs_of, split = _runner(model, train)
    hessian = torch.autograd.functional.hessian(lambda v: loss_fn(outputs_of(v, inputs), targets), flat)
    return split(hessian.diagonal().clone())


def dense_matrices(model, loss_fn, inputs, targets, train=False):
    """(H, G) as dense P x P matrices, and ``split``."""
    flat, outputs_of, split = _runner(model, train)
    hessian = torch.autograd.functional.hessian(lambda v: loss_fn(outputs_of(v, inputs), targets), flat)
    outputs = outputs_of(flat, inputs).detach()
    jac = jacrev(lambda v: outputs_of(v, inputs))(flat).reshape(outputs.numel(), -1)
    h_out = torch.autograd.functional.hessian(lambda f: loss_fn(f.view(outputs.shape), targets), outputs.reshape(-1))
    return hessian, jac.T @ h_out @ jac, split


def dense_ggn_diagonal(model, loss_fn, inputs, targets, train=False):
    flat, outputs_of, split = _runner(model, train)
    outputs = outputs_of(flat, inputs).detach()
    jac = jacrev(lambda v: outputs_of(v, inputs))(flat).reshape(outputs.numel(), -1)
    h_out = torch.autograd.functional.hessian(lambda f: loss_fn(f.view(outputs.shape), targets), outputs.reshape(-1))
    return split(torch.einsum("ip,ij,jp->p", jac, h_out, jac))


def assert_close_diagonal(got, expected, atol=1e-10, rtol=1e-10):
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=rtol, msg=name)


# --- models -------------------------------------------------------------------------------


class ResidualBNBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a 1x1-conv shortcut, ReLU, average pool, linear head.

    Piecewise linear in each weight in eval mode (running statistics), hence the opt-in; in train
    mode batch norm's batch statistics couple the rows and make it nonlinear."""

    arturo_diag_piecewise_linear = True

    def __init__(self, channels=2, width=3, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = nn.Conv2d(channels, width, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(width, classes)
        self.to(DTYPE)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.head(self.flatten(self.pool(self.relu(out + self.shortcut(x)))))


class CatBranches(nn.Module):
    """Two branches (tanh and ReLU) joined by torch.cat, then a linear head."""

    def __init__(self, features=4, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.left = nn.Linear(features, 3)
        self.right = nn.Linear(features, 2)
        self.head = nn.Linear(5, classes)
        self.to(DTYPE)

    def forward(self, x):
        return self.head(torch.cat([torch.tanh(self.left(x)), torch.relu(self.right(x))], dim=1))


def layer_norm_net(seed=0, classes=3):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.GELU(), nn.Linear(5, classes)).to(DTYPE)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.3, 0.3)
    return net


class TinyTransformer(nn.Module):
    """A pre-norm transformer block on token ids: embedding + learned positions, causal
    single-head attention and a GELU MLP, each with a residual, a final LayerNorm and a head.

    Outputs next-token logits as (N, V, T) (torch's class-dimension-1 layout for cross-entropy), or
    (N, T, V) with ``classes_last=True``."""

    def __init__(self, vocab=7, dim=4, length=5, hidden=8, seed=0, classes_last=False):
        super().__init__()
        torch.manual_seed(seed)
        self.classes_last = classes_last
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.1 * torch.randn(length, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", torch.ones(length, length).tril().bool())
        self.to(DTYPE)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:t]
        a = self.norm1(h)
        q, k, v = self.query(a), self.key(a), self.value(a)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        h = h + self.proj(torch.softmax(scores, dim=-1) @ v)
        h = h + self.fc2(F.gelu(self.fc1(self.norm2(h))))
        logits = self.head(self.norm_out(h))
        return logits if self.classes_last else logits.transpose(1, 2)


def tokens(n=4, length=5, vocab=7, seed=1):
    """Token ids (N, T) and their next tokens (N, T) from a sequence of length T + 1."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (n, length + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def token_cross_entropy(logits, targets):
    """Mean cross-entropy over every position of (N, T, V) logits."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def token_cross_entropy_hessian(logits, targets):
    """Its output Hessian per row: blockdiag over positions of (diag p - p p^T) / (N T)."""
    n, t, v = logits.shape
    p = torch.softmax(logits, dim=-1)
    blocks = (torch.diag_embed(p) - p[..., :, None] * p[..., None, :]) / (n * t)  # (N, T, V, V)
    eye = torch.eye(t, dtype=logits.dtype)
    # (N, T, V, T, V): position-diagonal
    full = blocks[:, :, :, None, :] * eye[None, :, None, :, None]
    return full.reshape(n, t * v, t * v)
