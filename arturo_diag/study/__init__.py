"""study: ablation studies of arTuRO, variants x seeds x setups, and their aggregate report.

One concept per module:

- ``variants``: the built-in variants (faithful, fixed-eta:V, coupled-kl, no-drift, oracle-exact,
  oracle-hutchinson, exact-dual, guarded; baselines sgd, adam, adamw) as RunConfig changes, and the
  baselines' hyperparameters (``experiments/baselines.toml``).
- ``config``: ``StudyConfig`` from TOML (validated), CLI overrides, the grid of runs.
- ``execution``: ``run_study``: worker processes, resume, failures recorded per run.
- ``stats``: mean and t interval over seeds; paired t-test, Wilcoxon, Cohen's d_z, Holm.
- ``aggregate``: the run records as tidy tables and per-variant statistics.
- ``findings``: the results in words.
- ``report``: ``render_study(study_dir)``: study.json, runs.csv, curves.csv, eta.csv, study.md,
  study.html (self-contained), figures; the document is built of the report engine's blocks
  (``sections``, one function per section) and written by its renderers
  (``arturo_diag.report.document``); ``figures`` draws the plots.
"""

from arturo_diag.study.baselines import Baselines, load_baselines
from arturo_diag.study.config import (
    RunSpec,
    Setup,
    StudyConfig,
    default_study,
    expand_grid,
    load_study,
    parse_seeds,
    parse_variants,
    study_from_mapping,
    study_to_toml,
    with_overrides,
)
from arturo_diag.study.execution import RunOutcome, StudyRunResult, default_workers, run_status, run_study
from arturo_diag.study.report import StudyReport, is_study_dir, render_study
from arturo_diag.study.variants import Variant, parse_variant

__all__ = [
    "Baselines",
    "RunOutcome",
    "RunSpec",
    "Setup",
    "StudyConfig",
    "StudyReport",
    "StudyRunResult",
    "Variant",
    "default_study",
    "default_workers",
    "expand_grid",
    "is_study_dir",
    "load_baselines",
    "load_study",
    "parse_seeds",
    "parse_variant",
    "parse_variants",
    "render_study",
    "run_status",
    "run_study",
    "study_from_mapping",
    "study_to_toml",
    "with_overrides",
]
