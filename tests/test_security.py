"""Security: a spec cannot run code, import modules, or read and write beyond the files it names and
its run folder; weights are safetensors, and nothing a user hands in is ever unpickled."""

import json
import os
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from helpers import ROOT
from specc.commands.cli import main
from specc.language.check import check
from specc.language.diagnostics import SpecError
from specc.language.parse import parse
from specc.language.source import Source

PACKAGE = ROOT / "specc"


def _first_error(text: str) -> str:
    with pytest.raises(SpecError) as err:
        check(parse(Source("evil.spec", text)))
    return err.value.render().splitlines()[0]


def test_there_is_no_syntax_for_code():
    # '.' is a token since the search block's dotted keys (train.fit.lr = ...), but an attribute
    # access is still no expression: the call stops the parse where the dot is
    assert _first_error('data {\n  source = os.system("rm -rf ~")\n}') == \
        "evil.spec:2:14: error[E002]: unexpected '.': expected end of line, '(', ':', ';' or '}'"
    assert _first_error("import os\ndata {}") == "evil.spec:1:1: error[E102]: unknown statement 'import'"
    assert _first_error('exec "rm -rf /"\n') == "evil.spec:1:1: error[E102]: unknown statement 'exec'"
    assert _first_error("data {\n  x = `ls`\n}") == "evil.spec:2:7: error[E001]: unexpected character '`'"


def test_a_string_that_looks_like_code_is_only_a_path(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "__import__('os').system('touch pwned')"
    assert main(["check", str(tiny), "--set", f'data.source.path="{code}"']) == 1
    assert capsys.readouterr().err.startswith(f"--set:1:18: error[E208]: data file not found: {tmp_path}/{code}\n")
    assert not (tmp_path / "pwned").exists()


def _audit(args, cwd, env_extra):
    env = dict(os.environ, **env_extra)
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "audit_run.py"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _outside_python(paths):
    """Paths that are not Python's own installation nor specc's code."""
    skip = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}) + \
        (sys.prefix, sys.base_prefix, "/proc", "/sys", "/dev", "/etc", "/usr")
    return {p for p in paths if not p.startswith(skip) and not p.startswith(str(PACKAGE))}


def test_train_reads_the_spec_and_its_data_and_writes_only_its_run_folder(tiny, tmp_path):
    mpl, tmp = tmp_path / "mpl", tmp_path / "tmp"
    tmp.mkdir()
    env = {"MPLCONFIGDIR": str(mpl), "TMPDIR": str(tmp)}  # matplotlib's font cache; Python's temp probe
    got = _audit(["train", str(tiny), "--out", "run", "--quiet", "--set", "train.fit.epochs=1"], tmp_path, env)
    assert got["code"] == 0
    run = str(tmp_path / "run")
    libraries = (str(mpl), str(tmp))
    reads = {p for p in _outside_python(got["read"]) if not p.startswith(libraries)}
    assert reads == {str(tiny), str(tiny.parent / "ratings.csv"), str(ROOT / "grammars" / "specc.lark"),
                     str(ROOT / "tests" / "audit_run.py")}
    writes = {p for p in got["write"] + got["rename"] if not p.startswith(libraries)}
    assert writes and all(p.startswith(run + os.sep) for p in writes), writes
    assert got["unpickle"] == []
    assert all("fc-list" in e for e in got["exec"])  # matplotlib looking for fonts, nothing of the spec's


def test_predict_and_inspect_never_unpickle(tiny, tmp_path):
    assert main(["train", str(tiny), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    rows = tmp_path / "rows.csv"
    rows.write_text("user,item\n1,2\n")
    for args in (["predict", "run/model.onnx", "rows.csv"], ["inspect", "run"]):
        got = _audit(args, tmp_path, {"MPLCONFIGDIR": str(tmp_path / "mpl")})
        assert got["code"] == 0 and got["unpickle"] == [] and got["write"] == []


def test_run_folder_holds_safetensors_not_pickles(tiny, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    from safetensors import safe_open

    for name in ("model.safetensors", "checkpoint.safetensors"):
        with safe_open(str(run / name), framework="numpy") as f:
            assert f.keys()
    assert not [p for p in run.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin")]


def test_arrays_with_python_objects_are_refused(tmp_path):
    from specc.data.arrays import read_npz
    from specc.language.spec import Column, NpzSource

    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([object(), object()], dtype=object), y=np.array([1, 2]))
    with pytest.raises(Exception) as err:
        read_npz(NpzSource(path, None), (Column("x", "float", None), Column("y", "category", None)), None)
    assert "specc never unpickles data" in str(err.value)


def test_the_code_never_loads_pickles():
    """No torch.load without weights_only=True, no pickle, no allow_pickle=True, no eval or exec."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"torch\.load\((?![^)]*weights_only=True)", r"import pickle|pickle\.loads?\(", r"allow_pickle=True",
                        r"(?<![\w.])eval\(", r"(?<![\w.])exec\(", r"__import__"):
            for m in re.finditer(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group()}")
    assert offenders == []


def test_paths_in_a_spec_are_relative_to_the_spec_not_the_working_folder(tiny, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["check", str(tiny)]) == 0  # finds tiny.spec's ratings.csv beside it
