"""The aggregate report of a study: study.json, runs.csv, curves.csv, eta.csv, study.md, study.html.

``render_study(study_dir)`` is a pure function of the files in the study directory (``study.toml``
and the run records): it never trains, and rendering twice gives byte-identical files (no times,
no absolute paths; figures drawn with the Agg backend without metadata). ``study.html`` is
self-contained (figures embedded as base64 PNG); ``study.md`` links ``figures/*.png``.

Figures, one set per setup (each function says what it shows):
``plot_curves`` (learning curves with 95 % bands over seeds), ``plot_eta`` (eta per step, the
median over seeds per arTuRO variant, log scale), ``plot_accuracy`` (final test accuracy per
variant, seeds as dots, mean with its 95 % t interval).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from arturo_diag.diagnostics.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text
from arturo_diag.diagnostics.lock import DirectoryLock
from arturo_diag.diagnostics.record import looks_like_study_dir
from arturo_diag.numbers import NA, fixed, sig
from arturo_diag.study.aggregate import CURVE_COLUMNS, REFERENCE_VARIANT, StudyData, collect, summarize
from arturo_diag.study.findings import study_findings
from arturo_diag.study.stats import mean_ci

__all__ = ["render_study", "StudyReport", "is_study_dir", "STUDY_FORMAT", "plot_curves", "plot_eta", "plot_accuracy"]

STUDY_FORMAT = "arturo-diag-study/1"


@dataclass(frozen=True)
class StudyReport:
    study_dir: Path
    markdown: Path
    html: Path
    json: Path
    runs_csv: Path
    curves_csv: Path
    findings: list[dict[str, str]]
    data: dict[str, Any]  # the content of study.json


def is_study_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a study (``study.toml`` or ``study.json``), not a single run record."""
    path = Path(path)
    return path.is_dir() and looks_like_study_dir(path)


# ------------------------------------------------------------------------------------------ figures
def _t_interval(values: Sequence[float]) -> tuple[float, float]:
    summary = mean_ci(list(values))
    return summary["ci_low"], summary["ci_high"]


def _palette(variants: list[str]) -> dict[str, Any]:
    import seaborn as sns

    colors = sns.color_palette("tab10", 10) + sns.color_palette("Dark2", 8)
    return {name: colors[i % len(colors)] for i, name in enumerate(variants)}


