"""exact_diagonal: every method against closed forms and the brute-force Hessian, float64."""

import pytest
import torch
import torch.nn.functional as F
from curvature_cases import (
    DTYPE,
    Quadratic,
    Residual,
    TokenLinear,
    assert_same_diagonal,
    batch,
    bn_cnn,
    brute_force_diagonal,
    cnn,
    conv1d_net,
    mean_output,
    mlp,
    spd_matrix,
)
from torch import nn

from arturo_diag.curvature import (
    CurvatureError,
    DiagonalHessian,
    GGNNotExactError,
    exact_diagonal,
    loss_of_parameters,
)
from arturo_diag.curvature.ggn import ggn_diagonal
from arturo_diag.errors import ArturoDiagError

# --- quadratics with a known Hessian -------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_hvp_on_a_quadratic_returns_diag_a(chunk_size):
    a = spd_matrix(7, seed=3)
    model = Quadratic(a)
    x = torch.zeros(2, 1, dtype=DTYPE)
    result = exact_diagonal(model, mean_output, x, x, "hvp", chunk_size=chunk_size)
    assert result.method == "hvp"
    torch.testing.assert_close(result["x"], a.diagonal(), atol=1e-12, rtol=0)


def test_auto_on_a_custom_quadratic_falls_back_to_hvp_and_says_why():
    a = spd_matrix(5, seed=4)
    x = torch.zeros(3, 1, dtype=DTYPE)
    result = exact_diagonal(Quadratic(a), mean_output, x, x)
    assert result.method == "hvp"
    assert result.note.startswith("ggn refused: ") and "loss" in result.note
    torch.testing.assert_close(result["x"], a.diagonal(), atol=1e-12, rtol=0)
    with pytest.raises(GGNNotExactError):
        exact_diagonal(Quadratic(a), mean_output, x, x, "ggn")


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), F.mse_loss])
@pytest.mark.parametrize("method", ["ggn", "hvp", "auto"])
def test_linear_mse_has_the_closed_form_diagonal(method, loss_fn):
    # L = 1/(N D) sum_n ||W x_n + b - y_n||^2  =>  d2L/dW_dk^2 = 2/(N D) sum_n x_nk^2, d2L/db_d^2 = 2/D
    n, k, d = 9, 4, 3
    torch.manual_seed(0)
    model = nn.Linear(k, d).to(DTYPE)
    x, y = batch((k,), targets_shape=(d,), n=n)
    result = exact_diagonal(model, loss_fn, x, y, method)
    assert result.method == ("hvp" if method == "hvp" else "ggn")
    expected_w = (2.0 / (n * d) * (x**2).sum(0)).expand(d, k)
    torch.testing.assert_close(result["weight"], expected_w, atol=1e-12, rtol=0)
    torch.testing.assert_close(result["bias"], torch.full((d,), 2.0 / d, dtype=DTYPE), atol=1e-12, rtol=0)


def test_linear_cross_entropy_has_the_closed_form_diagonal():
    # logits z = W x + b, L = mean CE  =>  d2L/dW_ck^2 = 1/N sum_n p_nc (1 - p_nc) x_nk^2
    n, k, c = 8, 3, 4
    torch.manual_seed(1)
    model = nn.Linear(k, c).to(DTYPE)
    x, y = batch((k,), classes=c, n=n)
    p = torch.softmax(x @ model.weight.detach().T + model.bias.detach(), dim=1)
    curvature = p * (1 - p)
    for method in ("ggn", "hvp"):
        result = exact_diagonal(model, nn.CrossEntropyLoss(), x, y, method)
        torch.testing.assert_close(result["weight"], curvature.T @ x**2 / n, atol=1e-12, rtol=0)
        torch.testing.assert_close(result["bias"], curvature.mean(0), atol=1e-12, rtol=0)


# --- piecewise-linear networks against the brute-force Hessian ------------------------------

