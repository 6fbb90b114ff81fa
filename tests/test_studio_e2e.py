"""IRIS Studio end to end: `python app.py` launched in a subprocess, driven through gradio_client.

The model is the nano variant with random (seeded, perturbed) weights and every adapter, saved to a temp folder
and loaded as a local model folder; runs use 1-2 steps and 1-3 core iterations. Offline throughout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from iris.editing import feather_reach, grow_mask  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET = {"negative_prompt": "", "guidance": 3.0, "steps": 2, "iterations": 2, "sampler": "euler"}


def make_test_model(folder: Path) -> Path:
    """A random-weight nano model folder with every adapter; weights perturbed so outputs depend on inputs."""
    import torch

    from iris import IrisPipeline, variant_config

    cfg = variant_config("nano")
    cfg.adapters = ["inpaint", "upscale", "control_canny", "control_scribble", "control_color"]
    pipe = IrisPipeline.from_config(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.generator, pipe.adapters, pipe.previewer):
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return pipe.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioProcess:
    """`python app.py ...` in a subprocess; `url` once it serves its page."""

    def __init__(self, model: Path, config_dir: Path, output_dir: Path, log: Path, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "IRIS_STUDIO_CONFIG_DIR": str(config_dir), "HF_HUB_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(model), "--output-dir", str(output_dir), "--port",
             str(self.port), "--no-browser", "--no-warmup", *extra],
            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.startup_s = self._wait()

    def _wait(self, timeout: float = 120.0) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studio exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"studio did not start in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("studio")
    config = base / "config"
    config.mkdir()
    # previews after every core iteration, unthrottled, so the stream can be counted exactly
    (config / "settings.json").write_text(json.dumps({"preview_interval_ms": 0, "preview_cost": 0.0}))
    return {"base": base, "config": config, "out": base / "outputs", "model": make_test_model(base / "model")}


@pytest.fixture(scope="module")
def studio(paths):
    app = StudioProcess(paths["model"], paths["config"], paths["out"], paths["base"] / "studio.log")
    client = Client(app.url, verbose=False)
    yield app, client
    app.stop()


def input_image(path: Path, size=(128, 128), seed=0) -> Path:
    rng = np.random.RandomState(seed)
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8)).save(path)
    return path


def is_image_path(value) -> bool:
    return isinstance(value, str) and Path(value).is_file()


# -------------------------------------------------------------------------------------------------- tests
def test_every_endpoint_returns_an_image_of_the_right_size(studio, paths):
    _, client = studio
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/generate", "/inpaint", "/edit", "/upscale", "/control", "/stop", "/restore_generate",
                 "/preprocess", "/gallery", "/load_model", "/save_settings", "/get_settings"):
        assert name in api, name
    image = handle_file(str(input_image(paths["base"] / "in.png", (96, 64))))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (32, 16, 64, 48))
    mask.save(paths["base"] / "mask.png")
    editor = {"background": image, "layers": [], "composite": None}
    calls = {
        "/generate": (dict(prompt="a red apple", seed=1, width=128, height=96), (128, 96)),
        "/edit": (dict(image=image, prompt="a cat", seed=2, strength=0.5), (96, 64)),
        "/upscale": (dict(image=image, prompt="", seed=3, scale=2, strength=0.4, tile=512), (192, 128)),
        "/inpaint": (dict(image=editor, mask=handle_file(str(paths["base"] / "mask.png")), prompt="a sun", seed=4,
                          mask_blur=4, masked_only=False, padding=32), (96, 64)),
        "/control": (dict(control_image=editor, prompt="a moon", seed=5, kind="canny", weight=1.0, start=0.0,
                          end=1.0, preprocess=True, width=64, height=64), (64, 64)),
    }
    for name, (kwargs, size) in calls.items():
        preview, status, result, params, *used = client.predict(**kwargs, **BUDGET, api_name=name)
        assert len(used) == (name == "/inpaint")  # inpaint also returns the black/white mask it used
        assert is_image_path(result), (name, status)
        assert Image.open(result).size == size, name
        assert params["task"] == name[1:] and params["seed"] == kwargs["seed"]
        assert 'data-state="done"' in status

    # inpaint keeps every pixel beyond the mask's soft edge
    _, _, result, _, used = client.predict(**calls["/inpaint"][0], **BUDGET, api_name="/inpaint")
    assert np.array_equal(np.asarray(Image.open(used).convert("L")), np.asarray(mask))
    before = np.asarray(Image.open(paths["base"] / "in.png").convert("RGB"))
    after = np.asarray(Image.open(result).convert("RGB"))
    painted = np.asarray(mask) > 0
    far = ~grow_mask(painted, feather_reach(calls["/inpaint"][0]["mask_blur"]))
    assert np.array_equal(before[far], after[far])
    assert not np.array_equal(before[painted], after[painted])

    preview = client.predict(control_image=editor, kind="canny", preprocess=True, api_name="/preprocess")
    assert Image.open(preview).size == (96, 64)

    # the API docs list the upscale factor as '2' | '4': the string form works as well as the number
    _, _, result, params = client.predict(**{**calls["/upscale"][0], "scale": "2"}, **BUDGET, api_name="/upscale")
    assert Image.open(result).size == (192, 128) and params["scale"] == 2


def test_streaming_yields_one_preview_per_core_iteration_before_the_result(studio):
    _, client = studio
    job = client.submit(prompt="a blue square", seed=11, width=64, height=64, **{**BUDGET, "iterations": 3},
                        api_name="/generate")
    job.result(timeout=120)
    outputs = job.outputs()
    previews = [o for o in outputs if is_image_path(o[0]) and 'data-state="running"' in o[1]]
    labels = [o[1].split('iris-status-text">')[1].split(" · ")[0:2] for o in previews]
    assert len(previews) == 2 * 3, [o[1] for o in outputs]
    assert labels[0] == ["step 1/2", "iteration 1/3"] and labels[-1] == ["step 2/2", "iteration 3/3"]
    final = outputs[-1]
    assert is_image_path(final[2]) and 'data-state="done"' in final[1]
    assert all(not is_image_path(o[2]) for o in outputs[:-1])  # the result comes last, after every preview
    assert len({Image.open(p[0]).tobytes() for p in previews}) > 1  # the preview changes as the model thinks


def test_stop_cancels_a_long_run_and_the_next_run_works(studio):
    _, client = studio
    job = client.submit(prompt="long", seed=1, width=64, height=64,
                        **{**BUDGET, "steps": 50, "iterations": 16}, api_name="/generate")
    start = time.perf_counter()
    while len(job.outputs()) < 3:  # running: a few previews streamed
        assert time.perf_counter() - start < 60 and not job.done()
        time.sleep(0.05)
    stopped = time.perf_counter()
    client.predict(api_name="/stop")
    while not job.done():
        assert time.perf_counter() - stopped < 20, "stop did not end the run"
        time.sleep(0.05)
    last = job.outputs()[-1]
    assert 'data-state="cancelled"' in last[1] and "Stopped at step " in last[1] and "/50 · iteration" in last[1]
    step = int(last[1].split("Stopped at step ")[1].split("/")[0])
    assert step < 25  # far from the end: the run really stopped
    assert not is_image_path(last[2])
    _, status, result, params = client.predict(prompt="after stop", seed=2, width=64, height=64, **BUDGET,
                                               api_name="/generate")
    assert is_image_path(result) and params["prompt"] == "after stop"


def test_png_metadata_round_trips_into_the_controls(studio):
    from iris.pngmeta import read_params
    from iris_studio import metadata

    _, client = studio
    _, _, result, params = client.predict(prompt="round trip", negative_prompt="ugly", seed=1234, guidance=2.5,
                                          steps=1, iterations=3, sampler="heun", width=64, height=80,
                                          api_name="/generate")
    assert read_params(result) == params  # the served file is the saved PNG, chunk included
    values = client.predict(png=handle_file(result), api_name="/restore_generate")
    restored = dict(zip(metadata.fields("generate"), values[:-2]))  # then the note, then the image
    assert restored == {"prompt": "round trip", "negative_prompt": "ugly", "seed": 1234, "guidance": 2.5,
                        "steps": 1, "iterations": 3, "sampler": "heun", "regional": True, "width": 64, "height": 80,
                        "compose": False}
    assert "seed 1234" in values[-2]
    assert np.array_equal(np.asarray(Image.open(values[-1])), np.asarray(Image.open(result)))  # shown as well
    # another tab takes the settings it has
    values = client.predict(png=handle_file(result), api_name="/restore_edit")
    edit = dict(zip(metadata.fields("edit"), values[:-2]))
    assert edit["prompt"] == "round trip" and edit["seed"] == 1234 and edit["iterations"] == 3
    # a PNG without parameters changes nothing and says so
    plain = Path(result).with_name("plain.png")
    Image.new("RGB", (8, 8)).save(plain)
    values = client.predict(png=handle_file(str(plain)), api_name="/restore_generate")
    assert "no IRIS parameters" in values[-2]


def test_results_land_in_the_gallery_folder(studio, paths):
    _, client = studio
    listing = client.predict(api_name="/gallery")
    assert Path(listing["folder"]) == paths["out"].resolve()
    entries = listing["entries"]
    assert len(entries) >= 6 and {"generate", "edit", "upscale", "inpaint", "control"} <= {e["task"] for e in entries}
    for e in entries:
        assert (paths["out"] / e["file"]).is_file()
    index = json.loads((paths["out"] / "index.json").read_text())
    assert len(index["entries"]) == len(entries)


def test_errors_are_messages_not_tracebacks(studio, paths):
    from gradio_client.exceptions import AppError

    _, client = studio
    image = handle_file(str(input_image(paths["base"] / "in2.png")))
    with pytest.raises(AppError) as err:
        client.predict(image={"background": image, "layers": [], "composite": None}, mask=None, prompt="x",
                       seed=1, mask_blur=0, masked_only=False, padding=0, **BUDGET, api_name="/inpaint")
    assert "Paint the area" in str(err.value) and "Traceback" not in str(err.value)
    with pytest.raises(AppError) as err:  # an engine InvalidInputError
        client.predict(prompt="x", seed=2**70, width=64, height=64, **BUDGET, api_name="/generate")
    assert "seed must be between" in str(err.value)
    with pytest.raises(AppError) as err:  # the UI's own range checks
        client.predict(prompt="x", seed=1, width=64, height=64, **{**BUDGET, "steps": 0}, api_name="/generate")
    assert "minimum" in str(err.value)
    with pytest.raises(AppError) as err:  # offline hub: a clear message, and the old model stays
        client.predict(source="Hub id", location="nobody/no-such-iris-model", variant="nano", device="cpu",
                       api_name="/load_model")
    assert "hub" in str(err.value).lower() and "Traceback" not in str(err.value)
    _, _, result, _ = client.predict(prompt="still fine", seed=1, width=64, height=64, **BUDGET, api_name="/generate")
    assert is_image_path(result)


def test_foreign_host_headers_are_refused(studio):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 sends that name as Host. The studio bound to
    127.0.0.1 answers loopback names only, on every route, with or without a matching Origin."""
    import http.client

    app, _ = studio

    def get(path: str, host: str, origin: str | None = None) -> tuple[int, bytes, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        headers = {"Host": host, **({"Origin": origin} if origin else {})}
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body, r.getheader("access-control-allow-origin")

    port = app.port
    for path in ("/", "/gradio_api/info", "/config", "/gradio_api/queue/status"):
        for host in (f"rebind.evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            status, body, _ = get(path, host, origin=f"http://{host}" if host else None)
            assert status == 400, (path, host, status)
            assert body.startswith(b"Invalid Host header") and len(body) < 200  # nothing of the app's
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}"):
        assert get("/", host)[0] == 200, host


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", path, body=body, headers={"Host": f"127.0.0.1:{port}", **headers})
    r = conn.getresponse()
    out = r.read()
    conn.close()
    return r.status, out


def test_cross_site_uploads_and_oversized_bodies_are_refused(studio):
    app, _ = studio
    files = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + b"0" * 1000
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    status, body = _post(app.port, "/gradio_api/upload", files + b"\r\n--x--\r\n",
                         {**multipart, "Origin": "http://evil.example"})
    assert status == 403 and b"Cross-site" in body
    assert _post(app.port, "/gradio_api/upload", files + b"\r\n--x--\r\n", {**multipart, "Origin": "null"})[0] == 403
    own = f"http://127.0.0.1:{app.port}"
    assert _post(app.port, "/gradio_api/upload", files + b"\r\n--x--\r\n", {**multipart, "Origin": own})[0] == 200
    big_json = b'{"data": ["' + b"x" * (6 << 20) + b'"]}'
    status, body = _post(app.port, "/gradio_api/call/generate", big_json, {"Content-Type": "application/json"})
    assert status == 413 and b"too large" in body
    huge = {**multipart, "Content-Length": str(200 << 20)}
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=20)
    conn.putrequest("POST", "/gradio_api/upload", skip_host=True)
    conn.putheader("Host", f"127.0.0.1:{app.port}")
    for k, v in huge.items():
        conn.putheader(k, v)
    conn.endheaders()
    assert conn.getresponse().status == 413  # refused from the header, before any byte of the body
    conn.close()



