"""The sections of a study's document, as the report engine's blocks (:mod:`arturo_diag.report.document`).

:func:`study_document` builds the whole document, one function per section; ``study/report.py``
renders it with the engine's ``to_markdown``/``to_html`` (the renderers of a run's report too).
Every number comes from the summary of :mod:`arturo_diag.study.aggregate`; nothing is computed here
but its formatting.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from arturo_diag import quantities
from arturo_diag.numbers import NA, fixed, sig
from arturo_diag.quantities.base import StudyColumn
from arturo_diag.report.document import Block, Bullets, Heading, Image, Paragraph, Table, slug, strong, text
from arturo_diag.study.aggregate import StudyData
from arturo_diag.study.config import Setup, StudyConfig
from arturo_diag.study.estimates import TARGET_LABELS, VERDICT_COLUMNS
from arturo_diag.study.figures import FIGURE_CAPTIONS
from arturo_diag.study.verdicts import METRICS, study_verdicts

__all__ = ["study_document"]

_STATUSES = ("complete", "failed", "damaged", "missing", "incomplete", "stale")
#: Figures placed beside their table rather than at the end of the setup.
_INLINE_FIGURES = ("estimates",)
#: The other optimizers' names as the paper's table writes them.
_OPTIMIZER_LABELS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "ivon": "IVON",
    "adahessian": "AdaHessian",
    "sophia-h": "Sophia-H",
    "sophia-g": "Sophia-G",
}


# ------------------------------------------------------------------------------------------ cells
def _fmt(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    return sig(value, digits)


def _pct(value: float, digits: int = 2) -> str:
    return fixed(value, digits)


def _mean_pm(summary: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    mean, half = summary["mean"] * scale, summary["half_width"] * scale
    if not math.isfinite(mean):
        return NA
    return f"{fixed(mean, digits)} ± {fixed(half, digits)}" if math.isfinite(half) else fixed(mean, digits)


def _signed(value: float, digits: int, unit: str = "") -> str:
    return f"{value:+.{digits}f}{unit}"


def _optimizer_label(variant: str) -> str:
    """The paper's row names: arTuRO, SGD, Adam; ablations as 'arTuRO, <variant>'; another optimizer
    at another learning rate as 'Sophia-H (lr 0.01)'."""
    if variant == "faithful":
        return "arTuRO"
    kind, _, value = variant.partition(":")
    if kind in _OPTIMIZER_LABELS:
        return _OPTIMIZER_LABELS[kind] + (f" (lr {value})" if value else "")
    return f"arTuRO, {variant}"


def _table(header: list[str], rows: list[list[Any]], align: str) -> Table:
    """A table of strings; ``align`` is one letter per column, "l" or "r"."""
    return Table(tuple(header), tuple(tuple(str(c) for c in row) for row in rows), align=tuple(align))


def _anchor(setup: Setup, part: str) -> str:
    return f"{slug(setup.name)}-{part}"


# ------------------------------------------------------------------------------------------ sections
def _header_blocks(data: StudyData, findings: list[dict[str, str]]) -> list[Block]:
    """Title, description, what ran, and the findings in their order (warnings marked)."""
    study, runs = data.study, data.runs
    counts = runs.status.value_counts().to_dict()
    blocks: list[Block] = [Heading(1, f"Ablation study: {study.name}")]
    if study.description:
        blocks.append(Paragraph(study.description))
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in _STATUSES if counts.get(s, 0))
    blocks.append(
        Paragraph(
            f"{len(runs)} runs: {len(study.variants)} variants x {len(study.seeds)} seeds "
            f"({', '.join(map(str, study.seeds))}) x {len(study.setups)} setup(s); {status}. "
            "Statistics are over seeds; faithful is the reference of every paired comparison."
        )
    )
    blocks.append(Heading(2, "Findings"))
    if not findings:
        return blocks + [Paragraph("No findings.")]
    warning = [f["severity"] == "warning" for f in findings]
    items = tuple(
        (strong("Warning:"), text(" " + f["text"])) if w else (text(f["text"]),) for f, w in zip(findings, warning)
    )
    return blocks + [Bullets(items, tuple("warning" if w else "" for w in warning))]


def _variants_blocks(study: StudyConfig) -> list[Block]:
    """What each variant changes, as words and as RunConfig fields; where the baselines come from."""
    rows = []
    for variant in study.variants:
        if variant.family == "baseline":
            values = study.setups[0].baselines.values.get(variant.kind, {})
            change = f"optimizer={variant.kind}, " + ", ".join(f"{k}={v:g}" for k, v in values.items())
        elif variant.family == "estimator":
            resolved = study.setups[0].config.replace(**variant.changes()).resolved()
            change = f"optimizer={variant.kind}, lr={resolved.lr:g}, weight_decay={resolved.weight_decay:g}"
        else:
            change = ", ".join(f"{k}={v}" for k, v in variant.changes().items()) or "(none: the setup's preset)"
        rows.append([variant.name, variant.describe(study.setups[0].config.oracle_every), change])
    blocks: list[Block] = [
        Heading(2, "Variants"),
        _table(["variant", "what it changes", "RunConfig fields"], rows, "lll"),
    ]
    if any(v.family == "baseline" for v in study.variants):
        for setup in study.setups:
            blocks.append(Paragraph(f"Baselines ({setup.name}): {setup.baselines.source}."))
    others = [v for v in study.variants if v.family == "estimator"]
    if others:
        blocks.append(Paragraph(_defaults_words(others)))
    return blocks


def _defaults_words(variants: list) -> str:
    """Where the other optimizers' settings come from: their registry's defaults, each with its source."""
    from arturo_diag.training.optimizers import OPTIMIZERS

    parts = []
    for variant in variants:
        table = OPTIMIZERS[variant.optimizer].hyperparameters
        lr = f"lr {variant.value:g} (the variant's)" if variant.value is not None else _setting(table, "lr")
        parts.append(f"{variant.name}: {lr}, {_setting(table, 'weight_decay')}")
    return (
        "The other optimizers with a curvature estimate run at their paper's or package's defaults, not tuned "
        "for this setup (a variant's :LR sets its learning rate): " + "; ".join(parts) + "."
    )


def _setting(table, name: str) -> str:
    entry = table.get(name) or {}
    value = entry.get("value")
    shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return f"{name} {shown} [{entry.get('source', 'default')}]"


def _paper_table_blocks(setup: Setup, block: dict[str, Any]) -> list[Block]:
    """Test accuracy per optimizer beside the paper's reported number (the paper's table)."""
    rows = [
        [
            _optimizer_label(row["optimizer"]),
            _pct(row["test_accuracy_percent"]),
            _pct(row["half_width_percent"]),
            str(row["n"]),
            _pct(row["paper_percent"]),
        ]
        for row in block["paper_table"]
    ]
    header = ["optimizer", "test accuracy (%)", "± 95 % CI", "seeds", "paper (%)"]
    blocks: list[Block] = [
        Heading(3, "Test accuracy (the paper's table)", anchor=_anchor(setup, "paper-table")),
        _table(header, rows, "lrrrr"),
    ]
    if block["paper"]:
        blocks.append(Paragraph(f"Paper column: reported in arXiv 2310.20574 for {block['paper']}."))
    return blocks


def _final_numbers_blocks(setup: Setup, block: dict[str, Any]) -> list[Block]:
    """Final test accuracy, test and train loss per variant: mean ± 95 % CI over seeds."""
    rows = [
        [
            e["variant"],
            f"{e['n_complete']}/{e['n_runs']}",
            _mean_pm(e["test_accuracy"], 100.0),
            _mean_pm(e["test_loss"], digits=4),
            _mean_pm(e["train_loss"], digits=4),
        ]
        for e in block["summary"]
    ]
    return [
        Heading(3, "Final numbers per variant (mean ± 95 % CI over seeds)", anchor=_anchor(setup, "final-numbers")),
        _table(["variant", "complete", "test accuracy (%)", "test loss", "train loss"], rows, "lrrrr"),
    ]


def _comparison_row(c: dict[str, Any]) -> list[str]:
    scale, unit, digits = (100.0, " pts", 2) if c["metric"] == "test_accuracy" else (1.0, "", 4)
    diff = _signed(c["mean_diff"] * scale, digits, unit) if math.isfinite(c["mean_diff"]) else "n/a"
    ci = (
        f"[{_signed(c['ci_low'] * scale, digits)}, {_signed(c['ci_high'] * scale, digits)}]"
        if math.isfinite(c["ci_low"])
        else "n/a"
    )
    wilcoxon = _fmt(c["p_wilcoxon"], 2)
    if math.isfinite(c["wilcoxon_min_p"]):
        wilcoxon += f" (min {c['wilcoxon_min_p']:.2g})"
    return [
        c["variant"],
        c["metric"].replace("_", " "),
        diff,
        ci,
        _fmt(c["p_t"], 2),
        _fmt(c["p_t_holm"], 2),
        wilcoxon,
        _fmt(c["d_z"], 2),
        str(c["n"]),
        c["note"],
    ]


def _comparison_blocks(setup: Setup, block: dict[str, Any]) -> list[Block]:
    """The paired comparisons with faithful (same seeds): difference, CI, p-values, effect size."""
    if not block["comparisons"]:
        return []
    header = [
        "variant",
        "metric",
        "mean diff",
        "95 % CI",
        "p (t)",
        "p (t, Holm)",
        "p (Wilcoxon; min possible)",
        "d_z",
        "pairs",
        "note",
    ]
    return [
        Heading(3, "Paired comparison with faithful (variant − faithful, same seeds)", anchor=_anchor(setup, "paired")),
        _table(header, [_comparison_row(c) for c in block["comparisons"]], "llrrrrrrrl"),
    ]


def _verdict_row(v: dict[str, Any]) -> list[str]:
    _, scale, unit = METRICS[v["metric"]]
    number = (lambda x: _signed(x * scale, 2)) if v["metric"] == "test_accuracy" else (lambda x: f"{x:+.3g}")
    finite = math.isfinite(v["ci_low"]) and math.isfinite(v["ci_high"])
    n = v["n"]
    directions = f"{v['seeds_lower']} / {v['seeds_higher']} / {v['seeds_equal']} of {n}" if n else "n/a"
    cautions = {"few_seeds": f"{n} seed{'s' if n != 1 else ''}", "degenerate": "zero-width interval"}
    return [
        v["variant"],
        v["metric"].replace("_", " "),
        v["outcome"],
        number(v["estimate"]) + unit if math.isfinite(v["estimate"]) else "n/a",
        f"[{number(v['ci_low'])}, {number(v['ci_high'])}]" if finite else "n/a",
        f"±{number(v['margin']).lstrip('+')}" if math.isfinite(v["margin"]) else "n/a",
        directions,
        "; ".join(cautions[c] for c in v["cautions"]),
    ]


def _verdict_blocks(setup: Setup, verdicts: list[dict[str, Any]]) -> list[Block]:
    """The setup's verdicts against faithful: outcome, estimate, its 95 % CI, the margin, seeds per direction."""
    rows = [_verdict_row(v) for v in verdicts if v["setup"] == setup.name]
    if not rows:
        return []
    header = [
        "variant",
        "metric",
        "outcome",
        "estimate",
        "95 % CI",
        "margin",
        "seeds lower / higher / equal",
        "caution",
    ]
    return [
        Heading(3, "Verdicts against faithful (variant − faithful, same seeds)", anchor=_anchor(setup, "verdicts")),
        _table(header, rows, "lllrrrrl"),
        Paragraph(
            "yes: the 95 % t interval of the mean paired difference lies entirely beyond the margin; no: "
            "entirely within it; inconclusive: otherwise, or the interval has zero width (the same difference "
            "in every seed). Accuracy in points; the loss margin is 1 % of faithful's mean test loss."
        ),
    ]


