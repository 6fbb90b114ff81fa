"""The bad-input matrix: every parameter of every task, one bad value at a time, through the engine, the CLI and
the studio's HTTP API. Counts what came back: a result, a clear one-line message, or a failure (a traceback, a
generic "something went wrong", a multi-line message).

    python benchmarks/bad_input_matrix.py                 # all three layers (about 10 minutes on 2 cores)
    python benchmarks/bad_input_matrix.py --layers engine,cli

The engine and the CLI run the random-weight nano variant in this process; the API layer starts a studio
(`python app.py`) on a random-weight model folder and drives it with gradio_client. The studio's console is
checked for tracebacks too. Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENERIC = ("something went wrong", "could not preprocess", "traceback", "unexpected error", "exception")

# values that are wrong for a number, a text, a choice or a file, in every shape a caller can send
NUMBERS = [None, "", "abc", "12abc", "nan", "inf", "-inf", float("nan"), float("inf"), -float("inf"), -1, 0, 10**30,
           2**64, 1e30, -1e30, True, [1], {"a": 1}, "\ud800", 2.5, "1e400", " 3 "]
TEXTS = [None, 5, 2.5, "", "\ud800", "a\ud800b", "x" * 200_000, "\x00", "\u202e\u0301", "😀" * 500, ["a"],
         {"a": 1}, True, "\r\n\t", "a" * 5000]
CHOICES = [None, "", "bogus", 5, ["euler"], "\ud800", "EULER ", {"a": 1}]


def classify(outcome: BaseException | None, expected: type | tuple = ()) -> tuple[str, str]:
    """("ok", "") for a result; ("message", text) for an expected error with a clear one-line text; otherwise
    ("traceback" | "generic" | "multi-line", text)."""
    if outcome is None:
        return "ok", ""
    text = str(outcome).strip()
    if expected and not isinstance(outcome, expected):
        return "traceback", f"{type(outcome).__name__}: {text}"[:300]
    if "\n" in text:
        return "multi-line", text[:300]
    if not text or any(g in text.lower() for g in GENERIC):
        return "generic", text[:300]
    return "message", text


def run_case(fn: Callable[[], Any], expected: type | tuple) -> tuple[str, str]:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the point is to see everything
        if isinstance(err, KeyboardInterrupt):
            raise
        return classify(err, expected)
    return classify(None)


# --------------------------------------------------------------------------------------------------- files
def bad_files(folder: Path) -> dict[str, Any]:
    """Broken image inputs: paths, bytes and arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    data = png.getvalue()
    files = {"truncated.png": data[: len(data) // 2], "empty.png": b"", "text.png": b"hello, not an image",
             "header-only.png": data[:33]}
    bomb = bytearray(data[:33])
    bomb[16:24] = (60_000).to_bytes(4, "big") + (60_000).to_bytes(4, "big")  # IHDR claims 60000 x 60000
    files["bomb.png"] = bytes(bomb)
    out: dict[str, Any] = {}
    for name, content in files.items():
        (folder / name).write_bytes(content)
        out[name] = folder / name
    (folder / "a-folder.png").mkdir(exist_ok=True)
    out["a folder"] = folder / "a-folder.png"
    out["missing path"] = folder / "missing.png"
    out["garbage bytes"] = b"\x89PNG\r\n\x1a\nbroken"
    out["NaN array"] = np.full((32, 32, 3), np.nan, dtype=np.float32)
    out["object array"] = np.array([[object()] * 4] * 4, dtype=object)
    out["7 channels"] = np.zeros((16, 16, 7), dtype=np.uint8)
    out["empty array"] = np.zeros((0, 0, 3), dtype=np.uint8)
    out["1-d array"] = np.zeros(12, dtype=np.uint8)
    out["None"] = None
    out["a number"] = 5
    out["a string"] = "not a path \ud800"
    return out


def good_image(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8))


def good_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


