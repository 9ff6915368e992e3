"""One's own optimizer with one's own curvature estimate through the Python API (issue 13): an
OptimizerSpec and a CurvatureAdapter registered by the test, and `run` audits that estimate like
any other (record.json's estimator, the snapshots' curvature, the agreement verdicts)."""

import numpy as np
import pytest
import torch

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.estimators import CurvatureEstimate, register_adapter, unregister_adapter
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.training.config import RunConfig
from arturo_diag.training.loop import run
from arturo_diag.training.optimizers import OptimizerSpec, register_optimizer, standard_step, unregister_optimizer

TINY = dict(model="mlp", dataset="teacher", train_size=96, batch_size=32, epochs=2, every=2, probe_size=16,
            lr_milestones=(2,), instruments=())  # fmt: skip


class SquaredGradientSGD(torch.optim.SGD):
    """SGD that keeps an EMA of g^2 per weight as its 'curvature' (state key "curv")."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state[p]
                    state.setdefault("curv", torch.zeros_like(p)).mul_(0.9).addcmul_(p.grad, p.grad, value=0.1)
        return super().step(closure)


class SquaredGradientAdapter:
    name = "sq-sgd"

    def matches(self, optimizer):
        return isinstance(optimizer, SquaredGradientSGD)

    def estimate(self, optimizer, named_parameters):
        est = {
            n: optimizer.state[p]["curv"].detach().clone() for n, p in named_parameters if "curv" in optimizer.state[p]
        }
        return CurvatureEstimate(
            estimate=est, target="gradient_second_moment", scale="EMA(0.9) of g^2", optimizer=self.name
        )


@pytest.fixture
def registered():
    spec = OptimizerSpec(
        "sq-sgd",
        "SGD with an EMA of g^2, the test's own",
        lambda config, model, num_train: SquaredGradientSGD(model.parameters(), lr=config.lr),
        standard_step,
        True,
        {"lr": {"value": 0.1, "source": "the test"}, "weight_decay": {"value": 0.0, "source": "the test"}},
    )
    register_optimizer(spec)
    register_adapter(SquaredGradientAdapter())
    yield spec
    unregister_adapter("sq-sgd")
    unregister_optimizer("sq-sgd")


def test_ones_own_optimizer_and_adapter_are_audited_by_run(tmp_path, registered):
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer(registered)
    result = run(RunConfig(out=str(tmp_path / "mine"), optimizer="sq-sgd", **TINY))
    record = RunRecord.load(result.run_dir)
    assert record.manifest["estimator"] == {"name": "sq-sgd", "target": "gradient_second_moment",
                                            "scale": "EMA(0.9) of g^2"}  # fmt: skip
    assert record.snapshot_steps
    # the stored curvature is the EMA of the squared minibatch gradients: positive, and 0 nowhere a
    # gradient was ever non-zero
    last = record.snapshot(record.snapshot_steps[-1])
    assert all(np.all(f["curvature"] >= 0) and np.any(f["curvature"] > 0) for f in last.values())
    ids = {v["id"] for v in analyze_record(record)["verdicts"]}
    assert "agreement.shape" in ids and "trust_region.binding" not in ids


def test_a_built_in_optimizer_cannot_be_unregistered():
    with pytest.raises(ValueError, match="built in"):
        unregister_optimizer("adam")
