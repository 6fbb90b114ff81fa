"""Where models come from: the bundled demo folder, a local folder, or a Hugging Face hub id.

Weights are safetensors only; pickle-based files (.bin, .pt, .ckpt, .pth) are refused, never opened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import HubOfflineError, ModelLoadError
from .files import atomic_path

DEMO_MODEL_NAME = "iris-nano-emoji"
FAST_MODEL_NAME = "iris-nano-emoji-fast"  # the demo model's distilled student: 1-4 steps, no guidance
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def demo_model_path(fast: bool = False) -> Path:
    """The bundled demo model folder (IRIS_DEMO_MODEL overrides it), or with `fast` its distilled student
    (IRIS_FAST_MODEL overrides that)."""
    env = os.environ.get("IRIS_FAST_MODEL" if fast else "IRIS_DEMO_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "assets" / "models" / (FAST_MODEL_NAME if fast else DEMO_MODEL_NAME)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model(path_or_id: str | os.PathLike | None) -> Path:
    """A local folder holding config.json for a folder path, hub id or None (the bundled demo). An empty or blank
    text means the demo too (`--model ""`, an unset variable): it was read as the current folder, "."."""
    if path_or_id is None or not str(path_or_id).strip():
        path = demo_model_path()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled demo model is missing at {path}; reinstall from a full checkout "
                "or pass a model folder / hub id"
            )
        return path
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; a model is a folder with config.json and *.safetensors")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json; it is not an IRIS model folder")
        return path
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return hub_snapshot(text)
    raise ModelLoadError(f"no model folder at {text!r}, and it is not a hub id of the form owner/name")


def network_errors() -> tuple[type[BaseException], ...]:
    """What a hub download raises when the network or the hub fails: OSError (requests' errors are
    OSErrors), the hub's HTTP and validation errors, and httpx's errors where the hub client uses httpx."""
    from huggingface_hub.errors import HfHubHTTPError

    kinds: list[type[BaseException]] = [OSError, ValueError, HfHubHTTPError]
    try:
        import httpx

        kinds.append(httpx.HTTPError)
    except ImportError:  # older hub clients use requests only
        pass
    return tuple(kinds)


def hub_snapshot(repo_id: str) -> Path:
    """Download (or find in the hub cache) a model repo; clear errors when offline or not found."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.md"],
                              local_files_only=hub_offline())
        )
    except LocalEntryNotFoundError as err:
        raise HubOfflineError(
            f"model {repo_id!r} is not in the local hub cache and the hub cannot be reached "
            "(offline or HF_HUB_OFFLINE=1); connect once to download it, or pass a local folder"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelLoadError(f"no model {repo_id!r} on the hub (or it is private)") from err
    except network_errors() as err:
        raise HubOfflineError(f"could not download {repo_id!r} from the hub: {type(err).__name__}: {err}") from err
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"hub repo {repo_id!r} has no config.json; it is not an IRIS model")
    return path


def hub_file(repo_id: str, filename: str, what: str) -> Path:
    """One file of a hub repo (cached); `what` names it in the error when offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=hub_offline()))
    except LocalEntryNotFoundError as err:
        raise HubOfflineError(
            f"{what} weights ({repo_id}/{filename}) are not in the hub cache and the hub is offline; "
            f"run once online (e.g. `huggingface-cli download {repo_id} {filename}`) or unset HF_HUB_OFFLINE"
        ) from err
    except network_errors() as err:
        raise HubOfflineError(f"could not fetch {what} weights from {repo_id}: {type(err).__name__}: {err}") from err


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> None:
    """Load a safetensors file into `module`, checking names, shapes, dtypes and values; refuses pickle files.

    A module built on the meta device (`IrisCore.from_config(empty=True)`) gets new tensors, assigned in
    place of its empty ones, and its derived buffers rebuilt (`init_derived`); a real one is copied into.
    Either way the file is opened once per LOAD_BLOCK_BYTES read, a block of rows at a time, casting while
    copying, so loading holds at most one block of the file mapped beside the model."""
    from safetensors import SafetensorError, safe_open

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(f"refusing to load {path.name}: pickle-based weights can run code; use safetensors")
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} is missing")
    own = module.state_dict(keep_vars=True)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            present = set(keys)
            missing = [k for k in own if k not in present]
            unexpected = [k for k in keys if k not in own]
            if strict and (missing or unexpected):
                detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
                raise ModelLoadError(f"{path.name} does not match the model config: {detail}")
            for key in keys:
                shape = tuple(f.get_slice(key).get_shape())
                if key in own and tuple(own[key].shape) != shape:
                    raise ModelLoadError(
                        f"{path.name}: tensor {key} has shape {shape}, config expects {tuple(own[key].shape)}"
                    )
                stored = f.get_slice(key).get_dtype()
                if key in own and own[key].is_floating_point() and stored not in _SAFETENSORS_FLOATS:
                    raise ModelLoadError(f"{path.name}: tensor {key} is stored as {stored}, not as floating point")
        loaded = {}
        with torch.no_grad(), _BlockReader(path) as reader:
            for key in keys:
                if key in own:
                    dest = own[key]
                    if dest.is_meta:
                        dest = torch.empty(dest.shape, dtype=dest.dtype)
                    reader.copy(dest, key)
                    loaded[key] = dest
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path.name} is not a valid safetensors file: {err}") from err
    if any(t.is_meta for t in own.values()):
        if missing:
            raise ModelLoadError(f"{path.name} does not hold {missing[0]}, and the model has no weights for it")
        module.load_state_dict(loaded, strict=strict, assign=True)
        for sub in module.modules():
            if hasattr(sub, "init_derived"):
                sub.init_derived()


_SAFETENSORS_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def stored_float_dtype(path: Path) -> torch.dtype | None:
    """The dtype of the floating tensors of a safetensors file (the first one's), or None if unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                dtype = _SAFETENSORS_FLOATS.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    except (SafetensorError, OSError, ValueError):
        return None  # load_weights reports the problem
    return None


LOAD_BLOCK_BYTES = 64 << 20  # of the file read per open: the pages it maps leave this process's RSS after


class _BlockReader:
    """Copies tensors out of a safetensors file a block of rows at a time, reopening the file after every
    LOAD_BLOCK_BYTES read, so the pages it touched leave this process's RSS again."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None
        self.read = 0

    def __enter__(self) -> _BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.file is not None:
            self.file.__exit__(None, None, None)
            self.file = None

    def _open(self):
        from safetensors import safe_open

        if self.file is None or self.read >= LOAD_BLOCK_BYTES:
            self._close()
            self.file = safe_open(str(self.path), framework="pt").__enter__()
            self.read = 0
        return self.file

    def copy(self, dest: torch.Tensor, key: str) -> None:
        """Copy tensor `key` into `dest` (same shape, any float dtype); refuses NaN or infinite values."""
        if dest.dim() == 0:
            dest.copy_(self._open().get_tensor(key))
        else:
            row_bytes = max(1, dest[0].numel() * dest.element_size())
            step = max(1, LOAD_BLOCK_BYTES // row_bytes)
            for start in range(0, dest.shape[0], step):
                dest[start : start + step].copy_(self._open().get_slice(key)[start : start + step])
                self.read += (min(start + step, dest.shape[0]) - start) * row_bytes
        if dest.is_floating_point() and not bool(torch.isfinite(dest).all()):
            raise ModelLoadError(f"{self.path.name}: tensor {key} holds NaN or infinite values")


def save_weights(module: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """Write `module`'s state dict as safetensors (optionally cast floating tensors, e.g. to fp16)."""
    from safetensors.torch import save_file

    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
