"""How the studio's components talk to its handlers: every event of every tab, in one place.

`iris_studio.tabs` builds the components, `iris_studio.app.Studio` holds the handlers; the functions here
connect the two (`Studio.build` calls them once, inside its `gr.Blocks`, passing itself as `studio`; this
module does not import `app`, so the two stay free of an import cycle).
"""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from . import metadata
from .engine import TASKS
from .tabs import COPY_JS, blank_canvas

GRADIO_6 = "theme" in inspect.signature(gr.Blocks.launch).parameters
PRIVATE: dict[str, Any] = {"api_visibility": "private"} if GRADIO_6 else {"show_api": False}
RUN_GROUP = "iris-run"  # every generation shares one concurrency slot
BUDGET_FIELDS = ("steps", "iterations", "guidance", "width", "height", "sampler", "strength", "scale", "tile",
                 "masked_only", "compose", "prompt")  # the controls a tab's budget line follows


def wire_tasks(studio: Any, demo: gr.Blocks, tabs: Any, g: dict[str, Any]) -> None:
    """Every task tab's events: runs, budget lines, live sliders, restore, send-to, mask and control helpers."""
    for task, tab in studio.tabs.items():
        outputs = [tab.preview, tab.status, tab.result, tab.params]
        if task == "inpaint":
            outputs.append(tab.extra["mask_view"])
        if task == "generate":
            c, x = tab.controls, tab.extra
            x["grid_run"].click(
                studio.run_grid,
                [c["prompt"], c["negative_prompt"], c["seed"], c["guidance"], c["sampler"], c["width"],
                 c["height"], x["grid_iterations"], x["grid_steps"], c["regional"], c["compose"]],
                [x["grid_image"], x["grid_status"]],
                api_name="grid",
                concurrency_limit=1,
                concurrency_id=RUN_GROUP,
                show_progress="hidden",
            ).then(studio.gallery_items, None, [g["gallery"], g["files"]], concurrency_limit=None, **PRIVATE)
        tab.extra["copy"].click(None, tab.params, None, js=COPY_JS)
        tab.controls["prompt"].change(studio.vocab_md, tab.controls["prompt"], tab.extra["vocab"], queue=False,
                                      trigger_mode="always_last", **PRIVATE)
        inputs = tab.inputs()
        budget_names = [k for k in BUDGET_FIELDS if k in tab.controls]
        input_size = None
        if tab.images:  # the run's size follows its input image
            input_size = gr.State(None)
        budget_inputs = [tab.controls[k] for k in budget_names] + ([input_size] if input_size else [])
        budget_fn = studio.budget_listener(task, (*budget_names, *(["input_size"] if input_size else [])))

        run_inputs = [*inputs, tab.extra["batch"]] if task == "generate" else inputs
        run_event = tab.run.click(
            studio.runner(task),
            run_inputs,
            outputs,
            api_name=task,
            concurrency_limit=1,
            concurrency_id=RUN_GROUP,
            show_progress="hidden",
            trigger_mode="multiple",  # clicks while a run is going queue up, one run each, none dropped
        )
        submit_event = tab.controls["prompt"].submit(
            studio.runner(task),
            run_inputs,
            outputs,
            concurrency_limit=1,
            concurrency_id=RUN_GROUP,
            show_progress="hidden",
            **PRIVATE,
        )
        for ev in (run_event, submit_event):
            ev.then(studio.gallery_items, None, [g["gallery"], g["files"]], concurrency_limit=None, **PRIVATE)
            ev.then(budget_fn, budget_inputs, tab.budget, concurrency_limit=None, **PRIVATE)
        tab.stop.click(
            studio.stop,
            None,
            None,
            api_name="stop" if task == "generate" else None,
            concurrency_limit=None,
            queue=False,
            show_progress="hidden",
            **({} if task == "generate" else PRIVATE),
        )
        tab.randomize.click(studio.randomize, None, tab.controls["seed"], queue=False, **PRIVATE)
        tab.reuse.click(studio.reuse, tab.params, tab.controls["seed"], queue=False, **PRIVATE)
        for comp in budget_inputs:
            if comp is input_size:
                continue
            # preprocess=False: a number half typed ("2" of "256") reaches budget_md as it is, which
            # says what is wrong instead of the slider raising an error badge at every keystroke
            comp.change(budget_fn, budget_inputs, tab.budget, queue=False, preprocess=False,
                        trigger_mode="always_last", **PRIVATE)
        if input_size is not None:
            tab.images[0].change(studio.input_size, tab.images[0], input_size, queue=False,
                                 show_progress="hidden", **PRIVATE).then(
                budget_fn, budget_inputs, tab.budget, queue=False, preprocess=False, **PRIVATE)
        demo.load(budget_fn, budget_inputs, tab.budget, queue=False, **PRIVATE)
        for slider in (tab.controls["iterations"], tab.controls["steps"]):
            slider.release(studio.cancel_if_live, tab.live, None, queue=False, **PRIVATE).then(
                studio.live_runner(task),
                [tab.live, tab.params, *inputs],
                outputs,
                concurrency_limit=1,
                concurrency_id=RUN_GROUP,
                show_progress="hidden",
                trigger_mode="always_last",
                **PRIVATE,
            ).then(studio.gallery_items, None, [g["gallery"], g["files"]], concurrency_limit=None, **PRIVATE)
        controls = [tab.controls[name] for name in metadata.fields(task)]
        tab.restore_file.upload(
            studio.restorer(task),
            tab.restore_file,
            [*controls, tab.restore_note, tab.result],
            api_name=f"restore_{task}",
            concurrency_limit=None,
        )
        for target, button in tab.send.items():
            button.click(
                lambda path, prompt, _t=target: studio.send(_t, path, prompt),
                [tab.result, tab.controls["prompt"]],
                [studio.tabs[target].images[0], studio.tabs[target].controls["prompt"], tabs],
                queue=False,
                **PRIVATE,
            )
        if task == "inpaint":
            editor = tab.images[0]
            # in the page, with no round trip to the server: the editor keeps its background and loses its
            # strokes at once (a server answer re-fetched the image and could leave the editor blank)
            tab.extra["clear"].click(
                None,
                editor,
                editor,
                js="(v) => (v && v.background) ? {background: v.background, layers: [], "
                   "composite: v.background} : v",
                queue=False,
                show_progress="hidden",
                **PRIVATE,
            )
        if task == "control":
            tab.extra["blank"].click(blank_canvas, None, tab.images[0], queue=False, **PRIVATE)
            pre_inputs = [tab.images[0], tab.controls["kind"], tab.controls["preprocess"]]
            preview = tab.extra["control_preview"]
            gr.Button(visible=False).click(
                studio.preprocess, pre_inputs, preview, api_name="preprocess", concurrency_limit=None
            )
            gr.on(  # the editor fires input per stroke and upload per file; change comes late
                [tab.images[0].input, tab.images[0].upload],
                studio.preprocess,
                pre_inputs,
                preview,
                concurrency_limit=None,
                trigger_mode="always_last",
                show_progress="hidden",
                **PRIVATE,
            )
            for comp in pre_inputs[1:]:
                comp.change(
                    studio.preprocess,
                    pre_inputs,
                    preview,
                    concurrency_limit=None,
                    show_progress="hidden",
                    **PRIVATE,
                )


