"""Golden diagnostics: every tests/data/errors/<name>.spec fails `specc check --no-data` (or
`specc check`, reading its data, when its first line starts with "# with data") with exactly the
text in <name>.txt on stderr and exit code 1.

After a deliberate change to a message, regenerate with `python tests/regen_errors.py` and
read the diff of every golden file it rewrote. The codes themselves are named in specc.language.codes, and
the docs' table of codes is that module's.
"""

from __future__ import annotations

import os
import re
from glob import glob
from pathlib import Path

import pytest

from helpers import ROOT
from regen_errors import check_argv
from specc.commands.cli import main
from specc.language import codes
from specc.language.diagnostics import DataError

ERRORS = "tests/data/errors"

# Relative to the repository root, as the golden files name them.
_cwd = os.getcwd()
os.chdir(ROOT)
try:
    SPECS = sorted(glob(f"{ERRORS}/*.spec"))
finally:
    os.chdir(_cwd)


def _check(rel_path: str, capsys) -> tuple[int, str]:
    code = main(check_argv(rel_path))
    captured = capsys.readouterr()
    return code, captured.err


def _header(rel_path: str) -> re.Pattern:
    """A spec error at the spec's line and column; with the data read, also a data error at the
    data file (or folder, or image) it is about, under tests/data/."""
    at_spec = rf"{re.escape(rel_path)}:\d+:\d+: error\[[EW]\d+\]"
    if check_argv(rel_path)[1] == "--no-data":
        return re.compile(rf"^{at_spec}: ")
    return re.compile(rf"^(?:{at_spec}|tests/data/[^:]+(?::\d+)?: error\[D\d+\]): ")


def test_corpus_is_there():
    assert SPECS, f"no specs in {ERRORS}"
    assert len(SPECS) >= 30, f"only {len(SPECS)} specs in {ERRORS}"
    for rel in SPECS:
        assert (ROOT / rel).with_suffix(".txt").is_file(), f"{rel} has no golden .txt; run tests/regen_errors.py"


