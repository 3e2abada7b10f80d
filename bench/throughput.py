"""Batch throughput: images/s encoding and decoding a folder of mixed-size photos.

Makes ``--count`` photos (default 200) of mixed sizes, 128 to 1024 px on the long side, by
random crops and rescales of the training photos in data/prepared (when present) or the
test photos and examples/sample.jpg, saved as JPEG (80 %) and PNG. Then, through the Python
API as a batch tool would use it: reading and decoding files on I/O worker threads while the
network runs on the torch threads, network batches of equal-size images, .gq / PNG writing on a
writer thread. Prints images/s and where the time goes: I/O (read + image decode, image
encode + write), network, GQ search, entropy coding (ANS + container, both directions).

Shares are of the summed busy time of all stages; I/O runs on other threads, so
wall time < sum when the overlap works. ``--workers 0`` runs I/O inline for comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from gqtok.io.pipeline import passive_openmp

passive_openmp()  # before torch loads: see gqtok.io.pipeline

from gqtok import load_model  # noqa: E402
from gqtok.codec import decode_to_array, encode_pictures, unpack_tokens  # noqa: E402
from gqtok.io.files import atomic_write_bytes  # noqa: E402
from gqtok.io.images import encode_image_bytes, read_image  # noqa: E402
from gqtok.io.pipeline import batched, configure_threads, default_io_workers, prefetch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def source_photos() -> list[Path]:
    prepared = sorted((ROOT / "data" / "prepared").glob("*/*.jpg"))
    if len(prepared) >= 8:
        return prepared
    return sorted((ROOT / "tests" / "data").glob("photo_*")) + [ROOT / "examples" / "sample.jpg"]


def make_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """Mixed-size photos: a random crop of a source, scaled to a long side of 128..1024 px."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in source_photos()]
    out = []
    for i in range(count):
        src = sources[int(rng.integers(len(sources)))]
        cw = int(src.width * rng.uniform(0.5, 1.0))
        ch = int(src.height * rng.uniform(0.5, 1.0))
        x0 = int(rng.integers(0, src.width - cw + 1))
        y0 = int(rng.integers(0, src.height - ch + 1))
        crop = src.crop((x0, y0, x0 + cw, y0 + ch))
        side = int(rng.integers(128, 1025))
        scale = side / max(crop.size)
        im = crop.resize((max(8, round(cw * scale)), max(8, round(ch * scale))), Image.BICUBIC)
        if rng.random() < 0.8:
            path = folder / f"img_{i:04d}.jpg"
            im.save(path, quality=90)
        else:
            path = folder / f"img_{i:04d}.png"
            im.save(path)
        out.append(path)
    return out


class Clock:
    """Busy time per stage, safe to add to from several threads."""

    def __init__(self) -> None:
        import threading

        self.t: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.t[key] += seconds


def timed_read_image(path: Path, clock: Clock) -> object:
    t0 = time.perf_counter()
    pic = read_image(path)
    clock.add("io", time.perf_counter() - t0)
    return pic


def timed_write(path: Path, data: bytes, clock: Clock) -> None:
    t0 = time.perf_counter()
    atomic_write_bytes(path, data, overwrite=True)
    clock.add("io", time.perf_counter() - t0)


def encode_folder(model, files, out: Path, batch: int, workers: int) -> tuple[float, Clock, int]:  # noqa: ANN001
    clock = Clock()
    pixels = 0
    pending: list[Future[None]] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="write") as writer:
        loaded = prefetch(lambda p: timed_read_image(p, clock), files, workers, 2 * batch)
        for chunk in batched(loaded, batch):
            pics = [pic for _, pic in chunk]
            for pic in pics:
                if isinstance(pic, BaseException):
                    raise pic
            encoded = encode_pictures(model, pics, batch_size=batch)
            for enc, (path, _) in zip(encoded, chunk, strict=True):
                for key in ("network", "search", "entropy"):
                    clock.add(key, enc.timings.get(key, 0.0))
                pixels += enc.header.width * enc.header.height
                dst = out / (path.stem + ".gq")
                if workers:
                    pending.append(writer.submit(timed_write, dst, enc.data, clock))
                else:
                    timed_write(dst, enc.data, clock)
        for fut in pending:
            fut.result()
    return time.perf_counter() - t0, clock, pixels