def _curvature_cell(column: StudyColumn):
    """The cell of one ``study_table`` column in a variant's curvature summary (``_curvature_summary``)."""
    if column.kind == "seeds":
        key = f"{column.key}_seeds"
        return lambda c: f"{c[key]}/{c['assessed_seeds']}" if c.get("assessed_seeds") else "n/a"
    return lambda c: _fmt(c.get(column.key), column.digits)


def _curvature_blocks(arturo_entries: list[dict[str, Any]]) -> list[Block]:
    """The curvature table of one setup: agreement of a with h and calibration per arTuRO variant
    (final snapshot, mean over seeds), and what coverage and sharpness mean.

    ``arturo_entries`` are the setup's summary entries that carry ``"curvature"``; [] gives no
    blocks. Its columns are the registered quantities' ``study_table`` (:mod:`arturo_diag.quantities`).
    """
    if not arturo_entries:
        return []
    columns = [  # (header, cell of the entry's curvature dict), from each registered quantity's study_table
        (column.header, _curvature_cell(column))
        for quantity in quantities.QUANTITIES
        for column in quantity.study_table
    ]
    rows = [[e["variant"]] + [cell(e["curvature"]) for _, cell in columns] for e in arturo_entries]
    return [
        Heading(3, "Curvature agreement and calibration (arTuRO variants, final snapshot, mean over seeds)"),
        _table(["variant"] + [header for header, _ in columns], rows, "l" + "r" * len(columns)),
        Paragraph(
            "Coverage is the share of coordinates with |a-h| <= 2 sqrt(P_aa) (0.95 if calibrated); "
            "sharpness the median |a-h|/sqrt(P_aa) (0.67 if calibrated). For the oracle variants a "
            "is the minibatch Hessian at the last oracle step, h the probe batch's."
        ),
    ]


