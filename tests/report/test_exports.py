"""The long tables metrics_long.csv / .parquet (arturo_diag/report/exports.py, docs/record.md) and a study's
study_long.csv, checked against metrics.json read back and walked here on its own."""

from __future__ import annotations

import builtins
import json
import math

import numpy as np
import pandas as pd
import pytest
from records import write_record as write_run_record

from arturo_diag.diagnostics.io import atomic_write_text
from arturo_diag.diagnostics.record import RecordWriter
from arturo_diag.errors import RecordError
from arturo_diag.quantities.analysis import analyze_record, write_metrics
from arturo_diag.report import exports
from arturo_diag.report.exports import OVERALL, long_table, study_long_table, write_exports
from arturo_diag.report.render import render_report

DOCUMENTED = ["step", "quantity", "layer", "metric", "value"]  # docs/record.md, "metrics_long.csv / .parquet"


@pytest.fixture
def exported(make_record):
    """A record with both references (so agreement.hutchinson_vs_exact and reference_noise exist), its
    metrics.json and long table written as render_report writes them; (run_dir, metrics.json as read)."""
    run_dir = make_record("exported", reference="both")
    metrics = analyze_record(run_dir)
    write_metrics(run_dir, metrics)
    write_exports(run_dir, metrics)
    return run_dir, json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------- metrics.json walked independently
def _series_of(metrics, quantity):
    head, _, tail = quantity.partition(".")
    block = metrics[head][tail] if tail else metrics[head]
    entries = block["snapshots"]
    return entries["snapshots"] if isinstance(entries, dict) else entries  # trust_region nests its list


def _lookup(metrics, step, quantity, layer, metric):
    """The number at (step, quantity, layer, metric), found by descending metrics.json: into
    ``layers[layer]`` where a node has it (or ``overall`` for the whole model when the next key is not
    there), then key by key (list items by position)."""
    (entry,) = [e for e in _series_of(metrics, quantity) if e["step"] == step]
    node = entry
    for part in metric.split("."):
        if isinstance(node, dict):
            if layer != OVERALL and isinstance(node.get("layers"), dict) and layer in node["layers"]:
                node = node["layers"][layer]
            elif layer == OVERALL and part not in node and isinstance(node.get("overall"), dict):
                node = node["overall"]
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _numbers(node, top=True):
    """How many numbers (booleans included, nulls not) a snapshot entry holds, its step left out."""
    if isinstance(node, dict):
        return sum(_numbers(v, False) for k, v in node.items() if not (top and k == "step"))
    if isinstance(node, list):
        return sum(_numbers(v, False) for v in node)
    return int(isinstance(node, (bool, int, float)))


def test_every_value_is_the_number_in_metrics_json(exported):
    run_dir, metrics = exported
    table = pd.read_csv(run_dir / "metrics_long.csv")
    for row in table.itertuples(index=False):
        expected = _lookup(metrics, row.step, row.quantity, row.layer, row.metric)
        if expected is None:
            assert math.isnan(row.value), row
        else:
            assert not isinstance(expected, (dict, list, str)), row
            assert row.value == float(expected), row  # exact: floats round-trip through the CSV
    # and nothing is missing: one row per number of every snapshot series
    series = [
        "agreement",
        "agreement.hutchinson_vs_exact",
        "agreement.reference_noise",
        "movement",
        "calibration",
        "trust_region",
        "health",
        "gauges",
        "noise",
        "spectrum",
    ]
    assert list(dict.fromkeys(table.quantity)) == series
    for quantity in series:
        count = sum(_numbers(entry) for entry in _series_of(metrics, quantity))
        assert int(table[table.quantity == quantity].value.notna().sum()) == count, quantity