CASES = {
    "mlp": (lambda: mlp(0), (4,), 3),
    "cnn": (lambda: cnn(1), (1, 8, 8), 5),
    "bn_cnn_eval": (lambda: bn_cnn(2), (2, 4, 4), 4),
    "conv1d": (lambda: conv1d_net(3), (2, 6), 3),
    "token_linear_direct": (lambda: TokenLinear(classes=2), (5, 3), 2),
    "token_linear_gram": (lambda: TokenLinear(classes=6), (5, 3), 6),
    "residual_opt_in": (lambda: Residual(), (4,), 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hvp_and_ggn_equal_the_brute_force_diagonal(case):
    build, shape, classes = CASES[case]
    model = build().eval()
    x, y = batch(shape, classes=classes, n=7)
    loss_fn = nn.CrossEntropyLoss()
    expected = brute_force_diagonal(model, loss_fn, x, y)
    assert sum(float(v.abs().sum()) for v in expected.values()) > 1e-3  # not vacuous
    for method in ("hvp", "ggn", "auto"):
        result = exact_diagonal(model, loss_fn, x, y, method, chunk_size=None)
        assert result.method == ("hvp" if method == "hvp" else "ggn")
        assert_same_diagonal(result, expected)


@pytest.mark.parametrize("case", ["mlp", "cnn", "bn_cnn_eval", "conv1d", "token_linear_gram"])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_both_ggn_paths_agree_with_brute_force_at_any_chunk_size(case, chunk_size):
    build, shape, classes = CASES[case]
    model = build().eval()
    x, y = batch(shape, classes=classes, n=5, seed=7)
    loss_fn = F.cross_entropy
    expected = brute_force_diagonal(model, loss_fn, x, y)
    problem = loss_of_parameters(model, loss_fn, x, y)
    for layerwise in (True, False):
        got = ggn_diagonal(problem, "cross_entropy", chunk_size, layerwise=layerwise)
        assert_same_diagonal(got, expected)


def test_ggn_with_mse_on_multi_dimensional_outputs_equals_brute_force():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1)).to(DTYPE)
    x, y = batch((1, 4, 4), targets_shape=(2, 4, 4), n=4)
    expected = brute_force_diagonal(model, nn.MSELoss(), x, y)
    assert_same_diagonal(exact_diagonal(model, nn.MSELoss(), x, y, "ggn"), expected)
    assert_same_diagonal(exact_diagonal(model, nn.MSELoss(), x, y, "hvp", chunk_size=8), expected)


def test_frozen_parameters_are_left_out_and_held_fixed():
    model = mlp(4).eval()
    model[0].weight.requires_grad_(False)
    x, y = batch((4,), classes=3)
    expected = brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y)
    assert "0.weight" not in expected
    for method in ("hvp", "ggn"):
        assert_same_diagonal(exact_diagonal(model, nn.CrossEntropyLoss(), x, y, method), expected)


# --- refusals: what "ggn" cannot prove --------------------------------------------------------


def test_tanh_network_ggn_refuses_and_auto_gives_the_brute_force_diagonal():
    model = mlp(6, activation=nn.Tanh).eval()
    x, y = batch((4,), classes=3)
    with pytest.raises(GGNNotExactError, match="Tanh"):
        exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "ggn")
    result = exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "auto")
    assert result.method == "hvp"
    assert "Tanh" in result.note
    expected = brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y)
    assert_same_diagonal(result, expected)
    # and ggn's value would have been wrong here: the refusal is not overcautious
    problem = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
    ggn = ggn_diagonal(problem, "cross_entropy")
    assert max(float((ggn[n] - expected[n]).abs().max()) for n in expected) > 1e-6


def test_batch_norm_in_train_mode_is_refused_and_auto_matches_brute_force():
    model = bn_cnn(2)
    x, y = batch((2, 4, 4), classes=4, n=6)
    with pytest.raises(GGNNotExactError, match="train mode"):
        exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "ggn", train=True)
    result = exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "auto", train=True)
    assert result.method == "hvp"
    model.train()
    for m in model.modules():  # batch statistics, no running-stat update: what train=True means
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
    expected = brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y)
    assert_same_diagonal(result, expected)


class TanhLinear(nn.Linear):
    def forward(self, x):
        return torch.tanh(super().forward(x))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return torch.tanh(self.layer(x))


class CallsTwice(nn.Module):
    arturo_diag_piecewise_linear = True  # a false claim: the layer's weight is used twice

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x):
        return self.layer(torch.relu(self.layer(x)))


def _shared_sequential():
    layer = nn.Linear(3, 3)
    return nn.Sequential(layer, nn.ReLU(), layer)


def _tied_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    return model


@pytest.mark.parametrize(
    "build, loss_fn, match",
    [
        (lambda: nn.Sequential(TanhLinear(3, 2)), nn.CrossEntropyLoss(), "TanhLinear"),
        (Plain, nn.CrossEntropyLoss(), "Plain"),
        (_shared_sequential, nn.CrossEntropyLoss(), "same object"),
        (_tied_parameters, nn.CrossEntropyLoss(), "ties parameters"),
        (lambda: nn.Sequential(nn.Linear(3, 3)), nn.CrossEntropyLoss(label_smoothing=0.1), "label"),
        (lambda: nn.Sequential(nn.Linear(3, 3)), nn.CrossEntropyLoss(reduction="sum"), "reduction"),
        (lambda: nn.Sequential(nn.Linear(3, 3)), lambda o, t: F.cross_entropy(o, t), "identify"),
        (CallsTwice, nn.CrossEntropyLoss(), "ran 2 times"),
    ],
)
def test_ggn_refuses_what_it_cannot_prove(build, loss_fn, match):
    model = build().to(DTYPE).eval()
    x, y = batch((3,), classes=2, n=4)
    with pytest.raises(GGNNotExactError, match=match):
        exact_diagonal(model, loss_fn, x, y, "ggn")
    result = exact_diagonal(model, loss_fn, x, y, "auto")
    assert result.method == "hvp"
    assert_same_diagonal(result, brute_force_diagonal(model, loss_fn, x, y))


