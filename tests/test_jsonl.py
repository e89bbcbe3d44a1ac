"""jsonl(...) under hostile input: empty, cut short, not JSON, not UTF-8, values that change kind,
a row past the block, a compression bomb, links, loops and FIFOs, for training and for predict; and
what a JSON Lines file means: text and number ids, nulls and missing fields, lists of numbers."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from specc.commands.cli import main
from specc.data.jsonl import read_jsonl
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import CATEGORY, FLOAT, Column
from specc.model.memory import MEMORY_ENV

SPEC = """\
data {{
    source = jsonl("{path}")
    inputs = [c: category, a: float]
    target = y: float
    valid  = random(0.25, seed=1)
    procs  = [fill_missing]
    batch  = 8
}}
model {{
    out = concat(embedding(c, 2), a) |> linear(1)
}}
train {{
    loss = mse
    fit(epochs=1, lr=1e-2)
}}
"""


def lines(n: int, **change) -> str:
    """n rows {"c": k % 5, "a": k / 10, "y": k % 7}; `change` replaces a row's text by its number (1-based)."""
    out = [json.dumps({"c": k % 5, "a": k / 10, "y": k % 7}) for k in range(n)]
    for row, text in change.items():
        out[int(row.removeprefix("row")) - 1] = text
    return "".join(line + "\n" for line in out)


def spec_over(folder, name: str, data: str | bytes | None) -> str:
    if data is not None:
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    (folder / "j.spec").write_text(SPEC.format(path=name))
    return str(folder / "j.spec")


def failed(capsys, *args) -> str:
    """The command exits 1 with one line on stderr and no traceback; that line."""
    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


WANTED = (Column("c", CATEGORY, None), Column("a", FLOAT, None), Column("y", FLOAT, None))


def test_ids_as_numbers_or_text_nulls_missing_fields_and_lists(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"c": "u1", "a": 1.5, "v": [1, 2], "y": 1}\n\n'
                                      '{"c": "u2", "v": [3, 4.5], "y": 2, "other": {"x": 1}}\n'
                                      '{"c": null, "a": null, "v": [0, 0], "y": 3}\n')
    table = read_jsonl(tmp_path / "m.jsonl", (*WANTED, Column("v", FLOAT, None, (2,))))
    assert table.rows == 3 and list(table.columns["c"]) == ["u1", "u2", ""]  # a null category is '', as in a CSV
    assert np.isnan(table.columns["a"][1:]).all() and table.columns["a"][0] == 1.5  # missing or null: NaN
    assert table.columns["v"].tolist() == [[1.0, 2.0], [3.0, 4.5], [0.0, 0.0]]
    (tmp_path / "n.jsonl").write_text('{"c": 17, "a": 2, "y": 1}\n{"c": 3, "a": 0.5, "y": 2}\n')
    assert read_jsonl(tmp_path / "n.jsonl", WANTED).columns["c"].tolist() == [17, 3]  # ids stay ids


@pytest.mark.parametrize("data,message", [
    (b"", "j.jsonl: error[D122]: has no rows"),
    (lines(3) + '{"c": 1, "a": 2', "j.jsonl: error[D127]: row 4: not a JSON object on one line (Missing a comma "
                                    "or '}' after an object member)"),
    (lines(3, row2='{"c": 1,, "a": 2}'), "j.jsonl: error[D127]: row 2: not a JSON object on one line (Missing a "
                                          "name for object member)"),
    ("[1, 2, 3]\n" + lines(2), "j.jsonl: error[D127]: row 1: not a JSON object on one line (Column() changed from "
                               "object to array)"),
    (lines(5, row3='{"c": "x", "a": 1, "y": 2}'), "j.jsonl: error[D104]: column 'c': row 3: found a string where "
                                                  "the column's first rows hold a number: a column holds one kind "
                                                  "of value in every row"),
    (lines(3).encode() + b'{"c": "caf\xe9", "a": 1, "y": 2}\n', "j.jsonl:4: error[D121]: byte 0xe9 is not UTF-8 text"),
    (gzip.compress(lines(3).encode())[:-12], "j.jsonl: error[D102]: cannot be read as gzip, it is damaged or cut "
                                             "short: "),
])
def test_a_file_that_is_not_json_lines_is_an_error_at_its_row(tmp_path, capsys, monkeypatch, data, message):
    name = "j.jsonl.gz" if isinstance(data, bytes) and data[:2] == b"\x1f\x8b" else "j.jsonl"
    monkeypatch.chdir(tmp_path)
    err = failed(capsys, "check", spec_over(tmp_path, name, data))
    assert err.replace("j.jsonl.gz", "j.jsonl").startswith(message), err


