"""ggn_diagonal: the exact GGN diagonal of any traceable model against a dense J^T H_out J, and the
Hessian diagonal where it should be, float64 to 1e-10."""

import pytest
import torch
import torch.nn.functional as F
from curvature_cases import batch, cnn, mlp
from general_cases import (
    DTYPE,
    CatBranches,
    ResidualBNBlock,
    TinyTransformer,
    assert_close_diagonal,
    dense_ggn_diagonal,
    dense_hessian_diagonal,
    layer_norm_net,
    token_cross_entropy,
    token_cross_entropy_hessian,
    tokens,
)
from torch import nn

from arturo_diag.curvature import (
    CurvatureError,
    DiagonalHessian,
    GGNDiagonal,
    exact_diagonal,
    ggn_diagonal,
)

CE = nn.CrossEntropyLoss()


def _image_batch(n=5, seed=1):
    return batch((2, 4, 4), classes=4, n=n, seed=seed)


# (label, build model, loss, (inputs, targets), train)
NONLINEAR_CASES = [
    ("tanh_mlp", lambda: mlp(0, nn.Tanh), CE, lambda: batch((4,), classes=3, n=6), False),
    ("gelu_mlp", lambda: mlp(1, nn.GELU), CE, lambda: batch((4,), classes=3, n=6), False),
    ("gelu_mlp_mse", lambda: mlp(2, nn.GELU), nn.MSELoss(), lambda: batch((4,), targets_shape=(3,), n=5), False),
    ("cat_branches", CatBranches, CE, lambda: batch((4,), classes=3, n=6), False),
    ("layer_norm", layer_norm_net, CE, lambda: batch((4,), classes=3, n=6), False),
    ("residual_bn_train", ResidualBNBlock, CE, _image_batch, True),
    ("transformer", TinyTransformer, CE, tokens, False),
]
LINEAR_CASES = [
    ("relu_mlp_ce", lambda: mlp(0), CE, lambda: batch((4,), classes=3, n=6)),
    ("relu_mlp_mse", lambda: mlp(0), F.mse_loss, lambda: batch((4,), targets_shape=(3,), n=6)),
    ("cnn", lambda: cnn(0), CE, lambda: batch((1, 8, 8), classes=5, n=4)),
    ("residual_bn_eval", ResidualBNBlock, CE, _image_batch),
]


@pytest.mark.parametrize("mode", ["auto", "reverse", "forward"])
@pytest.mark.parametrize("case", NONLINEAR_CASES, ids=[c[0] for c in NONLINEAR_CASES])
def test_equals_the_dense_ggn_and_is_labelled_as_not_the_hessian(case, mode):
    _, build, loss_fn, data, train = case
    model = build().eval()
    x, y = data()
    result = ggn_diagonal(model, loss_fn, x, y, train=train, mode=mode)
    expected = dense_ggn_diagonal(model, loss_fn, x, y, train=train)
    assert isinstance(result, GGNDiagonal) and isinstance(result, DiagonalHessian)
    assert result.method == "ggn_general"
    if mode != "auto":
        assert result.mode == mode
    assert_close_diagonal(result, expected)
    assert result.is_hessian is False and result.note.startswith("the GGN diagonal")
    # and it really is not the Hessian diagonal on these models
    hessian = dense_hessian_diagonal(model, loss_fn, x, y, train=train)
    gap = max(float((result[n] - hessian[n]).abs().max()) for n in hessian)
    assert gap > 1e-4


