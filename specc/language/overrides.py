"""`--set key=value`: replace or add a value in the syntax tree before `check` (which checks it
like the rest of the spec). Keys are dotted paths:

    data.batch=128                     a setting
    data.source.path="other.csv"       one argument of a setting's call
    data.items.source.path="i.csv"     a side table's setting, or one argument of it (`table items { ... }`)
    train.optimizer.wd=0.01
    train.fit_one_cycle.epochs=1       an argument of the fit statement (`train.fit.epochs` too)
    train.fit=fit(epochs=2, lr=1e-3)   the whole fit statement
    train.all.fit.lr=slice(1e-4, 1e-3) an argument of the fit statement of stage `all`
    model.u=embedding(user, 50)        a model definition
    model.u.dim=50                     one argument of a model definition
    factors=80                         a param (params.factors=80 too)
"""

from __future__ import annotations

import dataclasses
import re

from specc.language import ast, codes, params
# not specc.language.check itself: its search block uses this module
from specc.language.check.values import DATA_SETTINGS, SIGNATURES, TABLE_SETTINGS, TRAIN_SETTINGS
from specc.language.diagnostics import Diagnostic, SpecError, UsageError, suggest
from specc.language.parse import parse_expr
from specc.language.source import Source, Span

OVERRIDE_PATH = "--set"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SETTINGS = {"data": DATA_SETTINGS, "train": TRAIN_SETTINGS}
_TABLE_OF = {"source": "source", "valid": "valid", "optimizer": "optimizer"}


def apply(tree: ast.SpecFile, overrides: list[str]) -> tuple[ast.SpecFile, list[Diagnostic]]:
    """Apply each override in order. Those that cannot apply (an unknown key, a value that does
    not parse) are returned as diagnostics, so that `check` can still report everything else."""
    errors: list[Diagnostic] = []
    for text in overrides:
        try:
            tree = _apply_one(tree, text)
        except SpecError as err:
            errors.extend(err.diagnostics)
    return tree, errors


def _apply_one(tree: ast.SpecFile, text: str) -> ast.SpecFile:
    key, sep, _ = text.partition("=")
    if not sep:
        raise UsageError(f"--set {text!r}: expected key=value, e.g. --set data.batch=128")
    key = key.strip()
    source = Source(OVERRIDE_PATH, text)
    key_span = Span(source, 0, len(key))
    if not _KEY.fullmatch(key) or key.count(".") > 3:
        raise SpecError([Diagnostic(codes.UNKNOWN_SETTING, f"'{key}' is not a key", key_span,
                                    ["keys look like data.batch, train.optimizer.wd, model.u.dim or a param's name"])])
    value = parse_expr(source, len(text) - len(text.partition("=")[2]))
    blocks = {b.name.id: b for b in tree.blocks}
    if "." not in key:
        return _set_param(tree, blocks.get(params.BLOCK), key, value, source)
    parts = key.split(".")
    if parts[0] == params.BLOCK and len(parts) == 2:
        return _set_param(tree, blocks.get(params.BLOCK), parts[1], value, source, key)
    block_name = parts[0]
    if block_name not in blocks:
        raise SpecError([Diagnostic(codes.UNKNOWN_SETTING, f"unknown key '{key}': the spec has no '{block_name}' block",
                                    Span(source, 0, len(block_name)), suggest(block_name, blocks))])
    block = blocks[block_name]
    new_block = _in_block(block, parts[1:], value, source, key)
    return dataclasses.replace(tree, blocks=tuple(new_block if b is block else b for b in tree.blocks))


def _set_param(tree: ast.SpecFile, block: ast.Block | None, name: str, value: ast.Expr, source: Source,
               key: str | None = None) -> ast.SpecFile:
    """`factors=80`: replace the value of a param the spec defines (a --set never adds one: a
    misspelt name would otherwise change nothing, silently)."""
    key = key or name
    defined = [s.target.id for s in block.body if isinstance(s, ast.Assign)] if block is not None else []
    if name not in defined:
        if block is None:
            notes = ["the spec has no params block; keys with a dot, such as data.batch, set any other value"]
        else:
            notes = list(suggest(name, defined)) or [f"the spec's params: {', '.join(defined)}"]
        raise SpecError([Diagnostic(codes.UNKNOWN_SETTING, f"unknown param '{name}'", Span(source, 0, len(key)),
                                    notes)])
    body = tuple(dataclasses.replace(s, value=value) if isinstance(s, ast.Assign) and s.target.id == name else s
                 for s in block.body)
    new_block = dataclasses.replace(block, body=body)
    return dataclasses.replace(tree, blocks=tuple(new_block if b is block else b for b in tree.blocks))