def _mean_pm_sig(summary: dict[str, Any], digits: int = 3) -> str:
    """mean ± half-width of the 95 % t interval, significant digits (one seed: the mean alone)."""
    mean, half = summary["mean"], summary["half_width"]
    if not math.isfinite(mean):
        return NA
    return f"{sig(mean, digits)} ± {sig(half, 2)}" if math.isfinite(half) else sig(mean, digits)


def _target_label(target: str) -> str:
    return " / ".join(TARGET_LABELS.get(t, t) for t in target.split(" / ")) if target else NA


def _estimate_blocks(setup: Setup, entries: list[dict[str, Any]], figures: dict[str, bytes]) -> list[Block]:
    """The cross-optimizer table: per variant with a curvature estimate, what it estimates, its scale c*
    and shape Spearman(a, h) at the final snapshot (mean ± 95 % t interval over seeds), its agreement
    verdicts (seeds yes / assessed) and final test accuracy; then the figure of c* and Spearman over training."""
    if not entries:
        return []
    rows = []
    for e in entries:
        est = e["estimate"]
        verdicts = est["verdicts"]
        rows.append(
            [
                e["variant"],
                est["estimator"] or NA,
                _target_label(est["target"]),
                _mean_pm_sig(est["scale_factor"]),
                _mean_pm_sig(est["spearman"], 2),
                *(
                    f"{verdicts[c]['yes']}/{verdicts[c]['assessed']}" if verdicts[c]["assessed"] else "n/a"
                    for c in VERDICT_COLUMNS
                ),
                _mean_pm(est["test_accuracy"], 100.0),
                f"{e['n_complete']}/{e['n_runs']}",
            ]
        )
    header = [
        "variant",
        "estimator",
        "target",
        "scale c* (final)",
        "Spearman vs h (final)",
        *(f"{header} (seeds)" for _, header in VERDICT_COLUMNS.values()),
        "test accuracy (%)",
        "seeds",
    ]
    blocks: list[Block] = [
        Heading(
            3,
            "Curvature estimates across optimizers: scale and shape against h (final snapshot, mean ± 95 % CI "
            "over seeds)",
            anchor=_anchor(setup, "estimates"),
        ),
        _table(header, rows, "lll" + "r" * (len(header) - 3)),
        Paragraph(
            "c* = <a,h>/<a,a> is the factor that best rescales the estimate a onto the reference h (1: a has h's "
            "scale; 100: a is 100x too small); Spearman(a, h) its shape, whatever its scale. The verdicts are each "
            "run's own (agreement.beats_constant: a beats the constant 0.1 beyond a 1 % margin; agreement.scale: "
            "the bootstrap interval of c* within [1/1.5, 1.5]; agreement.shape: Spearman's above 0.1), counted as "
            "seeds that say yes of the seeds decided (an inconclusive seed is not counted). An estimate of E[g^2] "
            "(Adam's v-hat) or of the GGN is compared with the Hessian diagonal h all the same: the question is how "
            "well it stands in for diag H. estimates.csv holds c* and Spearman at every snapshot of every run."
        ),
    ]
    if "estimates" in figures:
        caption = FIGURE_CAPTIONS["estimates"]
        blocks.append(
            Image(f"figures/{setup.name}_estimates.png", alt=caption, caption=caption, png=figures["estimates"])
        )
    return blocks


