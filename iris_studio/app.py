"""IRIS Studio, the Gradio app: `build_app(engine, settings, gallery)` makes the Blocks, `launch` serves it.

Every task tab streams: its handler is a generator yielding (preview, status, result, parameters) after each
core iteration (throttled), and the final yield carries the saved result. Engine errors become `gr.Error`
messages, never tracebacks. Named endpoints (api_name) for gradio_client are listed in iris_studio/README.md.
"""

from __future__ import annotations

import html
import inspect
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from iris import limits
from iris.errors import InvalidInputError
from iris.inputs import check_int, check_seed
from iris.options import TASK_OPTIONS

from . import metadata
from .engine import FAST, GRID, TASKS, Engine
from .gallery import Gallery
from .masks import binarize, editor_composite, editor_image, editor_mask, is_blank
from .settings import THEMES, Settings, save_settings, settings_path
from .tabs import (
    CSS,
    DARK_JS,
    HEAD,
    TASK_TITLES,
    TaskTab,
    gallery_tab,
    readable_inputs,
    readable_payloads,
    settings_tab,
    status_html,
    task_tab,
)
from .wiring import GRADIO_6, PRIVATE, RUN_GROUP, wire_gallery, wire_settings, wire_tasks

log = logging.getLogger("iris_studio")
QUEUE_SIZE = 64  # runs waiting at most: 20 clients with two jobs each fit, with room to spare
IMAGE_INPUT_NAMES = {
    "generate": (),
    "inpaint": ("image", "mask"),
    "edit": ("image",),
    "upscale": ("image",),
    "control": ("control_image",),
}
MODES = ("Quality", "⚡ Fast")  # the bundled demo model, or its distilled student
# set to the loaded model's defaults, in every tab that has them
MODE_CONTROLS = ("steps", "iterations", "guidance", "sampler", "regional", "compose")


def theme_object(name: str) -> Any:
    return {
        "soft": gr.themes.Soft,
        "default": gr.themes.Default,
        "base": gr.themes.Base,
        "glass": gr.themes.Glass,
        "monochrome": gr.themes.Monochrome,
        "ocean": gr.themes.Ocean,
        "citrus": gr.themes.Citrus,
        "origin": gr.themes.Origin,
    }.get(name, gr.themes.Soft)()


def user_error(err: BaseException) -> gr.Error:
    """An engine error as a one-line message for the UI."""
    from iris.errors import IrisError

    if isinstance(err, gr.Error):
        return err
    if isinstance(err, IrisError):
        return gr.Error(str(err), print_exception=False)  # the user's to fix: no traceback in the console
    log.exception("unexpected error in a handler", exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). The app is still ready; see the console.",
                    print_exception=False)  # logged once, above


def control_kinds() -> tuple[str, ...]:
    """Every control kind the engine knows (a loaded model has adapters for some of them)."""
    from iris.control import CONTROL_KINDS

    return tuple(CONTROL_KINDS)


def _named(fn: Any, names: list[str], defaults: dict[str, Any] | None = None) -> Any:
    """Give a *args handler a signature with these parameter names (they name the API's parameters)."""
    defaults = defaults or {}
    params = []
    seen_default = False
    for name in names:
        if name in defaults or seen_default:
            seen_default = True
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults.get(name)))
        else:
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    fn.__signature__ = inspect.Signature(params)
    return fn


def task_images(task: str, images: list[Any]) -> dict[str, Any]:
    """The engine's image arguments from a tab's image components; gr.Error when one is missing."""
    if task == "generate":
        return {}
    if task == "inpaint":
        editor, upload = images
        image = editor_image(editor)
        if image is None:
            raise gr.Error("Upload an image to inpaint first.", print_exception=False)
        mask = binarize(upload, image.size) if upload is not None else editor_mask(editor, image.size)
        if mask is None or mask.getextrema()[1] == 0:
            raise gr.Error("Paint the area to change on the image first (or upload a mask).", print_exception=False)
        return {"image": image, "mask": mask}
    if task == "control":
        image = editor_composite(images[0])
        if image is None or is_blank(image):
            raise gr.Error("The control image is empty: upload an image or draw a scribble first.",
                           print_exception=False)
        return {"control_image": image}
    from iris.inputs import open_image

    if images[0] is None:
        raise gr.Error(f"Upload an image to {task} first.", print_exception=False)
    return {"image": open_image(images[0])}


