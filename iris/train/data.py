"""Training data sources, each yielding samples {"image": [3, H, W] in [-1, 1], "caption", "label", "score"}.

- `ImageFolder`: images with caption sidecars (`cat.png` + `cat.txt`), searched recursively
- `ClassFolders`: one subfolder per class (class-conditional stage); captions are the class names
- `JsonlManifest`: lines {"path", "caption", "class"?, "score"?}, paths relative to the manifest
- `TarShards`: WebDataset-style .tar shards (`key.png`/`key.jpg` + `key.txt`/`key.json` per sample)
- `EmojiData`: the procedural emoji-scene generator (infinite, seeded)

Batches are drawn by `BatchStream`, a deterministic function of (seed, rank, step): resuming at step
n draws exactly the batches an uninterrupted run would have drawn, with or without worker processes.
Procedural sources start their scene index at a point set by the seed, so a run continued from a model
folder (a new run, step 0) with another seed trains on scenes it has not seen.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..inputs import open_image
from .config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUCKETS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16))  # aspect ratios (w, h)


@dataclass
class Record:
    """An image on disk (or in a shard) with its annotations."""

    source: str | bytes
    caption: str = ""
    label: int = -1
    score: float = 0.0


def bucket_size(size: int, width: int, height: int, multiple: int = 16) -> tuple[int, int]:
    """The (w, h) bucket of about size*size pixels whose aspect ratio is closest to the image's."""
    aspect = width / max(height, 1)
    bw, bh = min(BUCKETS, key=lambda r: abs(np.log(r[0] / r[1]) - np.log(aspect)))
    scale = (size * size / (bw * bh)) ** 0.5
    snap = lambda v: max(multiple, round(v * scale / multiple) * multiple)
    return snap(bw), snap(bh)


def prepare_image(
    image: Image.Image, out_w: int, out_h: int, rng: random.Random, crop: bool, flip: bool
) -> torch.Tensor:
    """Resize to cover (out_w, out_h), crop (random or centre), maybe flip -> [3, out_h, out_w] in [-1, 1]."""
    scale = max(out_w / image.width, out_h / image.height)
    w, h = max(out_w, round(image.width * scale)), max(out_h, round(image.height * scale))
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    x0 = rng.randint(0, w - out_w) if crop else (w - out_w) // 2
    y0 = rng.randint(0, h - out_h) if crop else (h - out_h) // 2
    image = image.crop((x0, y0, x0 + out_w, y0 + out_h))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return a / 127.5 - 1.0


class RecordDataset:
    """Base for on-disk sources: a list of Records, loaded and augmented per sample."""

    def __init__(self, records: Sequence[Record], cfg: DataConfig, classes: Sequence[str] = ()):
        if not records:
            raise ValueError(f"no training images found for source {cfg.source!r} at {cfg.path!r}")
        self.records, self.cfg, self.classes = list(records), cfg, list(classes)

    def __len__(self) -> int:
        return len(self.records)

    def size_of(self, index: int) -> tuple[int, int]:
        """Output (w, h) for a record: square, or its aspect bucket."""
        if not self.cfg.buckets:
            return self.cfg.size, self.cfg.size
        rec = self.records[index]
        with Image.open(io.BytesIO(rec.source) if isinstance(rec.source, bytes) else rec.source) as im:
            return bucket_size(self.cfg.size, *im.size)

    def load(self, index: int, rng: random.Random, size: tuple[int, int] | None = None) -> dict[str, Any]:
        rec = self.records[index]
        image = open_image(rec.source)
        w, h = size or self.size_of(index)
        return {
            "image": prepare_image(image, w, h, rng, self.cfg.random_crop, self.cfg.random_flip),
            "caption": rec.caption, "label": rec.label, "score": rec.score,
        }


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolder(RecordDataset):
    """Images under a folder; `name.txt` beside `name.png` holds its caption (empty if absent)."""

    def __init__(self, cfg: DataConfig):
        root = Path(cfg.path)
        records = []
        for p in _images_under(root):
            side = p.with_suffix(".txt")
            records.append(Record(str(p), side.read_text().strip() if side.is_file() else ""))
        super().__init__(records, cfg)


class ClassFolders(RecordDataset):
    """root/<class name>/*.png; label = index of the sorted class name; caption = the class name."""

    def __init__(self, cfg: DataConfig):
        root = Path(cfg.path)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        records = [
            Record(str(p), c.replace("_", " "), i) for i, c in enumerate(classes) for p in _images_under(root / c)
        ]
        super().__init__(records, cfg, classes)