@pytest.mark.parametrize("case", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_is_the_hessian_diagonal_on_networks_linear_in_each_weight(case):
    _, build, loss_fn, data = case
    model = build().eval()
    x, y = data()
    result = ggn_diagonal(model, loss_fn, x, y)
    hessian = dense_hessian_diagonal(model, loss_fn, x, y)
    assert_close_diagonal(result, hessian)
    assert_close_diagonal(result, dense_ggn_diagonal(model, loss_fn, x, y))
    assert result.is_hessian is True and result.note.startswith("the Hessian diagonal")
    # the closed-form Sequential path and the hvp path agree with it
    assert_close_diagonal(result, exact_diagonal(model, loss_fn, x, y, "ggn"))
    assert_close_diagonal(result, exact_diagonal(model, loss_fn, x, y, "hvp"))


LAYERWISE_CASES = [
    ("gelu_mlp", lambda: mlp(1, nn.GELU), CE, lambda: batch((4,), classes=3, n=6)),
    ("gelu_mlp_mse", lambda: mlp(2, nn.GELU), nn.MSELoss(), lambda: batch((4,), targets_shape=(3,), n=5)),
    ("cat_branches", CatBranches, CE, lambda: batch((4,), classes=3, n=6)),
    ("residual_bn_eval", ResidualBNBlock, CE, _image_batch),
]


@pytest.mark.parametrize("case", LAYERWISE_CASES, ids=[c[0] for c in LAYERWISE_CASES])
def test_auto_takes_the_layerwise_closed_form_where_it_applies(case):
    # parameters all in Linear, Conv2d and eval-mode BatchNorm layers, rows independent
    _, build, loss_fn, data = case
    model = build()
    x, y = data()
    auto = ggn_diagonal(model, loss_fn, x, y)
    assert auto.mode == "layerwise"
    assert_close_diagonal(auto, ggn_diagonal(model, loss_fn, x, y, mode="reverse"))
    assert_close_diagonal(auto, dense_ggn_diagonal(model, loss_fn, x, y))


def test_layerwise_is_refused_where_it_does_not_apply_and_auto_falls_back():
    x, y = batch((4,), classes=3, n=6)
    with pytest.raises(CurvatureError, match="layerwise"):
        ggn_diagonal(layer_norm_net(), CE, x, y, mode="layerwise")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inner = nn.Linear(4, 4).to(DTYPE)
            self.head = nn.Linear(4, 3).to(DTYPE)

        def forward(self, x):
            return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))

    model = Twice()
    result = ggn_diagonal(model, CE, x, y)
    assert result.mode == "reverse"
    assert_close_diagonal(result, dense_ggn_diagonal(model, CE, x, y))
    with pytest.raises(CurvatureError, match="layerwise"):
        ggn_diagonal(model, CE, x, y, mode="layerwise")


def test_train_mode_batch_norm_couples_the_rows_through_the_whole_batch_jacobian():
    model = ResidualBNBlock().eval()
    x, y = _image_batch()
    coupled = ggn_diagonal(model, CE, x, y, train=True)
    assert coupled.coupled is True and "coupled" in coupled.note
    assert_close_diagonal(coupled, dense_ggn_diagonal(model, CE, x, y, train=True))
    # the rows really are coupled: treating them one at a time gives another (wrong) number
    rowwise = ggn_diagonal(model, CE, x, y, train=True, coupled=False)
    assert max(float((coupled[n] - rowwise[n]).abs().max()) for n in coupled) > 1e-3
    # eval mode uses the running statistics: rows independent
    evaluated = ggn_diagonal(model, CE, x, y)
    assert evaluated.coupled is False
    assert max(float((coupled[n] - evaluated[n]).abs().max()) for n in coupled) > 1e-3


