"""SDEdit, inpainting and wavelet super-resolution on the random-weight nano pipeline (iris/editing.py)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import perturb
from PIL import Image

from iris import InvalidInputError, IrisPipeline, editing
from iris.inputs import pil_to_tensor
from iris.models.adapters import build_adapter
from iris.sampling import flow_timesteps

FAST = dict(steps=2, iterations=1, guidance=1.0)


def photo(w: int = 128, h: int = 128, seed: int = 0) -> Image.Image:
    """A smooth random colour image (blurred noise), so the VAE sees something image-like."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(1, h // 16), max(1, w // 16), 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def with_adapters(pipe: IrisPipeline, **adapters) -> IrisPipeline:
    """A pipeline sharing `pipe`'s (read-only) modules, with its own adapters."""
    return IrisPipeline(pipe.config, pipe.generator, pipe.vae, pipe.text_encoder, pipe.previewer,
                        adapters=adapters, source=pipe.source)


def rect_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------------------ edit
def test_edit_strength_zero_is_vae_round_trip(nano_pipe):
    img = photo()
    result = nano_pipe.edit(img, "a cat", strength=0.0, seed=1, **FAST)
    expected = nano_pipe.decode(nano_pipe.encode(pil_to_tensor(img)))[0]
    assert np.array_equal(arr(result.image), arr(expected))


def test_edit_strength_one_equals_generate(nano_pipe):
    img = photo(seed=1)
    a = nano_pipe.edit(img, "a red apple", strength=1.0, seed=7, **FAST)
    b = nano_pipe.generate("a red apple", seed=7, **FAST)
    assert np.array_equal(arr(a.image), arr(b.image))


def test_edit_changes_image_and_reproduces_with_seed(nano_pipe):
    img = photo(seed=2)
    a = nano_pipe.edit(img, "a cat", strength=0.6, seed=3, **FAST)
    b = nano_pipe.edit(img, "a cat", strength=0.6, seed=3, **FAST)
    c = nano_pipe.edit(img, "a cat", strength=0.6, seed=4, **FAST)
    assert np.array_equal(arr(a.image), arr(b.image))
    assert not np.array_equal(arr(a.image), arr(c.image))
    p = a.params
    assert p["task"] == "edit" and p["strength"] == 0.6 and p["seed"] == 3
    for key in ("prompt", "negative_prompt", "steps", "iterations", "guidance", "sampler", "shift", "width",
                "height", "model"):
        assert key in p


@pytest.mark.parametrize("size", [(100, 70), (1, 1), (17, 5)])
def test_edit_keeps_any_input_size(nano_pipe, size):
    result = nano_pipe.edit(photo(*size), "x", strength=0.5, **FAST)
    assert result.image.size == size and result.image.mode == "RGB"
    assert (result.params["width"], result.params["height"]) == size


def test_edit_accepts_path_bytes_and_array(nano_pipe, tmp_path):
    img = photo(64, 48)
    path = tmp_path / "in.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    results = [nano_pipe.edit(src, "x", strength=0.3, **FAST).image
               for src in (img, path, str(path), buf.getvalue(), np.asarray(img))]
    for r in results[1:]:
        assert np.array_equal(arr(r), arr(results[0]))


def test_edit_strength_maps_to_its_square_noise_level(nano_pipe):
    """An edit of strength s starts from noise level s² (edit_noise_level): the same latents as SDEdit run at
    that level by hand."""
    from iris.inputs import open_image, pil_to_tensor

    assert editing.edit_noise_level(0.0) == 0.0 and editing.edit_noise_level(1.0) == 1.0
    assert editing.edit_noise_level(0.5) == pytest.approx(0.25)
    img = photo(32, 32)
    result = nano_pipe.edit(img, "a cat", strength=0.6, seed=3, **FAST)
    z_clean = nano_pipe.encode(pil_to_tensor(open_image(img)))
    noise = nano_pipe.initial_noise(3, tuple(z_clean.shape))
    budget = nano_pipe.check_budget(FAST["steps"], FAST["iterations"], FAST["guidance"])
    by_hand = editing.sdedit(nano_pipe, z_clean, noise, "a cat", "", budget, 3, 0.36)
    torch.testing.assert_close(result.latents, by_hand)
    assert result.params["strength"] == 0.6  # the user's strength is what is recorded


