"""IRIS Studio under load and exposure: one studio process (nano, random weights), 20 concurrent gradio_client
sessions, then what it serves and to whom: bound to 127.0.0.1, files only from the output folder, uploads
size-limited, a warning when exposed without --auth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_studio_e2e import ROOT, StudioProcess, free_port, make_test_model  # same folder

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

SESSIONS = 20
FAST = dict(negative_prompt="", guidance=2.0, steps=1, iterations=1, sampler="euler", width=64, height=64)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("load")
    config = base / "config"
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({"preview_interval_ms": 1000, "preview_cost": 0.1}))
    model = make_test_model(base / "model")
    app = StudioProcess(model, config, base / "outputs", base / "studio.log")
    yield app, base
    app.stop()


# -------------------------------------------------------------------------------------------------- load
def run_sessions(url: str, n: int, prefix: str) -> list[tuple[str, object]]:
    """n threads, each with its own Client, all submitting one /generate at once. ('ok', path) or ('error', exc)."""
    clients: list[Client | None] = [None] * n
    outcomes: list[tuple[str, object]] = [("missing", None)] * n
    barrier = threading.Barrier(n)

    def session(i: int) -> None:
        try:
            clients[i] = Client(url, verbose=False)
            barrier.wait(timeout=120)
            _, status, result, params = clients[i].predict(prompt=f"{prefix} {i}", seed=i, **FAST,
                                                           api_name="/generate")
            outcomes[i] = ("ok", (result, params))
        except Exception as err:  # noqa: BLE001 - every failure is checked below
            outcomes[i] = ("error", err)

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a session hung"
    return outcomes


@pytest.mark.slow  # a multi-process run
def test_twenty_concurrent_sessions_complete_or_get_queue_full(studio):
    app, _ = studio
    Client(app.url, verbose=False).predict(prompt="warm", seed=0, **FAST, api_name="/generate")
    rss_before = rss_mb(app.proc.pid)
    start = time.perf_counter()
    outcomes = run_sessions(app.url, SESSIONS, "load")
    elapsed = time.perf_counter() - start
    done = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] == "error"]
    for _, err in refused:
        assert "queue" in str(err).lower(), f"not a queue-full answer: {type(err).__name__}: {err}"
    for _, (result, params) in done:
        assert Path(result).is_file() and params["steps"] == 1 and (params["width"], params["height"]) == (64, 64)
    assert len(done) >= 1
    assert app.proc.poll() is None, "the server died"
    rss_after = rss_mb(app.proc.pid)
    print(f"\n{SESSIONS} sessions in {elapsed:.1f}s: {len(done)} completed, {len(refused)} queue-full; "
          f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    assert rss_after < 2 * rss_before + 300
    # still serving
    _, status, result, params = Client(app.url, verbose=False).predict(prompt="after the load", seed=99, **FAST,
                                                                       api_name="/generate")
    assert Path(result).is_file() and params["prompt"] == "after the load"
    assert 'data-state="done"' in status


@pytest.mark.slow  # a multi-process run
def test_more_sessions_than_the_queue_holds_get_a_clear_answer(studio):
    """30 at once: all fit in the queue (64); any refused (a queue full when they arrive) are told so."""
    app, _ = studio
    outcomes = run_sessions(app.url, 30, "burst")
    for kind, value in outcomes:
        assert kind in ("ok", "error")
        if kind == "error":
            assert "queue" in str(value).lower(), f"{type(value).__name__}: {value}"
    errors = [str(v) for k, v in outcomes if k == "error"]
    print(f"\n30 sessions: {sum(k == 'ok' for k, _ in outcomes)} completed, {len(errors)} queue-full "
          f"({errors[0][:120] if errors else '-'!r})")
    assert app.proc.poll() is None
    status, _ = get(app.url)
    assert status == 200


# ---------------------------------------------------------------------------------------------- exposure
def test_bound_to_loopback_only(studio):
    app, _ = studio
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout if _has("ss") else ""
    if out:
        local = [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{app.port}")]
        assert local and all(addr == f"127.0.0.1:{app.port}" for addr in local), local
    else:  # no ss: /proc/net/tcp lists listening sockets (state 0A) as hex ip:port
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]
        local = [r.split()[1] for r in rows if r.split()[3] == "0A" and r.split()[1].endswith(f":{app.port:04X}")]
        assert local == [f"0100007F:{app.port:04X}"], local
    # and from a non-loopback address of this machine the port is closed
    import socket

    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    addresses = {a for a in addresses if not a.startswith("127.")}
    for address in addresses:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((address, app.port))


def _has(cmd: str) -> bool:
    from shutil import which

    return which(cmd) is not None


def test_files_are_served_only_from_the_output_folder(studio):
    app, base = studio
    client = Client(app.url, verbose=False)
    _, _, result, _ = client.predict(prompt="served", seed=3, **FAST, api_name="/generate")
    listing = client.predict(api_name="/gallery")
    saved = Path(listing["folder"]) / listing["entries"][0]["file"]
    assert saved.is_file()
    # control: the output folder is served through the file route
    status, body = get(app.url + "gradio_api/file=" + urllib.parse.quote(str(saved)))
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"

    passwd = Path("/etc/passwd").read_bytes()[:64]
    model_config = (base / "model" / "config.json").read_bytes()
    settings_file = (base / "config" / "settings.json").read_bytes()
    out = str(Path(listing["folder"]))
    secrets = {
        "/etc/passwd": passwd,
        str(base / "model" / "config.json"): model_config,
        str(base / "config" / "settings.json"): settings_file,
    }
    probes = []
    for target in secrets:
        for prefix in ("gradio_api/file=", "file=", "gradio_api/file/", "gradio_api/files/"):
            probes.append((prefix + target, target))
            probes.append((prefix + urllib.parse.quote(target, safe=""), target))
        rel = os.path.relpath(target, out)
        probes.append(("gradio_api/file=" + out + "/" + rel, target))
        probes.append(("gradio_api/file=" + out + "/" + rel.replace("/", "%2F"), target))
        probes.append(("gradio_api/file=" + urllib.parse.quote(out + "/" + rel, safe=""), target))
    probes.append(("gradio_api/file=" + out + "/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd"))
    probes.append(("gradio_api/file=../../../../../../etc/passwd", "/etc/passwd"))
    probes.append(("gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"))
    probes.append(("static/..%2F..%2F..%2F..%2F..%2F..%2Fetc/passwd", "/etc/passwd"))
    probes.append(("assets/..%2F..%2F..%2F..%2F..%2F..%2Fetc/passwd", "/etc/passwd"))
    leaked = []
    for path, target in probes:
        status, body = get(app.url + path)
        if status == 200 and secrets[target].strip()[:40] in body:
            leaked.append(path)
    assert not leaked, leaked
    assert app.proc.poll() is None
    assert "Traceback" not in app.log.read_text()


def test_uploads_over_the_limit_are_rejected(studio):
    import httpx

    app, _ = studio
    small = httpx.post(app.url + "gradio_api/upload", files={"files": ("ok.png", b"\x89PNG" + b"0" * 1000)},
                       timeout=60)
    assert small.status_code == 200
    big = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.png", b"\x89PNG" + b"0" * (26 << 20))},
                     timeout=120)
    assert big.status_code in (400, 413), (big.status_code, big.text[:200])
    assert "size" in big.text.lower() or "large" in big.text.lower(), big.text[:200]
    status, _ = get(app.url)
    assert status == 200 and app.proc.poll() is None


@pytest.mark.parametrize("flags", [["--host", "0.0.0.0"], ["--share"]], ids=["host", "share"])
def test_exposed_without_auth_prints_a_warning(tmp_path, flags):
    """The warning comes first, before the model loads or anything binds; the process is stopped as soon as it
    is seen (so no share link is ever requested)."""
    env = {**os.environ, "IRIS_STUDIO_CONFIG_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "iris_studio.cli", *flags, "--port", str(free_port()),
                             "--no-browser", "--no-warmup", "--model", "nano", "--output-dir", str(tmp_path / "out")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(60, proc.kill)  # never hang: no output in 60 s fails the test
    guard.start()
    try:
        line = proc.stderr.readline()  # the first thing it says
    finally:
        guard.cancel()
        proc.kill()
        proc.wait(10)
    assert line.startswith("iris-studio: warning:"), line
    assert "--auth" in line and "no login" in line


# ------------------------------------------------------------------------------------- bad input, studio
def test_every_task_endpoint_answers_bad_files_with_a_message(studio):
    """Corrupt, zero-byte, truncated, text and bomb files on every task endpoint: a one-line error each (an AppError
    from gr.Error), never a traceback; the server keeps serving."""
    import io
    import struct
    import zlib

    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    app, base = studio
    bad = base / "bad"
    bad.mkdir(exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "PNG")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    files = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x01garbage" * 50,
        "empty.png": b"",
        "truncated.png": buf.getvalue()[:60],
        "text.png": b"just some text",
        "bomb.png": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""),
    }
    budget = {k: v for k, v in FAST.items() if k not in ("width", "height")}
    client = Client(app.url, verbose=False)
    answers = {}
    for name, data in files.items():
        (bad / name).write_bytes(data)
        f = handle_file(str(bad / name))
        editor = {"background": f, "layers": [], "composite": None}
        calls = {
            "/edit": dict(image=f, prompt="x", seed=1, strength=0.5),
            "/upscale": dict(image=f, prompt="", seed=1, scale=2, strength=0.4, tile=512),
            "/inpaint": dict(image=editor, mask=f, prompt="x", seed=1, mask_blur=0, masked_only=False, padding=0),
            "/control": dict(control_image=editor, prompt="x", seed=1, kind="canny", weight=1.0, start=0.0, end=1.0,
                             preprocess=True, width=64, height=64),
        }
        for api, kwargs in calls.items():
            with pytest.raises(AppError) as err:
                client.predict(**kwargs, **budget, api_name=api)
            message = str(err.value)
            assert message and "Traceback" not in message and "\n" not in message.strip(), (name, api, message)
            answers[(name, api)] = message
    assert any("limit" in m for (n, _), m in answers.items() if n == "bomb.png"), answers
    for bad_settings in (dict(seed="abc"), dict(steps=1.5), dict(guidance=-3), dict(iterations=10**6), dict(seed=-5),
                         dict(seed=2**70), dict(width=10**9)):
        with pytest.raises(AppError) as err:
            client.predict(prompt="x", **{**FAST, "seed": 1, **bad_settings}, api_name="/generate")
        assert "Traceback" not in str(err.value), bad_settings
    with pytest.raises(AppError, match="limit is 10000"):  # prompts: 10,001 characters refused, 10,000 kept
        client.predict(prompt="x" * 10_000 + "🙂", seed=1, **FAST, api_name="/generate")
    _, _, result, params = client.predict(prompt="🙂" * 10_000, seed=1, **FAST, api_name="/generate")
    assert Path(result).is_file() and params["prompt"] == "🙂" * 10_000
    print("\n" + "\n".join(f"{n} {api}: {m}" for (n, api), m in answers.items() if api == "/edit"))
    assert app.proc.poll() is None
    _, status, result, _ = client.predict(prompt="fine", seed=1, **FAST, api_name="/generate")
    assert Path(result).is_file() and 'data-state="done"' in status