def test_known_keys(exported):
    run_dir, metrics = exported
    table = pd.read_csv(run_dir / "metrics_long.csv")
    layers = json.loads((run_dir / "record.json").read_text())["parameters"]
    layer_names = list(dict.fromkeys(info["layer"] for info in layers.values()))
    assert layer_names == ["net.0", "net.2"]

    def value(step, quantity, layer, metric):
        (hit,) = table.loc[
            (table.step == step) & (table.quantity == quantity) & (table.layer == layer) & (table.metric == metric),
            "value",
        ]
        return hit

    snapshots = metrics["agreement"]["snapshots"]
    for i in (0, 3, len(snapshots) - 1):
        entry = snapshots[i]
        for layer in layer_names:
            assert (
                value(entry["step"], "agreement", layer, "estimate.relative_error")
                == (entry["layers"][layer]["estimate"]["relative_error"])
            )
            assert (
                value(entry["step"], "agreement", layer, "scale.rescaled.factor")
                == (entry["layers"][layer]["scale"]["rescaled"]["factor"])
            )
        overall = entry["overall"]
        assert value(entry["step"], "agreement", OVERALL, "estimate.spearman") == overall["estimate"]["spearman"]
        assert value(entry["step"], "agreement", OVERALL, "beats_constant.relative_error") == float(
            overall["beats_constant"]["relative_error"]
        )
    tr = metrics["trust_region"]["snapshots"]["snapshots"][2]
    assert value(tr["step"], "trust_region", OVERALL, "binds") == (1.0 if tr["binds"] else 0.0)
    gauge = metrics["gauges"]["snapshots"][1]
    assert (
        value(gauge["step"], "gauges", "net.2", "radius.radius_median")
        == (gauge["radius"]["layers"]["net.2"]["radius_median"])
    )
    assert value(gauge["step"], "gauges", OVERALL, "kl_bound") == gauge["kl_bound"]
    spectrum = metrics["spectrum"]["snapshots"][-1]
    assert value(spectrum["step"], "spectrum", OVERALL, "top.0") == spectrum["top"][0]
    health = metrics["health"]["snapshots"][-1]
    assert (
        value(health["step"], "health", OVERALL, "variance_collapse.variance_q50")
        == (health["variance_collapse"]["variance_q50"])
    )
    # a null that is a number elsewhere is NaN; one that is null everywhere is left out
    assert snapshots[0]["overall"]["constant"]["spearman"] is None
    assert not (table.metric == "constant.spearman").any()


def test_columns_order_and_one_line_read(exported):
    run_dir, metrics = exported
    table = pd.read_csv(run_dir / "metrics_long.csv")
    assert list(table.columns) == DOCUMENTED
    assert table["value"].dtype == np.float64 and table["step"].dtype == np.int64
    assert not table.duplicated(["step", "quantity", "layer", "metric"]).any()
    assert set(table.layer) == {OVERALL, "net.0", "net.2"}
    steps = [e["step"] for e in metrics["agreement"]["snapshots"]]
    assert list(dict.fromkeys(table.step)) == sorted(steps) == [10, 20, 30, 40, 50, 60]
    order = list(dict.fromkeys(table.quantity))
    for (step, quantity), block in table.groupby(["step", "quantity"], sort=False):
        assert list(dict.fromkeys(block.layer)) == [x for x in (OVERALL, "net.0", "net.2") if x in set(block.layer)]
    keys = list(zip(table.step, [order.index(q) for q in table.quantity]))
    assert keys == sorted(keys)
    # the table in memory (from the analysis, NaN for null) is the one written
    in_memory = long_table(analyze_record(run_dir))
    pd.testing.assert_frame_equal(in_memory, table)


def test_parquet_round_trips_to_the_csv(exported):
    pytest.importorskip("pyarrow")
    run_dir, _ = exported
    from_csv = pd.read_csv(run_dir / "metrics_long.csv")
    from_parquet = pd.read_parquet(run_dir / "metrics_long.parquet")
    pd.testing.assert_frame_equal(from_parquet, from_csv)
    assert len(from_csv) > 1000


def test_without_pyarrow_only_the_csv(tmp_path, exported, monkeypatch):
    run_dir, metrics = exported
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    assert not exports.parquet_available()
    out = tmp_path / "bare"
    atomic_write_text(out / "metrics_long.parquet", "stale")  # an earlier render's, with pyarrow
    written = write_exports(out, metrics)
    assert written == [out / "metrics_long.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics_long.csv"]
    assert (out / "metrics_long.csv").read_bytes() == (run_dir / "metrics_long.csv").read_bytes()


def test_hand_made_metrics_booleans_nulls_text_and_order():
    metrics = {
        "format": "arturo-diag-metrics/1",
        "run": {"layers": ["a", "b"]},
        "q": {
            "final": {"step": 9, "overall": {"x": 99.0}},
            "snapshots": [
                {
                    "step": 20,
                    "reference": "h_exact",
                    "overall": {"x": True, "y": None, "t": "text", "w": None},
                    "layers": {"b": {"x": 1, "y": 2.5}, "a": {"x": False, "y": float("nan")}},
                },
                {"step": 10, "overall": {"x": 0.5, "y": 1.0, "t": None, "w": None}, "layers": {"a": None}},
            ],
            "sub": {"snapshots": [{"step": 10, "overall": {"z": 3}, "layers": {"b": {"z": 4}}}]},  # q.sub
        },
        "lagish": {"curves": [1, 2, 3]},
    }
    table = long_table(metrics)
    expected = pd.DataFrame(
        {
            "step": [10, 10, 10, 10, 20, 20, 20, 20, 20, 20],
            "quantity": ["q", "q", "q.sub", "q.sub"] + ["q"] * 6,
            "layer": [OVERALL, OVERALL, OVERALL, "b", OVERALL, OVERALL, "a", "a", "b", "b"],
            "metric": ["x", "y", "z", "z", "x", "y", "x", "y", "x", "y"],
            "value": [0.5, 1.0, 3.0, 4.0, 1.0, math.nan, 0.0, math.nan, 1.0, 2.5],
        }
    )
    pd.testing.assert_frame_equal(table, expected)
    with pytest.raises(RecordError, match=r"layer is named '\(all\)'"):
        long_table({"run": {"layers": [OVERALL]}, "q": metrics["q"]})
    clash = {"q": {"snapshots": [{"step": 1, "layers": {OVERALL: {"x": 1.0}}}]}}
    with pytest.raises(RecordError, match="label of the whole model"):
        long_table(clash)
    assert list(long_table({"run": {}}).columns) == DOCUMENTED