def test_a_cut_gzip_stream_is_named_with_the_codec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = gzip.compress(lines(2000).encode())
    err = failed(capsys, "check", spec_over(tmp_path, "j.jsonl.gz", data[:len(data) // 2]))
    assert err.startswith("j.jsonl.gz: error[D102]: cannot be read as gzip, it is damaged or cut short: "), err


def test_a_column_the_rows_lack_or_of_another_type_is_at_its_spec_line(tmp_path):
    (tmp_path / "j.jsonl").write_text('{"c": [1, 2], "b": 1.5, "y": "five"}\n')
    with pytest.raises(SpecError) as err:
        read_jsonl(tmp_path / "j.jsonl", WANTED)
    found = [(str(d.code), d.message) for d in err.value.diagnostics]
    assert found == [("E210", "column 'c' is declared category, but j.jsonl holds a list of values in each row "
                              "(list<item: int64>)"),
                     ("E205", "column 'a' is not in j.jsonl"),
                     ("E210", "column 'y' is declared float, but j.jsonl holds strings")]
    assert err.value.diagnostics[1].notes[-1] == "the first rows of j.jsonl have the fields: c, b, y"


def test_a_row_longer_than_a_block_is_d113_not_a_crash(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long = json.dumps({"c": 1, "a": 1.0, "y": 2, "pad": "x" * (40 << 20)}) + "\n"  # 40 MiB on one line
    data = gzip.compress((lines(1000) + long + lines(10)).encode())
    err = failed(capsys, "check", spec_over(tmp_path, "j.jsonl.gz", data))
    assert err.startswith("j.jsonl.gz: error[D113]: a row after row ") and \
        err.endswith(" is longer than 16.0 MiB, the longest specc reads"), err


def test_a_compression_bomb_stops_at_the_limit_in_bounded_memory(tmp_path):
    row = (json.dumps({"c": 12345, "a": 0.5, "y": 3}) + "\n").encode()
    with gzip.open(tmp_path / "j.jsonl.gz", "wb") as f:  # 350 MB of rows, under 2 MB on disk
        for _ in range(100):
            f.write(row * 100_000)
    spec = spec_over(tmp_path, "j.jsonl.gz", None)
    code = ("import sys; from specc.commands.cli import main; rc = main(['check', sys.argv[1]]); "
            "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(rc, int(peak) * 1024)")
    result = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), MEMORY_ENV: "256M"})
    rc, peak = result.stdout.split()
    assert rc == "1" and "error[D113]: reading stopped at row " in result.stderr, result.stderr
    assert "more than the 64.0 MiB specc reads a data file into" in result.stderr
    assert int(peak) < 700 << 20  # the whole would be 10M rows; a block at a time is not


@pytest.mark.parametrize("make", ["fifo", "loop", "folder", "missing"])
def test_a_path_that_is_no_regular_file_is_e208_without_waiting(tmp_path, capsys, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "j.jsonl"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "loop":
        os.symlink("j.jsonl", path)
    elif make == "folder":
        path.mkdir()
    assert main(["check", spec_over(tmp_path, "j.jsonl", None)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"{tmp_path / 'j.spec'}:2:20: error[E208]: data file "), err


def test_a_name_that_is_not_utf8_is_written_escaped(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"caf\xe9.jsonl")
    (tmp_path / name).write_text("")
    (tmp_path / "j.spec").write_text(SPEC.format(path="x.jsonl"))
    assert main(["check", str(tmp_path / "j.spec"), "--set", f'data.source.path="{name}"']) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("caf\\xe9.jsonl: error[D122]: has no rows\n"), err


# ---------------------------------------------------------------- predict and evaluate


@pytest.fixture
def model(tmp_path, capsys):
    spec = spec_over(tmp_path, "j.jsonl", lines(40))
    assert main(["train", spec, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    return tmp_path / "run" / "model.onnx"


@pytest.mark.parametrize("data,message", [
    ('{"a": 1.0, "y": 2}\n', "error[D107]: missing input column 'c' (its first rows have: a, y)"),
    ('{"c": 1, "a": "x", "y": 2}\n', "error[D104]: column 'a': holds strings; the model's column 'a' takes numbers"),
    ('{"c": 1, "a": 1.0, "y": 2}\n{"c": 2, "a": 1.0', "error[D127]: row 2: not a JSON object on one line"),
    ('{"c": 1.5, "a": 1.0, "y": 2}\n', "error[D104]"),
])
def test_predict_of_a_bad_jsonl_file_is_one_line(model, tmp_path, capsys, data, message):
    (tmp_path / "new.jsonl").write_text(data)
    assert message in failed(capsys, "predict", model, tmp_path / "new.jsonl")


def test_a_model_trained_on_csv_predicts_a_jsonl_file(tmp_path, capsys, ratings_dir):
    from helpers import collab_spec, copy_ratings

    copy_ratings(ratings_dir, tmp_path)
    spec = collab_spec(tmp_path, fit="fit(epochs=1, lr=1e-2)")
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    rows = [line.split(",") for line in (tmp_path / "ratings.csv").read_text().splitlines()[1:6]]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"user": int(u), "item": int(i)}) + "\n"
                                                for u, i, _ in rows))
    (tmp_path / "new.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _ in rows))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "model.onnx"), str(tmp_path / "new.jsonl")]) == 0
    from_jsonl = capsys.readouterr().out
    assert main(["predict", str(tmp_path / "run" / "model.onnx"), str(tmp_path / "new.csv")]) == 0
    assert from_jsonl == capsys.readouterr().out
