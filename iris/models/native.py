"""Fused C kernels (`native.c`) for the generator's CPU inference, built on first use with the system C compiler.

At the demo's sizes the recurrent block's chain of ops (conv, gates, scan, output gate), the core's RMS norm with
its modulation, the GRFM merge and tanh-GELU are each several torch ops on tensors too small for torch to
thread, so eager mode pays a dispatch and a pass over memory per op. One kernel each does the same maths in one
pass, on OpenMP threads shared with torch.

`kernels()` gives the loaded library, or None when IRIS_NATIVE=0, there is no C compiler, the build fails, or a
kernel disagrees with torch on a first check. Callers then run their torch code, so nothing depends on the
kernels being there. The library is built once per source, flags, compiler and CPU (`-march=native`) and
cached under `<cache>/native/` (`iris.files.cache_root`). `status()` says which case holds.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-std=c99", "-shared", "-fPIC")
# tried in order: this CPU's vector instructions with OpenMP, which shares torch's runtime (the library needs
# libgomp.so.1, already loaded by torch); without OpenMP (one thread); without -march=native (a compiler that
# does not know it)
VARIANTS = (("-march=native", "-fopenmp"), ("-march=native",), ())
BUILD_TIMEOUT_S = 120.0
TOLERANCE = 1e-5  # largest difference from the torch code, relative to the output's scale, the check accepts

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not loaded yet"
_loaded = False

_P, _I, _C, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "iris_recurrent_conv": [_P, _I, _I, _I, _I, _I, _I, _C, _P, _P, _I, _I, _P, _C],
    "iris_lru_bidirectional": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _C, _I, _P, _C],
    "iris_rms_modulate": [_P, _I, _I, _I, _P, _P, _I, _F, _P, _C],
    "iris_gated_merge": [_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _I, _P, _C],
    "iris_gelu_tanh": [_P, _I, _P, _C],
}


def kernels() -> ctypes.CDLL | None:
    """The kernels' library, built and checked on the first call (thread-safe), or None (see `status`)."""
    global _lib, _status, _loaded
    if _loaded:
        return _lib
    with _lock:
        if not _loaded:
            _lib, _status = _load()
            _loaded = True
    return _lib


def status() -> str:
    """One line: whether the kernels are in use, and why not."""
    kernels()
    return _status


def compiler() -> str | None:
    """The C compiler to build with: $CC, else cc, gcc or clang on the PATH (None: none found)."""
    cc = os.environ.get("CC", "").strip()
    return shutil.which(cc) if cc else (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))