def plot_curves(curves: pd.DataFrame, variants: list[str], families: dict[str, str], axes) -> None:
    """Learning curves per variant: train loss, test loss (log scale) and test accuracy after each
    epoch; line = mean over seeds, band = its 95 % t interval. Needs curves.csv's columns."""
    import seaborn as sns

    palette = _palette(variants)
    data = curves.copy()
    data["kind"] = data["variant"].map(lambda v: "baseline" if families.get(v) == "baseline" else "arTuRO")
    for ax, column, title in zip(
        axes, ("train_loss", "test_loss", "test_accuracy"), ("train loss", "test loss", "test accuracy")
    ):
        sns.lineplot(
            data=data,
            x="epoch",
            y=column,
            hue="variant",
            hue_order=variants,
            palette=palette,
            style="kind",
            style_order=["arTuRO", "baseline"],
            dashes={"arTuRO": "", "baseline": (4, 2)},
            errorbar=_t_interval,
            ax=ax,
            legend=ax is axes[-1],
        )
        ax.set_title(title)
        ax.set_ylabel(column.replace("_", " "))
        means = data.groupby(["variant", "epoch"])[column].mean()
        means = means[means.apply(math.isfinite)]
        if column == "test_accuracy":
            ax.set_ylim(0.0, 1.02)  # a t band over few seeds can leave [0, 1]
        elif len(means) and (means > 0).all():
            ax.set_yscale("log")
            ax.set_ylim(0.5 * float(means.min()), 2.0 * float(means.max()))
    legend = axes[-1].get_legend()
    if legend is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def plot_eta(eta: pd.DataFrame, variants: list[str], ax) -> None:
    """eta per step for every arTuRO variant: the median over seeds (log scale). Flat lines at the
    bisection floor or a fixed eta, 5/3-per-step ramps and jumps after a bound drop show here.
    Needs eta.csv (step, eta per run)."""
    import seaborn as sns

    palette = _palette(variants)
    present = [v for v in variants if v in set(eta["variant"])]
    median = eta.groupby(["variant", "step"], sort=True)["eta"].median().reset_index()
    median = median[median["eta"] > 0]
    sns.lineplot(
        data=median,
        x="step",
        y="eta",
        hue="variant",
        hue_order=present,
        palette=palette,
        errorbar=None,
        ax=ax,
        linewidth=1.2,
    )
    ax.set_yscale("log")
    ax.set_title("eta per step (median over seeds)")
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def plot_accuracy(runs: pd.DataFrame, variants: list[str], ax) -> None:
    """Final test accuracy (%) per variant: each seed a dot, the mean with its 95 % t interval;
    the dashed line is faithful's mean. Needs runs.csv (variant, status, test_accuracy)."""
    import seaborn as sns

    palette = _palette(variants)
    done = runs[runs.status == "complete"].copy()
    done["test accuracy (%)"] = pd.to_numeric(done["test_accuracy"], errors="coerce") * 100.0
    present = [v for v in variants if v in set(done["variant"])]
    if not present:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
        return
    sns.stripplot(
        data=done,
        x="test accuracy (%)",
        y="variant",
        order=present,
        hue="variant",
        hue_order=present,
        palette=palette,
        ax=ax,
        jitter=False,
        alpha=0.8,
        size=6,
        marker="o",
        linewidth=0.5,
        edgecolor="white",
        legend=False,
        zorder=3,
    )
    sns.pointplot(
        data=done,
        x="test accuracy (%)",
        y="variant",
        order=present,
        hue="variant",
        hue_order=present,
        palette=palette,
        errorbar=_t_interval,
        linestyle="none",
        markers="D",
        ax=ax,
        legend=False,
        capsize=0.2,
    )
    reference = done[done.variant == REFERENCE_VARIANT]["test accuracy (%)"]
    if len(reference):
        ax.axvline(float(reference.mean()), color="0.4", linestyle="--", linewidth=1)
    low = min(0.0, float(done["test accuracy (%)"].min()) if done["test accuracy (%)"].notna().any() else 0.0)
    ax.set_xlim(low, 100.0)
    ax.set_title("final test accuracy (mean, 95 % CI; dots: seeds)")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _figures(data: StudyData) -> dict[str, dict[str, bytes]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [v.name for v in data.study.variants]
    families = {v.name: v.family for v in data.study.variants}
    out: dict[str, dict[str, bytes]] = {}
    with sns.axes_style("whitegrid"), plt.rc_context({"figure.max_open_warning": 0}):
        for setup in data.study.setups:
            figures: dict[str, bytes] = {}
            curves = data.curves[data.curves.setup == setup.name]
            if len(curves):
                fig, axes = plt.subplots(1, 3, figsize=(15, 4))
                plot_curves(curves, [v for v in names if v in set(curves.variant)], families, list(axes))
                figures["curves"] = _png(fig)
                plt.close(fig)
            eta = data.eta[data.eta.setup == setup.name]
            if len(eta):
                fig, ax = plt.subplots(figsize=(9, 4))
                plot_eta(eta, names, ax)
                figures["eta"] = _png(fig)
                plt.close(fig)
            runs = data.runs[data.runs.setup == setup.name]
            if (runs.status == "complete").any():
                fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
                plot_accuracy(runs, names, ax)
                figures["accuracy"] = _png(fig)
                plt.close(fig)
            out[setup.name] = figures
    return out


# ------------------------------------------------------------------------------------------ blocks
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


def _optimizer_label(variant: str) -> str:
    """The paper's row names: arTuRO, SGD, Adam; ablations as 'arTuRO, <variant>'."""
    labels = {"faithful": "arTuRO", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
    return labels.get(variant, f"arTuRO, {variant}")


_FIGURE_CAPTIONS = {
    "curves": "Learning curves: mean over seeds, band = 95 % t interval (dashed: baselines).",
    "eta": "eta per step, median over seeds per arTuRO variant (log scale).",
    "accuracy": "Final test accuracy per variant: dots = seeds, diamond and bar = mean and 95 % t interval; "
    "dashed line = faithful's mean.",
}


def _blocks(
    data: StudyData, summary: dict[str, Any], findings: list[dict[str, str]], figures: dict[str, dict[str, bytes]]
) -> list[tuple]:
    study, runs = data.study, data.runs
    counts = runs.status.value_counts().to_dict()
    blocks: list[tuple] = [("h1", f"Ablation study: {study.name}")]
    if study.description:
        blocks.append(("p", study.description))
    status = ", ".join(
        f"{counts.get(s, 0)} {s}"
        for s in ("complete", "failed", "damaged", "missing", "incomplete", "stale")
        if counts.get(s, 0)
    )
    blocks.append(
        (
            "p",
            f"{len(runs)} runs: {len(study.variants)} variants x {len(study.seeds)} seeds "
            f"({', '.join(map(str, study.seeds))}) x {len(study.setups)} setup(s); {status}. "
            "Statistics are over seeds; faithful is the reference of every paired comparison.",
        )
    )
    blocks.append(("h2", "Findings"))
    blocks.append(("list", [("! " if f["severity"] == "warning" else "") + f["text"] for f in findings]))

    blocks.append(("h2", "Variants"))
    rows = []
    for variant in study.variants:
        if variant.family == "baseline":
            values = study.setups[0].baselines.values.get(variant.kind, {})
            change = f"optimizer={variant.kind}, " + ", ".join(f"{k}={v:g}" for k, v in values.items())
        else:
            change = ", ".join(f"{k}={v}" for k, v in variant.changes().items()) or "(none: the setup's preset)"
        rows.append([variant.name, variant.describe(study.setups[0].config.oracle_every), change])
    blocks.append(("table", ["variant", "what it changes", "RunConfig fields"], rows))
    if any(v.family == "baseline" for v in study.variants):
        for setup in study.setups:
            blocks.append(("p", f"Baselines ({setup.name}): {setup.baselines.source}."))

    for setup in study.setups:
        block = summary[setup.name]
        config = setup.config
        length = f"{config.steps} steps" if config.steps is not None else f"{config.epochs} epochs"
        blocks.append(("h2", f"Setup {setup.name}"))
        blocks.append(
            (
                "p",
                f"{config.model} on {config.dataset}, {length} of batch {config.batch_size}, preset "
                f"{config.preset}, lr milestones {list(config.lr_milestones)}, reference {config.reference} "
                f"every {config.every} steps, oracle every {config.oracle_every} steps.",
            )
        )
        blocks.append(("h3", "Test accuracy (the paper's table)"))
        rows = []
        for row in block["paper_table"]:
            rows.append(
                [
                    _optimizer_label(row["optimizer"]),
                    _pct(row["test_accuracy_percent"]),
                    _pct(row["half_width_percent"]),
                    str(row["n"]),
                    _pct(row["paper_percent"]),
                ]
            )
        header = ["optimizer", "test accuracy (%)", "± 95 % CI", "seeds", "paper (%)"]
        blocks.append(("table", header, rows))
        if block["paper"]:
            blocks.append(("p", f"Paper column: reported in arXiv 2310.20574 for {block['paper']}."))

        blocks.append(("h3", "Final numbers per variant (mean ± 95 % CI over seeds)"))
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
        blocks.append(("table", ["variant", "complete", "test accuracy (%)", "test loss", "train loss"], rows))

        if block["comparisons"]:
            blocks.append(("h3", "Paired comparison with faithful (variant − faithful, same seeds)"))
            rows = []
            for c in block["comparisons"]:
                scale, unit = (100.0, " pts") if c["metric"] == "test_accuracy" else (1.0, "")
                diff = (
                    f"{c['mean_diff'] * scale:+.{2 if scale == 100 else 4}f}{unit}"
                    if math.isfinite(c["mean_diff"])
                    else "n/a"
                )
                ci = (
                    f"[{c['ci_low'] * scale:+.{2 if scale == 100 else 4}f}, {c['ci_high'] * scale:+.{2 if scale == 100 else 4}f}]"
                    if math.isfinite(c["ci_low"])
                    else "n/a"
                )
                wilcoxon = _fmt(c["p_wilcoxon"], 2)
                if math.isfinite(c["wilcoxon_min_p"]):
                    wilcoxon += f" (min {c['wilcoxon_min_p']:.2g})"
                rows.append(
                    [
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
                )
            blocks.append(
                (
                    "table",
                    [
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
                    ],
                    rows,
                )
            )

        arturo = [e for e in block["summary"] if e.get("curvature")]
        if arturo:
            blocks.append(
                ("h3", "Curvature agreement and calibration (arTuRO variants, final snapshot, mean over seeds)")
            )
            rows = []
            for e in arturo:
                c = e["curvature"]
                rows.append(
                    [
                        e["variant"],
                        _fmt(c["agreement_relative_error"]),
                        _fmt(c["constant_relative_error"]),
                        _fmt(c["agreement_spearman"]),
                        f"{c['beats_constant_seeds']}/{c['assessed_seeds']}" if c["assessed_seeds"] else "n/a",
                        _fmt(c["calibration_coverage"]),
                        _fmt(c["calibration_sharpness"]),
                        _fmt(c["eta_median"]),
                        _fmt(c["dual_iterations_mean"]),
                    ]
                )
            blocks.append(
                (
                    "table",
                    [
                        "variant",
                        "rel. error ||a-h||/||h||",
                        "constant 0.1's",
                        "Spearman",
                        "beats constant (seeds)",
                        "coverage (2 sd)",
                        "sharpness",
                        "median eta",
                        "K evaluations / step",
                    ],
                    rows,
                )
            )
            blocks.append(
                (
                    "p",
                    "Coverage is the share of coordinates with |a-h| <= 2 sqrt(P_aa) (0.95 if calibrated); "
                    "sharpness the median |a-h|/sqrt(P_aa) (0.67 if calibrated). For the oracle variants a "
                    "is the minibatch Hessian at the last oracle step, h the probe batch's.",
                )
            )
        for key in ("curves", "eta", "accuracy"):
            if key in figures.get(setup.name, {}):
                blocks.append(
                    ("figure", f"figures/{setup.name}_{key}.png", figures[setup.name][key], _FIGURE_CAPTIONS[key])
                )

    problems = runs[runs.status != "complete"]
    if len(problems):
        blocks.append(("h2", "Runs not in the statistics"))
        blocks.append(
            ("table", ["run", "status", "detail"], [[r.run_dir, r.status, r.error] for r in problems.itertuples()])
        )
    blocks.append(("h2", "Files"))
    blocks.append(
        (
            "p",
            "study.json (every number above), runs.csv (one row per run), curves.csv (one row per run and "
            "epoch), eta.csv (one row per arTuRO run and step), study.toml (the study; re-run with "
            "arturo-diag ablate --config study.toml --out this directory), runs/SETUP/VARIANT/seedN/ "
            "(run records; arturo-diag report RUN_DIR renders one).",
        )
    )
    return blocks


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(map(_md_cell, header)) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{block[3]}]({block[1]})", "", f"*{block[3]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}li.warning{color:#8a5300}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"""


def _html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        elif kind == "list":
            items = []
            for item in block[1]:
                warn = item.startswith("! ")
                items.append(f'<li class="warning">{e(item[2:])}</li>' if warn else f"<li>{e(item)}</li>")
            parts.append("<ul>" + "".join(items) + "</ul>")
        elif kind == "table":
            header = "".join(f"<th>{e(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            encoded = base64.b64encode(block[2]).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(block[3])}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{e(block[3])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ render
def _study_json(data: StudyData, summary: dict[str, Any], findings: list[dict[str, str]]) -> dict[str, Any]:
    study, runs = data.study, data.runs
    counts = {
        s: int((runs.status == s).sum()) for s in ("complete", "failed", "damaged", "missing", "incomplete", "stale")
    }
    return {
        "format": STUDY_FORMAT,
        "name": study.name,
        "description": study.description,
        "seeds": list(study.seeds),
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "family": v.family,
                "describes": v.describe(study.setups[0].config.oracle_every),
                "changes": v.changes() if v.family == "arturo" else {"optimizer": v.kind},
            }
            for v in study.variants
        ],
        "setups": {
            s.name: {
                "model": s.config.model,
                "dataset": s.config.dataset,
                "epochs": s.config.epochs,
                "steps": s.config.steps,
                "batch_size": s.config.batch_size,
                "preset": s.config.preset,
                "lr_milestones": list(s.config.lr_milestones),
                "every": s.config.every,
                "reference": s.config.reference,
                "oracle_every": s.config.oracle_every,
                "baselines": {k: dict(v) for k, v in s.baselines.values.items()},
                "baselines_source": s.baselines.source,
            }
            for s in study.setups
        },
        "counts": {"total": int(len(runs)), **counts},
        "failed": [
            {"setup": r.setup, "variant": r.variant, "seed": int(r.seed), "error": r.error}
            for r in runs[runs.status == "failed"].itertuples()
        ],
        "results": summary,
        "findings": findings,
        "runs": [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in runs.to_dict(orient="records")
        ],
    }


def render_study(study_dir: str | os.PathLike[str], *, figures: bool = True) -> StudyReport:
    """(Re-)render the aggregate report of the study in ``study_dir`` from its files.

    ``figures=False`` skips drawing (faster; study.md/.html then have no figures).

    Raises:
        RecordError: ``study_dir`` is not a study directory, or another process is writing it
            (its lock, ``docs/record.md``; run_study holds it and lets this nest).
    """
    if not Path(study_dir).is_dir():
        return _render_study(study_dir, figures)  # collect() says what is wrong
    with DirectoryLock(study_dir, advice="wait for it to finish", create=False):
        return _render_study(study_dir, figures)


def _render_study(study_dir: str | os.PathLike[str], figures: bool) -> StudyReport:
    data = collect(study_dir)
    study_dir = data.study_dir
    summary = summarize(data)
    findings = study_findings(data, summary)
    drawn = _figures(data) if figures else {}
    blocks = _blocks(data, summary, findings, drawn)
    content = _study_json(data, summary, findings)

    for setup, items in drawn.items():
        for key, png in items.items():
            atomic_write_bytes(study_dir / "figures" / f"{setup}_{key}.png", png)
    atomic_write_csv(study_dir / "runs.csv", data.runs)
    atomic_write_csv(study_dir / "curves.csv", data.curves[list(CURVE_COLUMNS)])
    atomic_write_csv(study_dir / "eta.csv", data.eta)
    atomic_write_json(study_dir / "study.json", content)
    atomic_write_text(study_dir / "study.md", _markdown(blocks))
    atomic_write_text(study_dir / "study.html", _html(blocks, f"Ablation study: {data.study.name}"))
    return StudyReport(
        study_dir,
        study_dir / "study.md",
        study_dir / "study.html",
        study_dir / "study.json",
        study_dir / "runs.csv",
        study_dir / "curves.csv",
        findings,
        content,
    )
