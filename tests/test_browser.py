"""IRIS Studio in a real browser: Playwright driving Debian's chromium (/usr/bin/chromium, installed by .ci/run).

Loads the page, types a prompt, generates and watches the live preview change, then paints a mask stroke on the
Inpaint canvas, runs inpaint and checks that every pixel beyond the stroke's soft edge is unchanged. Screenshots go to a
temp folder (printed; kept by pytest's tmp_path retention).
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_studio_e2e import StudioProcess, make_test_model  # same folder

from iris.editing import feather_reach, grow_mask
from iris_studio.settings import Settings

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("IRIS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    base = tmp_path_factory.mktemp("browser")
    config = base / "config"
    config.mkdir()
    settings = {"preview_interval_ms": 0, "preview_cost": 0.0, "steps": 2, "iterations": 3, "guidance": 3.0}
    (config / "settings.json").write_text(json.dumps(settings))
    studio = StudioProcess(make_test_model(base / "model"), config, base / "outputs", base / "studio.log")
    yield studio, base
    studio.stop()


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def open_studio(page, url: str) -> None:
    """Load the page and wait until gradio has mounted the Generate tab's controls and both image panes (the
    prompt box can appear before the panes do)."""
    page.goto(url)
    for selector in ("#generate-prompt textarea", "#generate-run", "#generate-preview", "#generate-result"):
        page.wait_for_selector(selector, state="attached")


def watch_images(page, selector: str, key: str) -> None:
    """Record in ``window[key]`` every distinct src the image under ``selector`` shows from now on. The observer
    watches the whole page, so it survives gradio mounting or re-rendering the component."""
    page.evaluate("""([selector, key]) => {
        window[key] = [];
        const seen = () => { const img = document.querySelector(selector + ' img');
            const list = window[key];
            if (img && img.src && list[list.length - 1] !== img.src) list.push(img.src); };
        new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
    }""", [selector, key])


def fetch_image(page, selector: str) -> Image.Image:
    src = page.get_attribute(f"{selector} img", "src")
    return Image.open(io.BytesIO(page.request.get(src).body()))


def fill_until_it_holds(page, box: str, value: str, tries: int = 5) -> None:
    """Type `value` into the textbox `box` and leave it; type again while the field shows something else (a
    panel that has just opened can mount its fields again, back at their defaults, on a busy machine)."""
    field = page.locator(f"{box} textarea, {box} input").first
    for _ in range(tries):
        field.fill(value)
        field.press("Tab")  # the textbox hands its value to the app when it loses focus
        page.wait_for_timeout(500)
        if field.input_value() == value:
            return
    raise AssertionError(f"{box} shows {field.input_value()!r} after {tries} tries, not {value!r}")


def test_generate_shows_changing_previews_then_the_result(app, page):
    studio, base = app
    shots = base / "screenshots"
    shots.mkdir(exist_ok=True)
    open_studio(page, studio.url)
    page.screenshot(path=str(shots / "0-start.png"))
    watch_images(page, "#generate-preview", "__previews")  # every preview image the page shows
    page.fill("#generate-prompt textarea", "a red apple on a blue background")
    page.click("#generate-run")
    page.wait_for_selector('#generate-status [data-state="done"]')
    page.screenshot(path=str(shots / "1-generate.png"), full_page=True)
    previews = page.evaluate("() => window.__previews")
    assert len(previews) >= 2, previews  # the preview changed while the model iterated
    images = {page.request.get(src).body() for src in previews}
    assert len(images) >= 2
    result = fetch_image(page, "#generate-result")
    assert result.size == (128, 128)
    assert "Done in" in page.inner_text("#generate-status")
    print(f"screenshots: {shots}")


def test_paint_a_mask_and_inpaint_keeps_everything_outside_it(app, page):
    studio, base = app
    shots = base / "screenshots"
    # the generated image goes to the Inpaint tab with the "send to" button (a server-side value, so the
    # editor holds exactly that image when we paint)
    before_image = fetch_image(page, "#generate-result").convert("RGB")
    page.click("#generate-send-inpaint")
    page.wait_for_selector("#inpaint-editor canvas")
    page.wait_for_function(
        "() => document.querySelector('button[role=tab][aria-selected=true]')?.innerText.includes('Inpaint')"
    )
    page.wait_for_timeout(1500)  # the editor draws the new background asynchronously
    page.click("#inpaint-editor button[aria-label=Brush]")
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 50, cy - 10)
    page.mouse.down()
    for i in range(11):
        page.mouse.move(cx - 50 + 10 * i, cy - 10 + 2 * i, steps=2)
    page.mouse.up()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "2-inpaint-stroke.png"))
    page.fill("#inpaint-prompt textarea", "a yellow sun")
    page.click("#inpaint-run")
    page.wait_for_selector('#inpaint-status [data-state="done"]')
    page.wait_for_selector("#inpaint-mask-used img")
    page.screenshot(path=str(shots / "3-inpaint.png"), full_page=True)

    mask = np.asarray(fetch_image(page, "#inpaint-mask-used").convert("L"))
    result = np.asarray(fetch_image(page, "#inpaint-result").convert("RGB"))
    before = np.asarray(before_image)
    assert mask.shape == before.shape[:2] == result.shape[:2]
    assert set(np.unique(mask)) == {0, 255}  # made pure black/white
    painted = mask == 255
    assert 0.01 < painted.mean() < 0.6  # the stroke, not the whole image
    ys, xs = np.nonzero(painted)
    assert abs(xs.mean() - 64) < 24 and abs(ys.mean() - 64) < 24  # where it was painted: the middle
    far = ~grow_mask(painted, feather_reach(Settings().mask_blur))
    assert np.array_equal(result[far], before[far])  # beyond the stroke's soft edge: unchanged
    assert not np.array_equal(result[painted], before[painted])  # inside: repainted


def _stroke(page, dx: float, dy: float) -> None:
    """A short brush stroke on the Inpaint editor, offset (dx, dy) from its middle."""
    page.click("#inpaint-editor button[aria-label=Brush]")
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(8):
        page.mouse.move(x + 6 * i, y, steps=2)
    page.mouse.up()
    page.wait_for_timeout(300)


def test_clear_mask_after_errors_keeps_the_image_and_new_strokes(app, page):
    """The sequence that used to blank the editor: Inpaint with no image (error), upload, Inpaint with no mask
    (error), paint, Clear mask. The editor must keep the image, and a stroke painted right after the clear must
    be the mask the next run uses (the old one gone)."""
    studio, base = app
    shots = base / "screenshots"
    open_studio(page, studio.url)
    page.get_by_role("tab", name="Inpaint").click()
    page.wait_for_selector("#inpaint-run")
    page.click("#inpaint-run")
    page.wait_for_selector(".toast-body, [data-testid='toast-body']")
    image = base / "clear-input.png"
    Image.open(os.path.join(os.path.dirname(__file__), "..", "assets", "examples", "apple.png")).convert(
        "RGB").resize((128, 128)).save(image)
    page.set_input_files("#inpaint-editor input[type=file]", str(image))
    page.wait_for_selector("#inpaint-editor canvas")
    page.wait_for_timeout(1500)
    page.click("#inpaint-run")
    page.wait_for_function("() => document.body.innerText.includes('Paint the area')")
    _stroke(page, -40, -30)  # top left: to be cleared
    page.click("#inpaint-clear")
    page.wait_for_timeout(1000)
    _stroke(page, 0, 30)  # bottom middle: the one that counts
    page.screenshot(path=str(shots / "8-after-clear.png"))
    page.fill("#inpaint-prompt textarea", "a yellow sun")
    page.click("#inpaint-run")
    page.wait_for_selector('#inpaint-status [data-state="done"]', timeout=60_000)
    mask = np.asarray(fetch_image(page, "#inpaint-mask-used").convert("L")) == 255
    assert 0.005 < mask.mean() < 0.5, mask.mean()
    ys, xs = np.nonzero(mask)
    assert ys.mean() > 64, "the stroke after the clear (lower half) is the mask"
    assert not mask[:50, :50].any(), "the cleared stroke (top left) is gone"
    result = np.asarray(fetch_image(page, "#inpaint-result").convert("RGB"))
    before = np.asarray(Image.open(image).convert("RGB"))
    far = ~grow_mask(mask, feather_reach(Settings().mask_blur))
    assert np.array_equal(result[far], before[far])  # the image survived the clear


def test_budget_grid_fills_in_cell_by_cell(app, page):
    """The Generate tab's budget grid: open the panel, ask for 2 x 2 budgets, watch the picture change as cells
    arrive, and find the labelled grid in the gallery."""
    studio, base = app
    shots = base / "screenshots"
    shots.mkdir(exist_ok=True)
    open_studio(page, studio.url)
    page.fill("#generate-prompt textarea", "a red apple on a blue background")
    page.click("#grid-panel button")  # the accordion's header opens it
    for box in ("#grid-iterations", "#grid-steps"):
        fill_until_it_holds(page, box, "1,2")
    page.wait_for_timeout(1500)  # the values reach the app behind the budget line's updates
    watch_images(page, "#grid-image", "__grids")
    page.click("#grid-run")
    page.wait_for_selector('#grid-status [data-state="done"]', timeout=120_000)
    page.screenshot(path=str(shots / "4-grid.png"), full_page=True)
    assert "4 budgets" in page.inner_text("#grid-status")
    grids = page.evaluate("() => window.__grids")
    assert len(grids) >= 3, grids  # the empty grid, cells as they came, the final one
    final = fetch_image(page, "#grid-image")
    assert final.size == (48 + 2 * 160, 48 + 2 * 176)


def test_ctrl_enter_runs_the_open_tab_and_dark_mode_toggles(app, page):
    studio, base = app
    open_studio(page, studio.url)
    page.fill("#generate-prompt textarea", "a green apple")
    page.focus("#generate-negative textarea, #generate-negative input")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector('#generate-status [data-state="done"]', timeout=120_000)
    assert "Done in" in page.inner_text("#generate-status")
    dark_before = page.evaluate("() => document.body.classList.contains('dark')")
    page.click("#iris-dark")
    assert page.evaluate("() => document.body.classList.contains('dark')") != dark_before
    page.screenshot(path=str(base / "screenshots" / "5-dark.png"), full_page=True)


def test_typing_a_size_shows_no_error_and_the_line_says_the_size(app, page):
    """Typing 256 into Width sends 2, then 25, then 256: none of them may raise an error badge, and the budget
    line names the size the run will use, with the rounding said out loud."""
    studio, base = app
    open_studio(page, studio.url)
    page.wait_for_selector("#generate-width input[type=number]")
    box = page.locator("#generate-width input[type=number]")
    box.fill("")
    box.type("256", delay=150)
    page.wait_for_function("() => document.querySelector('#generate-budget').innerText.includes('256 ×')")
    box.fill("")
    box.type("100", delay=150)
    page.wait_for_function("() => document.querySelector('#generate-budget').innerText.includes('100 → ')")
    page.wait_for_timeout(500)
    page.screenshot(path=str(base / "screenshots" / "6-size.png"), full_page=True)
    errors = page.evaluate("""() => [...document.querySelectorAll('.toast-body, .error, [data-testid="toast-body"]')]
        .map(e => e.innerText).filter(t => t && t.trim())""")
    assert not errors, errors


def test_batch_count_shows_a_grid_and_saves_each_seed(app, page):
    studio, base = app
    open_studio(page, studio.url)
    page.wait_for_selector("#generate-batch input[type=number]")
    page.fill("#generate-prompt textarea", "a batch of three")
    page.fill("#generate-seed input", "7")
    box = page.locator("#generate-batch input[type=number]")
    box.fill("3")
    box.press("Enter")
    page.click("#generate-run")
    page.wait_for_function(
        "() => document.querySelector('#generate-status').innerText.includes('3 images')", timeout=120_000)
    page.screenshot(path=str(base / "screenshots" / "9-batch.png"), full_page=True)
    sheet = fetch_image(page, "#generate-result")
    assert sheet.size == (3 * 128 + 2 * 4, 128)  # three 128 px images in a row, 4 px apart
    assert "seeds 7–9" in page.inner_text("#generate-status")


def test_upscale_budget_line_follows_the_image_and_the_scale(app, page):
    """The time estimate of an upscale is for its output: the input's size times the scale."""
    studio, base = app
    open_studio(page, studio.url)
    page.get_by_role("tab", name="Upscale").click()
    small = base / "small-64x48.png"
    Image.new("RGB", (64, 48), "purple").save(small)
    page.set_input_files("#upscale-input input[type=file]", str(small))
    page.wait_for_function("() => document.querySelector('#upscale-budget').innerText.includes('128 × 96')")
    page.get_by_label("4").check()
    page.wait_for_function("() => document.querySelector('#upscale-budget').innerText.includes('256 × 192')")
    page.screenshot(path=str(base / "screenshots" / "10-upscale-budget.png"))