def test_coupling_without_batch_norm_is_detected_from_the_outputs():
    class Centred(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inner = nn.Linear(4, 3).to(DTYPE)

        def forward(self, x):
            z = torch.tanh(self.inner(x))
            return z - z.mean(0, keepdim=True)  # every row depends on the batch

    model = Centred()
    x, y = batch((4,), classes=3, n=5)
    result = ggn_diagonal(model, CE, x, y)
    assert result.coupled is True
    assert_close_diagonal(result, dense_ggn_diagonal(model, CE, x, y))


def test_train_mode_leaves_modes_and_running_statistics_untouched():
    model = ResidualBNBlock().train()
    model.bn1.eval()
    before = {n: b.clone() for n, b in model.named_buffers()}
    x, y = _image_batch()
    ggn_diagonal(model, CE, x, y, train=True)
    ggn_diagonal(model, CE, x, y)
    assert model.training and not model.bn1.training and model.bn2.training
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n


@pytest.mark.parametrize("chunk_size", [1, 4, 29, None])
@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("train", [False, True])
def test_chunking_does_not_change_the_result(chunk_size, mode, train):
    model = ResidualBNBlock()
    x, y = _image_batch()
    reference = dense_ggn_diagonal(model, CE, x, y, train=train)
    result = ggn_diagonal(model, CE, x, y, train=train, mode=mode, chunk_size=chunk_size)
    assert_close_diagonal(result, reference)


def test_a_tiny_memory_budget_still_gives_the_exact_result():
    model = TinyTransformer()
    x, y = tokens()
    result = ggn_diagonal(model, CE, x, y, memory_budget=1)
    assert_close_diagonal(result, dense_ggn_diagonal(model, CE, x, y))


def test_transformer_on_token_ids_with_a_user_loss_and_its_output_hessian():
    model = TinyTransformer(classes_last=True)
    x, y = tokens()
    assert not x.is_floating_point()
    result = ggn_diagonal(model, token_cross_entropy, x, y, output_hessian=token_cross_entropy_hessian)
    assert_close_diagonal(result, dense_ggn_diagonal(model, token_cross_entropy, x, y))
    assert result.is_hessian is False and "own output Hessian" in result.note
    # the same numbers as the built-in cross-entropy on the (N, V, T) layout
    builtin = ggn_diagonal(TinyTransformer(), CE, x, y)
    assert_close_diagonal(result, builtin)


def test_an_indefinite_output_hessian_gives_the_signed_ggn():
    # L = mean_n sum_d y_nd sin(f_nd): H_out blocks diag(-y sin f) / N, of both signs
    def loss(outputs, targets):
        return (targets * torch.sin(outputs)).sum(1).mean()

    def output_hessian(outputs, targets):
        return torch.diag_embed(-targets * torch.sin(outputs)) / outputs.shape[0]

    model = mlp(3, nn.GELU)
    x, y = batch((4,), targets_shape=(3,), n=6)
    for mode in ("reverse", "forward"):
        result = ggn_diagonal(model, loss, x, y, output_hessian=output_hessian, mode=mode)
        assert_close_diagonal(result, dense_ggn_diagonal(model, loss, x, y))
    assert float(result.flatten().min()) < 0


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=DTYPE)),
        nn.CrossEntropyLoss(ignore_index=1),
        nn.CrossEntropyLoss(label_smoothing=0.2),
        nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=DTYPE), label_smoothing=0.1),
        F.cross_entropy,
        nn.MSELoss(reduction="sum"),
    ],
    ids=["sum", "weight", "ignore_index", "smoothing", "weight_smoothing", "functional", "mse_sum"],
)
def test_loss_options_are_factored_exactly(loss_fn):
    model = layer_norm_net()
    if isinstance(loss_fn, nn.MSELoss):
        x, y = batch((4,), targets_shape=(3,), n=7)
    else:
        x, y = batch((4,), classes=3, n=7)
    assert_close_diagonal(ggn_diagonal(model, loss_fn, x, y), dense_ggn_diagonal(model, loss_fn, x, y))


@pytest.mark.parametrize("case", NONLINEAR_CASES[3:], ids=[c[0] for c in NONLINEAR_CASES[3:]])
def test_float32_agrees_with_the_float64_reference(case):
    _, build, loss_fn, data, train = case
    model = build()
    x, y = data()
    expected = dense_ggn_diagonal(model, loss_fn, x, y, train=train)
    result = ggn_diagonal(model.float(), loss_fn, x.float() if x.is_floating_point() else x, y, train=train)
    for name, value in result.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), expected[name], atol=1e-6, rtol=1e-4, msg=name)


def test_unknown_loss_and_bad_options_are_refused():
    model = mlp(0)
    x, y = batch((4,), classes=3)
    with pytest.raises(CurvatureError, match="output_hessian"):
        ggn_diagonal(model, lambda out, t: out.square().mean(), x, y)
    with pytest.raises(CurvatureError, match="shape"):
        ggn_diagonal(
            model,
            lambda out, t: out.square().mean(),
            x,
            y,
            output_hessian=lambda out, t: torch.zeros(3, 3, dtype=DTYPE),
        )
    with pytest.raises(CurvatureError, match="mode"):
        ggn_diagonal(model, CE, x, y, mode="sideways")
    with pytest.raises(CurvatureError, match="chunk_size"):
        ggn_diagonal(model, CE, x, y, chunk_size=0)
    with pytest.raises(CurvatureError, match="class indices"):
        ggn_diagonal(model, CE, x, y + 5)
    with pytest.raises(CurvatureError, match="mse"):
        ggn_diagonal(model, F.mse_loss, x, torch.zeros(6, 2, dtype=DTYPE))
