"""The spec's syntax tree: frozen dataclasses, each node with the span it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from specc.source import Source, Span


@dataclass(frozen=True, slots=True)
class Number:
    value: float | int
    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Typed:
    """`column: type`, a column declaration."""

    name: Name
    type: Name
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class TupleExpr:
    items: tuple[Expr, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Keyword:
    name: Name
    value: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    func: Name
    args: tuple[Expr, ...]
    keywords: tuple[Keyword, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class BinOp:
    """`left op right` with op one of + - * /."""

    op: str
    left: Expr
    right: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Pipe:
    """`value |> f(args)`: sugar for `f(value, args)`."""

    value: Expr
    stage: Expr
    span: Span = field(compare=False)


Expr = Union[Number, String, Name, Typed, ListExpr, TupleExpr, Call, BinOp, Neg, Pipe]


@dataclass(frozen=True, slots=True)
class Assign:
    target: Name
    value: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Key:
    """A dotted key, `train.fit.lr`: the names of a `--set` key, as a search block writes them."""

    parts: tuple[Name, ...]
    span: Span = field(compare=False)

    @property
    def id(self) -> str:
        return ".".join(p.id for p in self.parts)


@dataclass(frozen=True, slots=True)
class KeyAssign:
    """`train.fit.lr = log(1e-4, 1e-1)`: a line of a search block whose key has dots."""

    target: Key
    value: Expr
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class CallStmt:
    call: Call
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Command:
    """`freeze body head`, `unfreeze`, `init body from "runs/x"`: a word and its arguments."""

    name: Name
    args: tuple[Name | String, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Section:
    """`group body { ... }` in a model, `stage head { ... }` in a train block."""

    kind: Name
    name: Name
    body: tuple
    span: Span = field(compare=False)


Stmt = Union[Assign, KeyAssign, CallStmt, Command, Section]


@dataclass(frozen=True, slots=True)
class Block:
    name: Name
    body: tuple[Stmt, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class SpecFile:
    blocks: tuple[Block, ...]
    source: Source = field(compare=False, repr=False)
    commands: tuple[Command, ...] = ()  # top-level statements such as `init body from "..."`


def walk(node):
    """(node, depth) for every node of a tree, the root at depth 1, without recursion (a spec may be
    adversarial)."""
    stack = [(node, 1)]
    while stack:
        item, level = stack.pop()
        yield item, level
        for name in getattr(item, "__dataclass_fields__", ()):
            if name == "span":
                continue
            value = getattr(item, name)
            for child in value if isinstance(value, tuple) else (value,):
                if hasattr(child, "__dataclass_fields__"):
                    stack.append((child, level + 1))


def depth(node) -> int:
    """Nesting depth of a tree."""
    return max(level for _, level in walk(node))


def dump(node, indent: int = 0) -> str:
    """An indented, span-annotated rendering of a tree (`specc show --stage ast`)."""
    pad = "  " * indent
    if isinstance(node, (Number, String, Name)):
        value = node.id if isinstance(node, Name) else repr(node.value)
        return f"{pad}{type(node).__name__} {value}  @{node.span.line}:{node.span.column}"
    if isinstance(node, SpecFile):
        return "\n".join(["SpecFile"] + [dump(b, indent + 1) for b in node.blocks])
    header = f"{pad}{type(node).__name__}"
    if isinstance(node, (BinOp,)):
        header += f" {node.op}"
    header += f"  @{node.span.line}:{node.span.column}"
    parts = [header]
    for name in node.__dataclass_fields__:
        if name in ("span", "op"):
            continue
        value = getattr(node, name)
        children = value if isinstance(value, tuple) else (value,)
        for child in children:
            parts.append(dump(child, indent + 1))
    return "\n".join(parts)
