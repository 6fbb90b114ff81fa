"""Reliability of the engine against bad input and faults (the gaps test_pipeline / test_editing leave).

Images are built in memory: corrupt, truncated and empty files, a decompression bomb, CMYK / 16-bit / palette /
alpha / EXIF-rotated images, 1x1 and extreme aspect ratios, masks of every kind; hypothesis drives generate's
parameter space and prompts; cancelled runs must free their memory. The model is the random-weight nano variant
(session fixture `nano_pipe`) with 1-2 steps and 1-2 core iterations.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from iris import IrisPipeline
from iris.errors import GenerationCancelled, InvalidInputError
from iris.inputs import MAX_PIXELS, MAX_PROMPT_CHARS, MAX_SEED, open_image, open_mask
from iris.pipeline import IrisResult

FAST = dict(steps=1, iterations=1, guidance=2.0)


# ------------------------------------------------------------------------------------------------ helpers
def photo(w: int = 48, h: int = 32, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)).convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with a few bytes of (compressed) data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")  # pragma: no cover


# ------------------------------------------------------------------------------------------ broken files
BROKEN = {
    "corrupt bytes": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "random garbage": os.urandom(2048),
    "truncated png": encoded(photo(64, 64))[:300],
    "truncated jpeg": encoded(photo(64, 64), "JPEG")[:400],
    "header only png": encoded(photo(64, 64))[:33],
    "zero bytes": b"",
    "text file": "hello, not an image 🙂".encode(),
}


@pytest.mark.parametrize("name", list(BROKEN))
@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_broken_files_raise_invalid_input(nano_pipe, tmp_path, name, as_path):
    data = BROKEN[name]
    source = data
    if as_path:
        source = tmp_path / "broken.png"
        source.write_bytes(data)
    with pytest.raises(InvalidInputError) as err:
        open_image(source)
    message = str(err.value)
    assert "\n" not in message and message
    with pytest.raises(InvalidInputError):
        nano_pipe.edit(source, "x", **FAST)
    with pytest.raises(InvalidInputError):
        nano_pipe.inpaint(photo(), source, "x", **FAST)  # a broken mask too


@pytest.mark.parametrize("size", [(50_000, 50_000), (7_000, 7_000), (1_000_000, 64)])
def test_decompression_bomb_is_refused_from_the_header(tmp_path, size, monkeypatch):
    data = bomb_png(*size)
    assert len(data) < 2000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels of a bomb were decoded")

    from PIL import ImageFile

    monkeypatch.setattr(Image.Image, "load", no_decoding)  # refused from the header, never decoded
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for source in (data, path):
        with pytest.raises(InvalidInputError) as err:
            open_image(source)
        assert "limit" in str(err.value)
        if size[0] * size[1] < 2 * Image.MAX_IMAGE_PIXELS:  # below PIL's own bomb error: our limit and message
            assert f"{size[0]}x{size[1]}" in str(err.value) and f"{MAX_PIXELS:,}" in str(err.value)


def test_pixel_limit_is_configurable_and_applies_to_pil_images():
    with pytest.raises(InvalidInputError, match="limit"):
        open_image(photo(64, 64), max_pixels=1000)
    with pytest.raises(InvalidInputError, match="limit"):
        open_image(encoded(photo(64, 64)), max_pixels=1000)
    assert open_image(photo(64, 64), max_pixels=64 * 64).size == (64, 64)


# -------------------------------------------------------------------------------------- unusual formats
def test_cmyk_jpeg_becomes_rgb(nano_pipe):
    data = encoded(Image.new("CMYK", (40, 24), (0, 255, 255, 0)), "JPEG", quality=95)  # red in CMYK
    img = open_image(data)
    assert img.mode == "RGB" and img.size == (40, 24)
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60
    assert nano_pipe.edit(data, "x", **FAST).image.size == (40, 24)


def test_16_bit_greyscale_png_keeps_its_range(nano_pipe):
    a = np.zeros((16, 32), dtype=np.uint16)
    a[:, 16:] = 65535
    a[:8, :16] = 32768
    data = encoded(Image.fromarray(a))
    probe = Image.open(io.BytesIO(data))
    assert probe.mode.startswith("I")  # really a 16-bit file
    img = np.asarray(open_image(data))
    assert img.shape == (16, 32, 3)
    assert (img[:, 16:] == 255).all() and (img[8:, :16] == 0).all() and abs(int(img[0, 0, 0]) - 128) <= 1
    assert nano_pipe.edit(data, "x", **FAST).image.size == (32, 16)


def test_palette_png_with_transparency_is_composited_on_white(nano_pipe):
    pal = Image.new("P", (20, 10), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(0, (0, 0, 10, 10))  # left half: palette index 0, transparent
    data = encoded(pal, transparency=0)
    img = np.asarray(open_image(data))
    assert (img[:, :10] == 255).all()  # transparent -> white
    assert (img[:, 10:] == [255, 0, 0]).all()  # opaque red stays red
    assert nano_pipe.upscale(data, 2, **FAST).image.size == (40, 20)


def test_rgba_and_la_images_are_composited_on_white(nano_pipe):
    rgba = Image.new("RGBA", (16, 8), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 8))
    img = np.asarray(open_image(encoded(rgba)))
    assert (img[:, :8] == 255).all() and (img[:, 8:] == [0, 0, 255]).all()
    la = Image.new("LA", (8, 8), (0, 128))
    assert abs(int(np.asarray(open_image(la))[0, 0, 0]) - 127) <= 1  # black at half alpha over white
    result = nano_pipe.inpaint(encoded(rgba), Image.new("L", (16, 8), 255), "x", **FAST)
    assert result.image.size == (16, 8)



def test_premultiplied_alpha_images_and_masks_are_read(nano_pipe):
    """PIL's premultiplied "La" mode raised a bare ValueError ("conversion from La to L not supported") from
    open_image and open_mask; "La" and "RGBa" masks use their alpha like "LA" and "RGBA" ones."""
    la = Image.new("La", (16, 8), (0, 0))
    la.paste((0, 255), (8, 0, 16, 8))  # right half opaque black, left half transparent
    img = np.asarray(open_image(la))
    assert (img[:, :8] == 255).all() and (img[:, 8:] == 0).all()
    for mode, fill in (("La", (0, 255)), ("RGBa", (0, 0, 0, 255))):
        mask = Image.new(mode, (16, 8), (0,) * len(fill))
        mask.paste(fill, (8, 0, 16, 8))
        a = np.asarray(open_mask(mask, (16, 8)))
        assert (a[:, :8] == 0).all() and (a[:, 8:] == 255).all(), mode
    assert nano_pipe.edit(la, "x", **FAST).image.size == (16, 8)

def test_exif_rotated_jpeg_is_turned_upright(nano_pipe):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise
    data = encoded(img, "JPEG", exif=exif, quality=95)
    upright = open_image(data)
    assert upright.size == (20, 40)
    a = np.asarray(upright).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 60  # stored left (red) is now on top
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 60
    for result in (nano_pipe.edit(data, "x", **FAST), nano_pipe.inpaint(data, Image.new("L", (20, 40), 255), "x",
                                                                         **FAST)):
        assert result.image.size == (20, 40)
    assert nano_pipe.upscale(data, 2, **FAST).image.size == (40, 80)


# ------------------------------------------------------------------------------------------ sizes, masks
@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (3, 2)])
def test_tiny_and_extreme_aspect_images_keep_their_size(nano_pipe, size):
    """edit/inpaint keep any input size (module docstring of iris.editing); upscale gives exactly scale x."""
    w, h = size
    img = photo(w, h, seed=w + h)
    assert nano_pipe.edit(img, "x", strength=0.7, **FAST).image.size == size
    half = np.zeros((h, w), dtype=np.uint8)
    half[: max(1, h // 2), : max(1, w // 2)] = 255
    inpainted = nano_pipe.inpaint(img, half, "x", mask_blur=0, **FAST)
    assert inpainted.image.size == size
    keep = half == 0
    assert np.array_equal(np.asarray(inpainted.image)[keep], np.asarray(img)[keep])
    up = nano_pipe.upscale(img, 2, strength=0.3, **FAST).image
    assert up.size == (2 * w, 2 * h)
    down = np.asarray(up, dtype=np.float64).reshape(h, 2, w, 2, 3).mean((1, 3))
    assert np.abs(down - np.asarray(img, dtype=np.float64)).max() <= 1.0  # box downscale gives the input back


def test_masks_of_every_kind(nano_pipe):
    img = photo(48, 32, seed=7)
    src = np.asarray(img)
    # another size: resized (nearest) to the image's size
    small = np.zeros((8, 12), dtype=np.uint8)
    small[:4, :6] = 255
    resized = np.asarray(open_mask(small, (48, 32)))
    assert resized.shape == (32, 48) and resized[:16, :24].all() and not resized[16:, :].any()
    out = nano_pipe.inpaint(img, small, "x", mask_blur=0, **FAST)
    assert out.image.size == (48, 32) and np.array_equal(np.asarray(out.image)[16:], src[16:])
    # empty: the input back, untouched, no sampling
    empty = nano_pipe.inpaint(img, np.zeros((32, 48), dtype=bool), "x", **FAST)
    assert empty.params["empty_mask"] is True and np.array_equal(np.asarray(empty.image), src)
    # full: a new image of the same size
    full = nano_pipe.inpaint(img, Image.new("L", (48, 32), 255), "x", **FAST)
    assert full.image.size == (48, 32) and not np.array_equal(np.asarray(full.image), src)
    # non-binary grey: thresholded at 128 to pure black and white
    ramp = np.tile(np.arange(48, dtype=np.uint8)[None] * 5, (32, 1))
    binary = np.asarray(open_mask(ramp, (48, 32)))
    assert set(np.unique(binary)) <= {0, 255} and (binary == 255).sum() == (ramp >= 128).sum()
    grey = nano_pipe.inpaint(img, Image.fromarray(ramp), "x", mask_blur=0, **FAST)
    assert np.array_equal(np.asarray(grey.image)[ramp < 128], src[ramp < 128])
    # an RGBA mask with real alpha uses its alpha
    alpha = Image.new("RGBA", (48, 32), (0, 0, 0, 0))
    alpha.paste((0, 0, 0, 255), (0, 0, 10, 32))
    assert np.asarray(open_mask(alpha, (48, 32)))[:, :10].all()
    with pytest.raises(InvalidInputError):
        nano_pipe.inpaint(img, np.zeros((2, 2, 7)), "x", **FAST)


# ---------------------------------------------------------------------------------- the parameter space
def tagged(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """(value, is_valid) pairs."""
    return st.one_of(valid.map(lambda v: (v, True)), invalid.map(lambda v: (v, False)))


NOT_NUMBERS = st.one_of(st.sampled_from(["", "abc", "1x", "🙂", "nan", "inf", "-inf", "1.5.2"]), st.just([1]),
                        st.just({}), st.booleans(), st.just(object()))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def int_setting(lo: int, hi: int, valid_hi: int) -> st.SearchStrategy:
    """Valid: [lo, valid_hi] as int / integral float / numeric string / None. Invalid: out of [lo, hi],
    fractional, non-finite, not a number."""
    small = st.integers(lo, valid_hi)
    valid = st.one_of(small, small.map(float), small.map(str), small.map(lambda v: f"{v}.0"), st.none())
    invalid = st.one_of(
        st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), st.integers(hi + 1, 2**70).map(str),
        st.floats(lo + 0.01, valid_hi - 0.01).filter(lambda v: v != int(v)),
        NON_FINITE, NOT_NUMBERS,
    )
    return tagged(valid, invalid)


STEPS = int_setting(1, 200, 2)
ITERATIONS = int_setting(1, 16, 2)
SIDE = int_setting(1, 2048, 72)
GUIDANCE = tagged(
    st.one_of(st.floats(0.0, 30.0), st.integers(0, 30), st.floats(0.0, 30.0).map(repr), st.none()),
    st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=30.0001, allow_infinity=False), NON_FINITE,
              NOT_NUMBERS),
)
SEED = tagged(
    st.one_of(st.integers(0, MAX_SEED), st.integers(0, MAX_SEED).map(str), st.integers(0, 2**52).map(float)),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1), st.just(str(2**63)), st.just(0.5),
              NON_FINITE, NOT_NUMBERS),
)


def expected_side(value, native: int, f: int = 16) -> int:
    v = native if value is None else int(float(value))
    return max(f, int(round(v / f)) * f)


@settings(max_examples=25)
@given(steps=STEPS, iterations=ITERATIONS, guidance=GUIDANCE, seed=SEED, width=SIDE, height=SIDE)
def test_generate_parameter_space(nano_pipe, steps, iterations, guidance, seed, width, height):
    """Every combination gives a valid result of the rounded size, or InvalidInputError: nothing else."""
    kwargs = dict(steps=steps[0], iterations=iterations[0], guidance=guidance[0], seed=seed[0], width=width[0],
                  height=height[0])
    if kwargs["steps"] is None and kwargs["iterations"] is None:
        kwargs["iterations"] = 1  # keep the run short: defaults are 4 steps x 8 iterations
    valid = all(v[1] for v in (steps, iterations, guidance, seed, width, height))
    if not valid:
        with pytest.raises(InvalidInputError) as err:
            nano_pipe.generate("x", **kwargs)
        assert "\n" not in str(err.value)
        return
    result = nano_pipe.generate("x", **kwargs)
    assert isinstance(result, IrisResult)
    native = nano_pipe.config.resolution
    size = (expected_side(width[0], native), expected_side(height[0], native))
    assert result.image.size == size
    assert (result.params["width"], result.params["height"]) == size
    assert result.params["seed"] == int(seed[0])  # long numeric strings keep every digit
    assert all(0 <= c <= 255 for c in result.image.getextrema()[0])


@pytest.mark.parametrize("seed", [MAX_SEED, str(MAX_SEED), "12345678901234567", 2**53 + 1])
def test_large_seeds_are_kept_exactly(nano_pipe, seed):
    result = nano_pipe.generate("x", seed=seed, width=16, height=16, **FAST)
    assert result.params["seed"] == int(seed)


@pytest.mark.parametrize("value", [-1, 2**63, 2**64 + 3, "-5", "1e30", math.nan])
def test_out_of_range_seed_is_refused(nano_pipe, value):
    with pytest.raises(InvalidInputError, match="seed"):
        nano_pipe.generate("x", seed=value, width=16, height=16, **FAST)


# --------------------------------------------------------------------------------------------- prompts
ODD_PROMPTS = ["", "\x00", "مرحبا بالعالم", "שלום\u202eevil", "👩‍👩‍👧‍👦🙂🚀", "\ufeff\u200b", "a\x00b" * 50]


@settings(max_examples=15)
@given(prompt=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
       | st.sampled_from(ODD_PROMPTS))
def test_any_unicode_prompt_works(nano_pipe, prompt):
    result = nano_pipe.generate(prompt, negative_prompt=prompt[::-1], width=16, height=16, **FAST)
    assert result.image.size == (16, 16)
    assert "\x00" not in result.params["prompt"]
    assert result.params["prompt"] == prompt.replace("\x00", " ")


def test_prompt_at_and_beyond_the_limit(nano_pipe):
    long = ("a cat " * 2000)[:MAX_PROMPT_CHARS]
    assert len(long) == 10_000
    assert nano_pipe.generate(long, width=16, height=16, **FAST).params["prompt"] == long
    with pytest.raises(InvalidInputError, match="limit"):
        nano_pipe.generate(long + "!", width=16, height=16, **FAST)
    with pytest.raises(InvalidInputError, match="text"):
        nano_pipe.generate(b"bytes", width=16, height=16, **FAST)


# ----------------------------------------------------------------------------------------------- faults
def test_cancelled_runs_free_their_memory_and_the_next_run_works():
    pipe = IrisPipeline.from_variant("nano", seed=3)
    kwargs = dict(steps=2, iterations=2, guidance=2.0, width=64, height=64)
    reference = pipe.generate("after", seed=5, **kwargs).image

    def stop_at_third(event):
        if (event.step - 1) * event.iterations + event.iteration >= 3:
            raise GenerationCancelled("stopped")

    def cancelled_runs(n: int) -> None:
        for i in range(n):
            with pytest.raises(GenerationCancelled):
                pipe.generate(f"run {i % 4}", seed=i, on_preview=stop_at_third, **kwargs)
            gc.collect()

    cancelled_runs(5)  # warm up allocator caches
    before = rss_mb()
    cancelled_runs(20)
    growth = rss_mb() - before
    assert growth < 40, f"RSS grew {growth:.1f} MB over 20 cancelled runs"
    after = pipe.generate("after", seed=5, **kwargs).image
    assert np.array_equal(np.asarray(after), np.asarray(reference))  # nothing left over from the cancelled runs
    for module in (pipe.generator, pipe.vae, pipe.text_encoder):
        assert not module.training


GALLERY_WRITER = """
import sys, time
from PIL import Image
import iris.pngmeta  # noqa: F401 - imports done before "ready"
from iris_studio.gallery import Gallery
g = Gallery(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    g.add(Image.new("RGB", (8, 8), (i % 256, 0, 0)), {"task": "generate", "prompt": "kill " + str(i), "seed": i})
    i += 1
"""


@pytest.mark.slow  # a multi-process run
def test_gallery_index_survives_kills_mid_write(tmp_path):
    """A writer adding results as fast as it can is SIGKILLed at random moments, three times: the index stays valid
    JSON, nothing is reported damaged, and every saved image is listed (none lost, no temp file listed)."""
    import random
    import signal
    import subprocess
    import sys

    from iris_studio.gallery import Gallery

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", GALLERY_WRITER, str(tmp_path)], cwd=root,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": root})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    index = tmp_path / "index.json"
    assert isinstance(json.loads(index.read_text()), dict)
    gallery = Gallery(tmp_path)
    assert gallery.warning is None
    listed = {e.file for e in gallery.entries()}
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*.png") if not p.name.startswith(".")}
    assert len(on_disk) > 10
    assert not any(Path(f).name.startswith(".") for f in listed)  # no half-written temp file in the gallery
    assert listed == on_disk, (sorted(on_disk - listed), sorted(listed - on_disk))


# ------------------------------------------------------------------------------------------ loading
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _nano_folder(nano_pipe, folder: Path) -> Path:
    nano_pipe.config.adapters = ["control_canny"]
    from iris.models.adapters import build_adapter

    nano_pipe.adapters["control_canny"] = build_adapter("control_canny", nano_pipe.config)
    try:
        return nano_pipe.save_pretrained(folder)
    finally:
        del nano_pipe.adapters["control_canny"]
        nano_pipe.config.adapters = []


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc (Linux)")
def test_failed_loads_free_their_memory(nano_pipe, tmp_path):
    """A folder whose last file (an adapter) is truncated fails after every other weight was loaded; ten such
    loads must not keep ten half-built models alive."""
    import gc

    from iris.errors import ModelLoadError

    folder = _nano_folder(nano_pipe, tmp_path / "m")
    adapter = folder / "adapters" / "control_canny.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:200])
    with pytest.raises(ModelLoadError):
        IrisPipeline.from_pretrained(folder)
    gc.collect()
    before = _rss_mb()
    for _ in range(10):
        with pytest.raises(ModelLoadError):
            IrisPipeline.from_pretrained(folder)
    gc.collect()
    assert _rss_mb() - before < 50, (before, _rss_mb())


def test_configs_asking_for_huge_models_are_refused_before_building(tmp_path, monkeypatch):
    from iris.errors import ModelLoadError

    cfg = json.loads(json.dumps(IrisPipeline.from_variant("nano").config.to_dict()))
    cfg["generator"]["dim"] = 32768
    cfg["generator"]["heads"] = 8
    cfg["generator"]["afno_blocks"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    before = _rss_mb() if Path("/proc/self/status").is_file() else 0
    with pytest.raises(ModelLoadError, match="over the limit"):
        IrisPipeline.from_pretrained(tmp_path)
    if before:
        assert _rss_mb() - before < 200
    monkeypatch.setenv("IRIS_MAX_PARAMETERS", "1000")
    with pytest.raises(ModelLoadError, match="IRIS_MAX_PARAMETERS"):
        IrisPipeline.from_variant("nano")
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match="nested"):
        IrisPipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["nan", "inf", "int32"])
def test_weights_with_nan_or_integer_tensors_are_refused(nano_pipe, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    from iris.errors import ModelLoadError

    folder = nano_pipe.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "generator.safetensors"))
    key = next(k for k, v in state.items() if v.dim() == 2)
    if damage == "int32":
        state[key] = state[key].to(torch.int32)
    else:
        state[key] = state[key].clone()
        state[key][0, 0] = float(damage)
    save_file(state, str(folder / "generator.safetensors"))
    with pytest.raises(ModelLoadError, match="NaN or infinite" if damage != "int32" else "floating point"):
        IrisPipeline.from_pretrained(folder)


@pytest.mark.parametrize("device", ["meta", "garbage", "cuda:99", "", "xla"])
def test_unusable_devices_are_invalid_input(nano_pipe, device):
    with pytest.raises(InvalidInputError, match="device|CUDA"):
        IrisPipeline.from_variant("nano").to(device)


def test_alpha_only_mask_files_keep_their_alpha(tmp_path):
    a = np.zeros((32, 48, 4), np.uint8)
    a[8:24, 8:24, 3] = 255  # black everywhere; the region is in the alpha channel only
    Image.fromarray(a, "RGBA").save(tmp_path / "alpha.png")
    mask = np.asarray(open_mask(tmp_path / "alpha.png", (48, 32)))
    assert mask[8:24, 8:24].min() == 255 and mask.sum() == 255 * 16 * 16
    la = Image.fromarray(a[..., 3], "L").convert("LA")
    la.putalpha(Image.fromarray(a[..., 3]))
    la.save(tmp_path / "la.png")
    assert np.asarray(open_mask(tmp_path / "la.png", (48, 32))).sum() == 255 * 16 * 16


@pytest.mark.parametrize("array", [np.array([[object()] * 4] * 4, dtype=object), np.array([["a"] * 4] * 4),
                                   np.zeros((4, 4), complex)])
def test_arrays_of_non_numbers_are_invalid_input(nano_pipe, array):
    with pytest.raises(InvalidInputError, match="numbers"):
        open_image(array)


@pytest.mark.parametrize("change", [{}, {"generator.recurrent_dim": 4096}, {"generator.mlp_ratio": 64.0},
                                    {"generator.conv_width": 20000}, {"vae.blocks_per_stage": 12},
                                    {"generator.core_layers": 32}, {"text.layers": 12}, {"generator.num_classes": 5000},
                                    {"generator.max_iterations": 5000}, {"generator.patch_size": 4}])
def test_the_quick_parameter_bound_is_never_below_the_count(change):
    """The loader refuses a config from `parameter_bound` (nothing built) unless it is near the limit, so the
    bound must never under-count, whatever size a config pushes up."""
    from iris.config import variant_config
    from iris.core import count_parameters, parameter_bound

    for name in ("nano", "small"):
        cfg = variant_config(name)
        for key, value in change.items():
            part, field = key.split(".")
            setattr(getattr(cfg, part), field, value)
        assert parameter_bound(cfg) >= count_parameters(cfg), (name, change)


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    """iris.files.atomic_path: a write that fails half-way keeps the old file and leaves no temp file."""
    from iris.files import atomic_path

    target = tmp_path / "sub" / "index.json"
    with atomic_path(target) as tmp:
        tmp.write_text("old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.json"]



@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_atomic_writes_never_replace_a_folder_or_a_device(tmp_path, kind):
    """A rename onto a special file replaces it: as root, `iris generate -o /dev/null` turned the device into a
    PNG. A FIFO stands in for the device here (never /dev/null itself); a folder got the temp file's name."""
    import stat

    from iris.files import atomic_path

    target = tmp_path / "out.png"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with pytest.raises(OSError, match="not a regular file" if kind == "fifo" else "is a folder") as err:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"png")
    assert "\n" not in str(err.value) and ".out-" not in str(err.value)  # one line, no temp file's name
    mode = os.lstat(target).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISDIR(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left
    link = tmp_path / "link.png"  # a symbolic link is still replaced (never followed)
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_bytes(b"png")
    assert link.read_bytes() == b"png" and not link.is_symlink()

def test_a_mask_of_another_shape_is_refused_not_stretched():
    mask = np.zeros((64, 32), dtype=np.uint8)  # 32 wide, 64 tall
    with pytest.raises(InvalidInputError, match="32x64 but the image is 128x128"):
        open_mask(mask, (128, 128))
    # the same shape at another size, or one pixel of rounding off, is resized
    assert open_mask(np.zeros((33, 50), dtype=np.uint8), (100, 67)).size == (100, 67)
    assert open_mask(np.zeros((64, 64), dtype=np.uint8), (128, 128)).size == (128, 128)


def test_an_empty_mask_array_is_refused_with_a_message():
    with pytest.raises(InvalidInputError):
        open_mask(np.zeros((0, 5), dtype=np.uint8), (16, 16))