def _estimate(page, selector: str) -> float:
    import re

    found = re.search(r"≈ ([\d.]+) s", page.inner_text(selector))
    assert found, page.inner_text(selector)
    return float(found.group(1))


def test_upscale_estimate_counts_both_passes_and_the_strength(app, page):
    """After a measured run, the upscale estimate at 4x (a 2x pass, then a 2x pass on four times the pixels)
    is several times the 2x one, and at strength 0 (the pixel upscaler alone) it drops to the fixed cost."""
    studio, base = app
    open_studio(page, studio.url)
    page.fill("#generate-prompt textarea", "a red apple")
    page.click("#generate-run")  # measures the speed the estimates scale
    page.wait_for_selector('#generate-status [data-state="done"]', timeout=60_000)
    page.get_by_role("tab", name="Upscale").click()
    big = base / "big-256x192.png"
    Image.new("RGB", (256, 192), "teal").save(big)
    page.set_input_files("#upscale-input input[type=file]", str(big))
    page.wait_for_function("() => /512 × 384.*≈ [0-9.]+ s/.test(document.querySelector('#upscale-budget').innerText)")
    two = _estimate(page, "#upscale-budget")
    page.get_by_label("4").check()
    page.wait_for_function("() => document.querySelector('#upscale-budget').innerText.includes('1024 × 768')")
    four = _estimate(page, "#upscale-budget")
    assert two > 0 and four > 3 * two, (two, four)
    page.get_by_label("2").check()
    page.wait_for_function("() => document.querySelector('#upscale-budget').innerText.includes('512 × 384')")
    slider = page.locator("#upscale-strength input[type=number]")
    slider.fill("0")
    slider.press("Enter")
    page.wait_for_function(f"() => !document.querySelector('#upscale-budget').innerText.includes('≈ {two} s')")
    assert _estimate(page, "#upscale-budget") < two
    page.screenshot(path=str(base / "screenshots" / "10b-upscale-estimate.png"))