def _unknown(key: str, source: Source, candidates) -> SpecError:
    return SpecError([Diagnostic(codes.UNKNOWN_SETTING, f"unknown key '{key}'", Span(source, 0, len(key)),
                                 suggest(key, candidates) or ([f"keys here: {', '.join(sorted(candidates))}"]
                                                              if candidates else []))])


def _keys(block: ast.Block) -> list[str]:
    """The keys a block offers, for suggestions."""
    name = block.name.id
    keys = [f"{name}.{s}" for s in _SETTINGS.get(name, ())]
    for stmt in block.body:
        if isinstance(stmt, ast.Assign):
            keys += _assigned(name, stmt, _table(name, stmt.target.id))
        elif isinstance(stmt, ast.Section) and stmt.kind.id == "table":  # data.TABLE.source.path and the others
            keys += [f"{name}.{stmt.name.id}.{s}" for s in TABLE_SETTINGS]
            for inner in stmt.body:
                if isinstance(inner, ast.Assign):
                    keys += _assigned(f"{name}.{stmt.name.id}", inner, _TABLE_OF.get(inner.target.id, ""))
        elif isinstance(stmt, ast.Section):
            for inner in stmt.body:
                if isinstance(inner, ast.CallStmt) and inner.call.func.id in SIGNATURES["fit"]:
                    keys += [f"{name}.{stmt.name.id}.fit.{p.name}" for p in SIGNATURES["fit"][inner.call.func.id]]
        elif isinstance(stmt, ast.CallStmt):
            func = stmt.call.func.id
            keys += [f"{name}.fit", f"{name}.{func}"]
            for p in SIGNATURES["fit"].get(func, ()):
                keys += [f"{name}.{func}.{p.name}", f"{name}.fit.{p.name}"]
    return sorted(set(keys))


def _assigned(prefix: str, stmt: ast.Assign, table: str) -> list[str]:
    """The key of a setting, and one per argument of the call it is set to (in SIGNATURES[table])."""
    keys = [f"{prefix}.{stmt.target.id}"]
    if isinstance(stmt.value, ast.Call):
        keys += [f"{prefix}.{stmt.target.id}.{p.name}" for p in SIGNATURES.get(table, {}).get(stmt.value.func.id, ())]
    return keys


def _table(block: str, setting: str) -> str:
    return "model" if block == "model" else _TABLE_OF.get(setting, "")


