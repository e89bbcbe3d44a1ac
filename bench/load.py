"""Benchmark: loading a MovieLens-25M-shaped ratings CSV with specc, against reference readers (CPU).

The file is generated with specc.data.synth at MovieLens 25M's shape (162,541 users, 59,047 items,
25,000,000 ratings; 0.35 GB) under /tmp, and reused when it is already there with the right
number of rows. specc's `read_table` (the pyarrow path) and `prepare` (reading, the random(0.1) split,
the vocabularies and the index lookup of specs/collab.spec with the path overridden) are timed on the
whole file, next to: pyarrow.csv.read_csv asked for the same three columns and types directly,
numpy.loadtxt, Python's csv module (on the first 2,500,000 rows, extrapolated, unless a full read is
expected to take under 2 minutes), and pandas.read_csv if pandas is installed. Every reader runs in a
fresh child process, so that its peak resident memory (getrusage ru_maxrss) is its own. Usage (from
any directory):

    python bench/load.py                  # the full run, about 6 minutes (plus about a minute to generate
                                          # the file the first time)
    python bench/load.py --quick          # smoke run on a 2.5M-row file of a tenth of the shape (15 s)
    python bench/load.py --json out.json  # also save the numbers
    python bench/load.py --threads 1      # pyarrow's thread pool size (default: every core)
    python bench/load.py --profile        # no reference readers: prepare()'s stages one by one, and
                                          # what the changes suggested in bench/README.md would give
    python bench/load.py --parquet        # the same ratings as CSV against Parquet: prepare's (and the
                                          # read's) time and peak memory, sides alternated (about 5 minutes)

See bench/README.md for the method and the last measured table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/collab.spec"
OUT_DIR = Path("/tmp/specc_bench")  # generated data stays out of the repository
# MovieLens 25M's shape (ml-25m/README: 25,000,095 ratings by 162,541 users of 59,047 movies).
FULL = {"users": 162_541, "items": 59_047, "ratings": 25_000_000}
QUICK = {"users": 16_254, "items": 5_905, "ratings": 2_500_000}
SEED = 0
SUBSET = 2_500_000  # rows the slow readers are timed on
CSV_FULL_LIMIT_S = 120.0  # time Python's csv module on the whole file when it should take less than this
LOADTXT_FULL_LIMIT_S = 120.0


# --------------------------------------------------------------------------- the data file

def data_path(shape: dict) -> Path:
    return OUT_DIR / f"ratings_{shape['users']}u_{shape['items']}i_{shape['ratings']}r_seed{SEED}.csv"


def count_rows(path: Path) -> int:
    """Data rows (lines after the header) of a file that ends in a newline."""
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
    return lines - 1


def ensure_data(shape: dict) -> tuple[Path, float | None]:
    """The ratings file, generated if it is missing or has the wrong number of rows.
    Returns (path, seconds spent generating it, or None when it was reused). The generator runs in
    its own process (`python -m specc.data.synth`), so that this process stays small: a child
    process's ru_maxrss starts from its parent's resident size."""
    path = data_path(shape)
    if path.is_file():
        with open(path) as f:
            header = f.readline().strip()
        if header == "user,item,rating" and count_rows(path) == shape["ratings"]:
            print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB, {shape['ratings']:,} rows)", flush=True)
            return path, None
        print(f"{path} is there but is not the expected file: generating it again", flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"generating {path}: {shape['users']:,} users, {shape['items']:,} items, {shape['ratings']:,} ratings "
          f"(python -m specc.data.synth, seed {SEED}) ...", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "specc.data.synth", str(path), "--users", str(shape["users"]),
                    "--items", str(shape["items"]), "--ratings", str(shape["ratings"]), "--seed", str(SEED)],
                   check=True, cwd=ROOT)
    total = time.perf_counter() - start
    print(f"  generated in {total:.1f} s; {path.stat().st_size / 1e9:.2f} GB", flush=True)
    assert count_rows(path) == shape["ratings"]
    return path, total


# --------------------------------------------------------------------------- the readers (in a child process)

def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def vmhwm_mb() -> float | None:
    """The peak resident size of this process's own address space (Linux /proc), a cross-check."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def spec_for(path: Path):
    from specc.training.run import load_spec

    if path.suffix == ".parquet":  # the spec's csv(...) source replaced by parquet(...) of the same ratings
        spec, _ = load_spec(SPEC, [f'data.source=parquet("{path}")'])
    else:
        spec, _ = load_spec(SPEC, [f'data.source.path="{path}"'])
    return spec


