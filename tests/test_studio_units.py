"""IRIS Studio's pieces without a server: settings, gallery, PNG metadata, masks, engine runs, command line."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from iris_studio import metadata
from iris_studio.cli import build_parser, exposure_warning, parse_auth
from iris_studio.gallery import Gallery
from iris_studio.masks import editor_mask, is_blank
from iris_studio.settings import Settings, load_settings, save_settings, settings_path


# ------------------------------------------------------------------------------------------------- settings
def test_settings_round_trip_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_STUDIO_CONFIG_DIR", str(tmp_path / "cfg"))
    assert settings_path() == tmp_path / "cfg" / "settings.json"
    assert load_settings() == (Settings(), None)  # missing file: defaults, no warning
    s = Settings().updated(steps=3, iterations=5, theme="ocean", negative_prompt="blurry", live=True)
    save_settings(s)
    assert load_settings() == (s, None)
    assert [p.name for p in (tmp_path / "cfg").iterdir()] == ["settings.json"]  # no temp files left


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", "\x00\x01"])
def test_damaged_settings_fall_back_to_defaults_and_say_so(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    settings, warning = load_settings(path)
    assert settings == Settings()
    assert warning and "settings" in warning and "default" in warning


def test_bad_fields_are_dropped_one_by_one(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"steps": 3, "iterations": "many", "guidance": 99, "theme": "nope", "extra": 1}))
    settings, warning = load_settings(path)
    assert settings.steps == 3
    assert settings.iterations == Settings().iterations and settings.guidance == Settings().guidance
    assert settings.theme == Settings().theme
    assert "iterations" in warning and "guidance" in warning
    with pytest.raises(KeyError):
        Settings().updated(nonsense=1)
    with pytest.raises(ValueError):
        Settings().updated(steps=0)



@pytest.mark.parametrize("field", ["steps", "guidance", "preview_interval_ms"])
@pytest.mark.parametrize("digits", [400, 5000])
def test_settings_with_huge_numbers_fall_back_instead_of_crashing(tmp_path, field, digits):
    """A 400-digit number made float() overflow and a 5,000-digit one json.loads raise a plain ValueError: either
    one in settings.json stopped the studio at start-up."""
    path = tmp_path / "settings.json"
    path.write_text('{"steps": 3, "' + field + '": 1' + '0' * digits + '}')
    settings, warning = load_settings(path)
    assert getattr(settings, field) == getattr(Settings(), field)
    assert warning and field in warning if digits == 400 else "too long" in warning
    assert len(warning) < 300 + len(str(path)) and "\n" not in warning
    if digits == 400:
        assert settings.steps == (3 if field != "steps" else Settings().steps)  # the other fields are kept


def test_settings_with_a_byte_order_mark_or_a_huge_text_are_read(tmp_path):
    """Windows editors write a UTF-8 byte-order mark: the whole file was called damaged. A 20,000-character value
    gave a 20,000-character warning in the banner."""
    path = tmp_path / "settings.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"steps": 3, "model": "m" * 20_000}).encode())
    settings, warning = load_settings(path)
    assert settings.steps == 3 and settings.model == "demo"
    assert "model" in warning and len(warning) < 200 + len(str(path))

# -------------------------------------------------------------------------------------------------- gallery
def _image(color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (32, 24), color)


def test_gallery_saves_pngs_with_params_and_lists_newest_first(tmp_path):
    from iris.pngmeta import read_params

    g = Gallery(tmp_path / "out")
    p1 = g.add(_image(), {"task": "generate", "prompt": "first", "seed": 1, "steps": 2})
    p2 = g.add(_image((0, 0, 255)), {"task": "edit", "prompt": "second", "seed": 2, "strength": 0.5})
    assert p1.is_file() and p2.is_file() and p1.parent.parent == g.folder
    assert read_params(p2)["strength"] == 0.5
    assert [e.prompt for e in g.entries()] == ["second", "first"]
    index = json.loads((g.folder / "index.json").read_text())
    assert [e["file"] for e in index["entries"]] == [e.file for e in reversed(g.entries())]
    assert not list(g.folder.glob(".index-*"))  # atomic writes leave no temp files
    again = Gallery(tmp_path / "out")  # a restart reads the index
    assert [e.to_dict() for e in again.entries()] == [e.to_dict() for e in g.entries()]


def test_damaged_gallery_index_is_rebuilt_from_the_images(tmp_path):
    g = Gallery(tmp_path)
    g.add(_image(), {"task": "generate", "prompt": "kept", "seed": 7})
    (tmp_path / "index.json").write_text('{"version": 1, "entries": [')
    again = Gallery(tmp_path)
    assert again.warning and "damaged" in again.warning
    assert [(e.prompt, e.seed) for e in again.entries()] == [("kept", 7)]
    assert (tmp_path / "index.json.damaged").is_file()
    json.loads((tmp_path / "index.json").read_text())  # rewritten, valid



def test_gallery_index_entries_with_odd_values_neither_crash_nor_block_later_saves(tmp_path):
    """A 400-digit "created" made float() overflow at start-up; a lone surrogate ("\\ud800", valid JSON) loaded,
    then every later save failed to write the index back as UTF-8."""
    g = Gallery(tmp_path)
    first = g.add(_image(), {"task": "generate", "prompt": "one", "seed": 1}).relative_to(tmp_path).as_posix()
    index = tmp_path / "index.json"
    index.write_text('{"version": 1, "entries": [{"file": "' + first + '", "created": 1' + "0" * 400
                     + ', "prompt": "a\\ud800b", "params": {"prompt": "a\\ud800b", "negative_prompt": ["\\udfff"]}}]}')
    again = Gallery(tmp_path)
    [entry] = again.entries()
    assert entry.file == first and entry.created == 0.0 and entry.prompt == "a\ufffdb"
    again.add(_image(), {"task": "generate", "prompt": "two", "seed": 2})
    assert [e.prompt for e in Gallery(tmp_path).entries()] == ["two", "a\ufffdb"]
    json.loads(index.read_text(encoding="utf-8"))


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00 not text", b"\xef\xbb\xbf{\"version\": 1, \"entries\": []}"])
def test_an_undecodable_gallery_index_is_kept_aside_and_a_bom_is_read(tmp_path, raw):
    g = Gallery(tmp_path)
    g.add(_image(), {"task": "generate", "prompt": "kept", "seed": 7})
    (tmp_path / "index.json").write_bytes(raw)
    again = Gallery(tmp_path)
    assert [e.prompt for e in again.entries()] == ["kept"]
    warning = again.warning
    again.add(_image(), {"task": "generate", "prompt": "new", "seed": 8})
    if raw.startswith(b"\xff"):  # damage: the old bytes are kept as index.json.damaged, not overwritten
        assert (tmp_path / "index.json.damaged").read_bytes() == raw and "damaged" in warning
    else:  # a byte-order mark is no damage
        assert not (tmp_path / "index.json.damaged").exists() and warning is None
    assert [e.prompt for e in Gallery(tmp_path).entries()] == ["new", "kept"]

def test_gallery_is_safe_from_threads(tmp_path):
    g = Gallery(tmp_path)
    threads = [threading.Thread(target=g.add, args=(_image(), {"task": "generate", "seed": i})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(Gallery(tmp_path).entries()) == 8
    assert len(list(tmp_path.glob("*/*.png"))) == 8


@pytest.mark.parametrize("use_index", [True, False])
def test_gallery_never_lists_files_outside_its_folder(tmp_path, use_index):
    """Symlinks in the folder, absolute paths and ".." in the index, other suffixes: none of them is listed,
    resolved or handed to the gallery widget, and one bad entry does not hide the good ones."""
    outside = tmp_path / "secret"
    outside.mkdir()
    secret = outside / "config.png"
    _image().save(secret)
    (outside / "hostname").write_text("secret")
    folder = tmp_path / "out"
    g = Gallery(folder)
    good = g.add(_image(), {"task": "generate", "prompt": "mine", "seed": 1})
    day = good.parent
    (day / "zz.png").symlink_to(secret)
    (day / "link-dir").symlink_to(outside, target_is_directory=True)
    (folder / "2026-01-01").symlink_to(outside, target_is_directory=True)
    hostile = ["/etc/hostname", str(secret), "../secret/config.png", f"{day.name}/../../secret/config.png",
               f"{day.name}/zz.png", f"{day.name}/link-dir/config.png", "2026-01-01/config.png", "index.json",
               f"{day.name}\\..\\..\\secret\\config.png", "", "a\x00.png"]
    if use_index:
        index = json.loads((folder / "index.json").read_text())
        index["entries"] += [{"file": f, "task": "generate", "prompt": "bad", "params": {}} for f in hostile]
        (folder / "index.json").write_text(json.dumps(index))
    else:
        (folder / "index.json").unlink()
    again = Gallery(folder)
    assert [e.prompt for e in again.entries()] == ["mine"]
    for f in hostile:
        assert again.resolve(f) is None, f
    assert again.resolve(good.relative_to(folder).as_posix()) == good

    from iris_studio.app import Studio
    from iris_studio.settings import Settings

    studio = Studio(engine=None, settings=Settings(), gallery=again)
    items, files = studio.gallery_items()
    assert files == [good.relative_to(folder).as_posix()] and items[0][0] == str(good)


def test_gallery_survives_truncated_pngs_and_cleans_stale_temp_files(tmp_path):
    g = Gallery(tmp_path)
    path = g.add(_image(), {"task": "generate", "prompt": "whole", "seed": 3})
    data = path.read_bytes()
    (path.parent / "broken.png").write_bytes(data[: len(data) // 2])
    (path.parent / "empty.png").write_bytes(b"")
    stale = [path.parent / ".tmp-abc.png", tmp_path / ".index-abc.json"]
    fresh = path.parent / ".tmp-new.png"
    for f in stale + [fresh]:
        f.write_bytes(b"partial")
    old = time.time() - 7200
    for f in stale:
        os.utime(f, (old, old))
    (tmp_path / "index.json").unlink()
    again = Gallery(tmp_path)  # starts, lists every PNG that is a file (the damaged ones without parameters)
    assert "whole" in [e.prompt for e in again.entries()]
    assert not any(f.exists() for f in stale) and fresh.exists()



def test_a_png_whose_parameters_hold_a_huge_number_neither_breaks_reading_nor_the_gallery(tmp_path):
    """json.loads refuses integers over 4,300 digits with a plain ValueError (not a JSONDecodeError): such a PNG
    in the output folder stopped the studio at start-up (the gallery rebuilds its index from the PNGs)."""
    from PIL import PngImagePlugin

    from iris.pngmeta import read_params

    day = tmp_path / "2026-01-01"
    day.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("iris", '{"prompt": "x", "seed": 1' + "0" * 5000 + "}")
    Image.new("RGB", (8, 8)).save(day / "hostile.png", pnginfo=info)
    assert read_params(day / "hostile.png") is None
    assert metadata.read_png_params(day / "hostile.png") is None
    entries = Gallery(tmp_path).entries()
    assert [e.file for e in entries] == ["2026-01-01/hostile.png"] and entries[0].params == {}

def test_gallery_keeps_the_result_when_only_the_index_write_fails(tmp_path, monkeypatch):
    g = Gallery(tmp_path)

    def full_disk(entries):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(g, "_write", full_disk)
    path = g.add(_image(), {"task": "generate", "prompt": "saved anyway", "seed": 5})
    assert path.is_file() and g.warning and "index" in g.warning
    assert [e.prompt for e in Gallery(tmp_path).entries()] == ["saved anyway"]  # re-indexed at the next start


# --------------------------------------------------------------------------------------------------- hosts
def test_host_names_and_allowed_hosts():
    from iris_studio.hosts import LOOPBACK_HOSTS, allowed_hosts, host_name

    assert host_name("LocalHost.:7860") == "localhost" and host_name("[::1]:7860") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("::1") == "::1"
    assert allowed_hosts("127.0.0.1") == LOOPBACK_HOSTS
    assert allowed_hosts("localhost", extra=["studio.lan"]) == LOOPBACK_HOSTS | {"studio.lan"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("127.0.0.1", share=True) is None
    assert allowed_hosts("0.0.0.0", extra=["studio.lan"]) == LOOPBACK_HOSTS | {"studio.lan", "0.0.0.0"}



def _guarded_post(body_chunks: int, chunk: bytes, content_length: bool) -> tuple[list, int, int]:
    """POST `body_chunks` x `chunk` through a RequestGuard (5 MB JSON limit) to an app that reads the whole body,
    as starlette's `Request.body()` does. Returns (messages sent, bytes the app got, chunks the client sent)."""
    import asyncio

    from iris_studio.hosts import RequestGuard

    got, sent = {"app": 0}, {"chunks": 0}

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RuntimeError("client went away")  # what starlette raises (ClientDisconnect)
            got["app"] += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        sent["chunks"] += 1
        return {"type": "http.request", "body": chunk, "more_body": sent["chunks"] < body_chunks}

    messages: list = []

    async def send(message):
        messages.append(message)

    headers = [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json")]
    headers += [(b"content-length", str(body_chunks * len(chunk)).encode())] if content_length else \
        [(b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": headers,
             "client": ("127.0.0.1", 5000)}
    guard = RequestGuard(app, allowed=frozenset({"127.0.0.1"}), max_body=100 << 20)
    asyncio.run(guard(scope, receive, send))
    return messages, got["app"], sent["chunks"]


def test_chunked_bodies_are_cut_off_at_the_limit():
    """A body without a Content-Length (Transfer-Encoding: chunked) passed the 5 MB check whole: 200 MB of JSON
    sent that way were read into the studio's memory. It is counted as it arrives and cut off with a 413."""
    messages, app_bytes, chunks = _guarded_post(200, b"a" * (1 << 20), content_length=False)
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 413
    assert b"too large" in messages[1]["body"].lower() and len(messages) == 2  # the app's own answer is dropped
    assert app_bytes <= 5 << 20 and chunks <= 6  # the client's body stopped being read at the limit
    # bodies under the limit, with or without a length, reach the app whole
    for content_length in (True, False):
        messages, app_bytes, _ = _guarded_post(4, b"a" * (1 << 20), content_length=content_length)
        assert messages[0]["status"] == 200 and app_bytes == 4 << 20

# ------------------------------------------------------------------------------------------------- metadata
def test_controls_from_params_keeps_types_and_skips_missing():
    params = {"task": "generate", "prompt": "a cat", "negative_prompt": "", "seed": 42, "guidance": 2, "steps": 3,
              "iterations": 5.0, "sampler": "heun", "regional": True, "width": 96, "height": 64, "strength": "x",
              "compose": True}
    values = dict(zip(metadata.fields("generate"), metadata.controls_from_params(params, "generate")))
    assert values == {"prompt": "a cat", "negative_prompt": "", "seed": 42, "guidance": 2.0, "steps": 3,
                      "iterations": 5, "sampler": "heun", "regional": True, "width": 96, "height": 64, "compose": True}
    edit = dict(zip(metadata.fields("edit"), metadata.controls_from_params({"strength": True, "seed": 1.5}, "edit")))
    assert edit["strength"] is metadata.SKIP and edit["seed"] is metadata.SKIP and edit["prompt"] is metadata.SKIP
    assert metadata.controls_from_params(None, "inpaint") == [metadata.SKIP] * len(metadata.fields("inpaint"))


@pytest.mark.parametrize("name,value", [("seed", 1e20), ("seed", 2**64), ("seed", -1), ("steps", 0), ("steps", 10**6),
                                        ("guidance", float("nan")), ("guidance", "inf"), ("guidance", 99.0),
                                        ("width", 10**9), ("strength", -0.5), ("seed", [1]), ("seed", {"a": 1}),
                                        ("prompt", "\ud800"), ("prompt", 5), ("steps", True)])
def test_restore_skips_values_outside_the_engines_limits(name, value):
    task = "upscale" if name == "strength" else "generate"
    values = dict(zip(metadata.fields(task), metadata.controls_from_params({name: value}, task)))
    assert values[name] is metadata.SKIP


def test_restore_keeps_long_seeds_exact_and_says_an():
    values = dict(zip(metadata.fields("generate"), metadata.controls_from_params(
        {"seed": "9223372036854775807", "steps": 3.0, "guidance": "2.5"}, "generate")))
    assert values["seed"] == 2**63 - 1 and values["steps"] == 3 and values["guidance"] == 2.5
    assert "an **inpaint** run" in metadata.describe({"task": "inpaint"})
    assert "a **generate** run" in metadata.describe({"task": "<script>"})


def test_settings_refuse_lone_surrogates_and_unknown_devices(tmp_path):
    from iris_studio.settings import Settings

    for bad in ({"negative_prompt": "\ud800"}, {"device": "meta"}, {"device": "garbage"}, {"device": "cuda:x"}):
        with pytest.raises(ValueError):
            Settings().updated(**bad)
        path = tmp_path / "s.json"
        path.write_text(json.dumps({**Settings().to_dict(), **bad}))
        loaded, warning = load_settings(path)
        assert warning and loaded == Settings()  # the bad field falls back, the studio starts
    assert Settings().updated(device="cuda:1").device == "cuda:1"


def test_read_png_params(tmp_path):
    from iris.pngmeta import save_png

    save_png(_image(), tmp_path / "a.png", {"prompt": "p", "seed": 3})
    _image().save(tmp_path / "plain.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert metadata.read_png_params(tmp_path / "a.png") == {"prompt": "p", "seed": 3}
    assert metadata.read_png_params(tmp_path / "plain.png") is None
    assert metadata.read_png_params(tmp_path / "junk.png") is None
    assert metadata.read_png_params(None) is None
    assert "seed 3" in metadata.describe({"prompt": "p", "seed": 3})


# ---------------------------------------------------------------------------------------------------- masks
def test_editor_mask_is_pure_black_and_white():
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 5:15, 3] = 255
    layer[12, 20, 3] = 60  # faint anti-aliased edge: below the threshold
    layer[14, 22, 3] = 200  # partial but mostly painted: in
    value = {"background": Image.new("RGB", (30, 20)), "layers": [Image.fromarray(layer, "RGBA")]}
    mask = editor_mask(value, (60, 40))  # a different size: resized (nearest) to the image
    a = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (60, 40) and set(np.unique(a)) == {0, 255}
    assert a[15, 15] == 255 and a[24, 40] == 0 and a[28, 44] == 255
    assert editor_mask({"background": None, "layers": []}, (8, 8)) is None
    assert editor_mask(None, (8, 8)) is None
    scribble = Image.new("RGB", (8, 8), "white")
    assert is_blank(scribble)
    scribble.putpixel((3, 3), (0, 0, 0))
    assert not is_blank(scribble)



def test_editor_layers_of_different_sizes_combine_or_get_a_message(tmp_path):
    """Two painted layers of different sizes failed with "operands could not be broadcast" (a generic error and
    a console traceback); a layer of another shape, or an unreadable one, now gets the mask's own message."""
    from iris.errors import InvalidInputError

    big = np.zeros((64, 64, 4), np.uint8)
    big[:8, :8, 3] = 255  # top-left corner
    small = np.zeros((32, 32, 4), np.uint8)
    small[28:, 28:, 3] = 255  # bottom-right corner, at half size
    value = {"background": Image.new("RGB", (64, 64)),
             "layers": [Image.fromarray(big, "RGBA"), Image.fromarray(small, "RGBA")]}
    a = np.asarray(editor_mask(value, (64, 64)))
    assert a[0, 0] == 255 and a[63, 63] == 255 and a[32, 32] == 0 and set(np.unique(a)) == {0, 255}
    wide = Image.fromarray(np.full((32, 64, 4), 255, np.uint8), "RGBA")
    with pytest.raises(InvalidInputError, match="another shape"):
        editor_mask({"background": None, "layers": [wide]}, (64, 64))
    empty_wide = Image.new("RGBA", (64, 32), (0, 0, 0, 0))  # nothing painted on it: ignored, whatever its shape
    assert editor_mask({"background": None, "layers": [empty_wide]}, (64, 64)) is None
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    with pytest.raises(InvalidInputError, match="not a readable image"):
        editor_mask({"background": None, "layers": [str(tmp_path / "bad.png")]}, (64, 64))

# -------------------------------------------------------------------------------------------- command line
def test_command_line_defaults_and_auth():
    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.port is None
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "9000", "--share", "--model", "nano",
                                      "--device", "cpu", "--output-dir", "/tmp/x", "--no-browser",
                                      "--auth", "me:pw"])
    assert (args.port, args.model, args.output_dir, args.no_browser) == (9000, "nano", "/tmp/x", True)
    assert parse_auth("me:p:w") == ("me", "p:w")
    with pytest.raises(SystemExit):
        parse_auth("nopassword")
    assert exposure_warning("127.0.0.1", False, None) is None
    assert "--auth" in exposure_warning("0.0.0.0", False, None)
    assert "--auth" in exposure_warning("127.0.0.1", True, None)
    assert exposure_warning("0.0.0.0", True, ("a", "b")) is None



