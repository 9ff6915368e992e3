"""gradient_noise: per-sample gradient statistics against a plain loop over single examples."""

import math

import pytest
import torch
import torch.nn.functional as F
from curvature_cases import DTYPE, batch, bn_cnn, cnn, mlp
from torch import nn

from arturo_diag.curvature import CurvatureError
from arturo_diag.curvature.noise import COCKPIT_GSNR_EPSILON, gradient_noise


def loop_gradients(model, loss_fn, x, y):
    """Per-sample gradients (N, P) by a Python loop of torch.autograd.grad on one example each."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for n in range(x.shape[0]):
        loss = loss_fn(model(x[n : n + 1]), y[n : n + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def mse_callable(outputs, targets):
    return ((outputs - targets) ** 2).mean()


CASES = [
    ("mlp_tanh_ce", lambda: mlp(0, nn.Tanh).eval(), nn.CrossEntropyLoss(), ((4,), 3, None)),
    ("mlp_relu_mse", lambda: mlp(1).eval(), mse_callable, ((4,), None, (3,))),
    ("cnn_dropout_eval", lambda: cnn(0).eval(), F.cross_entropy, ((1, 8, 8), 5, None)),
    ("bn_eval", lambda: bn_cnn(0).eval(), nn.CrossEntropyLoss(), ((2, 5, 5), 4, None)),
]


@pytest.mark.parametrize("label,build,loss_fn,shape", CASES, ids=[c[0] for c in CASES])
def test_matches_a_loop_over_single_examples(label, build, loss_fn, shape):
    model = build()
    x, y = batch(shape[0], classes=shape[1], targets_shape=shape[2], n=9, seed=3)
    expected = loop_gradients(model, loss_fn, x, y)
    noise = gradient_noise(model, loss_fn, x, y)
    mean = expected.mean(0)
    variance = expected.var(0, unbiased=True)
    torch.testing.assert_close(noise.flat("mean"), mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(noise.flat("variance"), variance, atol=1e-10, rtol=0)
    torch.testing.assert_close(noise.flat("minibatch_variance"), variance / 9, atol=1e-10, rtol=0)
    # the mean per-sample gradient is the gradient of the mean-reduced probe loss
    batch_grad = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    torch.testing.assert_close(noise.flat("mean"), torch.cat([g.reshape(-1) for g in batch_grad]), atol=1e-10, rtol=0)
    assert noise.batch_size == 9
    assert list(noise.mean) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert noise.variance[name].shape == p.shape and noise.variance[name].dtype == DTYPE


def test_gsnr_is_cockpits_formula_by_hand():
    model = mlp(2, nn.Tanh).eval()
    x, y = batch((4,), classes=3, n=7, seed=4)
    g = loop_gradients(model, nn.CrossEntropyLoss(), x, y)
    mean = g.mean(0)
    # Cockpit: grad^2 / (N * sum_n (g_n / N)^2 - grad^2 + eps), i.e. ddof-0 variance + eps
    sum_grad_squared = ((g / 7) ** 2).sum(0)
    cockpit = mean**2 / (7 * sum_grad_squared - mean**2 + COCKPIT_GSNR_EPSILON)
    noise = gradient_noise(model, nn.CrossEntropyLoss(), x, y)
    torch.testing.assert_close(noise.flat("gsnr"), cockpit, atol=1e-9, rtol=1e-9)
    assert noise.mean_gsnr == pytest.approx(float(cockpit.mean()), rel=1e-9)
    plain = gradient_noise(model, nn.CrossEntropyLoss(), x, y, epsilon=0.0)
    by_hand = mean**2 / g.var(0, unbiased=False)
    torch.testing.assert_close(plain.flat("gsnr"), by_hand, atol=1e-9, rtol=1e-9)
    assert plain.epsilon == 0.0


def test_layer_summaries_by_hand():
    model = mlp(3).eval()
    x, y = batch((4,), classes=3, n=8, seed=5)
    g = loop_gradients(model, nn.CrossEntropyLoss(), x, y)
    noise = gradient_noise(model, nn.CrossEntropyLoss(), x, y, epsilon=0.0)
    assert list(noise.summary) == ["overall", "0", "2", "4"]
    assert list(noise.layers()) == ["0", "2", "4"]
    # layer "2" = weight (4x5 = 20) and bias (4) of the second Linear, after the first's 25
    sl = slice(25, 49)
    var = g[:, sl].var(0)
    s = noise.summary["2"]
    assert int(s["coordinates"]) == 24
    assert float(s["variance_median"]) == pytest.approx(float(torch.quantile(var, 0.5)), rel=1e-12)
    assert float(s["minibatch_variance_sum"]) == pytest.approx(float(var.sum() / 8), rel=1e-12)
    assert float(s["minibatch_variance_mean"]) == pytest.approx(float(var.mean() / 8), rel=1e-12)
    assert float(s["mean_norm"]) == pytest.approx(float(g[:, sl].mean(0).norm()), rel=1e-12)
    gs = g[:, sl].mean(0) ** 2 / g[:, sl].var(0, unbiased=False)
    assert float(s["mean_gsnr"]) == pytest.approx(float(gs[torch.isfinite(gs)].mean()), rel=1e-10)
    assert int(noise.summary["overall"]["coordinates"]) == g.shape[1]


def test_zero_variance_coordinates_are_counted_and_left_out_without_epsilon():
    # a ReLU unit dead on every sample has g_n,i = 0 for all n: variance 0, GSNR nan (0/0)
    model = mlp(0).eval()
    with torch.no_grad():
        model[0].bias[0] = -100.0
    x, y = batch((4,), classes=3, n=6)
    noise = gradient_noise(model, nn.CrossEntropyLoss(), x, y, epsilon=0.0)
    assert int(noise.summary["0"]["zero_variance"]) >= 5  # the row of weights and the bias
    assert math.isfinite(noise.summary["overall"]["mean_gsnr"])
    cockpit = gradient_noise(model, nn.CrossEntropyLoss(), x, y)
    assert bool(torch.isfinite(cockpit.flat("gsnr")).all())


def test_chunk_size_does_not_change_the_result():
    model = cnn(1).eval()
    x, y = batch((1, 8, 8), classes=5, n=11, seed=2)
    runs = [gradient_noise(model, F.cross_entropy, x, y, chunk_size=c) for c in (1, 4, 11, None)]
    for run in runs[1:]:
        for field in ("mean", "variance", "minibatch_variance", "gsnr"):
            torch.testing.assert_close(run.flat(field), runs[0].flat(field), atol=1e-13, rtol=1e-11)


def test_mode_is_restored_and_float32_works():
    model = mlp(0).float().train()
    x, y = batch((4,), classes=3, n=5)
    noise = gradient_noise(model, nn.CrossEntropyLoss(), x.float(), y)
    assert model.training and all(m.training for m in model.modules())
    assert noise.mean["0.weight"].dtype == torch.float32


def test_refusals():
    x, y = batch((2, 5, 5), classes=4, n=6)
    with pytest.raises(CurvatureError, match="batch statistics"):
        gradient_noise(bn_cnn(0), nn.CrossEntropyLoss(), x, y, train=True)
    no_stats = bn_cnn(0)
    no_stats[1].track_running_stats = False
    no_stats[1].running_mean = no_stats[1].running_var = None
    with pytest.raises(CurvatureError, match="batch statistics"):
        gradient_noise(no_stats.eval(), nn.CrossEntropyLoss(), x, y)
    xm, ym = batch((4,), classes=3, n=6)
    with pytest.raises(CurvatureError, match="dropout"):
        gradient_noise(
            nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).double(), nn.CrossEntropyLoss(), xm, ym, train=True
        )
    with pytest.raises(CurvatureError, match="at least 2 samples"):
        gradient_noise(mlp(0), nn.CrossEntropyLoss(), xm[:1], ym[:1])
    with pytest.raises(CurvatureError, match="scalar"):
        gradient_noise(mlp(0), nn.CrossEntropyLoss(reduction="none"), xm, ym)
    with pytest.raises(CurvatureError, match="chunk_size"):
        gradient_noise(mlp(0), nn.CrossEntropyLoss(), xm, ym, chunk_size=0)
    with pytest.raises(CurvatureError, match="epsilon"):
        gradient_noise(mlp(0), nn.CrossEntropyLoss(), xm, ym, epsilon=-1.0)
    with pytest.raises(CurvatureError, match="rows"):
        gradient_noise(mlp(0), nn.CrossEntropyLoss(), xm, ym[:3])
