"""The output folder: every result saved as a PNG with its parameters, plus an index of past results.

Layout:  <output dir>/YYYY-MM-DD/HHMMSS-<n>-<task>-<seed>.png  and  <output dir>/index.json.
The index is rewritten atomically (temp file + os.replace). A damaged index is set aside (index.json.damaged)
and rebuilt from the PNGs' own parameter chunks, so history is never lost to a bad write.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX = "index.json"
APP_NAME = "iris-studio"


def default_output_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / "outputs"


@dataclass
class Entry:
    """One past result."""

    file: str  # path relative to the output folder, with forward slashes
    task: str
    prompt: str
    seed: int | None
    created: float
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "task": self.task,
            "prompt": self.prompt,
            "seed": self.seed,
            "created": self.created,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Entry | None:
        if not isinstance(data, dict) or not isinstance(data.get("file"), str):
            return None
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        seed = data.get("seed")
        return cls(
            file=data["file"],
            task=str(data.get("task") or params.get("task") or "generate"),
            prompt=str(data.get("prompt") or params.get("prompt") or ""),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            created=float(data["created"]) if isinstance(data.get("created"), (int, float)) else 0.0,
            params=params,
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:24] or "image"


class Gallery:
    """Saves results and lists them, newest first. Thread-safe."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).expanduser().resolve() if folder else default_output_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index_path = self.folder / INDEX
        self.warning: str | None = None
        self._lock = threading.Lock()
        self._entries = self._load()

    # ------------------------------------------------------------------------------------------- index
    def _load(self) -> list[Entry]:
        try:
            raw = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._rebuild() if any(self.folder.glob("*/*.png")) else []
        except (OSError, UnicodeDecodeError) as err:
            self.warning = f"gallery index unreadable ({err}); rebuilt from the images"
            return self._rebuild()
        try:
            data = json.loads(raw)
            items = data["entries"] if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ValueError("no entry list")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            damaged = self.index_path.with_name(INDEX + ".damaged")
            try:
                os.replace(self.index_path, damaged)
            except OSError:
                pass
            self.warning = (
                f"gallery index was damaged ({err}); kept it as {damaged.name} and rebuilt it from the images"
            )
            entries = self._rebuild()
            self._write(entries)
            return entries
        entries = [e for e in (Entry.from_dict(item) for item in items) if e is not None]
        entries = [e for e in entries if (self.folder / e.file).is_file()]
        # an image saved just before a crash (killed between the PNG's rename and the index's) is not lost
        unindexed = self._rebuild(skip={e.file for e in entries})
        if unindexed:
            entries = sorted(entries + unindexed, key=lambda e: e.created)
            try:
                self._write(entries)
            except OSError:
                pass
        return entries

    def _rebuild(self, skip: set[str] | frozenset[str] = frozenset()) -> list[Entry]:
        """Entries from the PNGs in the folder (their parameter chunks), oldest first; temp files (.tmp-*) and
        the files in `skip` are left out."""
        from iris.pngmeta import read_params

        entries = []
        paths = [p for p in self.folder.glob("*/*.png")
                 if not p.name.startswith(".") and p.relative_to(self.folder).as_posix() not in skip]
        for path in sorted(paths, key=lambda p: p.stat().st_mtime):
            params = read_params(path) or {}
            seed = params.get("seed")
            entries.append(
                Entry(
                    path.relative_to(self.folder).as_posix(),
                    str(params.get("task", "generate")),
                    str(params.get("prompt", "")),
                    seed if isinstance(seed, int) else None,
                    path.stat().st_mtime,
                    params,
                )
            )
        return entries

    def _write(self, entries: list[Entry]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(
                    {"version": 1, "entries": [e.to_dict() for e in entries]},
                    f,
                    ensure_ascii=False,
                    default=str,
                )
            os.replace(tmp, self.index_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -------------------------------------------------------------------------------------------- API
    def add(self, image: Any, params: dict[str, Any]) -> Path:
        """Save `image` (PIL) with `params` in its PNG text chunk and index it; returns the path."""
        from iris.pngmeta import save_png

        now = time.time()
        task = str(params.get("task", "generate"))
        seed = params.get("seed")
        with self._lock:
            day = self.folder / time.strftime("%Y-%m-%d", time.localtime(now))
            stem = f"{time.strftime('%H%M%S', time.localtime(now))}-{len(self._entries):05d}-{task}-{seed}"
            path = day / f"{stem}-{_slug(str(params.get('prompt', '')))}.png"
            n = 1
            while path.exists():
                path = day / f"{stem}-{n}.png"
                n += 1
            save_png(image, path, params)
            entry = Entry(
                path.relative_to(self.folder).as_posix(),
                task,
                str(params.get("prompt", "")),
                seed if isinstance(seed, int) else None,
                now,
                dict(params),
            )
            self._entries.append(entry)
            self._write(self._entries)
        return path

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Past results, newest first."""
        with self._lock:
            items = list(reversed(self._entries))
        return items[:limit] if limit else items

    def path_of(self, entry: Entry) -> Path:
        return self.folder / entry.file

    def __len__(self) -> int:
        return len(self._entries)
