"""IRIS Studio's Blocks and handlers in-process (no server): build, live mode, send-to, restore, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from iris import editing  # noqa: E402
from iris_studio import metadata  # noqa: E402
from iris_studio.app import Studio, build_app  # noqa: E402
from iris_studio.engine import Engine  # noqa: E402
from iris_studio.gallery import Gallery  # noqa: E402
from iris_studio.settings import Settings, load_settings  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    engine = Engine("nano")
    engine.load()
    settings = Settings(preview_interval_ms=0, preview_cost=0.0)
    demo = build_app(engine, settings, Gallery(base / "out"), settings_file=base / "cfg" / "settings.json")
    return demo.studio


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def run_all(studio: Studio, task: str, **controls):
    values = [controls.get(name) for name in metadata.fields(task)]
    return list(studio.run_task(task, tuple(values)))


def test_the_app_has_every_tab_and_shared_controls(studio):
    assert set(studio.tabs) == {"generate", "inpaint", "edit", "upscale", "control"}
    for task, tab in studio.tabs.items():
        assert set(metadata.fields(task)) == set(tab.controls)
        assert tab.controls["iterations"].minimum == 1 and tab.controls["iterations"].maximum == 16
    assert "random weights" in studio.header_md()
    assert "random weights" in studio.notice_md()  # the random-weight model is labelled as such
    assert "NFE **4**" in studio.budget_md(2, 3, 3.0, 64, 64, "euler")  # CFG doubles the NFE
    assert "NFE **3**" in studio.budget_md(2, 3, 1.0, 64, 64, "heun")


def test_batch_count_runs_consecutive_seeds_saves_each_and_shows_a_grid(studio):
    controls = dict(prompt="a cat", seed=40, guidance=1.0, steps=1, iterations=1, sampler="euler", width=32,
                    height=32)
    values = tuple(controls.get(name) for name in metadata.fields("generate"))
    before = len(studio.gallery.entries())
    outputs = list(studio.run_batch(values, 3))
    entries = studio.gallery.entries()[: len(studio.gallery.entries()) - before]
    assert sorted(e.seed for e in entries) == [40, 41, 42]  # each image saved with its own seed
    assert any("Image 2/3" in str(o[1]) for o in outputs)  # the status says which image is running
    _, status, sheet, params = outputs[-1]
    assert 'data-state="done"' in status and "seeds 40–42" in status
    assert params["batch_seeds"] == [40, 41, 42]
    assert Image.open(sheet).size == (3 * 32 + 2 * 4, 32)  # one row of three, 4 px apart
    single = list(studio.run_batch(values, 1))
    assert Image.open(single[-1][2]).size == (32, 32)  # batch 1: the plain run
    for bad in (0, 17, "x", float("nan")):
        with pytest.raises(gr.Error, match="batch count"):
            list(studio.run_batch(values, bad))


def _seconds(line: str) -> float:
    return float(line.split("≈ **")[1].split(" s**")[0])


def test_the_time_estimate_counts_the_work_each_task_really_runs(studio):
    """Upscale 4x is two passes (2x, then 2x again at 4 times the pixels), an edit or upscale at strength 0
    runs no generator, and the budget listener reads its values by name, whatever the tab's controls."""
    from iris_studio.speed import SpeedMemory

    saved = studio.engine.speed
    studio.engine.speed = SpeedMemory(probe=lambda: 1.0)
    studio.engine.speed.record(studio.engine._units(64, 64, 1.0), per_iteration=1.0, overhead=0.5, load=1.0)
    try:
        up2 = _seconds(studio.budget_md(1, 2, 1.0, task="upscale", options={"scale": 2, "tile": 0},
                                        input_size=(32, 32)))
        up4 = _seconds(studio.budget_md(1, 2, 1.0, task="upscale", options={"scale": "4", "tile": 0},
                                        input_size=(32, 32)))
        assert up4 > 4 * up2  # 2 x 1 s + 2 x 4 s (+ fixed costs) against 2 x 1 s
        assert "**128 × 128** px" in studio.budget_md(1, 2, 1.0, task="upscale", options={"scale": 4},
                                                      input_size=(32, 32))
        still = _seconds(studio.budget_md(1, 2, 1.0, task="upscale", options={"scale": 2, "strength": 0.0},
                                          input_size=(32, 32)))
        assert still < up2
        edit = _seconds(studio.budget_md(4, 2, 1.0, task="edit", options={"strength": 0.5}, input_size=(64, 64)))
        none = _seconds(studio.budget_md(4, 2, 1.0, task="edit", options={"strength": 0.0}, input_size=(64, 64)))
        assert edit == pytest.approx(4 * 2 * 1.0 + 0.5) and none == pytest.approx(0.5)
        for task, tab in studio.tabs.items():
            names = [k for k in ("steps", "iterations", "guidance", "width", "height", "sampler", "strength",
                                 "scale", "tile", "masked_only") if k in tab.controls]
            listener = studio.budget_listener(task, (*names, "input_size"))
            values = [tab.controls[k].value for k in names]
            assert "NFE" in listener(*values, (64, 64)), task
    finally:
        studio.engine.speed = saved