def test_control_opens_on_upload_and_offers_a_blank_canvas(app, page):
    """The Control tab's editor opens ready for an upload (a click there does not draw a dot on a white page);
    "Blank canvas" gives a page to draw on; an uploaded image shows its control map."""
    studio, base = app
    open_studio(page, studio.url)
    page.get_by_role("tab", name="Control").click()
    page.wait_for_selector("#control-editor")
    text = page.inner_text("#control-editor").lower()
    assert "upload" in text or "drop" in text, text
    page.click("#control-blank")
    page.wait_for_selector("#control-editor canvas")
    page.wait_for_timeout(800)
    page.screenshot(path=str(base / "screenshots" / "11-control-blank.png"))
    image = base / "control-input.png"
    Image.open(os.path.join(os.path.dirname(__file__), "..", "assets", "examples", "apple.png")).convert(
        "RGB").save(image)
    open_studio(page, studio.url)
    page.get_by_role("tab", name="Control").click()
    page.set_input_files("#control-editor input[type=file]", str(image))
    page.wait_for_selector("#control-preview img", timeout=60_000)
    page.screenshot(path=str(base / "screenshots" / "12-control-upload.png"))


def test_gallery_captions_wrap_instead_of_being_cut(app, page):
    studio, base = app
    open_studio(page, studio.url)
    page.fill("#generate-prompt textarea", "a long prompt: a red apple and a yellow star on a blue background")
    page.click("#generate-run")
    page.wait_for_selector('#generate-status [data-state="done"]', timeout=120_000)
    page.get_by_role("tab", name="Gallery").click()
    page.wait_for_selector("#gallery .caption-label")
    styles = page.evaluate("""() => [...document.querySelectorAll('#gallery .caption-label')].map(e => ({
        ws: getComputedStyle(e).whiteSpace, cut: e.scrollWidth > e.clientWidth + 1, text: e.innerText}))""")
    assert styles and all(s["ws"] == "normal" and not s["cut"] for s in styles), styles[:3]