def timed_read_bytes(path: Path, clock: Clock) -> bytes:
    t0 = time.perf_counter()
    data = path.read_bytes()
    clock.add("io", time.perf_counter() - t0)
    return data


def timed_save(path: Path, rgb: np.ndarray, clock: Clock) -> None:
    t0 = time.perf_counter()
    atomic_write_bytes(path, encode_image_bytes(Image.fromarray(rgb), "png"), overwrite=True)
    clock.add("io", time.perf_counter() - t0)


def decode_folder(model, files, out: Path, workers: int) -> tuple[float, Clock]:  # noqa: ANN001
    clock = Clock()
    pending: list[Future[None]] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="write") as writer:
        for path, data in prefetch(lambda p: timed_read_bytes(p, clock), files, workers, 8):
            if isinstance(data, BaseException):
                raise data
            t1 = time.perf_counter()
            _, tokens, _ = unpack_tokens(model, data, str(path))
            t2 = time.perf_counter()
            rgb = decode_to_array(model, tokens)
            t3 = time.perf_counter()
            clock.add("entropy", t2 - t1)
            clock.add("network", t3 - t2)
            dst = out / (path.stem + ".png")
            if workers:
                pending.append(writer.submit(timed_save, dst, rgb, clock))
                while len(pending) > 4:
                    pending.pop(0).result()
            else:
                timed_save(dst, rgb, clock)
        for fut in pending:
            fut.result()
    return time.perf_counter() - t0, clock


def peak_rss_mb() -> float:
    """VmHWM where there is /proc (ru_maxrss can start from a parent's peak after exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shares(clock: Clock) -> dict[str, float]:
    total = sum(clock.t.values()) or 1.0
    return {k: clock.t.get(k, 0.0) / total for k in ("io", "network", "search", "entropy")}


def report(name: str, n: int, pixels: int, wall: float, clock: Clock) -> dict[str, object]:
    s = shares(clock)
    busy = sum(clock.t.values())
    print(
        f"{name}: {n} images ({pixels / 1e6:.1f} Mpx) in {wall:.1f} s ="
        f" {n / wall:.2f} images/s, {pixels / 1e6 / wall:.2f} Mpx/s"
    )
    print(
        f"  time: I/O {s['io']:.0%}, network {s['network']:.0%}, GQ search {s['search']:.0%},"
        f" entropy coding {s['entropy']:.0%}  (busy {busy:.1f} s over {wall:.1f} s wall)"
    )
    return {
        "images": n,
        "megapixels": pixels / 1e6,
        "seconds": wall,
        "images_per_s": n / wall,
        "mpx_per_s": pixels / 1e6 / wall,
        "busy_seconds": dict(clock.t),
        "shares": s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="photos to make (default 200)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--workers", type=int, default=None, help="I/O threads (default: 1 on 2 cores)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    workers = default_io_workers() if args.workers is None else args.workers
    model = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="gqtok-bench-") as tmp:
        folder = Path(tmp)
        for sub in ("in", "gq", "out"):
            (folder / sub).mkdir()
        files = make_photos(folder / "in", args.count, args.seed)
        warm = read_image(files[0])
        encode_pictures(model, [warm])  # codebook and search tables, allocator warm-up
        wall, clock, pixels = encode_folder(model, files, folder / "gq", args.batch_size, workers)
        print(f"{args.count} mixed-size photos, {threads} torch threads, {workers} I/O workers,")
        print(f"batch {args.batch_size}, model {model.name}, {platform.processor() or 'cpu'}")
        enc = report("encode", len(files), pixels, wall, clock)
        gq_files = sorted((folder / "gq").glob("*.gq"))
        wall, clock = decode_folder(model, gq_files, folder / "out", workers)
        dec = report("decode", len(gq_files), pixels, wall, clock)
    peak = peak_rss_mb()
    print(f"peak RSS {peak:.0f} MB")
    if args.json:
        record = {
            "count": args.count,
            "threads": threads,
            "workers": workers,
            "batch_size": args.batch_size,
            "model": model.name,
            "encode": enc,
            "decode": dec,
            "peak_rss_mb": peak,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
