"""Check a whole spec file: syntax tree -> checked spec (specc.language.spec) and its warnings, or SpecError
with every error in source order. Finds the blocks, resolves the params, then checks the data,
model and train blocks in turn, each handing the next what it found, and the init lines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from specc.data.files import resolved as resolved_path
from specc.language import ast, codes, params
from specc.language.check.data_block import NO_DATA, check_data
from specc.language.check.model_block import check_model
from specc.language.check.search_block import BLOCK as SEARCH, check_search
from specc.language.check.train_block import check_train
from specc.language.check.values import BLOCKS, OPTIONAL_BLOCKS, RESERVED, Checker
from specc.language.diagnostics import Diagnostic, SpecError, os_text, suggest
from specc.language.parse import too_deep
from specc.language.spec import InitFrom, ModelSpec, Spec


def check(tree: ast.SpecFile, base_dirs: dict[str, Path] | None = None) -> tuple[Spec, list[Diagnostic]]:
    """Check a parsed spec: the checked spec and its warnings, or SpecError with every error."""
    if base_dirs is None:
        base_dirs = {tree.source.path: Path(tree.source.path).resolve().parent}
    c = Checker(base_dirs)
    with ast.recursion_room():  # the checks below walk expressions recursively
        spec, resolved = _check_file(c, tree)
    errors = _at_param_uses(c.errors, resolved) if resolved.uses else c.errors
    if errors:
        # In source order; diagnostics about `--set` values (another source) come last.
        raise SpecError(sorted(errors, key=lambda d: (d.span is None,
                                                      d.span is not None and d.span.source is not tree.source,
                                                      d.span.start if d.span else 0)))
    if spec is None:
        raise RuntimeError("check produced no spec and no error")  # a bug in the checker
    return spec, c.warnings


def _check_file(c: Checker, tree: ast.SpecFile) -> tuple[Spec | None, params.Resolved]:
    """The checked spec (None on an error) and the resolved params block."""
    end = tree.source.end_span()
    if not tree.blocks and not tree.commands:
        c.error(codes.MISSING, "the spec is empty", end, ["a spec has a data, a model and a train block;"
                                                          " see specs/collab.spec"])
        return None, params.Resolved({})
    blocks = _blocks(c, tree)
    search_block = blocks.pop(SEARCH, None)  # what tune tries; training and the params never see it
    blocks = {name: _without_keys(c, block) for name, block in blocks.items()}
    resolved = params.resolve(blocks, RESERVED, tree.source)
    c.params = tuple(v.name for v in resolved.values)
    c.errors += resolved.errors
    c.warnings += resolved.warnings
    blocks = resolved.blocks
    deep = [(stmt, levels) for block in blocks.values() for stmt in block.body
            if (levels := ast.nesting(stmt)) > ast.MAX_DEPTH]
    if deep:  # each part within the bound as written, but not together: the walks below have no room
        c.errors += [too_deep(stmt, levels, " once params and --set values are put in",
                              "params and --set values are put in where they stand, so their levels add to "
                              "those around them") for stmt, levels in deep]
        return None, resolved
    data = check_data(c, blocks["data"]) if "data" in blocks else NO_DATA
    model = check_model(c, blocks["model"], data) if "model" in blocks else None
    train = check_train(c, blocks["train"], data.spec, model) if "train" in blocks else None
    inits = _inits(c, tree, model)
    search = ()
    if search_block is not None:
        rest = dataclasses.replace(tree, blocks=tuple(b for b in tree.blocks if b is not search_block))
        search = check_search(c, search_block, rest, lambda t: _errors_of(c.base_dirs, t))
    if c.errors or data.spec is None or model is None or train is None:
        return None, resolved
    name = os_text(Path(tree.source.path).stem)  # text, whatever bytes the file's name has: it names the run
    return Spec(name, data.spec, model, train, tree.source, inits, resolved.values, search), resolved


def _errors_of(base_dirs: dict[str, Path], tree: ast.SpecFile) -> list[Diagnostic]:
    """The errors of checking a spec (one without a search block: the search block tries its values so)."""
    c = Checker(base_dirs)
    _, resolved = _check_file(c, tree)
    return _at_param_uses(c.errors, resolved) if resolved.uses else c.errors


def _without_keys(c: Checker, block: ast.Block) -> ast.Block:
    """A block other than search, its lines with a dotted key (`train.fit.lr = ...`) reported and left out."""
    def keep(body: tuple) -> tuple:
        out = []
        for stmt in body:
            if isinstance(stmt, ast.KeyAssign):
                c.error(codes.MISPLACED_STATEMENT, f"a dotted key ('{stmt.target.id}') is written only in a search "
                        "block", stmt.target.span, [f"in the {block.name.id} block, a line is `name = value`"])
            elif isinstance(stmt, ast.Section):
                out.append(dataclasses.replace(stmt, body=keep(stmt.body)))
            else:
                out.append(stmt)
        return tuple(out)

    if not any(isinstance(n, ast.KeyAssign) for n, _ in ast.walk(block)):
        return block
    return dataclasses.replace(block, body=keep(block.body))


def _blocks(c: Checker, tree: ast.SpecFile) -> dict[str, ast.Block]:
    """The spec's blocks by name; an unknown, repeated or missing block is an error."""
    blocks: dict[str, ast.Block] = {}
    misspelt: set[str] = set()
    for block in tree.blocks:
        name = block.name.id
        if name not in BLOCKS + OPTIONAL_BLOCKS + (SEARCH,):
            hint = suggest(name, BLOCKS + OPTIONAL_BLOCKS + (SEARCH,))
            misspelt.update(b for b in BLOCKS if hint and f"'{b}'" in hint[0])
            c.error(codes.UNKNOWN_BLOCK, f"unknown block '{name}'", block.name.span,
                    hint or [f"a spec has the blocks {', '.join(BLOCKS)} (and may have {params.BLOCK})"])
        elif name in blocks:
            first = blocks[name].name.span
            c.error(codes.DEFINED_TWICE, f"block '{name}' is defined twice", block.name.span,
                    [f"first defined at line {first.line}"])
        else:
            blocks[name] = block
    for name in BLOCKS:
        if name not in blocks and name not in misspelt:  # a misspelt block is reported once
            c.error(codes.MISSING, f"the spec has no '{name}' block", tree.source.end_span(),
                    [f"add `{name} {{ ... }}`; see specs/collab.spec"])
    return blocks


