"""The spectrum quantity (issue 12, item 2 and 4): the diagonal's share ||diag H|| / ||H||_F, whole
and per layer, from a record written with the real spectrum instrument on a tiny float64 model,
against the dense autograd Hessian; the verdict ``spectrum.diag_share`` on planted per-probe terms."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from arturo_diag.curvature.spectrum_instrument import SpectrumSettings, spectrum_snapshot
from arturo_diag.diagnostics.record import RecordWriter
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.quantities.spectrum import THRESHOLD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "curvature"))
from test_spectrum import dense_hessian, tanh_case  # noqa: E402


def _verdict(metrics):
    return next(v for v in metrics["verdicts"] if v["id"] == "spectrum.diag_share")


def _write(path, shapes, extras, scalars, h):
    writer = RecordWriter(path, "monitor", "[diagnostics]\nevery = 1\n", shapes, optimizer={"lr": 0.1})
    writer.add_step({"step": 1, "loss": 1.0, "kl_bound": 0.1})
    arrays = {
        n: {"curvature": np.full(shape, 0.1), "filter_cov_aa": np.full(shape, 0.01)} for n, shape in shapes.items()
    }
    for n in arrays:  # without h: a Hutchinson reference only
        arrays[n].update({"h_exact": h[n]} if h is not None else {"h_hutchinson": np.ones(shapes[n]),
                                                                   "h_hutchinson_se": np.ones(shapes[n])})  # fmt: skip
    reference = {"reference": "exact", "exact_method": "hvp"} if h is not None else {"reference": "hutchinson"}
    writer.add_snapshot(1, {"kl_bound": 0.1, **reference, **scalars}, arrays, extras)
    writer.finish()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, loss, x, y = tanh_case()
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    scalars, extras = spectrum_snapshot(model, loss, x, y, names, seed=0, settings=SpectrumSettings(probes=400))
    dense = dense_hessian(model, loss, x, y).numpy()
    sizes = [p.numel() for _, p in named]
    edges = np.cumsum([0, *sizes])
    diag = np.diag(dense)
    h = {n: diag[edges[j] : edges[j + 1]].reshape(p.shape) for j, (n, p) in enumerate(named)}
    shapes = {n: tuple(p.shape) for n, p in named}
    path = _write(tmp_path_factory.mktemp("spectrum") / "run", shapes,
                  {f"spectrum/{k}": v for k, v in extras.items()}, scalars, h)  # fmt: skip
    return analyze_record(path), dense, edges, names


def test_share_whole_and_per_layer_match_the_dense_hessian(tiny):
    metrics, dense, edges, names = tiny
    final = metrics["spectrum"]["final"]
    truth = np.linalg.norm(np.diag(dense)) / np.linalg.norm(dense)
    assert abs(final["diag_share"] - truth) < 4 * final["diag_share_se"]
    assert final["diag_share_se"] < 0.05 * truth  # 400 probes: a few % relative error
    assert math.isclose(final["diagonal_norm"], np.linalg.norm(np.diag(dense)), rel_tol=1e-12)
    layers = {}
    for j, name in enumerate(names):
        layers.setdefault(name.rpartition(".")[0], []).append(j)
    assert set(final["layers"]) == set(layers)
    for layer, columns in layers.items():
        rows = np.concatenate([np.arange(edges[j], edges[j + 1]) for j in columns])
        share = np.linalg.norm(np.diag(dense)[rows]) / np.linalg.norm(dense[rows, :])
        got = final["layers"][layer]
        assert abs(got["diag_share"] - share) < 4 * got["diag_share_se"], layer
    verdict = _verdict(metrics)
    assert verdict["ci_low"] <= truth <= verdict["ci_high"]
    assert verdict["outcome"] == ("yes" if verdict["ci_low"] > THRESHOLD else "no" if verdict["ci_high"] < THRESHOLD
                                  else "inconclusive")  # fmt: skip


def test_eigenvalues_and_trace_reach_metrics_and_report_words(tiny):
    metrics, dense, _, _ = tiny
    final = metrics["spectrum"]["final"]
    eig = np.linalg.eigvalsh(dense)
    assert abs(final["top"][0] - eig[-1]) < 1e-3 * abs(eig[-1])  # the instrument asks ARPACK for relative accuracy 1e-3
    assert abs(final["trace"] - np.trace(dense)) < 4 * final["trace_se"]
    texts = [f["text"] for f in metrics["findings"] if f["topic"] == "spectrum"]
    assert any("trace" in t and "top eigenvalues" in t for t in texts)


def _planted(tmp_path, share, spread, probes=32):
    """One parameter of 10 coordinates, ||diag H||^2 = 1, per-probe F2 = (1 / share^2) (1 + spread e_s)."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(probes)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    f2 = (1 + spread * noise) / share**2
    h = {"w": np.full(10, 1 / math.sqrt(10))}
    scalars = {"spectrum_trace": 1.0, "spectrum_trace_se": 0.1, "spectrum_frobenius_sq": float(f2.mean()),
               "spectrum_frobenius_sq_se": 0.0, "spectrum_top_1": 1.0, "spectrum_min": -0.1}  # fmt: skip
    return _write(tmp_path / f"r{share}-{spread}", {"w": (10,)}, {"spectrum/row_sq": f2[:, None]}, scalars, h)


@pytest.mark.parametrize(
    ("share", "spread", "outcome"), [(0.95, 0.05, "yes"), (0.3, 0.05, "no"), (0.71, 0.3, "inconclusive")]
)
def test_verdict_follows_its_interval(tmp_path, share, spread, outcome):
    verdict = _verdict(analyze_record(_planted(tmp_path, share, spread)))
    assert math.isclose(verdict["estimate"], share, rel_tol=1e-9)
    assert verdict["outcome"] == outcome
    assert verdict["ci_low"] < share < verdict["ci_high"]


def test_not_applicable_without_the_instrument_or_the_exact_diagonal(tmp_path):
    shapes = {"w": (3,)}
    without = _write(tmp_path / "none", shapes, None, {}, {"w": np.ones(3)})
    assert _verdict(analyze_record(without))["outcome"] == "not_applicable"
    scalars = {"spectrum_trace": 1.0, "spectrum_top_1": 1.0, "spectrum_min": 0.0}
    no_h = _write(tmp_path / "noh", shapes, {"spectrum/row_sq": np.ones((4, 1))}, scalars, None)
    verdict = _verdict(analyze_record(no_h))
    assert verdict["outcome"] == "not_applicable" and "h_exact" in verdict["text"]


def test_same_record_same_interval(tmp_path):
    first = _verdict(analyze_record(_planted(tmp_path, 0.5, 0.2)))
    (tmp_path / "again").mkdir()
    second = _verdict(analyze_record(_planted(tmp_path / "again", 0.5, 0.2)))
    assert (first["ci_low"], first["ci_high"]) == (second["ci_low"], second["ci_high"])