@pytest.mark.parametrize("args", [["--max-file-size", "abc"], ["--max-file-size", "inf"], ["--max-file-size", "nan"],
                                  ["--max-file-size=-5mb"], ["--max-file-size", "0"], ["--port", "70000"],
                                  ["--port", "0"], ["--port", "http"]])
def test_bad_port_or_upload_size_is_refused_by_the_parser(args, capsys):
    """Both were taken as given: the server then failed with a traceback, after the model had loaded."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("iris-studio: error: argument --") and "Traceback" not in "".join(lines)
    good = build_parser().parse_args(["--max-file-size", "500kb", "--port", "65535"])
    assert (good.max_file_size, good.port) == ("500kb", 65535)
    assert build_parser().parse_args([]).max_file_size == "25mb"

# --------------------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine():
    from iris_studio.engine import Engine

    e = Engine("nano")
    e.load()
    return e


def test_engine_streams_one_preview_per_core_iteration(engine):
    updates = list(engine.run("generate", {"prompt": "a cat", "steps": 2, "iterations": 3, "seed": 1,
                                           "guidance": 1.0, "width": 64, "height": 64},
                              interval=0.0, preview_fraction=None))
    previews = [u for u in updates if u.kind == "preview"]
    assert len(previews) == 6 and all(u.image is not None for u in previews)
    assert [u.label for u in previews][:2] == ["step 1/2 · iteration 1/3", "step 1/2 · iteration 2/3"]
    assert [round(u.progress, 3) for u in previews] == [round(i / 6, 3) for i in range(1, 7)]
    assert updates[-1].kind == "done" and updates[-1].result.image.size == (64, 64)
    assert engine.estimate(2, 3, 1.0, 64, 64) is not None  # measured speed
    b = engine.budget(2, 3, 3.0)
    assert b["nfe"] == 4 and b["depth"] == engine.pipe.effective_depth(3)
    for guidance, nfe in ((0.0, 2), (1.0, 2), (3.0, 4)):  # the studio shows what the engine runs
        assert engine.budget(2, 3, guidance)["nfe"] == engine.pipe.cost(2, 3, guidance).nfe == nfe
    assert engine.budget(2, 3, 1.0, sampler="heun")["nfe"] == 3


def test_eta_counts_the_pace_since_the_first_iteration(engine):
    """A run that spent 2 s setting up and then 0.1 s per core iteration: after 5 of 10 iterations the ETA is
    the 5 left at 0.1 s (plus half the remembered fixed cost, the decode to come), not 2.4 s extrapolated from
    the whole elapsed time."""
    from types import SimpleNamespace

    from iris_studio.speed import SpeedMemory

    saved = engine.speed
    engine.speed = SpeedMemory(probe=lambda: 1.0)
    engine.speed.record(1.0, per_iteration=0.5, overhead=0.2, load=1.0)
    engine.speed.load(fresh=True)
    try:
        event = SimpleNamespace(progress=0.5, label="step 1/2 · iteration 5/5")
        update = engine._preview_update(event, 5, 0, None, elapsed=2.4, first_at=2.0)
        assert update.eta == pytest.approx(5 * 0.1 + 0.1)
        first = SimpleNamespace(progress=0.1, label="x")
        bound = engine._preview_update(first, 1, 0, None, 2.0, 2.0)
        assert bound.eta == pytest.approx(9 * 2.0 + 0.1)  # no pace known: an upper bound, never zero
        known = engine._preview_update(first, 1, 0, None, 2.0, 2.0, expected_pace=0.12)
        assert known.eta == pytest.approx(9 * 0.12 + 0.1)  # the remembered pace, not the set-up's
    finally:
        engine.speed = saved


def test_estimates_follow_the_machine_load_both_ways(engine):
    """A run measured under one load; when the probe says the machine got 3x slower (another program
    started) the estimate triples at once, and when it is idle again it comes back, with no run between."""
    from iris_studio.speed import SpeedMemory

    saved = engine.speed
    load = {"now": 0.002}
    engine.speed = SpeedMemory(probe=lambda: load["now"])
    try:
        kwargs = {"prompt": "a cat", "steps": 2, "iterations": 3, "seed": 1, "guidance": 1.0, "width": 64,
                  "height": 64}
        assert list(engine.run("generate", kwargs, interval=0.0))[-1].kind == "done"
        base = engine.estimate(2, 3, 1.0, 64, 64)
        assert base is not None and base > 0
        load["now"] = 0.006
        engine.speed.load(fresh=True)
        assert engine.estimate(2, 3, 1.0, 64, 64) == pytest.approx(3 * base)
        load["now"] = 0.002
        engine.speed.load(fresh=True)
        assert engine.estimate(2, 3, 1.0, 64, 64) == pytest.approx(base)
        bigger = engine.estimate(2, 3, 1.0, 128, 128)  # a size never run: the work's share of the measured one
        assert bigger > base
    finally:
        engine.speed = saved


def test_speed_memory_takes_the_newest_run_mostly():
    from iris_studio.speed import SMOOTHING, SpeedMemory, matrix_probe

    memory = SpeedMemory(probe=lambda: 1.0)
    assert memory.per_iteration(1.0, 1.0) is None and memory.overhead(1.0) == 0.0
    memory.record(1.0, per_iteration=0.10, overhead=0.5, load=1.0)
    memory.record(1.0, per_iteration=0.20, overhead=0.5, load=2.0)  # the same speed per probe unit
    assert memory.per_iteration(1.0, 1.0) == pytest.approx(0.10)
    memory.record(1.0, per_iteration=0.40, overhead=0.5, load=1.0)  # really slower now
    assert memory.per_iteration(1.0, 1.0) == pytest.approx(SMOOTHING * 0.40 + (1 - SMOOTHING) * 0.10)
    assert memory.per_iteration(4.0, 1.0) == pytest.approx(4 * memory.per_iteration(1.0, 1.0))
    memory.clear()
    assert not memory.known
    assert 0 < matrix_probe() < 1.0  # the real probe: a few milliseconds


def test_engine_throttles_previews(engine):
    updates = list(engine.run("generate", {"prompt": "", "steps": 2, "iterations": 4, "seed": 1, "guidance": 1.0,
                                           "width": 32, "height": 32}, interval=3600.0, preview_fraction=None))
    assert [u.kind for u in updates] == ["preview", "done"]  # first preview, then nothing until the result


def test_engine_cancel_stops_within_an_iteration_and_recovers(engine):
    seen = []
    run = engine.run("generate", {"prompt": "", "steps": 50, "iterations": 16, "seed": 1, "guidance": 1.0,
                                  "width": 32, "height": 32}, interval=0.0, preview_fraction=None)
    for update in run:
        seen.append(update)
        if len(seen) == 2:
            assert engine.busy and engine.cancel()
    assert seen[-1].kind == "cancelled" and len(seen) <= 4
    assert not engine.busy
    done = list(engine.run("generate", {"prompt": "", "steps": 1, "iterations": 1, "seed": 2, "guidance": 1.0,
                                        "width": 32, "height": 32}))
    assert done[-1].kind == "done"


def test_engine_stops_the_worker_when_the_consumer_goes_away(engine):
    run = engine.run("generate", {"prompt": "", "steps": 50, "iterations": 16, "seed": 1, "guidance": 1.0,
                                  "width": 32, "height": 32}, interval=0.0, preview_fraction=None)
    next(run)
    run.close()  # what gradio does when the browser tab closes
    start = time.perf_counter()
    while engine._run_lock.locked() and time.perf_counter() - start < 10:
        time.sleep(0.02)
    assert not engine._run_lock.locked()


def test_engine_errors_are_iris_errors(engine):
    from iris.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        list(engine.run("generate", {"prompt": "", "steps": 0, "iterations": 1, "seed": 0}))
    assert not engine.busy


def test_missing_demo_model_falls_back_to_random_nano_with_a_notice(tmp_path, monkeypatch):
    from iris.errors import ModelLoadError
    from iris_studio.engine import Engine

    monkeypatch.setenv("IRIS_DEMO_MODEL", str(tmp_path / "nowhere"))
    e = Engine("demo")
    info = e.load_or_fallback()
    assert info.random_weights and "random-weight" in e.notice and "demo model is not installed" in e.notice
    with pytest.raises(ModelLoadError):
        e.load(str(tmp_path / "no-such-folder"))
    assert e.info.random_weights  # the old model stays
    e2 = Engine(str(tmp_path / "no-such-folder"))
    e2.load_or_fallback()
    assert "Could not load model" in e2.notice and e2.info.random_weights
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        with pytest.raises(ModelLoadError):  # HubOfflineError is a ModelLoadError
            e.load("someone/not-cached-model")



def test_a_failed_start_up_load_names_the_model_not_none(tmp_path, monkeypatch):
    """`iris-studio --device bogus` said "Could not load model None": the engine's own model is named."""
    from iris_studio.engine import Engine

    monkeypatch.setenv("IRIS_DEMO_MODEL", str(tmp_path / "nowhere"))
    e = Engine("demo", "bogus")
    e.load_or_fallback()
    assert e.notice.startswith("Could not load model 'demo': device must be") and "None" not in e.notice
    assert e.info.random_weights and e.device == "cpu"

