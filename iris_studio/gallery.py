"""The output folder: every result saved as a PNG with its parameters, plus an index of past results.

Layout:  <output dir>/YYYY-MM-DD/HHMMSS-<n>-<task>-<seed>.png  and  <output dir>/index.json.
The index is rewritten atomically (temp file + os.replace). A damaged index is set aside (index.json.damaged)
and rebuilt from the PNGs' own parameter chunks, so history is never lost to a bad write.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from iris.files import atomic_path

INDEX = "index.json"
APP_NAME = "iris-studio"
STALE_TEMP_SECONDS = 3600  # temp files (".<name>-*.png", ".index-*.json") older than this are left by killed writes


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
        """An entry from the index's JSON, or None. Lone surrogates (a "\\ud800" escape) become U+FFFD, so the
        index can always be written back as UTF-8; a time that is not a finite number becomes 0."""
        data = _valid_text(data)
        if not isinstance(data, dict) or not isinstance(data.get("file"), str):
            return None
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        seed = data.get("seed")
        return cls(
            file=data["file"],
            task=str(data.get("task") or params.get("task") or "generate"),
            prompt=str(data.get("prompt") or params.get("prompt") or ""),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            created=_time(data.get("created")),
            params=params,
        )


_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins proper pairs: any left are lone


def _valid_text(value: Any) -> Any:
    """`value` (parsed JSON) with every string made writable as UTF-8: lone surrogates replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    return value


def _time(value: Any) -> float:
    """A finite number of seconds, else 0 (an index may say NaN, Infinity or a 400-digit number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:24] or "image"


class Gallery:
    """Saves results and lists them, newest first. Thread-safe."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = (Path(folder).expanduser() if folder else default_output_dir()).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index_path = self.folder / INDEX
        self.warning: str | None = None
        self._lock = threading.Lock()
        self._remove_stale_temp_files()
        self._entries = self._load()

    # ------------------------------------------------------------------------------------------ safety
    def resolve(self, file: Any) -> Path | None:
        """The PNG that gallery entry `file` names, or None unless it is a regular `.png` file inside the
        output folder: no absolute paths, no "..", no symbolic link anywhere on the way, nothing outside."""
        if not isinstance(file, str) or not file or "\\" in file or "\x00" in file:
            return None
        rel = PurePosixPath(file)
        if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() != ".png" or len(rel.parts) > 4:
            return None
        path = self.folder
        try:
            for part in rel.parts:
                path = path / part
                if path.is_symlink():
                    return None
            if not path.is_file() or not path.resolve().is_relative_to(self.folder):
                return None
        except (OSError, ValueError):
            return None
        return path

    def _remove_stale_temp_files(self) -> None:
        """Delete temp files that writes killed half-way left behind (older than STALE_TEMP_SECONDS)."""
        now = time.time()
        for pattern in (".index-*.json", "*/.*.png"):  # iris.files.atomic_path's temp names
            for path in self.folder.glob(pattern):
                try:
                    if not path.is_symlink() and path.is_file() and now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                        path.unlink()
                except OSError:
                    pass

    # ------------------------------------------------------------------------------------------- index
    def _load(self) -> list[Entry]:
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return self._rebuild() if any(self.folder.glob("*/*.png")) else []
        except OSError as err:
            self.warning = f"gallery index unreadable ({err}); rebuilt from the images"
            return self._rebuild()
        try:
            data = json.loads(raw.decode("utf-8-sig"))  # undecodable bytes are damage too: kept aside, not lost
            items = data["entries"] if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ValueError("no entry list")
        except (UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as err:
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
        entries = [e for e in entries if self.resolve(e.file) is not None]
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
        """Entries from the PNGs in the folder (their parameter chunks), oldest first; temp files (.*) and
        the files in `skip` are left out."""
        from iris.pngmeta import read_params

        found = []
        for p in self.folder.glob("*/*.png"):
            rel = p.relative_to(self.folder).as_posix()
            if p.name.startswith(".") or rel in skip or self.resolve(rel) is None:
                continue
            try:
                found.append((p.stat().st_mtime, rel, p))
            except OSError:
                continue
        entries = []
        for mtime, rel, path in sorted(found):
            params = read_params(path) or {}
            seed = params.get("seed")
            entries.append(
                Entry(
                    rel,
                    str(params.get("task", "generate")),
                    str(params.get("prompt", "")),
                    seed if isinstance(seed, int) else None,
                    mtime,
                    params,
                )
            )
        return entries

    def _write(self, entries: list[Entry]) -> None:
        data = {"version": 1, "entries": [e.to_dict() for e in entries]}
        with atomic_path(self.index_path) as tmp:
            tmp.write_text(json.dumps(data, ensure_ascii=False, default=str), encoding="utf-8")

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
            try:
                self._write(self._entries)
            except OSError as err:  # the PNG is saved; the next start-up re-indexes it from its own chunk
                self.warning = f"saved {path.name}, but the gallery index could not be written ({err})"
            else:
                self.warning = None
        return path

    def delete(self, file: str) -> bool:
        """Delete entry `file` (relative to the folder): its PNG and its index line. False, touching nothing,
        unless `resolve` accepts it (a regular PNG inside the folder, reached without symbolic links)."""
        path = self.resolve(file)
        if path is None:
            return False
        with self._lock:
            path.unlink(missing_ok=True)
            self._entries = [e for e in self._entries if e.file != file]
            try:
                self._write(self._entries)
            except OSError as err:  # the PNG is gone; the next start-up re-indexes without it
                self.warning = f"deleted {path.name}, but the gallery index could not be written ({err})"
        return True

    def file_of(self, path: Any) -> str | None:
        """The entry name (relative to the folder) of an absolute `path` inside it, else None."""
        try:
            rel = Path(str(path)).resolve().relative_to(self.folder).as_posix()
        except (OSError, ValueError):
            return None
        return rel if self.resolve(rel) is not None else None

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Past results whose PNG is still a regular file inside the folder, newest first."""
        with self._lock:
            items = list(reversed(self._entries))
        items = [e for e in items if self.resolve(e.file) is not None]
        return items[:limit] if limit else items

    def path_of(self, entry: Entry) -> Path | None:
        """The entry's PNG, or None when it is gone or not a safe file inside the folder (see `resolve`)."""
        return self.resolve(entry.file)

    def __len__(self) -> int:
        return len(self._entries)