def parquet_path(csv: Path) -> Path:
    return csv.with_suffix(".parquet")


def ensure_parquet(csv: Path, rows: int) -> tuple[Path, float | None]:
    """The ratings CSV as Parquet, converted (in a child process) with the README's one pyarrow line
    if it is missing or has another number of rows: pyarrow's inferred types (int64, int64, int64),
    its default compression (snappy) and row groups."""
    path = parquet_path(csv)
    if path.is_file():
        import pyarrow.parquet as pq  # only the footer: the parent stays small

        if pq.read_metadata(path).num_rows == rows:
            print(f"reusing {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
            return path, None
    print(f"converting {csv} to {path} (pyarrow.csv.read_csv, pyarrow.parquet.write_table) ...", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys, pyarrow.csv as c, pyarrow.parquet as q; "
                    "q.write_table(c.read_csv(sys.argv[1]), sys.argv[2])", str(csv), str(path)], check=True)
    total = time.perf_counter() - start
    print(f"  converted in {total:.1f} s; {path.stat().st_size / 1e9:.2f} GB", flush=True)
    return path, total


def sums(user, item, rating, rows: int) -> list:
    """A cheap fingerprint of the first `rows` rows, to check that every reader read the same thing."""
    return [int(np.asarray(user[:rows], dtype=np.int64).sum()), int(np.asarray(item[:rows], dtype=np.int64).sum()),
            float(np.asarray(rating[:rows], dtype=np.float64).sum())]


def read_specc_table(path: Path, limit: int | None):
    from specc.data.table import read_table

    return _timed_read(read_table, path)


def _timed_read(reader, path: Path):
    """specc's reader of the spec's source (read_table for a CSV, read_parquet for Parquet), timed."""
    spec = spec_for(path)
    wanted = (*spec.data.inputs, spec.data.target)
    base = maxrss_mb()
    start = time.perf_counter()
    table = reader(spec.data.source, wanted)
    seconds = time.perf_counter() - start
    c = table.columns
    return seconds, table.rows, base, (c["user"], c["item"], c["rating"]), {
        "dtypes": [str(c[k].dtype) for k in ("user", "item", "rating")]}


def read_specc_prepare(path: Path, limit: int | None):
    from specc.data.prepare import prepare

    spec = spec_for(path)
    base = maxrss_mb()
    start = time.perf_counter()
    prepared = prepare(spec.data, spec.model.inputs)
    seconds = time.perf_counter() - start
    extra = {"n_train": prepared.n_train, "n_valid": prepared.n_valid,
             "users": prepared.vocabs["user"].size - 1, "items": prepared.vocabs["item"].size - 1,
             "unknown_valid_users": int((prepared.valid["user"] == 0).sum()),
             "unknown_valid_items": int((prepared.valid["item"] == 0).sum())}
    return seconds, prepared.n_train + prepared.n_valid, base, None, extra


def read_specc_parquet(path: Path, limit: int | None):
    from specc.data.parquet import read_parquet

    return _timed_read(read_parquet, path)


def read_pyarrow(path: Path, limit: int | None):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    base = maxrss_mb()
    start = time.perf_counter()
    convert = pacsv.ConvertOptions(include_columns=["user", "item", "rating"],
                                   column_types={"user": pa.int64(), "item": pa.int64(), "rating": pa.float64()})
    table = pacsv.read_csv(path, convert_options=convert)
    cols = tuple(table.column(k).to_numpy() for k in ("user", "item", "rating"))
    seconds = time.perf_counter() - start
    return seconds, table.num_rows, base, cols, {}


def read_loadtxt(path: Path, limit: int | None):
    base = maxrss_mb()
    start = time.perf_counter()
    rows = np.loadtxt(path, delimiter=",", skiprows=1, max_rows=limit,
                      dtype=[("user", np.int64), ("item", np.int64), ("rating", np.float64)])
    cols = tuple(np.ascontiguousarray(rows[k]) for k in ("user", "item", "rating"))
    seconds = time.perf_counter() - start
    return seconds, len(rows), base, cols, {}


