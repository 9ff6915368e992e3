"""The sections of ``report.md`` / ``report.html``, as blocks of :mod:`arturo_diag.report.document`.

The report's own sections, before the quantities' (each quantity of
:data:`arturo_diag.quantities.QUANTITIES` renders its own section with its figures): the title,
the settings (read from the record's ``record.json`` and ``config.toml``) and the findings of the
analysis. They add no new numbers: everything shown is in ``metrics.json`` or the record. A
missing part gives a sentence saying why, never an error.

The title names the optimizer and says what its curvature estimate estimates (``metrics["run"]
["estimator"]``: target and scale). The settings section's ablation switches are arTuRO's: for
another optimizer it lists that optimizer's recorded settings instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag.curvature.references import REFERENCE_METHODS, estimators_of, reference_meaning
from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.quantities._estimator import TARGET_WORDS, estimate_words, is_arturo, optimizer_name
from arturo_diag.report.document import Block, Bullets, Heading, Paragraph, Table, code, strong, text
from arturo_diag.report.format import NA, get, num, plural

__all__ = [
    "SETTINGS_DEFAULTS",
    "findings_section",
    "read_settings",
    "settings_section",
    "title_section",
]

# The published rule (ARTURO.md): the value of each switch that keeps it faithful.
SETTINGS_DEFAULTS: dict[str, Any] = {
    "kl": "decoupled",
    "dual": "bisection",
    "fixed_eta": None,
    "guard": False,
    "oracle": "none",
}
_HYPERPARAMETERS = (
    ("lr", "kl_bound eps (the group's lr)"),
    ("reg_weight", "rho, weight of the KL to the prior"),
    ("prior_prec", "lam, precision of the prior"),
    ("var_init", "initial variance"),
    ("nu", "nu, weight of the covariance part of the KL"),
    ("dynamic_model_noise", "q, filter drift per step"),
    ("measurement_noise", "r, noise of one gradient"),
    ("start_filter_cov", "P0, initial filter variance"),
    ("eta_tol", "bisection tolerance"),
    ("weight_decay", "decoupled weight decay"),
)


# ------------------------------------------------------------------------------ title/settings
def read_settings(record: RunRecord) -> dict[str, tuple[Any, str]]:
    """Option -> (value, source) from ``config.toml`` (``[optimizer]``, ``[schedule]``, ``[run]``),
    else ``record.json``'s ``optimizer``; ``(None, "not recorded")`` when neither has it."""
    config = record.config or {}
    manifest_optimizer = record.manifest.get("optimizer") or {}
    sections = {name: config.get(name) or {} for name in ("run", "optimizer", "schedule", "diagnostics")}
    keys = (
        *SETTINGS_DEFAULTS,
        *(k for k, _ in _HYPERPARAMETERS),
        "optimizer",
        "preset",
        "oracle_every",
        "lr_milestones",
        "lr_gamma",
        "model",
        "dataset",
        "batch_size",
        "seed",
        "dtype",
        "epochs",
        "reference_mode",
        "reference_batch",
        "loss",
        "model_class",
    )
    found: dict[str, tuple[Any, str]] = {}
    for key in keys:
        for section in ("optimizer", "schedule", "run"):
            if isinstance(sections[section], Mapping) and key in sections[section]:
                found[key] = (sections[section][key], f"config.toml [{section}]")
                break
        else:
            if isinstance(manifest_optimizer, Mapping) and key in manifest_optimizer:
                found[key] = (manifest_optimizer[key], "record.json optimizer")
            elif key in record.manifest and key not in ("optimizer",):
                found[key] = (record.manifest[key], "record.json")
            else:
                found[key] = (None, "not recorded")
    return found


def _value_words(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return num(value) if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_words(v) for v in value) + "]"
    return str(value)


