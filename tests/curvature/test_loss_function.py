"""loss_of_parameters: the one probe loss every estimator differentiates, and its input checks."""

import pytest
import torch
from curvature_cases import DTYPE, batch, bn_cnn, mlp
from torch import nn

from arturo_diag.curvature import (
    CurvatureError,
    evaluation_mode,
    exact_diagonal,
    hutchinson_diagonal,
    loss_of_parameters,
)


def test_value_equals_the_models_eval_mode_loss_and_params_alias_the_weights():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).to(DTYPE)
    x, y = batch((4,), classes=3)
    names, params, loss = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
    assert names == ("0.weight", "0.bias", "3.weight", "3.bias")
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(params, model.parameters()))
    model.eval()
    expected = nn.functional.cross_entropy(model(x), y)
    model.train()
    # dropout is off during the evaluation: the same value every time
    assert loss(params) == expected
    assert loss(params) == expected


def test_other_parameters_give_the_loss_at_those_parameters():
    model = mlp(1).eval()
    x, y = batch((4,), classes=3)
    names, params, loss = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
    shifted = tuple(p + 0.1 for p in params)
    with torch.no_grad():
        for p in model.parameters():
            p += 0.1
    assert torch.allclose(loss(shifted), nn.functional.cross_entropy(model(x), y), atol=1e-14)


def test_each_modules_mode_is_restored_after_evaluation():
    model = bn_cnn(0)
    model.train()
    model[1].eval()  # mixed modes must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    x, y = batch((2, 4, 4), classes=4)
    names, params, loss = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
    loss(params)
    exact_diagonal(model, nn.CrossEntropyLoss(), x, y)
    hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 2, torch.Generator().manual_seed(0))
    assert {name: m.training for name, m in model.named_modules()} == before


def test_mode_is_restored_even_when_the_forward_raises():
    model = mlp(0).train()
    with pytest.raises(RuntimeError):
        with evaluation_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


def test_train_true_uses_batch_statistics_and_never_writes_buffers():
    model = bn_cnn(1).eval()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x, y = batch((2, 4, 4), classes=4)
    names, params, loss = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y, train=True)
    value = loss(params)
    exact_diagonal(model, nn.CrossEntropyLoss(), x, y, "hvp", train=True)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    # batch statistics: the value differs from the eval-mode (running statistics) loss
    eval_value = loss_of_parameters(model, nn.CrossEntropyLoss(), x, y).loss(params)
    assert abs(float(value - eval_value)) > 1e-6
    # and equals a train-mode forward on a copy of the model
    copy = bn_cnn(1)
    copy.load_state_dict(model.state_dict())
    copy.train()
    assert torch.allclose(value, nn.functional.cross_entropy(copy(x), y), atol=1e-14)


def test_train_true_with_active_dropout_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.1)).to(DTYPE)
    x, y = batch((4,), classes=3)
    with pytest.raises(CurvatureError, match="dropout"):
        loss_of_parameters(model, nn.CrossEntropyLoss(), x, y, train=True)


def test_inputs_and_targets_follow_the_models_dtype():
    model = mlp(0).float()
    x, y = batch((4,), targets_shape=(3,))  # float64 batch
    names, params, loss = loss_of_parameters(model, nn.MSELoss(), x, y)
    assert loss.inputs.dtype == torch.float32 and loss.targets.dtype == torch.float32
    assert loss(params).dtype == torch.float32
    _, y_int = batch((4,), classes=3)
    assert loss_of_parameters(model, nn.CrossEntropyLoss(), x, y_int).loss.targets.dtype == torch.int64


class NoParameters(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (NoParameters(), *batch((3,), classes=3)), "no parameter that requires grad"),
        (lambda: (mlp(0).requires_grad_(False), *batch((4,), classes=3)), "no parameter"),
        (lambda: (mlp(0), torch.zeros(0, 4, dtype=DTYPE), torch.zeros(0, dtype=torch.long)), "empty"),
        (lambda: (mlp(0), batch((4,), classes=3)[0], torch.zeros(5, dtype=torch.long)), "5 rows but inputs have 6"),
        (lambda: (mlp(0), [[0.0] * 4], torch.zeros(1, dtype=torch.long)), "inputs must be a torch.Tensor"),
        (lambda: (mlp(0), batch((4,), classes=3)[0], 3), "targets must be a torch.Tensor"),
        (lambda: (mlp(0), torch.tensor(1.0), torch.tensor(1)), "batch dimension"),
        (lambda: ("not a model", *batch((4,), classes=3)), "torch.nn.Module"),
        (lambda: (mlp(0), *batch((4,), classes=3)), None),
    ],
)
def test_bad_input_raises_a_clear_error(make, match):
    model, x, y = make()
    if match is None:  # control: a valid case must not raise
        loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)
        return
    for call in (
        lambda: loss_of_parameters(model, nn.CrossEntropyLoss(), x, y),
        lambda: exact_diagonal(model, nn.CrossEntropyLoss(), x, y),
        lambda: hutchinson_diagonal(model, nn.CrossEntropyLoss(), x, y, 4, torch.Generator()),
    ):
        with pytest.raises(CurvatureError, match=match):
            call()


def test_mixed_parameter_dtypes_are_refused():
    model = nn.Sequential(nn.Linear(4, 3).double(), nn.Linear(3, 3).float())
    x, y = batch((4,), classes=3)
    with pytest.raises(CurvatureError, match="one dtype"):
        loss_of_parameters(model, nn.CrossEntropyLoss(), x, y)


def test_a_loss_that_is_not_a_scalar_is_refused():
    model = mlp(0)
    x, y = batch((4,), classes=3)
    per_sample = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(CurvatureError, match="scalar"):
        exact_diagonal(model, per_sample, x, y)
    with pytest.raises(CurvatureError, match="scalar"):
        hutchinson_diagonal(model, per_sample, x, y, 2, torch.Generator())
