"""Study verdicts (issue 11): yes / no / inconclusive against faithful, on studies with planted accuracies.

Every expected number is computed here from the planted accuracies with scipy.stats (t interval of
the paired mean difference), never read back from the code under test.
"""

import json
import math

import numpy as np
import pytest
from scipy import stats
from test_study_report import ACCURACY, ADAM, FAITHFUL, FIXED, SEEDS, SGD, make_study

from arturo_diag.study import render_study

MARGIN = 0.0025  # the stated practical margin of test accuracy: 0.25 points


def t_interval(variant, reference):
    d = np.asarray(variant, dtype=float) - np.asarray(reference, dtype=float)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return d.mean(), low, high


def verdict(report, vid):
    found = [v for v in report.data["verdicts"] if v["id"] == vid]
    assert len(found) == 1, (vid, [v["id"] for v in report.data["verdicts"]])
    return found[0]


def finding(report, fragment):
    texts = [f for f in report.findings if fragment in f["text"]]
    assert len(texts) == 1, (fragment, [f["text"] for f in report.findings])
    return texts[0]


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts") / "study"
    accuracy = dict(ACCURACY, **{"exact-dual": [a + e for a, e in zip(FAITHFUL, [4e-4, -3e-4, 2e-4, -1e-4, 3e-4])]})
    make_study(root, accuracy=accuracy)
    return render_study(root, figures=False)


def test_lower_in_every_seed_is_a_difference(five):
    mean, low, high = t_interval(FIXED, FAITHFUL)
    assert high < -MARGIN  # the planted answer: the whole interval beyond the margin
    v = verdict(five, "study.fixed-eta:1.0.test_accuracy")
    assert v["outcome"] == "yes"
    assert (v["estimate"], v["ci_low"], v["ci_high"]) == pytest.approx((mean, low, high), rel=1e-9)
    assert (v["n"], v["seeds_lower"], v["seeds_higher"], v["seeds_equal"]) == (5, 5, 0, 0)
    assert v["margin"] == MARGIN and v["cautions"] == [] and "beyond +-0.0025 (0.25 points)" in v["rule"]
    assert f"95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] points; lower in 5 of 5 seeds" in v["text"]
    sgd = verdict(five, "study.sgd.test_accuracy")
    assert sgd["outcome"] == "yes" and sgd["estimate"] == pytest.approx(np.mean(SGD) - np.mean(FAITHFUL))


def test_noise_around_faithful_is_inconclusive_with_the_interval(five):
    mean, low, high = t_interval(ADAM, FAITHFUL)
    assert low < -MARGIN < MARGIN < high  # straddles the margin: neither a difference nor an equivalence
    v = verdict(five, "study.adam.test_accuracy")
    assert v["outcome"] == "inconclusive"
    assert (v["ci_low"], v["ci_high"]) == pytest.approx((low, high), rel=1e-9)
    assert (v["seeds_lower"], v["seeds_higher"]) == (3, 2)
    assert v["text"] == (
        # the fashion_cnn setup takes the authors' tuned Adam (ARTURO.md; no weight decay, as they ran it)
        f"Adam (lr 0.00101244, beta1 0.945256, beta2 0.990342, weight_decay 0): test accuracy {100 * mean:+.2f} "
        "points against faithful arTuRO, "
        f"inconclusive (95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] points; lower in 3 of 5 seeds, higher in 2; "
        f"p = {stats.ttest_rel(ADAM, FAITHFUL).pvalue:.2g})."
    )
    assert "no detectable change" not in json.dumps(five.data) and "not distinguishable" not in json.dumps(five.data)


def test_tiny_noise_is_equal_within_the_margin(five):
    exact = [a + e for a, e in zip(FAITHFUL, [4e-4, -3e-4, 2e-4, -1e-4, 3e-4])]
    mean, low, high = t_interval(exact, FAITHFUL)
    assert -MARGIN < low < 0 < high < MARGIN
    v = verdict(five, "study.exact-dual.test_accuracy")
    assert v["outcome"] == "no" and (v["ci_low"], v["ci_high"]) == pytest.approx((low, high), rel=1e-6)
    assert "equal to faithful arTuRO within ±0.25 points" in v["text"]


def test_identical_runs_are_no_with_the_zero_width_caution(five):
    v = verdict(five, "study.no-drift.test_accuracy")
    assert v["outcome"] == "no" and v["cautions"] == ["degenerate"] and v["seeds_equal"] == 5
    assert "has zero width" in v["text"]


def test_loss_verdicts_use_one_percent_of_faithfuls_loss(five):
    loss = [1.5 - a for a in FAITHFUL]  # the planted test loss
    margin = 0.01 * np.mean(loss)
    mean, low, high = t_interval([1.5 - a for a in FIXED], loss)
    assert low < margin < high  # planted: the loss interval straddles its margin
    v = verdict(five, "study.fixed-eta:1.0.test_loss")
    assert v["outcome"] == "inconclusive" and v["margin"] == pytest.approx(margin, rel=1e-12)
    assert (v["estimate"], v["ci_low"], v["ci_high"]) == pytest.approx((mean, low, high), rel=1e-6)
    assert (v["seeds_lower"], v["seeds_higher"]) == (0, 5) and "higher in 5 of 5 seeds" in v["text"]


