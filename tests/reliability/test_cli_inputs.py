"""Bad command-line options and TOML files of `compare` and `ablate`: one line naming the field.

Every case runs the CLI in process and asserts exit code 2, exactly one ``error:`` line naming the
field (or the file), no traceback, nothing on stdout and no progress bar (the check came before
any work), and no directory that looks complete. The inputs are the ones a new user produces:
wrong types, binary or mis-encoded files, values that would be ignored, and values so large that
the run would never end.
"""

from __future__ import annotations

import random
import re

import pytest

from tests.reliability.harness import assert_nothing_complete, assert_user_error, invoke, tiny

RANDOM_BYTES = random.Random(9).randbytes(512)

# ------------------------------------------------------------------------------------------ compare
# (id, options after `compare`, files to write {name: text or bytes}, names the error line must hold)
COMPARE_CASES = [
    # wrong types in a config file
    ("toml-device-int", ["--config", "c.toml"], {"c.toml": "[run]\ndevice = 5\n"}, ["c.toml: device"]),
    ("toml-device-list", ["--config", "c.toml"], {"c.toml": '[run]\ndevice = ["cpu"]\n'}, ["device"]),
    ("toml-data-dir-int", ["--config", "c.toml"], {"c.toml": "[run]\ndata_dir = 5\n"}, ["c.toml: data_dir"]),
    ("toml-data-dir-table", ["--config", "c.toml"], {"c.toml": "[run.data_dir]\npath = 'x'\n"}, ["data_dir"]),
    ("toml-model-int", ["--config", "c.toml"], {"c.toml": "[run]\nmodel = 5\n"}, ["model"]),
    ("toml-out-int", ["--config", "c.toml"], {"c.toml": "[run]\nout = 5\n"}, ["out"]),
    ("toml-epochs-float", ["--config", "c.toml"], {"c.toml": "[run]\nepochs = 2.5\n"}, ["epochs"]),
    ("toml-epochs-string", ["--config", "c.toml"], {"c.toml": '[run]\nepochs = "2"\n'}, ["epochs"]),
    ("toml-batch-bool", ["--config", "c.toml"], {"c.toml": "[run]\nbatch_size = true\n"}, ["batch_size"]),
    ("toml-guard-string", ["--config", "c.toml"], {"c.toml": '[optimizer]\nguard = "yes"\n'}, ["guard"]),
    (
        "toml-milestones-scalar",
        ["--config", "c.toml"],
        {"c.toml": "[schedule]\nlr_milestones = 8\n"},
        ["lr_milestones"],
    ),
    (
        "toml-milestones-strings",
        ["--config", "c.toml"],
        {"c.toml": '[schedule]\nlr_milestones = ["8"]\n'},
        ["lr_milestones"],
    ),
    ("toml-lr-string", ["--config", "c.toml"], {"c.toml": '[optimizer]\nlr = "0.1"\n'}, ["lr"]),
    ("toml-lr-nan", ["--config", "c.toml"], {"c.toml": "[optimizer]\nlr = nan\n"}, ["lr"]),
    ("toml-lr-inf", ["--config", "c.toml"], {"c.toml": "[optimizer]\nlr = inf\n"}, ["lr"]),
    ("toml-var-init-minus-inf", ["--config", "c.toml"], {"c.toml": "[optimizer]\nvar_init = -inf\n"}, ["var_init"]),
    ("toml-seed-float", ["--config", "c.toml"], {"c.toml": "[run]\nseed = 1.0\n"}, ["seed"]),
    # files that are not TOML, or not UTF-8
    (
        "file-invalid-utf8",
        ["--config", "c.toml"],
        {"c.toml": b'[run]\nmodel = "\xff\xfe"\n'},
        ["config", "c.toml", "UTF-8"],
    ),
    ("file-random-bytes", ["--config", "c.toml"], {"c.toml": RANDOM_BYTES}, ["config", "c.toml"]),
    ("file-utf16", ["--config", "c.toml"], {"c.toml": "[run]\nepochs = 1\n".encode("utf-16")}, ["config", "UTF-8"]),
    ("file-bom-then-bad-field", ["--config", "c.toml"], {"c.toml": b"\xef\xbb\xbf[run]\nepochs = 0\n"}, ["epochs"]),
    ("file-nul-byte", ["--config", "c.toml"], {"c.toml": b'[run]\nmodel = "mlp"\x00\n'}, ["config", "valid TOML"]),
    (
        "file-duplicate-key",
        ["--config", "c.toml"],
        {"c.toml": "[run]\nepochs = 1\nepochs = 2\n"},
        ["config", "valid TOML"],
    ),
    (
        "file-duplicate-section",
        ["--config", "c.toml"],
        {"c.toml": "[run]\nepochs = 1\n[run]\nseed = 2\n"},
        ["config", "valid TOML"],
    ),
    ("file-unknown-section", ["--config", "c.toml"], {"c.toml": "[training]\nepochs = 1\n"}, ["[training]"]),
    ("file-wrong-section", ["--config", "c.toml"], {"c.toml": "[run]\nlr = 0.1\n"}, ["[run] lr", "[optimizer]"]),
    ("file-unknown-key", ["--config", "c.toml"], {"c.toml": "[run]\nepoch = 1\n"}, ["epoch"]),
    ("file-section-is-a-value", ["--config", "c.toml"], {"c.toml": "run = 5\n"}, ["run"]),
    ("file-is-a-directory", ["--config", "."], {}, ["config"]),
    ("file-missing", ["--config", "nope.toml"], {}, ["config", "nope.toml"]),
    ("file-endless", ["--config", "/dev/zero"], {}, ["config", "/dev/zero", "MiB"]),
    # devices
    ("data-dir-missing", ["--dataset", "fashion_mnist", "--model", "mlp", "--data-dir", "nowhere"], {}, ["nowhere"]),
    ("device-cuda-abc", ["--device", "cuda:abc"], {}, ["device", "cuda:abc"]),
    ("device-gpu", ["--device", "gpu"], {}, ["device"]),
    ("device-cuda-colon", ["--device", "cuda:"], {}, ["device"]),
    ("device-cuda-absent", ["--device", "cuda:0"], {}, ["device"]),
    # zero, negative, and so large that the run would not end (limits stated)
    ("steps-zero", ["--steps", "0"], {}, ["steps"]),
    ("lr-negative", ["--lr", "-1"], {}, ["lr"]),
    ("seed-negative", ["--seed=-1"], {}, ["seed"]),
    ("steps-huge", ["--steps", "1000000000000"], {}, ["steps", "10,000,000"]),
    ("epochs-huge", ["--epochs", "1000000000"], {}, ["epochs", "100,000"]),
    (
        "epochs-times-batches-huge",
        ["--train-size", "1000", "--batch-size", "1", "--epochs", "100000"],
        {},
        ["epochs", "10,000,000 steps"],
    ),
    ("samples-huge", ["--reference", "hutchinson", "--samples", "1000000000"], {}, ["samples", "100,000"]),
    ("every-huge", ["--every", "1000000000"], {}, ["every"]),
    ("probe-size-huge", ["--probe-size", "1000000000"], {}, ["probe_size", "100,000"]),
    # values the option parser refuses: one line too, with the limit where there is one
    ("parse-steps-1e30", ["--steps", "1e30"], {}, ["steps", "1e30", "10,000,000"]),
    ("parse-samples-1e9", ["--samples", "1e9"], {}, ["samples", "1e9", "100,000"]),
    ("parse-lr-text", ["--lr", "abc"], {}, ["lr", "abc", "a number"]),
    ("parse-milestone-text", ["--lr-milestones", "x"], {}, ["lr_milestones", "'x'"]),
    ("parse-unknown-option", ["--stepz", "3"], {}, ["--stepz"]),
    ("parse-missing-value", ["--steps"], {}, ["--steps", "requires"]),
    # silently changed today: larger than the training set (TINY has 96 examples)
    ("probe-size-above-train", ["--probe-size", "97"], {}, ["probe_size", "96"]),
    ("batch-size-above-train", ["--batch-size", "97"], {}, ["batch_size", "96"]),
    (
        "train-size-above-digits",
        ["--dataset", "digits", "--model", "mlp", "--train-size", "100000"],
        {},
        ["train_size"],
    ),
    # options a baseline optimizer would ignore
    ("sgd-fixed-eta", ["--optimizer", "sgd", "--fixed-eta", "1"], {}, ["fixed_eta", "sgd"]),
    ("adam-kl", ["--optimizer", "adam", "--kl", "coupled"], {}, ["kl", "adam"]),
    ("adamw-dual", ["--optimizer", "adamw", "--dual", "exact"], {}, ["dual"]),
    ("sgd-guard", ["--optimizer", "sgd", "--guard"], {}, ["guard"]),
    ("sgd-reg-weight", ["--optimizer", "sgd", "--reg-weight", "0.1"], {}, ["reg_weight"]),
    ("sgd-var-init", ["--optimizer", "sgd", "--var-init", "0.1"], {}, ["var_init"]),
    ("sgd-preset", ["--optimizer", "sgd", "--preset", "cifar10_cnn"], {}, ["preset"]),
    ("sgd-reference", ["--optimizer", "sgd", "--reference", "hutchinson"], {}, ["reference"]),
    ("adam-samples", ["--optimizer", "adam", "--samples", "8"], {}, ["samples"]),
    ("sgd-oracle", ["--optimizer", "sgd", "--oracle", "exact"], {}, ["oracle"]),
    (
        "toml-sgd-fixed-eta",
        ["--config", "c.toml"],
        {"c.toml": '[optimizer]\noptimizer = "sgd"\nfixed_eta = 1.0\n'},
        ["fixed_eta"],
    ),
    (
        "toml-adam-momentum",
        ["--config", "c.toml"],
        {"c.toml": '[optimizer]\noptimizer = "adam"\nmomentum = 0.5\n'},
        ["momentum"],
    ),
    # ... and options arTuRO itself would ignore in that configuration
    ("toml-arturo-momentum", ["--config", "c.toml"], {"c.toml": "[optimizer]\nmomentum = 0.5\n"}, ["momentum"]),
    ("fixed-eta-with-dual", ["--fixed-eta", "1", "--dual", "exact"], {}, ["dual", "fixed_eta"]),
    ("fixed-eta-with-eta-tol", ["--fixed-eta", "1", "--eta-tol", "0.1"], {}, ["eta_tol"]),
    ("exact-dual-with-eta-tol", ["--dual", "exact", "--eta-tol", "0.1"], {}, ["eta_tol"]),
    ("oracle-every-without-oracle", ["--oracle-every", "5"], {}, ["oracle_every"]),
    ("samples-without-hutchinson", ["--samples", "8"], {}, ["samples"]),
    ("exact-method-without-exact", ["--reference", "hutchinson", "--exact-method", "ggn"], {}, ["exact_method"]),
]


