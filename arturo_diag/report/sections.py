"""The sections of ``report.md`` / ``report.html``, as blocks of :mod:`arturo_diag.report.document`.

Each ``*_section`` function turns one part of the metrics dict of
:func:`~arturo_diag.diagnostics.analysis.analyze_record` (and, for the title and the settings,
the record's ``record.json`` and ``config.toml``) into headings, sentences and tables. They add
no new numbers: everything shown is in ``metrics.json`` or the record. A missing part gives a
sentence saying why, never an error. Order (ARTURO.md, "Diagnostic quantities"): title, Settings,
Findings, Agreement, Movement, Calibration, Lag, Trust region, Health, Training, Figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from arturo_diag.diagnostics.record import RunRecord
from arturo_diag.report.document import Block, Bullets, Heading, Image, Paragraph, Table, code, strong, text
from arturo_diag.report.format import NA, count, distinguishing_digits, get, is_number, num, pct

__all__ = [
    "SETTINGS_DEFAULTS",
    "agreement_section",
    "calibration_section",
    "figures_section",
    "findings_section",
    "health_section",
    "lag_section",
    "movement_section",
    "read_settings",
    "settings_section",
    "title_section",
    "training_section",
    "trust_region_section",
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
_METRIC_ROWS = (
    ("relative_error", "relative error (lower is better)", num),
    ("cosine", "cosine (higher is better)", num),
    ("spearman", "Spearman (higher is better)", num),
    ("sign_agreement", "sign agreement (higher is better)", pct),
    ("log_ratio_abs_median", "median |log10(|a|/|h|)| (lower is better)", num),
)
_METRIC_WORDS = {"spearman": "Spearman", "relative_error": "relative error"}
_REFERENCE_WORDS = {"h_exact": "the exact diagonal Hessian h", "h_hutchinson": "the Hutchinson estimate of h"}
_MAX_SNAPSHOT_ROWS = 30
_MANY_LAYERS = 10  # above this, per-layer agreement is one compact row per layer


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else NA


def _plural(n: Any, noun: str) -> str:
    return f"{count(n)} {noun}" + ("" if is_number(n) and float(n) == 1 else "s")


def _not_computed(reason: str) -> Paragraph:
    return Paragraph((strong("Not computed:"), text(" " + reason)), css_class="note")


def _no_reference_reason(metrics: Mapping[str, Any]) -> str:
    run = metrics.get("run") or {}
    if not run.get("n_snapshots"):
        return 'the record has no snapshots (reference "none", or no snapshot was due), so a cannot be compared with h.'
    return (
        f"none of the {run['n_snapshots']} snapshots has both the curvature estimate a and a reference h "
        f"(reference: {run.get('reference')})."
    )


def _thin(rows: Sequence[Any], limit: int) -> tuple[list[Any], bool]:
    """At most ``limit`` evenly spaced rows, first and last included."""
    if len(rows) <= limit:
        return list(rows), False
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks], True


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


def title_section(record: RunRecord, metrics: Mapping[str, Any], run_dir: Path) -> list[Block]:
    """Title with the run directory, then one paragraph: model, dataset, steps, snapshots, reference."""
    settings = read_settings(record)
    run = metrics.get("run") or {}
    model = record.manifest.get("model") or settings["model"][0]
    dataset = record.manifest.get("dataset") or settings["dataset"][0]
    optimizer = record.manifest.get("optimizer_name") or settings["optimizer"][0] or get(run, "optimizer", "name")
    n_epochs = get(metrics, "training", "n_evaluations")
    snapshot_steps = run.get("snapshot_steps") or []
    intervals = {b - a for a, b in zip(snapshot_steps, snapshot_steps[1:])}
    every = f" every {_plural(intervals.pop(), 'step')}" if len(intervals) == 1 else ""
    reference = run.get("reference")
    reference_words = {
        "exact": "the exact diagonal Hessian",
        "hutchinson": f"a Hutchinson estimate ({_plural(run.get('hutchinson_samples'), 'sample')})",
        "both": "the exact diagonal Hessian (Hutchinson's estimate alongside)",
        "none": "none (no snapshot carries h)",
        "mixed": "exact where available, else Hutchinson (differs between snapshots)",
    }.get(reference, str(reference))
    method = run.get("exact_method")
    if reference in ("exact", "both") and method:
        reference_words += f", {method}"
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
            f": {_plural(run.get('steps'), 'step')}"
            + (f" ({_plural(n_epochs, 'evaluation')})" if n_epochs else "")
            + f", {_plural(run.get('n_snapshots'), 'snapshot')}{every}; "
            f"{_plural(run.get('n_parameters'), 'parameter')} in {_plural(run.get('n_tensors'), 'tensor')} "
            f"({_plural(len(layers), 'layer')}: {shown_layers or 'none'}). Reference h: {reference_words}. "
            f"Record kind {run.get('kind')}, status {run.get('status')}, written by arturo-diag "
            f"{run.get('arturo_diag_version') or 'of unknown version'}."
        ),
    ]
    return [Heading(1, (text("arTuRO diagnostics: "), code(str(run_dir)))), Paragraph(tuple(spans))]


def settings_section(record: RunRecord, metrics: Mapping[str, Any]) -> list[Block]:
    """Which options were on (faithful by default; kl, dual, fixed_eta, guard, oracle, drift) and the
    hyperparameters, read from ``config.toml`` and ``record.json``."""
    settings = read_settings(record)
    rows = []
    changed = []
    kl, dual, fixed, guard, oracle = (settings[k][0] for k in ("kl", "dual", "fixed_eta", "guard", "oracle"))
    q = settings["dynamic_model_noise"][0]
    eta_tol = settings["eta_tol"][0]

    def row(option: str, value: str, meaning: str, faithful: bool | None) -> None:
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

    row(
        "kl",
        str(kl or "decoupled (assumed)"),
        "constraint on the mean part of the KL" if kl in (None, "decoupled") else "one constraint on the full KL",
        None if kl is None else kl == "decoupled",
    )
    row(
        "dual",
        str(dual or "bisection (assumed)") + (f", eta_tol {num(eta_tol)}" if eta_tol is not None else ""),
        "published bisection (with its floor and 5/3 growth)"
        if dual in (None, "bisection")
        else "exact root of K(eta) = eps",
        None if dual is None else dual == "bisection",
    )
    row(
        "fixed_eta",
        "off" if fixed is None else num(fixed),
        "eta from the trust region" if fixed is None else "eta fixed every step (trust region off)",
        fixed is None if settings["fixed_eta"][1] != "not recorded" else None,
    )
    row(
        "guard",
        _value_words(bool(guard)) if guard is not None else "not recorded",
        "positivity of pi' and of the denominator kept" if guard else "no positivity guard (as published)",
        None if guard is None else not bool(guard),
    )
    oracle_every = settings["oracle_every"][0]
    row(
        "oracle",
        str(oracle or "none")
        + (f", every {oracle_every} steps" if oracle not in (None, "none") and oracle_every else ""),
        "a is the filter's own estimate"
        if oracle in (None, "none")
        else "a replaced by the minibatch's diagonal Hessian",
        None if oracle is None else oracle == "none",
    )
    if q is None:
        row("dynamic_model_noise", "not recorded", "filter drift q", None)
    else:
        row(
            "dynamic_model_noise",
            f"q = {num(q)}" + (" (drift on)" if q > 0 else " (no drift)"),
            "filter drift added to P_bb and P_aa every step"
            if q > 0
            else "no drift: plain recursive least squares, its gain decays",
            q > 0,
        )

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
    blocks: list[Block] = [
        Heading(2, (text("Settings"),)),
        Paragraph(verdict),
        Table(("Option", "Setting", "Rule", "Meaning", "Read from"), tuple(rows), align=("l", "l", "l", "l", "l")),
    ]
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
    ):
        value, source = settings[key]
        if value is not None:
            hyper.append((key, _value_words(value), meaning, source))
    blocks.append(Table(("Hyperparameter", "Value", "Meaning", "Read from"), tuple(hyper), align=("l", "r", "l", "l")))
    return blocks


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


# ----------------------------------------------------------------------------------- agreement
def agreement_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Agreement of a with h at the final snapshot, per layer, each metric beside the constant-0.1 and
    previous-h baselines; says explicitly where the estimate does not beat the constant."""
    blocks: list[Block] = [Heading(2, (text("Agreement"),))]
    block = metrics.get("agreement") or {}
    final = block.get("final")
    if not final:
        return blocks + [_not_computed(_no_reference_reason(metrics))]
    step, overall = final["step"], final["overall"]
    value = overall.get("constant_value", 0.1)
    constant_name = f"constant {num(value)}"
    reference = _REFERENCE_WORDS.get(final.get("reference"), "h")
    blocks.append(
        Paragraph(
            f"At the final snapshot (step {step}) arTuRO's curvature estimate a is compared with {reference}. Every "
            f"number stands beside what two baselines score: the {constant_name} (arTuRO's initial a) and the "
            "previous snapshot's h (a perfect estimate one snapshot late). An agreement number means something only "
            "next to what a constant scores."
        )
    )
    estimate, constant = overall["estimate"], overall["constant"]
    verdict = overall.get("beats_constant") or {}
    pair = (estimate["relative_error"], constant["relative_error"])
    digits = distinguishing_digits(pair)
    versus = f"({num(pair[0], digits)} vs {num(pair[1], digits)})"
    if verdict.get("relative_error") is not True:
        sentence = (
            strong(f"The estimate does not beat the {constant_name}"),
            text(f" on relative error over all coordinates {versus}."),
        )
    else:
        sentence = (text(f"The estimate beats the {constant_name} on relative error over all coordinates {versus}."),)
    lost = (overall.get("beats_constant_summary") or {}).get("lost_on") or []
    words = {m: label.split(" (")[0] for m, label, _ in _METRIC_ROWS}
    if lost:
        sentence += (text(" It does not beat the constant on: " + ", ".join(words.get(m, m) for m in lost) + "."),)
    layers = final.get("layers") or {}
    losing = [layer for layer, entry in layers.items() if get(entry, "beats_constant", "relative_error") is not True]
    if losing:
        sentence += (
            text(
                f" Per layer, the estimate does not beat the constant on relative error in "
                f"{len(losing)} of {len(layers)}: {', '.join(losing[:12])}"
                + (f" and {len(losing) - 12} more" if len(losing) > 12 else "")
                + "."
            ),
        )
    previous = overall.get("previous_h")
    if previous:
        better = (overall.get("beats_previous_h") or {}).get("relative_error")
        sentence += (
            text(
                f" The previous snapshot's h scores relative error {num(previous['relative_error'])} "
                + ("(the estimate is closer)." if better else "(closer than the estimate).")
            ),
        )
    entries = block.get("snapshots") or []
    if len(entries) > 1:
        wins = sum(1 for e in entries if get(e, "overall", "beats_constant", "relative_error") is True)
        sentence += (
            text(
                f" Over the run, the estimate's relative error was below the constant's at {wins} of "
                f"{len(entries)} snapshots."
            ),
        )
    blocks.append(Paragraph(sentence))

    caption = (
        f"Agreement at step {step}; the constant has no ranks, so its Spearman is undefined and a beats it "
        "when its own Spearman is above 0."
    )
    header = (
        "Layer (coordinates)",
        "Metric",
        "a (estimate)",
        constant_name,
        "previous h",
        "a beats constant",
        "a beats previous h",
    )
    long_entries = [("all coordinates", overall)] + (list(layers.items()) if len(layers) <= _MANY_LAYERS else [])
    blocks.append(
        Table(header, tuple(_agreement_rows(long_entries)), align=("l", "l", "r", "r", "r", "r", "r"), caption=caption)
    )
    if len(layers) > _MANY_LAYERS:
        rows = []
        for name, entry in layers.items():
            cells = [f"{name} ({count(get(entry, 'estimate', 'n'))})"]
            for metric, kinds, fmt in (
                ("relative_error", ("estimate", "constant", "previous_h"), num),
                ("cosine", ("estimate", "constant", "previous_h"), num),
                ("spearman", ("estimate", "previous_h"), num),
                ("sign_agreement", ("estimate", "constant", "previous_h"), pct),
            ):
                values = [get(entry, kind, metric) for kind in kinds]
                digits = distinguishing_digits(values, fmt)
                cells += [fmt(v, digits) for v in values]
            rows.append((*cells, _yes_no(get(entry, "beats_constant", "relative_error"))))
        blocks.append(
            Table(
                (
                    "Layer (coordinates)",
                    "rel. error a",
                    "const.",
                    "prev. h",
                    "cosine a",
                    "const.",
                    "prev. h",
                    "Spearman a",
                    "prev. h",
                    "sign agr. a",
                    "const.",
                    "prev. h",
                    "a beats const. (rel. error)",
                ),
                tuple(rows),
                caption=f"Per layer at step {step} ({len(layers)} layers, one row each; const. = the {constant_name}).",
            )
        )

    hutchinson = get(block, "hutchinson_vs_exact", "final")
    if hutchinson:
        rows = []
        for name, entry in [("all coordinates", hutchinson["overall"]), *(hutchinson.get("layers") or {}).items()]:
            a_entry = overall if name == "all coordinates" else layers.get(name) or {}
            rows.append(
                (
                    name,
                    num(entry.get("relative_error")),
                    num(entry.get("spearman")),
                    num(get(a_entry, "estimate", "relative_error")),
                    num(get(a_entry, "estimate", "spearman")),
                )
            )
        blocks.append(
            Table(
                ("Layer", "Hutchinson rel. error", "Hutchinson Spearman", "a rel. error", "a Spearman"),
                tuple(rows),
                caption=f"Hutchinson's estimate against the exact h at step {hutchinson['step']}, beside arTuRO's a.",
            )
        )
    noise = get(block, "reference_noise", "final")
    if noise:
        blocks.append(
            Paragraph(
                f"Noise of the Hutchinson reference at step {noise['step']}: standard error {num(noise.get('relative_se'))} "
                f"of ||h|| (median SE/|h| {num(noise.get('median_se_over_abs_h'))}, "
                f"{_plural(noise.get('samples'), 'sample')}); agreement below that level cannot be resolved."
            )
        )
    return blocks


