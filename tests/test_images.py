"""Image folders: images(...) decodes real PNG files written with Pillow into one folder per class,
as Pillow itself decodes and resizes them; the classes, the split of train/ and valid/ folders, the
cache, every error's exact message, and a spec trained end to end from a folder."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT
from specc.commands.cli import main
from specc.data.images import cache_dir, list_folder, load_images
from specc.data.prepare import prepare
from specc.language.diagnostics import DataError, SpecError
from specc.training.run import load_spec

SPEC = """\
data {{
    source = images("{folder}", size={size}, mode="{mode}"{extra})
    inputs = [image: float({shape}) / 255]
    target = label: category{valid}
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


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Each test's own image cache (never the user's ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPECC_CACHE", str(folder))
    return folder / "images"


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def pattern(seed: int, shape=(9, 7), channels=0) -> np.ndarray:
    """Random uint8 pixels: (h, w) grey, or (h, w, channels)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape + ((channels,) if channels else ()), dtype=np.uint8)


def folder_of(root: Path, counts: dict[str, int], shape=(9, 7), channels=0) -> Path:
    """`root/<class>/<k>.png` for each class's count of images (seeded by class and k)."""
    for c, (label, n) in enumerate(sorted(counts.items())):
        for k in range(n):
            write_png(root / label / f"{k}.png", pattern(100 * c + k, shape, channels))
    return root


def spec_over(tmp: Path, folder: Path, size=(8, 6), mode="gray", extra="", valid="", name="imgs") -> Path:
    shape = ", ".join(str(d) for d in ((1 if mode == "gray" else 3), *size))
    path = tmp / f"{name}.spec"
    path.write_text(SPEC.format(folder=folder, size=f"({size[0]}, {size[1]})", mode=mode, extra=extra,
                                shape=shape, valid=f"\n    valid  = {valid}" if valid else ""))
    return path


def source_of(spec_path: Path):
    spec, _ = load_spec(spec_path)
    return spec.data.source, spec.data.valid


def pillow(path: Path, mode: str, size) -> np.ndarray:
    """The oracle: Pillow's own decode, conversion and bilinear resize, as (channels, height, width)."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def check_err(spec_path: Path, capsys) -> str:
    """What `specc check SPEC` (with the data) prints on stderr; it must fail without a traceback."""
    assert main(["check", str(spec_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- pixels and classes


@pytest.mark.parametrize("mode,pil_mode", [("gray", "L"), ("rgb", "RGB")])
def test_pixels_are_pillows_own_decode_and_resize(tmp_path, mode, pil_mode):
    root = tmp_path / "photos"
    files = [write_png(root / "a" / "grey.png", pattern(1, (9, 7))),  # smaller, other proportions
             write_png(root / "a" / "colour.png", pattern(2, (20, 30), 3)),  # larger, RGB
             write_png(root / "b" / "alpha.png", pattern(3, (8, 6), 4)),  # RGBA, already the size
             write_png(root / "b" / "wide.png", pattern(4, (3, 40)))]
    source, split = source_of(spec_over(tmp_path, root, size=(8, 6), mode=mode))
    folder = load_images(source, split)
    listed = [f.relative for f in list_folder(source).files]
    assert folder.pixels.dtype == np.uint8
    assert folder.pixels.shape == (4, 1 if mode == "gray" else 3, 8, 6)  # (N, C, H, W): height 8, width 6
    for k, relative in enumerate(listed):
        assert np.array_equal(folder.pixels[k], pillow(root / relative, pil_mode, (8, 6))), relative
    assert folder.labels.tolist() == [r.split("/")[0] for r in listed]


def test_channels_come_first_in_rgb_order(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    red[0, :, 2] = 10  # the top row has some blue
    root = tmp_path / "p"
    write_png(root / "r" / "1.png", red)
    write_png(root / "s" / "1.png", red)
    source, split = source_of(spec_over(tmp_path, root, size=(4, 4), mode="rgb"))
    image = load_images(source, split).pixels[0]
    assert (image[0] == 255).all() and (image[1] == 0).all()
    assert (image[2, 0] == 10).all() and (image[2, 1:] == 0).all()


def test_classes_are_the_folder_names_sorted_taken_in_turn(tmp_path):
    root = folder_of(tmp_path / "pets", {"cat": 3, "dog": 1, "eel": 2})
    write_png(root / "cat" / "kittens" / "z.PNG", pattern(9))  # below a class folder, upper-case suffix
    Image.fromarray(pattern(10, (5, 5), 3)).save(root / "dog" / "b.JPeG", format="JPEG")
    write_png(root / ".ipynb_checkpoints" / "x.png", pattern(11))  # hidden: not a class
    write_png(root / "cat" / ".hidden.png", pattern(12))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "loose.png").write_bytes((root / "cat" / "0.png").read_bytes())  # beside the class folders
    listing = list_folder(source_of(spec_over(tmp_path, root))[0])
    assert [f.relative for f in listing.files] == [
        "cat/0.png", "dog/0.png", "eel/0.png",
        "cat/1.png", "dog/b.JPeG", "eel/1.png",
        "cat/2.png",
        "cat/kittens/z.PNG"]
    spec, _ = load_spec(spec_over(tmp_path, root, valid="rows(0, 3)"))  # the first image of each class
    prepared = prepare(spec.data, spec.model.inputs)
    assert prepared.vocabs["label"].values == ("cat", "dog", "eel")
    assert prepared.valid["label"].tolist() == [0, 1, 2]
    assert prepared.train["label"].tolist() == [0, 1, 2, 0, 0]


def test_class_folders_named_by_number_are_in_numeric_order(tmp_path):
    root = folder_of(tmp_path / "n", {"10": 2, "2": 2, "9": 2})
    spec, _ = load_spec(spec_over(tmp_path, root, valid="rows(0, 3)"))
    prepared = prepare(spec.data, spec.model.inputs)
    assert prepared.vocabs["label"].values == ("2", "9", "10")  # as a category column's whole numbers
    assert prepared.vocabs["label"].integer


def test_train_and_valid_folders_are_the_split(tmp_path, capsys):
    root = tmp_path / "split"
    folder_of(root / "train", {"a": 3, "b": 2})
    folder_of(root / "valid", {"a": 1, "b": 2})
    write_png(root / "test" / "a" / "0.png", pattern(0))  # other folders beside them are not read
    spec, _ = load_spec(spec_over(tmp_path, root))
    prepared = prepare(spec.data, spec.model.inputs)
    assert (prepared.n_train, prepared.n_valid) == (5, 3)
    assert prepared.train["label"].tolist() == [0, 1, 0, 1, 0]
    assert prepared.valid["label"].tolist() == [0, 1, 1]
    oracle = pillow(root / "valid" / "b" / "1.png", "L", (8, 6)).astype(np.float32)
    assert np.array_equal(prepared.valid["image"][2], oracle)  # float32 pixels 0-255: the model scales them
    # folder_of draws train/'s a/0, b/0 and b/1 again for valid/
    assert "3 validation images are the same picture as a training image" in capsys.readouterr().err

    path = spec_over(tmp_path, root, valid="random(0.2, seed=1)")
    err = check_err(path, capsys)
    assert err == (f"{path}:5:14: error[E206]: split/ has its own train/ and valid/ folders\n"
                   "  5 |     valid  = random(0.2, seed=1)\n"
                   "    |              ^~~~~~~~~~~~~~~~~~~\n"
                   "  = note: remove `valid = ...`: the images in valid/ are the validation set\n")


def test_npz_arrays_of_images_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "imgs.npz"
    np.savez(data, x=rng.random((40, 1, 6, 5), dtype=np.float32), y=np.arange(40) % 3)
    path = tmp_path / "npz.spec"
    path.write_text(SPEC.replace('images("{folder}", size={size}, mode="{mode}"{extra})', 'npz("imgs.npz")')
                    .replace("image", "x").replace("label", "y").format(shape="1, 6, 5", valid=""))
    spec, _ = load_spec(path)
    prepared = prepare(spec.data, spec.model.inputs)
    assert prepared.train["x"].shape == (32, 1, 6, 5) and prepared.train["x"].dtype == np.float32
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0


# ---------------------------------------------------------------- the cache


def test_the_second_load_reads_the_cache_and_a_changed_image_is_decoded_again(tmp_path, cache):
    root = folder_of(tmp_path / "c", {"a": 2, "b": 2})
    source, split = source_of(spec_over(tmp_path, root))
    first = load_images(source, split)
    (name,) = os.listdir(cache)
    assert name.startswith("c-") and name.endswith(".npz")
    # Put other pixels into the cache file: a load that reads them did not decode the images.
    with np.load(cache / name) as z:
        arrays = dict(z)
    arrays["pixels"] = 255 - arrays["pixels"]
    np.savez(cache / name, **arrays)
    assert np.array_equal(load_images(source, split).pixels, 255 - first.pixels)

    changed = write_png(root / "b" / "1.png", pattern(99))
    os.utime(changed, ns=(10**18, 10**18))  # a new modification time, whatever the clock's resolution
    again = load_images(source, split)
    (renamed,) = os.listdir(cache)  # the folder's old cache file is gone
    assert renamed != name
    k = [f.relative for f in list_folder(source).files].index("b/1.png")
    assert np.array_equal(again.pixels[k], pillow(changed, "L", (8, 6)))
    assert np.array_equal(np.delete(again.pixels, k, 0), np.delete(first.pixels, k, 0))

    other = load_images(source_of(spec_over(tmp_path, root, size=(4, 4), name="small"))[0], None)
    assert other.pixels.shape == (4, 1, 4, 4) and len(os.listdir(cache)) == 2  # one file per size and mode


def test_a_damaged_cache_is_decoded_again_and_never_unpickled(tmp_path, cache):
    root = folder_of(tmp_path / "d", {"a": 1, "b": 1})
    source, split = source_of(spec_over(tmp_path, root))
    good = load_images(source, split).pixels
    (path,) = cache.iterdir()
    marker = tmp_path / "unpickled"
    payloads = [path.read_bytes()[:100],  # cut short
                b"not a zip file at all",
                pickle.dumps(_Touch(marker)),  # a pickle that would create `marker` if it were loaded
                _npz_bytes(tmp_path, pixels=np.array([_Touch(marker)], dtype=object)),
                _npz_bytes(tmp_path, pixels=good, files=np.array(["a/0.png", "b/0.png"]),  # arrays of other shapes
                           skipped=np.array([["a/0.png"]]), reasons=np.array([["?"]])),
                _npz_bytes(tmp_path, pixels=good[:, :, :4], files=np.array(["a/0.png", "b/0.png"]),
                           skipped=np.array([], dtype=str), reasons=np.array([], dtype=str))]
    for payload in payloads:
        path.write_bytes(payload)
        assert np.array_equal(load_images(source, split).pixels, good)
        assert np.array_equal(np.load(path)["pixels"], good)  # rewritten
    assert not marker.exists()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _npz_bytes(tmp: Path, **arrays) -> bytes:
    path = tmp / "objects.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SPECC_CACHE", str(blocker))
    root = folder_of(tmp_path / "w", {"a": 1, "b": 1})
    source, split = source_of(spec_over(tmp_path, root))
    assert load_images(source, split).pixels.shape == (2, 1, 8, 6)
    err = capsys.readouterr().err
    assert err.startswith(f"specc: warning: cannot write the image cache {blocker}/images/w-")
    assert err.endswith(": not a directory; set SPECC_CACHE to a folder that can be written\n")


def test_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECC_CACHE", "/somewhere")
    assert cache_dir() == Path("/somewhere/images")
    monkeypatch.delenv("SPECC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / ".cache" / "specc" / "images"
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/xdg/specc/images")


# ---------------------------------------------------------------- errors


def _broken_folder(tmp: Path) -> tuple[Path, Path, Path]:
    """A folder whose class b holds a truncated PNG and a text file named .png."""
    root = folder_of(tmp / "digits", {"a": 3, "b": 3})
    whole = (root / "b" / "1.png").read_bytes()
    truncated = root / "b" / "1.png"
    truncated.write_bytes(whole[:len(whole) // 2])
    text = root / "b" / "2.png"
    text.write_text("this is not an image\n")
    return root, truncated, text


def test_an_image_that_cannot_be_decoded_names_the_file(tmp_path, capsys):
    root, truncated, text = _broken_folder(tmp_path)
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{truncated}: error[D110]: cannot be decoded as an image: image file is truncated (skip_broken=true in "
        "images(...) skips the images that cannot be decoded)\n")
    truncated.write_bytes((root / "b" / "0.png").read_bytes())
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{text}: error[D110]: cannot be decoded as an image: not a PNG, JPEG, BMP, GIF or WebP image, the formats "
        "specc reads (skip_broken=true in images(...) skips the images that cannot be decoded)\n")


def test_skip_broken_leaves_them_out_with_a_warning(tmp_path, capsys, cache):
    root, truncated, text = _broken_folder(tmp_path)
    path = spec_over(tmp_path, root, extra=", skip_broken=true", valid="rows(2, 4)")
    warning = (f"specc: warning: skipped 2 images that cannot be decoded (skip_broken=true); the first: "
               f"{truncated}: image file is truncated\n")
    for _ in range(2):  # decoded, then from the cache: the same warning
        spec, _ = load_spec(path)
        prepared = prepare(spec.data, spec.model.inputs)
        assert capsys.readouterr().err == warning
        # the images in turn: a/0, b/0, a/1, (b/1 and b/2 left out), a/2
        assert prepared.train["label"].tolist() == [0, 1] and prepared.valid["label"].tolist() == [0, 0]
        assert np.array_equal(prepared.train["image"][1], pillow(root / "b" / "0.png", "L", (8, 6)))
    assert len(os.listdir(cache)) == 1
    # The cache knows the broken files: without skip_broken they are errors again.
    assert check_err(spec_over(tmp_path, root, valid="rows(2, 4)", name="strict"), capsys).startswith(
        f"{truncated}: error[D110]: cannot be decoded as an image: image file is truncated (")

    (root / "b" / "0.png").write_text("no longer an image either")
    assert check_err(path, capsys).endswith(
        f"{root / 'b'}: error[D111]: class folder 'b' holds no image that can be decoded (3 skipped; the first: "
        "b/0.png: not a PNG, JPEG, BMP, GIF or WebP image, the formats specc reads)\n")


def test_folder_layout_errors(tmp_path, capsys):
    root = folder_of(tmp_path / "f", {"a": 2, "b": 1, "c": 1})
    for k in (0,):
        (root / "b" / f"{k}.png").unlink()
    (root / "b" / "readme.txt").write_text("no images here")
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{root / 'b'}: error[D111]: class folder 'b' holds no images (files ending .png, .jpg, .jpeg, .bmp, .gif "
        "or .webp)\n")
    (root / "c" / "0.png").unlink()
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{root}: error[D111]: class folders 'b', 'c' hold no images (files ending .png, .jpg, .jpeg, .bmp, .gif "
        "or .webp)\n")

    flat = tmp_path / "flat"
    for k in range(3):
        write_png(flat / f"{k}.png", pattern(k))
    assert check_err(spec_over(tmp_path, flat), capsys) == (
        f"{flat}: error[D111]: holds 3 images but no class folders: images(...) reads one subfolder of images "
        "per class, named after the class (e.g. flat/cat/1.png)\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_err(spec_over(tmp_path, empty), capsys) == (
        f"{empty}: error[D111]: holds no class folders: images(...) reads one subfolder of images per class, "
        "named after the class (e.g. empty/cat/1.png)\n")


def test_split_folder_errors(tmp_path, capsys):
    root = tmp_path / "s"
    folder_of(root / "train", {"a": 1, "b": 1})
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{root}: error[D111]: has a train/ folder of class folders but no valid/ folder of them: give both, or "
        "point the source at s/train/ (the spec's valid split then divides its images)\n")
    folder_of(root / "valid", {"a": 1, "zebra": 1})
    assert check_err(spec_over(tmp_path, root), capsys) == (
        f"{root / 'valid' / 'zebra'}: error[D109]: class 'zebra' of valid/ has no folder in train/: the model can "
        "only learn the classes it trains on\n")
    numbers = folder_of(tmp_path / "numbers", {"07": 1, "7": 1, "8": 1})
    assert check_err(spec_over(tmp_path, numbers), capsys) == (
        f"{numbers}: error[D111]: class folders '07' and '7' are the same class (7): rename one\n")


def test_a_folder_that_is_not_there_is_an_error_at_its_path(tmp_path, capsys):
    path = spec_over(tmp_path, tmp_path / "nowhere")
    assert check_err(path, capsys) == (
        f'{path}:2:21: error[E208]: data folder not found: {tmp_path / "nowhere"}\n'
        f'  2 |     source = images("{tmp_path / "nowhere"}", size=(8, 6), mode="gray")\n'
        f'    |                     ^{"~" * (len(str(tmp_path / "nowhere")) + 1)}\n'
        "  = note: a path in a spec is relative to the spec's folder; one given with --set, to the working folder\n")
    a_file = tmp_path / "a.png"
    write_png(a_file, pattern(0))
    assert "error[E208]: data folder is not a folder: " in check_err(spec_over(tmp_path, a_file), capsys)


# ---------------------------------------------------------------- end to end


def test_a_spec_trains_from_an_image_folder(tmp_path, capsys):
    root = folder_of(tmp_path / "shapes", {"x": 12, "y": 12, "z": 12}, shape=(10, 10), channels=3)
    path = spec_over(tmp_path, root, size=(8, 8), mode="rgb")
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "complete"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # a header and one epoch

    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    # the exported model takes the raw pixels as Pillow decodes them, uint8 (N, C, H, W), and scales them itself
    pixels = np.stack([pillow(root / c / "0.png", "RGB", (8, 8)) for c in ("x", "y", "z")])
    assert pixels.dtype == np.uint8 and session.get_inputs()[0].type == "tensor(uint8)"
    label, probabilities = session.run(["label", "probabilities"], {"image": pixels})
    reading = json.loads(session.get_modelmeta().custom_metadata_map["specc.reading"])
    assert reading == {"format": "images", "size": [8, 8], "mode": "rgb"}
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert set(label.tolist()) <= {"x", "y", "z"}

    assert main(["show", str(path), "--stage", "data", "--png", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "first label: x y z x y z" in out
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_training_from_images_writes_only_the_run_and_the_cache(tmp_path):
    root = folder_of(tmp_path / "data", {"a": 6, "b": 6})
    path = spec_over(tmp_path, root)
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"), TMPDIR=str(tmp), SPECC_CACHE=str(cache))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "audit_run.py"), "train", str(path), "--out",
                             "run", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["code"] == 0
    allowed = (str(tmp_path / "run") + os.sep, str(cache) + os.sep, str(tmp_path / "mpl"), str(tmp))
    writes = got["write"] + got["rename"]
    assert writes and all(p.startswith(allowed) for p in writes), writes
    assert any(p.startswith(str(cache / "images") + os.sep) for p in got["rename"])
    assert got["unpickle"] == []


DECODE_IN_A_PROCESS = """
import json, sys, dataclasses
import numpy as np
from pathlib import Path
from specc.data import images
from specc.language.diagnostics import DataError
from specc.training.run import load_spec  # imports no torch: the process may fork
workers, spec_path, out, skip = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "skip"
images.decode_workers = lambda: workers
source = load_spec(Path(spec_path))[0].data.source
source = dataclasses.replace(source, skip_broken=skip)
assert images.forking_is_safe(), "the test process should be one that may fork"
def shared():  # Linux: the anonymous shared mappings of this process (an mmap(-1) shows as /dev/zero)
    with open("/proc/self/maps") as maps:
        return sum(" rw-s " in line and "/dev/zero" in line for line in maps)
before = shared()
try:
    pixels, skipped = images._decode_all(images.list_folder(source), source)
    assert shared() == before, "the decoding's shared mapping is still mapped"
    np.savez(out, pixels=pixels, skipped=np.array([s[0] for s in skipped], dtype=str))
except DataError as err:
    Path(out).write_text(str(err))
"""


def _decoded_in_a_process(spec_path: Path, out: Path, workers: int, skip: bool = False):
    """_decode_all run in a fresh process (without torch, so that it may fork) with `workers` processes."""
    done = subprocess.run([sys.executable, "-c", DECODE_IN_A_PROCESS, str(workers), str(spec_path), str(out),
                           "skip" if skip else "stop"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if out.suffix == ".npz":
        with np.load(out) as z:
            return z["pixels"], list(z["skipped"])
    return out.read_text()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_images_decoded_by_several_processes_are_pillows_in_the_listings_order(tmp_path, workers):
    """A folder of more images than a share's part, decoded by 1, 2 or 3 processes (forked, into one shared
    mapping): every row Pillow's own decode of its file, in the listing's order; the first broken image in that
    order is the one reported, whichever process found it; with skip_broken every broken one is left out."""
    from specc.data import images

    root = folder_of(tmp_path / "many", {"a": 400, "b": 380})
    spec_path = spec_over(tmp_path, root)
    listing = list_folder(source_of(spec_path)[0])
    assert len(listing.files) > 2 * images.DECODE_PART
    pixels, skipped = _decoded_in_a_process(spec_path, tmp_path / "all.npz", workers)
    want = np.stack([pillow(listing.root / f.relative, "L", (8, 6)) for f in listing.files])
    assert np.array_equal(pixels, want) and skipped == []
    order = [f.relative for f in listing.files]
    late, early = order[700], order[300]  # in the third part (the first process's, or the third's) and the second
    for name in (late, early):
        (listing.root / name).write_bytes(b"not a png")
    message = _decoded_in_a_process(spec_path, tmp_path / "err.txt", workers)
    assert early in message and late not in message and "error[D110]" in message
    kept, skipped = _decoded_in_a_process(spec_path, tmp_path / "kept.npz", workers, skip=True)
    assert skipped == [early, late] and len(kept) == len(order) - 2
    assert np.array_equal(kept[:300], want[:300]) and np.array_equal(kept[-79:], want[-79:])


def test_a_process_with_torch_or_threads_decodes_without_forking(monkeypatch):
    """Forking copies held locks of other threads (torch's pools among them): decoding then stays in this
    process."""
    from specc.data import images

    import threading

    import torch  # noqa: F401 (imported: its pools are what forking would copy)

    assert not images.forking_is_safe()
    code = ("import threading, time, sys; from specc.data import images; ok = images.forking_is_safe(); "
            "t = threading.Thread(target=time.sleep, args=(1,)); t.start(); print(ok, images.forking_is_safe())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr  # alone it may; with a second thread not
    assert threading.active_count() >= 1


def test_the_same_picture_in_two_classes_or_in_both_splits_is_a_warning(tmp_path, capsys):
    """Content, not files: a copy saved with other PNG settings (other bytes, the same pixels) is found, once
    decoded and from the cache; distinct pictures are not, and training goes on."""
    root = tmp_path / "dup"
    folder_of(root / "train", {"a": 3, "b": 2})
    for label, k in (("a", 0), ("a", 1), ("b", 0)):  # pictures of their own (folder_of's would be train/'s)
        write_png(root / "valid" / label / f"{k}.png", pattern(500 + k + 10 * (label == "b")))
    Image.fromarray(pattern(1)).save(root / "valid" / "a" / "7.png", compress_level=0)  # train/a/1's pixels
    Image.fromarray(pattern(0)).save(root / "train" / "b" / "9.png", compress_level=9)  # train/a/0's, class b
    assert (root / "valid" / "a" / "7.png").read_bytes() != (root / "train" / "a" / "1.png").read_bytes()
    path = spec_over(tmp_path, root)
    leak = (f"specc: warning: 1 validation image is the same picture as a training image (the same pixels at "
            f"8x6), which the validation metrics count as unseen; the first: {root}/valid/a/7.png ('a') and "
            f"{root}/train/a/1.png ('a')\n")
    mixed = (f"specc: warning: 1 image is the same picture as an image of another class (the same pixels at 8x6); "
             f"the first: {root}/train/b/9.png ('b') and {root}/train/a/0.png ('a')\n")
    for _ in range(2):  # decoded, then from the cache
        spec, _ = load_spec(path)
        prepared = prepare(spec.data, spec.model.inputs)
        assert capsys.readouterr().err == leak + mixed
    assert (prepared.n_train, prepared.n_valid) == (6, 4)
    (root / "train" / "b" / "9.png").unlink()
    (root / "valid" / "a" / "7.png").unlink()
    spec, _ = load_spec(path)
    prepare(spec.data, spec.model.inputs)
    assert capsys.readouterr().err == ""


def test_the_same_picture_on_both_sides_of_the_spec_s_split_is_a_warning(tmp_path, capsys):
    root = folder_of(tmp_path / "one", {"a": 4, "b": 4})
    write_png(root / "b" / "4.png", pattern(101))  # b/1's pixels again: the split puts the two apart
    path = spec_over(tmp_path, root, valid="rows(0, 2)")  # the first two images in turn, a/0 and b/0, validate
    spec, _ = load_spec(path)
    prepare(spec.data, spec.model.inputs)
    assert capsys.readouterr().err == ""  # b/1 and b/4 both train: one class, no leak
    write_png(root / "a" / "4.png", pattern(100))  # b/0's pixels, under a: both warnings
    prepare(spec.data, spec.model.inputs)
    err = capsys.readouterr().err
    assert f"1 validation image is the same picture as a training image" in err and f"{root}/b/0.png ('b') and " \
        f"{root}/a/4.png ('a')" in err
    assert "1 image is the same picture as an image of another class" in err