def title_section(record: RunRecord, metrics: Mapping[str, Any], name: str | Path) -> list[Block]:
    """Title with the run's name, then one paragraph: model, dataset, steps, snapshots, reference."""
    settings = read_settings(record)
    run = metrics.get("run") or {}
    model = record.manifest.get("model") or settings["model"][0] or record.manifest.get("model_class")
    dataset = record.manifest.get("dataset") or settings["dataset"][0]
    optimizer = record.manifest.get("optimizer_name") or settings["optimizer"][0] or get(run, "optimizer", "name")
    n_epochs = get(metrics, "training", "n_evaluations")
    snapshot_steps = run.get("snapshot_steps") or []
    intervals = {b - a for a, b in zip(snapshot_steps, snapshot_steps[1:])}
    every = f" every {plural(intervals.pop(), 'step')}" if len(intervals) == 1 else ""
    reference = run.get("reference")
    reference_words = {
        "exact": "the exact diagonal Hessian",
        "hutchinson": f"a Hutchinson estimate ({plural(run.get('hutchinson_samples'), 'sample')})",
        "both": "the exact diagonal Hessian (Hutchinson's estimate alongside)",
        "none": "none (no snapshot carries h)",
        "mixed": "exact where available, else Hutchinson (differs between snapshots)",
    }.get(reference) or _registered_words(reference)
    method = run.get("exact_method")
    if reference in ("exact", "both") and method:
        reference_words += f" ({method})"
    note = run.get("reference_note")
    if isinstance(note, str) and note:  # what the GGN / control variate is here; which one auto took, and why
        reference_words += f" [{note}]"
    if reference not in (None, "none"):  # of which loss, on which batch, in which mode
        reference_words += " " + reference_meaning(
            run.get("reference_mode"), run.get("reference_batch"), run.get("loss")
        )
    layers = run.get("layers") or []
    shown_layers = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
    spans = [
        text("Model "),
        strong(str(model or "not recorded")),
        text(" on "),
        strong(str(dataset or "not recorded")),
        text(", optimizer "),
        strong(str(optimizer or "not recorded")),
        text(
            f": {plural(run.get('steps'), 'step')}"
            + (f" ({plural(n_epochs, 'evaluation')})" if n_epochs else "")
            + f", {plural(run.get('n_snapshots'), 'snapshot')}{every}; "
            f"{plural(run.get('n_parameters'), 'parameter')} in {plural(run.get('n_tensors'), 'tensor')} "
            f"({plural(len(layers), 'layer')}: {shown_layers or 'none'}). Reference h: {reference_words}. "
            f"Record kind {run.get('kind')}, status {run.get('status')}, written by arturo-diag "
            f"{run.get('arturo_diag_version') or 'of unknown version'}."
        ),
    ]
    comparison = cv_comparison_paragraph(metrics)
    return [
        Heading(1, (text(report_title(metrics, "")), code(str(name)))),
        Paragraph(tuple(spans)),
        *([comparison] if comparison is not None else []),
        _estimate_paragraph(metrics),
    ]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _verdict(lo: Any, hi: Any) -> str:
    """Better / worse only where the 95 % interval excludes 1, else inconclusive."""
    if not (_finite(lo) and _finite(hi)):
        return "inconclusive (no interval: fewer than 6 probes)"
    if lo > 1:
        return "the control variate is better"
    if hi < 1:
        return "the control variate is worse"
    return "inconclusive (the interval contains 1)"


def cv_comparison_paragraph(metrics: Mapping[str, Any]) -> Paragraph | None:
    """The control variate against plain Hutchinson on its own probes (metrics'
    ``agreement.reference_noise`` entries of the cv snapshots: ``cv_se_rms``, ``plain_se_rms``,
    ``cv_variance_reduction`` and its bounds): the last one's numbers, the spread over the cv
    snapshots, and what "equal HVP cost" counts. None for a run without a cv snapshot, or one
    recorded before these columns."""
    entries = [
        e for e in (get(metrics, "agreement", "reference_noise", "snapshots") or []) if "cv_variance_reduction" in e
    ]
    if not entries:
        return None
    rows = pd.DataFrame(entries)
    lead = strong("Control variate vs plain Hutchinson at equal HVP cost (the same S probes):")
    cost = (
        ' "Equal HVP cost" counts Hessian-vector products: the control variate additionally pays the exact GGN '
        "diagonal and one GGN-vector product per probe."
    )
    ratios = rows["cv_variance_reduction"].astype(float)
    probed = rows[ratios.notna()]
    if probed.empty:
        return Paragraph(
            (
                lead,
                text(
                    " no comparison: the control variate drew no probe (diag(H - G) = 0 proved, so it is exact and "
                    "its standard error 0)."
                ),
            )
        )
    last = probed.iloc[-1]
    ratio, lo, hi = (float(last[c]) for c in ("cv_variance_reduction", "cv_variance_reduction_lo",
                                                "cv_variance_reduction_hi"))  # fmt: skip
    samples = last.get("samples")
    ratio_words = f"{num(ratio)}x" if _finite(ratio) else "infinite (the residual's terms did not vary)"
    interval = f" (95 % CI {num(lo)}-{num(hi)})" if _finite(lo) and _finite(hi) else ""
    words = (
        f" at step {int(last['step'])} ({plural(samples, 'probe')}): RMS SE {num(float(last['cv_se_rms']))} vs "
        f"{num(float(last['plain_se_rms']))}, variance reduction {ratio_words}{interval}: {_verdict(lo, hi)}."
    )
    if len(probed) > 1:
        values = probed["cv_variance_reduction"].astype(float)
        lows = probed["cv_variance_reduction_lo"].astype(float)
        highs = probed["cv_variance_reduction_hi"].astype(float)
        words += (
            f" Over the {len(probed)} snapshots with probes: median {num(float(values.median()))}x "
            f"(range {num(float(values.min()))}-{num(float(values.max()))}); the interval excluded 1 in favour of "
            f"the control variate at {int((lows > 1).sum())}, against it at {int((highs < 1).sum())}."
        )
    unprobed = len(rows) - len(probed)
    if unprobed:
        words += f" {plural(unprobed, 'cv snapshot')} drew no probe (diag(H - G) = 0 proved)."
    return Paragraph((lead, text(words + cost)))