def _agreement_rows(entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, ...]]:
    rows = []
    for name, entry in entries:
        label = f"{name} ({count(get(entry, 'estimate', 'n'))})"
        for i, (metric, words, fmt) in enumerate(_METRIC_ROWS):
            values = [get(entry, kind, metric) for kind in ("estimate", "constant", "previous_h")]
            digits = distinguishing_digits(values, fmt)
            rows.append(
                (
                    label if i == 0 else "",
                    words,
                    *(fmt(v, digits) for v in values),
                    _yes_no(get(entry, "beats_constant", metric)),
                    _yes_no(get(entry, "beats_previous_h", metric)),
                )
            )
    return rows


def movement_section(metrics: Mapping[str, Any]) -> list[Block]:
    """How far a has left its prior 0.1, relative to |h|, per layer at the final snapshot."""
    blocks: list[Block] = [Heading(2, (text("Movement"),))]
    final = get(metrics, "movement", "final")
    if not final:
        return blocks + [_not_computed(_no_reference_reason(metrics))]
    overall = final["overall"]
    prior = overall.get("prior", 0.1)
    scale = overall.get("scale_relative_move")
    blocks.append(
        Paragraph(
            f"How far a has moved from its initial value {num(prior)} at the final snapshot (step {final['step']}), "
            f"measured against the size of what it should track: the median over coordinates of |a - {num(prior)}| / |h| "
            f"(1 means a moved by about the size of h; dominated by the many tiny |h|), the move on the scale of the "
            f"typical curvature, median |a - {num(prior)}| / median |h|, the share of coordinates that never left the "
            f"prior (moved by less than 1e-3 |h|), and the 1%-99% ranges of a and h. Over all coordinates: median move "
            f"{num(overall['median_relative_move'])}"
            + (f", move on the scale of h {num(scale)}" if "scale_relative_move" in overall else "")
            + f", {pct(overall['never_left_share'])} never left the prior, a in [{num(overall['a_q01'])}, "
            f"{num(overall['a_q99'])}]"
            + (
                f" while h is in [{num(overall.get('h_q01'))}, {num(overall.get('h_q99'))}]"
                if "h_q01" in overall
                else ""
            )
            + "."
        )
    )
    rows = []
    for name, entry in [("all coordinates", overall), *(final.get("layers") or {}).items()]:
        rows.append(
            (
                name,
                num(entry.get("median_relative_move")),
                num(entry.get("scale_relative_move")),
                pct(entry.get("never_left_share")),
                f"[{num(entry.get('a_q01'))}, {num(entry.get('a_q99'))}]",
                num(entry.get("a_median")),
                f"[{num(entry.get('h_q01'))}, {num(entry.get('h_q99'))}]",
                count(entry.get("n_h_zero")),
            )
        )
    blocks.append(
        Table(
            (
                "Layer",
                f"median |a-{num(prior)}|/|h|",
                f"median |a-{num(prior)}| / median |h|",
                "never left the prior",
                "a 1%-99%",
                "a median",
                "h 1%-99%",
                "coordinates with h = 0",
            ),
            tuple(rows),
        )
    )
    return blocks