class JsonlManifest(RecordDataset):
    """One JSON object per line: {"path", "caption", "class"?, "score"?}; paths relative to the manifest."""

    def __init__(self, cfg: DataConfig):
        manifest = Path(cfg.path)
        records = []
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = Path(row["path"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{manifest}:{n}: expected an object with a 'path' ({err})") from err
            rec = Record(str(path if path.is_absolute() else manifest.parent / path), str(row.get("caption", "")),
                         int(row.get("class", -1)), float(row.get("score", 0.0)))
            if cfg.min_score is None or rec.score >= cfg.min_score:
                records.append(rec)
        super().__init__(records, cfg)


class TarShards:
    """WebDataset-style shards: files grouped by key (`0001.png`, `0001.txt` or `0001.json`) in .tar files.

    Streams from disk: building it reads only the tar headers (and the small .json sidecars, for `min_score`),
    keeping per sample a shard number and byte offsets in numpy arrays (about 40 bytes a sample); images and
    captions are read from the shard when a batch needs them. Memory stays bounded by the batch, not the
    dataset. Each process (DataLoader workers included) opens the shards itself.
    """

    _IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")

    def __init__(self, cfg: DataConfig):
        root = Path(cfg.path)
        self.cfg, self.classes = cfg, []
        self._captions: list[str] = []  # captions given only in a .json sidecar
        self.shards = sorted(root.glob("*.tar")) if root.is_dir() else sorted(root.parent.glob(root.name))
        cols: dict[str, list[float]] = {k: [] for k in ("shard", "img", "img_n", "txt", "txt_n", "label", "score")}
        for n, shard in enumerate(self.shards):
            with tarfile.open(shard) as tar:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in tar:  # headers only: data blocks are skipped
                    if member.isfile():
                        key, _, ext = member.name.rpartition(".")
                        groups.setdefault(key, {})[ext.lower()] = member
                for key in sorted(groups):
                    g = groups[key]
                    img = next((g[e] for e in self._IMAGE_EXTS if e in g), None)
                    if img is None:
                        continue
                    meta = {}
                    if "json" in g:
                        data = tar.extractfile(g["json"])
                        meta = json.loads(data.read()) if data is not None else {}
                    score = float(meta.get("score", 0.0))
                    if cfg.min_score is not None and score < cfg.min_score:
                        continue
                    txt = g.get("txt")
                    for k, v in (("shard", n), ("img", img.offset_data), ("img_n", img.size),
                                 ("txt", txt.offset_data if txt else -1), ("txt_n", txt.size if txt else 0),
                                 ("label", int(meta.get("class", -1))), ("score", score)):
                        cols[k].append(v)
                    if txt is None and meta.get("caption"):
                        cols["txt"][-1], cols["txt_n"][-1] = -2 - len(self._captions), 0
                        self._captions.append(str(meta["caption"]))
        if not cols["img"]:
            raise ValueError(f"no training images found for source {cfg.source!r} at {cfg.path!r}")
        self.index = {k: np.asarray(v, np.float32 if k == "score" else np.int64) for k, v in cols.items()}
        self._files: dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index["img"])

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        import os

        if self._pid != os.getpid():  # a forked worker must not share the parent's file positions
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 - kept open for the run
        f.seek(offset)
        return f.read(size)

    def record(self, index: int) -> Record:
        """Sample `index` read from its shard: image bytes, caption, class and score."""
        ix = {k: v[index] for k, v in self.index.items()}
        shard = int(ix["shard"])
        image = self._read(shard, int(ix["img"]), int(ix["img_n"]))
        if ix["txt"] >= 0:
            caption = self._read(shard, int(ix["txt"]), int(ix["txt_n"])).decode("utf-8").strip()
        else:
            caption = self._captions[-2 - int(ix["txt"])] if ix["txt"] <= -2 else ""
        return Record(image, caption, int(ix["label"]), float(ix["score"]))

    def size_of(self, index: int) -> tuple[int, int]:
        if not self.cfg.buckets:
            return self.cfg.size, self.cfg.size
        with Image.open(io.BytesIO(self.record(index).source)) as im:  # type: ignore[arg-type]
            return bucket_size(self.cfg.size, *im.size)

    def load(self, index: int, rng: random.Random, size: tuple[int, int] | None = None) -> dict[str, Any]:
        rec = self.record(index)
        w, h = size or self.size_of(index)
        return {
            "image": prepare_image(open_image(rec.source), w, h, rng, self.cfg.random_crop, self.cfg.random_flip),
            "caption": rec.caption, "label": rec.label, "score": rec.score,
        }

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: no open files across processes
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, -1
        return state


class EmojiData:
    """The procedural emoji-scene source (train split), with sprite masks for the inpaint adapter."""

    def __init__(self, cfg: DataConfig):
        from .emoji import EmojiScenes, SceneConfig

        self.cfg = cfg
        from .emoji import EMOJI

        share = {} if cfg.emoji_p_two is None else {"p_two": cfg.emoji_p_two}
        self.scenes = EmojiScenes(SceneConfig(size=cfg.size, seed=cfg.emoji_seed, **share), split="train")
        self.classes = [e.name for e in EMOJI]  # class label = the (first) emoji of a scene

    def __len__(self) -> int:
        return len(self.scenes)

    def size_of(self, index: int) -> tuple[int, int]:
        return self.cfg.size, self.cfg.size

    def load(self, index: int, rng: random.Random, size: tuple[int, int] | None = None) -> dict[str, Any]:
        scene = self.scenes.sample(index)
        image = torch.from_numpy(np.asarray(scene.image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
        alpha = torch.from_numpy(np.asarray(scene.alpha, dtype=np.float32).copy())[None] / 255.0
        return {"image": image, "caption": scene.caption, "label": scene.emoji[0], "score": 0.0, "alpha": alpha}


def build_dataset(cfg: DataConfig) -> RecordDataset | EmojiData:
    sources = {"folder": ImageFolder, "classes": ClassFolders, "jsonl": JsonlManifest, "tar": TarShards,
               "emoji": EmojiData}
    if cfg.source not in sources:
        raise ValueError(f"unknown data source {cfg.source!r}; expected one of {', '.join(sources)}")
    return sources[cfg.source](cfg)


class BatchStream:
    """Deterministic batches: the batch of (rank, step) depends only on (seed, rank, world, step).

    Finite datasets are walked epoch by epoch in a seeded permutation, sharded across ranks;
    with buckets on, each batch takes the bucket of its first sample and resizes the rest to it.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.dataset, self.batch_size, self.seed, self.rank, self.world = dataset, batch_size, seed, rank, world
        self.n = len(dataset)

    def indices(self, step: int) -> list[int]:
        start = (step * self.world + self.rank) * self.batch_size
        positions = range(start, start + self.batch_size)
        if self.n >= 10**6:  # procedural sources: a fresh index per sample, from a point on the ring set by the seed
            offset = self.seed * 2_654_435_761 % self.n
            return [(offset + p) % self.n for p in positions]
        out = []
        for p in positions:
            epoch, offset = divmod(p, self.n)
            out.append(int(self.permutation(epoch)[offset]))
        return out

    def permutation(self, epoch: int) -> torch.Tensor:
        """The seeded order of epoch `epoch` [n], computed once per epoch (the last two are kept)."""
        cache = self.__dict__.setdefault("_perms", {})
        if epoch not in cache:
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))
        return cache[epoch]

    def batch(self, step: int) -> dict[str, Any]:
        idx = self.indices(step)
        rng = random.Random(self.seed * 7_368_787 + step * 9973 + self.rank)
        size = self.dataset.size_of(idx[0])
        samples = [self.dataset.load(i, rng, size) for i in idx]
        batch: dict[str, Any] = {
            "image": torch.stack([s["image"] for s in samples]),
            "caption": [s["caption"] for s in samples],
            "label": torch.tensor([s["label"] for s in samples]),
            "score": torch.tensor([s["score"] for s in samples], dtype=torch.float32),
        }
        if all("alpha" in s for s in samples):
            batch["alpha"] = torch.stack([s["alpha"] for s in samples])
        return batch

    def stream(self, start: int, workers: int = 0) -> Iterator[dict[str, Any]]:
        """The batches of steps start, start + 1, ... in order; with workers > 0 they are drawn ahead in that
        many processes (the same batches: each is still a function of its step alone)."""
        if workers <= 0:
            step = start
            while True:
                yield self.batch(step)
                step += 1
        loader = torch.utils.data.DataLoader(
            _StepBatches(self, start), batch_size=None, num_workers=workers, prefetch_factor=4,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader


class _StepBatches(torch.utils.data.Dataset):
    """Item i = the batch of step start + i (a map-style view of a BatchStream for DataLoader workers)."""

    def __init__(self, stream: BatchStream, start: int):
        self.source, self.start = stream, start

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source.batch(self.start + i)
