"""The spectrum instrument (one snapshot's trace, extreme eigenvalues, SLQ and Frobenius terms)
against the dense autograd Hessian of a tiny float64 model: exact where the budget makes it exact,
within its standard errors where it is a Monte Carlo estimate; and its record round trip."""

import math

import numpy as np
import pytest
import torch
from test_spectrum import dense_hessian, tanh_case

from arturo_diag.curvature.spectrum_instrument import SpectrumSettings, spectrum_snapshot
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.diagnostics.record_writer import RecordWriter

# Hutch++ with a budget of 3P (P = 64) sketches all of R^P: exact; Lanczos with P steps: exact
EXACT_EIG = SpectrumSettings(probes=400, hutchpp=10_000, eig_tol=0.0, eig_maxiter=10_000, slq_steps=10_000)


@pytest.fixture(scope="module")
def measured():
    model, loss, x, y = tanh_case()
    names = [n for n, _ in model.named_parameters()]
    scalars, arrays = spectrum_snapshot(model, loss, x, y, names, seed=3, settings=EXACT_EIG)
    dense = dense_hessian(model, loss, x, y).numpy()
    sizes = [p.numel() for p in model.parameters()]
    return scalars, arrays, dense, sizes


def test_eigenvalues_and_hutchpp_trace_are_exact_on_a_tiny_model(measured):
    scalars, arrays, dense, _ = measured
    eig = np.linalg.eigvalsh(dense)
    assert math.isclose(scalars["spectrum_trace_hutchpp"], np.trace(dense), rel_tol=0, abs_tol=1e-8)
    assert scalars["spectrum_trace_hutchpp_se"] == 0.0
    for i in range(3):
        assert math.isclose(scalars[f"spectrum_top_{i + 1}"], eig[-1 - i], rel_tol=0, abs_tol=1e-8)
    assert math.isclose(scalars["spectrum_min"], eig[0], rel_tol=0, abs_tol=1e-8)
    assert scalars["spectrum_converged"] is True
    # SLQ with as many Lanczos steps as P: the Ritz values are H's eigenvalues, the weights sum to 1
    nodes, weights = arrays["ritz_nodes"], arrays["ritz_weights"]
    for row, w in zip(nodes, weights):
        kept = ~np.isnan(row)
        assert math.isclose(float(np.sum(w[kept])), 1.0, abs_tol=1e-10)
        assert np.all(np.min(np.abs(row[kept][:, None] - eig[None, :]), axis=1) < 1e-6)


def test_hutchinson_trace_and_frobenius_terms_are_unbiased_within_their_se(measured):
    scalars, arrays, dense, sizes = measured
    trace, se = scalars["spectrum_trace"], scalars["spectrum_trace_se"]
    assert abs(trace - np.trace(dense)) < 4 * se and se > 0
    f2, f2_se = scalars["spectrum_frobenius_sq"], scalars["spectrum_frobenius_sq_se"]
    assert abs(f2 - np.sum(dense**2)) < 4 * f2_se and f2_se > 0
    # per parameter tensor: E ||(Hz)_block||^2 = the squared norm of H's rows of that block
    rows = arrays["row_sq"]
    assert rows.shape == (EXACT_EIG.probes, len(sizes))
    edges = np.cumsum([0, *sizes])
    for j in range(len(sizes)):
        truth = np.sum(dense[edges[j] : edges[j + 1], :] ** 2)
        column = rows[:, j]
        assert abs(column.mean() - truth) < 4 * column.std(ddof=1) / math.sqrt(column.size) + 1e-12
    assert np.allclose(rows.sum(1).mean(), f2)
    assert np.allclose(arrays["quad"].mean(), trace)


def test_the_se_is_honest_over_seeds():
    """Over 200 seeds of 8 probes, |estimate - truth| < 1.96 SE about 95 % of the time (the SE of
    a mean of 8 draws: t-quantiles make coverage a little lower than 95 %)."""
    model, loss, x, y = tanh_case()
    names = [n for n, _ in model.named_parameters()]
    dense = dense_hessian(model, loss, x, y).numpy()
    settings = SpectrumSettings(probes=8, hutchpp=4, top_k=1, slq_probes=1, slq_steps=2)
    hits = 0
    for seed in range(200):
        s, _ = spectrum_snapshot(model, loss, x, y, names, seed=seed, settings=settings)
        hits += abs(s["spectrum_frobenius_sq"] - np.sum(dense**2)) < 1.96 * s["spectrum_frobenius_sq_se"]
    assert 0.80 <= hits / 200 <= 0.99


def test_same_seed_same_numbers():
    model, loss, x, y = tanh_case()
    names = [n for n, _ in model.named_parameters()]
    settings = SpectrumSettings(probes=4, hutchpp=6, top_k=1, slq_probes=1, slq_steps=3)
    first = spectrum_snapshot(model, loss, x, y, names, seed=5, settings=settings)
    second = spectrum_snapshot(model, loss, x, y, names, seed=5, settings=settings)
    assert first[0] == second[0]
    assert all(np.array_equal(first[1][k], second[1][k], equal_nan=True) for k in first[1])


def test_instrument_arrays_round_trip_through_the_record(tmp_path):
    writer = RecordWriter(tmp_path / "r", "monitor", "[diagnostics]\nevery = 1\n", {"w": (3,)}, optimizer={"lr": 0.1})
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    extras = {"spectrum/quad": np.arange(4.0), "spectrum/row_sq": np.ones((4, 2))}
    writer.add_snapshot(1, {"spectrum_trace": 1.5}, {"w": {"curvature": torch.ones(3)}}, extras)
    writer.add_step({"step": 2, "loss": 1.0, "kl_bound": 0.1})
    writer.add_snapshot(2, {}, {"w": {"curvature": torch.ones(3)}})
    with pytest.raises(ValueError, match="INSTRUMENT/FIELD"):
        writer.add_snapshot(3, {}, {"w": {"curvature": torch.ones(3)}}, {"Bad Key": np.ones(1)})
    writer.finish()
    record = RunRecord.load(tmp_path / "r")
    got = record.instrument_arrays(1)
    assert set(got) == set(extras) and np.array_equal(got["spectrum/row_sq"], np.ones((4, 2)))
    assert record.instrument_arrays(2) == {}
    assert float(record.snapshots.loc[0, "spectrum_trace"]) == 1.5
    # a file that pickles something is refused, never unpickled
    path = tmp_path / "r" / "instruments" / "step_0000001.npz"
    np.savez(path, **{"spectrum/quad": np.array([object()], dtype=object)})
    with pytest.raises(Exception, match="instrument arrays|step_0000001"):
        record.instrument_arrays(1)


def test_instrument_steps_in_record_json_are_checked(tmp_path):
    import json

    from arturo_diag.errors import RecordError

    writer = RecordWriter(tmp_path / "r", "monitor", "[diagnostics]\nevery = 1\n", {"w": (3,)}, optimizer={"lr": 0.1})
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    writer.add_snapshot(1, {}, {"w": {"curvature": torch.ones(3)}})
    writer.finish({"instrument_steps": {"spectrum": [1]}})
    path = tmp_path / "r" / "record.json"
    assert RunRecord.load(tmp_path / "r").manifest["instrument_steps"] == {"spectrum": [1]}
    manifest = json.loads(path.read_text())
    for bad in ({"spectrum": [1.5]}, {"spectrum": 1}, [1], {"spectrum": [-1]}):
        manifest["instrument_steps"] = bad
        path.write_text(json.dumps(manifest))
        with pytest.raises(RecordError, match="instrument_steps"):
            RunRecord.load(tmp_path / "r")