def _registered_words(reference: Any) -> str:
    """A reference method of curvature/references.py not worded above, by its estimators' words."""
    if isinstance(reference, str) and reference in REFERENCE_METHODS:
        return "the " + " and the ".join(e.words for e in estimators_of(reference))
    return str(reference)


def report_title(metrics: Mapping[str, Any], name: str) -> str:
    """ "arTuRO diagnostics: NAME", or for another optimizer "Curvature diagnostics (adam): NAME"."""
    if is_arturo(metrics):
        return f"arTuRO diagnostics: {name}"
    return f"Curvature diagnostics ({optimizer_name(metrics)}): {name}"


def _estimate_paragraph(metrics: Mapping[str, Any]) -> Paragraph:
    """Whose curvature estimate the snapshots hold, what it estimates and on what scale."""
    info = get(metrics, "run", "estimator")
    if not info:
        return Paragraph(
            (
                strong("Curvature estimate: none."),
                text(
                    f" No curvature adapter reads the optimizer {optimizer_name(metrics)}, so the snapshots hold "
                    "no estimate to compare with h (arturo_diag.estimators.register_adapter adds one)."
                ),
            )
        )
    target = info.get("target")
    words = estimate_words(metrics)
    return Paragraph(
        (
            strong("Curvature estimate:"),
            text(
                f" {'The ' + words[4:] if words.startswith('the ') else words} estimates "
                f"{TARGET_WORDS.get(target, target)} (target {target}). Scale: "
                f"{info.get('scale') or 'not recorded'}"
                + ("" if info.get("source") == "record.json" else f" ({info.get('source')})")
                + "."
            ),
        )
    )


def settings_section(record: RunRecord, metrics: Mapping[str, Any]) -> list[Block]:
    """Which options were on (faithful by default; kl, dual, fixed_eta, guard, oracle, drift) and the
    hyperparameters, read from ``config.toml`` and ``record.json``; for an optimizer other than arTuRO,
    its recorded settings (``record.json``'s ``optimizer``): arTuRO's switches do not apply to it."""
    if not is_arturo(metrics):
        return _other_settings(record, metrics)
    settings = read_settings(record)
    rows = []
    changed = []
    for option, value, meaning, faithful in _switches(settings):
        source = settings[option][1] if option in settings else ""
        rows.append(
            (
                option,
                value,
                "published" if faithful else "not recorded" if faithful is None else "ablation",
                meaning,
                source,
            )
        )
        if faithful is False:
            changed.append(f"{option} = {value}")

    unknown = [r[0] for r in rows if r[2] == "not recorded"]
    if changed:
        verdict = (strong("Not the published rule."), text(" Options on: " + "; ".join(changed) + "."))
    else:
        verdict = (
            strong("Faithful to the published rule"),
            text(
                " (ARTURO.md): every ablation switch is off"
                + (f"; not recorded: {', '.join(unknown)} (assumed as published)." if unknown else ".")
            ),
        )
    return [
        Heading(2, (text("Settings"),)),
        Paragraph(verdict),
        Table(("Option", "Setting", "Rule", "Meaning", "Read from"), tuple(rows), align=("l", "l", "l", "l", "l")),
        _hyperparameter_table(settings),
    ]


def _other_settings(record: RunRecord, metrics: Mapping[str, Any]) -> list[Block]:
    """Another optimizer's settings as record.json holds them (its param group 0)."""
    recorded = record.manifest.get("optimizer") or {}
    rows = tuple(
        (str(key), f"{value:.6g}" if isinstance(value, float) else _value_words(value), "record.json optimizer")
        for key, value in (recorded.items() if isinstance(recorded, Mapping) else ())
    )
    return [
        Heading(2, (text("Settings"),)),
        Paragraph(
            f"Optimizer {optimizer_name(metrics)}: arTuRO's ablation switches (kl, dual, fixed_eta, guard, oracle, "
            "drift) do not apply to it. Its settings as recorded:"
        ),
        Table(("Setting", "Value", "Read from"), rows, align=("l", "r", "l")),
    ]