def _write(root, files):
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("options, files, names", [c[1:] for c in COMPARE_CASES], ids=[c[0] for c in COMPARE_CASES])
def test_compare_refuses_in_one_line(tmp_path, options, files, names):
    _write(tmp_path, files)
    outcome = invoke("compare", *tiny("--out", "run", *options), cwd=tmp_path)
    assert_user_error(outcome, *names)
    assert_nothing_complete(tmp_path / "run")
    assert not (tmp_path / "run" / "record.json").exists(), "a record was started for a refused input"


@pytest.mark.parametrize(
    "content",
    [b"", b"\xef\xbb\xbf[run]\nseed = 0\n", b"# only a comment\n"],
    ids=["empty-file", "utf8-bom", "comment-only"],
)
def test_compare_accepts_an_empty_file_and_a_utf8_bom(tmp_path, content):
    (tmp_path / "c.toml").write_bytes(content)
    outcome = invoke("compare", *tiny("--config", "c.toml", "--out", "run"), cwd=tmp_path)
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    assert (tmp_path / "run" / "report.md").is_file()


def test_every_longer_than_the_run_is_warned_about(tmp_path):
    outcome = invoke("compare", *tiny("--every", "1000", "--out", "run"), cwd=tmp_path)
    assert outcome.exit_code == 0, outcome.stdout + outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "every: 1000 > 6 steps" in warnings[0] and "no reference snapshot" in warnings[0]