def test_a_user_run_stops_the_warmup(engine):
    warm = threading.Thread(target=engine.warmup)
    with engine._run_lock:  # hold the warm-up at its start
        warm.start()
        start = time.perf_counter()
        while not engine.busy and time.perf_counter() - start < 10:
            time.sleep(0.01)
    updates = list(engine.run("generate", {"prompt": "", "steps": 1, "iterations": 1, "seed": 3, "guidance": 1.0,
                                           "width": 32, "height": 32}))
    warm.join(30)
    assert updates[-1].kind == "done" and not warm.is_alive() and not engine.busy


def test_saved_pngs_get_the_umask_permissions(tmp_path):
    from iris import files

    path = Gallery(tmp_path).add(_image(), {"task": "generate", "seed": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._UMASK  # as any program's new file, not 0600
    assert (tmp_path / "index.json").stat().st_mode & 0o777 == 0o666 & ~files._UMASK


def test_compile_flag_compiles_every_model_the_engine_loads():
    """`iris-studio --compile` reaches the engine, which compiles each model it loads (a model switch too); the
    warm-up then takes two steps so that its run compiles the guided batch as well. Compiling itself is lazy, so
    nothing here waits for it."""
    from iris_studio.cli import build_parser
    from iris_studio.engine import Engine

    assert build_parser().parse_args(["--compile"]).compile and not build_parser().parse_args([]).compile
    compiled = lambda e: hasattr(e.pipe.generator.core_stack, "_torchdynamo_orig_callable")  # noqa: E731
    e = Engine("nano", compile=True)
    e.load()
    assert compiled(e)
    e.load("tiny")
    assert compiled(e) and e.info.name.endswith("tiny")
    plain = Engine("nano")
    assert not compiled(plain)
    for engine, steps in ((e, 2), (plain, 1)):
        asked = []
        engine.run = lambda task, kwargs, _asked=asked, **kw: _asked.append(kwargs) or iter(())  # ends the warm-up
        engine.warmup()
        assert [k["steps"] for k in asked] == [steps]


def test_loads_and_runs_share_one_compute_thread(monkeypatch):
    """Every torch call of the studio runs on the engine's one compute thread (an OpenMP pool in a second thread
    made each run about 1.8x slower): loads, runs and the speed probe alike, whichever thread asks; its errors
    reach the caller, and a call made from the compute thread itself runs at once instead of waiting for itself."""
    import threading

    from iris_studio import engine as engine_module
    from iris_studio.engine import Engine

    e = Engine("nano")
    seen = []
    probe = engine_module.matrix_probe
    monkeypatch.setattr(engine_module, "matrix_probe", lambda: (seen.append(threading.current_thread()), probe())[1])
    build = e._build
    e._build = lambda spec, device: (seen.append(threading.current_thread()), build(spec, device))[1]
    e.load()
    generate = e.pipe.generate
    e.pipe.generate = lambda **kw: (seen.append(threading.current_thread()), generate(**kw))[1]
    for _ in range(2):
        updates = list(e.run("generate", {"prompt": "x", "steps": 1, "iterations": 1, "seed": 0}))
        assert updates[-1].kind == "done"
    asker = threading.Thread(target=e.load, args=("nano",))  # a load asked for from another thread
    asker.start()
    asker.join()
    # 2 builds, 2 runs and at least the first speed probe (later ones may reuse its reading)
    assert len(seen) >= 5 and len(set(seen)) == 1 and seen[0] not in (threading.current_thread(), asker)
    assert e.speed.probe() > 0 and seen[-1] is seen[0]  # asked for from here with the thread idle: it measures there
    with pytest.raises(ZeroDivisionError):
        e.compute.call(lambda: 1 / 0)
    assert e.compute.call(lambda: e.compute.call(lambda: 7)) == 7
