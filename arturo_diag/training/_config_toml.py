"""A RunConfig's TOML form: the section of every field, reading a file (bounded, errors that name
it) and writing a config back. :func:`~arturo_diag.training.config.config_from_mapping` builds the
config from what :func:`read_toml` returns; everything public here is imported from
:mod:`arturo_diag.training.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arturo_diag._toml import toml_value, tomllib
from arturo_diag.errors import ConfigError
from arturo_diag.training.optimizers import ARTURO_KEYS

#: TOML section of every field.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": (
        "model",
        "dataset",
        "data_dir",
        "epochs",
        "steps",
        "batch_size",
        "train_size",
        "seed",
        "device",
        "dtype",
        "out",
    ),
    "optimizer": (
        "optimizer",
        "preset",
        *ARTURO_KEYS,
        "kl",
        "dual",
        "fixed_eta",
        "guard",
        "oracle",
        "oracle_every",
        "momentum",
        "beta1",
        "beta2",
    ),
    "schedule": ("lr_milestones", "lr_gamma"),
    "diagnostics": (
        "every",
        "reference",
        "reference_mode",
        "reference_batch",
        "instruments",
        "exact_method",
        "samples",
        "probe_size",
        "collapse_fraction",
        "snapshot_dtype",
        "subsample",
        "tensorboard",
    ),
}


_MAX_TOML_BYTES = 16 * 2**20


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed one is a ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_TOML_BYTES + 1)  # bounded: /dev/zero or a huge file is refused, not read
    except FileNotFoundError:
        raise ConfigError("config", str(path), f"an existing {what}") from None
    except IsADirectoryError:
        raise ConfigError("config", str(path), f"a {what}, not a directory") from None
    except OSError as error:
        raise ConfigError("config", str(path), f"a readable file ({error.strerror})") from None
    if len(data) > _MAX_TOML_BYTES:
        raise ConfigError("config", str(path), f"a {what} of at most {_MAX_TOML_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8-sig")  # a leading UTF-8 byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as error:
        raise ConfigError(
            "config",
            str(path),
            f"a {what} in UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start} is not UTF-8: binary or another encoding)",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", str(path), f"valid TOML ({error})") from None


def config_to_toml(config: Any) -> str:
    """TOML text of a config; unset fields are written as comments so the file stays loadable."""
    lines = ["# arturo-diag run configuration (resolved)"]
    for section, names in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for name in names:
            value = getattr(config, name)
            lines.append(f"# {name} = (unset)" if value is None else f"{name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