def test_ggn_refuses_probability_targets_for_cross_entropy():
    model = mlp(0).eval()
    x, _ = batch((4,), classes=3)
    soft = torch.softmax(torch.randn(6, 3, dtype=DTYPE), dim=1)
    with pytest.raises(GGNNotExactError, match="class-index"):
        exact_diagonal(model, nn.CrossEntropyLoss(), x, soft, "ggn")


# --- results, errors, dtype and device ------------------------------------------------------


def test_result_is_a_mapping_shaped_like_the_parameters():
    model = cnn(0).eval()
    x, y = batch((1, 8, 8), classes=5)
    result = exact_diagonal(model, nn.CrossEntropyLoss(), x, y)
    assert isinstance(result, DiagonalHessian)
    assert list(result) == [n for n, _ in model.named_parameters()]
    assert len(result) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        assert result[name].shape == p.shape
    assert result.flatten().numel() == sum(p.numel() for p in model.parameters())
    assert "ggn" in repr(result)


@pytest.mark.parametrize("method", ["hvp", "ggn"])
def test_float32_model_gives_float32_results_close_to_float64(method):
    model64 = cnn(2).eval()
    x, y = batch((1, 8, 8), classes=5)
    expected = exact_diagonal(model64, nn.CrossEntropyLoss(), x, y, method)
    model32 = cnn(2).float().eval()
    # float64 inputs are cast to the model's dtype
    result = exact_diagonal(model32, nn.CrossEntropyLoss(), x, y, method)
    for name in expected:
        assert result[name].dtype == torch.float32
        assert result[name].device == next(model32.parameters()).device
        torch.testing.assert_close(result[name].double(), expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["hvp", "ggn"])
def test_cuda_model_gives_cuda_results(method):
    model = cnn(3).eval()
    x, y = batch((1, 8, 8), classes=5)
    expected = brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y)
    result = exact_diagonal(model.cuda(), nn.CrossEntropyLoss(), x, y, method)  # CPU batch moved
    for name in expected:
        assert result[name].is_cuda
        torch.testing.assert_close(result[name].cpu(), expected[name], atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "newton"}, "method"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_bad_options_raise_a_curvature_error(kwargs, match):
    model = mlp(0)
    x, y = batch((4,), classes=3)
    with pytest.raises(CurvatureError, match=match):
        exact_diagonal(model, nn.CrossEntropyLoss(), x, y, **kwargs)


def test_out_of_range_class_targets_are_bad_input_not_a_fallback():
    model = mlp(0)
    x, _ = batch((4,), classes=3)
    with pytest.raises(CurvatureError, match=r"\[0, 3\)"):
        exact_diagonal(model, nn.CrossEntropyLoss(), x, torch.tensor([0, 1, 2, 3, 0, 1]), "auto")


def test_errors_belong_to_the_project_family():
    assert issubclass(GGNNotExactError, CurvatureError)
    assert issubclass(CurvatureError, ArturoDiagError)
    assert issubclass(CurvatureError, ValueError)


def test_hvp_works_in_chunks_of_at_most_chunk_size_one_hot_vectors(monkeypatch):
    import arturo_diag.curvature.exact as exact

    seen = []
    original = exact.batched_hvp

    def recording(loss, params, *args):
        products = original(loss, params, *args)

        def run(tangents):
            seen.append(tangents[0].shape[0])
            return products(tangents)

        return run

    monkeypatch.setattr(exact, "batched_hvp", recording)
    model = mlp(1).eval()
    x, y = batch((4,), classes=3)
    total = sum(p.numel() for p in model.parameters())
    assert total == 64
    result = exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "hvp", chunk_size=10)
    assert seen == [10] * 6 + [4]  # memory per call: chunk_size x P, never P x P
    assert_same_diagonal(result, brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y))


@pytest.mark.parametrize("loop_above", [0, 2**62])  # every model looped / every model vmap-ed
def test_hvp_gives_the_same_diagonal_looped_or_vmapped(monkeypatch, loop_above):
    import arturo_diag.curvature.hvp as hvp

    monkeypatch.setattr(hvp, "LOOP_ABOVE_BYTES", loop_above)
    model = cnn(4).eval()
    x, y = batch((1, 8, 8), classes=5)
    problem = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
    assert hvp.hvp_plan(problem.loss, problem.params, 10**6).batched == (loop_above > 0)
    expected = brute_force_diagonal(model, nn.CrossEntropyLoss(), x, y)
    assert_same_diagonal(exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "hvp"), expected)
    assert_same_diagonal(
        exact_diagonal(model, F.mse_loss, x, torch.zeros(6, 5, dtype=DTYPE), "hvp"),
        brute_force_diagonal(model, F.mse_loss, x, torch.zeros(6, 5, dtype=DTYPE)),
    )