def test_the_budget_line_says_the_size_a_run_will_use(studio):
    f = studio.engine.pipe.latent_factor
    assert f"**{4 * f} × {2 * f}** px" in studio.budget_md(1, 1, 1.0, 4 * f, 2 * f, "euler")
    line = studio.budget_md(1, 1, 1.0, 4 * f + 3, 2 * f, "euler")  # typed 67, say, on a grid of 16
    assert f"{4 * f + 3} → {4 * f}" in line and f"multiples of {f}" in line
    # a number half typed or over the limit: a note in the line, no exception (and so no error badge)
    for width in (2, "2", 5000, "abc", None, "", float("nan")):
        line = studio.budget_md(1, 1, 1.0, width, 2 * f, "euler")
        assert isinstance(line, str) and "\n" not in line
    assert "between" in studio.budget_md(1, 1, 1.0, 5000, 64, "euler")
    assert "px" not in studio.budget_md(1, 1, 1.0, 0, 0, "euler")  # 0 x 0: the model's (or control image's) size


def test_a_run_streams_previews_then_saves_the_result(studio):
    outputs = run_all(studio, "generate", prompt="a cat", seed=5, guidance=1.0, steps=1, iterations=2,
                      sampler="euler", width=64, height=64)
    assert "Starting" in outputs[0][1]
    previews = [o for o in outputs[1:-1] if isinstance(o[0], Image.Image)]
    assert len(previews) == 2
    preview, status, path, params = outputs[-1]
    assert 'data-state="done"' in status and params["seed"] == 5
    assert Image.open(path).size == (64, 64) and str(studio.gallery.folder) in path
    assert studio.reuse(params) == 5


def test_live_mode_rerenders_with_the_last_seed(studio):
    live = studio.live_runner("generate")
    names = metadata.fields("generate")
    values = dict(prompt="x", seed=-1, guidance=1.0, steps=1, iterations=1, sampler="euler", width=32, height=32)
    args = [values.get(n) for n in names]
    off = list(live(False, {"seed": 77}, *args))
    assert len(off) == 1 and all(is_skip(v) for v in off[0])  # Live off: the slider release does nothing
    on = list(live(True, {"seed": 77}, *args))
    assert on[-1][3]["seed"] == 77  # same seed as the last run, new budget
    fixed = list(live(True, {"seed": 77}, *[9 if n == "seed" else v for n, v in zip(names, args)]))
    assert fixed[-1][3]["seed"] == 9  # an explicit seed wins


def test_live_rerenders_stay_out_of_the_gallery(studio):
    from pathlib import Path

    live = studio.live_runner("generate")
    names = metadata.fields("generate")
    values = dict(prompt="x", seed=3, guidance=1.0, steps=1, iterations=1, sampler="euler", width=32, height=32)
    before = len(studio.gallery)
    paths = [list(live(True, {"seed": 3}, *[values.get(n) for n in names]))[-1][2] for _ in range(3)]
    assert len(studio.gallery) == before  # three slider releases, no new gallery entries
    assert not Path(paths[0]).exists() and Path(paths[-1]).is_file()  # each scratch result replaces the last
    assert "Run saves it" in list(live(True, {"seed": 3}, *[values.get(n) for n in names]))[-1][1]


