"""The transformer and the ResNet block model, and the built-in ``chars`` corpus they (and compare) run on.

Ground truth: parameter counts computed by hand from the layer shapes; causality by editing tokens;
curvature against the dense references of tests/curvature/general_cases.py (torch.autograd's dense
Hessian, a dense J^T H_out J from torch.func.jacrev, none of them through arturo_diag); the corpus
against its pinned sha256 and against its own substrings.
"""

from __future__ import annotations

import collections
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from arturo_diag.curvature import exact_diagonal, ggn_diagonal
from arturo_diag.errors import ConfigError
from arturo_diag.training.config import RunConfig, config_from_mapping
from arturo_diag.training.datasets import load_dataset
from arturo_diag.training.datasets.chars import CONTEXT, CORPUS_SHA256, alphabet, corpus, load_chars
from arturo_diag.training.models import CharTransformer, ResNetBlockNet, build_model, count_parameters
from cli.app import app
from tests.curvature.general_cases import assert_close_diagonal, dense_ggn_diagonal, dense_hessian_diagonal

F64 = torch.float64


def transformer_count_by_hand(vocab, context, dim, blocks, hidden):
    layer_norm = 2 * dim
    attention = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # qkv, proj
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)
    return vocab * dim + context * dim + blocks * (2 * layer_norm + attention + mlp) + layer_norm + dim * vocab + vocab


def test_transformer_parameter_count_equals_the_hand_count():
    ds = load_dataset("chars")
    model = build_model("transformer", in_channels=ds.in_channels, num_classes=ds.num_classes, image_size=ds.image_size)
    assert ds.num_classes == 29
    assert count_parameters(model) == transformer_count_by_hand(29, 32, 32, 2, 64) == 20_061
    small = CharTransformer(vocab=5, context=4, dim=4, heads=2, blocks=1, hidden=6)
    assert count_parameters(small) == transformer_count_by_hand(5, 4, 4, 1, 6)


def test_resnet_block_parameter_count_equals_the_hand_count():
    model = build_model("resnet_block", in_channels=1, num_classes=10, image_size=8)
    stem = 1 * 8 * 9 + 2 * 8
    block1 = 2 * (8 * 8 * 9 + 2 * 8)
    block2 = (8 * 16 * 9 + 2 * 16) + (16 * 16 * 9 + 2 * 16) + (8 * 16 + 2 * 16)  # + 1x1 shortcut and its BN
    head = 16 * 10 + 10
    assert count_parameters(model) == stem + block1 + block2 + head == 5_122
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert build_model("resnet_block", in_channels=3, num_classes=100, image_size=32)(
        torch.randn(2, 3, 32, 32)
    ).shape == (
        2,
        100,
    )


def test_transformer_is_causal_and_predicts_after_the_last_position():
    torch.manual_seed(0)
    model = CharTransformer(vocab=11, context=8, dim=8, heads=2, blocks=2, hidden=16).double().eval()
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.all_logits(x)
        torch.testing.assert_close(model(x), base[:, -1], rtol=1e-12, atol=1e-12)
        assert model(x).shape == (3, 11)
        for s in range(8):
            edited = x.clone()
            edited[:, s] = (edited[:, s] + 1) % 11
            out = model.all_logits(edited)
            # positions before s never see token s; position s and after do
            torch.testing.assert_close(out[:, :s], base[:, :s], rtol=0, atol=0)
            assert ((out[:, s:] - base[:, s:]).abs().amax(-1) > 1e-8).all(), s
        # a shorter window is the prefix: the same logits as the full window's positions
        torch.testing.assert_close(model.all_logits(x[:, :5]), base[:, :5], rtol=1e-12, atol=1e-12)


def _tiny_transformer():
    torch.manual_seed(3)
    model = CharTransformer(vocab=5, context=4, dim=4, heads=2, blocks=1, hidden=6).to(F64)
    with torch.no_grad():  # away from init: LayerNorm weights and biases not 1 and 0
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(5))
    return model.eval(), x, y


def _tiny_resnet_block():
    torch.manual_seed(6)
    model = ResNetBlockNet(in_channels=1, num_classes=3, width=2).to(F64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 2, 1, 1, 0])
    return model, x, y


