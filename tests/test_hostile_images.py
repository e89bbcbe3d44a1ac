"""Image folders under hostile input: files that are not the formats specc reads (PostScript that
would make Pillow run Ghostscript), a cache file replaced by a FIFO, a link or a lying npz header,
symbolic link loops and links out of a class folder, and names that are not UTF-8 or hold a newline,
through check, show, train, predict and evaluate with real files, a real `gs` stand-in and Pillow."""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from specc.commands.cli import main
from specc.data.images import FORMATS, cache_dir, decode, list_folder, load_images
from specc.training.run import load_spec

SPEC = """\
data {{
    source = images("{folder}", size=(4, 4), mode="gray"{extra})
    inputs = [image: float(1, 4, 4) / 255]
    target = label: category
    valid  = random(0.25, seed=3)
    batch  = 4
}}
model {{
    out = image |> flatten |> linear(classes)
}}
train {{
    loss    = cross_entropy
    metrics = [accuracy]
    fit_one_cycle(epochs=1, lr=1e-2)
    seed    = 1
}}
"""
SKIP_NOTE = " (skip_broken=true in images(...) skips the images that cannot be decoded)"
NOT_OURS = "not a PNG, JPEG, BMP, GIF or WebP image, the formats specc reads"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\n0 0 moveto 4 4 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Each test's own image cache (never the user's ~/.cache)."""
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def write_png(path: Path, seed: int, shape=(6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)).save(path)
    return path


def folder_of(root: Path, classes=("a", "b"), n: int = 4) -> Path:
    """`root/<class>/<k>.png`, random grey pixels seeded by class and k."""
    for c, label in enumerate(classes):
        for k in range(n):
            write_png(root / label / f"{k}.png", 100 * c + k)
    return root


def spec_over(tmp: Path, folder: Path, extra: str = "", name: str = "imgs") -> Path:
    path = tmp / f"{name}.spec"
    path.write_text(SPEC.format(folder=folder, extra=extra), encoding="utf-8")
    return path


def load(spec_path: Path):
    spec, _ = load_spec(spec_path)
    return load_images(spec.data.source, spec.data.valid)


def pillow(path: Path) -> np.ndarray:
    """The oracle: Pillow's own decode of the file (every plugin it has), as training converts it."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((4, 4), Image.Resampling.BILINEAR))[None]


