"""The aggregate report of a study, on run records with known numbers (written directly, no training)."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from records import write_record
from scipy import stats

from arturo_diag.diagnostics.io import atomic_write_text
from arturo_diag.errors import RecordError
from arturo_diag.study import expand_grid, is_study_dir, render_study, study_from_mapping, study_to_toml
from arturo_diag.study.aggregate import CURVE_COLUMNS, RUN_COLUMNS
from arturo_diag.training.config import config_to_toml

SEEDS = [0, 1, 2, 3, 4]
FAITHFUL = [0.930, 0.925, 0.931, 0.928, 0.933]
FIXED = [0.921, 0.919, 0.925, 0.916, 0.926]  # about 0.8 points lower in every seed
ADAM = [0.935, 0.920, 0.928, 0.930, 0.929]  # noise around faithful
SGD = [0.900, 0.905, 0.899, 0.902, 0.904]
ACCURACY = {"faithful": FAITHFUL, "fixed-eta:1.0": FIXED, "no-drift": FAITHFUL, "adam": ADAM, "sgd": SGD}


def _curvature(rng, shape, t):
    """a = 1.1 h, a filter variance of 1e-4 and a precision of 100 around h ~ U(0.5, 2)."""
    h = rng.uniform(0.5, 2.0, size=shape)
    return h, {"curvature": 1.1 * h, "filter_cov_aa": np.full(shape, 1e-4), "precision": np.full(shape, 100.0)}


def write_run(spec, accuracy, train=None):
    """A complete run record of two epochs ending at ``accuracy`` (test; train accuracy ``train``, by
    default the same), with one snapshot for arTuRO runs."""
    arturo = spec.variant.family == "arturo"
    eta = spec.config.fixed_eta if spec.config.fixed_eta is not None else 0.254
    rows = []
    for step in (1, 2, 3, 4):
        row = {"step": step, "epoch": 1 + (step > 2), "loss": 2.0 / step}
        if arturo:
            row.update(eta=eta, iterations=0 if spec.config.fixed_eta is not None else 1, kl_ratio=0.5, kl_bound=0.08)
        rows.append(row)
    epochs = [
        {
            "epoch": epoch,
            "step": 2 * epoch,
            "train_loss": 1.0 / epoch,
            "train_accuracy": acc if train is None else train - 0.1 * (epoch == 1),
            "test_loss": 1.5 - acc,
            "test_accuracy": acc,
        }
        for epoch, acc in ((1, accuracy - 0.1), (2, accuracy))
    ]
    write_record(
        spec.config.out,
        arrays=_curvature,
        steps=rows,
        config=config_to_toml(spec.config.resolved()),
        parameters={"fc.weight": (10, 3), "fc.bias": (10,)},
        var_init=None,
        reference="exact" if arturo else "none",
        every=4,
        seed=spec.seed,
        epochs=epochs,
        finish={},
        scalars=lambda row, t: {"kl_bound": row["kl_bound"], "eta": row["eta"], "reference": "exact"},
    )


def make_study(root, *, setup=None, missing=(), accuracy=None, seeds=None, train=None):
    """A study whose runs end at planted final accuracies: ``accuracy`` variant -> one test accuracy
    per seed of ``seeds`` (default ACCURACY, SEEDS); ``train`` variant -> train accuracies (default
    the test accuracies)."""
    accuracy, seeds, train = accuracy or ACCURACY, seeds or SEEDS, train or {}
    data = {
        "study": {"name": "known", "seeds": seeds, "variants": list(accuracy)},
        "setups": {"fmnist": setup or {"model": "fashion_cnn", "dataset": "fashion_mnist", "epochs": 2}},
    }
    study = study_from_mapping(data)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "study.toml", study_to_toml(study))
    for spec in expand_grid(study, root):
        if (spec.variant.name, spec.seed) not in missing:
            i = seeds.index(spec.seed)
            planted = train.get(spec.variant.name)
            write_run(spec, accuracy[spec.variant.name][i], None if planted is None else planted[i])
    return study


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("known") / "study"
    make_study(root)
    return render_study(root)


def finding(report, fragment):
    texts = [f["text"] for f in report.findings if fragment in f["text"]]
    assert len(texts) == 1, (fragment, [f["text"] for f in report.findings])
    return texts[0]


def test_findings_in_words_carry_the_paired_numbers(rendered):
    d = np.array(FIXED) - np.array(FAITHFUL)
    p = stats.ttest_rel(FIXED, FAITHFUL).pvalue
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5) * 100
    text = finding(rendered, "Fixing eta at 1.0")
    low, high = (d.mean() - half / 100) * 100, (d.mean() + half / 100) * 100
    assert text == (  # issue 11: the verdict's words (estimate, 95 % CI, seeds per direction) replace "x +- y"
        f"Fixing eta at 1.0 (trust region off, no dual solve) lowers test accuracy by "
        f"{abs(d.mean()) * 100:.2f} points (95 % CI [{low:+.2f}, {high:+.2f}] points; lower in 5 of 5 seeds; "
        f"p = {p:.2g})."
    )
    assert "0.80 points (95 % CI [-1.12, -0.48] points" in text
    assert "gives exactly the test accuracy of faithful arTuRO" in finding(rendered, "Removing the filter's drift")
    adam = finding(rendered, "Adam (lr 0.001")
    assert "inconclusive (95 % CI [" in adam and "lower in 3 of 5 seeds, higher in 2" in adam
    sgd = finding(rendered, "SGD with momentum")
    assert "points below faithful arTuRO" in sgd and f"p = {stats.ttest_rel(SGD, FAITHFUL).pvalue:.2g}" in sgd
    assert "never solved the dual" in finding(rendered, "fixed-eta:1.0 never")
    assert "smallest possible p = 0.0625" in finding(rendered, "Wilcoxon")
    baseline = finding(rendered, "Baseline hyperparameters")
    assert "the authors' tuned settings for the Fashion-MNIST CNN" in baseline  # issue 11: ARTURO.md's
    assert [f["severity"] for f in rendered.findings if f["text"] == baseline] == ["warning"]
    assert "93.01" in finding(rendered, "The paper reports")


def test_study_json_holds_every_number(rendered):
    data = json.loads(rendered.json.read_text())
    assert data["format"] == "arturo-diag-study/1" and data["counts"] == {
        "total": 25,
        "complete": 25,
        "failed": 0,
        "damaged": 0,
        "missing": 0,
        "incomplete": 0,
        "stale": 0,
    }
    block = data["results"]["fmnist"]
    faithful = next(e for e in block["summary"] if e["variant"] == "faithful")
    assert faithful["test_accuracy"]["mean"] == pytest.approx(np.mean(FAITHFUL), abs=1e-12)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(FAITHFUL), scale=stats.sem(FAITHFUL))
    assert (faithful["test_accuracy"]["ci_low"], faithful["test_accuracy"]["ci_high"]) == pytest.approx(
        (low, high), rel=1e-12
    )
    comparison = next(c for c in block["comparisons"] if c["variant"] == "adam" and c["metric"] == "test_accuracy")
    assert comparison["p_t"] == pytest.approx(stats.ttest_rel(ADAM, FAITHFUL).pvalue, rel=1e-12)
    assert comparison["p_wilcoxon"] == pytest.approx(stats.wilcoxon(ADAM, FAITHFUL).pvalue, rel=1e-12)
    holm = [c["p_t_holm"] for c in block["comparisons"] if c["metric"] == "test_accuracy"]
    assert all(h is None or 0 <= h <= 1 for h in holm)
    table = {row["optimizer"]: row for row in block["paper_table"]}
    assert list(table) == list(ACCURACY)
    assert table["faithful"]["paper_percent"] == 93.01 and table["sgd"]["paper_percent"] == 92.84
    assert table["fixed-eta:1.0"]["paper_percent"] is None
    assert table["sgd"]["test_accuracy_percent"] == pytest.approx(100 * np.mean(SGD))
    curvature = faithful["curvature"]
    assert curvature["agreement_relative_error"] == pytest.approx(0.1, rel=1e-9)  # a = 1.1 h
    assert (
        curvature["beats_constant_seeds"] == 5 and curvature["calibration_coverage"] == 0.0
    )  # |a-h| >= 0.05 > 2 sqrt(1e-4)
    assert data["setups"]["fmnist"]["baselines_source"].startswith("the authors' tuned settings")


def test_tables_and_documents(rendered):
    runs = pd.read_csv(rendered.runs_csv)
    assert list(runs.columns) == list(RUN_COLUMNS) and len(runs) == 25
    assert set(runs.status) == {"complete"}
    assert runs[runs.variant == "sgd"].agreement_relative_error.isna().all()
    curves = pd.read_csv(rendered.curves_csv)
    assert list(curves.columns) == list(CURVE_COLUMNS) and len(curves) == 25 * 2
    markdown = rendered.markdown.read_text()
    assert "| optimizer | test accuracy (%) | ± 95 % CI | seeds | paper (%) |" in markdown
    assert f"| arTuRO | {100 * np.mean(FAITHFUL):.2f} |" in markdown
    assert f"| arTuRO, fixed-eta:1.0 | {100 * np.mean(FIXED):.2f} |" in markdown and "| SGD | " in markdown
    assert "![Learning curves" in markdown and (rendered.study_dir / "figures" / "fmnist_curves.png").is_file()
    html = rendered.html.read_text()
    assert html.count("data:image/png;base64,") == 4  # curves, eta, accuracy, estimates: embedded
    assert not re.search(r'src="(?!data:)', html)  # self-contained: nothing loaded from elsewhere
    assert "the authors&#x27; tuned settings" in html


def test_rerendering_gives_identical_files(rendered):
    files = sorted(p for p in rendered.study_dir.rglob("*") if p.is_file() and "runs" not in p.parts)
    before = {p: p.read_bytes() for p in files}
    render_study(rendered.study_dir)
    assert {p: p.read_bytes() for p in files} == before


def test_missing_runs_are_reported_not_counted(tmp_path):
    make_study(tmp_path / "s", missing={("adam", 3), ("faithful", 0)})
    report = render_study(tmp_path / "s", figures=False)
    data = report.data
    assert data["counts"]["missing"] == 2 and data["counts"]["complete"] == 23
    adam = next(
        c for c in data["results"]["fmnist"]["comparisons"] if c["variant"] == "adam" and c["metric"] == "test_accuracy"
    )
    assert adam["n"] == 3 and adam["seeds"] == [1, 2, 4]
    assert "2 of 25 runs are not finished" in finding(report, "not finished")
    assert "Runs not in the statistics" in report.markdown.read_text()


def test_is_study_dir_and_errors(tmp_path, rendered):
    assert is_study_dir(rendered.study_dir)
    run_dir = next(rendered.study_dir.glob("runs/fmnist/faithful/seed0"))
    assert not is_study_dir(run_dir) and not is_study_dir(tmp_path / "nothing")
    with pytest.raises(RecordError, match="not a study directory"):
        render_study(run_dir)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.toml").write_text("[study]\nseeds = 3\n")
    with pytest.raises(RecordError, match="unusable study file"):
        render_study(tmp_path / "broken")
