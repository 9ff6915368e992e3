"""The run itself: what was trained, which reference h the snapshots carry, what was left out.

``metrics["run"]``: kind, status, divergence (record.json's, of a "diverged" run, else None),
unusable_snapshots ([{step, reason}]: a or h NaN/inf, or h all 0; such a snapshot is left out of
agreement, movement, calibration and lag), steps, n_step_rows, n_snapshots, snapshot_steps,
reference ("exact" | "hutchinson" | "both" | "none" | "mixed"), compared_against ("h_exact" |
"h_hutchinson" | None | "mixed"), exact_method, hutchinson_samples, reference_note (the last snapshot's
``reference_note``: what the GGN / control-variate reference is and why ``auto`` took it, else None), reference_mode ("eval" |
"train"), reference_batch ("probe" | "minibatch"), loss (the loss's name, None when not recorded),
model_class, param_groups ([{lr, n_tensors}], [] when not recorded), n_parameters, n_tensors,
layers, optimizer, estimator (``{name, target, scale, source}`` of the snapshots' ``curvature``:
record.json's, or arTuRO's assumed for an older record; None when no adapter read the optimizer,
:mod:`arturo_diag.quantities._estimator`), var_init, var_init_source, eta_tol, eta_tol_source,
constant_baseline, arturo_diag_version. A record without the reference's mode and batch (older than issue 11) was
taken in eval mode on the probe batch, and reads so.

Findings (topics ``divergence``, ``estimator``, ``reference`` and ``param_groups``): a diverged run's
first finding says where it went NaN/inf (step, quantity, layer); for an optimizer other than arTuRO,
whose estimate the snapshots hold and what it estimates (or that none is stored); then what h is (of which loss, on which batch,
in which mode) and how noisy; then the unusable snapshots; a warning when a param group's lr
differs from group 0's (the KL bound eps is group 0's).
The run's title and settings sections are the report's own (:mod:`arturo_diag.report.sections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from arturo_diag.curvature.references import (
    REFERENCE_BATCHES,
    REFERENCE_METHODS,
    REFERENCE_MODES,
    estimators_of,
    reference_meaning,
    reference_setting,
)
from arturo_diag.quantities._estimator import TARGET_WORDS, estimate_words, estimator_of, is_arturo, optimizer_name
from arturo_diag.quantities._words import _count, _get, _is_number, _num
from arturo_diag.quantities.base import Context, Findings, Quantity, SnapshotView, snapshot_value

__all__ = ["QUANTITY"]


class _Compared:
    """The reference fields the usable snapshots were compared against."""

    def __init__(self, context: Context) -> None:
        self.fields: set[str] = set()

    def snapshot(self, view: SnapshotView) -> None:
        if view.usable:
            self.fields.add(view.field)


def compute(context: Context) -> dict[str, Any]:
    record = context.record
    distinct = sorted(set(context.labels))
    compared = sorted(context.observers["run"].fields)
    last_snapshot = record.snapshot_steps[-1] if record.snapshot_steps else None
    optimizer = record.manifest.get("optimizer") or {}
    var_init_source, eta_tol_source = context.settings["var_init"][1], context.settings["eta_tol"][1]
    return {
        "kind": record.kind,
        "status": record.status,
        "divergence": record.divergence,
        "unusable_snapshots": context.unusable,
        "steps": int(record.manifest.get("steps") or 0),
        "n_step_rows": int(len(record.steps)),
        "n_snapshots": len(record.snapshot_steps),
        "snapshot_steps": [int(s) for s in record.snapshot_steps],
        "reference": distinct[0] if len(distinct) == 1 else ("none" if not distinct else "mixed"),
        "compared_against": compared[0] if len(compared) == 1 else (None if not compared else "mixed"),
        "exact_method": snapshot_value(record.snapshots, last_snapshot, "exact_method"),
        "hutchinson_samples": snapshot_value(record.snapshots, last_snapshot, "hutchinson_samples"),
        "reference_note": _note(record.snapshots, last_snapshot),
        "reference_mode": reference_setting(record.manifest.get("reference_mode"), REFERENCE_MODES),
        "reference_batch": reference_setting(record.manifest.get("reference_batch"), REFERENCE_BATCHES),
        "loss": record.manifest.get("loss") if isinstance(record.manifest.get("loss"), str) else None,
        "model_class": record.manifest.get("model_class"),
        "param_groups": [dict(g) for g in record.manifest.get("param_groups") or [] if isinstance(g, Mapping)],
        "n_parameters": int(sum(int(np.prod(shape)) for shape in record.parameters.values())),
        "n_tensors": len(record.parameters),
        "layers": list(dict.fromkeys(record.layers[name] for name in record.parameters)),
        "optimizer": dict(optimizer) if isinstance(optimizer, Mapping) else {},
        "estimator": estimator_of(record.manifest),
        "var_init": context.var_init,
        "var_init_source": var_init_source,
        "eta_tol": context.eta_tol,
        "eta_tol_source": eta_tol_source,
        "constant_baseline": float(context.options.constant),
        "arturo_diag_version": record.manifest.get("arturo_diag_version"),
    }


def _note(snapshots, step) -> str | None:
    """snapshots.csv's ``reference_note`` at ``step`` (written by the ggn, cv and auto references)."""
    if step is None or "reference_note" not in snapshots.columns:
        return None
    rows = snapshots.loc[snapshots["step"] == step, "reference_note"]
    value = rows.iloc[0] if len(rows) else None
    return value if isinstance(value, str) and value else None