def test_sdedit_start_matches_strength_under_shift():
    for shift in (1.0, 3.0, 0.5):
        for strength in (0.1, 0.5, 0.9, 1.0):
            start = editing.sdedit_start(strength, shift)
            assert flow_timesteps(4, shift, start)[0] == pytest.approx(strength, abs=1e-12)


def test_edit_previews_and_shift(nano_pipe):
    events = []
    result = nano_pipe.edit(photo(), "x", strength=0.5, steps=2, iterations=2, guidance=1.0, shift=3.0,
                            on_preview=events.append, preview_fraction=None)
    assert [(e.step, e.iteration) for e in events] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert events[-1].progress == 1.0 and events[-1].image is not None
    assert result.params["shift"] == 3.0


@pytest.mark.parametrize("kwargs", [dict(strength=1.5), dict(strength=-0.1), dict(strength="a lot"),
                                    dict(steps=0), dict(seed=-1), dict(sampler="nope")])
def test_edit_rejects_bad_settings(nano_pipe, kwargs):
    with pytest.raises(InvalidInputError):
        nano_pipe.edit(photo(32, 32), "x", **{**FAST, **kwargs})


@pytest.mark.parametrize("source", [b"not an image at all", b"", None, 42, "/no/such/file.png"])
def test_bad_images_raise_invalid_input(nano_pipe, source):
    with pytest.raises(InvalidInputError):
        nano_pipe.edit(source, "x", **FAST)
    with pytest.raises(InvalidInputError):
        nano_pipe.upscale(source, 2, **FAST)


# --------------------------------------------------------------------------------------------- inpaint
def test_inpaint_keeps_pixels_beyond_the_feather_exactly(nano_pipe):
    img = photo(seed=3)
    mask = rect_mask(128, 128, (40, 30, 100, 80))
    result = nano_pipe.inpaint(img, mask, "a rocket", mask_blur=6, seed=2, **FAST)
    out, src = arr(result.image), arr(img)
    assert result.image.size == img.size
    far = ~editing.grow_mask(mask, editing.feather_reach(6))
    assert far.sum() > 5000 and np.array_equal(out[far], src[far])
    sharp = nano_pipe.inpaint(img, mask, "a rocket", mask_blur=0, seed=2, **FAST)
    assert np.array_equal(arr(sharp.image)[~mask], src[~mask])  # no blur: the mask's edge exactly
    assert np.abs(out[mask] - src[mask]).mean() > 5  # the masked region was regenerated
    p = result.params
    assert p["task"] == "inpaint" and p["mask_blur"] == 6 and p["masked_only"] is False and p["padding"] == 32
    assert p["empty_mask"] is False and p["inpaint_adapter"] is False


@pytest.mark.parametrize("blur", [0.0, 1.0, 4.0, 8.0, 20.0])
def test_inpaint_feather_covers_the_mask_and_eases_out(blur):
    mask = rect_mask(160, 120, (50, 40, 90, 80))
    box = (0, 0, 160, 120)
    a = editing._feathered_alpha(mask, box, blur)
    assert a.shape == mask.shape and a.min() >= 0 and a.max() <= 1
    assert np.all(a[mask] == 1.0)  # the whole painted region is replaced, rim included
    reach = editing.feather_reach(blur)
    assert np.all(a[~editing.grow_mask(mask, reach)] == 0.0)  # nothing beyond the reach changes
    row = a[60, 90:]  # leaving the mask to the right: never rising again
    assert np.all(np.diff(row) <= 1e-6)
    if blur:
        edge = 89 + math.ceil(blur)  # the mask grown by `blur` px ends here: the ramp's half-way point
        assert 0.5 <= a[60, edge] < 0.99 and 0.01 < a[60, edge + 1] <= 0.5
    else:
        assert np.array_equal(a, mask.astype(np.float32))
    crop = (30, 20, 110, 100)  # a masked-only crop: the same weights over the box
    assert np.allclose(editing._feathered_alpha(mask, crop, blur), a[20:100, 30:110])


def test_inpaint_known_region_is_replaced_every_step(nano_pipe):
    img = photo(seed=4)
    mask = rect_mask(128, 128, (0, 0, 48, 48))  # latent cells 0..2, dilated to 0..3
    result = nano_pipe.inpaint(img, mask, "x", mask_blur=0, **FAST)
    z_known = nano_pipe.encode(pil_to_tensor(img))
    lm = editing.latent_mask(mask, tuple(z_known.shape[-2:]))
    assert lm[0, 0, :4, :4].all() and not lm[0, 0, 4:, :].any() and not lm[0, 0, :, 4:].any()
    keep = lm.expand_as(z_known) == 0
    assert torch.equal(result.latents[keep], z_known[keep])


