"""Each variant really changes what it claims, checked in the run records a study writes.

Setup: the teacher problem, full batch (batch = train = probe = 64 examples), float64, no weight
decay, a snapshot with the exact diagonal Hessian h after every step. Then the probe batch IS the
minibatch, so the oracle's curvature at step t must equal the snapshot h of step t-1 (same
weights, same examples); and every filter/precision identity can be checked step by step.
"""

import numpy as np
import pytest

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.study import load_baselines, run_study, study_from_mapping
from arturo_diag.study.aggregate import collect, summarize
from arturo_diag.study.findings import study_findings

SETUP = {
    "model": "mlp",
    "dataset": "teacher",
    "steps": 8,
    "batch_size": 64,
    "train_size": 64,
    "probe_size": 64,
    "every": 1,
    "reference": "exact",
    "oracle_every": 1,
    "dtype": "float64",
    "weight_decay": 0.0,
    "samples": 16,
}
VARIANTS = [
    "faithful",
    "fixed-eta:0.5",
    "coupled-kl",
    "no-drift",
    "oracle-exact",
    "oracle-hutchinson",
    "exact-dual",
    "sgd",
]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("effects")
    study = study_from_mapping({"study": {"seeds": [0], "variants": VARIANTS}, "setups": {"t": SETUP}})
    result = run_study(study, root, workers=0, render=False)
    assert [o.status for o in result.outcomes] == ["complete"] * len(VARIANTS)
    return {o.spec.variant.name: RunRecord.load(o.spec.config.out) for o in result.outcomes}


def flat(record, step, field):
    snapshot = record.snapshot(step)
    return np.concatenate([snapshot[name][field].ravel() for name in record.parameters])