def _divergence(out: Findings, metrics: Mapping[str, Any]) -> None:
    info = _get(metrics, "run", "divergence")
    if not isinstance(info, Mapping):
        return
    message = info.get("message") or f"non-finite {info.get('quantity')} at step {info.get('step')}"
    snapshots = _get(metrics, "run", "snapshot_steps") or []
    covered = f"the findings below cover steps 1-{info.get('step')}" + (
        f" (snapshots up to step {max(snapshots)})" if snapshots else " (no snapshot was taken before it)"
    )
    out.add("divergence", "warning", f"The run diverged: {message}. Training stopped there; {covered}.")


def _reference(out: Findings, metrics: Mapping[str, Any]) -> None:
    run = metrics.get("run") or {}
    reference = run.get("reference")
    method = run.get("exact_method")
    method_words = f" ({method})" if isinstance(method, str) and method else ""
    noise_final = _get(metrics, "agreement", "reference_noise", "final")
    samples = run.get("hutchinson_samples")
    samples_words = f" with {samples} samples" if samples is not None else ""
    meaning = reference_meaning(run.get("reference_mode"), run.get("reference_batch"), run.get("loss"))
    if reference in (None, "none"):
        out.add(
            "reference",
            "warning",
            "No snapshot carries a reference diagonal Hessian h: agreement, "
            "movement, calibration and lag could not be computed.",
        )
    elif reference == "hutchinson" or _estimated(reference):
        lead = (
            f"a Hutchinson estimate{samples_words}"
            if reference == "hutchinson"
            else f"a {' and '.join(e.label for e in estimators_of(reference))} estimate{samples_words}"
        )
        text = (
            f"h is {lead} of the diagonal Hessian {meaning}, not the exact diagonal Hessian, so it carries "
            "noise of its own"
        )
        relative_se = _get(noise_final, "relative_se")
        severity = "info"
        if _is_number(relative_se):
            text += (
                f": its standard error is {_num(relative_se)} of ||h|| at the final snapshot (median "
                f"SE/|h| {_num(_get(noise_final, 'median_se_over_abs_h'))}); agreement of a with h "
                "cannot be resolved below that level, and calibration counts h's noise as a's error"
            )
            severity = "warning" if relative_se >= 0.25 else "info"
        out.add("reference", severity, text + "." + _note_words(run))
    elif reference == "both":
        final = _get(metrics, "agreement", "hutchinson_vs_exact", "final", "overall")
        estimate = _get(metrics, "agreement", "final", "overall", "estimate")
        out.add(
            "reference",
            "info",
            f"h is the exact diagonal Hessian{method_words} {meaning}. Hutchinson's "
            f"estimate{samples_words} has relative error {_num(_get(final, 'relative_error'))} against it "
            f"at the final snapshot (Spearman {_num(_get(final, 'spearman'))}), vs "
            f"{_num(_get(estimate, 'relative_error'))} for "
            + ("arTuRO's a." if is_arturo(metrics) else f"{estimate_words(metrics)}."),
        )
    elif reference == "exact":
        out.add(
            "reference",
            "info",
            f"h is the exact diagonal Hessian{method_words} {meaning}." + _note_words(run),
        )
    elif reference in REFERENCE_METHODS:  # a method declared in curvature/references.py, not worded above
        words = " and the ".join(e.words for e in estimators_of(reference))
        out.add("reference", "info", f"h is the {words} {meaning}." + _note_words(run))
    else:
        out.add(
            "reference",
            "info",
            f"The reference h differs between snapshots ({reference}); each "
            "snapshot is compared with the exact h where it has one, else with Hutchinson's.",
        )


