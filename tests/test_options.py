"""The task options table (iris/options.py) is the one home of every task option: the engine's signatures,
the CLI, the studio's controls, the settings and the PNG restore all follow it."""

from __future__ import annotations

import inspect
import math

import pytest

from iris import InvalidInputError, IrisPipeline
from iris.cli import build_parser
from iris.options import TASK_OPTIONS, check_option, task_option

TASK_CALL = {"generate": IrisPipeline.generate, "edit": IrisPipeline.edit, "inpaint": IrisPipeline.inpaint,
             "upscale": IrisPipeline.upscale, "control": IrisPipeline.control}
CLI_ARGS = {"generate": ["x"], "edit": ["a.png", "x"], "inpaint": ["a.png", "m.png", "x"], "upscale": ["a.png"],
            "control": ["a.png", "x"]}


def _task_defaults(task: str) -> dict:
    from iris import editing

    fn = getattr(editing, task, None) if task != "generate" else TASK_CALL[task]
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()}


@pytest.mark.parametrize("task", list(TASK_OPTIONS))
def test_the_engine_the_cli_and_the_restore_share_each_default_and_bound(task):
    from iris_studio import metadata

    engine = _task_defaults(task)
    args = build_parser().parse_args([task, *CLI_ARGS[task]])
    for opt in TASK_OPTIONS[task]:
        assert engine[opt.name] == opt.default, (task, opt.name)
        assert getattr(args, opt.name) == opt.default, (task, opt.name)
        if opt.low is not None:
            assert metadata.coerce(opt.name, opt.high) == opt.high
            assert metadata.coerce(opt.name, opt.high + 1) is metadata.SKIP  # beyond the engine's bound
    assert metadata.fields(task)[-len(TASK_OPTIONS[task]):] == tuple(o.name for o in TASK_OPTIONS[task])


def test_the_cli_flags_reach_the_options():
    args = build_parser().parse_args(["inpaint", "a.png", "m.png", "x", "--mask-blur", "7.5", "--masked-only",
                                      "--padding", "16"])
    assert (args.mask_blur, args.masked_only, args.padding) == (7.5, True, 16)
    args = build_parser().parse_args(["control", "a.png", "x", "--no-preprocess", "--weight", "0.5"])
    assert args.preprocess is False and args.weight == 0.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "a.png", "--scale", "3"])  # not one of its choices


def test_the_studio_controls_follow_the_options():
    gr = pytest.importorskip("gradio")
    from iris_studio.settings import Settings
    from iris_studio.tabs import SETTING_FOR, option_control

    settings = Settings()
    for (task, name), field in SETTING_FOR.items():
        assert getattr(settings, field) == task_option(task, name).default, field
    with gr.Blocks():
        for opts in TASK_OPTIONS.values():
            for opt in opts:
                control = option_control(opt, opt.default, ["canny"] if opt.name == "kind" else None)
                if isinstance(control, gr.Slider):
                    assert opt.low <= control.minimum <= control.value <= control.maximum <= opt.high, opt


@pytest.mark.parametrize("task, name, value, expected", [
    ("inpaint", "mask_blur", "4", 4.0), ("inpaint", "padding", 16.0, 16), ("inpaint", "masked_only", 1, True),
    ("upscale", "scale", "4", 4), ("control", "kind", "canny", "canny"), ("edit", "strength", 0, 0.0),
])
def test_check_option_accepts_the_forms_a_client_sends(task, name, value, expected):
    assert check_option(task, name, value) == expected


@pytest.mark.parametrize("task, name, value", [
    ("inpaint", "mask_blur", -1), ("inpaint", "mask_blur", math.nan), ("inpaint", "padding", 513),
    ("inpaint", "padding", 1.5), ("inpaint", "masked_only", "yes"), ("upscale", "scale", 3),
    ("edit", "strength", math.inf), ("edit", "strength", None), ("control", "kind", 5),
])
def test_check_option_refuses_bad_values_in_one_line(task, name, value):
    with pytest.raises(InvalidInputError) as err:
        check_option(task, name, value)
    assert name in str(err.value) and "\n" not in str(err.value)