def test_inpaint_needs_a_painted_mask_and_uses_it_black_and_white(studio):
    image = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    editor = {"background": image.convert("RGBA"), "layers": [], "composite": None}
    common = dict(prompt="x", seed=1, guidance=1.0, steps=1, iterations=1, sampler="euler", mask_blur=2,
                  masked_only=False, padding=0)
    with pytest.raises(gr.Error, match="Paint the area"):
        list(studio.run_task("inpaint", (editor, None, *[common.get(n) for n in metadata.fields("inpaint")])))
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:40, 20:44] = (255, 255, 255, 255)
    layer[50, 50] = (255, 255, 255, 40)  # faint: ignored
    editor["layers"] = [Image.fromarray(layer, "RGBA")]
    out = list(studio.run_task("inpaint", (editor, None, *[common.get(n) for n in metadata.fields("inpaint")])))
    assert all(len(o) == 5 for o in out)  # inpaint also shows the mask it used, with its first message
    mask = np.asarray(out[0][4])
    assert set(np.unique(mask)) == {0, 255} and mask[20, 30] == 255 and mask[50, 50] == 0
    result = np.asarray(Image.open(out[-1][2]).convert("RGB"))
    far = ~editing.grow_mask(mask == 255, editing.feather_reach(common["mask_blur"]))
    assert np.array_equal(result[far], np.asarray(image)[far])


def test_engine_errors_become_gr_errors(studio):
    with pytest.raises(gr.Error, match="seed must be between"):
        run_all(studio, "generate", prompt="x", seed=2**70, guidance=1.0, steps=1, iterations=1, width=32,
                height=32)
    with pytest.raises(gr.Error, match="Upload an image"):
        list(studio.run_task("edit", (None, "x", "", 1, 1.0, 1, 1, "euler", 0.5)))
    with pytest.raises(gr.Error, match="control image is empty"):
        list(studio.run_task("control", ({"background": Image.new("RGB", (32, 32), "white"), "layers": []},
                                         *[None] * len(metadata.fields("control")))))
    with pytest.raises(gr.Error, match="Could not load a model from /no/such/model"):
        studio.load_model("Local folder", "/no/such/model", "nano", "cpu")
    with pytest.raises(gr.Error):
        studio.load_model("Hub id", "", "nano", "cpu")
    assert studio.engine.info.random_weights  # still the model it had


def test_load_model_says_nothing_about_server_paths(studio, tmp_path):
    """A caller must not learn which paths exist on the server or what a config.json there holds: a missing
    folder, a file, a folder without a model and a config with secrets inside all get the same answer."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text('{"api_token": "hunter2", "generator": {"dim": "x"}}')
    answers = set()
    for where in ("/no/such/model", str(tmp_path / "empty"), str(tmp_path / "file.txt"), str(tmp_path / "secret"),
                  "/etc", "/etc/hostname"):
        for source in ("Local folder", "Hub id"):
            with pytest.raises(gr.Error) as err:
                studio.load_model(source, where, "nano", "cpu")
            message = str(err.value)
            assert "hunter2" not in message and "api_token" not in message and "dim" not in message
            answers.add(message.replace(where, "<where>"))
    assert len(answers) == 1, answers
    with pytest.raises(gr.Error, match="device"):
        studio.load_model("Local folder", str(tmp_path / "secret"), "nano", "meta")
    assert studio.engine.info.random_weights  # still the model it had



def test_a_model_name_or_folder_holding_html_is_escaped_in_the_header(tmp_path):
    """The header is raw HTML and printed the config's `name` as it was: a model folder (or hub repo) named
    "<img src=x onerror=...>" ran its script in the studio's page."""
    import json

    from iris import IrisPipeline

    folder = tmp_path / "<b>folder"
    IrisPipeline.from_variant("nano").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["name"] = "<img src=x onerror=alert(1)>"
    (folder / "config.json").write_text(json.dumps(config))
    engine = Engine(str(folder))
    engine.load()
    studio = Studio(engine, Settings(), Gallery(tmp_path / "out"), settings_file=tmp_path / "settings.json")
    header = studio.header_md()
    assert "<img" not in header and "&lt;img src=x onerror=alert(1)&gt;" in header
    assert "<b>folder" not in header and "&lt;b&gt;folder" in header
    assert header.startswith("<div class='iris-header'>")  # the header's own markup stays

