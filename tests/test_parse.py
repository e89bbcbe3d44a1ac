"""Parsing: text -> syntax tree, with spans."""

from specc.language import ast
from specc.language.parse import parse, parse_expr
from specc.language.source import Source


def _one(text: str):
    tree = parse(Source("t.spec", "model {\n    x = " + text + "\n}\n"))
    return tree.blocks[0].body[0].value


def test_blocks_statements_and_spans():
    src = Source("t.spec", "# a comment\ndata {\n  batch = 64  # trailing\n}\n\ntrain { loss = mse; seed = 1 }\n")
    tree = parse(src)
    assert [b.name.id for b in tree.blocks] == ["data", "train"]
    batch = tree.blocks[0].body[0]
    assert isinstance(batch, ast.Assign) and batch.target.id == "batch"
    assert batch.value == ast.Number(64, "64", None)
    assert (batch.span.line, batch.span.column) == (3, 3)
    assert [s.target.id for s in tree.blocks[1].body] == ["loss", "seed"]


def test_precedence_and_pipe():
    expr = _one("a + b * c |> f(1)")
    assert isinstance(expr, ast.Pipe)
    assert isinstance(expr.value, ast.BinOp) and expr.value.op == "+"
    assert isinstance(expr.value.right, ast.BinOp) and expr.value.right.op == "*"
    assert expr.stage.func.id == "f" and expr.stage.args == (ast.Number(1, "1", None),)


def test_left_associative_minus_and_negation():
    expr = _one("a - b - -c")
    assert expr.op == "-" and isinstance(expr.left, ast.BinOp) and isinstance(expr.right, ast.Neg)


def test_calls_keywords_tuples_lists_typed():
    expr = _one('f(1, "s", k=(0.9, 0.99), cols=[user: category, item: category], n=-2e-3)')
    assert isinstance(expr, ast.Call) and len(expr.args) == 2
    assert expr.args[1] == ast.String("s", None)
    kws = {k.name.id: k.value for k in expr.keywords}
    assert isinstance(kws["k"], ast.TupleExpr) and len(kws["k"].items) == 2
    assert [i.name.id for i in kws["cols"].items] == ["user", "item"]
    assert isinstance(kws["n"], ast.Neg) and kws["n"].operand.value == 2e-3


def test_newlines_inside_brackets_are_free():
    expr = _one("f(1,\n        2,\n    )")
    assert len(expr.args) == 2


def test_string_escapes_are_decoded_not_evaluated():
    assert _one(r'"a\tb\"c\\d"') == ast.String('a\tb"c\\d', None)
    assert _one('"__import__(\'os\')"') == ast.String("__import__('os')", None)


def test_parse_expr_spans_point_into_the_override_text():
    src = Source("--set", "data.batch=(1, 2)")
    expr = parse_expr(src, 11)
    assert isinstance(expr, ast.TupleExpr)
    assert expr.span.text == "(1, 2)" and expr.span.column == 12


def test_byte_order_mark_and_old_mac_line_endings_are_accepted():
    from helpers import ROOT
    from specc.training.run import load_spec

    for name in ("utf8_bom.spec", "cr_line_endings.spec"):
        spec, _ = load_spec(ROOT / "tests" / "data" / name)
        assert spec.model.output == "out" and spec.data.batch == 64
