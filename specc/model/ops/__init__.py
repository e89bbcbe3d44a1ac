"""The op registry: every op of the model block declared once, torch-free (see specc.model.ops.base).

`OPS` maps each name to its declaration; `FUNCTIONS` are the ones a spec may call. The torch side
translates them by the same names: specc.model.lower.LOWERINGS and specc.export.ops. docs/language.md
says how to add one."""

from __future__ import annotations

from specc.model.ops import blocks, conv, layers
from specc.model.ops.base import OpDef

OPS: dict[str, OpDef] = {d.name: d for d in (*layers.OPS, *conv.OPS, *blocks.OPS, *layers.INTERNAL)}
FUNCTIONS: dict[str, OpDef] = {name: d for name, d in OPS.items() if d.callable}
ARITHMETIC = layers.ARITHMETIC


def get(name: str) -> OpDef:
    """The declaration of a registered op (KeyError for an unknown one: the checker asks first)."""
    return OPS[name]