# -------------------------------------------------------------------------------------------------- engine
def engine_cases(pipe, folder: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(name, call) for every task x parameter x bad value, other parameters valid and tiny."""
    fast = dict(steps=1, iterations=1, guidance=2.0, seed=1)
    image, mask = good_image(), good_mask()
    tasks: dict[str, tuple[Callable, dict[str, Any]]] = {
        "generate": (pipe.generate, dict(prompt="x", width=32, height=32, **fast)),
        "edit": (pipe.edit, dict(image=image, prompt="x", strength=0.5, **fast)),
        "inpaint": (pipe.inpaint, dict(image=image, mask=mask, prompt="x", **fast)),
        "upscale": (pipe.upscale, dict(image=good_image(32), scale=2, **fast)),
        "control": (pipe.control, dict(control_image=image, prompt="x", kind="canny", **fast)),
    }
    numbers = {"steps", "iterations", "guidance", "seed", "width", "height", "strength", "scale", "mask_blur",
               "padding", "weight", "start", "end", "shift", "exit_threshold", "num_images", "tile"}
    texts = {"prompt", "negative_prompt"}
    choices = {"sampler", "kind"}
    images = {"image", "mask", "control_image"}
    files = bad_files(folder)
    extra = {"generate": ["negative_prompt", "sampler", "shift", "exit_threshold", "num_images"],
             "edit": ["negative_prompt", "sampler"], "inpaint": ["mask_blur", "padding", "masked_only"],
             "upscale": ["strength", "tile", "prompt"], "control": ["weight", "start", "end", "width", "height"]}
    for task, (method, base) in tasks.items():
        for param in [*base, *extra[task]]:
            if param in numbers or param == "masked_only":
                values = NUMBERS
            elif param in texts:
                values = TEXTS
            elif param in choices:
                values = CHOICES
            elif param in images:
                values = list(files.values())
            else:
                continue
            for i, value in enumerate(values):
                kwargs = {**base, param: value}
                yield f"{task}.{param}[{i}]={_short(value)}", lambda m=method, k=kwargs: m(**k)
        # masks of another size, and a mask with nothing painted
        if task == "inpaint":
            yield "inpaint.mask=other size", lambda: pipe.inpaint(image, good_mask(48), "x", **fast)
            yield "inpaint.mask=empty", lambda: pipe.inpaint(image, Image.new("L", (64, 64), 0), "x", **fast)


def _short(value: Any) -> str:
    text = type(value).__name__ if isinstance(value, np.ndarray | bytes) else repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def run_engine(counts: Counter, failures: list[str], verbose: bool) -> None:
    from iris import IrisPipeline
    from iris.errors import IrisError

    pipe = IrisPipeline.from_variant("nano")
    with tempfile.TemporaryDirectory() as tmp:
        for name, call in engine_cases(pipe, Path(tmp)):
            kind, text = run_case(call, IrisError)
            counts[f"engine {kind}"] += 1
            if kind not in ("ok", "message"):
                failures.append(f"engine {name}: {kind}: {text}")
            elif verbose:
                print(f"engine {name}: {kind} {text[:100]}")


# ----------------------------------------------------------------------------------------------------- CLI
def cli_cases(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """(name, argv) for the iris command: every task's flags with bad values, bad files, bad models."""
    good_image(64).save(folder / "in.png")
    good_mask(64).save(folder / "mask.png")
    files = {k: str(v) for k, v in bad_files(folder / "bad").items() if isinstance(v, Path)}
    out = str(folder / "out.png")
    base = ["--model", "nano", "--steps", "1", "--iterations", "1", "-q", "-o", out]
    tasks = {"generate": ["generate", "x", "--width", "32", "--height", "32"],
             "edit": ["edit", str(folder / "in.png"), "x"],
             "inpaint": ["inpaint", str(folder / "in.png"), str(folder / "mask.png"), "x"],
             "upscale": ["upscale", str(folder / "in.png")],
             "control": ["control", str(folder / "in.png"), "x"]}
    bad_numbers = ["abc", "nan", "inf", "-1", "0", "1e400", "99999999999999999999999", "\udcff", ""]
    flags = ["--steps", "--iterations", "--guidance", "--seed", "--exit-threshold"]
    for task, argv in tasks.items():
        for flag in flags + {"generate": ["--width", "--height"], "edit": ["--strength"],
                             "upscale": ["--scale", "--strength"], "control": ["--weight"]}.get(task, []):
            for value in bad_numbers:
                yield f"{task} {flag} {value!r}", [*argv, *base, flag, value]
        for value in ["meta", "garbage", "cuda:99"]:
            yield f"{task} --device {value}", [*argv, *base, "--device", value]
        for value in ["/no/such/model", str(folder), "../../etc"]:
            yield f"{task} --model {value}", [*argv, "--steps", "1", "-q", "-o", out, "--model", value]
        yield f"{task} -o into a missing folder", [*argv, *base[:-1], str(folder / "no" / "dir" / "x.png")]
        yield f"{task} -o a folder", [*argv, *base[:-1], str(folder)]
        if task != "generate":
            for name, path in files.items():
                args = list(argv)
                args[1] = path
                yield f"{task} image={name}", [*args, *base]
    for prompt in ["", "\udcff\udcfe", "x" * 200_000, "\x00"]:
        yield f"generate prompt {prompt[:8]!r}", ["generate", prompt, "--width", "32", "--height", "32", *base]
    yield "info of a missing model", ["info", "--model", "/no/such/model"]


def run_cli(counts: Counter, failures: list[str], verbose: bool) -> None:
    from iris.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in cli_cases(Path(tmp)):
            err, code, escaped = io.StringIO(), None, None
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as exit_:
                    code = exit_.code
                except BaseException as exc:  # noqa: BLE001
                    escaped = exc
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            if escaped is not None or any("Traceback" in line for line in lines):
                kind, text = "traceback", repr(escaped) if escaped else err.getvalue()[-300:]
            elif code in (0, None):
                kind, text = "ok", ""
            else:  # argparse prints its usage line first; the message is the last line
                last = lines[-1] if lines else ""
                kind, text = classify(Exception(last))
                if not last.startswith(("iris", "usage")):
                    kind = "generic"
            counts[f"cli {kind}"] += 1
            if kind not in ("ok", "message"):
                failures.append(f"cli {name}: {kind}: {text}")
            elif verbose:
                print(f"cli {name}: {kind} {text[:100]}")


# ----------------------------------------------------------------------------------------------------- API
def api_cases(client, folder: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, api_name, kwargs) for every named endpoint x parameter x bad value."""
    from gradio_client import handle_file

    good_image(64).save(folder / "in.png")
    good_mask(64).save(folder / "mask.png")
    png = handle_file(str(folder / "in.png"))
    editor = {"background": png, "layers": [], "composite": png}
    broken = {k: handle_file(str(v)) for k, v in bad_files(folder / "bad").items()
              if isinstance(v, Path) and v.is_file()}
    files = [None, "", "/etc/passwd", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 5, [1],
             {"background": None, "layers": []}, *broken.values()]
    base = {"prompt": "x", "seed": 1, "steps": 1, "iterations": 1, "width": 64, "height": 64, "guidance": 2.0,
            "grid_iterations": "1,2", "grid_steps": "1", "image": png, "mask": handle_file(str(folder / "mask.png")),
            "control_image": editor, "png": png, "tile": 512}
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    order = sorted(info, key=lambda n: n in ("/load_model", "/mode"))  # model changes last
    for api in order:
        params = info[api]["parameters"]
        if api == "/inpaint":
            base_kw = {**{p["parameter_name"]: base.get(p["parameter_name"], p.get("parameter_default"))
                          for p in params}, "image": editor}
        else:
            base_kw = {p["parameter_name"]: base.get(p["parameter_name"], p.get("parameter_default")) for p in params}
        for p in params:
            name, kind = p["parameter_name"], p["python_type"]["type"]
            if "filepath" in kind or name in ("image", "mask", "control_image", "png"):
                values = files
            elif kind.startswith("Literal"):
                values = CHOICES
            elif kind == "str":
                values = TEXTS[:-1]
            else:
                values = NUMBERS
            for i, value in enumerate(values):
                yield f"{api} {name}[{i}]={_short(value)}", api, {**base_kw, name: value}


# a client closing its event stream while the server still writes (gradio_client does, between calls):
# transport noise that uvicorn logs with a traceback, not an answer to any input
DISCONNECTS = {"ClientDisconnect", "ClosedResourceError", "EndOfStream", "BrokenResourceError", "LocalProtocolError",
               "ConnectionResetError", "BrokenPipeError", "CancelledError"}


def console_tracebacks(log: str) -> list[str]:
    """The exception line ending each traceback in a console log."""
    ends = []
    for chunk in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in chunk.splitlines() if line.strip()]
        last = next((line.strip() for line in lines if line and not line.startswith((" ", "\t"))), "?")
        ends.append(last)
    return ends


def run_api(counts: Counter, failures: list[str], verbose: bool, keep_log: str = "") -> None:
    from gradio_client import Client

    sys.path.insert(0, str(ROOT / "tests"))
    from test_studio_e2e import StudioProcess, make_test_model

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "config").mkdir()
        (base / "config" / "settings.json").write_text(json.dumps({"preview_interval_ms": 1000}))
        studio = StudioProcess(make_test_model(base / "model"), base / "config", base / "out", base / "studio.log")
        try:
            client = Client(studio.url, verbose=False)
            for name, api, kwargs in api_cases(client, base):
                try:
                    client.predict(**kwargs, api_name=api)
                    kind, text = "ok", ""
                except Exception as err:  # noqa: BLE001 - gradio_client's AppError carries the message
                    kind, text = classify(err)
                counts[f"api {kind}"] += 1
                if kind not in ("ok", "message"):
                    failures.append(f"api {name}: {kind}: {text}")
                elif verbose:
                    print(f"api {name}: {kind} {text[:100]}")
        finally:
            studio.stop()
        log = (base / "studio.log").read_text(errors="replace")
        if keep_log:
            Path(keep_log).write_text(log)
        ends = console_tracebacks(log)
        transport = [e for e in ends if e.split(":")[0].split(".")[-1] in DISCONNECTS]
        counts["api console tracebacks"] += len(ends) - len(transport)
        counts["api console disconnect tracebacks (not counted)"] += len(transport)
        if len(ends) > len(transport):
            failures.append(f"api: {len(ends) - len(transport)} tracebacks in the studio's console, ending: "
                            + " | ".join(e for e in ends if e not in transport)[:2000])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="engine,cli,api")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every case")
    args = ap.parse_args()
    counts: Counter = Counter()
    failures: list[str] = []
    runners = {"engine": run_engine, "cli": run_cli, "api": run_api}
    for layer in args.layers.split(","):
        t0 = time.perf_counter()
        runners[layer](counts, failures, args.verbose)
        print(f"{layer}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    total = sum(v for k, v in counts.items() if "tracebacks" not in k)
    print(f"{total} cases")
    for key in sorted(counts):
        print(f"  {key}: {counts[key]}")
    for line in failures:
        print("FAIL", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["classify", "engine_cases", "cli_cases", "api_cases"]
