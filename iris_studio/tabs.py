"""The layout of the task tabs. Every task tab is built by one function, `task_tab`, so they share a layout:

    left:  [task image input] prompt · negative prompt · [task controls] · seed 🎲 ♻ · [size] · guidance
           compute budget (iterations 1-16, steps, NFE / depth / time) · Live · Run · Stop · restore from PNG
    right: live preview | result · progress bar · send to … · parameters

Only components are made here; app.py wires the events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from iris import SAMPLERS, VARIANTS, limits
from iris.control import CONTROL_KINDS
from iris.grid import DEFAULT_ITERATIONS as DEFAULT_GRID_ITERATIONS
from iris.grid import DEFAULT_STEPS as DEFAULT_GRID_STEPS
from iris.options import Option, task_option

from .engine import FAST, is_variant
from .metadata import fields
from .settings import OPTION_SETTINGS, THEMES

TASK_TITLES = {
    "generate": "Generate",
    "inpaint": "Inpaint",
    "edit": "Edit",
    "upscale": "Upscale",
    "control": "Control",
}
RUN_LABELS = {
    "generate": "Generate",
    "inpaint": "Inpaint",
    "edit": "Edit",
    "upscale": "Upscale",
    "control": "Generate with control",
}
IMAGE_TARGETS = ("inpaint", "edit", "upscale", "control")
MODEL_SOURCES = ("Bundled demo", "Bundled fast (distilled)", "Local folder", "Hub id", "Random weights")
MAX_UI_ITERATIONS = 16


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


READABLE_KINDS = {gr.Slider: "a number", gr.Number: "a number", gr.Checkbox: "true or false", gr.Textbox: "text",
                  gr.Dropdown: "one of the offered choices", gr.Radio: "one of the offered choices",
                  gr.CheckboxGroup: "one of the offered choices"}


def readable_inputs() -> None:
    """Give every form control (sliders, numbers, menus, boxes) a one-line gr.Error for values it cannot take
    through the API (text or None into a slider, a value off a menu, out of bounds), instead of gradio's
    multi-line "Could not preprocess input component..." message and a console traceback.

    Patched on the component classes, once: gradio rebuilds a session's components from their settings
    when an event updates them, so a wrapper on the instance would be lost."""
    for kind, wanted in READABLE_KINDS.items():
        if getattr(kind, "_iris_readable", False):
            continue
        inner = kind.preprocess

        def preprocess(self: Any, payload: Any, inner=inner, wanted=wanted) -> Any:
            name = str(self.label or self.elem_id or type(self).__name__).split(" (")[0]
            if payload is None and wanted in ("a number", "true or false"):
                raise gr.Error(f"{name}: a value is required ({wanted})", print_exception=False)
            choices = [value for _, value in getattr(self, "choices", None) or []]
            if choices and payload not in choices and isinstance(payload, str | int | float):
                # the API docs show every choice as a string ('2' | '4' for the upscale factor): take either form
                payload = next((c for c in choices if str(c) == str(payload).strip()), payload)
            try:
                return inner(self, payload)
            except Exception as err:  # noqa: BLE001 - gradio's own errors and the data model's alike
                said = str(getattr(err, "message", "")).strip() if isinstance(err, gr.Error) else ""
                detail = f" ({said.splitlines()[0][:120]})" if said else ""
                message = f"{name} must be {wanted}, got {_shown(payload)}{detail}"
                raise gr.Error(message, print_exception=False) from None

        kind.preprocess = preprocess
        kind._iris_readable = True


FILE_KINDS = {"FileData": "an uploaded file", "ImageData": "an uploaded image",
              "EditorData": "an image editor value (background, layers, composite)"}


def readable_payloads(demo: gr.Blocks) -> None:
    """Answer API payloads gradio cannot even parse for a component (a bare string or a number where an uploaded
    file belongs: its data model's validation fails before any component code runs) with a one-line gr.Error,
    not a pydantic report of several lines and a traceback in the console."""
    inner = demo.preprocess_data

    async def preprocess_data(block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await inner(block_fn, inputs, state, explicit_call)
        except gr.Error as err:  # gradio's own ("Invalid file type...") print a traceback unless told not to
            if not err.print_exception:
                raise
            raise gr.Error(str(err.message).splitlines()[0], print_exception=False) from None
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            model = getattr(err, "title", "")
            errors = err.errors() if callable(getattr(err, "errors", None)) else []
            got = f", got {_shown(errors[0].get('input'))}" if errors else ""
            raise gr.Error(f"expected {FILE_KINDS.get(model, 'another kind of value')}{got}",
                           print_exception=False) from None

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]


def readable_upload(component: Any) -> Any:
    """Make an image input answer an upload gradio cannot decode (corrupt, truncated, empty, over PIL's pixel
    limit) with a one-line gr.Error instead of gradio's multi-line "Could not preprocess..." message.

    gradio re-raises a gr.Error from a component's preprocess unchanged; anything else it wraps."""
    inner = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return inner(payload)
        except gr.Error:
            raise
        except Exception as err:  # PIL's errors on a bad file: OSError, UnidentifiedImageError, DecompressionBombError
            from PIL import Image

            if isinstance(err, Image.DecompressionBombError):
                limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
                raise gr.Error(f"the uploaded image is too large: the limit is {limit:,} pixels",
                               print_exception=False) from None
            raise gr.Error(f"the uploaded image could not be read ({type(err).__name__}); is it a complete PNG, "
                           "JPEG or WebP file?", print_exception=False) from None

    component.preprocess = preprocess
    return component


@dataclass
class TaskTab:
    """The components of one task tab."""

    task: str
    images: list[Any]  # image inputs, in handler order (before the controls)
    controls: dict[str, Any]  # name -> component, for metadata.fields(task)
    live: Any
    budget: Any
    run: Any
    stop: Any
    randomize: Any
    reuse: Any
    preview: Any
    status: Any
    result: Any
    params: Any
    restore_file: Any
    restore_note: Any
    send: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # task-only widgets (brush size, clear, control preview)

    def inputs(self) -> list[Any]:
        return [*self.images, *(self.controls[name] for name in fields(self.task))]


def idle_status(text: str = "Ready.") -> str:
    return status_html(0.0, text, state="idle")


def status_html(progress: float, text: str, state: str = "running") -> str:
    pct = max(0.0, min(1.0, progress)) * 100
    return (
        f'<div class="iris-status" data-state="{state}"><div class="iris-bar"><div style="width:{pct:.1f}%">'
        f'</div></div><span class="iris-status-text">{text}</span></div>'
    )


def blank_canvas(size: int = 512) -> dict[str, Any]:
    from PIL import Image

    return {"background": Image.new("RGB", (size, size), "white"), "layers": [], "composite": None}


# Each tab's task options (iris.options), row by row; the size controls sit with the seed.
OPTION_ROWS: dict[str, tuple[tuple[str, ...], ...]] = {
    "inpaint": (("mask_blur", "padding"), ("masked_only",)),
    "edit": (("strength",),),
    "upscale": (("scale", "strength"), ("tile",)),
    "control": (("kind", "preprocess"), ("weight", "start", "end")),
}
SETTING_FOR = OPTION_SETTINGS  # the task options whose defaults the settings keep


def option_control(opt: Option, value: Any, choices: list[Any] | None = None, elem_id: str | None = None) -> Any:
    """The control for a task option: a checkbox, a radio of its choices, a dropdown of `choices` (for a text
    option), or a slider over its range."""
    label = opt.label or opt.name.replace("_", " ").capitalize()
    if opt.kind is bool:
        return gr.Checkbox(value=bool(value), label=label, elem_id=elem_id)
    if opt.choices is not None:
        return gr.Radio(list(opt.choices), value=value, label=label, elem_id=elem_id)
    if opt.kind is str:
        choices = list(choices or [value])
        return gr.Dropdown(choices, value=value if value in choices else choices[0], label=label, elem_id=elem_id)
    lo, hi = opt.ui_range or (opt.low, opt.high)
    return gr.Slider(lo, hi, value=value, step=opt.step or 1, label=label, elem_id=elem_id)


def task_tab(task: str, settings: Any, info: Any, control_kinds: tuple[str, ...] = CONTROL_KINDS) -> TaskTab:
    """Build the controls and outputs of one task tab inside the current gr.Tab."""
    images: list[Any] = []
    extra: dict[str, Any] = {}
    controls: dict[str, Any] = {}
    f = info.latent_factor
    native = info.resolution
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340):
            # ---------------------------------------------------------------- task image inputs
            if task == "inpaint":
                editor = gr.ImageEditor(
                    label="Image — paint the area to change",
                    type="pil",
                    image_mode="RGBA",
                    format="png",
                    sources=["upload", "clipboard"],
                    layers=False,
                    transforms=(),
                    height=420,
                    brush=gr.Brush(default_size=24, colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                    eraser=gr.Eraser(default_size=24),
                    elem_id="inpaint-editor",
                )
                images.append(editor)
                with gr.Row():  # the brush size is the editor's own control (its brush button)
                    extra["clear"] = gr.Button("Clear mask", size="sm", scale=1, elem_id="inpaint-clear")
                with gr.Accordion("…or upload a mask (white = change)", open=False):
                    images.append(
                        gr.Image(
                            label="Mask",
                            type="pil",
                            image_mode=None,  # as uploaded: an alpha-only mask keeps its alpha for the engine
                            format="png",
                            height=200,
                            sources=["upload", "clipboard"],
                            elem_id="inpaint-mask-upload",
                        )
                    )
            elif task == "control":
                editor = gr.ImageEditor(
                    value=None,  # opens on the upload area; "Blank canvas" gives a white page to draw on
                    label="Control image (upload, or a blank canvas to draw on)",
                    type="pil",
                    image_mode="RGB",
                    format="png",
                    sources=["upload", "clipboard"],
                    layers=False,
                    transforms=(),
                    height=380,
                    brush=gr.Brush(default_size=6, colors=["#000000", "#ffffff"], default_color="#000000"),
                    eraser=gr.Eraser(default_size=16),
                    elem_id="control-editor",
                )
                images.append(editor)
                extra["blank"] = gr.Button("✏️ Blank canvas to draw on", size="sm", elem_id="control-blank")
            elif task in ("edit", "upscale"):
                images.append(
                    gr.Image(
                        label="Input image",
                        type="pil",
                        image_mode=None,  # as uploaded: 16-bit and alpha reach the engine, which converts them
                        format="png",
                        height=300,
                        sources=["upload", "clipboard"],
                        elem_id=f"{task}-input",
                    )
                )
            for component in images:
                readable_upload(component)

            controls["prompt"] = gr.Textbox(
                label="Prompt",
                lines=2,
                placeholder="a red apple on a blue background",
                elem_id=f"{task}-prompt",
            )
            extra["vocab"] = gr.Markdown("", elem_id=f"{task}-vocab", elem_classes=["iris-vocab"])
            controls["negative_prompt"] = gr.Textbox(
                label="Negative prompt", lines=1, value=settings.negative_prompt, elem_id=f"{task}-negative"
            )

            # ---------------------------------------------------------------- task controls
            if task == "control":
                extra["control_note"] = gr.Markdown(
                    ""
                    if info.control_kinds
                    else "⚠️ This model has no control adapters; Control needs a model "
                    "trained with them (the preprocessor preview still works).",
                    elem_id="control-note",
                )
            kinds = list(info.control_kinds) or list(control_kinds)
            for row in OPTION_ROWS.get(task, ()):
                with gr.Row():
                    for name in row:
                        opt = task_option(task, name)
                        value = getattr(settings, SETTING_FOR[(task, name)]) if (task, name) in SETTING_FOR \
                            else opt.default
                        controls[name] = option_control(opt, value, kinds if name == "kind" else None,
                                                        elem_id=f"{task}-{name.replace('_', '-')}")

            # ---------------------------------------------------------------- seed, size, guidance
            if task == "generate":
                extra["batch"] = gr.Slider(
                    1, limits.MAX_BATCH, value=1, step=1, elem_id="generate-batch",
                    label="Batch count (consecutive seeds from the chosen one; each saved, shown as a grid)",
                )
            with gr.Row(equal_height=False, elem_classes=["iris-seed-row"]):
                controls["seed"] = gr.Number(
                    value=-1,
                    precision=0,
                    label="Seed (-1 = random)",
                    scale=4,
                    minimum=-1,
                    elem_id=f"{task}-seed",  # the engine checks the upper limit, and says it
                )
                randomize = gr.Button(
                    "🎲 Random",
                    scale=1,
                    min_width=60,
                    size="sm",
                    elem_id=f"{task}-randomize",
                    elem_classes=["iris-seed-btn"],
                )
                reuse = gr.Button(
                    "♻️ Last",
                    scale=1,
                    min_width=60,
                    size="sm",
                    elem_id=f"{task}-reuse",
                    elem_classes=["iris-seed-btn"],
                )
            if task in ("generate", "control"):
                lo = 0 if task == "control" else f * 2
                w0 = settings.width or (0 if task == "control" else native)
                h0 = settings.height or (0 if task == "control" else native)
                hint = " (0 = auto)" if task == "control" else ""
                with gr.Row():
                    controls["width"] = gr.Slider(
                        lo, limits.MAX_SIDE, value=w0, step=f, label=f"Width{hint}", elem_id=f"{task}-width"
                    )
                    controls["height"] = gr.Slider(
                        lo, limits.MAX_SIDE, value=h0, step=f, label=f"Height{hint}", elem_id=f"{task}-height"
                    )
            controls["guidance"] = gr.Slider(
                0.0,
                limits.MAX_GUIDANCE,
                value=settings.guidance,
                step=0.5,
                label="Guidance (1: the prompt alone, 0: the negative prompt alone; either halves the NFE)",
                elem_id=f"{task}-guidance",
            )

            # ---------------------------------------------------------------- compute budget
            with gr.Group(elem_classes=["iris-budget"]):
                with gr.Row(equal_height=True):
                    controls["iterations"] = gr.Slider(
                        1,
                        MAX_UI_ITERATIONS,
                        value=min(settings.iterations, MAX_UI_ITERATIONS),
                        step=1,
                        label="Core iterations",
                        scale=4,
                        elem_id=f"{task}-iterations",
                    )
                    controls["steps"] = gr.Slider(
                        1,
                        limits.MAX_STEPS,
                        value=settings.steps,
                        step=1,
                        label="Steps",
                        scale=3,
                        elem_id=f"{task}-steps",
                    )
                    live = gr.Checkbox(
                        value=settings.live,
                        label="Live",
                        scale=0,
                        min_width=80,
                        elem_id=f"{task}-live",
                        elem_classes=["iris-live"],
                    )
                budget = gr.Markdown("", elem_classes=["iris-budget-info"], elem_id=f"{task}-budget")
            with gr.Accordion("Advanced", open=False):
                controls["sampler"] = gr.Dropdown(
                    list(SAMPLERS),
                    value=info.defaults.get("sampler", "euler"),
                    label="Sampler",
                )
                controls["regional"] = gr.Checkbox(
                    value=bool(info.defaults["regional"]),
                    label="Regional prompts",
                    info="Draw what the prompt places (\"a cat on the left\") where it says",
                    elem_id=f"{task}-regional",
                )
                if "compose" in fields(task):
                    controls["compose"] = gr.Checkbox(
                        value=bool(info.defaults["compose"]),
                        label="Compose placed subjects",
                        info="Draw each placed subject on its own, then put it where the prompt says "
                             "(one whole run per subject)",
                        elem_id=f"{task}-compose",
                    )

            with gr.Row():
                run = gr.Button(RUN_LABELS[task], variant="primary", scale=3, elem_id=f"{task}-run")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{task}-stop")

        with gr.Column(scale=7, min_width=360):
            with gr.Row(equal_height=True):
                preview = gr.Image(
                    label="Live preview",
                    type="pil",
                    format="jpeg",
                    interactive=False,
                    height=360,
                    elem_id=f"{task}-preview",
                    elem_classes=["iris-fill"],
                )
                result = gr.Image(
                    label="Result",
                    type="filepath",
                    format="png",
                    interactive=False,
                    height=360,
                    elem_id=f"{task}-result",
                    elem_classes=["iris-fill"],
                )
            status = gr.HTML(idle_status(), label="Status", elem_id=f"{task}-status")
            with gr.Row():
                send = {
                    target: gr.Button(f"→ {TASK_TITLES[target]}", size="sm", elem_id=f"{task}-send-{target}")
                    for target in IMAGE_TARGETS
                }
            if task == "inpaint":
                extra["mask_view"] = gr.Image(
                    label="Mask used (white = change)",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=200,
                    elem_id="inpaint-mask-used",
                )
            if task == "generate":
                with gr.Accordion("▦ Budget grid: this prompt and seed across budgets", open=False,
                                  elem_id="grid-panel"):
                    with gr.Row():
                        extra["grid_iterations"] = gr.Textbox(
                            value=",".join(map(str, DEFAULT_GRID_ITERATIONS)), label="Core iterations (across)",
                            elem_id="grid-iterations",
                        )
                        extra["grid_steps"] = gr.Textbox(
                            value=",".join(map(str, DEFAULT_GRID_STEPS)), label="Steps (down)",
                            elem_id="grid-steps",
                        )
                        extra["grid_run"] = gr.Button("Render grid", variant="secondary", elem_id="grid-run")
                    extra["grid_image"] = gr.Image(
                        label="Budget grid (each cell: time and NFE)", type="pil", format="png", interactive=False,
                        elem_id="grid-image",
                    )
                    extra["grid_status"] = gr.HTML(idle_status(), elem_id="grid-status")
            if task == "control":
                extra["control_preview"] = gr.Image(
                    label="Preprocessor preview",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=220,
                    elem_id="control-preview",
                )
            with gr.Accordion("Parameters", open=False):
                params = gr.JSON(label="Parameters", elem_id=f"{task}-params")
                extra["copy"] = gr.Button("📋 Copy parameters", size="sm", elem_id=f"{task}-copy")
            restore_file = gr.File(
                label="Drop an IRIS PNG here to restore its settings",
                file_types=[".png"],
                type="filepath",
                height=120,
                elem_id=f"{task}-restore",
            )
            restore_note = gr.Markdown("", elem_id=f"{task}-restore-note")

    return TaskTab(
        task,
        images,
        controls,
        live,
        budget,
        run,
        stop,
        randomize,
        reuse,
        preview,
        status,
        result,
        params,
        restore_file,
        restore_note,
        send,
        extra,
    )


def gallery_tab(items: list[Any], files: list[str], folder: Any) -> dict[str, Any]:
    """The Gallery tab's components (past results, the selected one's parameters, restore, delete, send-to)."""
    g: dict[str, Any] = {}
    with gr.Row():
        g["refresh"] = gr.Button("Refresh", size="sm", scale=0, min_width=100)
        gr.Markdown(f"Results are saved in `{folder}`", elem_id="gallery-folder")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            g["gallery"] = gr.Gallery(
                value=items,
                columns=6,
                height=520,
                allow_preview=False,
                object_fit="contain",
                label="Past results",
                elem_id="gallery",
            )
        with gr.Column(scale=2):
            g["image"] = gr.Image(label="Selected", type="filepath", interactive=False, height=280)
            g["params"] = gr.JSON(label="Parameters")
            with gr.Row():
                g["restore"] = gr.Button("Restore settings in its tab", variant="primary", size="sm")
                g["delete"] = gr.Button("🗑 Delete", variant="stop", size="sm", elem_id="gallery-delete")
            with gr.Row():
                g["send"] = {t: gr.Button(f"→ {TASK_TITLES[t]}", size="sm") for t in IMAGE_TARGETS}
    g["files"] = gr.State(files)
    g["path"] = gr.State(None)
    return g


def settings_tab(st: Any, info: Any, spec: str, device: str, settings_file: Any) -> dict[str, Any]:
    """The Settings tab's components: where the model comes from, and the saved defaults."""
    s: dict[str, Any] = {}
    source = (
        "Bundled demo"
        if spec in ("demo", "")
        else "Bundled fast (distilled)"
        if spec == FAST
        else "Random weights"
        if is_variant(spec)
        else "Local folder"
        if Path(spec).expanduser().exists()
        else "Hub id"
    )
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Model")
            s["source"] = gr.Radio(list(MODEL_SOURCES), value=source, label="Source")
            s["location"] = gr.Textbox(
                label="Folder or hub id (owner/name)",
                value=spec if source in ("Local folder", "Hub id") else "",
                placeholder="/path/to/model or owner/name",
                elem_id="settings-location",
            )
            with gr.Row():
                s["variant"] = gr.Dropdown(
                    list(VARIANTS),
                    value=spec if source == "Random weights" else "nano",
                    label="Variant (random weights)",
                )
                s["device"] = gr.Dropdown(
                    ["cpu", "cuda", "mps"],
                    value=device,
                    label="Device",
                    allow_custom_value=True,
                )
            s["load"] = gr.Button("Load model", variant="primary", elem_id="settings-load")
            s["model_status"] = gr.Markdown(f"Current: **{info.name}** from `{info.source}`",
                                            elem_id="settings-model-status")
        with gr.Column():
            gr.Markdown("### Defaults")
            s["negative_prompt"] = gr.Textbox(label="Negative prompt", value=st.negative_prompt)
            with gr.Row():
                s["steps"] = gr.Slider(1, limits.MAX_STEPS, value=st.steps, step=1, label="Steps")
                s["iterations"] = gr.Slider(1, MAX_UI_ITERATIONS, value=min(st.iterations, MAX_UI_ITERATIONS),
                                            step=1, label="Core iterations")
            with gr.Row():
                s["guidance"] = gr.Slider(0.0, limits.MAX_GUIDANCE, value=st.guidance, step=0.5, label="Guidance")
                s["live"] = gr.Checkbox(value=st.live, label="Live mode on")
            with gr.Row():
                s["width"] = gr.Slider(0, limits.MAX_SIDE, value=st.width, step=info.latent_factor,
                                       label="Width (0 = model)")
                s["height"] = gr.Slider(0, limits.MAX_SIDE, value=st.height, step=info.latent_factor,
                                        label="Height (0 = model)")
            for row in (tuple(SETTING_FOR)[:2], tuple(SETTING_FOR)[2:]):
                with gr.Row():  # the task options' saved defaults, with the options' own ranges
                    for task, name in row:
                        key = SETTING_FOR[(task, name)]
                        opt = task_option(task, name)
                        label = f"{TASK_TITLES[task]}: {name.replace('_', ' ')}"
                        s[key] = gr.Slider(*(opt.ui_range or (opt.low, opt.high)), value=getattr(st, key),
                                           step=opt.step or 1, label=label)
            with gr.Row():
                s["preview_interval_ms"] = gr.Slider(
                    0, 1000, value=st.preview_interval_ms, step=10, label="Min. ms between previews"
                )
                s["preview_cost"] = gr.Slider(
                    0.0,
                    1.0,
                    value=st.preview_cost,
                    step=0.05,
                    label="Preview cost cap (0 = every iteration)",
                )
            s["theme"] = gr.Dropdown(list(THEMES), value=st.theme, label="Theme (applies on restart)")
            s["save"] = gr.Button("Save settings", variant="primary")
            s["save_status"] = gr.Markdown(f"Settings file: `{settings_file}`")
    return s


CSS = """
.iris-status { display: flex; align-items: center; gap: 12px; padding: 4px 2px; min-height: 28px; }
.iris-bar { flex: 0 0 38%; height: 8px; border-radius: 4px; background: var(--neutral-200);
            overflow: hidden; }
.dark .iris-bar { background: var(--neutral-700); }
.iris-bar > div { height: 100%; background: var(--color-accent); transition: width 0.12s linear; }
.iris-status[data-state="cancelled"] .iris-bar > div { background: var(--neutral-400); }
.iris-status-text { font-size: var(--text-sm); color: var(--body-text-color-subdued);
                    font-variant-numeric: tabular-nums; }
.iris-budget-info { font-size: var(--text-sm); padding: 10px 12px; }
.iris-live { display: flex; align-items: center; justify-content: center; }
.iris-seed-row { align-items: flex-end; }
.iris-seed-btn { align-self: flex-end; margin-bottom: 4px; }
.iris-notice { border-left: 4px solid #f59e0b; padding: 8px 12px !important;
               background: rgba(245,158,11,0.08); }
.iris-header h1 { margin: 0; font-size: 1.5rem; }
.iris-header p { margin: 0; color: var(--body-text-color-subdued); }
#gallery .caption-label { white-space: normal; max-width: calc(100% - 8px); display: -webkit-box;
  -webkit-line-clamp: 3; -webkit-box-orient: vertical; }
.iris-fill img { width: 100% !important; height: 100% !important; object-fit: contain; }
#gallery img { object-fit: contain !important; }
.iris-vocab { font-size: var(--text-sm); }
"""

# Ctrl+Enter (or Cmd+Enter) runs the task of the open tab, from anywhere on the page.
HEAD = """<script>
document.addEventListener("keydown", (event) => {
  if (!(event.ctrlKey || event.metaKey) || event.key !== "Enter") return;
  const run = [...document.querySelectorAll("button[id$='-run']")].find((b) => b.offsetParent !== null);
  if (run) { event.preventDefault(); run.click(); }
});
</script>"""
COPY_JS = "(params) => { navigator.clipboard && navigator.clipboard.writeText(JSON.stringify(params, null, 2)); }"
DARK_JS = "() => { document.body.classList.toggle('dark'); }"
