"""The language reference cannot drift: every `spec` example in the docs parses and checks, and
every function, argument, setting, loss, metric and optimizer of the checker appears in one; every
setting and statement has its row in its block's table, and no table row stands outside a table."""

import re

import pytest

from helpers import ROOT
from specc.language import ast
from specc.language.check import DATA_SETTINGS, LOSSES, METRICS, SIGNATURES, TRAIN_SETTINGS
from specc.language.parse import parse, read_source
from specc.language.spec import PROCS
from specc.training.run import load_spec

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
            if func not in used["calls"] and func not in used["names"]:  # `flip`, `x |> relu`: a call by name
                missing.append(func)
            missing += [f"{func}.{p.name}" for p in params
                        if not p.required and f"{func}.{p.name}" not in used["keywords"]]
    missing += [s for s in DATA_SETTINGS + TRAIN_SETTINGS if s not in used["settings"]]
    missing += [n for n in (*LOSSES, *PROCS, "true", "false", "classes", "find", "group", "stage",
                            "freeze", "unfreeze", "init", "params") if n not in used["names"]]
    # a metric by name (rmse), or a ranking metric with its cutoff (ndcg(10))
    missing += [n for n, d in METRICS.items() if n not in used["calls" if d.cutoff else "names"]]
    assert missing == []


def _prose_lines(text):
    """The lines of a markdown file outside ``` fences, with their line numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_no_stray_table_rows(doc):
    # A table row must follow a row or open a table (a header with its `| --- |` line below).
    lines = dict(_prose_lines(doc.read_text()))
    stray = [f"{doc.name}:{n}: {line}" for n, line in lines.items()
             if line.startswith("|") and not lines.get(n - 1, "").startswith("|")
             and not re.fullmatch(r"\|( *:?-+:? *\|)+", lines.get(n + 1, ""))]
    assert stray == []


def _table_after(text, heading):
    """The rows of the first table after a heading, each a list of its cells."""
    section = text[text.index(heading):]
    rows = re.search(r"((?:^\|.*\n)+)", section, re.M).group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_every_setting_and_statement_has_a_row_in_its_blocks_table():
    text = (ROOT / "docs" / "language.md").read_text()
    data = [row[0] for row in _table_after(text, "## The data block")]
    train = {row[0]: row for row in _table_after(text, "## The train block")}
    assert [s for s in DATA_SETTINGS if f"`{s}`" not in data] == []
    assert [s for s in TRAIN_SETTINGS if f"`{s}`" not in train] == []
    # The fit statements share one row; each other statement of a stage (early_stop) has its own.
    assert "a fit statement" in train
    assert [f for f in SIGNATURES["fit"] if f"`{f}(" not in train["a fit statement"][1]] == []
    statements = list(SIGNATURES["stage"])
    assert statements and [s for s in statements if not any(k.startswith(f"`{s}(") for k in train)] == []