class Studio:
    """The app's state and handlers (the engine, settings and gallery it was built with)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        gallery: Gallery,
        *,
        settings_file: Path | None = None,
        warnings: list[str] | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.gallery = gallery
        self.settings_file = Path(settings_file) if settings_file else settings_path()
        self.warnings = [w for w in (warnings or []) if w]
        if gallery.warning:
            self.warnings.append(gallery.warning)
        self.tabs: dict[str, TaskTab] = {}

    # ------------------------------------------------------------------------------------- texts
    def header_md(self) -> str:
        """The page header, raw HTML: the model's name and folder come from its config.json and the caller, so
        they are escaped (a hub model named "<img src=x onerror=...>" ran its script in the page)."""
        info = self.engine.info
        kind = html.escape("random weights" if info.random_weights else info.source)
        return (
            f"<div class='iris-header'><h1>IRIS Studio</h1><p>Model <b>{html.escape(info.name)}</b> ({kind}) · "
            f"{info.generator_parameters / 1e6:.1f}M-parameter generator ({info.parameters / 1e6:.1f}M with the "
            f"VAE and text encoder) · {info.resolution}px · {html.escape(str(self.engine.device))}</p></div>"
        )

    def notice_md(self) -> str:
        parts = ([f"⚠️ {self.engine.notice}"] if self.engine.notice else []) + [f"⚠️ {w}" for w in self.warnings]
        return "\n\n".join(parts)

    def vocab_md(self, prompt: Any) -> str:
        """Under the prompt: the words the loaded model does not know, with the list of those it does."""
        if not isinstance(prompt, str) or not prompt.strip():
            return ""
        try:
            unknown = self.engine.pipe.unknown_words(prompt)
        except Exception:  # noqa: BLE001 - a hint, never an error: the run itself reports bad prompts
            return ""
        if not unknown:
            return ""
        known = self.engine.pipe.known_words() or []
        words = ", ".join(f"**{w}**" for w in unknown[:12]) + (" …" if len(unknown) > 12 else "")
        listing = ", ".join(known)
        return (f"⚠️ Not in this model's vocabulary: {words}. The model leaves them out, "
                f"so they change nothing.\n\n<details><summary>Words this model knows ({len(known)})</summary>"
                f"\n\n{listing}\n\n</details>")

    def budget_md(
        self,
        steps: Any,
        iterations: Any,
        guidance: Any,
        width: Any = None,
        height: Any = None,
        sampler: Any = None,
        task: str = "generate",
        options: dict[str, Any] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> str:
        """The budget line: NFE, depth, the size the run uses and its time estimate. `input_size`: the
        image an image task works on (its output is that, times the scale for an upscale), unless a width
        and height are typed; `options`: the task's own values that change its work (strength, scale, tile,
        masked_only; for Generate the prompt and compose: a composed prompt draws each placed subject),
        as the controls hold them."""
        from iris.compose import composed_cost, composed_subjects

        size, note = "", ""
        raw = options or {}
        composing = task == "generate" and bool(raw.get("compose"))
        subjects = composed_subjects(raw.get("prompt"), composing)
        options = self._work_options(raw)
        if input_size is not None and not (width or height):
            factor = options.get("scale", 2) if task == "upscale" else 1
            size = f" · **{input_size[0] * factor} × {input_size[1] * factor}** px"
            width, height = input_size
        elif width is not None or height is not None:  # tabs with a size: say what the run will really use
            try:
                asked = [int(float(v or 0)) or None for v in (width, height)]
                w, h = self.engine.pipe.check_size(*asked)
            except (TypeError, ValueError, OverflowError) as err:
                msg = str(err) if isinstance(err, InvalidInputError) else "width and height must be numbers"
                return f"⚠️ {msg}"
            size = f" · **{w} × {h}** px" if any(asked) else ""  # 0 x 0: the model's size, or the control image's
            changed = [f"{a} → {b}" for a, b in zip(asked, (w, h)) if a is not None and a != b]
            if changed:
                note = f" ({', '.join(changed)}: sizes are multiples of {self.engine.pipe.latent_factor})"
        try:
            b = self.engine.budget(
                int(float(steps)),
                int(float(iterations)),
                float(guidance),
                int(float(width or 0)) or None,
                int(float(height or 0)) or None,
                sampler or None,
                task=task,
                options=options,
            )
        except (TypeError, ValueError, OverflowError):
            return ""
        seconds = b["seconds"]
        if seconds is not None:
            seconds *= composed_cost(subjects)
        est = f"≈ **{seconds:.1f} s**" if seconds is not None else "≈ ? s (measured after the first run)"
        composed = f" · **{subjects}** placed subjects, drawn side by side" if subjects > 1 else ""
        return f"NFE **{b['nfe']}** · effective depth **{b['depth']}** layers{size}{note}{composed} · {est}"

    @staticmethod
    def _work_options(values: dict[str, Any]) -> dict[str, Any]:
        """The options that change a task's work, read from raw control values (half-typed ones left out)."""
        kinds = {"strength": float, "scale": lambda v: int(float(v)), "tile": lambda v: int(float(v)),
                 "masked_only": bool}
        out = {}
        for name, kind in kinds.items():
            if values.get(name) is not None:
                try:
                    out[name] = kind(values[name])
                except (TypeError, ValueError, OverflowError):
                    pass
        return out

    # ---------------------------------------------------------------------------------- task runs
    def task_kwargs(self, task: str, images: list[Any], c: dict[str, Any]) -> dict[str, Any]:
        """Engine keyword arguments from the tab's values (its task options as `iris.options` lists them, the
        engine checks them); raises gr.Error for missing inputs."""
        seed = c.get("seed")
        seed = random.randint(0, limits.RANDOM_SEED_MAX) if seed is None or seed == "" or float(seed) < 0 else int(seed)
        common = {
            "prompt": c.get("prompt") or "",
            "negative_prompt": c.get("negative_prompt") or "",
            "seed": seed,
            "guidance": c.get("guidance"),
            "steps": c.get("steps"),
            "iterations": c.get("iterations"),
            "sampler": c.get("sampler") or None,
            "regional": c.get("regional"),
        }
        options = {o.name: c.get(o.name) for o in TASK_OPTIONS[task]}
        options.update({name: c.get(name) for name in metadata.TASK_BUDGET.get(task, ())})
        for side in ("width", "height"):  # 0: the model's size (or the control image's)
            if side in options:
                options[side] = int(options[side] or 0) or None
        return {**common, **options, **task_images(task, images)}

    def run_task(self, task: str, values: tuple[Any, ...], seed_fallback: int | None = None, save: bool = True,
                 label: str = ""):
        """The streaming handler body: yields (preview, status, result, params), and for inpaint also the
        black/white mask the run uses (sent with the first and the last message). `save=False` (Live
        re-renders) keeps the result out of the gallery: a scratch file, overwritten by the next one.
        `label` starts every status line (a batch's "image 2/4")."""
        n = len(IMAGE_INPUT_NAMES[task])
        images, controls = list(values[:n]), dict(zip(metadata.fields(task), values[n:]))
        if seed_fallback is not None and (controls.get("seed") is None or float(controls["seed"]) < 0):
            controls["seed"] = seed_fallback
        try:
            kwargs = self.task_kwargs(task, images, controls)
        except Exception as err:  # noqa: BLE001
            raise user_error(err) from None
        skip = gr.skip()
        extra = task == "inpaint"  # the mask output
        tail = (skip,) if extra else ()
        yield (skip, status_html(0.0, "Starting…"), skip, skip) + ((kwargs["mask"],) if extra else ())
        interval = self.settings.preview_interval_ms / 1000.0
        fraction = self.settings.preview_cost or None
        try:
            for up in self.engine.run(task, kwargs, interval=interval, preview_fraction=fraction):
                preview = up.image if up.image is not None else skip
                if up.kind == "preview":
                    eta = f" · ETA {up.eta:.1f} s" if up.eta is not None else ""
                    text = f"{label}{up.label} · {up.progress * 100:.0f}% · {up.elapsed:.1f} s{eta}"
                    yield (preview, status_html(up.progress, text), skip, skip) + tail
                elif up.kind == "done":
                    result = up.result
                    w, h = result.image.size
                    seed = result.params.get("seed")
                    if save:
                        path = self.gallery.add(result.image, result.params)
                        text = f"{label}Done in {up.elapsed:.1f} s · {w}×{h} · seed {seed} · saved {path.name}"
                        if self.gallery.warning:
                            text += f" ({self.gallery.warning})"
                    else:
                        path = live_scratch(task, result.image, result.params)
                        text = f"Done in {up.elapsed:.1f} s · {w}×{h} · seed {seed} · live preview (Run saves it)"
                    final = (kwargs["mask"],) if extra else ()  # API callers get the mask with the result
                    yield (skip, status_html(1.0, text, "done"), str(path), result.params) + final
                else:
                    text = f"Stopped at {up.label} after {up.elapsed:.1f} s. Ready."
                    yield (preview, status_html(up.progress, text, "cancelled"), skip, skip) + tail
        except Exception as err:  # noqa: BLE001
            raise user_error(err) from None

    @staticmethod
    def input_size(value: Any) -> tuple[int, int] | None:
        """(width, height) of a tab's input image or editor background, for the budget line; None without one."""
        image = editor_image(value) if isinstance(value, dict) else value
        return tuple(image.size) if isinstance(image, Image.Image) else None

    def run_batch(self, values: tuple[Any, ...], count: Any):
        """Generate with `count` consecutive seeds from the chosen one (a random start for -1): every image
        streams its previews and is saved to the gallery with its own seed; the result panel then shows them
        all as one grid. Yields what `run_task` yields."""
        try:
            count = check_int("batch count", count if count not in (None, "") else 1, 1, limits.MAX_BATCH)
        except InvalidInputError as err:
            raise user_error(err) from None
        if count == 1:
            yield from self.run_task("generate", values)
            return
        names = metadata.fields("generate")
        controls = dict(zip(names, values))
        seed = controls.get("seed")
        try:
            first = (random.randint(0, limits.RANDOM_SEED_MAX) if seed is None or seed == "" or float(seed) < 0
                     else check_seed(seed))
        except (InvalidInputError, TypeError, ValueError) as err:
            raise user_error(err) from None
        skip = gr.skip()
        images, params, started = [], None, time.perf_counter()
        for k in range(count):
            one = list(values)
            one[names.index("seed")] = first + k
            got = None
            for out in self.run_task("generate", tuple(one), label=f"Image {k + 1}/{count} · "):
                preview, status, result, p = out
                if isinstance(result, str):
                    got, params = result, p
                yield preview, status, skip, skip
            if got is None:  # stopped: keep what is done
                break
            images.append(Image.open(got).convert("RGB"))
        if not images:
            return
        cols = min(4, len(images))
        rows = -(-len(images) // cols)
        w, h = images[0].size
        sheet = Image.new("RGB", (cols * w + (cols - 1) * 4, rows * h + (rows - 1) * 4), "white")
        for i, image in enumerate(images):
            sheet.paste(image, ((i % cols) * (w + 4), (i // cols) * (h + 4)))
        seeds = list(range(first, first + len(images)))
        batch_params = {**(params or {}), "batch_seeds": seeds}
        path = live_scratch("batch", sheet, batch_params)
        text = (f"{len(images)} images in {time.perf_counter() - started:.1f} s · seeds {seeds[0]}–{seeds[-1]}, "
                "each saved to the gallery")
        yield skip, status_html(1.0, text, "done"), str(path), batch_params

    def run_grid(self, prompt: str, negative_prompt: str, seed: Any, guidance: float, sampler: str, width: Any,
                 height: Any, grid_iterations: str, grid_steps: str, regional: Any = None, compose: Any = None):
        """The budget grid of the Generate tab: streams the grid picture as its cells finish, then saves it to
        the gallery with every cell's budget, time and NFE. Yields (grid image, status)."""
        from iris.grid import compose as grid_picture
        from iris.grid import parse_grid

        try:
            its, sts = parse_grid(grid_iterations or "", grid_steps or "", self.engine.info.max_iterations)
            kwargs = self.task_kwargs("generate", [], {"prompt": prompt, "negative_prompt": negative_prompt,
                                                       "seed": seed, "guidance": guidance, "sampler": sampler,
                                                       "width": width, "height": height, "regional": regional,
                                                       "compose": compose})
        except Exception as err:  # noqa: BLE001
            raise user_error(err) from None
        for key in ("steps", "iterations"):
            kwargs.pop(key, None)
        kwargs.update(iterations=its, steps=sts)
        cells: list[Any] = [None] * (len(its) * len(sts))
        yield grid_picture(cells, sts, its), status_html(0.0, f"Rendering {len(cells)} budgets…")
        try:
            for up in self.engine.run(GRID, kwargs, interval=0.0, preview_fraction=0.0):
                if up.kind == "cell":
                    cells[int(round(up.progress * len(cells))) - 1] = up.result
                    text = f"{up.label} · {up.progress * 100:.0f}% · {up.elapsed:.1f} s"
                    yield grid_picture(cells, sts, its), status_html(up.progress, text)
                elif up.kind == "done":
                    grid = up.result
                    path = self.gallery.add(grid.image, grid.params)
                    total = sum(c.seconds for c in grid.cells)
                    yield grid.image, status_html(1.0, f"{len(grid.cells)} budgets in {total:.1f} s · seed "
                                                       f"{grid.params.get('seed')} · saved {path.name}", "done")
                elif up.kind == "cancelled":
                    yield gr.skip(), status_html(up.progress, f"Stopped after {up.elapsed:.1f} s. Ready.", "cancelled")
        except Exception as err:  # noqa: BLE001
            raise user_error(err) from None

    def runner(self, task: str) -> Any:
        names = [*IMAGE_INPUT_NAMES[task], *metadata.fields(task)]
        if task == "generate":  # and its batch count, last

            def run_generate(*values: Any):
                yield from self.run_batch(values[:-1], values[-1])

            return _named(run_generate, [*names, "batch_count"], {"batch_count": 1})

        def run(*values: Any):
            yield from self.run_task(task, values)

        return _named(run, names)

    def live_runner(self, task: str) -> Any:
        def live_run(live: bool, params: Any, *values: Any):
            if not live:
                yield tuple(gr.skip() for _ in range(5 if task == "inpaint" else 4))
                return
            last = params.get("seed") if isinstance(params, dict) else None
            yield from self.run_task(task, values, seed_fallback=last if isinstance(last, int) else None, save=False)

        return live_run

    def cancel_if_live(self, live: bool) -> None:
        if live:
            self.engine.cancel()

    def stop(self) -> None:
        """Ask the running generation to stop at its next core iteration (no output: the run says it stopped)."""
        self.engine.cancel()

    # --------------------------------------------------------------------------------- small handlers
    @staticmethod
    def randomize() -> int:
        return random.randint(0, limits.RANDOM_SEED_MAX)

    @staticmethod
    def reuse(params: Any) -> Any:
        if isinstance(params, dict) and isinstance(params.get("seed"), int):
            return params["seed"]
        gr.Warning("No previous run on this tab yet.")
        return gr.skip()

    def restore(self, task: str, path: Any) -> list[Any]:
        """The tab's controls from an IRIS PNG's settings, its note, and the PNG itself in the result panel."""
        params = metadata.read_png_params(path)
        values = [gr.skip() if v is metadata.SKIP else v for v in metadata.controls_from_params(params, task)]
        return [*values, metadata.describe(params), str(path) if params else gr.skip()]

    def restorer(self, task: str) -> Any:
        def restore(png: Any) -> list[Any]:
            return self.restore(task, png)

        return restore

    def send(self, target: str, path: Any, prompt: Any = None) -> tuple[Any, Any, Any]:
        """An image (and the prompt that made it) into another tab's input, and that tab opened."""
        if not path:
            gr.Warning("Nothing to send yet: run the task first.")
            return gr.skip(), gr.skip(), gr.skip()
        path = str(path)
        value: Any = path
        if target in ("inpaint", "control"):
            value = {"background": path, "layers": [], "composite": path}
        if isinstance(prompt, dict):  # the gallery sends the result's recorded settings
            prompt = prompt.get("prompt")
        return value, prompt if isinstance(prompt, str) else gr.skip(), gr.Tabs(selected=target)

    def preprocess(self, control_image: Any, kind: str, preprocess: bool) -> Any:
        image = editor_composite(control_image)
        if image is None or is_blank(image):
            return None
        if not preprocess:
            return image
        from iris.control import preprocess as run_preprocess

        try:
            return run_preprocess(kind, image)
        except Exception as err:  # noqa: BLE001
            raise user_error(err) from None

    # ------------------------------------------------------------------------------------- gallery
    def gallery_items(self) -> tuple[list[tuple[str, str]], list[str]]:
        shown = [(e, self.gallery.path_of(e)) for e in self.gallery.entries(limit=200)]
        shown = [(e, path) for e, path in shown if path is not None]
        return [(str(path), f"{e.task} · {e.prompt[:40]}") for e, path in shown], [e.file for e, _ in shown]

    def gallery_list(self) -> dict[str, Any]:
        """The output folder and its entries (newest first; `file` is relative to the folder)."""
        return {"folder": str(self.gallery.folder), "entries": [e.to_dict() for e in self.gallery.entries()]}

    def gallery_select(self, files: list[str], evt: gr.SelectData) -> tuple[Any, Any, Any]:
        index = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else 0)
        if not files or index is None or index >= len(files):
            return None, None, None
        file = files[index]
        path = self.gallery.resolve(file)
        if path is None:
            return None, None, None
        entry = next((e for e in self.gallery.entries() if e.file == file), None)
        return str(path), (entry.params if entry else None), str(path)

    def gallery_delete(self, path: Any) -> tuple[Any, Any, Any]:
        """Delete the selected result (its PNG and index entry) and clear the selection."""
        file = self.gallery.file_of(path) if path else None
        if file is None or not self.gallery.delete(file):
            gr.Warning("Select a result first.")
            return gr.skip(), gr.skip(), gr.skip()
        gr.Info(f"Deleted {Path(file).name}.")
        return None, None, None

    def gallery_restore(self, params: Any) -> list[Any]:
        outputs: list[Any] = []
        task = params.get("task") if isinstance(params, dict) else None
        if task not in TASKS:
            gr.Warning("Select a result first.")
        for t in TASKS:
            n = len(metadata.fields(t))
            if t == task:
                outputs += [gr.skip() if v is metadata.SKIP else v for v in metadata.controls_from_params(params, t)]
            else:
                outputs += [gr.skip()] * n
        outputs.append(gr.Tabs(selected=task) if task in TASKS else gr.skip())
        return outputs

    # ------------------------------------------------------------------------------------ settings
    def load_model(
        self,
        source: str,
        location: str,
        variant: str,
        device: str,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[Any, ...]:
        from iris.errors import HubOfflineError, InvalidInputError
        from iris.inputs import check_device

        location = (location or "").strip()
        if source == "Bundled demo":
            spec = "demo"
        elif source == "Bundled fast (distilled)":
            spec = FAST
        elif source == "Random weights":
            spec = variant or "nano"
        else:
            if not location:
                raise gr.Error("Enter a model folder or a hub id (owner/name) first.", print_exception=False)
            spec = location
        device = device or "cpu"
        try:
            check_device(device)
        except InvalidInputError as err:
            raise user_error(err) from None
        progress(0.0, desc=f"Loading {spec}…")
        try:
            info = self.engine.load(spec, device)
        except Exception as err:  # noqa: BLE001
            if spec != location or isinstance(err, HubOfflineError):
                raise user_error(err) from None
            # Whether a server path exists, or what its config.json holds, is not the caller's to learn: the
            # details go to the console of whoever runs the studio.
            log.warning("could not load a model from %r: %s", location, err)
            raise gr.Error(f"Could not load a model from {location}: no IRIS model folder or hub id this studio can "
                           "read there. The studio's console says why.", print_exception=False) from None
        self.settings = self.settings.updated(model=spec, device=device)
        try:
            save_settings(self.settings, self.settings_file)
        except OSError as err:
            gr.Warning(f"Model loaded, but the settings could not be saved: {err}")
        self.warnings = []
        message = f"Loaded **{info.name}** from `{info.source}` ({info.parameters / 1e6:.1f}M parameters)."
        notice = self.notice_md()
        kinds = info.control_kinds or list(control_kinds())
        note = (
            ""
            if info.control_kinds
            else (
                "⚠️ This model has no control adapters; Control needs a model "
                "trained with them (the preprocessor preview still works)."
            )
        )
        return (
            message,
            self.header_md(),
            gr.Markdown(notice, visible=bool(notice)),
            gr.Dropdown(choices=kinds, value=kinds[0]),
            note,
        )

    def save_settings(
        self,
        negative_prompt: str,
        steps: float,
        iterations: float,
        guidance: float,
        width: float,
        height: float,
        live: bool,
        preview_interval_ms: float,
        preview_cost: float,
        theme: str,
        edit_strength: float,
        upscale_strength: float,
        mask_blur: float,
        padding: float,
    ) -> str:
        try:
            self.settings = self.settings.updated(
                negative_prompt=negative_prompt or "",
                steps=int(steps),
                iterations=int(iterations),
                guidance=float(guidance),
                width=int(width or 0),
                height=int(height or 0),
                live=bool(live),
                preview_interval_ms=int(preview_interval_ms),
                preview_cost=float(preview_cost),
                theme=theme if theme in THEMES else "soft",
                edit_strength=float(edit_strength),
                upscale_strength=float(upscale_strength),
                mask_blur=int(mask_blur),
                padding=int(padding),
            )
            path = save_settings(self.settings, self.settings_file)
        except (ValueError, TypeError, OSError) as err:
            raise gr.Error(f"Settings not saved: {err}", print_exception=False) from None
        return f"Saved to `{path}`. New defaults apply to the tabs on the next start; the theme too."

    def get_settings(self) -> dict[str, Any]:
        return self.settings.to_dict()

    SETTINGS_FIELDS = ("negative_prompt", "steps", "iterations", "guidance", "width", "height", "live",
                       "preview_interval_ms", "preview_cost", "theme", "edit_strength", "upscale_strength",
                       "mask_blur", "padding")

    def settings_values(self) -> list[Any]:
        """The Settings tab's values from the settings in effect (in SETTINGS_FIELDS order)."""
        data = self.settings.to_dict()
        return [data[k] for k in self.SETTINGS_FIELDS]

    # ---------------------------------------------------------------------------------------- build
    def build(self) -> gr.Blocks:
        info = self.engine.info
        blocks_kwargs: dict[str, Any] = {"title": "IRIS Studio", "analytics_enabled": False}
        if not GRADIO_6:
            blocks_kwargs.update(theme=theme_object(self.settings.theme), css=CSS, head=HEAD)
        with gr.Blocks(**blocks_kwargs) as demo:
            with gr.Row(equal_height=True):
                header = gr.HTML(self.header_md(), elem_id="iris-header")
                mode = gr.Radio(
                    list(MODES),
                    value=MODES[1] if self.engine.spec == FAST else MODES[0],
                    label="Model",
                    info="Fast: the distilled student, 1-4 steps without guidance; it trades some fidelity "
                    "for several times the speed",
                    visible=fast_model_installed() and self.engine.spec in ("demo", "", FAST),
                    scale=0,
                    min_width=260,
                    elem_id="iris-mode",
                )
                dark = gr.Button("🌓", size="sm", scale=0, min_width=48, elem_id="iris-dark")
                dark.click(None, None, None, js=DARK_JS)
            notice_text = self.notice_md()
            notice = gr.Markdown(
                notice_text, visible=bool(notice_text), elem_classes=["iris-notice"], elem_id="iris-notice"
            )
            with gr.Tabs(elem_id="iris-tabs") as tabs:
                for task in TASKS:
                    with gr.Tab(TASK_TITLES[task], id=task, elem_id=f"tab-{task}"):
                        self.tabs[task] = task_tab(task, self.settings, info, control_kinds())
                with gr.Tab("Gallery", id="gallery", elem_id="tab-gallery"):
                    g = gallery_tab(*self.gallery_items(), self.gallery.folder)
                with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
                    s = settings_tab(self.settings, info, self.engine.spec, self.engine.device, self.settings_file)
            wire_tasks(self, demo, tabs, g)
            wire_gallery(self, g, tabs)
            wire_settings(self, s, header, notice)
            budget_controls = [tab.controls[k] for tab in self.tabs.values() for k in MODE_CONTROLS
                               if k in tab.controls]
            mode.change(self.switch_mode, mode, [header, notice, *budget_controls], api_name="mode",
                        concurrency_limit=1, concurrency_id=RUN_GROUP)
            # a reloaded page shows what is saved now, not what was saved when the app was built
            demo.load(self.settings_values, None, self.settings_inputs, queue=False, **PRIVATE)
            demo.load(self.gallery_items, None, [g["gallery"], g["files"]], queue=False, **PRIVATE)
        readable_inputs()
        readable_payloads(demo)
        return demo

    def switch_mode(self, mode: str) -> list[Any]:
        """Load the bundled model of `mode` ("Quality" or "⚡ Fast") and set every tab's budget to its defaults."""
        spec = FAST if mode == MODES[1] else "demo"
        if spec != self.engine.spec:
            try:
                self.engine.load(spec, self.engine.device)
            except Exception as err:  # noqa: BLE001
                raise user_error(err) from None
            self.settings = self.settings.updated(model=spec)
            try:
                save_settings(self.settings, self.settings_file)
            except OSError as err:
                gr.Warning(f"Model switched, but the settings could not be saved: {err}")
        d = self.engine.info.defaults
        values = [gr.update(value=d[k]) for tab in self.tabs.values() for k in MODE_CONTROLS if k in tab.controls]
        notice = self.notice_md()
        return [self.header_md(), gr.Markdown(notice, visible=bool(notice)), *values]

    def budget_listener(self, task: str, names: tuple[str, ...]) -> Any:
        """The budget line's listener for a tab: its values arrive in the order of `names`."""

        def budget_fn(*values: Any) -> str:
            v = dict(zip(names, values))
            size = v.get("input_size")
            size = tuple(size) if isinstance(size, (list, tuple)) and len(size) == 2 else None
            return self.budget_md(v.get("steps"), v.get("iterations"), v.get("guidance"), v.get("width"),
                                  v.get("height"), v.get("sampler"), task=task, options=v, input_size=size)

        return budget_fn


def build_app(
    engine: Engine,
    settings: Settings,
    gallery: Gallery | None = None,
    *,
    settings_file: Path | None = None,
    warnings: list[str] | None = None,
) -> gr.Blocks:
    """The studio as a gr.Blocks (not launched). The engine's model is loaded if it is not yet."""
    studio = Studio(
        engine,
        settings,
        gallery if gallery is not None else Gallery(),
        settings_file=settings_file,
        warnings=warnings,
    )
    demo = studio.build()
    demo.studio = studio  # type: ignore[attr-defined]
    return demo


def live_scratch(task: str, image: Any, params: dict[str, Any]) -> Path:
    """Where a Live re-render's result goes: a new file under gradio's temp folder (which it serves),
    the previous one of the task removed, so the gallery does not fill with near-duplicates."""
    import tempfile

    from iris.pngmeta import save_png

    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "iris-studio-live"
    folder.mkdir(exist_ok=True)
    for old in folder.glob(f"{task}-*.png"):
        old.unlink(missing_ok=True)
    return save_png(image, folder / f"{task}-{random.getrandbits(48):012x}.png", params)


def fast_model_installed() -> bool:
    from iris.hub import demo_model_path

    return (demo_model_path(fast=True) / "config.json").is_file()


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    inbrowser: bool = False,
    prevent_thread_lock: bool = False,
    max_file_size: str = "25mb",
    quiet: bool = False,
    allowed_hosts: tuple[str, ...] = (),
) -> Any:
    """Queue (one generation at a time, at most QUEUE_SIZE waiting) and serve. Files are served from the output folder
    only (and gradio's own cache). Requests whose Host header names another machine are refused (see
    `iris_studio.hosts`): a loopback bind answers loopback names and `allowed_hosts` only."""
    studio: Studio = demo.studio  # type: ignore[attr-defined]
    from PIL import Image
    from starlette.middleware import Middleware

    from iris.inputs import MAX_PIXELS

    from .hosts import RequestGuard, parse_size
    from .hosts import allowed_hosts as hosts_for

    # gradio decodes uploads with PIL before a handler runs: PIL refuses images over 2 x MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    kwargs: dict[str, Any] = dict(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        inbrowser=inbrowser,
        allowed_paths=[str(studio.gallery.folder)],
        max_file_size=max_file_size,
        show_error=True,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        ssr_mode=False,
        app_kwargs={"middleware": [Middleware(RequestGuard, allowed=hosts_for(host, share, allowed_hosts),
                                              max_body=parse_size(max_file_size) + (1 << 20))]},
    )
    if GRADIO_6:
        kwargs.update(theme=theme_object(studio.settings.theme), css=CSS, head=HEAD)
    return demo.launch(**kwargs)
