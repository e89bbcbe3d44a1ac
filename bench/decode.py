"""Benchmark: decoding a folder of PNGs, specc's reading against a bare Pillow loop (issue 26, point 3).

The 60,000 MNIST training images of ../shared/data/mnist/mnist.npz are written once as PNGs into a class
folder each (under --folder, default /tmp/specc-mnist-png), then decoded, alternating sides, `--rounds`
times each, the medians reported:
  pillow loop   a plain single-threaded loop: Image.open, convert("L"), np.asarray, one image after another
  specc         specc.data.images._decode_all as `specc train` runs it: on every core of the process
  specc 1       the same on one thread (decode_workers = 1)
  listing       specc.data.images.list_folder, the listing the cache key is made from, against os.scandir
  cold load     specc.data.images.load_images with an empty cache: listing, decoding, writing the cache
  cached load   the same with the cache written: listing, reading the cache (what a second run does),
                against decoding into memory once (the "specc" side)
Usage: python bench/decode.py [--rounds 3] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist.npz"


def write_folder(folder: Path) -> int:
    """The PNGs, once: folder/<label>/<k>.png; the number of images."""
    done = folder / ".complete"
    if done.exists():
        return int(done.read_text())
    with np.load(MNIST) as z:
        x, y = z["x_train"], z["y_train"]
    for k, (pixels, label) in enumerate(zip(x, y)):
        path = folder / str(int(label)) / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.reshape(28, 28)).save(path)
    done.write_text(str(len(x)))
    return len(x)


def pillow_loop(paths: list[Path]) -> np.ndarray:
    out = np.empty((len(paths), 28, 28), np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as img:
            out[k] = np.asarray(img.convert("L"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/specc-mnist-png"))
    args = ap.parse_args(argv)
    if not MNIST.is_file():
        print(f"skipped: {MNIST} is not there (../shared/data beside the repository)")
        return 0
    sys.path.insert(0, str(ROOT))
    from specc.data import images
    from specc.language.spec import ImagesSource

    n = write_folder(args.folder)
    source = ImagesSource(args.folder, (28, 28), "gray", None)
    listing = images.list_folder(source)
    paths = [listing.root / f.relative for f in listing.files]
    workers = images.decode_workers()
    times = {"pillow loop": [], "specc": [], "specc 1": [], "listing": [], "scandir": [], "cold load": [],
             "cached load": []}
    import shutil
    import tempfile

    os.environ["SPECC_CACHE"] = tempfile.mkdtemp(prefix="specc-decode-cache-")
    one = images.decode_workers
    for _ in range(args.rounds):
        start = time.perf_counter(); want = pillow_loop(paths); times["pillow loop"].append(time.perf_counter() - start)
        start = time.perf_counter(); got, _ = images._decode_all(listing, source); times["specc"].append(time.perf_counter() - start)
        images.decode_workers = lambda: 1
        start = time.perf_counter(); images._decode_all(listing, source); times["specc 1"].append(time.perf_counter() - start)
        images.decode_workers = one
        start = time.perf_counter(); images.list_folder(source); times["listing"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for d in os.scandir(args.folder):
            if d.is_dir():
                list(os.scandir(d.path))
        times["scandir"].append(time.perf_counter() - start)
        shutil.rmtree(images.cache_dir(), ignore_errors=True)
        start = time.perf_counter(); images.load_images(source, None); times["cold load"].append(time.perf_counter() - start)
        start = time.perf_counter(); cached = images.load_images(source, None)
        times["cached load"].append(time.perf_counter() - start)
        assert np.array_equal(got[:, 0], want), "specc's pixels are not Pillow's"
        assert np.array_equal(cached.pixels[:, 0], want), "the cache's pixels are not Pillow's"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{n:,} PNGs of 28 x 28, {args.rounds} rounds alternated, medians; {workers} decoding thread(s), "
          f"{os.cpu_count()} CPUs")
    for k in ("pillow loop", "specc", "specc 1"):
        print(f"  {k:<12} {med[k]:7.3f} s  ({med[k] / med['pillow loop']:.2f} x the Pillow loop)")
    print(f"  {'listing':<12} {med['listing']:7.3f} s  ({med['listing'] / med['scandir']:.1f} x a bare os.scandir"
          f" of the folders, {med['scandir']:.3f} s)")
    for k in ("cold load", "cached load"):
        print(f"  {k:<12} {med[k]:7.3f} s  ({med[k] / med['specc']:.2f} x decoding into memory once)")
    shutil.rmtree(os.environ["SPECC_CACHE"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
