"""Memory: the budget (SPECC_MEMORY, the cgroup's limit, MemAvailable), the estimate E307 weighs a
spec's training by (hand-computed), refusals before anything is allocated (a wide convolution, a
large embedding, an image folder at a huge size), readers that stop at their limit (a Parquet
footer that lies, a gzip bomb, one enormous line, an .npz header that lies), and torch's own
failure to allocate, reported in one line at the spec line (a real allocator under RLIMIT_AS)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import MNIST_SAMPLE, ROOT, collab_spec, mnist_spec

from specc.commands.cli import main
from specc.language import codes
from specc.language.diagnostics import DataError, SpecError, UsageError
from specc.model.memory import DATA_SHARE, MEMORY_ENV, allocation_failed, budget, cgroup_room, parse_size, shown_bytes
from specc.model.plan import RUNTIME, VALID_ROWS, memory_estimate

GIB = 1 << 30


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


# ---------------------------------------------------------------- the budget


@pytest.mark.parametrize("text,expected", [("8G", 8 << 30), ("512m", 512 << 20), ("1.5GiB", 3 << 29),
                                           ("2e9", 2 * 10**9), ("100", 100), (" 4 GB ", 4 << 30), ("1T", 1 << 40)])
def test_a_memory_size_reads_as_people_write_it(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1", "0", "0.5", "inf", "nan", "1e400", "1e30", "9E", "lots", "", "8X", "8 G B", "-8G"])
def test_a_memory_size_that_is_not_one_is_a_usage_error(text):
    with pytest.raises(UsageError, match=f"{MEMORY_ENV}="):
        parse_size(text)


def test_a_memory_size_at_its_edges():
    # from one byte up to just below 2^63 bytes (8 EiB, what an int64 holds): 8192P is 2^63 exactly
    assert parse_size("1") == 1 and parse_size("8191P") == 8191 << 50
    with pytest.raises(UsageError) as below:
        parse_size("0.999")
    with pytest.raises(UsageError) as above:
        parse_size("8192P")
    assert str(below.value) == str(above.value).replace("'8192P'", "'0.999'") == (
        f"{MEMORY_ENV}='0.999': expected a positive size of memory below 8 EiB, such as 8G")
    with pytest.raises(UsageError) as unread:
        parse_size("8X")
    assert str(unread.value) == (f"{MEMORY_ENV}='8X': expected a size of memory such as 8G or 512M (bytes, or K, M, "
                                 "G, T in powers of 1024)")


@pytest.mark.parametrize("text", ["-1", "0", "inf", "lots"])
def test_a_bad_specc_memory_is_exit_2_for_check_and_train(tiny, tmp_path, monkeypatch, capsys, text):
    monkeypatch.setenv(MEMORY_ENV, text)
    assert main(["check", "--no-data", str(tiny)]) == 2
    assert main(["train", str(tiny), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"specc: error: {MEMORY_ENV}='{text}': expected a" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _fake_root(tmp_path: Path, cgroup: str, files: dict[str, str], available_kb: int = 8 << 20,
               resident_pages: int = 250) -> Path:
    """A folder laid out as / is (proc/, sys/fs/cgroup/), holding the given files."""
    root = tmp_path / "root"
    for name, text in {"proc/self/cgroup": cgroup, "proc/self/statm": f"1000 {resident_pages} 10 1 0 100 0\n",
                       "proc/meminfo": f"MemTotal: 16000000 kB\nMemAvailable: {available_kb} kB\n", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_limit_of_a_parent_group_less_its_usage_plus_its_file_cache(tmp_path):
    root = _fake_root(tmp_path, "0::/a/b\n", {
        "sys/fs/cgroup/a/b/memory.max": "max\n",  # no limit of its own: its parent's counts
        "sys/fs/cgroup/a/memory.max": f"{4 * GIB}\n", "sys/fs/cgroup/a/memory.current": f"{GIB}\n",
        "sys/fs/cgroup/a/memory.stat": f"anon 5\ninactive_file {256 << 20}\nactive_file 7\n"})
    room = 4 * GIB - GIB + (256 << 20)
    assert cgroup_room(root) == room
    found = budget({}, root)  # below MemAvailable's 8 GiB: the cgroup's room, and what the process holds
    assert found.bytes == room + 250 * os.sysconf("SC_PAGE_SIZE")
    assert "cgroup" in found.source


def test_cgroup_v1_limit_at_the_root_of_the_hierarchy_as_containers_show_it(tmp_path):
    root = _fake_root(tmp_path, "5:cpu:/\n4:memory:/docker/x\n", {
        "sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "sys/fs/cgroup/memory/memory.limit_in_bytes": f"{2 * GIB}\n",
        "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{512 << 20}\n",
        "sys/fs/cgroup/memory/memory.stat": "cache 9\ntotal_inactive_file 0\n"})
    assert cgroup_room(root) == 2 * GIB - (512 << 20)


def test_without_a_cgroup_limit_memavailable_counts_and_without_proc_the_physical_memory(tmp_path):
    root = _fake_root(tmp_path, "0::/\n", {"sys/fs/cgroup/memory.max": "max\n"}, available_kb=3 << 20,
                      resident_pages=0)
    assert cgroup_room(root) is None
    found = budget({}, root)
    assert (found.bytes, found.source) == (3 * GIB, "MemAvailable, and what specc holds")
    bare = budget({}, tmp_path / "nothing")
    assert bare.bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert budget({MEMORY_ENV: "3G"}, root).bytes == 3 * GIB  # the override, and nothing added


# ---------------------------------------------------------------- the estimate, by hand


def test_the_estimate_of_a_small_net_by_hand(tmp_path):
    # x: float(784) / 255 -> linear(16) -> relu -> linear(10), Adam, batch 64, on the MNIST sample
    # (5,000 training and 1,000 validation rows).
    spec, prepared = _prepared(mnist_spec(tmp_path, body="linear(16) |> relu"))
    _, need = memory_estimate(spec, prepared)
    params = 784 * 16 + 16 + 16 * 10 + 10
    assert need.params == params == 12_730
    assert need.state == params * 4 * (2 + 2)  # weights, gradients, Adam's two moments
    assert need.saving == params * 4 * 3
    # a step keeps x twice (as drawn, as scaled), each 16-wide value once and the output once; the
    # backward pass adds twice the widest learned value (16); 4 bytes a number, 64 rows
    step = 4 * 64 * (2 * 784 + 16 + 16 + 10 + 2 * 16)
    # validation, 1,000 rows at once: three values of the widest (x, 784), and the predictions
    valid = 4 * 1000 * 3 * 784 + 16 * 1000 * 10
    assert (step, valid) == (420_352, 9_568_000)
    assert need.values == max(step, valid) and (need.rows, need.largest) == (1000, "x")
    # float32 x and int64 class indices of both splits, and the validation rows as read (uint8)
    assert need.data == 5000 * 784 * 4 + 5000 * 8 + 1000 * 784 * 4 + 1000 * 8 + 1000 * 784 + 1000
    assert need.runtime == (0 if "torch" in sys.modules else RUNTIME)
    assert need.total == need.state + max(need.saving, need.values) + need.data + need.runtime


def test_the_validation_chunk_is_the_one_training_takes():
    from specc.training.metrics import VALID_BATCH

    assert VALID_ROWS == VALID_BATCH


def test_the_example_specs_fit_a_4_gb_machine(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "4G")  # a small CI machine: the readers take a quarter of it
    for path in sorted((ROOT / "specs").glob("*.spec")):
        spec, prepared = _prepared(path)
        _, need = memory_estimate(spec, prepared)
        assert need.total < 1.5 * GIB, f"{path.name}: {shown_bytes(need.total)}"


def test_the_estimate_decides_at_its_own_total(tmp_path, monkeypatch, capsys):
    path = mnist_spec(tmp_path, body="linear(16) |> relu")
    spec, prepared = _prepared(path)
    _, need = memory_estimate(spec, prepared)
    monkeypatch.setenv(MEMORY_ENV, str(need.total))
    assert main(["check", str(path)]) == 0
    monkeypatch.setenv(MEMORY_ENV, str(need.total - 1))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    # the data (18.7 MiB) is its largest part, above the values (9.12 MiB): reported at the source
    assert f"mnist.spec:2:18: error[E307]: the model has 12,730 parameters, and its data takes " \
           f"{shown_bytes(need.data)} in memory: " in err
    assert f"training needs {shown_bytes(need.total)}, more than the {shown_bytes(need.total - 1)} of memory " \
           f"available ({MEMORY_ENV}={need.total - 1})" in err


# ---------------------------------------------------------------- refused before anything is allocated


def test_a_conv2d_of_65536_channels_is_refused_at_its_line(tmp_path, monkeypatch, capsys):
    # 786k parameters; a step at batch 64 keeps 64 x 65536 x 28 x 28 float32 numbers of it: 12 GiB
    monkeypatch.setenv(MEMORY_ENV, "24G")
    path = mnist_spec(tmp_path, body="reshape((1, 28, 28)) |> conv2d(65536, 1) |> global_avg_pool")
    assert main(["check", "--no-data", str(path)]) == 0  # before the data: the weights only, which fit
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    params = 65536 * 2 + 65536 * 10 + 10  # the convolution's weights and biases, the last layer's
    assert f"mnist.spec:{_line_of_h(path)}:" in err and f"error[E307]: the model has {params:,} parameters, and " \
        "validation, 1,000 rows at a time, holds " in err
    assert f"'conv2d' (65536 x 28 x 28 numbers a row) {shown_bytes(4 * 1000 * 65536 * 784)} of them" in err
    assert "more than the 24.0 GiB of memory available (SPECC_MEMORY=24G)" in err
    assert "make 'conv2d' smaller" in err


def test_a_billion_parameter_embedding_is_refused_with_the_bytes(tiny, monkeypatch, capsys):
    from specc.data.prepare import prepare
    from specc.training.run import load_spec

    monkeypatch.setenv(MEMORY_ENV, "24G")
    # the tiny set has up to 60 users and 80 items: (61 + 81) x 7,042,254 numbers, 1e9 parameters
    sets = ["--set", "model.u=embedding(user, 7042254)", "--set", "model.i=embedding(item, 7042254)"]
    assert main(["check", str(tiny), *sets]) == 1
    err = capsys.readouterr().err
    spec, _ = load_spec(tiny)
    vocabs = prepare(spec.data, spec.model.inputs).vocabs
    rows = vocabs["user"].size + vocabs["item"].size  # the u and i tables, and the biases ub and ib
    params = rows * 7042254 + rows
    assert params > 10**9
    assert f"error[E307]: the model has {params:,} parameters" in err
    assert f"weights, gradients and the optimizer's state {shown_bytes(params * 16)}" in err


def test_an_image_folder_at_8192_pixels_is_refused_before_an_image_is_decoded(tmp_path, monkeypatch, capsys):
    from PIL import Image

    for k in range(40):
        folder = tmp_path / "imgs" / "ab"[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (k, 0, 0)).save(folder / f"{k}.png")
    path = tmp_path / "big.spec"
    path.write_text('data {\n    source = images("imgs", size=(8192, 8192))\n'
                    "    inputs = [image: float(3, 8192, 8192) / 255]\n    target = label: category\n}\n"
                    "model {\n    out = image |> global_avg_pool |> linear(classes)\n}\n"
                    "train {\n    loss = cross_entropy\n    fit(epochs=1, lr=1e-3)\n}\n")
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(MEMORY_ENV, "24G")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    need = 40 * 3 * 8192 * 8192 * 6  # uint8 decoded, split, float32
    assert f"big.spec:2:21: error[E307]: the 40 images of imgs/ at 8192x8192 (rgb) take {shown_bytes(need)} once " \
           "decoded, more than the 24.0 GiB of memory available" in err
    assert "choose a smaller size=(height, width)" in err
    assert not (tmp_path / "cache").exists()  # nothing was decoded


def test_an_image_folder_is_weighed_at_its_size_exactly(tmp_path, monkeypatch):
    from PIL import Image

    from specc.data.prepare import prepare
    from specc.training.run import load_spec

    for k in range(10):
        folder = tmp_path / "imgs" / "ab"[k % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), k).save(folder / f"{k}.png")
    path = tmp_path / "small.spec"
    path.write_text('data {\n    source = images("imgs", size=(16, 16), mode="gray")\n'
                    "    inputs = [image: float(1, 16, 16) / 255]\n    target = label: category\n}\n"
                    "model {\n    out = image |> flatten |> linear(classes)\n}\n"
                    "train {\n    loss = cross_entropy\n    fit(epochs=1, lr=1e-3)\n}\n")
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))
    spec, _ = load_spec(path)
    need = 10 * 16 * 16 * 6
    monkeypatch.setenv(MEMORY_ENV, str(need - 1))
    with pytest.raises(SpecError, match="E307"):
        prepare(spec.data, spec.model.inputs)
    monkeypatch.setenv(MEMORY_ENV, str(need))
    assert prepare(spec.data, spec.model.inputs).n_train == 8


# ---------------------------------------------------------------- data files bounded before use


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_parquet_footer_that_claims_2_to_the_40_rows_asks_for_nothing(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "lie.parquet"
    pq.write_table(pa.table({"user": pa.array(range(1000), pa.int64()), "item": pa.array(range(1000), pa.int64()),
                             "rating": pa.array([1.0] * 1000)}), file)
    data = file.read_bytes()
    size = struct.unpack("<I", data[-8:-4])[0]
    body, footer = data[:-8 - size], data[-8 - size:-8]
    # FileMetaData's num_rows (field 3, i64: the byte 0x16, then zigzag 1000 as a varint) comes first
    at = footer.index(b"\x16" + _varint(2 * 1000))
    footer = footer[:at] + b"\x16" + _varint(2 * 2**40) + footer[at + 3:]
    file.write_bytes(body + footer + struct.pack("<I", len(footer)) + b"PAR1")
    assert pq.read_metadata(file).num_rows == 2**40 and pq.read_metadata(file).row_group(0).num_rows == 1000
    path = collab_spec(tmp_path, data="lie.parquet")
    path.write_text(path.read_text().replace('csv("lie.parquet")', 'parquet("lie.parquet")'))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"lie.parquet: error[D113]: its footer counts {2**40:,} rows: the 3 columns the spec reads would take " \
           f"{shown_bytes(2**40 * 24)} (where the {shown_bytes(file.stat().st_size)} of Parquet hold fewer rows, a " \
           "footer is damaged), more than the " in err
    assert "Traceback" not in err


def test_parquet_values_that_decode_to_more_than_the_footer_says_stop_at_the_limit(tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # one 1,000-character text, 20,000 times: a dictionary page and run lengths in the file, 20 MB decoded
    rows = 20_000
    pq.write_table(pa.table({"user": ["x" * 1000] * rows, "item": list(range(rows)), "rating": [1.0] * rows}),
                   tmp_path / "r.parquet")
    assert (tmp_path / "r.parquet").stat().st_size < 200_000
    path = collab_spec(tmp_path, data="r.parquet")
    path.write_text(path.read_text().replace('csv("r.parquet")', 'parquet("r.parquet")'))
    monkeypatch.setenv(MEMORY_ENV, "64M")  # 16 MiB for a data file
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "r.parquet: error[D113]: reading stopped at row " in err
    assert "more than the 16.0 MiB specc reads a data file into: a quarter of the 64.0 MiB of memory available " \
           f"({MEMORY_ENV}=64M)" in err


def _bomb(path: Path, first: bytes, row: bytes, rows: int) -> None:
    """A gzip file of a header, `first` and `row` repeated: rows of text streamed through gzip, never
    held whole (200 MB of rows weigh about 200 KB compressed)."""
    chunk = row * 100_000
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(b"user,item,rating\n" + first)
        for _ in range(rows // 100_000):
            f.write(chunk)


def test_a_gzip_bomb_stops_at_the_limit_in_bounded_memory(tmp_path):
    _bomb(tmp_path / "r.csv.gz", b"", b"1,2,3.5\n", 25_000_000)  # 200 MB of rows
    assert (tmp_path / "r.csv.gz").stat().st_size < 1_000_000
    path = collab_spec(tmp_path, data="r.csv.gz")
    # the child's own peak (VmHWM, in kB): its ru_maxrss would start from pytest's resident size, which
    # a long test session takes past the limit below (bench/README.md says more)
    code = ("import sys; from specc.commands.cli import main; rc = main(['check', sys.argv[1]]); "
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')); "
            "print(rc, int(hwm.split()[1]) * 1024)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                            env=_env(**{MEMORY_ENV: "64M"}))
    rc, peak = result.stdout.split()
    assert rc == "1", result.stderr
    assert "r.csv.gz: error[D113]: reading stopped at row " in result.stderr
    assert "(decompressed from gzip), more than the 16.0 MiB specc reads a data file into" in result.stderr
    stopped = int(result.stderr.split("reading stopped at row ")[1].split(":")[0].replace(",", ""))
    assert 0 < stopped < 25_000_000 // 4
    # the whole would be a table of 200 MB of text and 600 MB of numbers; a block at a time is not
    assert int(peak) < 600 << 20, shown_bytes(int(peak))


def test_the_line_by_line_reader_stops_at_the_limit_too(tmp_path, monkeypatch, capsys):
    # '3_5' is a number to Python (35.0) but not to pyarrow: the line-by-line reader takes the file
    _bomb(tmp_path / "r.csv.gz", b"1,2,3_5\n", b"1,2,3.5\n", 25_000_000)
    monkeypatch.setenv(MEMORY_ENV, "64M")
    assert main(["check", str(collab_spec(tmp_path, data="r.csv.gz"))]) == 1
    err = capsys.readouterr().err
    assert "r.csv.gz:" in err and "error[D113]: reading stopped at row " in err
    assert "as Python text (reading line by line, to find where pyarrow could not read it)" in err


def test_one_enormous_line_is_an_error_at_its_line(tmp_path, capsys):
    with gzip.open(tmp_path / "r.csv.gz", "wb") as f:  # 40 MB of one line, 40 KB on disk
        f.write(b"user,item,rating\n1,2,3\n4," + b"9" * (40 << 20) + b",5\n6,7,8\n")
    assert main(["check", str(collab_spec(tmp_path, data="r.csv.gz"))]) == 1
    err = capsys.readouterr().err
    assert "r.csv.gz:3: error[D113]: the line is longer than 16.0 MiB, the longest specc reads" in err
    with gzip.open(tmp_path / "h.csv.gz", "wb") as f:  # a header of one name, 40 MB long, without an end
        f.write(b"u" * (40 << 20))
    assert main(["check", str(collab_spec(tmp_path, data="h.csv.gz", name="h"))]) == 1
    assert "h.csv.gz:1: error[D113]: the line is longer than 16.0 MiB" in capsys.readouterr().err


@pytest.mark.parametrize("header", [True, False])
def test_a_bad_value_far_down_a_file_is_found_at_its_line_holding_nothing(tmp_path, monkeypatch, capsys, header):
    # pyarrow reads the 300,001 rows (7.2 MB of numbers); their line is then counted, not held (as
    # Python text they would take 58 MB, over the 16 MiB limit)
    with gzip.open(tmp_path / "r.csv.gz", "wb") as f:
        f.write((b"user,item,rating\n" if header else b"") + b"1,2,3\n\n" + b"1,2,3\n" * 299_999 + b"1,2,inf\n")
    path = collab_spec(tmp_path, data="r.csv.gz")
    if not header:
        path.write_text(path.read_text().replace('csv("r.csv.gz")', 'csv("r.csv.gz", columns=[user, item, rating])'))
    monkeypatch.setenv(MEMORY_ENV, "64M")
    assert main(["check", str(path)]) == 1
    line = 300_002 + header  # a blank line among them
    assert f"r.csv.gz:{line}: error[D105]: column 'rating': expected a finite number, found inf" \
        in capsys.readouterr().err


def test_an_npz_header_that_claims_more_than_the_file_holds(tmp_path, capsys):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (2**40, 784)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + bytes(784 * 4))
        with np.load(MNIST_SAMPLE) as d:
            z.writestr("y.npy", _npy(d["y_train"][:4]))
    path = mnist_spec(tmp_path)
    path.write_text(path.read_text().replace(str(MNIST_SAMPLE), "lie.npz"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"lie.npz: error[D102]: array 'x' is damaged: its header says shape ({2**40}, 784) of uint8 " \
           f"({shown_bytes(2**40 * 784)}), but it holds 3.06 KiB" in err


def _npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_npz_arrays_past_the_limit_are_refused_before_they_are_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MEMORY_ENV, "8M")  # 2 MiB for a data file; the sample's arrays the spec reads hold 4.7 MB
    assert main(["check", str(mnist_spec(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert f"mnist_sample.npz: error[D113]: its arrays the spec reads hold {shown_bytes(6000 * 785)}, more than " \
           f"the 2.00 MiB specc reads a data file into: a quarter of the 8.00 MiB" in err
    assert DATA_SHARE == 4


# ---------------------------------------------------------------- torch's own failure, in one line

CHILD = """
import os, resource, sys
import torch, specc.training.loop, specc.export  # imported before the limit: it bounds what training allocates
from specc.commands.cli import main
size = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (size + (3 << 30), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def _train_limited(*argv: str) -> subprocess.CompletedProcess:
    """`specc train` in a process whose address space is its size after the imports plus 3 GiB (so
    torch's allocator really fails), told it has 1 TiB (so that check lets the spec through)."""
    return subprocess.run([sys.executable, "-c", CHILD, "train", *argv, "--quiet"], capture_output=True, text=True,
                          timeout=300, env=_env(**{MEMORY_ENV: "1T"}))


def test_torch_failing_to_allocate_in_the_forward_pass_is_one_line_at_the_spec_line(tmp_path):
    path = mnist_spec(tmp_path, body="reshape((1, 28, 28)) |> conv2d(65536, 1) |> global_avg_pool")
    run = tmp_path / "run"
    result = _train_limited(str(path), "--out", str(run))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"{path}:{_line_of_h(path)}:"), lines[0]
    assert "error[E307]: out of memory computing 'conv2d' at batch 64 (DefaultCPUAllocator: can't allocate " \
           f"memory: you tried to allocate {64 * 65536 * 784 * 4:,} bytes (12.2 GiB)" in lines[0]
    assert lines[0].endswith("lower data.batch, or make 'conv2d' smaller")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("OutOfMemory: ")
    assert (run / "model.safetensors").is_file()  # the initial weights, written before the first step