def test_inpaint_odd_size_and_resized_mask(nano_pipe):
    img = photo(100, 70, seed=5)
    small_mask = Image.fromarray((rect_mask(50, 35, (10, 5, 30, 20)) * 255).astype(np.uint8))
    result = nano_pipe.inpaint(img, small_mask, "x", mask_blur=0, **FAST)
    assert result.image.size == (100, 70)
    big = np.asarray(small_mask.resize((100, 70), Image.Resampling.NEAREST)) > 127  # the documented resize
    out, src = arr(result.image), arr(img)
    assert np.array_equal(out[~big], src[~big])
    assert np.abs(out[big] - src[big]).mean() > 1


def test_inpaint_one_pixel_image(nano_pipe):
    one = Image.new("RGB", (1, 1), (10, 20, 30))
    assert nano_pipe.inpaint(one, np.ones((1, 1), bool), "x", **FAST).image.size == (1, 1)
    assert np.array_equal(arr(nano_pipe.inpaint(one, np.zeros((1, 1), bool), "x", **FAST).image), arr(one))


def test_inpaint_masked_only_crops_and_pastes_back(nano_pipe):
    img = photo(200, 150, seed=6)
    mask = rect_mask(200, 150, (120, 90, 150, 120))
    result = nano_pipe.inpaint(img, mask, "x", masked_only=True, padding=16, mask_blur=2, seed=1, **FAST)
    out, src = arr(result.image), arr(img)
    assert result.image.size == (200, 150)
    far = ~editing.grow_mask(mask, editing.feather_reach(2))
    assert np.array_equal(out[far], src[far])
    assert np.abs(out[mask] - src[mask]).mean() > 1
    assert result.latents.shape[-2:] == (8, 8)  # a 62x62 crop worked at the native 128 px
    assert result.params["masked_only"] is True and result.params["padding"] == 16


def test_inpaint_empty_mask_returns_input(nano_pipe):
    img = photo(60, 40)
    result = nano_pipe.inpaint(img, np.zeros((40, 60), bool), "x", **FAST)
    assert np.array_equal(arr(result.image), arr(img))
    assert result.params["empty_mask"] is True and result.latents is None


def test_inpaint_full_mask_is_text_to_image(nano_pipe):
    result = nano_pipe.inpaint(photo(), Image.new("L", (128, 128), 255), "a cat", seed=5, **FAST)
    expected = nano_pipe.generate("a cat", seed=5, **FAST)
    assert np.array_equal(arr(result.image), arr(expected.image))


def test_inpaint_adapter_is_used_and_zero_init_changes_nothing(nano_pipe):
    img = photo(seed=7)
    mask = rect_mask(128, 128, (32, 32, 96, 96))
    plain = nano_pipe.inpaint(img, mask, "x", seed=3, **FAST)
    zero = with_adapters(nano_pipe, inpaint=build_adapter("inpaint", nano_pipe.config))
    same = zero.inpaint(img, mask, "x", seed=3, **FAST)
    assert same.params["inpaint_adapter"] is True
    assert np.array_equal(arr(same.image), arr(plain.image))
    trained = with_adapters(nano_pipe, inpaint=perturb(build_adapter("inpaint", nano_pipe.config), 0.05, 1))
    other = trained.inpaint(img, mask, "x", seed=3, **FAST)
    out, src = arr(other.image), arr(img)
    far = ~editing.grow_mask(mask, editing.feather_reach(4))  # the default mask_blur
    assert np.array_equal(out[far], src[far])
    assert not np.array_equal(out, arr(plain.image))


@pytest.mark.parametrize("kwargs", [dict(mask_blur=65), dict(mask_blur=-1), dict(padding=-1),
                                    dict(padding=513), dict(masked_only="yes")])
def test_inpaint_rejects_bad_settings(nano_pipe, kwargs):
    with pytest.raises(InvalidInputError):
        nano_pipe.inpaint(photo(32, 32), np.ones((32, 32), bool), "x", **{**FAST, **kwargs})