def test_quick_repeated_clicks_queue_one_run_each(app, page):
    studio, base = app
    open_studio(page, studio.url)
    page.fill("#generate-prompt textarea", "three clicks")
    before = len(list((base / "outputs").rglob("*.png")))
    for _ in range(3):  # while the first run is still going
        page.click("#generate-run")
        page.wait_for_timeout(150)
    saved = lambda: len(list((base / "outputs").rglob("*.png"))) - before
    for _ in range(240):
        if saved() >= 3:
            break
        page.wait_for_timeout(500)
    page.wait_for_timeout(1500)
    assert saved() == 3


def test_a_failed_model_load_marks_only_the_model_status(app, page):
    """Loading a folder that holds no model says so in a toast and beside the Load button; the header and the
    other outputs keep no red error badge, and the loaded model stays."""
    studio, base = app
    open_studio(page, studio.url)
    page.get_by_role("tab", name="Settings").click()
    page.get_by_label("Local folder").check()
    page.locator("#settings-location textarea, #settings-location input").first.fill("/no/such/model")
    page.click("#settings-load")
    page.wait_for_selector(".toast-body, [data-testid='toast-body']")
    page.wait_for_timeout(800)
    page.screenshot(path=str(base / "screenshots" / "7-failed-load.png"), full_page=True)
    assert "Could not load a model" in page.inner_text(".toast-body, [data-testid='toast-body']")
    header_errors = page.evaluate(
        "() => [...document.querySelectorAll('#iris-header .error, .block:has(#iris-header) .error')].length")
    assert header_errors == 0
    assert "random weights" in page.inner_text("#iris-header") or page.inner_text("#iris-header").strip()