def _inits(c: Checker, tree: ast.SpecFile, model: ModelSpec | None) -> tuple[InitFrom, ...]:
    """Top-level `init GROUP from "RUN"` statements."""
    found: list[InitFrom] = []
    for command in tree.commands:
        args = command.args
        if command.name.id != "init":
            c.error(codes.UNKNOWN_SETTING, f"unknown statement '{command.name.id}'", command.name.span,
                    suggest(command.name.id, ("init",)) or ["at the top level: blocks, and init GROUP from \"RUN\""])
            continue
        if len(args) != 3 or not isinstance(args[0], ast.Name) or not isinstance(args[1], ast.Name) \
                or args[1].id != "from" or not isinstance(args[2], ast.String):
            c.error(codes.MISPLACED_STATEMENT, 'init: expected `init GROUP from "RUN_FOLDER"`', command.span)
            continue
        group, run = args[0], args[2]
        if model is not None and group.id not in model.groups:
            c.error(codes.UNKNOWN_NAME, f"unknown group '{group.id}'", group.span,
                    suggest(group.id, model.groups) or [f"the groups are {', '.join(model.groups)}"])
            continue
        if any(i.group == group.id for i in found):
            c.error(codes.DEFINED_TWICE, f"group '{group.id}' is initialised twice", group.span)
            continue
        if "\x00" in run.value or not run.value.strip():
            c.error(codes.BAD_TEXT, "init: expected the path of a run folder", run.span)
            continue
        found.append(InitFrom(group.id, resolved_path(c.base_dir(run.span) / run.value), command.span))
    return tuple(found)


def _at_param_uses(errors: list[Diagnostic], resolved: params.Resolved) -> list[Diagnostic]:
    """An error where a param was used says what the param is; where the param itself was
    already reported at its definition, its uses are not reported again."""
    out = []
    for d in errors:
        key = None if d.span is None else (d.span.source.path, d.span.start, d.span.end)
        if key not in resolved.uses:
            out.append(d)
            continue
        name, note = resolved.uses[key]
        if name not in resolved.failed:
            out.append(dataclasses.replace(d, notes=d.notes + (note,)))
    return out