# ------------------------------------------------------------------------------------------ ablate
SETUP = (
    '[setups.t]\nmodel = "mlp"\ndataset = "teacher"\nsteps = 4\nbatch_size = 16\ntrain_size = 64\n'
    "probe_size = 16\nevery = 2\n"
)


def study(seeds="[0]", variants='["faithful"]', extra="", setup=SETUP):
    return f"[study]\nseeds = {seeds}\nvariants = {variants}\n{extra}\n{setup}"


# (id, options after `ablate`, study file text or bytes (None: no --config), names)
ABLATE_CASES = [
    ("file-invalid-utf8", [], b'[study]\nname = "\xe9t\xe9"\n', ["config", "s.toml", "UTF-8"]),
    ("file-random-bytes", [], RANDOM_BYTES, ["config", "s.toml"]),
    ("file-empty", [], b"", ["[study] seeds"]),
    ("file-bom-then-bad-seeds", [], b"\xef\xbb\xbf" + study(seeds="[-1]").encode(), ["seeds"]),
    ("file-duplicate-key", [], study(extra="seeds = [1]"), ["config", "valid TOML"]),
    ("file-unknown-section", [], study() + "\n[runs]\nx = 1\n", ["runs"]),
    ("file-unknown-study-key", [], study(extra="epochs = 3"), ["[study] epochs"]),
    ("seeds-string", [], study(seeds='"0,1"'), ["seeds"]),
    ("seeds-negative", [], study(seeds="[0, -1]"), ["seeds", ">= 0"]),
    ("seeds-duplicate", [], study(seeds="[1, 1]"), ["seeds", "distinct"]),
    ("seeds-empty", [], study(seeds="[]"), ["seeds"]),
    ("seeds-float", [], study(seeds="[0.5]"), ["seeds"]),
    ("seeds-bool", [], study(seeds="[true]"), ["seeds"]),
    ("seeds-nested", [], study(seeds="[[0]]"), ["seeds"]),
    ("variants-string", [], study(variants='"faithful"'), ["variants"]),
    ("variants-unknown", [], study(variants='["faithful", "nope"]'), ["variants", "nope"]),
    ("variants-int", [], study(variants="[1]"), ["variants"]),
    ("variants-duplicate", [], study(variants='["adam", "adam"]'), ["variants", "once"]),
    ("fixed-eta-string", [], study(variants='["fixed-eta"]', extra='fixed_eta = "1"'), ["fixed_eta"]),
    ("fixed-eta-nan", [], study(variants='["fixed-eta"]', extra="fixed_eta = [nan]"), ["fixed_eta"]),
    ("study-name-int", [], study(extra="name = 5"), ["[study] name"]),
    ("setups-not-a-table", [], "setups = 5\n" + study(setup=""), ["s.toml: setups"]),
    ("setup-unknown-field", [], study(setup=SETUP + "modle = 'mlp'\n"), ["[setups.t]", "modle"]),
    ("setup-variant-field", [], study(setup=SETUP + "optimizer = 'adam'\n"), ["[setups.t] optimizer"]),
    ("setup-grid-field", [], study(setup=SETUP + "seed = 3\n"), ["[setups.t] seed"]),
    ("setup-device-int", [], study(setup=SETUP + "device = 5\n"), ["s.toml: [setups.t]: device"]),
    ("setup-data-dir-int", [], study(setup=SETUP + "data_dir = 5\n"), ["[setups.t]: data_dir"]),
    ("setup-lr-nan", [], study(setup=SETUP + "lr = nan\n"), ["[setups.t]: lr"]),
    (
        "setup-steps-huge",
        [],
        study(setup=SETUP.replace("steps = 4", "steps = 1000000000000")),
        ["[setups.t]: steps", "10,000,000"],
    ),
    (
        "setup-probe-above-train",
        [],
        study(setup=SETUP.replace("probe_size = 16", "probe_size = 65")),
        ["[setups.t] probe_size", "64"],
    ),
    (
        "setup-batch-above-train",
        [],
        study(setup=SETUP.replace("batch_size = 16", "batch_size = 65")),
        ["[setups.t] batch_size", "64"],
    ),
    ("setup-name-escapes", [], study(setup=SETUP.replace("[setups.t]", '[setups."../x"]')), ["../x"]),
    ("baselines-lr-negative", [], study(variants='["sgd"]', extra="") + "\n[baselines.sgd]\nlr = -1\n", ["[sgd] lr"]),
    ("baselines-lr-string", [], study(variants='["sgd"]') + '\n[baselines.sgd]\nlr = "x"\n', ["[sgd] lr"]),
    ("baselines-not-a-table", [], "baselines = 5\n" + study(variants='["sgd"]'), ["s.toml: [baselines]"]),
    ("option-seeds-text", ["--seeds", "0,x"], study(), ["seeds"]),
    ("option-seeds-negative", ["--seeds=-1"], study(), ["seeds"]),
    ("option-variants-unknown", ["--variants", "faithful,nope"], study(), ["variants"]),
    ("option-workers-zero", ["--workers", "0"], study(), ["workers"]),
    ("option-workers-text", ["--workers", "two"], study(), ["workers", "two"]),
    ("option-max-steps-float", ["--max-steps", "1e9"], study(), ["max_steps", "1e9"]),
    ("option-max-steps-zero", ["--max-steps", "0"], study(), ["max_steps"]),
    ("option-epochs-huge", ["--epochs", "1000000000"], study(), ["epochs", "100,000"]),
    (
        "option-data-dir-missing",
        ["--data-dir", "nowhere"],
        study(setup=SETUP.replace('"teacher"', '"fashion_mnist"')),
        ["nowhere"],
    ),
]