def test_inpaint_rejects_bad_mask(nano_pipe):
    with pytest.raises(InvalidInputError):
        nano_pipe.inpaint(photo(32, 32), b"garbage", "x", **FAST)


# --------------------------------------------------------------------------------------------- upscale
def box_sums(image: Image.Image, k: int) -> np.ndarray:
    a = arr(image)
    h, w = a.shape[0] // k, a.shape[1] // k
    return a.reshape(h, k, w, k, 3).sum(axis=(1, 3))


@pytest.mark.parametrize("scale,size,tile", [(2, (50, 37), 512), (4, (21, 13), 512), (2, (40, 40), 48)])
def test_upscale_downscales_back_to_input(nano_pipe, scale, size, tile):
    low = photo(*size, seed=8)
    result = nano_pipe.upscale(low, scale, strength=0.5, tile=tile, seed=2, **FAST)
    assert result.image.size == (size[0] * scale, size[1] * scale)
    # every scale x scale block sums to exactly scale^2 x the input pixel: the box downscale is the input
    assert np.array_equal(box_sums(result.image, scale), arr(low) * scale * scale)
    assert np.array_equal(arr(result.image.reduce(scale)), arr(low))
    p = result.params
    assert p["task"] == "upscale" and p["scale"] == scale and p["strength"] == 0.5 and p["tile"] == tile
    if tile == 48:
        assert p["tiles"] == 4 and p["overlap"] == 16


def test_upscale_adds_detail_and_uses_adapter(nano_pipe):
    low = photo(32, 32, seed=9)
    plain = nano_pipe.upscale(low, 2, strength=0.6, **FAST)
    bicubic = arr(low.resize((64, 64), Image.Resampling.BICUBIC))
    assert np.abs(arr(plain.image) - bicubic).mean() > 0.5
    pipe = with_adapters(nano_pipe, upscale=perturb(build_adapter("upscale", nano_pipe.config), 0.05, 2))
    result = pipe.upscale(low, 2, strength=0.6, **FAST)
    assert result.params["upscale_adapter"] is True
    assert not np.array_equal(arr(result.image), arr(plain.image))
    assert np.array_equal(box_sums(result.image, 2), arr(low) * 4)


def test_upscale_tiny_and_strength_zero(nano_pipe):
    one = Image.new("RGB", (1, 1), (200, 10, 90))
    result = nano_pipe.upscale(one, 4, strength=0.0, **FAST)
    assert result.image.size == (4, 4)
    assert np.array_equal(arr(result.image.reduce(4)), arr(one))


def test_upscale_strength_zero_is_the_first_pass_alone(nano_pipe):
    """Strength 0 skips the VAE: bicubic (with the input's LL band) without an upscaler, the upscaler's output
    with one."""
    low = photo(24, 20, seed=3)
    bicubic = torch.nn.functional.interpolate(pil_to_tensor(low), scale_factor=2, mode="bicubic").clamp(-1, 1)
    plain = nano_pipe.upscale(low, 2, strength=0.0, **FAST)
    assert np.array_equal(arr(plain.image), arr(Image.fromarray(editing.match_low_res(bicubic, np.asarray(low)))))
    net = perturb(build_adapter("pixel_upscale", nano_pipe.config), 0.05, 4)
    pipe = with_adapters(nano_pipe, pixel_upscale=net)
    result = pipe.upscale(low, 2, strength=0.0, **FAST)
    with torch.no_grad():
        want = editing.match_low_res(net(pil_to_tensor(low)).clamp(-1, 1), np.asarray(low))
    assert result.params["pixel_upscaler"] is True and plain.params["pixel_upscaler"] is False
    assert np.array_equal(arr(result.image), want.astype(np.int32))
    assert not np.array_equal(arr(result.image), arr(plain.image))
    refined = pipe.upscale(low, 2, strength=0.5, **FAST)  # refinement on top keeps the exact box downscale
    assert not np.array_equal(arr(refined.image), arr(result.image))
    assert np.array_equal(box_sums(refined.image, 2), arr(low) * 4)