def _cpu_signature() -> str:
    """What `-march=native` depends on: the machine and, on Linux, the CPU's model and feature flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            parts += sorted({line.strip() for line in f if line.startswith(("model name", "flags", "Features"))})
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("IRIS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "native kernels off (IRIS_NATIVE=0): torch ops instead"
    cc = compiler()
    if cc is None:
        return None, "native kernels off: no C compiler (cc, gcc, clang or $CC) found; torch ops instead"
    failures = []
    for extra in VARIANTS:
        path = library_path(cc, extra)
        try:
            lib = _open_or_build(cc, path, extra)
        except (OSError, AttributeError, subprocess.SubprocessError) as err:
            failures.append(str(err))
            continue
        wrong = _self_check(lib)
        if wrong:
            return None, f"native kernels off: {wrong} disagrees with torch; torch ops instead"
        threads = "OpenMP threads" if "-fopenmp" in extra else "one thread"
        return lib, f"native kernels on, {threads} ({path})"
    return None, f"native kernels off: {failures[-1]}; torch ops instead"


def _open_or_build(cc: str, path: Path, extra: tuple[str, ...]) -> ctypes.CDLL:
    """The cached library at `path`, built first when it is missing or does not load (damaged, truncated)."""
    if path.is_file():
        try:
            return _open(path)
        except (OSError, AttributeError):
            pass
    _build(cc, path, extra)
    return _open(path)


def library_path(cc: str, extra: tuple[str, ...] = VARIANTS[0]) -> Path:
    """Where the library built by `cc` with `FLAGS + extra` from this source for this CPU is cached."""
    from ..files import cache_root

    parts = [SOURCE.read_bytes(), " ".join(FLAGS + extra).encode(), cc.encode(), _cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return cache_root() / "native" / f"iris-kernels-{key}.so"


def _build(cc: str, path: Path, extra: tuple[str, ...]) -> None:
    """Compile `SOURCE` into the shared library `path` (written atomically); OSError with the compiler's last line."""
    from ..files import atomic_path

    with atomic_path(path) as tmp:
        try:
            done = subprocess.run([cc, *FLAGS, *extra, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise OSError(f"building them with {Path(cc).name} took over {BUILD_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"building them with {Path(cc).name} failed: {detail}")


def _open(path: Path) -> ctypes.CDLL:
    """Load the library and declare its functions' C signatures."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise OSError(f"cannot load {path.name}: {err}") from None
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may replace torch ops on `tensors`: fp32 CPU tensors with a contiguous last axis,
    at inference (no autograd, not traced, compiled or exported), and the library built."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:  # (a loop, not any(): this runs several times per layer)
        if not t.is_cpu or t.dtype is not torch.float32 or t.stride(-1) != 1:
            return False
    return (_lib if _loaded else kernels()) is not None


def _grid_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, row, column) strides of a [B, h, w, C] view."""
    return t.stride(0), t.stride(1), t.stride(2)


def recurrent_conv(r: torch.Tensor, column_major: bool, taps: torch.Tensor, bias: torch.Tensor,
                   lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """The depthwise causal conv of r [B, h, w, W] read in scan order, forward and reversed: [2 B, h w, W].
    taps [K, W] (tap k weighs the token K - 1 - k places back), bias [W]."""
    lib = lib if lib is not None else kernels()
    b, h, w, width = r.shape
    taps, bias = taps.contiguous(), bias.contiguous()
    out = torch.empty(2 * b, h * w, width)
    lib.iris_recurrent_conv(r.data_ptr(), b, h, w, *_grid_strides(r), int(column_major), taps.data_ptr(),
                            bias.data_ptr(), taps.shape[0], width, out.data_ptr(), torch.get_num_threads())
    return out


def lru_bidirectional(gates: torch.Tensor, x: torch.Tensor, log_rate: torch.Tensor, y: torch.Tensor,
                      column_major: bool, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """The recurrent block's RG-LRU, both directions, times its output gate: gelu_tanh(y) (h_fwd + h_rev) / 2.

    gates [2 B, N, 2 W] (before the sigmoid), x [2 B, N, W] (the conv's output, `recurrent_conv`), log_rate [W],
    y [B, h, w, W] -> [B, h, w, W] contiguous (row-major, whatever the scan order).
    """
    lib = lib if lib is not None else kernels()
    b, h, w, width = y.shape
    gates, x, log_rate = gates.contiguous(), x.contiguous(), log_rate.contiguous()
    out = torch.empty(b, h, w, width)
    lib.iris_lru_bidirectional(gates.data_ptr(), x.data_ptr(), log_rate.data_ptr(), y.data_ptr(), b, h, w,
                               *_grid_strides(y), int(column_major), width, out.data_ptr(), torch.get_num_threads())
    return out


def rms_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                 lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """shift + RMSNorm(x) * scale: x [B, ..., D] contiguous, shift and scale [B, 1, ..., 1, D] (any batch
    stride, contiguous channels; scale already 1 + the modulation's scale) -> like x."""
    lib = lib if lib is not None else kernels()
    b, d = x.shape[0], x.shape[-1]
    out = torch.empty_like(x)
    lib.iris_rms_modulate(x.data_ptr(), b, x.numel() // (b * d), d, shift.data_ptr(), scale.data_ptr(),
                          shift.stride(0), eps, out.data_ptr(), torch.get_num_threads())
    return out


def gated_merge(gate: torch.Tensor, fourier: torch.Tensor, recurrent: torch.Tensor, spatial: torch.Tensor,
                alpha: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """The GRFM's merge r + sigmoid(gate) (f - r) + alpha s: gate [B, h, w, D] (any view with contiguous
    channels, such as a slice of the fused projection), f, r and s [B, h, w, D] contiguous, alpha [D]."""
    lib = lib if lib is not None else kernels()
    b, h, w, d = gate.shape
    out = torch.empty(b, h, w, d)
    lib.iris_gated_merge(gate.data_ptr(), b, h, w, *_grid_strides(gate), fourier.data_ptr(), recurrent.data_ptr(),
                         spatial.data_ptr(), alpha.contiguous().data_ptr(), d, out.data_ptr(), torch.get_num_threads())
    return out


def gelu_tanh(x: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """tanh-GELU of a contiguous x, as x sigmoid(x (a + b x^2)) (`iris.models.layers.gelu_tanh`)."""
    lib = lib if lib is not None else kernels()
    out = torch.empty_like(x)
    lib.iris_gelu_tanh(x.data_ptr(), x.numel(), out.data_ptr(), torch.get_num_threads())
    return out


def _self_check(lib: ctypes.CDLL) -> str | None:
    """The name of the first kernel whose output differs from torch's on a small random case, else None."""
    gelu_tanh_torch = lambda t: torch.nn.functional.gelu(t, approximate="tanh")
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    with torch.no_grad():
        b, h, w, width, k = 2, 3, 5, 24, 4
        for column_major in (False, True):
            grid = rand(b, h, w, 2 * width)
            y, r = grid[..., :width], grid[..., width:]  # strided views, like the block's projection
            seq = (y.transpose(1, 2) if column_major else y).reshape(b, h * w, width)
            rs = (r.transpose(1, 2) if column_major else r).reshape(b, h * w, width)
            taps, bias = rand(k, width), rand(width)
            both = torch.cat([rs, rs.flip(1)])
            want = bias + sum(taps[k - 1 - lag] * _delayed(both, lag) for lag in range(k))
            got = recurrent_conv(r, column_major, taps, bias, lib)
            if not _close(got, want):
                return "iris_recurrent_conv"
            gates, log_rate = 3 * rand(2 * b, h * w, 2 * width), -8 * torch.rand(width, generator=g)
            ga, gx = torch.sigmoid(gates.double()).chunk(2, dim=-1)  # (in float64: 1 - a^2 cancels near a = 1)
            log_a = ga * log_rate.double()
            inputs = torch.sqrt((-torch.expm1(2 * log_a)).clamp_min(1e-12)) * gx * want.double()
            state, states = torch.zeros(2 * b, width, dtype=torch.float64), []
            for t in range(h * w):
                state = log_a[:, t].exp() * state + inputs[:, t]
                states.append(state)
            scanned = torch.stack(states, dim=1)
            gated = gelu_tanh_torch(seq.double()) * 0.5 * (scanned[:b] + scanned[b:].flip(1))  # tokens in scan order
            want_out = gated.view(b, w, h, width).transpose(1, 2) if column_major else gated.view(b, h, w, width)
            if not _close(lru_bidirectional(gates, want, log_rate, y, column_major, lib).double(), want_out):
                return "iris_lru_bidirectional"
        x, mods = rand(b, h, w, width), rand(b, 3, 1, 1, width)
        shift, scale = mods[:, 0], mods[:, 1]
        want = shift + x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale
        if not _close(rms_modulate(x, shift, scale, 1e-6, lib), want):
            return "iris_rms_modulate"
        gate, parts, alpha = rand(b, h, w, 2 * width)[..., :width], rand(3, b, h, w, width), rand(width)
        f, r, s = parts.unbind(0)
        if not _close(gated_merge(gate, f, r, s, alpha, lib), r + torch.sigmoid(gate) * (f - r) + alpha * s):
            return "iris_gated_merge"
        hidden = 4 * rand(3, 5000)  # more than one chunk of the kernel
        if not _close(gelu_tanh(hidden, lib).double(), gelu_tanh_torch(hidden.double())):
            return "iris_gelu_tanh"
    return None


def _delayed(x: torch.Tensor, lag: int) -> torch.Tensor:
    """x [B, N, C] moved `lag` tokens later along N, zeros first."""
    return torch.cat([x.new_zeros(x.shape[0], lag, x.shape[2]), x[:, : x.shape[1] - lag]], dim=1) if lag else x


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= TOLERANCE * (
        1.0 + float(want.abs().max()))