def rel(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def test_fixed_eta_never_solves_the_dual(records):
    fixed, faithful = records["fixed-eta:0.5"].steps, records["faithful"].steps
    assert (fixed["iterations"] == 0).all() and (fixed["eta"] == 0.5).all()
    assert (faithful["iterations"] > 0).any() and (faithful["eta"] != 0.5).all()  # the check can fail
    assert records["fixed-eta:0.5"].config["optimizer"]["fixed_eta"] == 0.5


def test_oracle_exact_steps_use_the_reference_curvature(records):
    for name, expect_exact in (("oracle-exact", True), ("oracle-hutchinson", False), ("faithful", False)):
        record = records[name]
        errors = [rel(flat(record, t, "curvature"), flat(record, t - 1, "h_exact")) for t in record.snapshot_steps[1:]]
        if expect_exact:
            assert max(errors) < 1e-10, errors
        else:
            assert min(errors) > 1e-3, (name, errors)
    # Hutchinson is an estimate of the same h: far closer to it than the filter's a
    hutchinson = records["oracle-hutchinson"]
    faithful = records["faithful"]
    t = hutchinson.snapshot_steps[-1]
    assert rel(flat(hutchinson, t, "curvature"), flat(hutchinson, t - 1, "h_exact")) < rel(
        flat(faithful, t, "curvature"), flat(faithful, t - 1, "h_exact")
    )


def precision_identity_errors(record):
    """Largest relative error of the coupled and of the decoupled precision update at every step."""
    optimizer = record.config["optimizer"]
    rho, lam, nu = optimizer["reg_weight"], optimizer["prior_prec"], optimizer["nu"]
    c = rho * lam
    eta = record.steps.set_index("step")["eta"]
    coupled, decoupled = [], []
    for before, after in zip(record.snapshot_steps[:-1], record.snapshot_steps[1:]):
        pi_before, pi_after = flat(record, before, "precision"), flat(record, after, "precision")
        a, e = flat(record, after, "curvature"), float(eta[after])
        coupled.append(np.max(np.abs(pi_after - (a + c + e * pi_before) / (rho + e)) / np.abs(pi_after)))
        decoupled.append(np.max(np.abs(pi_after - (a + c + nu * pi_before) / (rho + nu)) / np.abs(pi_after)))
    return max(coupled), max(decoupled)


def test_coupled_kl_uses_the_coupled_precision_update(records):
    coupled_err, decoupled_err = precision_identity_errors(records["coupled-kl"])
    assert coupled_err < 1e-10 < decoupled_err
    coupled_err, decoupled_err = precision_identity_errors(records["faithful"])
    assert decoupled_err < 1e-10 < coupled_err


def test_no_drift_never_inflates_the_filter_covariance(records):
    def largest_increase(record):
        steps = record.snapshot_steps
        return max(
            float(np.max(flat(record, b, "filter_cov_aa") - flat(record, a, "filter_cov_aa")))
            for a, b in zip(steps[:-1], steps[1:])
        )

    assert largest_increase(records["no-drift"]) <= 1e-15  # q = 0: plain RLS, P_aa only shrinks
    drift = records["faithful"].config["optimizer"]["dynamic_model_noise"]
    assert records["no-drift"].config["optimizer"]["dynamic_model_noise"] == 0.0 < drift
    assert largest_increase(records["faithful"]) > 0.5 * drift


def test_exact_dual_meets_the_bound_when_binding(records):
    for name in ("exact-dual", "faithful"):
        record = records[name]
        joined = record.steps.set_index("step").join(record.snapshots.set_index("step")[["kl0_ratio", "eta_star"]])
        binding = joined[joined["kl0_ratio"] > 1.0]
        assert len(binding) == len(joined)  # the trust region binds at every step of this setup
        off = np.abs(binding["kl_ratio"] - 1.0)
        if name == "exact-dual":
            assert off.max() < 1e-6
            assert np.allclose(binding["eta"], binding["eta_star"], rtol=1e-6)
        else:
            assert off.max() > 0.1  # the coarse bisection misses the bound


def test_baseline_runs_are_the_baseline_optimizer_with_the_recorded_hyperparameters(records):
    sgd = records["sgd"]
    values = load_baselines().values["sgd"]
    assert sgd.config["optimizer"]["optimizer"] == "sgd"
    assert sgd.manifest["optimizer"]["name"] == "SGD"
    assert (
        sgd.manifest["optimizer"]["lr"] == values["lr"] and sgd.manifest["optimizer"]["momentum"] == values["momentum"]
    )
    assert sgd.snapshot_steps == []  # no curvature state to compare
    assert records["faithful"].manifest["optimizer"]["name"] == "Arturo"


def test_guarded_clamps_exactly_the_negative_curvature_estimates(tmp_path):
    # Small batches, a loose filter and a wide posterior: a few curvature estimates turn negative.
    setup = {
        "model": "mlp",
        "dataset": "teacher",
        "steps": 12,
        "batch_size": 16,
        "train_size": 64,
        "probe_size": 64,
        "every": 1,
        "reference": "exact",
        "dtype": "float64",
        "weight_decay": 0.0,
        "start_filter_cov": 1.0,
        "measurement_noise": 0.01,
        "var_init": 1.0,
    }
    study = study_from_mapping({"study": {"seeds": [0], "variants": ["faithful", "guarded"]}, "setups": {"g": setup}})
    result = run_study(study, tmp_path, workers=0, render=False)
    faithful, guarded = (RunRecord.load(o.spec.config.out) for o in result.outcomes)
    tiny = np.finfo(np.float64).tiny

    def negatives(record):
        return [int(np.count_nonzero(flat(record, t, "curvature") < tiny)) for t in record.snapshot_steps]

    assert sum(negatives(faithful)) > 0  # otherwise this setup no longer tests the guard
    assert guarded.steps["guard_acted"].tolist() == negatives(guarded)
    assert (faithful.steps["guard_acted"] == 0).all()
    assert guarded.manifest["optimizer"]["guard"] is True and faithful.manifest["optimizer"]["guard"] is False
    data = collect(tmp_path)
    texts = [f["text"] for f in study_findings(data, summarize(data))]
    assert (
        f"guarded: the guard clamped {sum(negatives(guarded))} coordinate-steps of negative curvature in 1 of 1 seeds."
        in texts
    )
