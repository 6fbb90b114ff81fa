"""The editing tasks on top of `IrisCore.denoise`: SDEdit, inpainting, wavelet super-resolution, control.

    pipe.edit(image, "a cat face", strength=0.6)
    pipe.inpaint(image, mask, "a rocket", mask_blur=4, masked_only=True, padding=32)
    pipe.upscale(image, scale=4, prompt="", strength=0.2, tile=512)
    pipe.control(edges, "a sun", kind="canny", weight=1.0, start=0.0, end=1.0)

Every task takes the budget arguments of `generate` (steps, iterations, guidance, seed, sampler, shift,
exit_threshold, regional, negative_prompt, on_preview, preview_fraction) and returns an `IrisResult` whose params
hold every setting needed to reproduce it. Images and masks may be PIL images, paths, bytes or numpy
arrays; every number is checked and a bad one raises `InvalidInputError`.

Sizes. The model works on a latent grid (multiples of `pipe.latent_factor` px, 16 for nano). edit and
inpaint accept any image size, 1x1 included: the image is resized to the nearest grid size (scaled down
first so its longer side is at most 2048 px), processed, and resized back, so the output always has the
input's size. Very small images are therefore worked on at one latent cell (16x16 px for nano).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from . import control as control_maps
from . import sampling
from .budget import Budget, IrisResult, PreviewCallback, PreviewEvent
from .core import IrisCore
from .errors import InvalidInputError
from .inputs import check_int, check_prompt, check_seed, open_image, open_mask, pil_to_tensor
from .limits import MAX_SIDE, PREVIEW_FRACTION
from .models.wavelet import dwt, idwt, with_ll_band
from .options import ControlOptions, EditOptions, InpaintOptions, UpscaleOptions, check_option

MAX_UPSCALE_PIXELS = 4096 * 4096  # output pixels of one upscale call
MAX_UPSCALE_SIDE = 16384


# ------------------------------------------------------------------------------------------------ checks
def _check_common(pipe: IrisCore, prompt: Any, negative_prompt: Any, steps: Any, iterations: Any,
                  guidance: Any, seed: Any, sampler: Any, shift: Any, exit_threshold: Any,
                  regional: Any = None) -> tuple[str, str, Budget, int]:
    prompt = check_prompt(prompt)
    negative_prompt = check_prompt(negative_prompt, "negative_prompt")
    budget = pipe.check_budget(steps, iterations, guidance, sampler, shift, exit_threshold, regional)
    return prompt, negative_prompt, budget, check_seed(seed)


def check_scale(value: Any) -> int:
    """The upscale factor: 2 or 4."""
    return check_option("upscale", "scale", value)


def check_tile(pipe: IrisCore, value: Any) -> int:
    """Tile size in output px: 0 (or None) disables tiling, else >= 2 grid cells, rounded down to the grid."""
    if value is None:
        return 0
    tile = check_option("upscale", "tile", value)
    f = pipe.latent_factor
    if tile == 0:
        return 0
    if tile < 2 * f:
        raise InvalidInputError(f"tile must be 0 (no tiling) or at least {2 * f} pixels, got {tile}")
    return tile // f * f


def check_window(start: Any, end: Any) -> tuple[float, float]:
    """The [start, end] fractions of the schedule during which control applies (0 <= start < end <= 1)."""
    s = check_option("control", "start", start)
    e = check_option("control", "end", end)
    if not s < e:
        raise InvalidInputError(f"start must be below end (fractions of the schedule), got {s:g} and {e:g}")
    return s, e


# ------------------------------------------------------------------------------------------------ sizes
def _to_grid(pipe: IrisCore, value: float) -> int:
    f = pipe.latent_factor
    return int(min(MAX_SIDE // f * f, max(f, round(value / f) * f)))


def fit_grid(pipe: IrisCore, width: int, height: int, longest: int = MAX_SIDE) -> tuple[int, int]:
    """The grid size an image of (width, height) is worked at: scaled down to fit `longest`, rounded."""
    s = min(1.0, longest / max(width, height))
    return _to_grid(pipe, width * s), _to_grid(pipe, height * s)


def native_grid(pipe: IrisCore, width: int, height: int) -> tuple[int, int]:
    """A grid size with the aspect ratio of (width, height) and the longer side at the model's resolution."""
    s = pipe.config.resolution / max(width, height)
    return _to_grid(pipe, width * s), _to_grid(pipe, height * s)


