"""Peak memory of training from tar shards: write about N GB of shards of incompressible images, build the
`tar` data source on them and draw batches, and report the peak RSS against the bytes on disk.

    python benchmarks/tar_stream.py --gb 1 --dir /tmp/shards
"""

from __future__ import annotations

import argparse
import resource
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def write_shards(folder: Path, gigabytes: float, per_shard: int = 256) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rng, total, shard = np.random.default_rng(0), 0, 0
    while total < gigabytes * 2**30:
        path = folder / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for k in range(per_shard):
                image = folder / "tmp.png"
                Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(image)
                tar.add(image, arcname=f"{shard:05d}-{k:04d}.png")
                (folder / "tmp.txt").write_text(f"sample {shard} {k}")
                tar.add(folder / "tmp.txt", arcname=f"{shard:05d}-{k:04d}.txt")
        total += path.stat().st_size
        shard += 1
    for tmp in ("tmp.png", "tmp.txt"):
        (folder / tmp).unlink(missing_ok=True)
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--dir", default="/tmp/iris-shards")
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args()
    folder = Path(args.dir)
    on_disk = sum(f.stat().st_size for f in folder.glob("*.tar")) if folder.is_dir() else 0
    if on_disk < args.gb * 2**30 * 0.95:
        t0 = time.perf_counter()
        on_disk = write_shards(folder, args.gb)
        print(f"wrote {on_disk / 2**30:.2f} GB of shards in {time.perf_counter() - t0:.0f}s")
    import torch  # noqa: F401 - its own memory is the baseline

    from iris.train.config import DataConfig
    from iris.train.data import BatchStream, build_dataset

    base = rss_mb()
    t0 = time.perf_counter()
    ds = build_dataset(DataConfig(source="tar", path=str(folder), size=128))
    built = time.perf_counter() - t0
    stream = BatchStream(ds, batch_size=32, seed=0)
    for step in range(args.batches):
        stream.batch(step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(ds):,} samples in {len(ds.shards)} shards, {on_disk / 2**30:.2f} GB on disk; index built in "
          f"{built:.1f}s ({sum(v.nbytes for v in ds.index.values()) / 2**20:.1f} MB); after imports {base:.0f} MB, "
          f"now {rss_mb():.0f} MB, peak {peak:.0f} MB after {args.batches} batches of 32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