def test_untrained_pixel_upscaler_is_bicubic_and_tiles_are_seamless(nano_pipe):
    net = build_adapter("pixel_upscale", nano_pipe.config)
    low = pil_to_tensor(photo(40, 30, seed=5))
    with torch.no_grad():
        assert torch.equal(net(low), torch.nn.functional.interpolate(low, scale_factor=2, mode="bicubic"))
    net = perturb(net, 0.05, 6)
    pipe = with_adapters(nano_pipe, pixel_upscale=net)
    with torch.no_grad():
        whole = net(low).clamp(-1, 1)
    tiled = editing.first_pass_2x(pipe, low, tile=16)  # 3 x 2 tiles with margins
    assert tiled.shape == (1, 3, 60, 80)
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_upscale_progress_spans_all_tiles(nano_pipe):
    events = []
    nano_pipe.upscale(photo(40, 40), 2, strength=0.5, tile=48, on_preview=events.append, preview_fraction=0.0,
                      **FAST)
    assert len(events) == 4 * 2  # 4 tiles x 2 steps x 1 iteration
    assert [e.step for e in events] == list(range(1, 9)) and events[-1].progress == 1.0


@pytest.mark.parametrize("kwargs", [dict(scale=3), dict(scale=1), dict(scale="big"), dict(strength=1.5),
                                    dict(tile=8), dict(tile=-1)])
def test_upscale_rejects_bad_settings(nano_pipe, kwargs):
    with pytest.raises(InvalidInputError):
        nano_pipe.upscale(photo(16, 16), **{**FAST, **kwargs})


def test_upscale_refuses_huge_outputs(nano_pipe):
    with pytest.raises(InvalidInputError):
        nano_pipe.upscale(Image.new("RGB", (2000, 2000)), 4, **FAST)


def test_match_low_res_is_exact_even_when_clamping():
    g = torch.Generator().manual_seed(0)
    low = (torch.rand(9, 7, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    low[0, 0] = 255
    low[1, 1] = 0
    output = torch.randn(1, 3, 18, 14, generator=g) * 2.0  # far outside [-1, 1]
    out = editing.match_low_res(output, low)
    assert out.dtype == np.uint8 and out.shape == (18, 14, 3)
    sums = out.astype(np.int64).reshape(9, 2, 7, 2, 3).sum(axis=(1, 3))
    assert np.array_equal(sums, low.astype(np.int64) * 4)


def test_tile_starts_cover_with_overlap():
    assert editing.tile_starts(80, 0, 0) == [0]
    assert editing.tile_starts(64, 64, 16) == [0]
    for length, tile, overlap in [(80, 48, 16), (1024, 512, 64), (1040, 512, 64)]:
        starts = editing.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


# ------------------------------------------------------------------------------------------------ cost
@pytest.mark.parametrize("task, options", [
    ("generate", {}), ("edit", dict(strength=0.5)), ("edit", dict(strength=0.0)), ("inpaint", {}),
    ("inpaint", dict(masked_only=True)), ("upscale", dict(scale=2, tile=64, strength=0.3)),
    ("upscale", dict(scale=4, tile=0, strength=0.3)), ("upscale", dict(scale=2, strength=0.0)), ("control", {}),
])
def test_task_work_counts_the_core_iterations_each_task_runs(nano_pipe, task, options):
    """The cost model behind the studio's time estimate: as many core iterations as the task really reports,
    one preview event each."""
    budget = dict(steps=2, iterations=2, guidance=1.0)
    img = photo(48, 32, seed=1)
    events = []
    kwargs = dict(**budget, **options, seed=1, on_preview=events.append, preview_fraction=None)
    if task == "generate":
        nano_pipe.generate("x", width=48, height=32, **kwargs)
    elif task == "inpaint":
        nano_pipe.inpaint(img, rect_mask(48, 32, (8, 8, 24, 24)), "x", **kwargs)
    elif task == "control":
        if "control_canny" in nano_pipe.adapters:
            nano_pipe.control(img, "x", kind="canny", **kwargs)
    else:
        getattr(nano_pipe, task)(img, **({"prompt": "x"} if task == "edit" else {}), **kwargs)
    runs = editing.task_work(nano_pipe, task, 48, 32, **budget, **options)
    if task == "control" and "control_canny" not in nano_pipe.adapters:
        assert runs == [(4, 48, 32)]  # the same run as generate at the control image's size
        return
    assert sum(n for n, _, _ in runs) == len(events)
    if task == "upscale" and options.get("scale") == 4:
        assert [(w, h) for _, w, h in runs] == [(96, 64), (192, 128)]  # 2x, then 2x again
    with pytest.raises(InvalidInputError):
        editing.task_work(nano_pipe, task, 48, 32, steps=0)