def calibration_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Coverage beside sharpness of the filter's P_aa, with the interpretation, per layer."""
    blocks: list[Block] = [Heading(2, (text("Calibration"),))]
    block = metrics.get("calibration") or {}
    final = block.get("final")
    if not final:
        reason = (
            _no_reference_reason(metrics)
            if not get(metrics, "agreement", "final")
            else "no snapshot holds the filter variance P_aa (filter_cov_aa) of every parameter."
        )
        return blocks + [_not_computed(reason)]
    overall = final["overall"]
    blocks.append(
        Paragraph(
            f"The filter claims Var(a) = P_aa. Coverage is the share of coordinates with |a-h| <= 2 sqrt(P_aa) "
            f"({pct(overall.get('gaussian_coverage'))} if calibrated); sharpness is the median of |a-h| / sqrt(P_aa) "
            f"({num(overall.get('gaussian_sharpness'))} if calibrated). Coverage alone is not enough: a claimed "
            "uncertainty far wider than the error gives full coverage that means nothing. Labels: calibrated "
            "(coverage 85%-99% and sharpness 0.4-1), vacuous (sharpness below 0.2), overconfident (coverage below "
            "50% or sharpness above 2), miscalibrated otherwise."
        )
    )
    label = overall.get("interpretation")
    blocks.append(
        Paragraph(
            (
                text(f"At the final snapshot (step {final['step']}) the filter is "),
                strong(str(label)),
                text(
                    f": coverage {pct(overall.get('coverage'))}, sharpness {num(overall.get('sharpness'))} "
                    f"(median sqrt(P_aa) {num(overall.get('median_sqrt_p_aa'))} vs median |a-h| "
                    f"{num(overall.get('median_abs_error'))})."
                ),
            )
        )
    )
    rows = []
    for name, entry in [("all coordinates", overall), *(final.get("layers") or {}).items()]:
        rows.append(
            (
                name,
                pct(entry.get("coverage")),
                num(entry.get("sharpness")),
                str(entry.get("interpretation")),
                num(entry.get("median_sqrt_p_aa")),
                num(entry.get("median_abs_error")),
                count(entry.get("n_nonpositive_variance")),
            )
        )
    blocks.append(
        Table(
            ("Layer", "coverage", "sharpness", "interpretation", "median sqrt(P_aa)", "median |a-h|", "P_aa <= 0"),
            tuple(rows),
            align=("l", "r", "r", "l", "r", "r", "r"),
        )
    )
    entries = block.get("snapshots") or []
    if len(entries) > 1:
        labels: dict[str, int] = {}
        for entry in entries:
            key = str(get(entry, "overall", "interpretation"))
            labels[key] = labels.get(key, 0) + 1
        blocks.append(
            Paragraph(
                f"Over all {len(entries)} snapshots the overall label was: "
                + ", ".join(f"{key} at {_plural(n, 'snapshot')}" for key, n in labels.items())
                + "."
            )
        )
    return blocks


