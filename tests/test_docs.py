"""The language reference cannot drift: every `spec` example in the docs parses and checks, and
every function, argument, setting, loss, metric and optimizer of the checker appears in one."""

import re

import pytest

from conftest import ROOT
from specc import ast
from specc.check import DATA_SETTINGS, LOSSES, METRICS, SIGNATURES, TRAIN_SETTINGS
from specc.spec import PROCS
from specc.parse import parse, read_source
from specc.run import load_spec

DOCS = [ROOT / "docs" / "language.md", ROOT / "README.md"]


def _examples():
    found = []
    for doc in DOCS:
        for k, block in enumerate(re.findall(r"```spec\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.name}-{k}", block))
    return found


EXAMPLES = _examples()


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("name,text", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_checks(name, text, tmp_path):
    path = tmp_path / f"{name}.spec"
    path.write_text(text)
    load_spec(path)  # raises SpecError with the diagnostics if the example is wrong


def _walk(node, out):
    if isinstance(node, tuple):
        for n in node:
            _walk(n, out)
        return
    if isinstance(node, ast.Call):
        func = node.func.id
        out["calls"].add(func)
        out["keywords"].update(f"{func}.{k.name.id}" for k in node.keywords)
        for table in SIGNATURES.values():  # arguments given by position count too
            out["keywords"].update(f"{func}.{p.name}" for p in table.get(func, ())[:len(node.args)])
    if isinstance(node, ast.Pipe) and isinstance(node.stage, ast.Name):
        out["calls"].add(node.stage.id)  # `x |> relu` calls relu
    if isinstance(node, ast.Assign):
        out["settings"].add(node.target.id)
    if isinstance(node, ast.Section):
        out["names"].add(node.kind.id)  # group, stage
    if isinstance(node, ast.Command):
        out["names"].add(node.name.id)  # freeze, unfreeze, init
    if isinstance(node, ast.Name):
        out["names"].add(node.id)
    if hasattr(node, "__dataclass_fields__"):
        for field in node.__dataclass_fields__:
            if field != "span":
                _walk(getattr(node, field), out)


def test_every_feature_has_an_example(tmp_path):
    used = {"calls": set(), "keywords": set(), "settings": set(), "names": set()}
    for name, text in EXAMPLES:
        path = tmp_path / f"{name}.spec"
        path.write_text(text)
        tree = parse(read_source(path))
        _walk(tree, used)
        _walk(tree.commands, used)
    missing = []
    for table in SIGNATURES.values():
        for func, params in table.items():
            if func not in used["calls"]:
                missing.append(func)
            missing += [f"{func}.{p.name}" for p in params
                        if not p.required and f"{func}.{p.name}" not in used["keywords"]]
    missing += [s for s in DATA_SETTINGS + TRAIN_SETTINGS if s not in used["settings"]]
    missing += [n for n in (*LOSSES, *METRICS, *PROCS, "true", "false", "classes", "find", "group", "stage",
                            "freeze", "unfreeze", "init") if n not in used["names"]]
    assert missing == []