def test_out_of_memory_in_validation_keeps_the_checkpoint_and_names_the_largest_value(tmp_path):
    from specc.training.listeners import AfterEpoch
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    def arrays(n_valid: int) -> None:  # validation: the training rows over again, as many as asked
        with np.load(MNIST_SAMPLE) as d:
            x, y = d["x_train"][:64], d["y_train"][:64]
        np.savez_compressed(tmp_path / "digits.npz", x_train=x, y_train=y, x_valid=np.resize(x, (n_valid, 784)),
                            y_valid=np.resize(y, n_valid))

    arrays(16)
    path = mnist_spec(tmp_path, body="reshape((1, 28, 28)) |> conv2d(256, 1) |> global_avg_pool", batch=32,
                      fit="fit_one_cycle(epochs=2, lr=1e-3)")
    path.write_text(path.read_text().replace(str(MNIST_SAMPLE), "digits.npz"))
    run = tmp_path / "run"

    def stop(record):  # as Ctrl-C after the first epoch: its checkpoint is written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(load_spec(path)[0], run, RunOptions("cpu", quiet=True), listeners=[AfterEpoch(stop)])
    checkpoint = (run / "checkpoint.safetensors").read_bytes()
    arrays(8192)  # validation now takes 8,192 rows at once: 6.6 GB of the convolution's output
    result = _train_limited(str(path), "--resume", str(run))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"{path}:{_line_of_h(path)}:"), lines[0]
    assert "error[E307]: out of memory while training (DefaultCPUAllocator: can't allocate" in lines[0]
    assert ", and validation, 8,192 rows at a time, holds " in lines[0]
    assert f"'conv2d' (256 x 28 x 28 numbers a row) {shown_bytes(4 * 8192 * 256 * 784)} of them" in lines[0]
    assert f"make 'conv2d' smaller; {run}/ keeps its last checkpoint" in lines[0]
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert (run / "checkpoint.safetensors").read_bytes() == checkpoint


