"""The fast ranks of big arrays (issue 15, item 5) equal scipy.stats.rankdata's, ties and groups included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from arturo_diag.diagnostics.agreement import _FAST_RANKS, group_ranks, ranks, sort_order, spearman
from arturo_diag.diagnostics.lag import LagAccumulator
from arturo_diag.quantities._ranks import SnapshotRanks, layer_groups

N = 3 * _FAST_RANKS + 17  # above the size where the fast path takes over


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    float32 = rng.standard_normal(N).astype(np.float32).astype(np.float64)  # the key-sort path
    ties = rng.integers(-4, 5, N).astype(np.float64)  # long runs of equal values
    ties[::5] = -0.0  # equal to 0.0: one tie group with the zeros
    rounded = np.round(rng.standard_normal(N), 2)  # float64 values that are no float32: argsort
    return {"float32": float32, "ties": ties, "rounded": rounded, "distinct": np.arange(N, 0, -1) * 0.5}


@pytest.mark.parametrize("kind", ["float32", "ties", "rounded", "distinct"])
def test_ranks_equal_rankdata(kind):
    x = _arrays(np.random.default_rng(3))[kind]
    expected = stats.rankdata(x)
    got = ranks(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.sort(x), x[sort_order(x)])


@pytest.mark.parametrize("kind", ["float32", "ties", "rounded"])
def test_group_ranks_equal_rankdata_of_each_group(kind):
    rng = np.random.default_rng(4)
    x = _arrays(rng)[kind]
    labels = rng.integers(0, 6, N).astype(np.uint8)
    labels[:10] = 5  # a group that starts with the first coordinates
    got = group_ranks(x, sort_order(x), labels)
    for g in range(6):
        np.testing.assert_array_equal(got[labels == g], stats.rankdata(x[labels == g]))


def test_snapshot_ranks_per_layer_and_overall():
    rng = np.random.default_rng(5)
    shapes = {"l1.weight": (60, 100), "l1.bias": (60,), "l2.weight": (50, 90), "l3.weight": (7,), "l2.bias": (50,)}
    arrays = {n: np.round(rng.standard_normal(s), 3) for n, s in shapes.items()}  # ties within and across
    names = list(shapes)
    layers = {n: n.split(".")[0] for n in names}
    ranked = SnapshotRanks(arrays, names, layers)
    whole = np.concatenate([arrays[n].ravel() for n in names])
    np.testing.assert_array_equal(ranked.overall, stats.rankdata(whole))
    groups = layer_groups(names, layers)
    assert list(groups) == ["l1", "l2", "l3"] and groups["l2"] == ["l2.weight", "l2.bias"]
    for layer, members in groups.items():
        values = np.concatenate([arrays[n].ravel() for n in members])
        np.testing.assert_array_equal(ranked.layer(layer), stats.rankdata(values))
    # Spearman from the shared ranks is scipy's
    other = {n: arrays[n] + 0.1 * rng.standard_normal(shapes[n]) for n in names}
    other_ranked = SnapshotRanks(other, names, layers)
    expected = stats.spearmanr(whole, other_ranked.values).statistic
    got = spearman(whole, other_ranked.values, a_ranks=ranked.overall, h_ranks=other_ranked.overall)
    assert got == pytest.approx(expected, abs=1e-12)


def test_lag_accumulator_with_given_ranks_equals_its_own():
    rng = np.random.default_rng(6)
    own, given = LagAccumulator(2), LagAccumulator(2)
    pairs = []
    for step in (10, 20, 30, 40):
        a = np.round(rng.standard_normal(N), 2)
        h = a + rng.standard_normal(N)
        pairs.append((a, h))
        own.add(step, a, h)
        given.add(step, a, h, a_ranks=stats.rankdata(a), h_ranks=stats.rankdata(h))
    table = given.table()
    assert own.table().equals(table)
    # the last snapshot's a against the h of one snapshot earlier: scipy's Spearman
    row = table[(table["step"] == 40) & (table["k"] == 1)].iloc[0]
    expected = stats.spearmanr(pairs[3][0], pairs[2][1]).statistic
    assert row["spearman"] == pytest.approx(expected, abs=1e-12)