def test_verdicts_list_in_study_json(five):
    data = json.loads(five.json.read_text())
    variants = [name for name in ACCURACY if name != "faithful"] + ["exact-dual"]
    ids = {f"study.{name}.{metric}" for name in variants for metric in ("test_accuracy", "test_loss")}
    assert {v["id"] for v in data["verdicts"]} == ids and len(data["verdicts"]) == len(ids)
    keys = {"id", "outcome", "estimate", "ci_low", "ci_high", "rule", "text"}
    assert all(keys <= set(v) and v["outcome"] in ("yes", "no", "inconclusive") for v in data["verdicts"])
    assert list(data) == [
        *("format", "name", "description", "seeds", "variants", "setups", "counts", "failed"),
        *("results", "findings", "runs", "verdicts"),
    ]


def test_the_study_report_shows_the_verdicts_table(five):
    mean, low, high = t_interval(FIXED, FAITHFUL)
    markdown = five.markdown.read_text()
    assert "| variant | metric | outcome | estimate | 95 % CI | margin | seeds lower / higher / equal | caution |" in (
        markdown
    )
    row = f"| fixed-eta:1.0 | test accuracy | yes | {100 * mean:+.2f} points | [{100 * low:+.2f}, {100 * high:+.2f}] |"
    assert row + " ±0.25 | 5 / 0 / 0 of 5 |  |" in markdown
    assert "| no-drift | test accuracy | no | +0.00 points | [+0.00, +0.00] | ±0.25 | 0 / 0 / 5 of 5 | zero-width" in (
        markdown
    )
    assert "Verdicts against faithful" in five.html.read_text()


def test_two_seeds_carry_the_one_degree_of_freedom_caution(tmp_path):
    faithful, fixed = [0.930, 0.925], [0.910, 0.915]
    make_study(tmp_path / "s", accuracy={"faithful": faithful, "fixed-eta:1.0": fixed}, seeds=[0, 1])
    report = render_study(tmp_path / "s", figures=False)
    mean, low, high = t_interval(fixed, faithful)
    assert low < 0 < high  # t_{0.975, 1} = 12.7: lower in both seeds, yet the interval holds 0
    v = verdict(report, "study.fixed-eta:1.0.test_accuracy")
    assert (v["ci_low"], v["ci_high"]) == pytest.approx((low, high), rel=1e-9)
    assert v["outcome"] == "inconclusive" and v["seeds_lower"] == 2
    assert v["cautions"] == ["few_seeds"]
    assert f"t quantile {stats.t.ppf(0.975, 1):.1f}" == "t quantile 12.7"
    text = finding(report, "Fixing eta at 1.0")["text"]
    assert "Caution: 2 seeds give the t interval 1 degree of freedom (t quantile 12.7)" in text
    assert f"95 % CI [{100 * low:+.2f}, {100 * high:+.2f}] points" in text


def test_identical_differences_get_the_degenerate_interval_caution(tmp_path):
    faithful = [0.9300, 0.9200]
    oracle = [a - 0.0864 for a in faithful]  # -8.64 points in both seeds: a zero-width t interval
    make_study(tmp_path / "s", accuracy={"faithful": faithful, "oracle-exact": oracle}, seeds=[0, 1])
    report = render_study(tmp_path / "s", figures=False)
    v = verdict(report, "study.oracle-exact.test_accuracy")
    assert v["estimate"] == pytest.approx(-0.0864, abs=1e-12) and v["ci_high"] - v["ci_low"] < 1e-12
    assert v["outcome"] == "inconclusive" and v["cautions"] == ["few_seeds", "degenerate"]
    text = finding(report, "exact minibatch diagonal Hessian")["text"]
    assert "95 % CI [-8.64, -8.64] points has zero width" in text and "lower in 2 of 2 seeds" in text
    assert "Caution: 2 seeds" in text
    assert all("[-8.64, -8.64]" not in f["text"] or "zero width" in f["text"] for f in report.findings)


def test_an_under_trained_baseline_gets_a_finding(tmp_path):
    accuracy = {"faithful": [0.95, 0.94, 0.95], "adam": [0.87, 0.86, 0.87], "sgd": [0.93, 0.92, 0.93]}
    train = {"faithful": [0.995, 0.993, 0.994], "adam": [0.89, 0.86, 0.88], "sgd": [0.97, 0.96, 0.965]}
    make_study(tmp_path / "s", accuracy=accuracy, seeds=[0, 1, 2], train=train)
    report = render_study(tmp_path / "s", figures=False)
    gap = (np.mean(train["faithful"]) - np.mean(train["adam"])) * 100  # 11.7 points > 5
    f = finding(report, "adam did not converge")
    assert f["severity"] == "warning"
    assert f["text"] == (
        f"adam did not converge: its final train accuracy is {np.mean(train['adam']):.1%} (mean over 3 seeds, "
        f"86.0% to 89.0%), {gap:.1f} points below the best variant's (faithful, {np.mean(train['faithful']):.1%}; "
        "rule: a baseline more than 5 points below). Its difference in test accuracy measures its settings and "
        "budget, not the optimizer."
    )
    assert (np.mean(train["faithful"]) - np.mean(train["sgd"])) * 100 < 5
    assert not [x for x in report.findings if "sgd did not converge" in x["text"]]
    assert math.isclose(gap, 11.73, abs_tol=0.01)


def test_few_seed_findings_never_print_an_interval_without_its_caution(tmp_path):
    make_study(tmp_path / "s", accuracy={"faithful": FAITHFUL[:2], "adam": ADAM[:2]}, seeds=SEEDS[:2])
    report = render_study(tmp_path / "s", figures=False)
    for v in report.data["verdicts"]:
        assert "Caution: 2 seeds" in v["text"] and v["cautions"][0] == "few_seeds"
