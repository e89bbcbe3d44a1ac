"""The spec's syntax tree: frozen dataclasses, each node with the span it came from."""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass, field
from typing import Union

from specc.language.source import Source, Span


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


# How deeply a statement's value may nest (E306). Parsing and the maps below never recurse; check's
# walks do, a few Python frames a level, in the room that recursion_room makes for this bound.
MAX_DEPTH = 200


def nesting(stmt) -> int:
    """Levels of nesting in a statement's value: each |> step (with its call), operator, call,
    argument name, list, tuple (and section around the statement) is one; a lone name or number none."""
    deepest, stack = 0, [(stmt, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        for name in item.__dataclass_fields__:
            if name == "span":
                continue
            value = getattr(item, name)
            # `x |> f(a)` is f(x, a): the call is the step's own level, as check walks it
            inner = level if isinstance(item, Pipe) and name == "stage" else level + 1
            stack.extend((child, inner) for child in (value if isinstance(value, tuple) else (value,))
                         if hasattr(child, "__dataclass_fields__"))
    return deepest - 1


# The most Python frames one level takes in a walk that recurses (measured: check's model builder
# takes 5 through a call's argument, the params block 4 through a tuple), with a margin.
_FRAMES_PER_LEVEL = 8
_room_lock = threading.Lock()
_room_users = 0
_room_saved = 0


@contextlib.contextmanager
def recursion_room():
    """Python's recursion limit raised, while inside, to what a walk of a tree within MAX_DEPTH needs
    (at 5 frames a level, the default 1,000 do not hold 200 levels); put back when the last thread leaves."""
    global _room_users, _room_saved
    frame, here = sys._getframe(), 0
    while frame is not None:
        frame, here = frame.f_back, here + 1
    with _room_lock:
        if _room_users == 0:
            _room_saved = sys.getrecursionlimit()
        _room_users += 1
        sys.setrecursionlimit(max(sys.getrecursionlimit(), here + _FRAMES_PER_LEVEL * (MAX_DEPTH + 10)))
    try:
        yield
    finally:
        with _room_lock:
            _room_users -= 1
            if _room_users == 0:
                sys.setrecursionlimit(_room_saved)


def rebuild(root, replace=None, respan=None, keep=frozenset()):
    """A copy of a tree, built without recursion. `replace(node)` may return a node to stand in
    its place (its subtree is then not entered); `respan(span)` gives each copied node's span;
    `keep` names (type, field) pairs copied as they are."""
    built: dict[int, object] = {}
    stack = [(root, False)]
    while stack:
        item, ready = stack.pop()
        key = id(item)
        if key in built:
            continue
        is_node = hasattr(item, "__dataclass_fields__")
        if not ready:
            new = replace(item) if replace is not None and is_node else None
            if new is not None or not (is_node or isinstance(item, tuple)):
                built[key] = item if new is None else new
                continue
            stack.append((item, True))
            stack.extend((child, False) for child in _parts(item, keep))
        elif isinstance(item, tuple):
            built[key] = tuple(built[id(child)] for child in item)
        else:
            values = {}
            for name in item.__dataclass_fields__:
                value = getattr(item, name)
                if name == "span":
                    value = value if respan is None else respan(value)
                elif (type(item), name) not in keep:
                    value = built[id(value)]
                values[name] = value
            built[key] = type(item)(**values)
    return built[id(root)]


def _parts(item, keep) -> tuple:
    """What `rebuild` copies below one node or tuple."""
    if isinstance(item, tuple):
        return item
    return tuple(getattr(item, name) for name in item.__dataclass_fields__
                 if name != "span" and (type(item), name) not in keep)


def dump(node, indent: int = 0) -> str:
    """An indented, span-annotated rendering of a tree (`specc show --stage ast`), without recursion."""
    lines = []
    stack = [(node, indent)]
    while stack:
        item, level = stack.pop()
        pad = "  " * level
        if isinstance(item, (Number, String, Name)):
            value = item.id if isinstance(item, Name) else repr(item.value)
            lines.append(f"{pad}{type(item).__name__} {value}  @{item.span.line}:{item.span.column}")
            continue
        if isinstance(item, SpecFile):
            lines.append(f"{pad}SpecFile")
            stack.extend((b, level + 1) for b in reversed(item.blocks))
            continue
        header = f"{pad}{type(item).__name__}" + (f" {item.op}" if isinstance(item, BinOp) else "")
        lines.append(f"{header}  @{item.span.line}:{item.span.column}")
        children = []
        for name in item.__dataclass_fields__:
            if name not in ("span", "op"):
                value = getattr(item, name)
                children.extend(value if isinstance(value, tuple) else (value,))
        stack.extend((child, level + 1) for child in reversed(children))
    return "\n".join(lines)