def read_csv_module(path: Path, limit: int | None):
    import csv
    import itertools

    base = maxrss_mb()
    start = time.perf_counter()
    users, items, ratings = [], [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        iu, ii, ir = (header.index(k) for k in ("user", "item", "rating"))
        for row in itertools.islice(reader, limit):
            users.append(int(row[iu]))
            items.append(int(row[ii]))
            ratings.append(float(row[ir]))
    cols = (np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), np.array(ratings, dtype=np.float64))
    seconds = time.perf_counter() - start
    return seconds, len(users), base, cols, {}


def read_pandas(path: Path, limit: int | None):
    import pandas as pd

    base = maxrss_mb()
    start = time.perf_counter()
    frame = pd.read_csv(path, usecols=["user", "item", "rating"], nrows=limit,
                        dtype={"user": np.int64, "item": np.int64, "rating": np.float64})
    cols = tuple(frame[k].to_numpy() for k in ("user", "item", "rating"))
    seconds = time.perf_counter() - start
    return seconds, len(frame), base, cols, {}


def read_whatif_prepare(path: Path, limit: int | None):
    """prepare() with the changes suggested in bench/README.md, written here (specc is not changed):
    int64 category columns stay int64, so that Vocab.fit takes its integer path, and the lookup is
    np.searchsorted on the sorted vocabulary. Same vocabularies and indices as specc's prepare (the
    --profile stage run asserts it). For the csv, random-split, integer-id case of collab.spec only."""
    from specc.data.prepare import Vocab, column_stats
    from specc.data.split import split_rows
    from specc.data.table import check_finite, read_table

    spec = spec_for(path)
    data = spec.data
    wanted = (*data.inputs, data.target)
    base = maxrss_mb()
    start = time.perf_counter()
    table = read_table(data.source, wanted)
    check_finite(table, data.target.name, allow_nan=False, target=True)
    train_idx, valid_idx = split_rows(table.rows, data.valid, table.path)
    train, valid, vocabs, raw_valid = {}, {}, {}, {}
    for col in data.inputs:
        values = table.columns[col.name]
        assert values.dtype == np.int64
        tr, va = values[train_idx], values[valid_idx]
        vocab = vocabs[col.name] = Vocab.fit(col.name, tr)
        keys = np.asarray([int(v) for v in vocab.values], dtype=np.int64)  # sorted by fit
        train[col.name] = np.searchsorted(keys, tr) + 1
        pos = np.minimum(np.searchsorted(keys, va), len(keys) - 1)
        valid[col.name] = np.where(keys[pos] == va, pos + 1, 0)
        raw_valid[col.name] = va.tolist()
    target = data.target.name
    values = table.columns[target]
    train[target] = np.ascontiguousarray(values[train_idx], dtype=np.float32)
    valid[target] = np.ascontiguousarray(values[valid_idx], dtype=np.float32)
    raw_valid[target] = values[valid_idx].tolist()
    _ = {c.name: column_stats(train[c.name]) for c in data.inputs if c.kind != "category"}
    seconds = time.perf_counter() - start
    extra = {"n_train": len(train_idx), "n_valid": len(valid_idx), "users": vocabs["user"].size - 1,
             "items": vocabs["item"].size - 1}
    return seconds, len(train_idx) + len(valid_idx), base, None, extra


READERS = {
    "whatif_prepare": read_whatif_prepare,
    "specc_read_table": read_specc_table,
    "specc_prepare": read_specc_prepare,
    "specc_read_parquet": read_specc_parquet,
    "pyarrow": read_pyarrow,
    "loadtxt": read_loadtxt,
    "csv": read_csv_module,
    "pandas": read_pandas,
}


