"""predict and evaluate on image files: models trained (once per module) on folders of real PNGs
written by Pillow, run through the command line and checked against onnxruntime run by hand on the
pixels images.decode gives (as training decoded them), and the errors, each naming what is wrong."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from specc.commands.cli import main
from specc.data.images import decode
from specc.inference.infer import predict_file

SPEC = """\
data {{
    source = images("{folder}", size=({h}, {w}), mode="{mode}")
    inputs = [image: float({c}, {h}, {w}) / 255]
    target = label: category
    valid  = random(0.25, seed=3)
    batch  = 4
}}
model {{
    out = image |> flatten |> linear(classes)
}}
train {{
    loss    = cross_entropy
    metrics = [accuracy, error_rate]
    fit_one_cycle(epochs=1, lr=1e-2)
    seed    = 1
}}
"""


def write_png(path: Path, seed: int, shape: tuple) -> Path:
    """Random pixels of `shape` ((h, w) grey or (h, w, channels)) saved as a PNG by Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)).save(path)
    return path


def folder_of(root: Path, classes: list[str], n: int, shape: tuple) -> Path:
    for c, label in enumerate(classes):
        for k in range(n):
            write_png(root / label / f"{k}.png", 1000 * c + k, shape)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Two trained runs: rgb photos in classes by name (8x6 from 12x10 files), and grey images
    in classes by number (10x10 from files of other sizes)."""
    tmp = tmp_path_factory.mktemp("models")
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECC_CACHE", str(tmp / "cache"))
        for name, classes, shape, (c, h, w), mode in [
                ("rgb", ["cat", "dog", "owl"], (12, 10, 3), (3, 8, 6), "rgb"),
                ("gray", ["3", "7"], (14, 9), (1, 10, 10), "gray")]:
            folder = folder_of(tmp / f"{name}_photos", classes, 8, shape)
            spec = tmp / f"{name}.spec"
            spec.write_text(SPEC.format(folder=folder, h=h, w=w, c=c, mode=mode))
            run = tmp / f"{name}_run"
            assert main(["train", str(spec), "--out", str(run), "--quiet"]) == 0
            made[name] = {"model": run / "model.onnx", "folder": folder, "mode": mode, "size": (h, w), "run": run}
    return made


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECC_CACHE", str(tmp_path / "cache"))


def by_hand(model: Path, paths: list[Path], mode: str, size) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: onnxruntime on the images decoded as training decoded them."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"image": np.stack([decode(p, mode, size) for p in paths])})
    return labels, probabilities


def predicted(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args)]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def failed(capsys, args, code: int = 1) -> str:
    assert main([*map(str, args)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def metrics_of(text: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()[1:]}


# ---------------------------------------------------------------- the exported model


def test_the_model_takes_raw_uint8_pixels_and_records_how_to_read_images(models):
    session = ort.InferenceSession(str(models["rgb"]["model"]), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape[1:]) == ("image", "tensor(uint8)", [3, 8, 6])
    reading = json.loads(session.get_modelmeta().custom_metadata_map["specc.reading"])
    assert reading == {"format": "images", "size": [8, 6], "mode": "rgb"}


# ---------------------------------------------------------------- predict


def test_predict_a_folder_gives_every_image_below_it_by_path(models, tmp_path, capsys):
    m = models["rgb"]
    folder = tmp_path / "new"
    paths = {"b.png": write_png(folder / "b.png", 1, (12, 10, 3)),
             "a/z.png": write_png(folder / "a" / "z.png", 2, (20, 30, 3)),  # larger: resized as training did
             "a/deeper/y.PNG": write_png(folder / "a" / "deeper" / "y.PNG", 3, (5, 4)),  # grey: converted
             "c.jpg": folder / "c.jpg"}
    Image.fromarray(np.full((9, 9, 3), 200, dtype=np.uint8)).save(paths["c.jpg"])
    write_png(folder / ".hidden.png", 4, (12, 10, 3))  # hidden files and folders are left out
    write_png(folder / ".thumbs" / "t.png", 5, (12, 10, 3))
    (folder / "notes.txt").write_text("not an image")  # nor files of other kinds
    rows = predicted(capsys, m["model"], folder)
    names = sorted(paths)
    assert [r["file"] for r in rows] == names
    labels, probabilities = by_hand(m["model"], [paths[n] for n in names], "rgb", (8, 6))
    assert list(rows[0]) == ["file", "label", "probability_cat", "probability_dog", "probability_owl"]
    assert [r["label"] for r in rows] == labels.tolist()
    got = np.array([[float(r[f"probability_{c}"]) for c in ("cat", "dog", "owl")] for r in rows])
    np.testing.assert_allclose(got, probabilities, rtol=1e-5)


def test_predict_one_file_is_named_as_given_and_matches_the_folders_row(models, capsys):
    m = models["rgb"]
    one = m["folder"] / "dog" / "3.png"
    (row,) = predicted(capsys, m["model"], one)
    assert row["file"] == str(one)
    (same,) = [r for r in predicted(capsys, m["model"], m["folder"]) if r["file"] == "dog/3.png"]
    assert {k: v for k, v in row.items() if k != "file"} == {k: v for k, v in same.items() if k != "file"}


def test_predict_classes_by_number_gives_int_labels(models, tmp_path, capsys):
    m = models["gray"]
    rows = predicted(capsys, m["model"], m["folder"], "--out", tmp_path / "p.csv")
    assert rows == []  # written to --out, not stdout
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    paths = [m["folder"] / r["file"] for r in rows]
    assert [r["file"] for r in rows] == [f"{c}/{k}.png" for c in ("3", "7") for k in range(8)]
    labels, probabilities = by_hand(m["model"], paths, "gray", (10, 10))
    assert labels.dtype == np.int64
    assert [int(r["label"]) for r in rows] == labels.tolist()
    np.testing.assert_allclose([[float(r["probability_3"]), float(r["probability_7"])] for r in rows],
                               probabilities, rtol=1e-5)


def test_batches_of_images_give_the_same_predictions(models):
    m = models["rgb"]
    outputs = []
    for batch in (1, 5, 24, 256):
        out = io.StringIO()
        assert predict_file(m["model"], m["folder"], out, device="cpu", image_batch=batch) == 24
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]


def test_a_large_folder_is_never_in_memory_at_once(models, tmp_path):
    """Pixels at the model's size: 300 images of 3x64x64 are 3.7 MB; decoded 10 at a time, the
    peak of what Python and numpy allocate stays far below that."""
    m = models["rgb"]
    folder = tmp_path / "many"
    for k in range(300):
        write_png(folder / f"{k:03}.png", k, (8, 6, 3))
    spec = m["run"] / "spec.spec"
    big = tmp_path / "big.spec"
    big.write_text(spec.read_text().replace("size=(8, 6)", "size=(64, 64)").replace("3, 8, 6", "3, 64, 64"))
    run = tmp_path / "run"
    assert main(["train", str(big), "--out", str(run), "--quiet"]) == 0
    # once untraced first: the modules predict imports on its first call are no part of what it holds
    predict_file(run / "model.onnx", folder, io.StringIO(), device="cpu", image_batch=10)
    peaks = {}
    for batch in (10, 300):
        tracemalloc.start()
        out = io.StringIO()
        predict_file(run / "model.onnx", folder, out, device="cpu", image_batch=batch)
        peaks[batch] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    whole = 300 * 3 * 64 * 64
    assert peaks[300] > whole  # the measure sees the pixels when they are all held
    assert peaks[10] < whole / 4


def test_predict_pixels_from_an_npz(models, tmp_path, capsys):
    m = models["rgb"]
    paths = [m["folder"] / c / "0.png" for c in ("cat", "dog", "owl")]
    pixels = np.stack([decode(p, "rgb", (8, 6)) for p in paths])
    np.savez(tmp_path / "x.npz", image=pixels.astype(np.int64))  # any whole numbers from 0 to 255
    rows = predicted(capsys, m["model"], tmp_path / "x.npz")
    labels, _ = by_hand(m["model"], paths, "rgb", (8, 6))
    assert [r["label"] for r in rows] == labels.tolist()
    pixels = pixels.astype(np.float32)
    pixels[1, 2, 3, 4] = 255.5
    np.savez(tmp_path / "bad.npz", image=pixels)
    assert failed(capsys, ["predict", m["model"], tmp_path / "bad.npz"]) == (
        f"{tmp_path / 'bad.npz'}: error[D105]: array 'image', index (1, 2, 3, 4): expected a pixel (a whole number "
        "from 0 to 255), found 255.5")


# ---------------------------------------------------------------- predict: errors


def test_an_image_that_cannot_be_decoded_is_named_and_nothing_is_written(models, tmp_path, capsys):
    m = models["rgb"]
    folder = tmp_path / "new"
    write_png(folder / "a.png", 1, (12, 10, 3))
    (folder / "b.png").write_bytes(b"not a png at all")
    out = tmp_path / "p.csv"
    assert failed(capsys, ["predict", m["model"], folder, "--out", out]) == (
        f"{folder / 'b.png'}: error[D110]: cannot be decoded as an image: not a PNG, JPEG, BMP, GIF or WebP image, "
        "the formats specc reads")
    assert not out.exists()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((folder / "a.png").read_bytes()[:60])
    err = failed(capsys, ["predict", m["model"], truncated])
    assert err.startswith(f"{truncated}: error[D110]: cannot be decoded as an image: ")


def test_predict_paths_that_hold_no_images(models, tmp_path, capsys):
    m = models["rgb"]
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    write_png(tmp_path / "empty" / ".hidden" / "x.png", 1, (4, 4))
    assert failed(capsys, ["predict", m["model"], tmp_path / "empty"]) == (
        f"{tmp_path / 'empty'}: error[D111]: holds no images (files ending .png, .jpg, .jpeg, .bmp, .gif, .webp, "
        "in it or in folders below it)")
    assert failed(capsys, ["predict", m["model"], tmp_path / "gone.png"]) == \
        f"{tmp_path / 'gone.png'}: error[D101]: file not found"
    assert failed(capsys, ["predict", m["model"], m["folder"], "--delimiter", ","], code=2) == (
        f"specc: error: --delimiter: the model reads images, and {m['folder']} is a folder of them")


# ---------------------------------------------------------------- evaluate


def test_evaluate_a_folder_of_class_folders(models, capsys):
    m = models["rgb"]
    assert main(["evaluate", str(m["model"]), str(m["folder"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{m['folder']} (all images: 24)"
    truth = [c for c in ("cat", "dog", "owl") for _ in range(8)]
    paths = [m["folder"] / c / f"{k}.png" for c in ("cat", "dog", "owl") for k in range(8)]
    labels, probabilities = by_hand(m["model"], paths, "rgb", (8, 6))
    index = np.array([("cat", "dog", "owl").index(t) for t in truth])
    accuracy = float(np.mean(labels == np.array(truth)))
    metrics = metrics_of(out)
    assert metrics["loss"] == pytest.approx(-np.log(probabilities[np.arange(24), index]).mean(), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["error_rate"] == pytest.approx(1 - accuracy, abs=1e-6)


@pytest.mark.parametrize("name", ["rgb", "gray"])
def test_evaluate_the_valid_split_gives_what_training_reported(models, capsys, name):
    m = models[name]
    assert main(["evaluate", str(m["model"]), str(m["folder"]), "--split", "valid"]) == 0
    out = capsys.readouterr().out
    n = 6 if name == "rgb" else 4  # random(0.25) of 24 and of 16 images
    assert out.splitlines()[0] == f"{m['folder']} (valid images: {n})"
    metrics = metrics_of(out)
    header, row = (m["run"] / "metrics.csv").read_text().splitlines()
    reported = dict(zip(header.split(","), row.split(",")))
    assert metrics["loss"] == pytest.approx(float(reported["valid_loss"]), abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(reported["accuracy"]), abs=1e-5)


def test_evaluate_a_folder_with_its_own_train_and_valid(models, tmp_path, capsys):
    m = models["gray"]
    folder = tmp_path / "split"
    for part, n in (("train", 3), ("valid", 2)):
        for c in ("3", "7"):
            for k in range(n):
                write_png(folder / part / c / f"{k}.png", hash((part, c, k)) % 1000, (10, 10))
    results = {}
    for split in ("all", "train", "valid"):
        assert main(["evaluate", str(m["model"]), str(folder), "--split", split]) == 0
        out = capsys.readouterr().out
        results[split] = (out.splitlines()[0], metrics_of(out))
    assert [results[s][0] for s in results] == [f"{folder} (all images: 10)", f"{folder} (train images: 6)",
                                                 f"{folder} (valid images: 4)"]
    paths = sorted((folder / "valid").rglob("*.png"))
    labels, probabilities = by_hand(m["model"], paths, "gray", (10, 10))
    truth = np.array([int(p.parent.name) for p in paths])
    assert results["valid"][1]["accuracy"] == pytest.approx(float(np.mean(labels == truth)), abs=1e-6)
    index = (truth == 7).astype(int)
    assert results["valid"][1]["loss"] == pytest.approx(-np.log(probabilities[np.arange(4), index]).mean(), abs=1e-6)


# ---------------------------------------------------------------- evaluate: errors


def test_a_class_folder_the_model_does_not_know_is_named_before_any_image_is_decoded(models, tmp_path, capsys):
    m = models["rgb"]
    folder = tmp_path / "new"
    write_png(folder / "cat" / "0.png", 1, (12, 10, 3))
    write_png(folder / "cats" / "0.png", 2, (12, 10, 3))
    (folder / "cats" / "1.png").write_bytes(b"broken")  # not decoded: the class is refused first
    assert failed(capsys, ["evaluate", m["model"], folder]) == (
        f"{folder / 'cats'}: error[D109]: class folder 'cats' (2 images) is not a class of the model: its classes "
        "are cat, dog, owl (did you mean 'cat' for 'cats'?)")
    write_png(folder / "emu" / "0.png", 3, (12, 10, 3))
    assert failed(capsys, ["evaluate", m["model"], folder]) == (
        f"{folder}: error[D109]: class folders 'cats' (2 images), 'emu' (1 image) are not classes of the model: its "
        "classes are cat, dog, owl (did you mean 'cat' for 'cats'?)")


def test_evaluate_errors_of_image_folders(models, tmp_path, capsys):
    m = models["gray"]
    folder = tmp_path / "new"
    write_png(folder / "3" / "0.png", 1, (10, 10))
    (folder / "7").mkdir()
    assert failed(capsys, ["evaluate", m["model"], folder]) == (
        f"{folder / '7'}: error[D111]: class folder '7' holds no images (files ending .png, .jpg, .jpeg, .bmp, .gif "
        "or .webp)")
    (folder / "7" / "0.png").write_bytes(b"")
    assert failed(capsys, ["evaluate", m["model"], folder]) == (
        f"{folder / '7' / '0.png'}: error[D110]: cannot be decoded as an image: not a PNG, JPEG, BMP, GIF or WebP "
        "image, the formats specc reads")
    loose = tmp_path / "loose"
    write_png(loose / "0.png", 1, (10, 10))
    assert failed(capsys, ["evaluate", m["model"], loose]).startswith(
        f"{loose}: error[D111]: holds 1 image but no class folders")
    assert failed(capsys, ["evaluate", m["model"], loose / "0.png"]) == (
        f"{loose / '0.png'}: error[D107]: is not a folder: the model reads images, so evaluate takes a folder with one "
        "subfolder of images per class, as the model was trained on (or an .npz with arrays 'image' and 'label')")