def _figure_blocks(setup: Setup, figures: dict[str, bytes]) -> list[Block]:
    """The setup's figures (``figures/SETUP_KEY.png``), in the order of FIGURE_CAPTIONS (those shown
    beside their table, :data:`_INLINE_FIGURES`, left out)."""
    return [
        Image(f"figures/{setup.name}_{key}.png", alt=caption, caption=caption, png=figures[key])
        for key, caption in FIGURE_CAPTIONS.items()
        if key in figures and key not in _INLINE_FIGURES
    ]


def _setup_blocks(
    setup: Setup, block: dict[str, Any], figures: dict[str, bytes], verdicts: list[dict[str, Any]]
) -> list[Block]:
    """One setup: its protocol, then its tables and figures."""
    config = setup.config
    length = f"{config.steps} steps" if config.steps is not None else f"{config.epochs} epochs"
    blocks: list[Block] = [
        Heading(2, f"Setup {setup.name}", anchor=f"setup-{slug(setup.name)}"),
        Paragraph(
            f"{config.model} on {config.dataset}, {length} of batch {config.batch_size}, preset "
            f"{config.preset}, lr milestones {list(config.lr_milestones)}, reference {config.reference} "
            f"every {config.every} steps, oracle every {config.oracle_every} steps."
        ),
    ]
    blocks += _paper_table_blocks(setup, block)
    blocks += _final_numbers_blocks(setup, block)
    blocks += _verdict_blocks(setup, verdicts)
    blocks += _comparison_blocks(setup, block)
    curvature = _curvature_blocks([e for e in block["summary"] if e.get("curvature")])
    if curvature:  # the heading's anchor names the setup (the same heading text recurs per setup)
        curvature[0] = Heading(3, curvature[0].content, anchor=_anchor(setup, "curvature"))
    blocks += curvature
    blocks += _estimate_blocks(setup, [e for e in block["summary"] if e.get("estimate")], figures)
    return blocks + _figure_blocks(setup, figures)


