"""The command line, through main([...]): exit codes, outputs, the run folder."""

import csv
import json
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

from specc.commands.cli import main
from helpers import ROOT


def test_check_prints_a_summary(tiny, capsys):
    assert main(["check", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "spec tiny: ok" in out
    assert "u             embedding(user, 8)            (batch, 8)" in out
    assert "out (output)  sigmoid_range(add_1, 0, 5.5)  (batch, 1)" in out
    assert "steps per epoch" in out


def test_check_does_not_import_torch(tiny):
    code = ("import sys; from specc.commands.cli import main; rc = main(['check', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    result = subprocess.run([sys.executable, "-c", code, str(tiny)], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("NO-TORCH 0")


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check"], ["show", "x.spec", "--stage", "bytecode"],
                                  ["train", "specs/collab.spec", "--device", "tpu"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_missing_spec_file_is_a_usage_error(capsys):
    assert main(["check", "no/such.spec"]) == 2
    assert capsys.readouterr().err == "specc: error: no/such.spec: no such spec file\n"


def test_bad_set_is_a_usage_error(tiny, capsys):
    assert main(["check", str(tiny), "--set", "data.batch"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_spec_error_exit_1_with_diagnostics(tiny, capsys):
    assert main(["check", str(tiny), "--set", "train.optimizer=adamm()"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("--set:1:17: error[E202]: unknown optimizer 'adamm'")
    assert "did you mean 'adam', 'radam', 'nadam'?" in err


def test_data_error_exit_1_without_traceback(tiny, capsys):
    (tiny.parent / "ratings.csv").write_text("user,item,rating\n1,2,oops\n")
    assert main(["check", str(tiny)]) == 1
    err = capsys.readouterr().err
    assert err == f"{tiny.parent}/ratings.csv:2: error[D104]: column 'rating': expected a number, found 'oops'\n"


def test_show_stages(tiny, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # show --stage plan draws tiny_plan.png here
    assert main(["show", str(tiny), "--stage", "ast"]) == 0
    assert "Block  @1:1" in capsys.readouterr().out
    assert main(["show", str(tiny), "--stage", "code"]) == 0
    assert "out = out_sigmoid * 5.5" in capsys.readouterr().out
    assert main(["show", str(tiny), "--stage", "plan"]) == 0
    out = capsys.readouterr().out
    assert "fit_one_cycle: 3 epochs" in out and "AdamW" in out


def test_train_predict_inspect(tiny, tmp_path, capsys, ratings_dir):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--set", "train.fit.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "epoch       train_loss  valid_loss  rmse        mae         time" in out
    names = {p.name for p in run.iterdir()}
    events = {n for n in names if n.startswith("events.out.tfevents.")}  # TensorBoard's (tests/test_tracking.py)
    assert len(events) == 1 and names - events == {"spec.spec", "model.safetensors", "metrics.csv", "loss.png",
                                                   "model.onnx", "run.json", "checkpoint.safetensors"}
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["stage"] == "train"
    assert set(rows[0]) == {"stage", "epoch", "train_loss", "valid_loss", "rmse", "mae", "lr", "seconds"}
    assert (run / "spec.spec").read_text() == tiny.read_text()
    weights = load_file(run / "model.safetensors")
    assert weights["u.weight"].shape == (61, 8)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run / "run.json").read_text())
    assert info["onnx_parity_max_abs_diff"] < 1e-4 and info["overrides"] == ["train.fit.epochs=2"]
    assert (info["device"], info["loop"]) == ("cpu", "plain")  # no CUDA graph without a GPU

    rows_csv = tmp_path / "rows.csv"
    rows_csv.write_text("item,user,extra\n3,1,x\n4,2,y\n5,1000000,z\n")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(run / "model.onnx"), str(rows_csv), "--out", str(preds)]) == 0
    with open(preds) as f:
        got = list(csv.DictReader(f))
    assert [(r["user"], r["item"]) for r in got] == [("1", "3"), ("2", "4"), ("1000000", "5")]
    assert all(0 < float(r["rating"]) < 5.5 for r in got)

    assert main(["inspect", str(run), "--names", str(ratings_dir / "items.csv"), "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "bias 'ib': lowest" in out and "principal component 3" in out and "[item " in out


def test_predict_input_missing_a_column(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    rows_csv = tmp_path / "rows.csv"
    rows_csv.write_text("user\n1\n")
    assert main(["predict", str(run / "model.onnx"), str(rows_csv)]) == 1
    assert capsys.readouterr().err == (f"{rows_csv}:1: error[D107]: missing input column 'item' "
                                       "(the header has: user)\n")
    rows_csv.write_text("user,item\n1,abc\n")
    assert main(["predict", str(run / "model.onnx"), str(rows_csv)]) == 1
    assert capsys.readouterr().err == (f"{rows_csv}:2: error[D104]: column 'item': expected a whole number "
                                       "(the model's ids are integers), found 'abc'\n")


def test_unwritable_run_folder_fails_before_training(tiny, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", str(tiny), "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specc: error: cannot write the run folder {blocker / 'run'}")


def test_a_path_too_long_for_the_system_is_a_usage_error_naming_it(tiny, tmp_path, capsys):
    """ENAMETOOLONG (a name of 300 bytes): pathlib lets it through as an OSError, which used to show its
    traceback; every command says which path and why, exits 2, and writes nothing."""
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    long = str(tmp_path / ("z" * 300))
    model = str(run / "model.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in (["check", long + ".spec"], ["train", str(tiny), "--out", long], ["predict", model, long + ".csv"],
                 ["predict", model, str(tiny.parent / "ratings.csv"), "--out", long + ".csv"],
                 ["evaluate", model, long + ".csv"], ["lr-find", str(tiny), "--out", long, "--steps", "5"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("specc: error: ") and "z" * 300 in err and err.endswith(": file name too long\n"), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_example_specs_check(tmp_path, capsys):
    import shutil

    copy = tmp_path / "specs"  # a copy, so that the run finetune.spec starts from goes beside it
    shutil.copytree(ROOT / "specs", copy)
    # an example that starts from another example's run says so, at its init line, until that run exists
    assert main(["check", str(copy / "finetune.spec")]) == 1
    err = capsys.readouterr().err
    assert f"finetune.spec:26:1: error[E207]: no model.safetensors in {tmp_path / 'runs' / 'finetune_pretrain'}" in err
    assert main(["train", str(copy / "finetune_pretrain.spec"), "--quiet", "--set", "train.fit.epochs=1",
                 "--out", str(tmp_path / "runs" / "finetune_pretrain")]) == 0
    assert main(["train", str(copy / "digits_pretrain.spec"), "--quiet", "--set", "train.fit.epochs=1",
                 "--set", "data.train_rows=128", "--out", str(tmp_path / "runs" / "digits_pretrain")]) == 0
    for spec in sorted(copy.glob("*.spec")):
        assert main(["check", str(spec)]) == 0, spec
        # the data as the file has the columns the spec reads: implicit feedback's made target is none of them,
        # a side table's columns are its own file's
        assert main(["show", str(spec), "--stage", "data"]) == 0, spec
        if spec.name == "svdpp.spec":
            assert "table items, " in capsys.readouterr().out
    capsys.readouterr()


def test_every_command_that_reads_a_spec_prints_its_warnings_once(tiny, tmp_path, capsys):
    tiny.write_text("params {\n    spare = 3\n}\n" + tiny.read_text())
    warning = (f"{tiny}:2:5: warning[W202]: param 'spare' is not used\n"
               "  2 |     spare = 3\n"
               "    |     ^~~~~\n")
    one = ["--set", "train.fit.epochs=1"]
    for argv in (["check", "--no-data"], ["check"], ["show", "--stage", "code"], ["show", "--stage", "plan"],
                 ["show", "--stage", "data"], ["train", "--quiet", "--out", str(tmp_path / "run"), *one],
                 ["lr-find", "--steps", "20", "--out", str(tmp_path / "find")]):
        assert main([argv[0], str(tiny), *argv[1:]]) == 0, argv
        assert capsys.readouterr().err == warning, argv


def test_files_named_in_bytes_that_are_not_utf8(tiny, tmp_path, capsys):
    """Linux names a file with any bytes: a spec, its run folder, a model and data files whose names hold 0xff
    train, predict and evaluate (the spec's name, which the run and the model record, written odd\\xff); a
    Parquet file of such a name, which pyarrow cannot open, is an error naming it."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors import safe_open

    odd = os.fsdecode(b"odd\xff")
    spec = tmp_path / f"{odd}.spec"
    spec.write_bytes(tiny.read_bytes())
    run = tmp_path / odd
    assert main(["train", str(spec), "--out", str(run), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    with safe_open(str(run / "model.safetensors"), "np") as f:
        assert f.metadata()["specc.spec_name"] == "odd\\xff"
    data = tmp_path / f"{odd}.csv"
    data.write_bytes((tmp_path / "ratings.csv").read_bytes())
    out = tmp_path / f"{odd}.out.csv"
    assert main(["predict", str(run / "model.onnx"), str(data), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(data.read_text().splitlines()) - 1 and all(0 < float(r["rating_pred"]) < 5.5 for r in rows)
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.onnx"), str(data)]) == 0
    assert "rmse" in capsys.readouterr().out
    table = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": [3, 4]}), table)
    table.rename(tmp_path / f"{odd}.parquet")
    assert main(["predict", str(run / "model.onnx"), str(tmp_path / f"{odd}.parquet")]) == 1
    err = capsys.readouterr().err
    assert "odd\\xff.parquet: error[D101]: a Parquet file's path must be UTF-8 text" in err and "Traceback" not in err