CE = nn.functional.cross_entropy


def test_tiny_transformer_hessian_and_ggn_diagonals_equal_the_dense_references():
    model, x, y = _tiny_transformer()
    hessian = dense_hessian_diagonal(model, CE, x, y)
    got = exact_diagonal(model, CE, x, y, method="hvp")
    assert_close_diagonal(dict(got.items()), hessian, atol=1e-10, rtol=1e-10)
    ggn = dense_ggn_diagonal(model, CE, x, y)
    assert_close_diagonal(dict(ggn_diagonal(model, CE, x, y).items()), ggn, atol=1e-10, rtol=1e-10)
    # not vacuous: the transformer's GGN is not its Hessian, and both have mass
    flat_h = torch.cat([v.flatten() for v in hessian.values()])
    flat_g = torch.cat([v.flatten() for v in ggn.values()])
    assert flat_g.abs().max() > 1e-3 and (flat_h - flat_g).abs().max() > 1e-4


@pytest.mark.parametrize("train", [False, True], ids=["eval-bn", "train-bn"])
def test_tiny_resnet_block_hessian_and_ggn_diagonals_equal_the_dense_references(train):
    model, x, y = _tiny_resnet_block()
    hessian = dense_hessian_diagonal(model, CE, x, y, train=train)
    got = exact_diagonal(model, CE, x, y, method="hvp", train=train)
    assert_close_diagonal(dict(got.items()), hessian, atol=1e-10, rtol=1e-10)
    ggn = dense_ggn_diagonal(model, CE, x, y, train=train)
    assert_close_diagonal(dict(ggn_diagonal(model, CE, x, y, train=train).items()), ggn, atol=1e-10, rtol=1e-10)
    flat_h = torch.cat([v.flatten() for v in hessian.values()])
    flat_g = torch.cat([v.flatten() for v in ggn.values()])
    if train:  # batch statistics couple the rows: the Hessian diagonal differs from the GGN's
        assert (flat_h - flat_g).abs().max() > 1e-6
    else:  # eval mode: piecewise linear in each weight, diag(H) = diag(GGN)
        torch.testing.assert_close(flat_h, flat_g, atol=1e-10, rtol=1e-10)


def test_the_fast_exact_method_refuses_the_transformer_and_takes_the_resnet_block_in_eval_mode():
    from arturo_diag.curvature.errors import GGNNotExactError
    from arturo_diag.curvature.exact import check_ggn_exact

    assert check_ggn_exact(build_model("resnet_block", in_channels=1, num_classes=10, image_size=8), CE) == (
        "cross_entropy"
    )
    with pytest.raises(GGNNotExactError):
        check_ggn_exact(CharTransformer(vocab=5, context=4), CE)


def test_torch_func_traces_the_transformer_per_sample():
    model, x, y = _tiny_transformer()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return CE(torch.func.functional_call(model, p, (xi[None],)), yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    model.zero_grad()
    CE(model(x), y, reduction="sum").backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(per_sample[name].sum(0), p.grad, rtol=1e-10, atol=1e-12)


def test_corpus_is_pinned_and_the_split_is_seeded():
    text = corpus()
    import hashlib

    assert hashlib.sha256(text.encode()).hexdigest() == CORPUS_SHA256
    assert len(text) == 8025 and alphabet() == "".join(sorted(set(text))) and len(alphabet()) == 29
    a, b, c = load_chars(seed=0), load_chars(seed=0), load_chars(seed=1)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)
    assert a.num_train + a.num_test == len(text) - CONTEXT and a.num_test == round(0.2 * (len(text) - CONTEXT))
    assert a.x_train.dtype == torch.int64 and a.input_shape == (CONTEXT,) and a.inputs == "tokens"


def test_every_example_is_a_window_of_the_text_and_its_next_character():
    ds = load_chars(seed=2)
    chars = alphabet()
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    examples = collections.Counter("".join(chars[i] for i in row) + chars[t] for row, t in zip(x.tolist(), y.tolist()))
    text = corpus()
    expected = collections.Counter(text[i : i + CONTEXT + 1] for i in range(len(text) - CONTEXT))
    assert examples == expected


