"""The trust region: how eta was found, which regimes it was in, whether the KL bound binds.

``metrics["trust_region"]``: ``trust_region_summary(...)`` (:mod:`arturo_diag.diagnostics.trust_region`).
The eta-floor, 5/3 growth and overshoot quirks of the published bisection are named with their
steps and sizes; a fixed-eta run (trust region off) is described as fixed, never in those words.
A study gets eta (final, median), the dual's evaluations per step, the KL ratio and how often the
guard acted, per arTuRO run (from ``steps.csv``).

Only arTuRO has a trust region: for another optimizer (``metrics["run"]["estimator"]``) the entry
is computed as for any run without eta (``available`` False), there is no verdict and no finding,
and the section says it does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from arturo_diag.diagnostics.trust_region import trust_region_summary
from arturo_diag.quantities._blocks import _MAX_SNAPSHOT_ROWS, _not_computed, _thin
from arturo_diag.quantities._estimator import is_arturo, not_arturo_reason
from arturo_diag.quantities._words import _count, _get, _is_number, _num, _pct
from arturo_diag.quantities.base import (
    Context,
    Findings,
    Quantity,
    StudyColumn,
)
from arturo_diag.quantities.topic_verdicts import trust_region_verdicts, with_finding
from arturo_diag.report.document import Block, Heading, Paragraph, Table, text
from arturo_diag.report.figures.trust_region import FIGURE
from arturo_diag.report.format import count, num, pct, plural, yes_no

__all__ = ["QUANTITY"]


def compute(context: Context) -> dict[str, Any]:
    record = context.record
    return trust_region_summary(
        record.steps,
        record.snapshots,
        eta_tol=context.eta_tol,
        burn_in=context.options.burn_in,
        fixed_eta=context.fixed_eta,
    )


def _column(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(table[column], errors="coerce")


def study_columns(metrics: Mapping[str, Any], record: Any) -> dict[str, Any]:
    steps = record.steps
    eta = _column(steps, "eta")
    if not eta.notna().any():
        return {}
    return {
        "eta_final": float(eta.dropna().iloc[-1]),
        "eta_median": float(eta.median()),
        "dual_iterations_mean": float(_column(steps, "iterations").mean()),
        "kl_ratio_median": float(_column(steps, "kl_ratio").median()),
        "guard_acted": float(_column(steps, "guard_acted").fillna(0).sum()),
    }


def _trust_region(out: Findings, metrics: Mapping[str, Any]) -> None:
    if not is_arturo(metrics):
        return  # the section says why; a finding would only repeat it
    tr = metrics.get("trust_region") or {}
    if not tr.get("available"):
        out.add("trust_region", "info", "No trust-region data (eta) was recorded per step.")
        return
    if _get(metrics, "run", "optimizer", "lr") == 0:
        out.add(
            "trust_region",
            "warning",
            "The KL bound eps (lr) is 0: the trust region allows no step of the mean. "
            "The exact dual takes none (eta = inf); the published bisection stops at the top of its bracket "
            "(eta near 1e4) and takes a small one.",
        )
    if tr.get("fixed_eta") is not None:
        _fixed_eta(out, metrics, tr)
        return
    _regime_findings(out, tr)
    _inactive_run_findings(out, tr)
    _bound_drop_findings(out, tr)
    overshoot = tr["overshoot_share"]
    if _is_number(overshoot) and overshoot > 0:
        out.add(
            "trust_region",
            "warning" if overshoot >= 0.05 else "info",
            f"K/eps exceeded 1.1 in {_pct(overshoot)} of steps ({_pct(tr['overshoot_share_after_burn_in'])} "
            f"after step {tr['burn_in']}); it was below 0.9 in {_pct(tr['undershoot_share'])}.",
        )
    snapshots = tr.get("snapshots") or {}
    if snapshots.get("n") and _is_number(snapshots.get("binding_share")):
        text = (
            f"The trust region was binding (K(0)/eps > 1) at {_pct(snapshots['binding_share'])} of "
            f"{_count(snapshots['n'], 'snapshot')}"
        )
        ratio = snapshots.get("eta_over_eta_star_median")
        if _is_number(ratio):
            text += f"; where it was, the rule's eta was a median {_num(ratio)} times the exact root eta*"
        out.add("trust_region", "info", text + ".")


def _regime_findings(out: Findings, tr: Mapping[str, Any]) -> None:
    """How much of the run after the burn-in the bisection was active, or inactive (5/3 growth, frozen)."""
    late = tr["regime_share_after_burn_in"]
    burn_in = tr["burn_in"]
    inactive = tr["inactive_share_after_burn_in"]
    if _is_number(inactive) and inactive >= 0.5:
        out.add(
            "trust_region",
            "warning",
            f"The trust-region bisection was inactive in {_pct(inactive)} of steps after step {burn_in}: "
            f"eta grew by 5/3 per step without evaluating K ({_pct(late['growth_5_3'])}) or stayed frozen "
            f"at the floor ({_pct(late['frozen'])}) regardless of the bound.",
        )
    else:
        text = (
            f"The trust-region bisection was active in {_pct(late['bisection'])} of steps after step "
            f"{burn_in} (5/3 growth {_pct(late['growth_5_3'])}, frozen at the floor {_pct(late['frozen'])}"
        )
        if late.get("fixed"):
            text += f", eta fixed {_pct(late['fixed'])}"
        out.add("trust_region", "warning" if _is_number(inactive) and inactive >= 0.1 else "info", text + ").")


def _inactive_run_findings(out: Findings, tr: Mapping[str, Any]) -> None:
    """The longest run of 5/3 growth and the longest run frozen at the floor (3 steps or more)."""
    growth = _get(tr, "growth_runs", "longest")
    if growth and growth["length"] >= 3:
        out.add(
            "trust_region",
            "warning" if growth["length"] >= 10 else "info",
            f"eta grew by 5/3 per step without evaluating K for {growth['length']} consecutive steps "
            f"(steps {growth['start_step']}-{growth['end_step']}, eta {_num(growth['eta_start'])} to "
            f"{_num(growth['eta_end'])}), whatever the bound.",
        )
    frozen = _get(tr, "frozen_runs", "longest")
    if frozen and frozen["length"] >= 3:
        start, end = frozen["kl_ratio_start"], frozen["kl_ratio_end"]
        if _is_number(start) and _is_number(end) and end < start:
            kl_words = f"while K/eps fell to {_num(frozen['kl_ratio_min'])}"
            if _is_number(frozen.get("kl_ratio_max")) and frozen["kl_ratio_max"] > 1.1:
                kl_words += f" (and rose to {_num(frozen['kl_ratio_max'])}: the frozen eta neither tracked the bound down nor up)"
        else:
            kl_words = f"while K/eps ranged from {_num(frozen['kl_ratio_min'])} to {_num(frozen['kl_ratio_max'])}"
        total = tr["frozen_runs"]["total_steps"]
        more = f" ({total} frozen steps in all)" if total > frozen["length"] else ""
        out.add(
            "trust_region",
            "warning",
            f"eta was frozen at the floor {_num(frozen['eta_median'])} for {frozen['length']} steps (steps "
            f"{frozen['start_step']}-{frozen['end_step']}) {kl_words}{more}.",
        )


def _bound_drop_findings(out: Findings, tr: Mapping[str, Any]) -> None:
    """After each drop of the KL bound: how far K/eps overshot and how long it took to come back."""
    for drop in tr.get("bound_drops") or []:
        factor = f" (x{_num(drop['factor'])})" if _is_number(drop.get("factor")) else ""
        peak = drop["peak_kl_ratio"]
        if _is_number(peak) and peak > 1.1:
            if drop["recovered"]:
                after = f"took {drop['steps_to_recover']} steps to return below 1.1"
            else:
                after = "had not returned to 1.1 or below by the end of the run"
            out.add(
                "trust_region",
                "warning",
                f"After the KL bound dropped at step {drop['step']}{factor}, K/eps overshot to {_num(peak)} "
                f"and {after}.",
            )
        else:
            out.add(
                "trust_region",
                "info",
                f"After the KL bound dropped at step {drop['step']}{factor}, K/eps stayed at or below 1.1.",
            )


def _fixed_eta(out: Findings, metrics: Mapping[str, Any], tr: Mapping[str, Any]) -> None:
    """A fixed-eta run (trust region off): said as such, never in the bisection's regimes."""
    option = "--fixed-eta" if _get(metrics, "run", "kind") == "compare" else "fixed_eta"
    kl = _get(metrics, "health", "kl_ratio") or {}
    text = (
        f"eta fixed at {tr['fixed_eta']:g} by {option}: no trust region (the dual is never solved and the "
        "KL bound does not limit the step)"
    )
    if _is_number(kl.get("q50")):
        text += f"; the steps' K/eps had median {_num(kl['q50'])} (max {_num(kl.get('max'))})"
    out.add("trust_region", "info", text + ".")
    snapshots = tr.get("snapshots") or {}
    if snapshots.get("n") and _is_number(snapshots.get("binding_share")):
        text = (
            f"With the trust region on, the KL bound would have been active (K(0)/eps > 1) at "
            f"{_pct(snapshots['binding_share'])} of {_count(snapshots['n'], 'snapshot')}"
        )
        ratio = snapshots.get("eta_over_eta_star_median")
        if _is_number(ratio):
            text += f"; the fixed eta was a median {_num(ratio)} times the exact root eta* there"
        out.add("trust_region", "info", text + ".")