def test_render_report_writes_them_and_overwrite_removes_them(make_record):
    run_dir = make_record("rendered", every=30)
    result = render_report(run_dir)
    names = ["metrics_long.csv", "metrics_long.parquet"] if exports.parquet_available() else ["metrics_long.csv"]
    assert result.exports == [run_dir / name for name in names]
    expected = long_table(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")))
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics_long.csv"), expected)
    RecordWriter(run_dir, "compare", "", {"w": (2,)}, overwrite=True).close()
    assert not (run_dir / "metrics_long.csv").exists() and not (run_dir / "metrics_long.parquet").exists()


# ----------------------------------------------------------------------------------------------- study
def _curvature(rng, shape, t):
    h = rng.uniform(0.5, 2.0, size=shape)
    return h, {"curvature": 1.1 * h, "filter_cov_aa": np.full(shape, 1e-4), "precision": np.full(shape, 100.0)}


def test_study_long_has_one_block_per_run(tmp_path):
    from arturo_diag.study import expand_grid, render_study, study_from_mapping, study_to_toml
    from arturo_diag.training.config import config_to_toml

    root = tmp_path / "study"
    data = {
        "study": {"name": "long", "seeds": [0, 1], "variants": ["faithful", "fixed-eta:1.0"]},
        "setups": {"fmnist": {"model": "fashion_cnn", "dataset": "fashion_mnist", "epochs": 2}},
    }
    study = study_from_mapping(data)
    root.mkdir()
    atomic_write_text(root / "study.toml", study_to_toml(study))
    specs = expand_grid(study, root)
    for k, spec in enumerate(specs):
        eta = 1.0 if spec.config.fixed_eta is not None else 0.254
        rows = [
            {"step": s, "epoch": 1 + (s > 4), "loss": 2.0 / s, "eta": eta, "iterations": 1, "kl_ratio": 0.5,
             "kl_bound": 0.08}
            for s in range(1, 9)
        ]  # fmt: skip
        epochs = [
            {
                "epoch": e,
                "step": 4 * e,
                "train_loss": 1.0,
                "train_accuracy": 0.9,
                "test_loss": 1.0,
                "test_accuracy": 0.9,
            }
            for e in (1, 2)
        ]
        write_run_record(
            spec.config.out,
            arrays=_curvature,
            steps=rows,
            config=config_to_toml(spec.config.resolved()),
            parameters={"fc.weight": (10, 3), "fc.bias": (10,)},
            var_init=None,
            every=4,
            seed=k,
            epochs=epochs,
            finish={},
            scalars=lambda row, t: {"kl_bound": row["kl_bound"], "eta": row["eta"], "reference": "exact"},
        )
    report = render_study(root, figures=False)
    table = pd.read_csv(root / "study_long.csv")
    assert list(table.columns) == ["variant", "seed", "run", *DOCUMENTED]
    assert report.long[0] == root / "study_long.csv"
    if exports.parquet_available():
        pd.testing.assert_frame_equal(pd.read_parquet(root / "study_long.parquet"), table)
    runs = list(dict.fromkeys(table.run))
    assert runs == [spec.relative_dir for spec in specs] and len(runs) == 4
    for spec in specs:
        block = table[table.run == spec.relative_dir]
        assert block.index.tolist() == list(range(block.index[0], block.index[-1] + 1))  # one contiguous block
        assert set(block.variant) == {spec.variant.name} and set(block.seed) == {spec.seed}
        assert f"/{spec.variant.name.replace(':', '=')}/seed{spec.seed}" in spec.relative_dir
        metrics = analyze_record(spec.config.out)  # the run's own numbers, analysed again
        own = json.loads(json.dumps(metrics, default=float).replace("NaN", "null"))
        (entry,) = [e for e in own["agreement"]["snapshots"] if e["step"] == 8]
        (hit,) = block.loc[
            (block.step == 8) & (block.layer == "fc") & (block.metric == "estimate.relative_error"), "value"
        ]
        assert hit == entry["layers"]["fc"]["estimate"]["relative_error"]
        pd.testing.assert_frame_equal(
            block[DOCUMENTED].reset_index(drop=True), long_table(metrics).astype({"step": "int64"})
        )
    # study_long_table of nothing: the columns, no rows
    assert list(study_long_table([]).columns) == ["variant", "seed", "run", *DOCUMENTED]