def _switches(settings: Mapping[str, tuple[Any, str]]) -> list[tuple[str, str, str, bool | None]]:
    """(option, setting, meaning, faithful) of each ablation switch; faithful is None when not recorded."""
    kl, dual, fixed, guard, oracle = (settings[k][0] for k in ("kl", "dual", "fixed_eta", "guard", "oracle"))
    q = settings["dynamic_model_noise"][0]
    eta_tol = settings["eta_tol"][0]
    switches: list[tuple[str, str, str, bool | None]] = [
        (
            "kl",
            str(kl or "decoupled (assumed)"),
            "constraint on the mean part of the KL" if kl in (None, "decoupled") else "one constraint on the full KL",
            None if kl is None else kl == "decoupled",
        ),
        (
            "dual",
            str(dual or "bisection (assumed)") + (f", eta_tol {num(eta_tol)}" if eta_tol is not None else ""),
            "published bisection (with its floor and 5/3 growth)"
            if dual in (None, "bisection")
            else "exact root of K(eta) = eps",
            None if dual is None else dual == "bisection",
        ),
        (
            "fixed_eta",
            "off" if fixed is None else num(fixed),
            "eta from the trust region" if fixed is None else "eta fixed every step (trust region off)",
            fixed is None if settings["fixed_eta"][1] != "not recorded" else None,
        ),
        (
            "guard",
            _value_words(bool(guard)) if guard is not None else "not recorded",
            "positivity of pi' and of the denominator kept" if guard else "no positivity guard (as published)",
            None if guard is None else not bool(guard),
        ),
    ]
    oracle_every = settings["oracle_every"][0]
    switches.append(
        (
            "oracle",
            str(oracle or "none")
            + (f", every {oracle_every} steps" if oracle not in (None, "none") and oracle_every else ""),
            "a is the filter's own estimate"
            if oracle in (None, "none")
            else "a replaced by the minibatch's diagonal Hessian",
            None if oracle is None else oracle == "none",
        )
    )
    if q is None:
        switches.append(("dynamic_model_noise", "not recorded", "filter drift q", None))
    else:
        switches.append(
            (
                "dynamic_model_noise",
                f"q = {num(q)}" + (" (drift on)" if q > 0 else " (no drift)"),
                "filter drift added to P_bb and P_aa every step"
                if q > 0
                else "no drift: plain recursive least squares, its gain decays",
                q > 0,
            )
        )
    return switches


def _hyperparameter_table(settings: Mapping[str, tuple[Any, str]]) -> Table:
    """The hyperparameters (each, recorded or not), then the run's other settings that were recorded."""
    hyper = []
    for key, meaning in _HYPERPARAMETERS:
        value, source = settings[key]
        hyper.append((key, _value_words(value) if value is not None else NA, meaning, source))
    for key, meaning in (
        ("preset", "published hyperparameter set"),
        ("lr_milestones", "epochs at which the KL bound is multiplied by lr_gamma"),
        ("lr_gamma", "factor of the KL bound at each milestone"),
        ("batch_size", "minibatch size"),
        ("seed", "seed of data, init, batches and probes"),
        ("dtype", "parameter dtype"),
        ("loss", "the training loss (h is its Hessian)"),
        ("reference_mode", "the model's mode while h is taken"),
        ("reference_batch", "the batch h is taken on"),
        ("model_class", "the model's class"),
    ):
        value, source = settings[key]
        if value is not None:
            hyper.append((key, _value_words(value), meaning, source))
    return Table(("Hyperparameter", "Value", "Meaning", "Read from"), tuple(hyper), align=("l", "r", "l", "l"))


def findings_section(findings: Sequence[Mapping[str, Any]]) -> list[Block]:
    """The findings of the analysis in words, warnings first (each group in the analysis' order)."""
    ordered = [f for f in findings if f.get("severity") == "warning"] + [
        f for f in findings if f.get("severity") != "warning"
    ]
    blocks: list[Block] = [Heading(2, (text("Findings"),))]
    if not ordered:
        return blocks + [Paragraph("No findings.")]
    items = tuple(
        (
            (strong("Warning:"), text(" " + str(f["text"])))
            if f.get("severity") == "warning"
            else (text(str(f["text"])),)
        )
        for f in ordered
    )
    classes = tuple("warning" if f.get("severity") == "warning" else "" for f in ordered)
    return blocks + [Bullets(items, classes)]