@pytest.mark.parametrize("options, text, names", [c[1:] for c in ABLATE_CASES], ids=[c[0] for c in ABLATE_CASES])
def test_ablate_refuses_in_one_line(tmp_path, options, text, names):
    _write(tmp_path, {"s.toml": text})
    outcome = invoke("ablate", "--config", "s.toml", *options, "--out", "st", cwd=tmp_path)
    assert_user_error(outcome, *names)
    assert_nothing_complete(tmp_path / "st")
    assert not list((tmp_path / "st").glob("runs/*/*/*/record.json")), "a run was started for a refused study"


def test_the_base_study_of_the_cases_is_valid(tmp_path):
    """The cases above fail because of what each changes, not because the base study is bad."""
    from arturo_diag.study import expand_grid, load_study
    from arturo_diag.study.execution import _preflight

    (tmp_path / "s.toml").write_text(study(variants='["faithful", "sgd", "fixed-eta"]', extra="fixed_eta = [1.0]"))
    loaded = load_study(tmp_path / "s.toml")
    assert len(expand_grid(loaded, tmp_path / "st")) == 3
    _preflight(loaded)


@pytest.mark.parametrize(
    "args, names",
    [(["report"], ["run_dir"]), (["comapre"], ["comapre", "compare"])],
    ids=["report-without-dir", "unknown-command"],
)
def test_usage_errors_are_one_line(args, names):
    assert_user_error(invoke(*args), *names)


# -------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command, sections",
    [
        ("compare", ["[run]", "[optimizer]", "[schedule]", "[diagnostics]"]),
        ("ablate", ["[study]", "[setups.NAME]"]),
    ],
)
def test_help_shows_the_section_names(command, sections, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: the sections are not wrapped apart
    outcome = invoke(command, "--help")
    assert outcome.exit_code == 0
    text = re.sub(r"\s+", " ", outcome.stdout)
    for section in sections:
        assert section in text, f"{section} missing from `{command} --help`"
    assert "(, , , )" not in text and "( seeds" not in text