def test_load_dataset_keeps_token_ids_and_honours_train_size():
    ds = load_dataset("chars", dtype=F64, train_size=100, test_size=50)
    assert (ds.num_train, ds.num_test) == (100, 50)
    assert ds.x_train.dtype == torch.int64 and ds.to(dtype=F64).x_test.dtype == torch.int64
    assert torch.equal(ds.x_train, load_chars(seed=0).x_train[:100])
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (1, CONTEXT, 29)


def test_a_model_named_alone_runs_on_its_default_dataset():
    assert config_from_mapping({"model": "transformer"}).dataset == "chars"
    assert config_from_mapping({"model": "resnet_block"}).dataset == "digits"
    base = RunConfig(model="transformer", dataset="chars")
    assert config_from_mapping({"model": "small_cnn"}, base).dataset == "digits"
    assert config_from_mapping({"steps": 3}, base).dataset == "chars"
    with pytest.raises(ConfigError) as error:
        config_from_mapping({"model": "transformer", "dataset": "digits"})
    assert error.value.field.endswith("dataset") and "transformer" in str(error.value) and "digits" in str(error.value)
    with pytest.raises(ConfigError, match="small_cnn"):
        RunConfig(dataset="chars")


runner = CliRunner()
# small data and probe, and a Hutchinson reference: the exact one falls back to one Hessian-vector
# product per parameter for both (20,061 and, with train-mode BatchNorm, 5,122); the dense tests above
# check that exact reference on tiny versions of both
FAST = ("--train-size", "128", "--batch-size", "32", "--probe-size", "8", "--reference", "hutchinson", "--samples", "8")


@pytest.mark.parametrize(
    "args, names",
    [
        (("--model", "transformer", "--dataset", "digits"), ("transformer", "digits")),
        (("--model", "resnet_block", "--dataset", "chars"), ("resnet_block", "chars")),
        (("--dataset", "chars"), ("small_cnn", "chars")),
    ],
)
def test_compare_refuses_a_model_with_a_dataset_it_cannot_read(tmp_path, args, names):
    result = runner.invoke(app, ["compare", *args, "--steps", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dataset") and all(n in lines[0] for n in names)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--model", "transformer"),
        ("--model", "resnet_block", "--reference-mode", "train"),
    ],
    ids=["transformer", "resnet_block-train-bn"],
)
def test_compare_runs_the_new_models_end_to_end(tmp_path, args):
    out = tmp_path / "run"
    result = runner.invoke(app, ["compare", *args, *FAST, "--steps", "20", "--every", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "record.json").read_text())
    assert manifest["status"] == "complete"
    assert (out / "report.md").is_file()
    expected_dataset = "chars" if "transformer" in args else "digits"
    assert manifest["dataset"] == expected_dataset
    rows = (out / "snapshots.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["10", "20"]
    assert manifest["reference_mode"] == ("train" if "train" in args else "eval")
    assert manifest["estimate"]["coordinates"] == (20_061 if "transformer" in args else 5_122)


STUDY = """
[study]
name = "new-models"
description = "The transformer on chars (its default dataset) and the ResNet block model on digits."
seeds = [0]
variants = ["faithful"]

[setups.chars.run]
model = "transformer"
steps = 10
batch_size = 32
train_size = 128

[setups.chars.diagnostics]
every = 10
reference = "hutchinson"
samples = 8
probe_size = 8
instruments = []

[setups.resnet.run]
model = "resnet_block"
steps = 10
batch_size = 32
train_size = 128

[setups.resnet.diagnostics]
every = 10
reference = "hutchinson"
reference_mode = "train"
samples = 8
probe_size = 8
instruments = []
"""


def test_ablate_runs_a_study_of_the_new_models(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY)
    out = tmp_path / "study"
    result = runner.invoke(
        app, ["ablate", "--config", str(tmp_path / "study.toml"), "--out", str(out), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    study = json.loads((out / "study.json").read_text())
    assert study["counts"]["complete"] == 2 and study["counts"]["failed"] == 0
    assert study["setups"]["chars"]["dataset"] == "chars" and study["setups"]["resnet"]["dataset"] == "digits"
    assert {run["setup"]: run["snapshot_step"] for run in study["runs"]} == {"chars": 10.0, "resnet": 10.0}