def wire_gallery(studio: Any, g: dict[str, Any], tabs: Any) -> None:
    """The gallery tab's events: refresh, select, restore, delete, send-to, and the /gallery endpoint."""
    g["refresh"].click(studio.gallery_items, None, [g["gallery"], g["files"]], concurrency_limit=None, **PRIVATE)
    g["gallery"].select(
        studio.gallery_select,
        g["files"],
        [g["image"], g["params"], g["path"]],
        concurrency_limit=None,
        **PRIVATE,
    )
    all_controls = [studio.tabs[t].controls[name] for t in TASKS for name in metadata.fields(t)]
    g["restore"].click(studio.gallery_restore, g["params"], [*all_controls, tabs], queue=False, **PRIVATE)
    g["delete"].click(studio.gallery_delete, g["path"], [g["image"], g["params"], g["path"]], queue=False,
                      **PRIVATE).then(studio.gallery_items, None, [g["gallery"], g["files"]], queue=False, **PRIVATE)
    for target, button in g["send"].items():
        button.click(
            lambda path, params, _t=target: studio.send(_t, path, params),
            [g["path"], g["params"]],
            [studio.tabs[target].images[0], studio.tabs[target].controls["prompt"], tabs],
            queue=False,
            **PRIVATE,
        )
    gr.api(studio.gallery_list, api_name="gallery", concurrency_limit=None)


def wire_settings(studio: Any, s: dict[str, Any], header: Any, notice: Any) -> None:
    """The settings tab's events: load a model, save settings, and the /get_settings endpoint."""
    s["load"].click(
        studio.load_model,
        [s["source"], s["location"], s["variant"], s["device"]],
        [
            s["model_status"],
            header,
            notice,
            studio.tabs["control"].controls["kind"],
            studio.tabs["control"].extra["control_note"],
        ],
        api_name="load_model",
        concurrency_limit=1,
        concurrency_id=RUN_GROUP,
        show_progress_on=s["model_status"],  # a failed load is said there (and in a toast), not on the header
    )
    fields_in = [s[k] for k in studio.SETTINGS_FIELDS]
    s["save"].click(
        studio.save_settings, fields_in, s["save_status"], api_name="save_settings", concurrency_limit=None
    )
    studio.settings_inputs = fields_in
    gr.api(studio.get_settings, api_name="get_settings", concurrency_limit=None)
