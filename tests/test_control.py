"""Control preprocessors (iris/control.py) and control-adapter generation (iris.editing.control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb
from PIL import Image

from iris import InvalidInputError, IrisPipeline
from iris import control as ctl
from iris.inputs import pil_to_tensor, tensor_to_pil
from iris.models.adapters import CONTROL_KINDS, build_adapter

FAST = dict(steps=2, iterations=1, guidance=1.0)


def square(size: int = 64, lo: int = 16, hi: int = 48) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[lo:hi, lo:hi] = 255
    return Image.fromarray(a)


def white(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[..., 0] > 127


def with_adapters(pipe: IrisPipeline, **adapters) -> IrisPipeline:
    """A pipeline sharing `pipe`'s (read-only) modules, with its own adapters."""
    return IrisPipeline(pipe.config, pipe.generator, pipe.vae, pipe.text_encoder, pipe.previewer,
                        adapters=adapters, source=pipe.source)


def trained_adapter(pipe: IrisPipeline, kind: str, seed: int = 0):
    return perturb(build_adapter(f"control_{kind}", pipe.config), 0.05, seed)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


# ------------------------------------------------------------------------------------------ preprocessors
def test_canny_finds_the_square_border_only():
    edges = ctl.canny(square())
    assert edges.mode == "RGB" and edges.size == (64, 64)
    e = white(edges)
    ys, xs = np.nonzero(e)
    assert len(ys) > 100  # four sides of ~32 px
    # every edge pixel lies within 1 px of the square's border (rows/cols 16 and 47)
    near_x = (np.abs(xs - 15.5) <= 1.5) | (np.abs(xs - 47.5) <= 1.5)
    near_y = (np.abs(ys - 15.5) <= 1.5) | (np.abs(ys - 47.5) <= 1.5)
    assert (near_x | near_y).all()
    for side in (e[14:18, 20:44], e[46:50, 20:44], e[20:44, 14:18], e[20:44, 46:50]):
        assert side.any(axis=0 if side.shape[0] < side.shape[1] else 1).mean() > 0.9  # each side is traced
    assert not e[22:42, 22:42].any() and not e[:10].any() and not e[:, 56:].any()
    assert set(np.unique(np.asarray(edges))) <= {0, 255}


def test_canny_blank_image_and_thresholds():
    assert not white(ctl.canny(Image.new("RGB", (40, 30), (90, 90, 90)))).any()
    assert not white(ctl.canny(square(), low=5000, high=6000)).any()
    with pytest.raises(InvalidInputError):
        ctl.canny(square(), low=200, high=100)
    with pytest.raises(InvalidInputError):
        ctl.canny(b"not an image")


def test_scribble_from_photo_is_thick_edges():
    s = ctl.scribble(square(128, 32, 96))
    assert s.mode == "RGB" and s.size == (128, 128)
    lines, thin = white(s), white(ctl.canny(square(128, 32, 96)))
    assert lines.sum() > 2 * thin.sum()  # dilated
    assert lines[thin].all()
    assert not lines[50:78, 50:78].any() and not lines[:20].any()


def test_scribble_thresholds_a_drawing():
    a = np.full((128, 128, 3), 255, np.uint8)
    a[60:62, 10:110] = 0  # thin dark strokes on white paper
    a[10:110, 30:32] = (30, 30, 200)
    s = white(ctl.scribble(Image.fromarray(a)))
    assert s[61, 50] and s[50, 31] and s[61, 31]
    assert not s[5, 5] and not s[100, 100]
    assert s.mean() < 0.15


def test_color_layout_is_a_coarse_grid():
    img = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
    out = ctl.color_layout(img, cells=8)
    assert out.mode == "RGB" and out.size == (128, 96)
    colours = np.unique(np.asarray(out).reshape(-1, 3), axis=0)
    assert len(colours) <= 8 * 6
    a = np.asarray(out)
    assert (a[:16, :16] == a[0, 0]).all()  # one 16x16 cell, one colour
    flat = Image.new("RGB", (50, 30), (10, 200, 30))
    assert np.array_equal(np.asarray(ctl.color_layout(flat, cells=4)), np.asarray(flat))


def test_preprocess_dispatch_and_pass_through():
    img = square(32, 8, 24)
    assert np.array_equal(np.asarray(ctl.preprocess("canny", img)), np.asarray(ctl.canny(img)))
    assert np.array_equal(np.asarray(ctl.preprocess("Colour", img)), np.asarray(ctl.color_layout(img)))
    assert np.array_equal(np.asarray(ctl.preprocess("scribble", img)), np.asarray(ctl.scribble(img)))
    gray = Image.new("L", (20, 10), 77)
    for kind in ("depth", "pose"):
        out = ctl.preprocess(kind, gray)
        assert out.mode == "RGB" and out.size == (20, 10) and np.asarray(out).max() == 77
    for bad in ("", 3, None, "no spaces please"):
        with pytest.raises(InvalidInputError):
            ctl.preprocess(bad, img)
    assert ctl.CONTROL_KINDS == CONTROL_KINDS