def _problem_blocks(runs: pd.DataFrame) -> list[Block]:
    """The runs left out of the statistics (failed, damaged, diverged, unfinished), with why."""
    problems = runs[runs.status != "complete"]
    if not len(problems):
        return []
    rows = [[r.run_dir, r.status, r.error] for r in problems.itertuples()]
    return [Heading(2, "Runs not in the statistics"), _table(["run", "status", "detail"], rows, "lll")]


def _files_blocks() -> list[Block]:
    """What the study directory holds."""
    return [
        Heading(2, "Files"),
        Paragraph(
            "study.json (every number above), runs.csv (one row per run), curves.csv (one row per run and "
            "epoch), eta.csv (one row per arTuRO run and step), estimates.csv (one row per run with a curvature "
            "estimate and snapshot: c* and Spearman against h), study.toml (the study; re-run with "
            "arturo-diag ablate --config study.toml --out this directory), runs/SETUP/VARIANT/seedN/ "
            "(run records; arturo-diag report RUN_DIR renders one)."
        ),
    ]


def study_document(
    data: StudyData,
    summary: dict[str, Any],
    findings: list[dict[str, str]],
    figures: dict[str, dict[str, bytes]],
    verdicts: list[dict[str, Any]] | None = None,
) -> list[Block]:
    """The study's document, section by section: title and findings, variants, per setup (protocol,
    paper table, final numbers, paired comparisons, curvature, figures), runs left out, files.

    ``summary`` is :func:`~arturo_diag.study.aggregate.summarize`'s, ``findings``
    :func:`~arturo_diag.study.findings.study_findings`', ``figures`` setup -> key -> PNG bytes
    (:func:`~arturo_diag.study.figures.draw_figures`; ``{}`` for none), ``verdicts``
    :func:`~arturo_diag.study.verdicts.study_verdicts`' (computed when not given).
    """
    verdicts = study_verdicts(data, summary) if verdicts is None else verdicts
    blocks = _header_blocks(data, findings) + _variants_blocks(data.study)
    for setup in data.study.setups:
        blocks += _setup_blocks(setup, summary[setup.name], figures.get(setup.name, {}), verdicts)
    return blocks + _problem_blocks(data.runs) + _files_blocks()