def trust_region_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Regime shares (bisection active, 5/3 growth, frozen at the floor, overshoot), binding share and
    eta vs eta* at snapshots, and the overshoot after each KL-bound drop."""
    blocks: list[Block] = [Heading(2, (text("Trust region"),))]
    tr = metrics.get("trust_region") or {}
    if not is_arturo(metrics):
        return blocks + [_not_computed(not_arturo_reason(metrics, "the trust region (the KL bound eps and eta)") + ".")]
    if not tr.get("available"):
        blocks.append(_not_computed(f"{tr.get('reason') or 'no trust-region data'} (not an arTuRO run, or no steps)."))
        return blocks + _binding_blocks(tr.get("snapshots"))
    eta_tol = tr.get("eta_tol")
    burn_in = tr.get("burn_in")
    if tr.get("fixed_eta") is not None:  # trust region off: the bisection's regimes do not apply
        blocks.append(
            Paragraph(
                f"eta was fixed at {num(tr['fixed_eta'])} at every one of the {plural(tr.get('n_steps'), 'step')} "
                "(fixed_eta, the trust-region-off ablation): the dual was never solved and the KL bound did not limit "
                "the step, so there are no bisection regimes to report."
            )
        )
        return blocks + _binding_blocks(tr.get("snapshots"))
    blocks.append(
        Paragraph(
            f'Each step\'s regime (ARTURO.md, step 4 and "the eta floor", eta_tol = {num(eta_tol)}): bisection active '
            f"(K evaluated and eta moved), 5/3 growth (eta_prev <= {num(0.375 * eta_tol)}: the bracket is already "
            f"narrower than eta_tol, no K is evaluated and eta grows by 5/3 whatever the bound), frozen at the floor "
            f"(eta_prev in ({num(0.375 * eta_tol)}, {num(0.75 * eta_tol)}]: one evaluation with K <= eps returns "
            "eta_prev again), eta fixed (the trust-region-off ablation). Overshoot is K/eps > 1.1. Shares are given "
            f"over all {plural(tr.get('n_steps'), 'step')} and after the burn-in (steps after {burn_in}, "
            f"{count(tr.get('n_steps_after_burn_in'))} steps)."
        )
    )
    blocks.append(_regime_table(tr, burn_in))
    blocks += _inactive_runs_tables(tr)
    blocks.append(_bound_drops_block(tr.get("bound_drops") or []))
    return blocks + _binding_blocks(tr.get("snapshots"))


def _regime_table(tr: Mapping[str, Any], burn_in: Any) -> Table:
    """Steps and shares per regime, over all steps and after the burn-in, with over- and undershoot."""
    counts = tr.get("regime_counts") or {}
    share, late = tr.get("regime_share") or {}, tr.get("regime_share_after_burn_in") or {}
    rows = []
    for key, words in (
        ("bisection", "bisection active"),
        ("growth_5_3", "5/3 growth (no K evaluated)"),
        ("frozen", "frozen at the floor"),
        ("fixed", "eta fixed (trust region off)"),
        ("first", "first step"),
        ("other", "other"),
    ):
        if key in ("fixed", "first", "other") and not counts.get(key):
            continue
        rows.append((words, count(counts.get(key)), pct(share.get(key)), pct(late.get(key))))
    rows.append(
        (
            "inactive (5/3 growth + frozen)",
            count((counts.get("growth_5_3") or 0) + (counts.get("frozen") or 0)),
            pct(tr.get("inactive_share")),
            pct(tr.get("inactive_share_after_burn_in")),
        )
    )
    rows.append(
        ("overshoot (K/eps > 1.1)", "", pct(tr.get("overshoot_share")), pct(tr.get("overshoot_share_after_burn_in")))
    )
    rows.append(("undershoot (K/eps < 0.9)", "", pct(tr.get("undershoot_share")), ""))
    return Table(("Regime", "steps", "share of all steps", f"share after step {burn_in}"), tuple(rows))


def _inactive_runs_tables(tr: Mapping[str, Any]) -> list[Block]:
    """The runs of consecutive 5/3-growth and frozen steps, with eta and K/eps over each (none: no table)."""
    run_rows = []
    for key, words in (("growth_runs", "5/3 growth"), ("frozen_runs", "frozen at the floor")):
        runs = tr.get(key) or {}
        for run in runs.get("runs") or []:
            span = (
                str(run["start_step"])
                if run["start_step"] == run["end_step"]
                else f"{run['start_step']}-{run['end_step']}"
            )
            run_rows.append(
                (
                    words,
                    span,
                    count(run["length"]),
                    f"{num(run['eta_start'])} -> {num(run['eta_end'])}",
                    f"{num(run['kl_ratio_min'])} - {num(run['kl_ratio_max'])}",
                    f"{num(run['kl_ratio_start'])} -> {num(run['kl_ratio_end'])}",
                )
            )
    if not run_rows:
        return []
    return [
        Table(
            ("Inactive run", "steps", "length", "eta", "K/eps range", "K/eps first -> last"),
            tuple(run_rows),
            align=("l", "r", "r", "r", "r", "r"),
            caption="The longest runs of consecutive inactive steps (up to 10 of each kind), in time order.",
        )
    ]


def _bound_drops_block(drops: list[Mapping[str, Any]]) -> Block:
    """Each drop of the KL bound: the bound before and after, K/eps's peak and when it came back."""
    if not drops:
        return Paragraph("The KL bound never dropped during the run.")
    rows = []
    for drop in drops:
        peak_step = drop.get("peak_step")
        recover = (
            f"{plural(drop.get('steps_to_recover'), 'step')} (step {drop.get('recovery_step')})"
            if drop.get("recovered")
            else "not recovered by the end"
        )
        rows.append(
            (
                str(drop["step"]),
                f"{num(drop['kl_bound_before'])} -> {num(drop['kl_bound_after'])}",
                f"x{num(drop.get('factor'))}",
                num(drop.get("peak_kl_ratio")) + (f" (step {peak_step})" if peak_step is not None else ""),
                recover,
            )
        )
    return Table(
        ("KL-bound drop at step", "bound", "factor", "peak K/eps", "back to K/eps <= 1.1 after"),
        tuple(rows),
        caption="The bracket moves at most 3x per step, so K/eps overshoots after the scheduler drops the bound.",
    )