def lag_section(metrics: Mapping[str, Any]) -> list[Block]:
    """The lag curve (agreement of a_t with h_(t-k) against k) with its noise, and the verdict."""
    blocks: list[Block] = [Heading(2, (text("Lag"),))]
    lag = metrics.get("lag") or {}
    curves = lag.get("curves") or {}
    reason = str(lag.get("reason") or "not assessed")
    if not curves:
        if not get(metrics, "agreement", "final"):
            return blocks + [_not_computed(_no_reference_reason(metrics))]
        return blocks + [_not_computed(f"lag {reason}.")]
    sentence = reason[0].upper() + reason[1:] + "."
    blocks.append(
        Paragraph(
            "Agreement of a_t with the reference of k snapshots earlier, h_(t-k), averaged over the same snapshots t "
            f"for every k ({lag.get('window')} window). The best k is the lag when the curve's range exceeds the "
            "snapshot-to-snapshot noise of the agreement; otherwise there is no identifiable lag. "
            f"The lag is decided by {_METRIC_WORDS.get(lag.get('metric'), str(lag.get('metric')))}."
        )
    )
    if lag.get("identifiable"):
        best_k = lag.get("best_k")
        verdict = (
            f"Lag: {_plural(best_k, 'snapshot')} ({num(lag.get('best_lag_steps'))} steps)."
            if best_k
            else "No lag: a_t agrees best with the same snapshot's h."
        )
        blocks.append(Paragraph((strong(verdict), text(" " + sentence))))
    else:
        blocks.append(Paragraph((strong(sentence),)))
    spearman, relative = curves.get("spearman") or {}, curves.get("relative_error") or {}
    ks = spearman.get("k") or relative.get("k") or []
    interval = lag.get("snapshot_interval") if lag.get("interval_regular") else None
    rows = []
    for i, k in enumerate(ks):
        rows.append(
            (
                str(k),
                num(k * interval) if is_number(interval) else NA,
                num(get(spearman, "mean", i)),
                num(get(relative, "mean", i)),
                count(get(spearman, "n", i)),
            )
        )
    rows.append(("range", "", num(spearman.get("range")), num(relative.get("range")), ""))
    rows.append(("snapshot noise", "", num(spearman.get("noise")), num(relative.get("noise")), ""))
    blocks.append(
        Table(("k (snapshots)", "steps back", "Spearman", "relative error", "snapshots averaged"), tuple(rows))
    )
    return blocks