def test_preprocess_tensor_matches_pil_image_by_image():
    rng = np.random.default_rng(1)
    noise = [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(8)]
    images = [Image.fromarray(a).resize((128, 128)) for a in noise]
    batch = torch.cat([pil_to_tensor(im) for im in images])
    for kind in ("canny", "scribble", "color", "depth"):
        out = ctl.preprocess_tensor(kind, batch)
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert out.min() >= -1 and out.max() <= 1
        pil = ctl.preprocess(kind, images[3])
        assert np.array_equal(np.asarray(tensor_to_pil(out[3:4])[0]), np.asarray(pil))
    for kind in ("canny", "scribble", "color"):  # a batch is processed image by image, never mixed
        whole = ctl.preprocess_tensor(kind, batch)
        for i in (0, 5):
            assert torch.equal(whole[i : i + 1], ctl.preprocess_tensor(kind, batch[i : i + 1]))
    with pytest.raises(InvalidInputError):
        ctl.preprocess_tensor("canny", torch.zeros(3, 8, 8))


# ----------------------------------------------------------------------------------------- control task
def test_control_kind_without_adapter_lists_available(nano_pipe):
    with pytest.raises(InvalidInputError, match="no control adapters"):
        nano_pipe.control(square(), "x", kind="canny", **FAST)
    pipe = with_adapters(nano_pipe, control_scribble=build_adapter("control_scribble", nano_pipe.config),
                         control_depth=build_adapter("control_depth", nano_pipe.config))
    with pytest.raises(InvalidInputError, match="depth, scribble"):
        pipe.control(square(), "x", kind="canny", **FAST)


def test_zero_init_adapter_changes_nothing(nano_pipe):
    pipe = with_adapters(nano_pipe, control_canny=build_adapter("control_canny", nano_pipe.config))
    a = pipe.control(square(128, 30, 90), "a sun", kind="canny", seed=4, **FAST)
    b = nano_pipe.generate("a sun", seed=4, **FAST)
    assert np.array_equal(arr(a.image), arr(b.image))


def test_weight_and_schedule_window(nano_pipe):
    pipe = with_adapters(nano_pipe, control_canny=trained_adapter(nano_pipe, "canny"))
    budget = dict(steps=2, iterations=1, guidance=2.0, seed=5)  # guidance: the CFG batch path too
    base = arr(nano_pipe.generate("a sun", **budget).image)
    run = lambda **kw: arr(pipe.control(square(128, 30, 90), "a sun", kind="canny", **budget, **kw).image)
    full = run()
    assert np.abs(full - base).mean() > 0.5
    assert np.array_equal(run(weight=0.0), base)
    # 2 steps at t = 1 and 0.5: schedule fractions 0 and 0.5
    assert np.array_equal(run(start=0.6, end=1.0), base)
    assert np.array_equal(run(start=0.0, end=1.0), full)
    early = run(start=0.0, end=0.4)
    late = run(start=0.4, end=1.0)
    assert not np.array_equal(early, base) and not np.array_equal(early, full)
    assert not np.array_equal(late, base) and not np.array_equal(late, full)
    assert not np.array_equal(run(weight=2.0), full)


def test_control_params_size_and_reproducibility(nano_pipe):
    pipe = with_adapters(nano_pipe, control_scribble=trained_adapter(nano_pipe, "scribble", 1))
    src = square(200, 40, 120).resize((200, 100))
    a = pipe.control(src, "x", kind="scribble", weight=0.7, start=0.1, end=0.9, seed=2, **FAST)
    b = pipe.control(src, "x", kind="scribble", weight=0.7, start=0.1, end=0.9, seed=2, **FAST)
    assert np.array_equal(arr(a.image), arr(b.image))
    assert a.image.size == (128, 64)  # aspect of the control image, longer side at the native 128 px
    p = a.params
    assert (p["task"], p["kind"], p["weight"], p["start"], p["end"], p["preprocess"]) == (
        "control", "scribble", 0.7, 0.1, 0.9, True)
    assert (p["width"], p["height"], p["seed"]) == (128, 64, 2)
    c = pipe.control(src, "x", kind="scribble", width=64, height=96, **FAST)
    assert c.image.size == (64, 96)


def test_user_maps_pass_through(nano_pipe):
    pipe = with_adapters(nano_pipe, control_pose=trained_adapter(nano_pipe, "pose", 2),
                         control_canny=trained_adapter(nano_pipe, "canny", 3))
    pose_map = square(128, 40, 80)
    a = pipe.control(pose_map, "x", kind="pose", **FAST)
    b = pipe.control(pose_map, "x", kind="pose", preprocess=False, **FAST)
    assert np.array_equal(arr(a.image), arr(b.image))  # pose: no preprocessor either way
    edges = ctl.canny(square(128, 30, 90))
    c = pipe.control(edges, "x", kind="canny", preprocess=False, **FAST)
    d = pipe.control(square(128, 30, 90), "x", kind="canny", **FAST)
    assert np.array_equal(arr(c.image), arr(d.image))  # a ready map equals preprocessing the source


@pytest.mark.parametrize("kwargs", [dict(weight=2.5), dict(weight=-1), dict(start=0.5, end=0.5),
                                    dict(start=0.8, end=0.2), dict(end=1.5), dict(kind=5), dict(kind=""),
                                    dict(preprocess="no"), dict(steps=500)])
def test_control_rejects_bad_settings(nano_pipe, kwargs):
    pipe = with_adapters(nano_pipe, control_canny=build_adapter("control_canny", nano_pipe.config))
    with pytest.raises(InvalidInputError):
        pipe.control(square(), "x", **{"kind": "canny", **FAST, **kwargs})


def test_control_rejects_corrupt_image(nano_pipe):
    pipe = with_adapters(nano_pipe, control_canny=build_adapter("control_canny", nano_pipe.config))
    with pytest.raises(InvalidInputError):
        pipe.control(b"\x89PNG\r\n\x1a\n broken", "x", kind="canny", **FAST)
