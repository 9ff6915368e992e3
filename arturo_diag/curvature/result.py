"""The value every curvature function returns: a diagonal, per parameter, with its provenance."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DiagonalHessian", "split_like"]


@dataclass(frozen=True, eq=False)
class DiagonalHessian(Mapping[str, Tensor]):
    """A diagonal (of the Hessian, or of an estimator's standard error), name -> tensor.

    Behaves as a read-only mapping from parameter name to a tensor shaped, typed and placed like
    that parameter.

    tensors: name -> tensor, in ``model.named_parameters()`` order.
    method: what produced it: "hvp", "ggn", "hutchinson" or "hutchinson-stderr".
    samples: number of random probes (Hutchinson only).
    note: why "auto" did not use "ggn", when it fell back to "hvp"; otherwise None.
    """

    tensors: dict[str, Tensor]
    method: str
    samples: int | None = None
    note: str | None = None

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def flatten(self) -> Tensor:
        """All entries as one vector, parameters concatenated in order."""
        return torch.cat([v.reshape(-1) for v in self.tensors.values()])

    def __repr__(self) -> str:
        total = sum(v.numel() for v in self.tensors.values())
        extra = f", samples={self.samples}" if self.samples is not None else ""
        return f"DiagonalHessian(method={self.method!r}, parameters={len(self)}, entries={total}{extra})"


def split_like(flat: Tensor, names: tuple[str, ...], params: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """Cut a flat vector into views shaped like ``params``, keyed by ``names``."""
    parts = flat.split([p.numel() for p in params])
    return {name: part.view_as(p) for name, part, p in zip(names, parts, params)}