def test_send_to_and_restore(studio, tmp_path):
    from iris.pngmeta import save_png

    path = save_png(Image.new("RGB", (32, 32)), tmp_path / "r.png", {"task": "edit", "prompt": "p", "seed": 3,
                                                                     "strength": 0.25, "iterations": 2})
    value, prompt, tabs = studio.send("inpaint", str(path), "a red apple")
    assert value == {"background": str(path), "layers": [], "composite": str(path)} and prompt == "a red apple"
    value, prompt, _ = studio.send("edit", str(path), {"task": "generate", "prompt": "from the gallery"})
    assert value == str(path) and prompt == "from the gallery"  # the gallery sends the result's settings
    assert is_skip(studio.send("edit", str(path), None)[1])  # no prompt known: the target's stays
    assert all(is_skip(v) for v in studio.send("edit", None, "x"))  # nothing to send
    restored = studio.restore("edit", str(path))
    named = dict(zip(metadata.fields("edit"), restored))
    assert named["strength"] == 0.25 and named["seed"] == 3 and is_skip(named["guidance"])
    assert restored[-1] == str(path)  # the restored PNG is shown in the result panel too
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert is_skip(studio.restore("edit", str(plain))[-1])  # not an IRIS image: nothing restored, nothing shown
    outputs = studio.gallery_restore({"task": "edit", "prompt": "p", "seed": 3, "strength": 0.25})
    assert len(outputs) == sum(len(metadata.fields(t)) for t in studio.tabs) + 1
    start = sum(len(metadata.fields(t)) for t in ("generate", "inpaint"))
    edit_values = dict(zip(metadata.fields("edit"), outputs[start:]))
    assert edit_values["prompt"] == "p" and edit_values["strength"] == 0.25


def test_gallery_delete_removes_the_png_and_its_entry_only(studio, tmp_path):
    g = studio.gallery
    keep = g.add(Image.new("RGB", (8, 8), "red"), {"task": "generate", "prompt": "keep", "seed": 1})
    gone = g.add(Image.new("RGB", (8, 8), "blue"), {"task": "generate", "prompt": "delete me", "seed": 2})
    assert studio.gallery_delete(str(gone)) == (None, None, None)
    assert not gone.exists() and keep.exists()
    prompts = [e.prompt for e in g.entries()]
    assert "delete me" not in prompts and "keep" in prompts
    assert "delete me" not in [e.prompt for e in type(g)(g.folder).entries()]  # the index was rewritten too
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = g.folder / "link.png"
    link.symlink_to(outside)
    for bad in (str(outside), str(link), "/etc/passwd", str(g.folder / ".." / "x.png"), None, ""):
        assert all(is_skip(v) for v in studio.gallery_delete(bad)), bad  # refused, nothing touched
    assert outside.exists() and link.is_symlink()
    link.unlink()


def test_gallery_select_and_save_settings(studio):
    items, files = studio.gallery_items()
    assert items and len(items) == len(files)
    selected, params, path = studio.gallery_select(files, gr.SelectData(None, {"index": 0, "value": None}))
    assert selected == path and params["task"] in metadata.EXTRAS
    message = studio.save_settings("", 3, 5, 2.0, 0, 0, True, 50, 0.2, "glass", 0.5, 0.3, 2, 16)
    assert "Saved" in message
    settings, warning = load_settings(studio.settings_file)
    assert warning is None and (settings.steps, settings.iterations, settings.theme) == (3, 5, "glass")
    with pytest.raises(gr.Error):
        studio.save_settings("", 0, 5, 2.0, 0, 0, True, 50, 0.2, "glass", 0.5, 0.3, 2, 16)