def test_allocation_failures_are_told_from_other_errors():
    import torch

    with pytest.raises(MemoryError) as numpy_failed:
        np.empty(1 << 62, np.uint8)
    with pytest.raises(RuntimeError) as torch_failed:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert allocation_failed(numpy_failed.value) and allocation_failed(torch_failed.value)
    wrapped = RuntimeError("x.spec:3:5: computing 'c': something")
    wrapped.__cause__ = torch_failed.value
    assert allocation_failed(wrapped)
    assert not allocation_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x3 and 4x5)"))


def test_check_with_the_memory_estimate_still_does_not_import_torch(tiny):
    code = ("import sys; from specc.commands.cli import main; rc = main(['check', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    result = subprocess.run([sys.executable, "-c", code, str(tiny)], capture_output=True, text=True, check=True,
                            env=_env(**{MEMORY_ENV: "2G"}))
    assert result.stdout.strip().endswith("NO-TORCH 0")


def _line_of_h(path: Path) -> int:
    """The line of `h = ...` in a spec that helpers.mnist_spec wrote."""
    return next(k for k, line in enumerate(path.read_text().splitlines(), start=1) if line.startswith("    h "))


def _prepared(path):
    from specc.data.prepare import prepare
    from specc.training.run import load_spec

    spec, _ = load_spec(path)
    return spec, prepare(spec.data, spec.model.inputs)


def test_a_data_error_is_a_data_error():  # DataError's code is what the docs' table names
    err = DataError("f.csv", "x", code=codes.TOO_MUCH_DATA)
    assert str(err) == "f.csv: error[D113]: x"