def child(kind: str, path: Path, limit: int | None, check_rows: int, threads: int | None) -> None:
    if threads:
        import pyarrow as pa

        pa.set_cpu_count(threads)
        pa.set_io_thread_count(threads)
    cpu = time.process_time()
    seconds, rows, base, cols, extra = READERS[kind](path, limit)
    cpu = time.process_time() - cpu
    out = {"kind": kind, "seconds": seconds, "cpu_s": cpu, "rows": rows, "maxrss_before_mb": base,
           "maxrss_mb": maxrss_mb(), "vmhwm_mb": vmhwm_mb(), **extra}
    if cols is not None:
        out["sums"] = sums(*cols, rows=min(check_rows, rows))
        out["sums_all"] = sums(*cols, rows=rows)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(kind: str, path: Path, limit: int | None, check_rows: int, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--data", str(path),
           "--check-rows", str(check_rows)]
    if limit:
        cmd += ["--limit", str(limit)]
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["process_s"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- prepare, stage by stage

def profile_prepare(path: Path, threads: int | None) -> None:
    """What prepare() would cost with the changes suggested in bench/README.md (read_whatif_prepare,
    in fresh processes); then prepare()'s steps for a csv source, taken one at a time with specc's
    own functions in the order specc.data.prepare.prepare runs them (as of this bench's writing),
    and the integer columns' work on the int64 path, checked to give the same vocabularies and indices."""
    # First, while this process is still small (a child's ru_maxrss starts from its parent's size):
    print("prepare() with the suggested changes (int64 ids kept, searchsorted lookup), in a fresh process:")
    for _ in range(3):
        r = run_child("whatif_prepare", path, None, SUBSET, threads)
        print(f"  {r['seconds']:.2f} s, peak RSS {r['maxrss_mb']:,.0f} MB; {r['n_train']:,} + {r['n_valid']:,} rows, "
              f"{r['users']:,} users, {r['items']:,} items", flush=True)

    import pyarrow as pa

    from specc.data.prepare import Vocab
    from specc.data.split import split_rows
    from specc.data.table import check_finite, read_table
    from specc.language.spec import CATEGORY

    if threads:
        pa.set_cpu_count(threads)
        pa.set_io_thread_count(threads)
    spec = spec_for(path)
    data = spec.data
    wanted = (*data.inputs, data.target)
    times: list[tuple[str, float]] = []

    def timed(label, fn):
        start = time.perf_counter()
        value = fn()
        times.append((label, time.perf_counter() - start))
        print(f"  {label:<62} {times[-1][1]:7.2f} s   (peak RSS so far {maxrss_mb():,.0f} MB)", flush=True)
        return value

    print(f"\nprepare() of {SPEC} on {path}, stage by stage:")
    table = timed("read_table (pyarrow, strings, cast)", lambda: read_table(data.source, wanted))
    timed("check_finite(rating)", lambda: check_finite(table, "rating", allow_nan=False, target=True))
    train_idx, valid_idx = timed("split_rows: random(0.1, seed=42), sorted indices",
                                 lambda: split_rows(table.rows, data.valid, table.path))
    raw_train, raw_valid = {}, {}
    for col in wanted:
        values = table.columns[col.name]
        if col.kind == CATEGORY:
            values = timed(f"{col.name}: int64 -> object array (np.asarray(dtype=object))",
                           lambda v=values: np.asarray(v, dtype=object))
        raw_train[col.name], raw_valid[col.name] = timed(
            f"{col.name}: take train / valid rows", lambda v=values: (v[train_idx], v[valid_idx]))
    vocabs = {}
    for col in data.inputs:
        vocabs[col.name] = timed(f"{col.name}: Vocab.fit on the object array (np.unique of objects)",
                                 lambda c=col: Vocab.fit(c.name, raw_train[c.name]))
        timed(f"{col.name}: Vocab.lookup, train rows (Python loop + dict)",
              lambda c=col: vocabs[c.name].lookup(raw_train[c.name]))
        timed(f"{col.name}: Vocab.lookup, valid rows",
              lambda c=col: vocabs[c.name].lookup(raw_valid[c.name]))
    timed("rating: float32 copies", lambda: (np.ascontiguousarray(raw_train["rating"], dtype=np.float32),
                                             np.ascontiguousarray(raw_valid["rating"], dtype=np.float32)))
    timed("raw_valid: list() of every validation column", lambda: {c: list(v) for c, v in raw_valid.items()})
    total = sum(t for _, t in times)
    print(f"  {'total':<62} {total:7.2f} s")

    print("\nthe same work on int64 arrays (what the suggested changes would cost):")
    alt: list[tuple[str, float]] = []
    for col in data.inputs:
        ints = table.columns[col.name]
        start = time.perf_counter()
        tr, va = ints[train_idx], ints[valid_idx]
        vocab = Vocab.fit(col.name, tr)  # specc's own integer path (the npz sources take it)
        keys = np.asarray([int(v) for v in vocab.values], dtype=np.int64)
        assert vocab.values == vocabs[col.name].values and vocab.counts == vocabs[col.name].counts
        idx_tr = np.searchsorted(keys, tr) + 1
        pos = np.minimum(np.searchsorted(keys, va), len(keys) - 1)
        idx_va = np.where(keys[pos] == va, pos + 1, 0)
        alt.append((col.name, time.perf_counter() - start))
        assert np.array_equal(idx_tr, vocabs[col.name].lookup(raw_train[col.name]))
        assert np.array_equal(idx_va, vocabs[col.name].lookup(raw_valid[col.name]))
        print(f"  {col.name}: take rows + Vocab.fit(int64) + np.searchsorted lookup: {alt[-1][1]:.2f} s "
              f"(same vocabulary and indices as specc's)", flush=True)
    start = time.perf_counter()
    v = [table.columns[c.name][valid_idx] for c in wanted]
    lists = [a.tolist() for a in v]
    print(f"  raw_valid as .tolist() of the int64 / float64 arrays: {time.perf_counter() - start:.2f} s "
          f"({sum(map(len, lists)):,} values)")
    print(f"peak RSS of this process: {maxrss_mb():,.0f} MB")


# --------------------------------------------------------------------------- CSV against Parquet

def compare_parquet(csv: Path, n: int, reps: int, threads: int | None) -> dict:
    """specc's read and prepare of the same ratings as CSV and as Parquet, each run in a fresh
    process, the sides alternated (CSV first in even rounds, Parquet first in odd ones) so that a
    change in the machine's other load falls on both; medians, peak RSS and the ratios."""
    parquet, convert_s = ensure_parquet(csv, n)
    sides = {"csv": csv, "parquet": parquet}
    kinds = {("read", "csv"): "specc_read_table", ("read", "parquet"): "specc_read_parquet",
             ("prepare", "csv"): "specc_prepare", ("prepare", "parquet"): "specc_prepare"}
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in kinds}
    print(f"\n{reps} rounds; each: read and prepare of both files, each call in a fresh process:", flush=True)
    for k in range(reps):
        order = ("csv", "parquet") if k % 2 == 0 else ("parquet", "csv")
        for stage in ("read", "prepare"):
            for side in order:
                r = run_child(kinds[(stage, side)], sides[side], None, SUBSET, threads)
                runs[(stage, side)].append(r)
                print(f"  round {k + 1}, {stage:<7} {side:<7}: {r['seconds']:6.2f} s, "
                      f"peak RSS {r['maxrss_mb']:7,.0f} MB", flush=True)
    summary = {}
    for (stage, side), rs in runs.items():
        summary[f"{stage}_{side}"] = {
            "seconds": statistics.median(r["seconds"] for r in rs), "all_s": [r["seconds"] for r in rs],
            "cpu_s": statistics.median(r["cpu_s"] for r in rs), "maxrss_mb": max(r["maxrss_mb"] for r in rs),
            "all_mb": [r["maxrss_mb"] for r in rs], "maxrss_before_mb": rs[0]["maxrss_before_mb"],
            "rows": rs[0]["rows"]}
    reads = [runs[("read", s)][0] for s in sides]
    same = reads[0]["sums_all"] == reads[1]["sums_all"]
    prepared_same = all(runs[("prepare", "csv")][0][key] == runs[("prepare", "parquet")][0][key]
                        for key in ("n_train", "n_valid", "users", "items", "unknown_valid_users"))
    print(f"\n{'':<9}{'CSV s':>8}{'Parquet s':>11}{'ratio':>8}{'CSV MB':>9}{'Parquet MB':>12}{'ratio':>8}")
    for stage in ("read", "prepare"):
        c, q = summary[f"{stage}_csv"], summary[f"{stage}_parquet"]
        print(f"{stage:<9}{c['seconds']:>8.2f}{q['seconds']:>11.2f}{q['seconds'] / c['seconds']:>8.2f}"
              f"{c['maxrss_mb']:>9,.0f}{q['maxrss_mb']:>12,.0f}{q['maxrss_mb'] / c['maxrss_mb']:>8.2f}")
    print(f"files: {csv.stat().st_size / 1e9:.2f} GB CSV, {parquet.stat().st_size / 1e9:.2f} GB Parquet"
          + (f" (converted in {convert_s:.1f} s)" if convert_s is not None else ""))
    print("s: median seconds of the call alone; MB: the highest peak RSS of the child processes (interpreter and "
          "imports included); ratio: Parquet / CSV")
    print(f"both read the same numbers: {'yes' if same else 'NO'}; prepare made the same split and vocabularies: "
          f"{'yes' if prepared_same else 'NO'}")
    return {"parquet_file": str(parquet), "parquet_gb": parquet.stat().st_size / 1e9, "converted_s": convert_s,
            "summary": summary, "same_numbers": same, "same_prepared": prepared_same}