def _estimated(reference: Any) -> bool:
    """A method whose h carries its own standard error (the control variate's), worded like Hutchinson's."""
    return reference in REFERENCE_METHODS and any(e.se_field for e in estimators_of(reference))


def _note_words(run: Mapping[str, Any]) -> str:
    note = run.get("reference_note")
    if not isinstance(note, str) or not note:
        return ""
    if note.startswith("auto: "):
        return f" Chosen by --reference {note}."
    return f" Here h is {note}."


def _estimator(out: Findings, metrics: Mapping[str, Any]) -> None:
    """For an optimizer other than arTuRO: whose estimate ``curvature`` is and what it estimates."""
    if is_arturo(metrics):
        return
    info = _get(metrics, "run", "estimator")
    name = optimizer_name(metrics)
    if not info:
        out.add(
            "estimator",
            "warning",
            f"No curvature adapter reads the optimizer {name}: no snapshot holds a curvature estimate, so "
            "agreement, movement, calibration and lag are not computed (add one with "
            "arturo_diag.estimators.register_adapter).",
        )
        return
    target = info.get("target")
    out.add(
        "estimator",
        "info",
        f"The snapshots' curvature is {estimate_words(metrics)}: it estimates "
        f"{TARGET_WORDS.get(target, target)} ({info.get('scale') or 'scale not recorded'}).",
    )


def _unusable(out: Findings, metrics: Mapping[str, Any]) -> None:
    entries = _get(metrics, "run", "unusable_snapshots") or []
    if not entries:
        return
    steps = ", ".join(str(entry["step"]) for entry in entries[:8]) + (" ..." if len(entries) > 8 else "")
    reasons = list(dict.fromkeys(entry["reason"] for entry in entries))
    reason = reasons[0] + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
    out.add(
        "reference",
        "warning",
        f"{_count(len(entries), 'snapshot')} (step{'s' if len(entries) > 1 else ''} {steps}) "
        f"{'are' if len(entries) > 1 else 'is'} left out of agreement, movement, calibration and lag: "
        f"{reason}.",
    )


def _param_groups(out: Findings, metrics: Mapping[str, Any]) -> None:
    """A warning when a param group's lr differs from group 0's: arTuRO's one KL bound eps, and the
    ``kl_bound`` of steps.csv, are group 0's lr; the other groups' lr is not that bound."""
    groups = _get(metrics, "run", "param_groups") or []
    rates = [g.get("lr") for g in groups]
    if len(rates) < 2 or not _is_number(rates[0]):
        return
    differ = [(i, lr) for i, lr in enumerate(rates[1:], 1) if _is_number(lr) and lr != rates[0]]
    if not differ:
        return
    # every digit (repr): two rates that differ must not print alike
    shown = "; ".join(f"group {i}: lr {float(lr)!r}" for i, lr in differ[:4]) + (" ..." if len(differ) > 4 else "")
    out.add(
        "param_groups",
        "warning",
        f"{_count(len(differ), 'param group')} of {len(groups)} {'has' if len(differ) == 1 else 'have'} an lr "
        f"other than group 0's ({float(rates[0])!r}): {shown}. The KL bound eps is group 0's lr alone (arTuRO "
        "takes its one trust region from group 0, and the record's kl_bound is it); the other groups' lr "
        "does not bound their step.",
    )


def findings(out: Findings, metrics: Mapping[str, Any]) -> None:
    _divergence(out, metrics)
    _estimator(out, metrics)
    _reference(out, metrics)
    _unusable(out, metrics)
    _param_groups(out, metrics)


QUANTITY = Quantity(
    name="run",
    needs=(
        "record.json (reference_mode, reference_batch, loss, model_class, param_groups, estimator when recorded)",
        "config.toml",
        "snapshots.csv: exact_method, hutchinson_samples, reference_note",
        "snapshots: a, h",
    ),
    compute=compute,
    observer=_Compared,
    findings=findings,
)