def _resize(image: Image.Image, size: tuple[int, int],
            resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    return image if image.size == tuple(size) else image.resize(size, resample)


# ------------------------------------------------------------------------------------------------ SDEdit
def sdedit_start(strength: float, shift: float) -> float:
    """The `start` of `sampling.flow_timesteps` whose first (shift-warped) time equals `strength`."""
    if strength >= 1.0:
        return 1.0
    return strength / (shift - (shift - 1.0) * strength)


def edit_noise_level(strength: float) -> float:
    """The noise level an edit of `strength` starts from: strength squared.

    On the bundled model an edit's change grows from nothing at noise 0.05 to its full size by about 0.45
    (an apple recoloured by "a green apple on a blue background": 94% of its pixels green at 0.3, all by 0.4),
    so noise = strength crowded every useful edit into strengths 0.1-0.45. The square spreads them over
    0.3-0.7 and keeps both ends: 0 is the VAE round trip, 1 is `generate` from the same seed."""
    return strength * strength


def sdedit(pipe: IrisCore, z_clean: torch.Tensor, noise: torch.Tensor, prompt: str, negative_prompt: str,
           budget: Budget, seed: int, strength: float, *,
           residual: Callable[[float], torch.Tensor | None] | None = None,
           on_preview: PreviewCallback | None = None, preview_fraction: float | None = PREVIEW_FRACTION,
           timings: dict[str, float] | None = None) -> torch.Tensor:
    """Noise clean latents to t0 = strength along the flow, then integrate to 0 with all `budget.steps` steps.

    strength 0 returns `z_clean`; strength 1 starts from `noise` alone (text-to-image from that noise).
    """
    if strength <= 0.0:
        return z_clean
    start = sdedit_start(strength, budget.shift)
    t0 = sampling.flow_timesteps(budget.steps, budget.shift, start)[0]
    z = (1.0 - t0) * z_clean + t0 * noise
    return pipe.denoise(z, prompt, negative_prompt, budget, seed, start=start, residual=residual,
                        on_preview=on_preview, preview_fraction=preview_fraction, timings=timings)


def _add_timings(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def edit(
    pipe: IrisCore,
    image: Any,
    prompt: str = "",
    negative_prompt: str = "",
    strength: float = EditOptions.strength,
    steps: int | None = None,
    iterations: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    sampler: str | None = None,
    shift: float | None = None,
    exit_threshold: float | None = None,
    regional: bool | None = None,
    on_preview: PreviewCallback | None = None,
    preview_fraction: float | None = PREVIEW_FRACTION,
) -> IrisResult:
    """SDEdit: encode the image, noise it to t0 = `strength`² (`edit_noise_level`), integrate to 0 under the
    new prompt.

    strength 0 gives the VAE round trip of the image; strength 1 equals `generate` with the same seed and
    budget at the image's grid size. All `steps` sampler steps are spent on [t0, 0]. The output has the
    input's size (worked at the nearest grid size, see the module docstring).
    """
    t_start = time.perf_counter()
    prompt, negative_prompt, budget, seed = _check_common(pipe, prompt, negative_prompt, steps, iterations,
                                                          guidance, seed, sampler, shift, exit_threshold,
                                                          regional)
    strength = check_option("edit", "strength", strength)
    img = open_image(image)
    w, h = img.size
    gw, gh = fit_grid(pipe, w, h)
    z_clean = pipe.encode(pil_to_tensor(_resize(img, (gw, gh))))
    noise = pipe.initial_noise(seed, tuple(z_clean.shape))
    timings: dict[str, float] = {}
    z = sdedit(pipe, z_clean, noise, prompt, negative_prompt, budget, seed, edit_noise_level(strength),
               on_preview=on_preview, preview_fraction=preview_fraction, timings=timings)
    out = _resize(pipe.decode(z)[0], (w, h))
    timings["total_s"] = time.perf_counter() - t_start
    params = pipe.base_params("edit", prompt, negative_prompt, budget, seed, w, h)
    params["strength"] = strength
    return IrisResult([out], params, z, timings)


# ---------------------------------------------------------------------------------------------- inpaint
def feather_reach(blur: float) -> int:
    """How far beyond the mask, in px, inpainting's soft edge reaches at `mask_blur` = blur (0 at 0)."""
    return 0 if blur <= 0 else math.ceil(blur) + math.ceil(1.5 * blur) + 2


def grow_mask(binary: np.ndarray, px: int) -> np.ndarray:
    """[H, W] bool: the mask dilated by `px` pixels (a (2 px + 1)-square neighbourhood)."""
    if px <= 0:
        return binary.copy()
    t = torch.from_numpy(binary.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * px + 1, stride=1, padding=px)[0, 0].numpy() > 0


def _feathered_alpha(binary: np.ndarray, box: tuple[int, int, int, int], blur: float) -> np.ndarray:
    """Composite weights [h, w] in [0, 1] inside `box`: 1 on the whole mask, easing to 0 over about
    2 x `blur` px beyond it (the mask grown by `blur` px, then blurred by blur / 2). The painted region is
    replaced completely, so none of the old object survives at its rim; pixels farther than
    `feather_reach(blur)` px from the mask keep weight exactly 0."""
    x0, y0, x1, y1 = box
    inside = binary[y0:y1, x0:x1]
    if blur <= 0:
        return inside.astype(np.float32)
    m = feather_reach(blur)
    H, W = binary.shape
    bx0, by0, bx1, by1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
    grown = grow_mask(binary[by0:by1, bx0:bx1], math.ceil(blur))
    soft = Image.fromarray(grown.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(blur / 2))
    a = np.asarray(soft, dtype=np.float32)[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] / 255.0
    a = np.where(a < 1.5 / 255, 0.0, a)
    return np.maximum(a, inside.astype(np.float32))


def latent_mask(region_mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[1, 1, h, w] float {0, 1}: the binary pixel mask area-downsampled to the latent grid, any coverage
    counting, dilated by one cell."""
    m = torch.from_numpy(region_mask.astype(np.float32))[None, None]
    covered = F.adaptive_avg_pool2d(m, grid) > 0
    return (F.max_pool2d(covered.float(), 3, stride=1, padding=1) > 0).float()


def inpaint(
    pipe: IrisCore,
    image: Any,
    mask: Any,
    prompt: str = "",
    negative_prompt: str = "",
    mask_blur: float = InpaintOptions.mask_blur,
    masked_only: bool = InpaintOptions.masked_only,
    padding: int = InpaintOptions.padding,
    steps: int | None = None,
    iterations: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    sampler: str | None = None,
    shift: float | None = None,
    exit_threshold: float | None = None,
    regional: bool | None = None,
    on_preview: PreviewCallback | None = None,
    preview_fraction: float | None = PREVIEW_FRACTION,
) -> IrisResult:
    """Regenerate the white region of `mask` (white = change, black = keep).

    At every sampler step the known (unmasked, latent-mask 0) region is reset to the original latent noised
    to the current t with the run's seeded noise; the model's `inpaint` adapter, when it has one, sees the
    known latent and the mask. The result replaces the whole mask and eases into the original over about
    2 x `mask_blur` px beyond it, so no outline of the old content survives at the mask's rim; pixels farther
    than `feather_reach(mask_blur)` px from the mask (all of them outside it at mask_blur 0) come back exactly
    unchanged.

    masked_only: work on the mask's bounding box grown by `padding` px (at least the feather's reach), resized
    so its longer side is the model's resolution, and paste it back (more detail for small masks in large
    images).

    A mask of another size than the image is resized to it (nearest). An empty mask returns the input
    unchanged (params["empty_mask"] = True, no sampling). A full mask is plain text-to-image at the image's
    grid size (nothing is known; no adapter, no replacement), resized to the image's size.
    """
    t_start = time.perf_counter()
    prompt, negative_prompt, budget, seed = _check_common(pipe, prompt, negative_prompt, steps, iterations,
                                                          guidance, seed, sampler, shift, exit_threshold,
                                                          regional)
    mask_blur = check_option("inpaint", "mask_blur", mask_blur)
    masked_only = check_option("inpaint", "masked_only", masked_only)
    padding = check_option("inpaint", "padding", padding)
    img = open_image(image)
    W, H = img.size
    mask_img = open_mask(mask, (W, H))
    binary = np.asarray(mask_img) > 127
    params = pipe.base_params("inpaint", prompt, negative_prompt, budget, seed, W, H)
    params.update(mask_blur=mask_blur, masked_only=masked_only, padding=padding)
    timings: dict[str, float] = {}
    if not binary.any():
        params.update(empty_mask=True, inpaint_adapter=False)
        timings["total_s"] = time.perf_counter() - t_start
        return IrisResult([img.copy()], params, None, timings)
    full = bool(binary.all())

    if masked_only and not full:
        ys, xs = np.nonzero(binary)
        pad = max(padding, feather_reach(mask_blur))  # the soft edge fits inside the crop
        box = (max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad),
               min(W, int(xs.max()) + 1 + pad), min(H, int(ys.max()) + 1 + pad))
        gw, gh = native_grid(pipe, box[2] - box[0], box[3] - box[1])
    else:
        box = (0, 0, W, H)
        gw, gh = fit_grid(pipe, W, H)
    x0, y0, x1, y1 = box
    region = img.crop(box) if box != (0, 0, W, H) else img
    z_known = pipe.encode(pil_to_tensor(_resize(region, (gw, gh))))
    noise = pipe.initial_noise(seed, tuple(z_known.shape))

    residual = on_step = None
    use_adapter = False
    if not full:
        m = latent_mask(binary[y0:y1, x0:x1], tuple(z_known.shape[-2:])).to(z_known)
        keep = 1.0 - m

        def on_step(i: int, t_next: float, z: torch.Tensor) -> torch.Tensor:
            return m * z + keep * ((1.0 - t_next) * z_known + t_next * noise)

        if "inpaint" in pipe.adapters:
            use_adapter = True
            with torch.inference_mode():
                feats = pipe.adapters["inpaint"](z_known, m)
            residual = lambda t: feats

    z = pipe.denoise(noise, prompt, negative_prompt, budget, seed, residual=residual, on_step=on_step,
                     on_preview=on_preview, preview_fraction=preview_fraction, timings=timings)
    generated = _resize(pipe.decode(z)[0], (x1 - x0, y1 - y0))

    original = np.asarray(img)
    if full:
        out = np.asarray(generated).copy()
    else:
        alpha = _feathered_alpha(binary, box, mask_blur)[..., None]
        orig_region = original[y0:y1, x0:x1].astype(np.float32)
        blend = alpha * np.asarray(generated, dtype=np.float32) + (1.0 - alpha) * orig_region
        blend = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        out = original.copy()
        out[y0:y1, x0:x1] = np.where(alpha > 0, blend, original[y0:y1, x0:x1])
    timings["total_s"] = time.perf_counter() - t_start
    params.update(empty_mask=False, inpaint_adapter=use_adapter)
    return IrisResult([Image.fromarray(out)], params, z, timings)


# ---------------------------------------------------------------------------------------------- upscale
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of `tile`-px tiles covering `length` px, consecutive ones overlapping >= `overlap`."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(n: int, lead: int, trail: int) -> torch.Tensor:
    """Blend weights [n]: a linear ramp up over `lead` px, flat, down over `trail` px (never zero)."""
    w = torch.ones(n)
    if lead:
        w[:lead] = torch.minimum(w[:lead], (torch.arange(lead) + 0.5) / lead)
    if trail:
        w[n - trail :] = torch.minimum(w[n - trail :], (torch.arange(trail, 0, -1) - 0.5) / trail)
    return w


def match_low_res(output: torch.Tensor, low: np.ndarray) -> np.ndarray:
    """Make a 2x output agree with its low-resolution source exactly.

    output [1, 3, 2h, 2w] in [-1, 1] (float); low [h, w, 3] uint8. Sets the LL band of the output's
    orthonormal Haar DWT to 2x the low-res image and inverts (every 2x2 block mean becomes the low-res
    pixel), then clamps to the pixel range while keeping each block mean (a per-block shift found by
    bisection where clamping bites) and rounds to uint8 keeping each block's sum, so a 2x2 box downscale
    of the returned [2h, 2w, 3] uint8 image is exactly `low`.
    """
    h, w = low.shape[:2]
    low_t = torch.from_numpy(np.array(low, dtype=np.float32)).permute(2, 0, 1)[None]  # [1, 3, h, w], 0..255
    out = idwt(with_ll_band(dwt(output.float().cpu()), 2.0 * (low_t / 127.5 - 1.0)))
    v = (out + 1.0) * 127.5
    blocks = v.view(3, h, 2, w, 2).permute(1, 3, 0, 2, 4).reshape(-1, 4)  # [h*w*3, 4] in (y, x, c) order
    target = low_t[0].permute(1, 2, 0).reshape(-1)

    clamped = blocks.clamp(0.0, 255.0)
    bad = (blocks < 0).any(1) | (blocks > 255).any(1)
    if bool(bad.any()):
        b, t = blocks[bad].double(), target[bad].double()
        lo, hi = -b.max(1).values, 255.0 - b.min(1).values  # mean(clamp(b + c)) is 0 at lo, 255 at hi
        for _ in range(60):
            mid = (lo + hi) / 2
            below = (b + mid[:, None]).clamp(0.0, 255.0).mean(1) < t
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        clamped[bad] = (b + hi[:, None]).clamp(0.0, 255.0).float()

    floor = clamped.floor()
    frac = clamped - floor
    k = (4.0 * target - floor.sum(1)).round().clamp(0, 4)
    rank = frac.neg().argsort(dim=1, stable=True).argsort(dim=1)
    q = (floor + (rank < k[:, None]).float()).clamp(0, 255)
    return q.view(h, w, 3, 2, 2).permute(0, 3, 1, 4, 2).reshape(2 * h, 2 * w, 3).to(torch.uint8).numpy()


class _Progress:
    """Re-numbers the preview events of many denoise runs (tiles, passes) into one run."""

    def __init__(self, callback: PreviewCallback | None, total_runs: int, steps: int):
        self.callback, self.total, self.steps = callback, total_runs * steps, steps
        self.done = 0
        self.t0 = time.perf_counter()

    def for_next_run(self) -> PreviewCallback | None:
        if self.callback is None:
            return None
        offset = self.done * self.steps
        self.done += 1
        cb = self.callback

        def forward(event: PreviewEvent) -> None:
            cb(PreviewEvent(offset + event.step, self.total, event.iteration, event.iterations, event.image,
                            time.perf_counter() - self.t0))

        return forward


def _upscale_2x(pipe: IrisCore, low_img: Image.Image, prompt: str, negative_prompt: str, budget: Budget,
                seed: int, strength: float, tile: int, overlap: int, progress: _Progress,
                preview_fraction: float | None, timings: dict[str, float]) -> Image.Image:
    low = np.asarray(low_img)
    h, w = low.shape[:2]
    f, ds = pipe.latent_factor, pipe.config.vae.downsample
    hp, wp = math.ceil(2 * h / f) * f, math.ceil(2 * w / f) * f
    lo = pil_to_tensor(low_img)
    up = first_pass_2x(pipe, lo)
    if strength <= 0.0:  # nothing to refine: the first pass is the result
        return Image.fromarray(match_low_res(up, low))
    up = F.pad(up, (0, wp - 2 * w, 0, hp - 2 * h), mode="replicate")  # to the latent grid
    lo = F.pad(lo, (0, wp // 2 - w, 0, hp // 2 - h), mode="replicate")
    noise = pipe.initial_noise(seed, (1, pipe.config.vae.latent_channels, hp // ds, wp // ds)).cpu()
    adapter = pipe.adapters["upscale"] if "upscale" in pipe.adapters else None
    ys, xs = tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap)
    th, tw = min(hp, tile or hp), min(wp, tile or wp)
    acc = torch.zeros(1, 3, hp, wp)  # the refinement's change to the first pass, blended over tiles
    weight = torch.zeros(1, 1, hp, wp)
    dev = pipe.device
    for y in ys:
        for x in xs:
            part = up[..., y : y + th, x : x + tw].to(dev)
            z_clean = pipe.encode(part)
            residual = None
            if adapter is not None:
                with torch.inference_mode():
                    feats = adapter(lo[..., y // 2 : (y + th) // 2, x // 2 : (x + tw) // 2].to(dev))
                residual = lambda t, feats=feats: feats
            run_timings: dict[str, float] = {}
            tile_noise = noise[..., y // ds : (y + th) // ds, x // ds : (x + tw) // ds].to(dev)
            z = sdedit(pipe, z_clean, tile_noise, prompt, negative_prompt, budget, seed, strength,
                       residual=residual, on_preview=progress.for_next_run(),
                       preview_fraction=preview_fraction, timings=run_timings)
            _add_timings(timings, run_timings)
            with torch.inference_mode():  # decoded refinement minus decoded start: the VAE's own loss cancels
                change = (pipe.vae.decode(z) - pipe.vae.decode(z_clean)).float().cpu()
            if len(ys) * len(xs) == 1:
                acc, weight = change, torch.ones(1, 1, hp, wp)
                break
            wy = _ramp(th, overlap if y > 0 else 0, overlap if y + th < hp else 0)
            wx = _ramp(tw, overlap if x > 0 else 0, overlap if x + tw < wp else 0)
            wt = (wy[:, None] * wx[None, :])[None, None]
            acc[..., y : y + th, x : x + tw] += change * wt
            weight[..., y : y + th, x : x + tw] += wt
    blended = (up + acc / weight).clamp(-1, 1)[..., : 2 * h, : 2 * w]
    return Image.fromarray(match_low_res(blended, low))


def tile_overlap(pipe: IrisCore, tile: int) -> int:
    """px by which an upscale's tiles of `tile` px overlap: tile / 8, at least one grid cell (0: no tiling)."""
    f = pipe.latent_factor
    return max(f, tile // 8 // f * f) if tile else 0


def upscale_tiles(pipe: IrisCore, width: int, height: int, scale: int, tile: int) -> list[tuple[int, int]]:
    """(width, height) in px of every SDEdit run an upscale of width x height by `scale` makes: one per tile
    of each 2x pass (two passes for 4x), on the latent grid."""
    f, overlap, runs = pipe.latent_factor, tile_overlap(pipe, tile), []
    for i in range(1 if scale == 2 else 2):
        hp, wp = math.ceil(2 * height * 2**i / f) * f, math.ceil(2 * width * 2**i / f) * f
        tiles = len(tile_starts(hp, tile, overlap)) * len(tile_starts(wp, tile, overlap))
        runs += [(min(wp, tile or wp), min(hp, tile or hp))] * tiles
    return runs


def first_pass_2x(pipe: IrisCore, low: torch.Tensor, tile: int = 256) -> torch.Tensor:
    """The start of a 2x upscale: the model's learned pixel upscaler (bicubic where it has none).

    low [1, 3, h, w] in [-1, 1] -> [1, 3, 2h, 2w] in [-1, 1], on the CPU. The upscaler runs in tiles of
    `tile` low-res pixels with an 8-pixel margin (more than its receptive field), so memory stays bounded
    and the result equals one whole-image pass.
    """
    if "pixel_upscale" not in pipe.adapters:
        return F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
    net, dev = pipe.adapters["pixel_upscale"], pipe.device
    dtype = next(net.parameters()).dtype
    h, w = low.shape[-2:]
    out = torch.empty(1, 3, 2 * h, 2 * w)
    m = 8
    with torch.inference_mode():
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                y0, x0 = max(0, y - m), max(0, x - m)
                part = low[..., y0 : min(h, y + tile + m), x0 : min(w, x + tile + m)].to(dev, dtype)
                up = net(part).float().cpu()
                th, tw = min(tile, h - y), min(tile, w - x)
                out[..., 2 * y : 2 * (y + th), 2 * x : 2 * (x + tw)] = \
                    up[..., 2 * (y - y0) : 2 * (y - y0 + th), 2 * (x - x0) : 2 * (x - x0 + tw)]
    return out.clamp(-1, 1)


def upscale(
    pipe: IrisCore,
    image: Any,
    scale: int = UpscaleOptions.scale,
    prompt: str = "",
    negative_prompt: str = "",
    strength: float = UpscaleOptions.strength,
    tile: int | None = UpscaleOptions.tile,
    steps: int | None = None,
    iterations: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    sampler: str | None = None,
    shift: float | None = None,
    exit_threshold: float | None = None,
    regional: bool | None = None,
    on_preview: PreviewCallback | None = None,
    preview_fraction: float | None = PREVIEW_FRACTION,
) -> IrisResult:
    """Wavelet super-resolution, 2x or 4x (= 2x twice); output exactly `scale` x the input's size.

    Each 2x pass starts from the model's learned pixel upscaler (bicubic where it has none), refines that
    with SDEdit at `strength` (with the model's `upscale` adapter when it has one) and adds the refinement's
    change, decoded result minus decoded start, so the VAE's own reconstruction loss cancels (strength 0:
    the first pass alone, no generator). It then replaces the LL band of the result's Haar DWT with the
    input (see `match_low_res`): a 2x2 (4x4 for scale 4) box downscale of the output gives back the input
    exactly. Outputs larger than `tile` px (0 or None: never) are refined in tiles of
    `tile` px overlapping by tile/8 (at least one grid cell), linearly blended; the LL replacement runs
    on the whole blended output, so the exactness holds for any tiling. Outputs are limited to 4096x4096
    pixels' worth (16.7 M pixels).
    """
    t_start = time.perf_counter()
    prompt, negative_prompt, budget, seed = _check_common(pipe, prompt, negative_prompt, steps, iterations,
                                                          guidance, seed, sampler, shift, exit_threshold,
                                                          regional)
    scale = check_scale(scale)
    strength = check_option("upscale", "strength", strength)
    tile = check_tile(pipe, tile)
    overlap = tile_overlap(pipe, tile)
    img = open_image(image)
    w, h = img.size
    if w * scale * h * scale > MAX_UPSCALE_PIXELS or max(w, h) * scale > MAX_UPSCALE_SIDE:
        raise InvalidInputError(f"upscaling {w}x{h} by {scale} gives {w * scale}x{h * scale}; the limit is "
                                f"{MAX_UPSCALE_PIXELS:,} output pixels")
    passes = [(w * 2 ** i, h * 2 ** i) for i in range(1 if scale == 2 else 2)]
    runs = len(upscale_tiles(pipe, w, h, scale, tile))
    progress = _Progress(on_preview if strength > 0 else None, runs, budget.steps)
    timings: dict[str, float] = {}
    out = img
    for _ in passes:
        out = _upscale_2x(pipe, out, prompt, negative_prompt, budget, seed, strength, tile, overlap, progress,
                          preview_fraction, timings)
    timings["total_s"] = time.perf_counter() - t_start
    params = pipe.base_params("upscale", prompt, negative_prompt, budget, seed, out.width, out.height)
    params.update(scale=scale, strength=strength, tile=tile, overlap=overlap, tiles=runs,
                  upscale_adapter="upscale" in pipe.adapters, pixel_upscaler="pixel_upscale" in pipe.adapters)
    return IrisResult([out], params, None, timings)


# ---------------------------------------------------------------------------------------------- control
def control_kinds(pipe: IrisCore) -> list[str]:
    """The control kinds this model has adapters for."""
    return sorted(name.removeprefix("control_") for name in pipe.adapters if name.startswith("control_"))


def control(
    pipe: IrisCore,
    control_image: Any,
    prompt: str = "",
    negative_prompt: str = "",
    kind: str = ControlOptions.kind,
    weight: float = ControlOptions.weight,
    start: float = ControlOptions.start,
    end: float = ControlOptions.end,
    preprocess: bool = ControlOptions.preprocess,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    iterations: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    sampler: str | None = None,
    shift: float | None = None,
    exit_threshold: float | None = None,
    regional: bool | None = None,
    on_preview: PreviewCallback | None = None,
    preview_fraction: float | None = PREVIEW_FRACTION,
) -> IrisResult:
    """Text to image following a control image, through the model's `control_<kind>` adapter.

    The control image is resized to the output size, turned into a map by `iris.control.preprocess`
    (canny, scribble, color; other kinds such as depth or pose pass through) unless preprocess=False
    (the image already is a map), and the adapter's features, scaled by `weight`, are added to the
    Prelude output while the current time t lies in the [start, end] fraction of the schedule (the
    schedule runs from t = 1 to 0, so fraction f is t = 1 - f). weight 0 is exactly `generate`.
    Size: width/height as in `generate`; when both are left out, the control image's aspect ratio with its
    longer side at the model's resolution. A kind without an adapter raises InvalidInputError naming the
    kinds the model has.
    """
    t_start = time.perf_counter()
    prompt, negative_prompt, budget, seed = _check_common(pipe, prompt, negative_prompt, steps, iterations,
                                                          guidance, seed, sampler, shift, exit_threshold,
                                                          regional)
    kind = control_maps.check_kind(kind)
    if f"control_{kind}" not in pipe.adapters:
        have = control_kinds(pipe)
        raise InvalidInputError(f"this model has no control adapter for {kind!r}; it has "
                                + (", ".join(have) if have else "no control adapters"))
    weight = check_option("control", "weight", weight)
    start, end = check_window(start, end)
    preprocess = check_option("control", "preprocess", preprocess)
    source = open_image(control_image)
    if width is None and height is None:
        width, height = native_grid(pipe, *source.size)
    elif width is None:
        width = max(1, round(check_int("height", height, 1, MAX_SIDE) * source.width / source.height))
    elif height is None:
        height = max(1, round(check_int("width", width, 1, MAX_SIDE) * source.height / source.width))
    width, height = pipe.check_size(width, height)
    if preprocess:
        cmap = control_maps.preprocess(kind, _resize(source, (width, height)))
    else:
        cmap = _resize(source, (width, height), Image.Resampling.BILINEAR)
    feats = None
    if weight > 0:
        with torch.inference_mode():
            feats = pipe.adapters[f"control_{kind}"](pil_to_tensor(cmap).to(pipe.device)) * weight

    def residual(t: float) -> torch.Tensor | None:
        fraction = 1.0 - t
        return feats if start - 1e-9 <= fraction <= end + 1e-9 else None

    ds = pipe.config.vae.downsample
    shape = (1, pipe.config.vae.latent_channels, height // ds, width // ds)
    timings: dict[str, float] = {}
    z = pipe.denoise(pipe.initial_noise(seed, shape), prompt, negative_prompt, budget, seed,
                     residual=residual if feats is not None else None, on_preview=on_preview,
                     preview_fraction=preview_fraction, timings=timings)
    images = pipe.decode(z)
    timings["total_s"] = time.perf_counter() - t_start
    params = pipe.base_params("control", prompt, negative_prompt, budget, seed, width, height)
    params.update(kind=kind, weight=weight, start=start, end=end, preprocess=preprocess)
    return IrisResult(images, params, z, timings)


# ---------------------------------------------------------------------------------------------- cost
def task_work(pipe: IrisCore, task: str, width: int, height: int, steps: Any = None, iterations: Any = None,
              guidance: Any = None, sampler: str | None = None, strength: Any = None,
              scale: Any = UpscaleOptions.scale, tile: Any = UpscaleOptions.tile,
              masked_only: Any = InpaintOptions.masked_only) -> list[tuple[int, int, int]]:
    """The denoising runs a task makes on an input (or output, for generate and control) of width x height px,
    as (core iterations, run width, run height) each, in px on the latent grid: what its time is made of.

    edit and upscale at strength 0 run none (the VAE round trip, the pixel upscaler alone); inpaint with
    masked_only works at the model's resolution; an upscale runs one SDEdit per tile of each 2x pass (two
    passes for 4x). A strength of None is the task's default (above 0). Raises InvalidInputError for a bad
    budget or option, like the task itself.
    """
    b = pipe.check_budget(steps, iterations, guidance, sampler)
    per_run = pipe.cost(b.steps, b.iterations, b.guidance, b.sampler).calls * b.iterations
    width, height = check_int("width", width, 1, MAX_UPSCALE_SIDE), check_int("height", height, 1, MAX_UPSCALE_SIDE)
    if task in ("generate", "control"):
        return [(per_run, *pipe.check_size(width, height))]
    if task == "edit":
        if strength is not None and check_option("edit", "strength", strength) <= 0.0:
            return []
        return [(per_run, *fit_grid(pipe, width, height))]
    if task == "inpaint":
        if check_option("inpaint", "masked_only", masked_only):
            return [(per_run, pipe.config.resolution, pipe.config.resolution)]
        return [(per_run, *fit_grid(pipe, width, height))]
    if task == "upscale":
        scale, tile = check_scale(scale), check_tile(pipe, tile)
        if strength is not None and check_option("upscale", "strength", strength) <= 0.0:
            return []
        return [(per_run, tw, th) for tw, th in upscale_tiles(pipe, width, height, scale, tile)]
    raise InvalidInputError(f"unknown task {task!r}; the tasks are generate, edit, inpaint, upscale, control")


__all__ = [
    "edit", "inpaint", "upscale", "control", "sdedit", "sdedit_start", "match_low_res", "latent_mask",
    "tile_starts", "fit_grid", "native_grid", "control_kinds", "check_scale", "check_tile", "check_window",
    "task_work", "feather_reach", "grow_mask",
]