# -------------------------------------------------------------------------------- trust region
def trust_region_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Regime shares (bisection active, 5/3 growth, frozen at the floor, overshoot), binding share and
    eta vs eta* at snapshots, and the overshoot after each KL-bound drop."""
    blocks: list[Block] = [Heading(2, (text("Trust region"),))]
    tr = metrics.get("trust_region") or {}
    if not tr.get("available"):
        blocks.append(_not_computed(f"{tr.get('reason') or 'no trust-region data'} (not an arTuRO run, or no steps)."))
        return blocks + _binding_blocks(tr.get("snapshots"))
    eta_tol = tr.get("eta_tol")
    burn_in = tr.get("burn_in")
    if tr.get("fixed_eta") is not None:  # trust region off: the bisection's regimes do not apply
        blocks.append(
            Paragraph(
                f"eta was fixed at {num(tr['fixed_eta'])} at every one of the {_plural(tr.get('n_steps'), 'step')} "
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
            f"over all {_plural(tr.get('n_steps'), 'step')} and after the burn-in (steps after {burn_in}, "
            f"{count(tr.get('n_steps_after_burn_in'))} steps)."
        )
    )
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
    blocks.append(Table(("Regime", "steps", "share of all steps", f"share after step {burn_in}"), tuple(rows)))

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
    if run_rows:
        blocks.append(
            Table(
                ("Inactive run", "steps", "length", "eta", "K/eps range", "K/eps first -> last"),
                tuple(run_rows),
                align=("l", "r", "r", "r", "r", "r"),
                caption="The longest runs of consecutive inactive steps (up to 10 of each kind), in time order.",
            )
        )

    drops = tr.get("bound_drops") or []
    if drops:
        rows = []
        for drop in drops:
            peak_step = drop.get("peak_step")
            recover = (
                f"{_plural(drop.get('steps_to_recover'), 'step')} (step {drop.get('recovery_step')})"
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
        blocks.append(
            Table(
                ("KL-bound drop at step", "bound", "factor", "peak K/eps", "back to K/eps <= 1.1 after"),
                tuple(rows),
                caption="The bracket moves at most 3x per step, so K/eps overshoots after "
                "the scheduler drops the bound.",
            )
        )
    else:
        blocks.append(Paragraph("The KL bound never dropped during the run."))
    return blocks + _binding_blocks(tr.get("snapshots"))


def _binding_blocks(binding: Mapping[str, Any] | None) -> list[Block]:
    if not binding or not binding.get("n"):
        return [Paragraph("No snapshot recorded K(0)/eps or eta*, so binding and eta vs eta* are not assessed.")]
    blocks: list[Block] = [
        Paragraph(
            f"At snapshots the trust region binds when the unconstrained step would exceed the bound, K(0)/eps > 1: "
            f"it bound at {pct(binding.get('binding_share'))} of {_plural(binding['n'], 'snapshot')}. Where it bound, the "
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
            _yes_no(r.get("binds")),
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


# -------------------------------------------------------------------------------------- health
def health_section(metrics: Mapping[str, Any]) -> list[Block]:
    """eta and its bracket position, bisection iterations, K/eps quantiles, precision quantiles, variance
    collapse and the non-positive precision/denominator events."""
    blocks: list[Block] = [Heading(2, (text("Health"),))]
    health = metrics.get("health") or {}
    eta = health.get("eta") or {}
    if eta.get("n"):
        position = eta.get("bracket_position") or {}
        blocks.append(
            Table(
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
        )
    else:
        blocks.append(Paragraph("No eta was recorded per step (not an arTuRO run)."))
    iterations = health.get("iterations") or {}
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
    kl = health.get("kl_ratio") or {}
    if kl.get("n"):
        blocks.append(
            Table(
                ("K(eta)/eps", "5%", "25%", "50%", "75%", "95%", "max"),
                (("over steps",) + tuple(num(kl.get(q)) for q in ("q05", "q25", "q50", "q75", "q95", "max")),),
                caption="Achieved KL relative to the bound (1 = on the bound).",
            )
        )
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
        blocks.append(Table(("At the final snapshot (step %s)" % final.get("step"), "value"), tuple(rows)))
    events = health.get("nonpositive") or {}
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
    if rows:
        blocks.append(
            Table(
                ("Non-positive event", "steps", "first step", "most coordinates in one step", "coordinate-steps"),
                tuple(rows),
                caption="Nothing in the published rule keeps pi' or the denominator positive; negative "
                "curvature estimates can make either non-positive.",
            )
        )
    return blocks


def training_section(metrics: Mapping[str, Any]) -> list[Block]:
    """Final train/test loss and accuracy, and the best test accuracy."""
    blocks: list[Block] = [Heading(2, (text("Training"),))]
    training = metrics.get("training") or {}
    final = training.get("final")
    if not final:
        return blocks + [Paragraph("No evaluation was recorded (epochs.csv is empty).")]
    blocks.append(
        Table(
            ("Final evaluation", "epoch", "step", "train loss", "train accuracy", "test loss", "test accuracy"),
            (
                (
                    "end of run",
                    str(final.get("epoch")),
                    str(final.get("step")),
                    num(final.get("train_loss")),
                    pct(final.get("train_accuracy")),
                    num(final.get("test_loss")),
                    pct(final.get("test_accuracy")),
                ),
            ),
        )
    )
    if is_number(training.get("best_test_accuracy")):
        blocks.append(
            Paragraph(
                f"Best test accuracy {pct(training['best_test_accuracy'])} at epoch "
                f"{training.get('best_test_accuracy_epoch')} of {_plural(training.get('n_evaluations'), 'evaluation')}."
            )
        )
    return blocks


def figures_section(drawn: Sequence[tuple[str, str, bytes]], skipped: Mapping[str, str]) -> list[Block]:
    """The figures as ``figures/NAME.png`` with captions; skipped figures listed with their reason.

    ``drawn`` is ``(name, caption, png bytes)`` in report order.
    """
    blocks: list[Block] = [Heading(2, (text("Figures"),))]
    for name, caption, png in drawn:
        blocks.append(Heading(3, (text(name.replace("_", " ")),), anchor=f"figure-{name}"))
        blocks.append(
            Image(f"figures/{name}.png", alt=f"{name.replace('_', ' ')} figure", caption=(text(caption),), png=png)
        )
    if skipped:
        blocks.append(Paragraph("Skipped figures:"))
        blocks.append(
            Bullets(
                tuple((code(f"figures/{name}.png"), text(f": skipped: {reason}")) for name, reason in skipped.items())
            )
        )
    if not drawn and not skipped:
        blocks.append(Paragraph("No figures."))
    return blocks