def test_fast_mode_switches_between_the_bundled_model_and_its_student(tmp_path, monkeypatch):
    """The header's Model switch loads the distilled student (or back) and sets every tab's budget to the loaded
    model's defaults (consistency sampler, no guidance); the choice is saved."""
    from iris import IrisPipeline, variant_config

    def folder(name: str, **sampler) -> str:
        cfg = variant_config("nano")
        for k, v in sampler.items():
            setattr(cfg.sampler, k, v)
        cfg.name = name
        return str(IrisPipeline.from_config(cfg, seed=0).save_pretrained(tmp_path / name))

    monkeypatch.setenv("IRIS_DEMO_MODEL", folder("teacher", steps=4, iterations=8, guidance=3.0, sampler="euler",
                                                 compose=True))
    monkeypatch.setenv("IRIS_FAST_MODEL", folder("student", steps=2, iterations=4, guidance=1.0, sampler="consistency",
                                                          regional=False))
    engine = Engine("demo")
    engine.load()
    settings_file = tmp_path / "cfg" / "settings.json"
    studio = build_app(engine, Settings(), Gallery(tmp_path / "out"), settings_file=settings_file).studio
    out = studio.switch_mode("⚡ Fast")
    assert engine.spec == "fast" and engine.info.name == "student" and "student" in out[0]
    budgets = out[2:]
    assert len(budgets) == 5 * len(studio.tabs) + 1  # the Generate tab also has Compose placed subjects
    assert [b["value"] for b in budgets[:6]] == [2, 4, 1.0, "consistency", False, False]
    assert load_settings(settings_file)[0].model == "fast"
    back = studio.switch_mode("Quality")
    assert engine.spec == "demo" and [b["value"] for b in back[2:8]] == [4, 8, 3.0, "euler", True, True]
    assert "M-parameter generator" in studio.header_md()


def test_budget_grid_streams_its_cells_and_lands_in_the_gallery(studio):
    outputs = list(studio.run_grid("a cat", "", 4, 2.0, "euler", 64, 64, "1,2", "1,2"))
    assert "Rendering 4 budgets" in outputs[0][1]
    grids = [o[0] for o in outputs if isinstance(o[0], Image.Image)]
    assert len(grids) == 6  # the empty grid, one per finished cell, the final labelled grid
    assert len({g.size for g in grids}) == 1
    assert 'data-state="done"' in outputs[-1][1] and "4 budgets" in outputs[-1][1]
    newest = studio.gallery.entries()[0]
    assert newest.task == "grid" and newest.params["seed"] == 4 and len(newest.params["cells"]) == 4
    with pytest.raises(gr.Error, match="steps"):
        list(studio.run_grid("a cat", "", 4, 2.0, "euler", 64, 64, "1,2", "0"))


def test_a_reloaded_page_gets_the_saved_settings_and_the_gallery(studio):
    """Page load refreshes the Settings tab from the settings in effect (saved after the app was built) and
    fills the gallery, so a reload never shows stale values that a later Save would write back."""
    demo = next(iter(studio.tabs.values())).run.parent
    while demo.parent is not None:
        demo = demo.parent
    studio.settings = studio.settings.updated(steps=6, negative_prompt="blurry")
    values = dict(zip(Studio.SETTINGS_FIELDS, studio.settings_values()))
    assert values["steps"] == 6 and values["negative_prompt"] == "blurry"
    config = demo.get_config_file() if hasattr(demo, "get_config_file") else demo.config
    loads = [d for d in config["dependencies"] if any(t[1] == "load" for t in d["targets"])]
    targets = {tuple(sorted(d["outputs"])) for d in loads}
    assert tuple(sorted(c._id for c in studio.settings_inputs)) in targets
    gallery_ids = {c._id for c in studio.tabs["generate"].controls.values()}
    assert any(len(t) == 2 and not set(t) & gallery_ids for t in targets)  # the gallery and its file list


def test_unknown_words_are_named_under_the_prompt(tmp_path):
    from iris.hub import demo_model_path

    if not (demo_model_path() / "config.json").is_file():
        pytest.skip("no bundled demo model")
    engine = Engine("demo")
    engine.load()
    studio = build_app(engine, Settings(), Gallery(tmp_path / "out"), settings_file=tmp_path / "s.json").studio
    note = studio.vocab_md("a kitten on a beach")
    assert "**kitten**" in note and "**beach**" in note and "Words this model knows" in note and "apple" in note
    assert studio.vocab_md("a red apple on a blue background") == "" and studio.vocab_md("") == ""