def _in_block(block: ast.Block, path: list[str], value: ast.Expr, source: Source, key: str) -> ast.Block:
    name = path[0]
    body = list(block.body)
    if block.name.id == "train" and len(path) == 3:
        # train.STAGE.fit.lr: an argument of a stage's fit statement
        for k, stmt in enumerate(body):
            if isinstance(stmt, ast.Section) and stmt.kind.id == "stage" and stmt.name.id == name:
                inner = dataclasses.replace(block, body=stmt.body)
                changed = _in_block(inner, path[1:], value, source, key)
                body[k] = dataclasses.replace(stmt, body=changed.body)
                return dataclasses.replace(block, body=tuple(body))
    assigned = any(isinstance(stmt, ast.Assign) and stmt.target.id == name for stmt in body)
    if block.name.id == "data" and len(path) >= 2 and not assigned:
        # data.TABLE.source=csv(...), data.TABLE.source.path="...": a side table's section
        for k, stmt in enumerate(body):
            if isinstance(stmt, ast.Section) and stmt.kind.id == "table" and stmt.name.id == name:
                body[k] = dataclasses.replace(stmt, body=_in_table(block, stmt, path[1:], value, source, key))
                return dataclasses.replace(block, body=tuple(body))
    if len(path) == 1 and block.name.id == "train" and name in ("fit", *SIGNATURES["fit"]):
        # the whole fit statement: train.fit=fit_one_cycle(epochs=1, lr=1e-3)
        if not isinstance(value, ast.Call) or value.func.id not in SIGNATURES["fit"]:
            raise SpecError([Diagnostic(codes.WRONG_KIND, f"'{key}' takes a fit statement, e.g. "
                                        "fit_one_cycle(epochs=1, lr=1e-3)", value.span)])
        for k, stmt in enumerate(body):
            if isinstance(stmt, ast.CallStmt) and stmt.call.func.id in SIGNATURES["fit"]:
                body[k] = ast.CallStmt(value, value.span)
                return dataclasses.replace(block, body=tuple(body))
        body.append(ast.CallStmt(value, value.span))
        return dataclasses.replace(block, body=tuple(body))
    if len(path) == 1:
        for k, stmt in enumerate(body):
            if isinstance(stmt, ast.Assign) and stmt.target.id == name:
                body[k] = dataclasses.replace(stmt, value=value)
                return dataclasses.replace(block, body=tuple(body))
        if name in _SETTINGS.get(block.name.id, ()) or block.name.id == "model":
            body.append(ast.Assign(ast.Name(name, value.span), value, value.span))
            return dataclasses.replace(block, body=tuple(body))
        raise _unknown(key, source, _keys(block))
    param = path[1]
    for k, stmt in enumerate(body):
        if isinstance(stmt, ast.Assign) and stmt.target.id == name:
            call = stmt.value
            if isinstance(call, ast.Name):
                call = ast.Call(call, (), (), call.span)
            if not isinstance(call, ast.Call):
                raise _unknown(key, source, _keys(block))
            params = SIGNATURES.get(_table(block.name.id, name), {}).get(call.func.id)
            if params is None:
                raise _unknown(key, source, _keys(block))
            body[k] = dataclasses.replace(stmt, value=_set_arg(call, params, param, value, source, key, block))
            return dataclasses.replace(block, body=tuple(body))
        if isinstance(stmt, ast.CallStmt) and name in (stmt.call.func.id, "fit") and \
                stmt.call.func.id in SIGNATURES["fit"]:
            params = SIGNATURES["fit"][stmt.call.func.id]
            new_call = _set_arg(stmt.call, params, param, value, source, key, block)
            body[k] = dataclasses.replace(stmt, call=new_call)
            return dataclasses.replace(block, body=tuple(body))
    raise _unknown(key, source, _keys(block))


def _in_table(block: ast.Block, table: ast.Section, path: list[str], value: ast.Expr, source: Source,
              key: str) -> tuple:
    """The body of side table `table` with one of its settings replaced (or added), or one argument of
    its source's call; `block` is the data block it is in (for the keys a mistake is shown)."""
    setting = path[0]
    if setting not in TABLE_SETTINGS or len(path) > 2:
        raise _unknown(key, source, _keys(block))
    if len(path) == 2:  # an argument of the source's call: as data.source.path is for the data's own
        return _in_block(dataclasses.replace(block, body=table.body), path, value, source, key).body
    body = list(table.body)
    for k, stmt in enumerate(body):
        if isinstance(stmt, ast.Assign) and stmt.target.id == setting:
            body[k] = dataclasses.replace(stmt, value=value)
            return tuple(body)
    return (*body, ast.Assign(ast.Name(setting, value.span), value, value.span))


def _set_arg(call: ast.Call, params, param: str, value: ast.Expr, source: Source, key: str,
             block: ast.Block) -> ast.Call:
    names = [p.name for p in params]
    if param not in names:
        raise _unknown(key, source, _keys(block))
    position = names.index(param)
    if position < len(call.args):
        args = list(call.args)
        args[position] = value
        return dataclasses.replace(call, args=tuple(args))
    # in the keyword's own place (new ones last), so that the tree is the spec's text with the value
    # written in: specc tune writes best.spec that way and checks it parses to this tree
    at = next((k for k, kw in enumerate(call.keywords) if kw.name.id == param), len(call.keywords))
    keywords = [kw for kw in call.keywords if kw.name.id != param]
    keywords.insert(at, ast.Keyword(ast.Name(param, value.span), value, value.span))
    return dataclasses.replace(call, keywords=tuple(keywords))