# --------------------------------------------------------------------------- the benchmark

def have_pandas() -> bool:
    import importlib.util

    return importlib.util.find_spec("pandas") is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a 2.5M-row file of a tenth of the shape, one run of prepare")
    ap.add_argument("--json", metavar="PATH", help="save the numbers as JSON")
    ap.add_argument("--threads", type=int, default=None,
                    help="pyarrow's CPU and I/O thread pools (default: pyarrow's own, every core)")
    ap.add_argument("--reps", type=int, default=None,
                    help="runs of specc's prepare (default 3; 1 with --quick); specc's read_table and pyarrow,"
                    " which take seconds and vary with the other load on the machine, run 2 * reps + 1 times."
                    " The median is reported. The slow reference readers run once.")
    ap.add_argument("--profile", action="store_true", help="instead of the benchmark, time prepare()'s stages and the suggested changes")
    ap.add_argument("--parquet", action="store_true",
                    help="instead of the benchmark, the same ratings as CSV against Parquet: read and prepare, "
                    "time and peak memory (--reps rounds, default 3)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check-rows", type=int, default=SUBSET, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        os.chdir(ROOT)
        child(args.child, args.data, args.limit, args.check_rows, args.threads)
        return 0
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)
    shape = QUICK if args.quick else FULL
    subset = SUBSET // 10 if args.quick else SUBSET
    reps = args.reps or (1 if args.quick else 3)

    from importlib.metadata import version

    pa_version = version("pyarrow")  # not imported here: this process stays small (see ensure_data)
    print("loading a MovieLens-25M-shaped ratings " + ("CSV and Parquet: specc's read and prepare" if args.parquet
                                                       else "CSV: specc against reference readers"))
    print(f"python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa_version}, "
          f"{os.cpu_count()} CPUs, pyarrow threads: {args.threads or f'its default ({os.cpu_count()})'}")
    path, gen_s = ensure_data(shape)
    size_gb = path.stat().st_size / 1e9
    n = shape["ratings"]
    if args.profile:
        profile_prepare(path, args.threads)
        return 0
    if args.parquet:
        result = compare_parquet(path, n, reps, args.threads)
        if json_path:
            json_path.write_text(json.dumps({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
                "numpy": np.__version__, "pyarrow": pa_version, "cpus": os.cpu_count(), "file": str(path),
                "shape": shape, **result}, indent=2) + "\n")
            print(f"wrote {json_path}")
        return 0 if result["same_numbers"] and result["same_prepared"] else 1

    results: dict[str, dict] = {}

    def run(kind: str, limit: int | None = None, times: int = 1) -> dict:
        runs = [run_child(kind, path, limit, subset, args.threads) for _ in range(times)]
        res = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])  # the median run's record
        res["all_s"] = [r["seconds"] for r in runs]
        res["seconds"] = statistics.median(res["all_s"])
        res["maxrss_mb"] = max(r["maxrss_mb"] for r in runs)
        res["vmhwm_mb"] = max((r["vmhwm_mb"] or 0) for r in runs)
        res["limit"] = limit
        rows = res["rows"]
        full = limit is None or rows >= n
        res["extrapolated"] = not full
        res["full_s"] = res["seconds"] if full else res["seconds"] * n / rows
        res["rows_per_s"] = rows / res["seconds"]
        note = f" on the first {rows:,} rows, {res['full_s']:.1f} s extrapolated to {n:,}" if not full else ""
        print(f"  {kind}: {res['seconds']:.2f} s{note} ({res['rows_per_s'] / 1e6:.2f} M rows/s), "
              f"peak RSS {res['maxrss_mb']:,.0f} MB (VmHWM {res['vmhwm_mb']:,.0f} MB); runs: "
              + ", ".join(f"{t:.2f}" for t in res["all_s"]), flush=True)
        results[kind] = res
        return res

    fast = 2 * reps + 1
    print(f"\ntiming (each run in a fresh process; medians of {fast} runs of read_table and pyarrow, {reps} of "
          "prepare):")
    run("specc_read_table", times=fast)
    run("specc_prepare", times=reps)
    run("pyarrow", times=fast)
    small = run("loadtxt", limit=subset)
    if small["full_s"] <= LOADTXT_FULL_LIMIT_S and not args.quick:
        results["loadtxt_subset"] = results.pop("loadtxt")
        run("loadtxt")
    small = run("csv", limit=subset)
    if small["full_s"] <= CSV_FULL_LIMIT_S and not args.quick:
        results["csv_subset"] = results.pop("csv")
        run("csv")
    pandas = have_pandas()
    if pandas:
        run("pandas", times=fast)
    else:
        print("  pandas: not installed, not timed")

    # Every reader read the same numbers (on the rows they all read).
    ref = results["specc_read_table"]
    same = all(r["sums"] == ref["sums"] for r in results.values() if "sums" in r)
    same_all = all(r["sums_all"] == ref["sums_all"] for r in results.values()
                   if "sums_all" in r and not r["extrapolated"])
    prep = results["specc_prepare"]

    labels = {
        "specc_read_table": "specc read_table (pyarrow, strings then cast)",
        "specc_prepare": "specc prepare (read, split, vocabularies, indices)",
        "pyarrow": "pyarrow.csv.read_csv, typed columns, to numpy",
        "loadtxt": "numpy.loadtxt (structured dtype)",
        "loadtxt_subset": "numpy.loadtxt, first rows only",
        "csv": "Python csv module + int()/float()",
        "csv_subset": "Python csv module, first rows only",
        "pandas": "pandas.read_csv (C engine)",
    }
    print()
    head = (f"{'reader':<52}  {'rows timed':>11}  {'s':>7}  {'CPU s':>7}  {'s for 25M':>9}  {'M rows/s':>8}  "
            f"{'x specc read':>12}  {'peak RSS MB':>11}")
    if args.quick:
        head = head.replace("s for 25M", f"s for {n / 1e6:g}M".rjust(9))
    print(head)
    print("-" * len(head))
    base = results["specc_read_table"]["full_s"]
    for kind, r in results.items():
        s = f"{r['full_s']:.2f}" + ("*" if r["extrapolated"] else "")
        print(f"{labels[kind]:<52}  {r['rows']:>11,}  {r['seconds']:>7.2f}  {r['cpu_s']:>7.2f}  {s:>9}  "
              f"{r['rows_per_s'] / 1e6:>8.2f}  "
              f"{r['full_s'] / base:>12.2f}  {r['maxrss_mb']:>11,.0f}")
    print()
    print(f"file: {path} ({size_gb:.2f} GB, {n:,} rows)"
          + (f"; generated in {gen_s:.1f} s" if gen_s is not None else "; reused"))
    print("s: median seconds of the call alone (not the interpreter's start or the imports), in a fresh process;")
    print("  CPU s: that run's process CPU time (more than s: pyarrow's threads).")
    print("s for 25M: the same, or (*) extrapolated linearly from the rows timed. x specc read: that / specc's")
    print("  read_table. peak RSS: the child process's ru_maxrss (interpreter, imports and data included);")
    print(f"  before the call it was {ref['maxrss_before_mb']:,.0f} MB for specc's read_table and "
          f"{prep['maxrss_before_mb']:,.0f} MB for prepare.")
    print(f"prepare: {prep['n_train']:,} training and {prep['n_valid']:,} validation rows; {prep['users']:,} users "
          f"and {prep['items']:,} items in the vocabularies; {prep['unknown_valid_users']:,} validation rows with an "
          f"unknown user, {prep['unknown_valid_items']:,} with an unknown item.")
    print(f"prepare minus read_table: {prep['seconds'] - ref['seconds']:.2f} s (split, vocabularies, lookups).")
    print(f"every reader read the same numbers: first {min(subset, n):,} rows {'yes' if same else 'NO'}; "
          f"whole file (readers that read it all) {'yes' if same_all else 'NO'}")
    print(f"pandas: {'timed' if pandas else 'not installed, not timed'}")
    if not args.quick:
        print(f"target: prepare of the 25M file in about 20 s or less; {prep['seconds']:.1f} s: "
              f"{'met' if prep['seconds'] <= 20 else 'NOT met'}")

    if json_path:
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa_version,
            "cpus": os.cpu_count(), "pyarrow_threads": args.threads or os.cpu_count(),
            "machine": platform.machine(), "file": str(path), "file_gb": size_gb, "shape": shape,
            "generated_s": gen_s, "same_numbers": same, "same_numbers_whole_file": same_all, "results": results,
        }
        json_path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0 if same and same_all else 1


if __name__ == "__main__":
    sys.exit(main())