def test_uploads_keep_16_bit_values_and_alpha_for_the_engine(studio, tmp_path):
    """The edit/upscale inputs and the mask upload hand the engine the file's own mode: a 16-bit gradient keeps
    its range (gradio's RGB conversion would clip it to white) and an alpha-only mask keeps its region."""
    from gradio.data_classes import FileData

    from iris.inputs import open_image, open_mask

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    for task in ("edit", "upscale"):
        got = studio.tabs[task].images[0].preprocess(FileData(path=str(tmp_path / "g16.png")))
        assert 120 < np.asarray(open_image(got)).mean() < 135, task
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    got = studio.tabs["inpaint"].images[1].preprocess(FileData(path=str(tmp_path / "alpha.png")))
    assert np.asarray(open_mask(got, (32, 32))).sum() == 255 * 256


def test_the_regional_prompts_checkbox_reaches_the_run_and_comes_back_from_its_png(studio, tmp_path):
    """Advanced → Regional prompts: off is what the run uses and saves; a restored PNG sets the checkbox; a value
    that is not true or false is refused in one line."""
    from iris.pngmeta import save_png

    assert studio.tabs["generate"].controls["regional"].value is True  # the engine's default
    base = dict(prompt="a cat on the left and a dog on the right", seed=5, guidance=1.0, steps=1, iterations=1,
                sampler="euler", width=32, height=32)
    for value in (False, True):
        params = run_all(studio, "generate", **base, regional=value)[-1][3]
        assert params["regional"] is value
    with pytest.raises(gr.Error, match="regional must be true or false"):
        run_all(studio, "generate", **base, regional="yes")
    path = save_png(Image.new("RGB", (32, 32)), tmp_path / "r.png", {"task": "generate", "prompt": "p",
                                                                     "regional": False})
    named = dict(zip(metadata.fields("generate"), studio.restore("generate", str(path))))
    assert named["regional"] is False
    assert metadata.coerce("regional", "false") is metadata.SKIP  # only a real boolean is restored


def test_compose_placed_subjects_is_a_generate_control_that_reaches_the_run_and_its_png(studio, tmp_path):
    """Advanced → Compose placed subjects, in the Generate tab only: what the run uses and saves, set back by a
    restored PNG, refused in one line when not a boolean; the budget grid passes it on."""
    from iris.pngmeta import save_png

    assert "compose" in studio.tabs["generate"].controls
    assert all("compose" not in studio.tabs[t].controls for t in studio.tabs if t != "generate")
    assert studio.tabs["generate"].controls["compose"].value is studio.engine.info.defaults["compose"]
    base = dict(prompt="a cat on the left and a dog on the right", seed=5, guidance=1.0, steps=1, iterations=1,
                sampler="euler", width=32, height=32)
    for value in (True, False):
        params = run_all(studio, "generate", **base, compose=value)[-1][3]
        assert params["compose"] is value
    with pytest.raises(gr.Error, match="compose must be true or false"):
        run_all(studio, "generate", **base, compose="yes")
    path = save_png(Image.new("RGB", (32, 32)), tmp_path / "c.png", {"task": "generate", "prompt": "p",
                                                                     "compose": True})
    named = dict(zip(metadata.fields("generate"), studio.restore("generate", str(path))))
    assert named["compose"] is True
    assert "compose" not in metadata.fields("edit")
    grid = list(studio.run_grid("a cat on the left and a dog on the right", "", 1, 1.0, "euler", 32, 32, "1", "1",
                                True, True))
    assert grid[-1][0] is not None
    # the budget line says when a prompt is composed
    placed = {"prompt": "a cat on the left and a dog on the right", "compose": True}
    composed = studio.budget_md(2, 3, 1.0, 32, 32, "euler", options=placed)
    single = studio.budget_md(2, 3, 1.0, 32, 32, "euler", options={**placed, "compose": False})
    assert "**2** placed subjects" in composed and "placed" not in single
    assert "placed" not in studio.budget_md(2, 3, 1.0, 32, 32, "euler", task="edit", options=placed)