def test_chunked_bodies_and_unknown_event_indices_get_4xx_not_500(studio):
    """A chunked body (no Content-Length) over 5 MB is cut off with a 413; a predict call naming an fn_index
    the app lacks got gradio's 500 and a KeyError / IndexError traceback on the studio's console."""
    import http.client
    import socket

    app, client = studio
    before = app.log.read_text().count("Traceback")
    for path in ("/gradio_api/run/predict", "/gradio_api/queue/join"):
        for index in (-1, 99999, 0):  # 0: the page's first event, a browser-side (JavaScript) one
            body = json.dumps({"fn_index": index, "data": [], "session_hash": "x"}).encode()
            status, text = _post(app.port, path, body, {"Content-Type": "application/json"})
            assert status == 422 and text.startswith(b"Unknown fn_index"), (path, index, status, text)
    with socket.create_connection(("127.0.0.1", app.port), timeout=20) as sock:
        sock.sendall(f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the server stops reading at the limit
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
    assert app.log.read_text().count("Traceback") == before
    assert client.predict(api_name="/get_settings")["preview_cost"] == 0.0  # real calls still go through

def test_login_attempts_are_throttled():
    from iris_studio.hosts import RequestGuard

    guard = RequestGuard(app=None, allowed=frozenset({"127.0.0.1"}), max_body=1 << 20, login_attempts=3)
    scope = {"type": "http", "path": "/login", "client": ("10.0.0.1", 5), "headers": [(b"host", b"127.0.0.1")]}
    assert [guard.refusal(scope) for _ in range(3)] == [None] * 3
    assert guard.refusal(scope)[0] == 429
    other = {**scope, "client": ("10.0.0.2", 5)}
    assert guard.refusal(other) is None
    assert guard.refusal({**scope, "path": "/config"}) is None  # other routes are not counted


def test_with_a_login_every_api_route_needs_it():
    from types import SimpleNamespace

    from iris_studio.hosts import RequestGuard

    app = SimpleNamespace(auth={"me": "pw"}, auth_dependency=None, cookie_id="c1", tokens={"tok": "me"})
    guard = RequestGuard(app=None, allowed=frozenset({"127.0.0.1"}), max_body=1 << 20)
    scope = lambda path, cookie=b"": {"type": "http", "path": path, "app": app, "client": ("127.0.0.1", 5),
                                      "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)]}
    for path in ("/gradio_api/cancel", "/gradio_api/reset", "/gradio_api/heartbeat/abc", "/gradio_api/stream/1",
                 "/gradio_api/queue/join", "/gradio_api/upload", "/gradio_api/run-history/records"):
        assert guard.refusal(scope(path)) == (401, "Log in first: this studio has a login."), path
        assert guard.refusal(scope(path, b"access-token-c1=forged")) is not None, path
        assert guard.refusal(scope(path, b"x=1; access-token-c1=tok")) is None, path
        assert guard.refusal(scope(path, b"access-token-unsecure-c1=tok")) is None, path
    for path in ("/gradio_api/login_check", "/gradio_api/app_id", "/gradio_api/startup-events", "/", "/login",
                 "/assets/index.js", "/config"):  # what the login page needs; gradio checks /config itself
        assert guard.refusal(scope(path)) is None, path
    assert guard.refusal(scope("/gradio_api/cancel", b"\x00;;=bad")) is not None  # an unparsable cookie
    open_app = SimpleNamespace(auth=None)
    assert guard.refusal({**scope("/gradio_api/cancel"), "app": open_app}) is None  # no login set: nothing to ask


@pytest.mark.slow
def test_cancel_and_reset_need_the_login_under_auth(paths, tmp_path):
    """gradio leaves /cancel and /reset open even with a login; the studio refuses them without one."""
    app = StudioProcess(paths["model"], paths["config"], tmp_path / "out", tmp_path / "auth.log",
                        extra=("--auth", "me:secret"))
    try:
        body = json.dumps({"session_hash": "abc", "fn_index": 0, "event_id": "e"}).encode()
        for route in ("/gradio_api/cancel", "/gradio_api/reset"):
            status, text = _post(app.port, route, body, {"Content-Type": "application/json"})
            assert status == 401 and b"Log in" in text, (route, status)
        client = Client(app.url, auth=("me", "secret"), verbose=False)
        _, _, result, _ = client.predict(prompt="logged in", seed=1, width=64, height=64, **BUDGET,
                                         api_name="/generate")
        assert is_image_path(result)
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        assert "access-token" in cookie
        status, _ = _post(app.port, "/gradio_api/cancel", body, {"Content-Type": "application/json", "Cookie": cookie})
        assert status == 200
    finally:
        app.stop()


@pytest.mark.parametrize("bad", [
    {"steps": "abc"}, {"steps": None}, {"guidance": "x"}, {"guidance": None}, {"seed": "nan"}, {"width": None},
    {"iterations": [1]}, {"iterations": {"a": 1}}, {"sampler": "bogus"}, {"seed": 10**30}, {"height": "tall"},
    {"steps": 10**9}, {"guidance": -5}, {"seed": "12abc"},
])
def test_bad_api_values_get_one_line_messages(studio, bad):
    """Text or None into sliders, values off a menu or out of bounds: one readable line naming the control."""
    from gradio_client.exceptions import AppError

    _, client = studio
    args = {**BUDGET, "prompt": "a cat", "seed": 1, "steps": 1, "iterations": 1, "width": 64, "height": 64, **bad}
    with pytest.raises(AppError) as info:
        client.predict(api_name="/generate", **args)
    message = str(info.value)
    assert "\n" not in message.strip() and "Could not preprocess" not in message
    assert "Something went wrong" not in message
    name = next(iter(bad))
    assert name.split("_")[0] in message.lower() or "prompt" in message.lower(), message


# last: it stops the module's studio and starts another on the same folders
def test_settings_survive_a_restart(studio, paths):
    app, client = studio
    saved = client.predict(negative_prompt="blurry", steps=3, iterations=5, guidance=2.5, width=0, height=0,
                           live=True, preview_interval_ms=0, preview_cost=0.0, theme="ocean", edit_strength=0.7,
                           upscale_strength=0.3, mask_blur=6, padding=16, api_name="/save_settings")
    assert "Saved" in saved
    app.stop()
    again = StudioProcess(paths["model"], paths["config"], paths["out"], paths["base"] / "studio2.log")
    try:
        client2 = Client(again.url, verbose=False)
        settings = client2.predict(api_name="/get_settings")
        assert (settings["negative_prompt"], settings["steps"], settings["iterations"], settings["theme"]) == (
            "blurry", 3, 5, "ocean")
        values = {c["props"].get("elem_id"): c["props"].get("value") for c in client2.config["components"]}
        assert values["generate-steps"] == 3 and values["generate-iterations"] == 5
        assert values["inpaint-negative"] == "blurry" and values["edit-live"] is True
        assert values["generate-guidance"] == 2.5
        # history survives too
        assert len(client2.predict(api_name="/gallery")["entries"]) >= 6
    finally:
        again.stop()