def test_login_page_logs_in_and_the_studio_works(page, tmp_path):
    """With --auth the browser gets gradio's login page; after logging in the studio loads and generates. The
    request guard's login rule must leave everything the login page needs open."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    config = tmp_path / "config"
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({"steps": 1, "iterations": 1, "guidance": 1.0}))
    studio = StudioProcess(make_test_model(tmp_path / "model"), config, tmp_path / "outputs", tmp_path / "log",
                           extra=("--auth", "me:secret"))
    try:
        # a page of its own in the module's browser (one Playwright per process)
        page = page.context.browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(studio.url)  # the login page, not the studio yet
        page.wait_for_selector("input[type=password]")
        assert not page.query_selector("#generate-prompt textarea")
        page.fill("input[type=text]", "me")
        page.fill("input[type=password]", "wrong")
        page.keyboard.press("Enter")
        page.wait_for_timeout(1500)
        assert not page.query_selector("#generate-prompt textarea")  # a wrong password lets nothing in
        page.fill("input[type=text]", "me")
        page.fill("input[type=password]", "secret")
        page.keyboard.press("Enter")
        page.wait_for_selector("#generate-prompt textarea")
        page.fill("#generate-prompt textarea", "a red apple on a blue background")
        page.click("#generate-run")
        page.wait_for_selector('#generate-status [data-state="done"]')
        page.screenshot(path=str(tmp_path / "logged-in.png"))
        assert fetch_image(page, "#generate-result").size[0] > 0
        page.close()
    finally:
        studio.stop()


def test_regional_prompts_can_be_turned_off_under_advanced(app, page):
    """Advanced → Regional prompts, unticked in the page, reaches the run: the saved PNG records it off."""
    from iris.pngmeta import read_params

    studio, base = app
    open_studio(page, studio.url)
    before = set((base / "outputs").rglob("*.png"))
    page.locator("#tab-generate").get_by_text("Advanced", exact=True).first.click()
    box = page.locator("#generate-regional input[type=checkbox]")
    box.wait_for(state="visible")
    assert box.is_checked()  # on by default
    box.uncheck()
    page.fill("#generate-prompt textarea", "a cat on the left and a dog on the right")
    page.click("#generate-run")
    page.wait_for_selector('#generate-status [data-state="done"]')
    new = sorted(set((base / "outputs").rglob("*.png")) - before, key=lambda p: p.stat().st_mtime)
    assert new and read_params(new[-1])["regional"] is False
    box.check()  # leave the page as the other tests expect it


def test_compose_placed_subjects_can_be_ticked_under_advanced(app, page):
    """Advanced → Compose placed subjects (Generate only), ticked in the page, reaches the run: a placed prompt
    is drawn one subject at a time and the saved PNG records it."""
    from iris.pngmeta import read_params

    studio, base = app
    open_studio(page, studio.url)
    before = set((base / "outputs").rglob("*.png"))
    page.locator("#tab-generate").get_by_text("Advanced", exact=True).first.click()
    box = page.locator("#generate-compose input[type=checkbox]")
    box.wait_for(state="visible")
    default = box.is_checked()
    box.set_checked(not default)
    page.fill("#generate-prompt textarea", "left: a cat; right: a dog")
    page.click("#generate-run")
    page.wait_for_selector('#generate-status [data-state="done"]')
    new = sorted(set((base / "outputs").rglob("*.png")) - before, key=lambda p: p.stat().st_mtime)
    assert new and read_params(new[-1])["compose"] is (not default)
    assert page.locator("#edit-compose").count() == 0  # the other tasks have no such control
    box.set_checked(default)  # leave the page as the other tests expect it
