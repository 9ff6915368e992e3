"""Health of the filter and the dual: eta, the dual's iterations, the KL ratio, precision, variance collapse.

``metrics["health"]``: eta, iterations, kl_ratio, precision, nonpositive (from ``steps.csv``),
collapse_fraction, and a series ``{snapshots, final}`` of ``{step, precision_q01/q50/q99,
precision_nonpositive_share, variance_collapse, negative_a_share, negative_h_share}``.

eta, the dual's iterations, K/eps, the precision pi and variance collapse are arTuRO's (its trust
region and its weight posterior): for another optimizer they are not recorded and the section
says they do not apply; the share of negative a (any estimate's sign) is reported for every one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arturo_diag.diagnostics.health import (
    eta_health,
    iteration_histogram,
    kl_ratio_quantiles,
    nonpositive_events,
    precision_over_time,
    snapshot_health,
)
from arturo_diag.quantities._blocks import _not_computed
from arturo_diag.quantities._estimator import is_arturo, not_arturo_reason
from arturo_diag.quantities._words import _count, _get, _is_number, _num, _pct
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    SnapshotView,
    concat,
    series,
)
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.health import FIGURE
from arturo_diag.report.format import NA, count, num, pct

__all__ = ["QUANTITY"]


class _Observer:
    """Every snapshot (usable or not): the precision quantiles, collapse and sign shares."""

    def __init__(self, context: Context) -> None:
        self.var_init = context.var_init
        self.fraction = context.options.collapse_fraction
        self.entries: list[dict[str, Any]] = []

    def snapshot(self, view: SnapshotView) -> None:
        snapshot, names, field = view.snapshot, view.names, view.field
        precision_all = [fields["precision"] for fields in snapshot.values() if "precision" in fields]
        self.entries.append(
            {
                "step": view.step,
                **snapshot_health(
                    precision=concat(precision_all) if precision_all else None,
                    curvature=concat(list(view.a.values())) if view.a else None,
                    reference=concat([snapshot[n][field] for n in names]) if field else None,
                    var_init=self.var_init,
                    fraction=self.fraction,
                ),
            }
        )


def compute(context: Context) -> dict[str, Any]:
    steps = context.record.steps
    return {
        "eta": eta_health(steps),
        "iterations": iteration_histogram(steps),
        "kl_ratio": kl_ratio_quantiles(steps),
        "precision": precision_over_time(steps),
        "nonpositive": nonpositive_events(steps),
        "collapse_fraction": float(context.options.collapse_fraction),
        **series(context.observers["health"].entries),
    }


def _health(out: Findings, metrics: Mapping[str, Any]) -> None:
    health = metrics.get("health") or {}
    eta = health.get("eta") or {}
    iterations = health.get("iterations") or {}
    fixed = _get(metrics, "trust_region", "fixed_eta")
    if eta.get("n") and fixed is not None:
        out.add("health", "info", f"eta: {fixed:g} at every step (fixed; no dual solve).")
    elif eta.get("n"):
        out.add(
            "health",
            "info",
            f"eta: median {_num(eta['median'])} (range {_num(eta['min'])} to {_num(eta['max'])}, last "
            f"{_num(eta['last'])}); the dual solve took {_num(iterations.get('mean'))} K evaluations per "
            f"step on average.",
        )

    events = health.get("nonpositive") or {}
    recorded = False
    for key, words in (
        ("precision_nonpos", "the new precision pi' <= 0"),
        ("denominator_nonpos", "the denominator a + c + eta*pi <= 0"),
    ):
        entry = events.get(key) or {}
        recorded = recorded or bool(entry.get("recorded"))
        if entry.get("steps"):
            out.add(
                "health",
                "warning",
                f"{words[0].upper() + words[1:]} at {_count(entry['steps'], 'step')} (first at step "
                f"{entry['first_step']}, up to {_count(entry['max_count'], 'coordinate')} in one step): a "
                "negative curvature estimate "
                "can make it so, and the published rule does not guard against it.",
            )
    if recorded and not any((events.get(k) or {}).get("steps") for k in ("precision_nonpos", "denominator_nonpos")):
        out.add("health", "info", "No step had a non-positive precision pi' or denominator a + c + eta*pi.")
    guard = events.get("guard_acted") or {}
    if guard.get("steps"):
        out.add("health", "info", f"The positivity guard acted at {_count(guard['steps'], 'step')}.")

    final = health.get("final") or {}
    collapse = final.get("variance_collapse")
    if collapse:
        share = collapse["share_collapsed"]
        fraction = collapse.get("fraction", 0.01)
        where = f"by the final snapshot (step {final['step']})"
        if _is_number(share) and share > 0:
            out.add(
                "health",
                "warning" if share >= 0.01 else "info",
                f"Variance collapse: the variance 1/pi of {_pct(share)} of coordinates fell below "
                f"{_pct(fraction)} of var_init ({_num(collapse['threshold'])}) {where}.",
            )
        elif _is_number(share):
            out.add(
                "health",
                "info",
                f"No variance collapse: no coordinate's variance 1/pi is below {_pct(fraction)} of var_init "
                f"{where} (median variance {_num(collapse.get('variance_q50'))}).",
            )
        if collapse.get("n_nonpositive"):
            out.add(
                "health",
                "warning",
                f"{_count(collapse['n_nonpositive'], 'coordinate')} had a non-positive precision pi {where}.",
            )
    negative_a, negative_h = final.get("negative_a_share"), final.get("negative_h_share")
    if _is_number(negative_a):
        text = f"At the final snapshot {_pct(negative_a)} of the curvature estimate a is negative"
        if _is_number(negative_h):
            text += f" ({_pct(negative_h)} of h)"
        out.add("health", "info", text + ".")


def health_section(metrics: Mapping[str, Any]) -> list[Block]:
    """eta and its bracket position, bisection iterations, K/eps quantiles, precision quantiles, variance
    collapse and the non-positive precision/denominator events."""
    blocks: list[Block] = [Heading(2, (text("Health"),))]
    health = metrics.get("health") or {}
    if not is_arturo(metrics):
        what = "eta, the dual solve, the precision pi and variance collapse"
        blocks.append(_not_computed(not_arturo_reason(metrics, what) + "."))
        final = health.get("final") or {}
        return blocks + ([_final_snapshot_table(final)] if final else [])
    blocks.append(_eta_block(health.get("eta") or {}))
    blocks += _dual_tables(health.get("iterations") or {}, health.get("kl_ratio") or {})
    precision = health.get("precision") or {}
    if precision.get("n"):
        rows = tuple(
            (label, str(r["step"]), num(r["q01"]), num(r["q50"]), num(r["q99"]))
            for label, r in (("first recorded", precision["first"]), ("last recorded", precision["last"]))
        )
        blocks.append(
            Table(
                ("precision pi (steps.csv)", "step", "1%", "50%", "99%"),
                rows,
                caption=f"Precision quantiles over coordinates; the smallest 1% quantile over the run "
                f"was {num(precision.get('min_q01'))}.",
            )
        )
    final = health.get("final") or {}
    if final:
        blocks.append(_final_snapshot_table(final))
    blocks += _nonpositive_tables(health.get("nonpositive") or {})
    return blocks


def _eta_block(eta: Mapping[str, Any]) -> Block:
    """eta over the steps and its position in the final bracket, or why there is none."""
    if not eta.get("n"):
        return Paragraph("No eta was recorded per step (not an arTuRO run).")
    position = eta.get("bracket_position") or {}
    return Table(
        ("eta", "median", "min", "max", "first", "last", "bracket position 5% / 50% / 95%"),
        (
            (
                "over steps",
                num(eta.get("median")),
                num(eta.get("min")),
                num(eta.get("max")),
                num(eta.get("first")),
                num(eta.get("last")),
                " / ".join(num(position.get(q)) for q in ("q05", "q50", "q95")),
            ),
        ),
        caption="eta per step; its position in the final bracket (eta - eta_lo) / (eta_hi - eta_lo) is 0.5 for "
        "the midpoint the published rule returns.",
    )


def _dual_tables(iterations: Mapping[str, Any], kl: Mapping[str, Any]) -> list[Block]:
    """The dual solve: its K evaluations per step (a histogram) and the achieved K(eta)/eps quantiles."""
    blocks: list[Block] = []
    histogram = iterations.get("histogram") or {}
    if histogram:
        total = sum(histogram.values())
        rows = tuple((k, count(v), pct(v / total if total else None)) for k, v in histogram.items())
        blocks.append(
            Table(
                ("K evaluations per step", "steps", "share"),
                rows,
                caption=f"Dual-solve iterations: mean {num(iterations.get('mean'))}, max "
                f"{iterations.get('max')}; 0 evaluations is the 5/3 growth regime.",
            )
        )
    if kl.get("n"):
        blocks.append(
            Table(
                ("K(eta)/eps", "5%", "25%", "50%", "75%", "95%", "max"),
                (("over steps",) + tuple(num(kl.get(q)) for q in ("q05", "q25", "q50", "q75", "q95", "max")),),
                caption="Achieved KL relative to the bound (1 = on the bound).",
            )
        )
    return blocks


def _final_snapshot_table(final: Mapping[str, Any]) -> Table:
    """At the final snapshot: precision quantiles, variance collapse, the shares of a and h below 0."""
    collapse = final.get("variance_collapse") or {}
    rows = [
        ("precision pi 1% / 50% / 99%", " / ".join(num(final.get(f"precision_q{q}")) for q in ("01", "50", "99"))),
        ("share with pi <= 0", pct(final.get("precision_nonpositive_share"))),
    ]
    if collapse:
        rows += [
            (
                f"variance collapse: share with 1/pi < {pct(collapse.get('fraction'))} of var_init "
                f"({num(collapse.get('threshold'))})",
                pct(collapse.get("share_collapsed")),
            ),
            (
                "variance 1/pi 1% / 50% / 99%",
                " / ".join(num(collapse.get(f"variance_q{q}")) for q in ("01", "50", "99")),
            ),
        ]
    rows += [
        ("share of a < 0", pct(final.get("negative_a_share"))),
        ("share of h < 0", pct(final.get("negative_h_share"))),
    ]
    return Table(("At the final snapshot (step %s)" % final.get("step"), "value"), tuple(rows))


def _nonpositive_tables(events: Mapping[str, Any]) -> list[Block]:
    """The steps where pi' or the denominator went non-positive, and where the guard acted."""
    rows = []
    for key, words in (
        ("precision_nonpos", "new precision pi' <= 0"),
        ("denominator_nonpos", "denominator a + c + eta*pi <= 0"),
        ("guard_acted", "positivity guard acted"),
    ):
        entry = events.get(key) or {}
        if not entry.get("recorded"):
            rows.append((words, "not recorded", "", "", ""))
            continue
        rows.append(
            (
                words,
                count(entry.get("steps")),
                str(entry.get("first_step") or NA),
                count(entry.get("max_count")),
                count(entry.get("total")),
            )
        )
    if not rows:
        return []
    return [
        Table(
            ("Non-positive event", "steps", "first step", "most coordinates in one step", "coordinate-steps"),
            tuple(rows),
            caption="Nothing in the published rule keeps pi' or the denominator positive; negative "
            "curvature estimates can make either non-positive.",
        )
    ]


QUANTITY = Quantity(
    name="health",
    needs=("steps.csv: eta, iterations, kl_ratio, precision quantiles, nonpositive", "snapshots: precision, a, h"),
    compute=compute,
    observer=_Observer,
    findings=_health,
    blocks=health_section,
    figures=(FIGURE,),
)