@pytest.mark.parametrize("rel_path", SPECS, ids=[Path(s).stem for s in SPECS])
def test_golden_diagnostics(rel_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, err = _check(rel_path, capsys)
    # newline="": keep a golden file's line endings exactly as written (one spec has CR-only lines).
    with open(Path(rel_path).with_suffix(".txt"), encoding="utf-8", newline="") as f:
        golden = f.read()
    assert code == 1, f"exit code {code}, expected 1; stderr:\n{err}"
    assert "Traceback" not in err
    assert err == golden
    header = _header(rel_path)
    lines = err.split("\n")
    # Every line that is not part of a source excerpt or a note is an error header.
    headers = [line for line in lines if line and not line.startswith(" ")]
    assert headers, "no error header"
    for line in headers:
        assert header.match(line), f"not an error header: {line!r}"


def test_three_independent_errors_all_reported(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rel = f"{ERRORS}/multi_three_errors.spec"
    code, err = _check(rel, capsys)
    assert code == 1
    header = _header(rel)
    assert len([line for line in err.split("\n") if header.match(line)]) == 3, err
    assert err.count("error[") == 3, err


_COLLAB = (ROOT / "specs" / "collab.spec").read_text(encoding="utf-8")


def test_whole_number_constants_next_to_a_tensor_check(tmp_path, capsys):
    # once a KeyError in check.py: constants folded to an int were taken for node names
    path = tmp_path / "int_constant.spec"
    path.write_text(_COLLAB.replace("dot(u, i) + ub + ib", "2 * 3 * dot(u, i) + ub + ib"), encoding="utf-8")
    assert main(["check", "--no-data", str(path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


_HEADERLESS = """\
data {{
    source = {source}("{path}", columns=[user, item, rating, timestamp])
    inputs = [user: category, item: category]
    target = rating: float
}}
model {{
    out = dot(embedding(user, 8), embedding(item, 8))
}}
train {{
    loss = mse
    fit(epochs=1, lr=1e-2)
}}
"""


@pytest.mark.parametrize("delimiter, source, hint", [
    ("\t", "csv", "; the line looks '\\t'-separated: csv(..., delimiter=\"\\t\") or tsv(...)"),
    (";", "csv", "; the line looks ';'-separated: csv(..., delimiter=\";\")"),
    ("|", "tsv", "; the line looks '|'-separated: csv(..., delimiter=\"|\")"),
    (",", "tsv", "; the line looks ','-separated: csv(..., delimiter=\",\")"),
    (" ", "csv", ""),  # no delimiter specc knows splits it into 4: no guess
])
def test_a_headerless_file_with_another_delimiter_says_which(tmp_path, capsys, delimiter, source, hint):
    # MovieLens' u.data (tab-separated, no header) read as csv(..., columns=[...])
    lines = (ROOT / "tests" / "data" / "tables" / "u.data").read_text().replace("\t", delimiter)
    data = tmp_path / "u.data"
    data.write_text(lines)
    spec = tmp_path / "s.spec"
    spec.write_text(_HEADERLESS.format(source=source, path=data))
    assert main(["check", str(spec)]) == 1
    assert capsys.readouterr().err == f"{data}:1: error[D103]: expected 4 fields, found 1{hint}\n"


def test_the_tab_separated_sample_reads_as_tsv(tmp_path, capsys):
    spec = tmp_path / "s.spec"
    spec.write_text(_HEADERLESS.format(source="tsv", path=ROOT / "tests" / "data" / "tables" / "u.data"))
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err


def test_a_very_deep_expression_is_a_diagnostic(tmp_path, capsys):
    # once a RecursionError in lark's transformer
    path = tmp_path / "long_sum.spec"
    path.write_text(_COLLAB.replace("dot(u, i) + ub + ib", "dot(u, i)" + " + ub" * 600), encoding="utf-8")
    assert main(["check", "--no-data", str(path)]) == 1
    err = capsys.readouterr().err
    line = _COLLAB[:_COLLAB.index("out = dot(u, i)")].count("\n") + 1
    assert f"{path}:{line}:11: error[E306]: the expression is nested too deeply: 602 levels, at most 200" in err


# ---------------------------------------------------------------- the codes


def _docs_section() -> str:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    return text.split("\n## Diagnostics\n", 1)[1].split("\n## ", 1)[0]


def _docs_table_of_codes() -> list[tuple[str, str]]:
    """(code, meaning) of each row of the docs' table of spec diagnostics (E and W codes), in order."""
    rows = re.findall(r"^\| ([EW][^|]*?) \| (.*) \|$", _docs_section(), re.M)
    for code, _ in rows:
        assert re.fullmatch(r"[EW]\d{3}", code), f"one code per row of the table, found {code!r}"
    return rows


def _docs_table_of_data_codes() -> list[tuple[str, str, str]]:
    """(code, parent or "", meaning) of each row of the docs' table of data errors (D codes), in order."""
    rows = re.findall(r"^\| (D[^|]*?) \| ([^|]*?) *\| (.*) \|$", _docs_section(), re.M)
    for code, parent, _ in rows:
        assert re.fullmatch(r"D\d{3}", code), f"one code per row of the table, found {code!r}"
        assert re.fullmatch(r"(D\d{3})?", parent), f"{code}: a parent is one code, found {parent!r}"
    return rows


def test_the_docs_table_of_codes_is_specc_codes():
    expected = [(c.code, c.description) for c in codes.ALL if c.code[0] in "EW"]
    table = "\n".join(f"| {code} | {meaning} |" for code, meaning in expected)
    assert _docs_table_of_codes() == expected, f"docs/language.md's table of codes should read:\n{table}"


def test_the_docs_table_of_data_codes_is_specc_codes():
    # Both ways: every D-code of codes.py has its row, with its parent and meaning, and no row is
    # of a code codes.py lacks.
    expected = [(c.code, c.parent.code if c.parent else "", c.description) for c in codes.ALL if c.code[0] == "D"]
    table = "\n".join(f"| {code} | {parent} | {meaning} |" for code, parent, meaning in expected)
    assert len(expected) >= 19
    assert _docs_table_of_data_codes() == expected, f"docs/language.md's table of data codes should read:\n{table}"


def test_each_code_is_named_once():
    assert len(codes.ALL) >= 50
    assert len(codes.BY_CODE) == len(codes.ALL), "two names for one code"
    for code in codes.ALL:
        assert re.fullmatch(r"[EWD]\d{3}", code.code), code
        assert code.description and code.description == code.description.strip(), code
        assert str(code) == code.code  # what `error[...]` shows
    # the spec's errors, its warnings, then the data's, each in order of their numbers
    assert [c.code for c in codes.ALL] == sorted((c.code for c in codes.ALL), key=lambda c: ("EWD".index(c[0]), c))


def test_a_sub_code_is_split_from_a_code_of_its_own_kind():
    children = [c for c in codes.ALL if c.parent is not None]
    assert {c.code for c in children} == {"D121", "D122", "D123", "D124", "D125", "D126", "D127"}
    for child in children:
        assert child.parent in codes.ALL and child.parent.parent is None, child  # one level, as mypy's
        assert child.parent.code[0] == child.code[0] and child.parent.code < child.code, child
    assert {c.parent for c in children} == {codes.DAMAGED_FILE}


def test_a_data_error_shows_its_own_code_only():
    # as mypy does: a sub-code's message names it, not its parent
    err = DataError("f.csv", "byte 0xff is not UTF-8 text", line=3, column="x", code=codes.NOT_UTF8)
    assert str(err) == "f.csv:3: error[D121]: column 'x': byte 0xff is not UTF-8 text"
    assert err.code is codes.NOT_UTF8 and err.code.parent is codes.DAMAGED_FILE


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
            for p in sorted((ROOT / "specc").rglob("*.py")) if p.name != "codes.py"}


def test_diagnostics_use_the_named_codes():
    # D-codes too: no "D102" in specc/ outside codes.py, where each is named once with its meaning
    bare = [(path, m) for path, text in _sources().items() for m in re.findall(r"[\"'][EWD]\d{3}[\"']", text)]
    assert not bare, f"codes written as strings instead of specc.language.codes' names: {bare}"


def test_every_named_code_is_used():
    text = "\n".join(_sources().values())
    names = [name for name, value in vars(codes).items() if isinstance(value, codes.Code)]
    unused = [name for name in names if not re.search(rf"\bcodes\.{name}\b", text)]
    assert not unused, f"codes no diagnostic uses: {unused}"
