"""docs/metrics.md documents every verdict id the analysis can emit and every top-level key of
metrics.json (read from the registry and from a real analysis, not from a list kept here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from records import write_record

from arturo_diag import quantities
from arturo_diag.quantities.analysis import analyze_record
from arturo_diag.training.config import RunConfig, config_to_toml

DOC = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")


def _arrays(rng, shape, t):
    h = rng.uniform(0.5, 2.0, size=shape)
    return h, {"curvature": 1.1 * h, "filter_cov_aa": np.full(shape, 1e-4), "precision": np.full(shape, 100.0)}


def test_every_verdict_and_top_level_key_is_documented(tmp_path):
    run_dir = tmp_path / "run"
    config = config_to_toml(RunConfig(out=str(run_dir)).resolved())
    metrics = analyze_record(write_record(run_dir, arrays=_arrays, config=config, finish={}))
    ids = {v["id"] for v in metrics["verdicts"]}
    assert {"agreement.beats_constant", "agreement.scale", "agreement.shape", "lag.identified"} <= ids
    for verdict in metrics["verdicts"]:
        assert f"`{verdict['id']}`" in DOC, verdict["id"]
        assert verdict["outcome"] in ("yes", "no", "inconclusive", "not_applicable")
        assert set(verdict) >= {"id", "outcome", "estimate", "ci_low", "ci_high", "rule", "text"}
    for key in metrics:
        assert re.search(rf"^{key}\b", DOC, flags=re.M), key
    for quantity in quantities.QUANTITIES:
        assert f"quantities/{quantity.name}.py" in DOC, quantity.name