def _binding_blocks(binding: Mapping[str, Any] | None) -> list[Block]:
    if not binding or not binding.get("n"):
        return [Paragraph("No snapshot recorded K(0)/eps or eta*, so binding and eta vs eta* are not assessed.")]
    blocks: list[Block] = [
        Paragraph(
            f"At snapshots the trust region binds when the unconstrained step would exceed the bound, K(0)/eps > 1: "
            f"it bound at {pct(binding.get('binding_share'))} of {plural(binding['n'], 'snapshot')}. Where it bound, the "
            f"rule's eta was a median {num(binding.get('eta_over_eta_star_median'))} times the exact root eta* of "
            "K(eta) = eps (1: the rule found the root; above 1: a more conservative step than the bound allows)."
        )
    ]
    rows_all = binding.get("snapshots") or []
    rows, thinned = _thin(rows_all, _MAX_SNAPSHOT_ROWS)
    table_rows = tuple(
        (
            str(r["step"]),
            num(r.get("kl0_ratio")),
            yes_no(r.get("binds")),
            num(r.get("eta")),
            num(r.get("eta_star")),
            num(r.get("eta_over_eta_star")),
        )
        for r in rows
    )
    caption = (
        "eta vs eta* at snapshots" + (f" ({len(rows)} of {len(rows_all)}, evenly spaced)" if thinned else "") + "."
    )
    blocks.append(
        Table(
            ("Snapshot step", "K(0)/eps", "binds", "eta (rule)", "eta* (exact)", "eta / eta*"),
            table_rows,
            caption=caption,
        )
    )
    return blocks


QUANTITY = Quantity(
    name="trust_region",
    needs=("steps.csv: eta, kl, kl_bound, kl_ratio, iterations, regime columns", "snapshots.csv"),
    compute=compute,
    findings=with_finding(_trust_region, trust_region_verdicts, "trust_region"),
    blocks=trust_region_section,
    figures=(FIGURE,),
    verdicts=trust_region_verdicts,
    study_columns=study_columns,
    study_keys=("eta_final", "eta_median", "dual_iterations_mean", "kl_ratio_median", "guard_acted"),
    study_table=(StudyColumn("eta_median", "median eta"), StudyColumn("dual_iterations_mean", "K evaluations / step")),
)