def failed(capsys, *args) -> str:
    """stderr of a command that must fail with exit 1 and one line, without a traceback."""
    assert main([*map(str, args)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.rstrip("\n")


def passed(capsys, *args) -> str:
    assert main([*map(str, args)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model trained on grey 4x4 images of classes a and b."""
    tmp = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECC_CACHE", str(tmp / "cache"))
        spec = spec_over(tmp, folder_of(tmp / "photos"))
        assert main(["train", str(spec), "--out", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run" / "model.onnx"


# ---------------------------------------------------------------- 1. only the formats specc reads


@pytest.fixture
def fake_gs(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that records each call (Pillow's EPS plugin runs gs to render PostScript)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gs_calls"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"gs $*\" >> '{calls}'\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    from PIL import EpsImagePlugin

    # Pillow remembers whether an earlier call found gs: make it look on this PATH, as a fresh process would.
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return calls


def test_postscript_named_png_never_runs_ghostscript(tmp_path, capsys, fake_gs, model):
    root = folder_of(tmp_path / "photos")
    eps = root / "a" / "x.png"
    eps.write_bytes(EPS)
    spec = spec_over(tmp_path, root)
    decoded = f"{eps}: error[D110]: cannot be decoded as an image: {NOT_OURS}"
    assert failed(capsys, "check", spec) == decoded + SKIP_NOTE
    assert failed(capsys, "show", spec, "--stage", "data") == decoded + SKIP_NOTE
    assert failed(capsys, "train", spec, "--out", tmp_path / "run", "--quiet") == decoded + SKIP_NOTE
    assert failed(capsys, "predict", model, eps) == decoded
    assert failed(capsys, "predict", model, root) == decoded
    assert failed(capsys, "evaluate", model, root) == decoded
    assert not fake_gs.exists(), fake_gs.read_text()


def test_the_formats_specc_reads_decode_as_pillow_decodes_them(tmp_path):
    root = tmp_path / "formats"
    pixels = np.random.default_rng(5).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    saves = {"PNG": ("png", {}), "JPEG": ("jpg", {"quality": 90}), "BMP": ("bmp", {}), "GIF": ("gif", {}),
             "WEBP": ("webp", {"lossless": True})}
    assert set(saves) == set(FORMATS)
    for k, (fmt, (suffix, options)) in enumerate(saves.items()):
        for label in ("a", "b"):
            path = root / label / f"{k}.{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels if label == "a" else 255 - pixels).save(path, format=fmt, **options)
    # a multi-picture JPEG (as some cameras write) is opened by Pillow's JPEG plugin as MPO
    Image.fromarray(pixels).save(root / "a" / "mpo.jpg", format="MPO", save_all=True,
                                 append_images=[Image.fromarray(255 - pixels)])
    folder = load(spec_over(tmp_path, root))
    source = load_spec(spec_over(tmp_path, root))[0].data.source
    listed = [f.relative for f in list_folder(source).files]
    assert len(listed) == 11
    for k, relative in enumerate(listed):
        assert np.array_equal(folder.pixels[k], pillow(root / relative)), relative


def test_a_small_file_read_whole_and_a_large_one_read_as_pillow_asks_decode_alike(tmp_path, monkeypatch):
    # a file of at most WHOLE_READ bytes is decoded from memory, a larger one from the file itself:
    # the same pixels, and the same reason for a damaged one, either way
    from specc.data import images

    pixels = np.random.default_rng(6).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    paths = []
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")):
        paths.append(tmp_path / f"x.{suffix}")
        Image.fromarray(pixels).save(paths[-1], format=fmt)
    cut = tmp_path / "cut.png"
    cut.write_bytes(paths[0].read_bytes()[:60])
    got = {}
    for whole in (images.WHOLE_READ, 0):
        monkeypatch.setattr(images, "WHOLE_READ", whole)
        got[whole] = [decode(str(p), "rgb", (6, 5)) for p in paths]
        with pytest.raises(images.BrokenImage) as broken:
            decode(cut, "rgb", (6, 5))
        got[whole].append(str(broken.value))
    for p, a, b in zip(paths, got[images.WHOLE_READ], got[0]):
        want = np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(a, want) and np.array_equal(b, want), p
    assert got[images.WHOLE_READ][-1] == got[0][-1] and "truncated" in got[0][-1].lower()


def test_read_all_stops_at_the_end_of_a_file_shorter_than_asked(tmp_path):
    from specc.data.images import _read_all

    path = tmp_path / "short"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_all(fd, 4) == b"0123" and _read_all(fd, 100) == b"456789" and _read_all(fd, 5) == b""
    finally:
        os.close(fd)


def test_a_hard_link_into_another_class_or_part_is_refused_and_one_within_a_class_is_a_second_image(
        tmp_path, capsys, cache):
    root = folder_of(tmp_path / "linked")
    os.link(root / "a" / "1.png", root / "a" / "again.png")  # one class, two names: the image twice
    folder = load(spec_over(tmp_path, root))
    assert len(folder.pixels) == 9 and list(folder.labels).count("a") == 5
    os.link(root / "a" / "2.png", root / "b" / "x.png")  # the same file in class b: refused
    assert failed(capsys, "check", spec_over(tmp_path, root)) == (
        f"{root}/b/x.png: error[D111]: is the same file as a/2.png (a hard link), in another class folder: an "
        "image can be in one class only")
    split = tmp_path / "split"  # train/ and valid/: the same file in both would leak the answer
    for part in ("train", "valid"):
        folder_of(split / part)
    os.link(split / "train" / "b" / "3.png", split / "valid" / "b" / "3b.png")
    assert failed(capsys, "check", spec_over(tmp_path, split, name="split")).startswith(
        f"{split}/valid/b/3b.png: error[D111]: is the same file as train/b/3.png (a hard link)")


def test_formats_pillow_reads_but_specc_does_not_are_named(tmp_path):
    root = folder_of(tmp_path / "others")
    others = {"TIFF": {}, "PPM": {}, "PCX": {}, "TGA": {}, "ICO": {}, "SGI": {}, "DDS": {}}
    pixels = np.random.default_rng(6).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for fmt, options in others.items():
        path = root / "a" / f"{fmt.lower()}.png"
        Image.fromarray(pixels).save(path, format=fmt, **options)
        with Image.open(path) as img:  # Pillow itself decodes each of them
            assert img.format == fmt and img.convert("L").size == (8, 8)
    (root / "a" / "eps.png").write_bytes(EPS)
    folder = load(spec_over(tmp_path, root, extra=", skip_broken=true"))
    assert sorted(folder.skipped) == sorted((f"a/{fmt.lower()}.png", NOT_OURS) for fmt in [*others, "EPS"])
    assert len(folder.pixels) == 8


# ---------------------------------------------------------------- 8. the cache is not trusted


def test_a_fifo_in_place_of_the_cache_file_is_decoded_again(tmp_path, cache):
    root = folder_of(tmp_path / "photos")
    spec = spec_over(tmp_path, root)
    good = load(spec).pixels
    (path,) = cache.iterdir()
    path.unlink()
    os.mkfifo(path)
    # In another process: reading the FIFO would block forever, so a hang fails by the timeout.
    result = subprocess.run([sys.executable, "-m", "specc", "check", str(spec)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, SPECC_CACHE=str(cache.parent)))
    assert result.returncode == 0, result.stderr
    assert path.is_file() and np.array_equal(np.load(path)["pixels"], good)  # a regular file again


def test_a_link_in_place_of_the_cache_file_is_not_followed(tmp_path, cache):
    root = folder_of(tmp_path / "photos")
    spec = spec_over(tmp_path, root)
    good = load(spec).pixels
    (path,) = cache.iterdir()
    with np.load(path) as z:
        arrays = dict(z)
    arrays["pixels"] = 255 - arrays["pixels"]  # a cache of the same folder, other pixels, outside the folder
    elsewhere = tmp_path / "elsewhere.npz"
    np.savez(elsewhere, **arrays)
    path.unlink()
    path.symlink_to(elsewhere)
    assert np.array_equal(load(spec).pixels, good)
    assert not path.is_symlink() and np.array_equal(np.load(path)["pixels"], good)
    assert np.array_equal(np.load(elsewhere)["pixels"], 255 - good)  # left alone


def _npy(shape, descr: str, body: bytes = b"", fortran: bool = False) -> bytes:
    """An .npy member whose header says `shape` and `descr`, followed by `body` (of any length)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + body


LIES = {
    "pixels of 58 TiB": {"pixels.npy": _npy((10**12, 1, 4, 4), "|u1", bytes(64))},
    "pixels of another size": {"pixels.npy": _npy((6, 1, 4, 5), "|u1", bytes(120))},
    "pixels as floats": {"pixels.npy": _npy((6, 1, 4, 4), "<f8", bytes(6 * 16 * 8))},
    "pixels in fortran order": {"pixels.npy": _npy((6, 1, 4, 4), "|u1", bytes(96), fortran=True)},
    "pixels as objects": {"pixels.npy": _npy((6, 1, 4, 4), "|O", b"\x80\x04N.")},
    "names of 4 GB each": {"files.npy": _npy((6,), "<U1000000000", bytes(100))},
    "a trillion skipped": {"skipped.npy": _npy((10**12,), "<U7", bytes(28))},
    "a member cut short": {"files.npy": _npy((6,), "<U7", bytes(100))},
}


@pytest.mark.parametrize("lie", LIES)
def test_a_cache_header_that_lies_is_decoded_again_without_allocating_it(tmp_path, cache, lie):
    root = folder_of(tmp_path / "photos", n=3)
    spec = spec_over(tmp_path, root)
    good = load(spec).pixels
    (path,) = cache.iterdir()
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members.update(LIES[lie])
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    tracemalloc.start()
    try:
        again = load(spec).pixels
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(again, good)
    assert peak < 20 * 2**20  # decoding 6 small images again, never the size the header claims
    assert np.array_equal(np.load(path)["pixels"], good)  # rewritten


def test_an_encrypted_cache_member_is_decoded_again(tmp_path, cache):
    root = folder_of(tmp_path / "photos", n=3)
    spec = spec_over(tmp_path, root)
    good = load(spec).pixels
    (path,) = cache.iterdir()
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos, central = z.infolist(), z.start_dir
    for info in infos:  # mark each member encrypted, in its local header and in the central directory
        data[info.header_offset + 6] |= 0x1
        assert data[central:central + 4] == b"PK\x01\x02"
        data[central + 8] |= 0x1
        central += 46 + sum(struct.unpack("<HHH", data[central + 28:central + 34]))
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z, pytest.raises(RuntimeError, match="password required"):
        z.read("pixels.npy")
    assert np.array_equal(load(spec).pixels, good)


def test_a_compressed_cache_is_not_ours_and_is_decoded_again(tmp_path, cache):
    root = folder_of(tmp_path / "photos", n=3)
    spec = spec_over(tmp_path, root)
    good = load(spec).pixels
    (path,) = cache.iterdir()
    with np.load(path) as z:
        arrays = dict(z)
    arrays["pixels"] = 255 - arrays["pixels"]
    np.savez_compressed(path, **arrays)  # a member that would have to be inflated to be read
    assert np.array_equal(load(spec).pixels, good)
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}


def test_two_processes_decode_the_same_folder_at_once(tmp_path, cache):
    root = folder_of(tmp_path / "photos", n=20)
    spec = spec_over(tmp_path, root)
    env = dict(os.environ, SPECC_CACHE=str(cache.parent))
    runs = [subprocess.Popen([sys.executable, "-m", "specc", "check", str(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    (path,) = cache.iterdir()  # one cache, whole: each wrote a file of its own and renamed it into place
    source = load_spec(spec)[0].data.source
    expected = np.stack([pillow(root / f.relative) for f in list_folder(source).files])
    assert np.array_equal(np.load(path)["pixels"], expected)
    assert np.array_equal(load(spec).pixels, expected)


# ---------------------------------------------------------------- 9. links, loops and names


def _loop(a: Path) -> Path:
    (a / "loop").symlink_to("loop")
    return a / "loop"


def _two_link_loop(a: Path) -> Path:
    (a / "l1").symlink_to("l2")
    (a / "l2").symlink_to("l1")
    return a / "l1"


def _dangling(a: Path) -> Path:
    (a / "more").symlink_to("not-there")
    return a / "more"


LEAD_NOWHERE = {
    "a link to itself": (_loop, "is a symbolic link loop: its links lead back to themselves, never to a file "
                                "or folder"),
    "two links to each other": (_two_link_loop, "is a symbolic link loop: its links lead back to themselves, never "
                                                "to a file or folder"),
    "a link to nothing": (_dangling, "is a symbolic link to 'not-there', which is not there"),
}


@pytest.mark.parametrize("case", LEAD_NOWHERE)
def test_a_link_that_leads_nowhere_in_a_class_folder_is_named(tmp_path, capsys, model, case):
    root = folder_of(tmp_path / "photos")
    make, message = LEAD_NOWHERE[case]
    link = make(root / "a")
    expected = f"{link}: error[D101]: {message}"
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected
    assert failed(capsys, "predict", model, root) == expected
    assert failed(capsys, "predict", model, root / "a") == expected
    assert failed(capsys, "evaluate", model, root) == expected


def test_a_link_loop_in_place_of_a_class_folder_is_named(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos")
    link = _loop(root)
    expected = f"{link}: error[D101]: is a symbolic link loop: its links lead back to themselves, never to a file " \
               "or folder"
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected
    assert failed(capsys, "evaluate", model, root) == expected
    assert failed(capsys, "predict", model, root) == expected


def _up(a: Path, outside: Path) -> tuple[Path, Path]:
    (a / "up").symlink_to("..")
    return a / "up", a.parent


def _to_other_class(a: Path, outside: Path) -> tuple[Path, Path]:
    (a / "more").symlink_to("../b")
    return a / "more", a.parent / "b"


def _out(a: Path, outside: Path) -> tuple[Path, Path]:
    (a / "extra").symlink_to(outside)
    return a / "extra", outside


def _file_of_other_class(a: Path, outside: Path) -> tuple[Path, Path]:
    (a / "x.png").symlink_to("../b/0.png")
    return a / "x.png", a.parent / "b" / "0.png"


LEAVING = {"a link to the parent folder": _up, "a link to another class": _to_other_class,
           "a link to a folder elsewhere": _out, "a link to another class's image": _file_of_other_class}


@pytest.mark.parametrize("case", LEAVING)
def test_a_link_out_of_a_class_folder_is_refused(tmp_path, capsys, model, case):
    root = folder_of(tmp_path / "photos")
    link, target = LEAVING[case](root / "a", folder_of(tmp_path / "outside", ("c",)) / "c")
    expected = (f"{link}: error[D111]: is a symbolic link out of {root / 'a'} (to {target}): links are followed only "
                "within the folder, so that no image is read twice, under another class or from elsewhere; link the "
                "class folder itself, or copy the images in")
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected
    assert failed(capsys, "evaluate", model, root) == expected
    assert failed(capsys, "predict", model, root / "a") == expected


def test_links_within_a_class_folder_are_followed_and_read_once(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos")
    write_png(root / "a" / "sub" / "9.png", 9)
    (root / "a" / "again").symlink_to("sub")  # the same folder twice: read once
    (root / "a" / "self").symlink_to(".")
    (root / "a" / "alias.png").symlink_to("0.png")  # a file: read under both names
    source = load_spec(spec_over(tmp_path, root))[0].data.source
    listed = sorted(f.relative for f in list_folder(source).files)
    assert listed == [*[f"a/{k}.png" for k in range(4)], "a/again/9.png", "a/alias.png",
                      *[f"b/{k}.png" for k in range(4)]]
    rows = list(csv.DictReader(io.StringIO(passed(capsys, "predict", model, root))))
    assert [r["file"] for r in rows] == [r for r in listed if r.startswith(("a/", "b/"))]


def test_class_folders_that_are_one_folder_are_refused(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos")
    (root / "kitty").symlink_to("a")
    expected = (f"{root / 'kitty'}: error[D111]: class folders 'a' and 'kitty' are the same folder (through a "
                "symbolic link): an image can be in one class only")
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected
    assert failed(capsys, "evaluate", model, root) == expected
    (root / "kitty").unlink()
    (root / "inner").symlink_to("a/sub")
    write_png(root / "a" / "sub" / "9.png", 9)
    assert failed(capsys, "check", spec_over(tmp_path, root)) == (
        f"{root / 'inner'}: error[D111]: class folder 'inner' is inside class folder 'a' (through a symbolic link): "
        "an image can be in one class only")
    (root / "inner").unlink()
    (root / "all").symlink_to(".")
    assert failed(capsys, "check", spec_over(tmp_path, root)) == (
        f"{root / 'all'}: error[D111]: class folder 'all' holds the image folder {root} (through a symbolic link): an "
        "image can be in one class only")


def test_a_valid_class_folder_that_is_the_train_one_is_refused(tmp_path, capsys):
    root = tmp_path / "split"
    folder_of(root / "train")
    folder_of(root / "valid", ("a",))
    (root / "valid" / "b").symlink_to("../train/b")
    assert failed(capsys, "check", _no_split(tmp_path, root)) == (
        f"{root / 'valid' / 'b'}: error[D111]: class folders 'train/b' and 'valid/b' are the same folder (through a "
        "symbolic link): an image can be in one class only")


def _no_split(tmp: Path, root: Path) -> Path:
    path = tmp / "split.spec"
    path.write_text(SPEC.format(folder=root, extra="").replace("    valid  = random(0.25, seed=3)\n", ""))
    return path


def test_a_class_folder_linked_from_elsewhere_is_read(tmp_path, capsys):
    root = folder_of(tmp_path / "photos")
    (root / "c").symlink_to(folder_of(tmp_path / "disk", ("cats",)) / "cats")  # data kept on another disk
    assert "target label: 3 classes (a, b, c)" in passed(capsys, "check", spec_over(tmp_path, root))


IMAGE_NOWHERE = {
    "a link loop": (lambda p: p.symlink_to(p.name), "is a symbolic link loop"),
    "a link to nothing": (lambda p: p.symlink_to("gone.png"), "is a symbolic link to 'gone.png', which is not there"),
    "a FIFO": (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a regular file"),
}


@pytest.mark.parametrize("case", IMAGE_NOWHERE)
def test_an_image_name_that_is_no_file_cannot_be_decoded(tmp_path, capsys, model, case):
    root = folder_of(tmp_path / "photos")
    make, reason = IMAGE_NOWHERE[case]
    bad = root / "a" / "x.png"
    make(bad)
    expected = f"{bad}: error[D110]: cannot be decoded as an image: {reason}"
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected + SKIP_NOTE
    assert failed(capsys, "predict", model, root) == expected
    assert failed(capsys, "evaluate", model, root) == expected
    assert load(spec_over(tmp_path, root, extra=", skip_broken=true")).skipped == (("a/x.png", reason),)


def test_a_fifo_without_an_image_name_is_left_alone(tmp_path, capsys):
    root = folder_of(tmp_path / "photos")
    os.mkfifo(root / "a" / "pipe")
    os.mkfifo(root / "pipe")
    assert "2 classes (a, b)" in passed(capsys, "check", spec_over(tmp_path, root))


def _bytes_path(folder: Path, name: bytes) -> Path:
    """A path whose last part is `name`, bytes that need not be UTF-8 (held as surrogates, as os does)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_names_that_are_not_utf8_train_export_predict_and_evaluate(tmp_path, capsys):
    root = folder_of(tmp_path / "photos", ("b",), n=6)
    odd = _bytes_path(root, b"caf\xe9")
    for k in range(6):
        write_png(_bytes_path(odd, b"%d\xff.png" % k), 50 + k)
    spec = spec_over(tmp_path, root)
    assert "target label: 2 classes (b, caf\\xe9)" in passed(capsys, "check", spec)
    passed(capsys, "show", spec, "--stage", "data", "--png", tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    run = tmp_path / "run"
    passed(capsys, "train", spec, "--out", run, "--quiet")

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [f"b/{k}.png" for k in range(6)] + [f"caf\\xe9/{k}\\xff.png" for k in range(6)]
    paths = [root / "b" / f"{k}.png" for k in range(6)] + [_bytes_path(odd, b"%d\xff.png" % k) for k in range(6)]
    labels, probabilities = session.run(None, {"image": np.stack([decode(p, "gray", (4, 4)) for p in paths])})
    assert set(labels.tolist()) <= {"b", "caf\\xe9"}
    passed(capsys, "predict", run / "model.onnx", root, "--out", tmp_path / "p.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_bytes().decode("utf-8"))))
    assert [r["file"] for r in rows] == names
    assert [r["label"] for r in rows] == labels.tolist()
    np.testing.assert_allclose([[float(r["probability_b"]), float(r["probability_caf\\xe9"])] for r in rows],
                               probabilities, rtol=1e-5)
    assert list(csv.DictReader(io.StringIO(passed(capsys, "predict", run / "model.onnx", root)))) == rows
    out = passed(capsys, "evaluate", run / "model.onnx", root)
    accuracy = float(next(line for line in out.splitlines() if "accuracy" in line).split()[1])
    assert accuracy == np.mean(labels == np.array(["b"] * 6 + ["caf\\xe9"] * 6))


def test_a_name_that_is_not_utf8_is_shown_escaped_in_errors(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos")
    bad = _bytes_path(root / "a", b"\xff.png")
    bad.write_bytes(b"not an image")
    expected = f"{root / 'a'}/\\xff.png: error[D110]: cannot be decoded as an image: {NOT_OURS}"
    assert failed(capsys, "check", spec_over(tmp_path, root)) == expected + SKIP_NOTE
    assert failed(capsys, "predict", model, root) == expected


def test_names_with_a_newline_are_escaped_when_printed(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos", ("a", "x\ny"))
    spec = spec_over(tmp_path, root)
    out = passed(capsys, "check", spec)
    assert "target label: 2 classes (a, x\\ny)" in out and "\ny)" not in out
    assert "first label: a x\\ny a x\\ny" in passed(capsys, "show", spec, "--stage", "data")
    bad = root / "a" / "bad\n.png"
    bad.write_text("not an image")
    expected = f"{root / 'a'}/bad\\n.png: error[D110]: cannot be decoded as an image: {NOT_OURS}"
    assert failed(capsys, "check", spec) == expected + SKIP_NOTE
    assert failed(capsys, "predict", model, root) == expected
    bad.unlink()
    assert failed(capsys, "evaluate", model, root) == (
        f"{root / 'x'}\\ny: error[D109]: class folder 'x\\ny' (4 images) is not a class of the model: its classes "
        "are a, b")


def test_two_class_names_that_read_as_one_are_refused(tmp_path, capsys):
    root = folder_of(tmp_path / "photos", ("a", "caf\\xe9"))
    odd = _bytes_path(root, b"caf\xe9")
    write_png(odd / "0.png", 7)
    assert failed(capsys, "check", spec_over(tmp_path, root)) == (
        f"{root}: error[D111]: class folders 'caf\\xe9' and 'caf\\xe9' are the same class ('caf\\xe9'): rename one "
        "(a byte that is not UTF-8 is read as \\xNN)")


def test_the_cache_holds_names_that_are_not_utf8(tmp_path, cache):
    root = folder_of(tmp_path / "photos", ("b",), n=3)
    odd = _bytes_path(root, b"caf\xe9")
    for k in range(3):
        write_png(_bytes_path(odd, b"%d\xff.png" % k), 50 + k)
    spec = spec_over(tmp_path, root)
    first = load(spec)
    assert sorted(set(first.labels.tolist())) == ["b", "caf\\xe9"]
    (path,) = cache.iterdir()
    with np.load(path) as z:
        arrays = dict(z)
    arrays["pixels"] = 255 - arrays["pixels"]
    np.savez(path, **arrays)
    assert np.array_equal(load(spec).pixels, 255 - first.pixels)  # read from the cache
    assert cache_dir() == cache


def test_a_folder_whose_own_name_is_not_utf8_is_predicted_and_evaluated(tmp_path, capsys, model):
    root = folder_of(_bytes_path(tmp_path, b"ph\xf6tos"))
    out = passed(capsys, "evaluate", model, root)
    assert out.startswith(f"{tmp_path}/ph\\xf6tos (all images: 8)\n")
    rows = list(csv.DictReader(io.StringIO(passed(capsys, "predict", model, root / "a" / "0.png"))))
    assert [r["file"] for r in rows] == [f"{tmp_path}/ph\\xf6tos/a/0.png"]


NPZ_SPEC = """\
data {{
    source = npz("{data}")
    inputs = [x: float(3), c: category]
    target = y: category
    valid  = random(0.25, seed=3)
    batch  = 4
}}
model {{
    out = concat(x, embedding(c, 2)) |> linear(classes)
}}
train {{
    loss = cross_entropy
    fit_one_cycle(epochs=1, lr=1e-2)
}}
"""


def test_strings_of_an_npz_that_are_not_utf8_are_named_not_exported(tmp_path, capsys):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    c = np.array([f"u{k % 3}" for k in range(20)])
    y = np.array(["a", "b"] * 10)
    np.savez(tmp_path / "good.npz", x=x, c=c, y=y)
    np.savez(tmp_path / "bad_y.npz", x=x, c=c, y=np.array(["a", "caf\udce9"] * 10))  # as os.fsdecode gives a name
    np.savez(tmp_path / "bad_c.npz", x=x, c=np.array(["u0", "caf\udce9"] * 10), y=y)
    spec = tmp_path / "n.spec"
    spec.write_text(NPZ_SPEC.format(data="bad_y.npz"))
    assert failed(capsys, "check", spec) == (
        f"{tmp_path / 'bad_y.npz'}: error[D121]: array 'y' holds a string that is not UTF-8 text at index 1 "
        "('caf\\xe9')")
    spec.write_text(NPZ_SPEC.format(data="good.npz"))
    passed(capsys, "train", spec, "--out", tmp_path / "run", "--quiet")
    for command in ("predict", "evaluate"):
        assert failed(capsys, command, tmp_path / "run" / "model.onnx", tmp_path / "bad_c.npz") == (
            f"{tmp_path / 'bad_c.npz'}: error[D121]: array 'c', index 1: holds a string that is not UTF-8 text "
            "('caf\\xe9')")


def test_a_tree_of_folders_deeper_than_pythons_recursion_is_listed(tmp_path, capsys, model):
    root = folder_of(tmp_path / "photos")
    depth = sys.getrecursionlimit() + 100
    deep = root / "a"
    for _ in range(depth):  # one at a time: Path.mkdir(parents=True) itself recurses
        deep /= "d"
        deep.mkdir()
    write_png(deep / "9.png", 9)
    try:
        source = load_spec(spec_over(tmp_path, root))[0].data.source
        assert f"a/{'d/' * depth}9.png" in [f.relative for f in list_folder(source).files]
        assert len(list(csv.DictReader(io.StringIO(passed(capsys, "predict", model, root))))) == 9
    finally:  # bottom up, one folder at a time: pytest's clean-up (shutil.rmtree) recurses and would fail
        (deep / "9.png").unlink()
        while deep != root / "a":
            deep.rmdir()
            deep = deep.parent
