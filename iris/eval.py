"""An evaluator that is not the generator: a small emoji/colour classifier and the metrics built on it.

    from iris.eval import evaluate, format_markdown, get_classifier
    clf = get_classifier()                      # cached under the user cache dir, trained on first use
    results = evaluate(pipe, n_prompts=100, budgets=[(1, 4), (4, 4), (4, 8), (8, 16)], classifier=clf)
    print(format_markdown(results))

The classifier (`EmojiClassifier`, ~0.7M parameters, 64 px input) is trained on freshly rendered emoji
scenes of both the train and the held-out split (it is the evaluator: it only has to recognise emoji and
colours, so it may see every combination), lightly degraded (blur, down/up-sampling, noise, colour jitter)
so that it tolerates the softness of generated images. It sees whole single-sprite scenes, whole
two-sprite scenes (colour label only) and each half of a two-sprite scene (see `half_view`), exactly as
the metrics present them.

Metrics (all on the held-out split, whose captions are the prompts and whose scenes are the labels):

- generation, per budget (steps, iterations): emoji top-1 accuracy (single-sprite prompts, whole image),
  background-colour accuracy (all prompts), position accuracy (two-sprite prompts: each half of the image
  must show the caption's sprite for that side), Fréchet distance between classifier features of the
  generated images and of the real renders of the same scenes;
- VAE reconstruction PSNR at 128 px; super-resolution PSNR (64 -> 128 px, against the true 128 px render)
  of `pipe.upscale` (at its default strength, and at strength 0: the first pass alone) versus bicubic;
  inpainting: emoji accuracy in the regenerated (masked) region; control: edge F1 of the output's canny
  edges against the control edges, with and without control.

Weights are safetensors only (never pickle).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .files import atomic_path
from .judge import fit_two_heads, half_view
from .train.emoji import COLORS, EMOJI, EmojiScenes, Scene, SceneConfig

__all__ = [
    "CLASSIFIER_VERSION", "DEFAULT_BUDGETS", "DISTILLED_BUDGETS", "DEFAULT_STEPS", "TASKS", "EmojiClassifier",
    "train_classifier",
    "classifier_accuracy", "save_classifier", "load_classifier", "get_classifier", "default_cache_path",
    "classify", "frechet_distance", "frechet_from_stats", "position_accuracy", "half_view", "region_view",
    "psnr", "edge_f1", "evaluate", "eval_prompts", "phrase", "EvalPrompt", "SINGLE_PHRASINGS", "PAIR_PHRASINGS",
    "format_markdown", "parse_budgets",
]

INPUT_SIZE = 64
DEFAULT_STEPS = 2400
DEFAULT_BUDGETS: tuple[tuple[int, int], ...] = ((1, 4), (4, 2), (4, 8), (8, 16))
# a distilled (consistency) student: 1, 2 and 4 steps at r = 2, 4 and 8
DISTILLED_BUDGETS: tuple[tuple[int, int], ...] = tuple((s, r) for s in (1, 2, 4) for r in (2, 4, 8))
TASKS = ("vae", "super_resolution", "inpaint", "control")
MASK_DILATION = 6  # px (at 128 px) the inpainting mask grows beyond the sprite's box
FEATURE_DIM = 128


def _vocab_hash() -> str:
    text = "|".join(e.name for e in EMOJI) + "#" + "|".join(f"{c.name}{c.rgb}" for c in COLORS)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


# Bump the leading tag whenever the architecture, the training data or the input views change.
CLASSIFIER_VERSION = f"emoji-clf-v1-{_vocab_hash()}"


# ------------------------------------------------------------------------------------------- classifier
def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EmojiClassifier(nn.Module):
    """64 px RGB in [0, 1] -> (emoji logits, background-colour logits).

    Five conv stages (64 -> 32 -> 16 -> 8 -> 4 px), global average pooling, a 128-d feature layer
    (`features`, used for the Fréchet distance) and two linear heads.
    """

    def __init__(self, n_emoji: int = len(EMOJI), n_colors: int = len(COLORS), width: int = 24,
                 feature_dim: int = FEATURE_DIM):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w, 2),  # 32
            _block(w, 2 * w, 2),  # 16
            _block(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 8
            _block(4 * w, 8 * w),
            nn.MaxPool2d(2),  # 4
            _block(8 * w, 256),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(256, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.emoji_head = nn.Linear(feature_dim, n_emoji)
        self.color_head = nn.Linear(feature_dim, n_colors)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.meta: dict[str, str] = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 64, 64] in [0, 1] -> [B, feature_dim] penultimate features."""
        return self.embed(self.body((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.emoji_head(f), self.color_head(f)


# ------------------------------------------------------------------------------------------------ views
def region_view(image: Image.Image, box: tuple[int, int, int, int], context: float = 1.6) -> Image.Image:
    """A square crop around `box` (x0, y0, x1, y1), `context` times its longer side (clamped to the image)."""
    image = image.convert("RGB")
    w, h = image.size
    x0, y0, x1, y1 = box
    side = int(round(min(min(w, h), max(x1 - x0, y1 - y0) * context)))
    side = max(side, 1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return image.crop((left, top, left + side, top + side))


def _to_input(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """PIL -> [size, size, 3] uint8 (box filter when shrinking, bicubic when enlarging)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        shrink = image.width >= size and image.height >= size
        image = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _batch(images: Sequence[Image.Image], size: int = INPUT_SIZE) -> torch.Tensor:
    arr = np.stack([_to_input(im, size) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


# ------------------------------------------------------------------------------------------- training
@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _render_pool(n: int, seed: int, size: int = INPUT_SIZE, scene_size: int = 128,
                 heldout_share: float = 0.15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pool of `n` training views: uint8 [n, 3, size, size], emoji labels (-100: none) and colour labels.

    70% whole single-sprite scenes, 30% from two-sprite scenes (each gives its two halves, labelled with
    the sprite on that side, and the whole image, labelled with its colour only). Scenes come from both
    splits (`heldout_share` of them from the held-out split) of a scene seed of their own, so none of them
    is a scene of the evaluation set.
    """
    scene_seed = 1_000_003 + seed
    big = dict(seed=scene_seed, size=scene_size, train_size=10**9, heldout_size=10**9)
    singles = [EmojiScenes(SceneConfig(max_sprites=1, single_scale=(0.3, 0.85), **big), split)
               for split in ("train", "heldout")]
    pairs = [EmojiScenes(SceneConfig(min_sprites=2, max_sprites=2, **big), split) for split in ("train", "heldout")]
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    emoji = np.full(n, -100, np.int64)
    color = np.zeros(n, np.int64)
    n_pair_scenes = (3 * n) // 10 // 3
    n_single = n - 3 * n_pair_scenes
    k = 0
    for i in range(n_single):
        ds = singles[int(rng.random() < heldout_share)]
        scene = ds.sample(i)
        images[k], emoji[k], color[k] = _to_input(scene.image, size), scene.emoji[0], scene.color
        k += 1
    for i in range(n_pair_scenes):
        ds = pairs[int(rng.random() < heldout_share)]
        scene = ds.sample(i)
        images[k], color[k] = _to_input(scene.image, size), scene.color
        k += 1
        pair = len(scene.emoji) == 2 and len(scene.positions) == 2
        for j in range(2):
            side = scene.positions[j] if pair else ("left", "right")[j]
            images[k] = _to_input(half_view(scene.image, side), size)
            emoji[k] = scene.emoji[j] if pair else -100  # a lone sprite (no partner colour-mate): colour only
            color[k] = scene.color
            k += 1
    assert k == n
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(emoji), torch.from_numpy(color)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    return gaussian_blur(x, [2 * max(1, math.ceil(2.5 * sigma)) + 1] * 2, [sigma, sigma])


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light degradations of a batch [B, 3, H, W] in [0, 1]: down/up-sampling, blur, colour jitter, noise."""
    b, _, h, w = x.shape
    u = lambda *shape: torch.rand(shape, generator=g)
    # downscale-upscale (a JPEG-like loss of detail) on ~40% of the batch, one random factor per batch
    sel = u(b) < 0.4
    if sel.any():
        idx = sel.nonzero().flatten()
        f = float(0.35 + 0.5 * u(1))
        small = F.interpolate(x[idx], scale_factor=f, mode="bilinear", antialias=True, align_corners=False)
        x = x.clone()
        x[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # gaussian blur, sigma 0.3-1.0 px at 64 px (about 0.6-2 px at 128 px) on ~40% of the batch
    sel = u(b) < 0.4
    if sel.any():
        idx = sel.nonzero().flatten()
        x = x.clone()
        x[idx] = _blur(x[idx], float(0.3 + 0.7 * u(1)))
    # colour jitter: brightness, contrast and a small per-channel shift (small enough to keep colour names)
    bright = 1 + (u(b, 1, 1, 1) - 0.5) * 0.16
    contrast = 1 + (u(b, 1, 1, 1) - 0.5) * 0.2
    shift = (u(b, 3, 1, 1) - 0.5) * 0.06
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * bright + shift
    # gaussian noise on half of the batch
    noise_std = u(b, 1, 1, 1) * 0.04 * (u(b, 1, 1, 1) < 0.5)
    x = x + torch.randn(x.shape, generator=g) * noise_std
    return x.clamp_(0, 1)


def train_classifier(steps: int = DEFAULT_STEPS, batch_size: int = 64, seed: int = 0, size: int = INPUT_SIZE,
                     pool_size: int = 20_000, lr: float = 3e-3, threads: int | None = 1,
                     log: Callable[[str], None] | None = None) -> EmojiClassifier:
    """Train an `EmojiClassifier` on a rendered pool of `pool_size` views with light augmentation.

    One-cycle AdamW, label smoothing 0.05, loss = emoji CE + colour CE. Runs on `threads` CPU threads
    (1 by default: a cheap background job). The model comes back in eval mode, with `meta` filled in.
    """
    if size != INPUT_SIZE:
        raise ValueError(f"the classifier works at {INPUT_SIZE} px, got size={size}")
    t0, c0 = time.perf_counter(), time.process_time()
    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images, emoji, color = _render_pool(pool_size, seed, size)
        t_pool = time.perf_counter() - t0
        if log:
            log(f"rendered {pool_size} views in {t_pool:.1f}s")
        model = EmojiClassifier()
        fit_two_heads(model, images, emoji, color, _augment, steps, batch_size, lr, seed, log)
    model.meta = {"version": CLASSIFIER_VERSION, "steps": str(steps), "batch_size": str(batch_size),
                  "seed": str(seed), "pool_size": str(pool_size),
                  "train_seconds": f"{time.perf_counter() - t0:.1f}",
                  "train_cpu_seconds": f"{time.process_time() - c0:.1f}", "threads": str(threads)}
    return model


def classifier_accuracy(model: EmojiClassifier, n: int = 500, seed: int = 12345, n_pairs: int = 200,
                        ) -> dict[str, float]:
    """Accuracy on fresh clean renders: `n` single-sprite scenes (emoji, colour; both splits of a scene seed
    unused in training, at the dataset's default scales) and the halves of `n_pairs` two-sprite scenes."""
    cfg = dict(seed=seed, train_size=10**9, heldout_size=10**9)
    singles = [EmojiScenes(SceneConfig(max_sprites=1, **cfg), s) for s in ("train", "heldout")]
    pairs = EmojiScenes(SceneConfig(min_sprites=2, max_sprites=2, **cfg), "train")
    scenes = [singles[i % 10 == 0].sample(i) for i in range(n)]
    e, c, _ = classify([s.image for s in scenes], model)
    out = {
        "emoji_acc": float(np.mean(e == np.array([s.emoji[0] for s in scenes]))),
        "color_acc": float(np.mean(c == np.array([s.color for s in scenes]))),
        "n": n,
    }
    if n_pairs:
        pair_scenes = [pairs.sample(i) for i in range(n_pairs)]
        out["half_emoji_acc"] = position_accuracy([s.image for s in pair_scenes], pair_scenes, model,
                                                  per_sprite=True)
        out["n_pairs"] = n_pairs
    return out


# --------------------------------------------------------------------------------------- save / load
def default_cache_path() -> Path:
    """`eval/emoji_classifier.safetensors` under the cache folder (`iris.files.cache_root`)."""
    from .files import cache_root

    return cache_root() / "eval" / "emoji_classifier.safetensors"


def save_classifier(model: EmojiClassifier, path: str | Path) -> Path:
    """Write the classifier's weights and `meta` (version, steps, accuracy, ...) as safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"version": CLASSIFIER_VERSION, **{k: str(v) for k, v in model.meta.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_classifier(path: str | Path) -> EmojiClassifier:
    """Load a classifier written by `save_classifier` (safetensors only); eval mode, `meta` restored."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"refusing to load {path.name}: classifier weights are safetensors files")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    model = EmojiClassifier()
    model.load_state_dict(load_file(str(path)))
    model.meta = meta
    return model.eval()


def get_classifier(steps: int = DEFAULT_STEPS, path: str | Path | None = None, train: bool = True,
                   log: Callable[[str], None] | None = None) -> EmojiClassifier:
    """The cached classifier when it has the current version and at least `steps` training steps;
    otherwise train one (`train_classifier(steps)`), measure its clean accuracy and cache it, unless the
    cache holds a current one trained for more steps. `train=False` raises FileNotFoundError instead."""
    path = Path(path) if path is not None else default_cache_path()
    cached: EmojiClassifier | None = None
    if path.is_file():
        try:
            cached = load_classifier(path)
        except Exception as err:  # a corrupt or foreign file: retrain
            if log:
                log(f"ignoring unreadable classifier cache {path}: {err}")
        if cached is not None and cached.meta.get("version") != CLASSIFIER_VERSION:
            cached = None
        if cached is not None and int(cached.meta.get("steps", 0)) >= steps:
            return cached
    if not train:
        raise FileNotFoundError(f"no current classifier with >= {steps} steps at {path}")
    if log:
        log(f"training the evaluation classifier ({steps} steps, 1 thread) ...")
    model = train_classifier(steps, log=log)
    acc = classifier_accuracy(model)
    model.meta.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in acc.items()})
    if log:
        log(f"classifier clean accuracy: {acc}")
    if cached is None or int(cached.meta.get("steps", 0)) <= steps:
        try:
            save_classifier(model, path)
        except OSError as err:  # read-only cache: still usable
            if log:
                log(f"could not cache the classifier at {path}: {err}")
    return model


# -------------------------------------------------------------------------------------------- metrics
@torch.inference_mode()
def classify(images: Sequence[Image.Image], classifier: EmojiClassifier | None = None, batch_size: int = 128,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 emoji and colour predictions and penultimate features [N, 128] of PIL images (any size)."""
    model = classifier if classifier is not None else get_classifier()
    model.eval()
    emoji, color, feats = [], [], []
    for i in range(0, len(images), batch_size):
        x = _batch(images[i : i + batch_size]).to(next(model.parameters()).device)
        f = model.features(x)
        emoji.append(model.emoji_head(f).argmax(1).cpu())
        color.append(model.color_head(f).argmax(1).cpu())
        feats.append(f.float().cpu())
    if not feats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, FEATURE_DIM), np.float64)
    return (torch.cat(emoji).numpy(), torch.cat(color).numpy(), torch.cat(feats).double().numpy())


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu_a - mu_b|^2 + tr(A) + tr(B) - 2 tr((A B)^1/2).

    tr((A B)^1/2) = sum of the square roots of the eigenvalues of A^1/2 B A^1/2 (symmetric PSD, so a
    plain `eigh` suffices; no general matrix square root needed)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_mean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    diff = mu_a - mu_b
    return max(0.0, float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_mean))


def frechet_distance(feat_a: Any, feat_b: Any) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N, D] (sample covariance)."""
    a, b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty [N, D] feature sets of the same D, got {a.shape} and {b.shape}")
    cov = lambda x: np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]) if len(x) > 1 else np.zeros(
        (x.shape[1], x.shape[1]))
    return frechet_from_stats(a.mean(0), cov(a), b.mean(0), cov(b))


def position_accuracy(images: Sequence[Image.Image], scenes: Sequence[Scene | Any],
                      classifier: EmojiClassifier | None = None, per_sprite: bool = False) -> float | None:
    """Two-sprite scenes: the share of images where each sprite's half (its caption side: left/right or
    top/bottom) is classified as that sprite (`per_sprite`: the share of sprites instead). `scenes` give
    `.emoji` and `.positions`; single-sprite ones are skipped. None when there is no two-sprite scene."""
    views, labels, owner = [], [], []
    for k, (image, scene) in enumerate(zip(images, scenes)):
        if len(scene.emoji) != 2 or len(scene.positions) != 2:
            continue
        for e, side in zip(scene.emoji, scene.positions):
            views.append(half_view(image, side))
            labels.append(e)
            owner.append(k)
    if not views:
        return None
    pred, _, _ = classify(views, classifier)
    ok = pred == np.array(labels)
    if per_sprite:
        return float(ok.mean())
    owners = np.array(owner)
    return float(np.mean([ok[owners == k].all() for k in np.unique(owners)]))


def _as_uint8(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.asarray(image)


def psnr(a: Any, b: Any, max_value: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-sized images (PIL or arrays on a 0..`max_value` scale);
    inf for identical images."""
    x, y = _as_uint8(a).astype(np.float64), _as_uint8(b).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"psnr needs images of the same shape, got {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def _edge_map(edges: Any) -> np.ndarray:
    if isinstance(edges, Image.Image):
        return np.asarray(edges.convert("L")) > 127
    a = np.asarray(edges)
    if a.ndim == 3:
        a = a.max(axis=-1)
    return a > (127 if a.dtype == np.uint8 else 0.5) if a.dtype != bool else a


def _dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = torch.from_numpy((yy**2 + xx**2 <= radius**2).astype(np.float32))[None, None]
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.conv2d(m, disk, padding=r)[0, 0] > 0.5).numpy()


def edge_f1(pred_edges: Any, ref_edges: Any, tolerance_px: float = 2) -> float:
    """F1 of two edge maps (PIL white-on-black, bool or 0/1 arrays) where a pixel matches if the other map
    has an edge within `tolerance_px` (Euclidean). Both empty: 1; one empty: 0."""
    p, r = _edge_map(pred_edges), _edge_map(ref_edges)
    if p.shape != r.shape:
        raise ValueError(f"edge maps differ in size: {p.shape} and {r.shape}")
    n_p, n_r = int(p.sum()), int(r.sum())
    if n_p == 0 and n_r == 0:
        return 1.0
    if n_p == 0 or n_r == 0:
        return 0.0
    precision = float((p & _dilate_disk(r, tolerance_px)).sum()) / n_p
    recall = float((r & _dilate_disk(p, tolerance_px)).sum()) / n_r
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------ evaluation
def parse_budgets(text: str) -> list[tuple[int, int]]:
    """"1x4,4x8" -> [(1, 4), (4, 8)]."""
    out = []
    for part in text.replace(" ", "").split(","):
        if part:
            s, _, i = part.lower().partition("x")
            out.append((int(s), int(i)))
    if not out:
        raise ValueError(f"no budgets in {text!r}")
    return out


def _mean(values: Iterable[float]) -> float | None:
    v = list(values)
    return float(np.mean(v)) if v else None


def _dilated_box(box: tuple[int, int, int, int], px: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, x0 - px), max(0, y0 - px), min(size[0], x1 + px), min(size[1], y1 + px)


# Prompt phrasings of the evaluation. The first two are caption-template forms; the others never come out
# of the caption templates (`iris.train.emoji`), so a model that only learned the templates is caught.
SINGLE_PHRASINGS = (
    "{a} on {ac} background",
    "{ac} background with {a}",
    "a single {n} over a plain {c} backdrop",
    "draw {a}; make the background {c}",
    "{c} all around, with {a} in the middle",
)
PAIR_PHRASINGS = (
    "{a1} {p1} and {a2} {p2}, {c} background",
    "on {ac} background, {a1} is {p1} and {a2} is {p2}",
)
_SIDE_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its text, the held-out scene it describes (whose render is the reference) and
    the seed its image is generated with."""

    text: str
    scene: Scene
    phrasing: int
    seed: int


def phrase(scene: Scene, phrasing: int) -> str:
    """The held-out scene's prompt in phrasing `phrasing` (of SINGLE_PHRASINGS or PAIR_PHRASINGS)."""
    from .train.emoji import article

    c = COLORS[scene.color].name
    if len(scene.emoji) == 1:
        name = EMOJI[scene.emoji[0]].name
        return SINGLE_PHRASINGS[phrasing % len(SINGLE_PHRASINGS)].format(a=article(name), n=name, c=c,
                                                                         ac=article(c))
    (e1, e2), (p1, p2) = scene.emoji, scene.positions
    return PAIR_PHRASINGS[phrasing % len(PAIR_PHRASINGS)].format(
        a1=article(EMOJI[e1].name), p1=_SIDE_WORDS[p1], a2=article(EMOJI[e2].name), p2=_SIDE_WORDS[p2], c=c,
        ac=article(c))


def eval_prompts(n_single: int, n_pair: int = 0, seeds: int = 2, seed: int = 0,
                 scenes: EmojiScenes | None = None) -> list[EvalPrompt]:
    """The first `n_single` single-sprite and `n_pair` two-sprite held-out scenes, phrasing i mod 5 (2) for
    the i-th of each kind, each generated with `seeds` seeds (`seed`, `seed` + 1000, ...)."""
    ds = scenes if scenes is not None else EmojiScenes(SceneConfig(), "heldout")
    singles: list[Scene] = []
    pairs: list[Scene] = []
    for i in range(len(ds)):
        if len(singles) >= n_single and len(pairs) >= n_pair:
            break
        scene = ds.sample(i)
        pick = singles if len(scene.emoji) == 1 else pairs
        if len(pick) < (n_single if pick is singles else n_pair) and (pick is singles or len(scene.positions) == 2):
            pick.append(scene)
    if len(singles) < n_single or len(pairs) < n_pair:
        raise ValueError(f"the held-out split has only {len(singles)} single and {len(pairs)} pair scenes")
    return [EvalPrompt(phrase(sc, i), sc, i, seed + 1000 * k + i)
            for group in (singles, pairs) for i, sc in enumerate(group) for k in range(seeds)]


def _judged(images: Sequence[Image.Image], prompts: Sequence[EvalPrompt], judge: Any,
            classifier: EmojiClassifier | None = None) -> dict[str, Any]:
    """Strict scores of images generated for `prompts` (see `evaluate`), plus judge features."""
    from .judge import judge_images

    verdict = judge_images(images, judge)
    single = [i for i, p in enumerate(prompts) if len(p.scene.emoji) == 1]
    want = [EMOJI[prompts[i].scene.emoji[0]].char for i in single]
    top1 = [verdict.top5[i][0] == w for i, w in zip(single, want)]
    top5 = [w in verdict.top5[i] for i, w in zip(single, want)]
    pair = [i for i, p in enumerate(prompts) if len(p.scene.emoji) == 2]
    halves, owners = [], []
    for i in pair:
        for e, side in zip(prompts[i].scene.emoji, prompts[i].scene.positions):
            halves.append((half_view(images[i], side), EMOJI[e].char))
            owners.append(i)
    hv = judge_images([h for h, _ in halves], judge)
    hit = np.array([t[0] == want for t, (_, want) in zip(hv.top5, halves)], bool)
    owners_a = np.array(owners)
    out: dict[str, Any] = {
        "emoji_acc": _mean(top1), "emoji_top5": _mean(top5),
        "color_acc": float(np.mean(verdict.colors == np.array([p.scene.color for p in prompts]))),
        "position_acc": _mean(hit[owners_a == i].all() for i in pair) if pair else None,
        "position_sprite_acc": float(hit.mean()) if len(hit) else None,
        "by_phrasing": {str(k): _mean(h for i, h in zip(single, top1) if prompts[i].phrasing % 5 == k)
                        for k in range(len(SINGLE_PHRASINGS))},
        "features": verdict.features,
    }
    if classifier is not None:  # the old 207-way classifier, for comparison
        e, _, _ = classify([images[i] for i in single], classifier)
        out["emoji_acc_207"] = _mean(e == np.array([prompts[i].scene.emoji[0] for i in single]))
    return out


def evaluate(
    pipe: Any,
    n_prompts: int = 60,
    budgets: Sequence[tuple[int, int]] = DEFAULT_BUDGETS,
    seed: int = 0,
    classifier: EmojiClassifier | None = None,
    *,
    judge: Any = None,
    n_pairs: int | None = None,
    seeds: int = 2,
    task_budget: tuple[int, int] | None = None,
    n_task: int | None = None,
    tasks: Iterable[str] = TASKS,
    guidance: float | None = None,
    scenes: EmojiScenes | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All metrics of `pipe`, judged strictly (`iris.judge`: every emoji the font renders is a class).

    Generation, per budget (steps, iterations): `n_prompts` held-out single-sprite scenes and `n_pairs`
    (default n_prompts // 3) two-sprite ones, each prompt in one of five (two) phrasings, three (one) of
    which the caption templates never produce, each generated with `seeds` seeds. Emoji top-1 / top-5 (of
    ~1,400 classes), background colour, positions (both sprites named on their own halves) and a Fréchet
    distance of judge features against the real renders. `classifier` (the old 207-way classifier) adds its
    emoji accuracy as `emoji_acc_207`, for comparison. The task metrics (see `TASKS`) use `n_task` scenes
    (default min(n_prompts, 32)) at `task_budget` (default: the model's). Returns a JSON-serialisable dict
    (see `format_markdown`).
    """
    from . import control as control_maps
    from .judge import judge_images, load_judge

    t_all = time.perf_counter()
    judge = judge if judge is not None else load_judge()
    tasks = set(tasks)
    unknown = tasks - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
    ds = scenes if scenes is not None else EmojiScenes(SceneConfig(), "heldout")
    n_prompts = int(n_prompts)
    n_pairs = n_prompts // 3 if n_pairs is None else int(n_pairs)
    if not 1 <= n_prompts <= len(ds):
        raise ValueError(f"n_prompts must be between 1 and {len(ds)}, got {n_prompts}")
    prompts = eval_prompts(n_prompts, n_pairs, seeds, seed, ds)
    real_images = [p.scene.image for p in prompts]
    res = pipe.config.resolution
    say = log or (lambda msg: None)

    real_scores = _judged(real_images, prompts, judge, classifier)
    real_feats = real_scores.pop("features")
    out: dict[str, Any] = {
        "model": pipe.config.name,
        "source": getattr(pipe, "source", ""),
        "n_prompts": n_prompts,
        "n_single": n_prompts * seeds,
        "n_pair": n_pairs * seeds,
        "seeds": seeds,
        "seed": seed,
        "resolution": res,
        "guidance": guidance if guidance is not None else pipe.config.sampler.guidance,
        "judge": {k: v for k, v in judge.meta.items()},
        "judge_classes": len(judge.chars),
        "classifier": {k: v for k, v in classifier.meta.items()} if classifier is not None else None,
        "phrasings": {"single": list(SINGLE_PHRASINGS), "pair": list(PAIR_PHRASINGS)},
        "real": {**real_scores, "frechet": 0.0},
        "generation": [],
    }
    for steps, iterations in budgets:
        t0 = time.perf_counter()
        images = [pipe.generate(p.text, steps=steps, iterations=iterations, guidance=guidance, seed=p.seed,
                                preview_fraction=None).images[0] for p in prompts]
        seconds = (time.perf_counter() - t0) / len(prompts)
        row = _judged(images, prompts, judge, classifier)
        feats = row.pop("features")
        row = {"steps": steps, "iterations": iterations, **row, "frechet": frechet_distance(feats, real_feats),
               "seconds_per_image": seconds}
        out["generation"].append(row)
        say(f"{steps}x{iterations}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                   if isinstance(v, float)))

    real = [ds.sample(i) for i in range(min(len(ds), max(n_prompts, 32 if n_task is None else int(n_task))))]
    n_task = min(n_prompts, 32) if n_task is None else int(n_task)
    ts, ti = task_budget if task_budget is not None else (None, None)
    budget_kw = dict(steps=ts, iterations=ti, guidance=guidance, preview_fraction=None)
    task_scenes = real[:n_task] if n_task <= len(real) else [ds.sample(i) for i in range(n_task)]
    out["task_budget"], out["n_task"] = None, n_task
    if tasks:
        b = pipe.check_budget(ts, ti, guidance)
        out["task_budget"] = [b.steps, b.iterations]

    def to128(im: Image.Image) -> Image.Image:
        return im if im.size == (128, 128) else im.resize((128, 128), Image.Resampling.LANCZOS)

    # VAE reconstruction at 128 px
    out["vae"] = None
    if "vae" in tasks:
        from .inputs import pil_to_tensor

        values = []
        for scene in task_scenes:
            img = to128(scene.image)
            rec = pipe.decode(pipe.encode(pil_to_tensor(img)))[0]
            values.append(psnr(rec, img))
        out["vae"] = {"psnr": _mean(values), "n": len(values)}
        say(f"vae psnr {out['vae']['psnr']:.2f}")

    # super-resolution 64 -> 128 against the true 128 px render
    out["super_resolution"] = None
    if "super_resolution" in tasks:
        model_p, first_p, bicubic_p = [], [], []
        for i, scene in enumerate(task_scenes):
            hi = to128(scene.image)
            lo = hi.resize((64, 64), Image.Resampling.BOX)
            up = pipe.upscale(lo, scale=2, prompt=scene.caption, seed=seed + i, **budget_kw).images[0]
            model_p.append(psnr(up, hi))
            first_p.append(psnr(pipe.upscale(lo, scale=2, strength=0.0).images[0], hi))
            bicubic_p.append(psnr(lo.resize((128, 128), Image.Resampling.BICUBIC), hi))
        out["super_resolution"] = {"psnr_model": _mean(model_p), "psnr_first_pass": _mean(first_p),
                                   "psnr_bicubic": _mean(bicubic_p), "adapter": "upscale" in pipe.adapters,
                                   "pixel_upscaler": "pixel_upscale" in pipe.adapters, "n": len(model_p)}
        say(f"super-resolution psnr {out['super_resolution']['psnr_model']:.2f}, strength 0 "
            f"{out['super_resolution']['psnr_first_pass']:.2f} (bicubic {out['super_resolution']['psnr_bicubic']:.2f})")

    # inpainting: regenerate the (dilated) sprite box of single-sprite scenes, classify that region
    out["inpaint"] = None
    if "inpaint" in tasks:
        singles = [s for s in task_scenes if len(s.emoji) == 1]
        k = len(real)
        while len(singles) < max(1, n_task // 2) and k < min(len(ds), n_prompts + 4 * n_task):
            s = ds.sample(k)
            if len(s.emoji) == 1:
                singles.append(s)
            k += 1
        views, labels = [], []
        for i, scene in enumerate(singles):
            img = to128(scene.image)
            scale = 128 / scene.image.width
            box = tuple(int(round(v * scale)) for v in scene.boxes[0])
            region = _dilated_box(box, MASK_DILATION, img.size)  # type: ignore[arg-type]
            mask = Image.new("L", img.size, 0)
            mask.paste(255, region)
            out_img = pipe.inpaint(img, mask, scene.caption, seed=seed + i, **budget_kw).images[0]
            views.append(region_view(out_img, region))
            labels.append(scene.emoji[0])
        chars = [EMOJI[e].char for e in labels]
        pred = judge_images(views, judge).top1
        real_pred = judge_images([region_view(to128(s.image), _dilated_box(
            tuple(int(round(v * 128 / s.image.width)) for v in s.boxes[0]), MASK_DILATION, (128, 128)))
            for s in singles], judge).top1
        out["inpaint"] = {"emoji_acc": _mean(a == b for a, b in zip(pred, chars)) if labels else None,
                          "real_emoji_acc": _mean(a == b for a, b in zip(real_pred, chars)) if labels else None,
                          "adapter": "inpaint" in pipe.adapters, "n": len(labels)}
        say(f"inpaint emoji acc {out['inpaint']['emoji_acc']}")

    # control: canny edges of the real render as the control map
    out["control"] = None
    if "control" in tasks:
        has = "control_canny" in pipe.adapters
        with_c, without_c = [], []
        for i, scene in enumerate(task_scenes):
            img = to128(scene.image)
            ref = control_maps.canny(img)
            plain = pipe.generate(scene.caption, seed=seed + i, width=128, height=128, **budget_kw).images[0]
            without_c.append(edge_f1(control_maps.canny(plain), ref))
            if has:
                ctl = pipe.control(img, scene.caption, kind="canny", seed=seed + i, width=128, height=128,
                                   **budget_kw).images[0]
                with_c.append(edge_f1(control_maps.canny(ctl), ref))
        out["control"] = {"edge_f1_control": _mean(with_c) if has else None, "edge_f1_no_control": _mean(without_c),
                          "adapter": has, "n": len(without_c), **({} if has else {"note": "no control_canny adapter"})}
        say(f"control edge F1 {out['control']['edge_f1_control']} (no control {out['control']['edge_f1_no_control']})")
    out["seconds"] = time.perf_counter() - t_all
    return out


# -------------------------------------------------------------------------------------------- report
def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _num(v: Any, digits: int = 2, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}{unit}"


def format_markdown(results: dict[str, Any], title: str | None = None) -> str:
    """Markdown tables of an `evaluate` result: one row per budget for generation, then the task metrics."""
    r = results
    judge = r.get("judge") or {}
    legacy = r.get("classifier") is not None
    lines = []
    if title:
        lines += [f"### {title}", ""]
    clean = ""
    if "emoji_top1" in judge:
        clean = (f"; the judge on clean renders: emoji {_pct(float(judge['emoji_top1']))} top-1 of all classes, "
                 f"colour {_pct(float(judge['color']))}")
    lines += [
        f"Model `{r['model']}` ({r.get('source', '')}): {r['n_prompts']} held-out single-sprite prompts and "
        f"{r['n_pair'] // max(1, r.get('seeds', 1))} two-sprite ones × {r.get('seeds', 1)} seeds "
        f"({r['n_single']} + {r['n_pair']} images per budget), guidance {r.get('guidance')}; judged among "
        f"{r.get('judge_classes', '?')} emoji classes{clean}.",
        "",
        "| steps × iterations | emoji top-1 | emoji top-5 | background colour | positions (pairs) | "
        "sprite-in-half | Fréchet distance | s / image |" + (" 207-way top-1 |" if legacy else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if legacy else ""),
    ]
    rows = [("real renders", r["real"], None)] + [(f"{g['steps']}×{g['iterations']}", g, g["seconds_per_image"])
                                                  for g in r["generation"]]
    for name, g, secs in rows:
        lines.append(f"| {name} | {_pct(g['emoji_acc'])} | {_pct(g.get('emoji_top5'))} | {_pct(g['color_acc'])} | "
                     f"{_pct(g['position_acc'])} | {_pct(g['position_sprite_acc'])} | {_num(g['frechet'])} | "
                     f"{_num(secs)} |" + (f" {_pct(g.get('emoji_acc_207'))} |" if legacy else ""))
    phrasings = r.get("phrasings", {}).get("single", [])
    if phrasings and r["generation"]:
        lines += ["", "| emoji top-1 by phrasing | " + " | ".join(f"{g['steps']}×{g['iterations']}"
                                                               for g in r["generation"]) + " |",
                  "|---|" + "---|" * len(r["generation"])]
        for k, text in enumerate(phrasings):
            seen = " (a caption-template form)" if k < 2 else ""
            lines.append(f"| `{text}`{seen} | " + " | ".join(_pct(g["by_phrasing"].get(str(k)))
                                                             for g in r["generation"]) + " |")
    tb = r.get("task_budget")
    vae, sr, inp, ctl = r.get("vae"), r.get("super_resolution"), r.get("inpaint"), r.get("control")
    if not any((vae, sr, inp, ctl)):
        return "\n".join(lines) + "\n"
    budget = f" (budget {tb[0]}×{tb[1]}, {r.get('n_task')} scenes)" if tb else ""
    yes = lambda flag: "yes" if flag else "no"
    lines += ["", f"| task{budget} | metric | model | reference | adapter |", "|---|---|---|---|---|"]
    if vae:
        lines.append(f"| VAE reconstruction, 128 px | PSNR | {_num(vae['psnr'], 2, ' dB')} | — | — |")
    if sr:
        lines.append(f"| super-resolution 64→128 px | PSNR vs the true render | {_num(sr['psnr_model'], 2, ' dB')} | "
                     f"bicubic {_num(sr['psnr_bicubic'], 2, ' dB')} | {yes(sr['adapter'])} |")
        if sr.get("psnr_first_pass") is not None:
            lines.append(f"| super-resolution, strength 0 | PSNR vs the true render | "
                         f"{_num(sr['psnr_first_pass'], 2, ' dB')} | bicubic {_num(sr['psnr_bicubic'], 2, ' dB')} | "
                         f"{yes(sr.get('pixel_upscaler', False))} (pixel upscaler) |")
    if inp:
        lines.append(f"| inpainting (sprite box) | masked-region emoji accuracy | {_pct(inp['emoji_acc'])} | "
                     f"real render {_pct(inp['real_emoji_acc'])} | {yes(inp['adapter'])} |")
    if ctl:
        with_c = _num(ctl["edge_f1_control"], 3) if ctl["adapter"] else "— (no adapter)"
        lines.append(f"| control (canny) | edge F1 vs the control edges | {with_c} | "
                     f"without control {_num(ctl['edge_f1_no_control'], 3)} | {yes(ctl['adapter'])} |")
    return "\n".join(lines) + "\n"
