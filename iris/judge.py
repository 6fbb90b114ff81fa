"""The strict judge: names the emoji in an image among *every* emoji the font renders, not only the ones
the demo model was trained on, so a blob of the right palette cannot win by elimination.

    from iris.judge import load_judge, judge_images
    judge = load_judge()                                  # the shipped weights, assets/eval/emoji_judge.safetensors
    verdict = judge_images(images, judge)                 # top-5 emoji (as characters) and background colours
    verdict.top1, verdict.top5, verdict.colors

Classes: every single-codepoint emoji that Noto Color Emoji draws as a visible glyph (ASCII keycap bases
and the regional-indicator letters excepted), about 1,400, read from the font's character map when the
judge is trained and stored in the weights file, so judging needs neither the font nor fontTools.

Training views (`render_view`) are drawn like the demo model's training scenes but over all classes:
one sprite on a named background colour (solid or a soft gradient), often with a smaller distractor
sprite; one half of a two-sprite scene (the view the position metric judges); or a whole two-sprite
scene (colour label only). Blur, down/up-sampling, colour jitter and grain are added on the fly.

Weights are fp16 safetensors (never pickle).
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .train.emoji import COLORS, EMOJI, _gradient, _shade, find_emoji_font, render_sprite

__all__ = [
    "INPUT_SIZE", "JUDGE_VERSION", "EmojiJudge", "JudgeVerdict", "default_judge_path", "font_emoji", "half_view",
    "judge_images", "judge_accuracy", "load_judge", "render_view", "save_judge", "train_judge",
]

INPUT_SIZE = 64
SCENE_SIZE = 128
JUDGE_VERSION = "emoji-judge-v1"
FEATURE_DIM = 256
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


def default_judge_path() -> Path:
    """The shipped judge weights: `assets/eval/emoji_judge.safetensors` beside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "eval" / "emoji_judge.safetensors"


@functools.cache
def font_emoji() -> tuple[str, ...]:
    """Every single-codepoint emoji the installed Noto Color Emoji font draws visibly, in codepoint order.

    Needs the font and fontTools (training only). ASCII (keycap bases such as '1' and '#') and the regional
    indicator letters are left out; codepoints whose glyph is empty (joiners, tags) are dropped."""
    from fontTools.ttLib import TTFont

    from .train.emoji import _full_sprite

    with TTFont(str(find_emoji_font()), lazy=True) as font:
        cmap = font.getBestCmap()
    chars = []
    for cp in sorted(cmap):
        if cp < 0x80 or cp in _REGIONAL_INDICATORS:
            continue
        if _full_sprite(chr(cp)).size != (1, 1):
            chars.append(chr(cp))
    return tuple(chars)


# ------------------------------------------------------------------------------------------------ model
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EmojiJudge(nn.Module):
    """64 px RGB in [0, 1] -> (emoji logits [B, len(chars)], background-colour logits [B, len(COLORS)]).

    A small VGG-style CNN (64 -> 32 -> 16 -> 8 -> 4 px), global average pooling, a 256-d feature layer
    (`features`, also used for Fréchet distances) and two linear heads. `chars` holds the class characters.
    """

    def __init__(self, chars: Sequence[str], n_colors: int = len(COLORS), width: int = 32):
        super().__init__()
        self.chars = tuple(chars)
        w = width
        self.body = nn.Sequential(
            _conv(3, w, 2),  # 32
            _conv(w, 2 * w, 2),  # 16
            _conv(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 8
            _conv(4 * w, 8 * w),
            _conv(8 * w, 8 * w),
            nn.MaxPool2d(2),  # 4
            _conv(8 * w, 12 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(12 * w, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU(inplace=True))
        self.emoji_head = nn.Linear(FEATURE_DIM, len(self.chars))
        self.color_head = nn.Linear(FEATURE_DIM, n_colors)
        self.meta: dict[str, str] = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 64, 64] in [0, 1] -> [B, 256]."""
        return self.embed(self.body((x - 0.5) / 0.25))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.emoji_head(f), self.color_head(f)


# ------------------------------------------------------------------------------------------------ views
def _background(rng: random.Random, color: int) -> Image.Image:
    rgb = COLORS[color].rgb
    if rng.random() < 0.25:
        k = rng.uniform(0.04, 0.15)
        ends = (_shade(rgb, k), _shade(rgb, -k))
        return _gradient(SCENE_SIZE, *(ends if rng.random() < 0.5 else ends[::-1]))
    return Image.new("RGB", (SCENE_SIZE, SCENE_SIZE), rgb)


def _paste(image: Image.Image, char: str, side: int, x: int, y: int) -> None:
    sprite = render_sprite(char, side)
    w, h = sprite.size
    image.paste(sprite, (x + (side - w) // 2, y + (side - h) // 2), sprite)


def _border_color(a: np.ndarray) -> tuple[int, int, int]:
    """Median colour of an [H, W, 3] uint8 array's border pixels (the background of a scene-like image)."""
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)
    return tuple(int(v) for v in np.median(border, axis=0))  # type: ignore[return-value]


def _pad_square(image: Image.Image) -> Image.Image:
    """Centre a non-square image on a square canvas of its background (border-median) colour."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), _border_color(np.asarray(image)))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def half_view(image: Image.Image, side: str) -> Image.Image:
    """The `side` ("left", "right", "top", "bottom") half of an image, padded to a square with its
    background colour: the view the position metric classifies (and the classifier trains on)."""
    image = image.convert("RGB")
    w, h = image.size
    boxes = {"left": (0, 0, w // 2, h), "right": (w // 2, 0, w, h), "top": (0, 0, w, h // 2),
             "bottom": (0, h // 2, w, h)}
    if side not in boxes:
        raise ValueError(f"side must be left, right, top or bottom, got {side!r}")
    return _pad_square(image.crop(boxes[side]))


def render_view(chars: Sequence[str], seed: int) -> tuple[Image.Image, int, int]:
    """One training view (a pure function of `seed`): (RGB image, emoji label or -100, colour label).

    55% one sprite (scale 0.3-0.85 of the side, now and then past the border), a third of them with a
    smaller distractor sprite behind it; 30% one half of a side-by-side or stacked pair (label: the
    sprite on that half); 15% a whole pair scene (colour label only)."""
    rng = random.Random(seed)
    n, s = len(chars), SCENE_SIZE
    color = rng.randrange(len(COLORS))
    image = _background(rng, color)
    kind = rng.random()
    if kind < 0.55:
        label = rng.randrange(n)
        if rng.random() < 0.33:
            d = round(s * rng.uniform(0.12, 0.3))
            _paste(image, chars[rng.randrange(n)], d, rng.randint(-d // 3, s - d + d // 3),
                   rng.randint(-d // 3, s - d + d // 3))
        side = round(s * rng.uniform(0.3, 0.85))
        slack = round(0.15 * side) if rng.random() < 0.15 else 0
        _paste(image, chars[label], side, rng.randint(-slack, s - side + slack), rng.randint(-slack, s - side + slack))
        return image, label, color
    pair = [rng.randrange(n), rng.randrange(n)]
    sides = [round(s * rng.uniform(0.3, 0.5)) for _ in pair]
    half, overlap = s // 2, round(0.04 * s)
    across = [rng.randint(0, max(0, half - sides[0] + overlap)), rng.randint(min(s - sides[1], half - overlap),
                                                                            s - sides[1])]
    along = [rng.randint(0, s - sides[0]), rng.randint(0, s - sides[1])]
    horizontal = rng.random() < 0.6
    for j in range(2):
        x, y = (across[j], along[j]) if horizontal else (along[j], across[j])
        _paste(image, chars[pair[j]], sides[j], x, y)
    if kind < 0.85:
        j = rng.randrange(2)
        names = ("left", "right") if horizontal else ("top", "bottom")
        return half_view(image, names[j]), pair[j], color
    return image, -100, color


def _to_input(image: Image.Image) -> np.ndarray:
    """PIL (any size) -> [64, 64, 3] uint8: box filter when shrinking, bicubic when enlarging."""
    image = image.convert("RGB")
    if image.size != (INPUT_SIZE, INPUT_SIZE):
        shrink = image.width >= INPUT_SIZE and image.height >= INPUT_SIZE
        image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _batch(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([_to_input(im) for im in images])).permute(0, 3, 1, 2).float().div_(255.0)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Degrade a batch [B, 3, 64, 64] in [0, 1] the way generated images are soft: down/up-sampling, blur
    (sigma up to 1.5 px), brightness/contrast/colour shifts small enough to keep colour names, and grain."""
    from torchvision.transforms.v2.functional import gaussian_blur

    b, _, h, w = x.shape
    u = lambda *shape: torch.rand(shape, generator=g)
    x = x.clone()
    idx = (u(b) < 0.4).nonzero().flatten()
    if len(idx):
        small = F.interpolate(x[idx], scale_factor=float(0.3 + 0.5 * u(1)), mode="bilinear", antialias=True)
        x[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    idx = (u(b) < 0.4).nonzero().flatten()
    if len(idx):
        sigma = float(0.3 + 1.2 * u(1))
        x[idx] = gaussian_blur(x[idx], [2 * math.ceil(2.5 * sigma) + 1] * 2, [sigma, sigma])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + (u(b, 1, 1, 1) - 0.5) * 0.2) + mean
    x = x * (1 + (u(b, 1, 1, 1) - 0.5) * 0.16) + (u(b, 3, 1, 1) - 0.5) * 0.06
    x = x + torch.randn(x.shape, generator=g) * (u(b, 1, 1, 1) * 0.05 * (u(b, 1, 1, 1) < 0.5))
    return x.clamp_(0, 1)


# --------------------------------------------------------------------------------------------- training
def _render_pool(chars: Sequence[str], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    views = [render_view(chars, seed * 10_000_019 + i) for i in range(n)]
    images = torch.from_numpy(np.stack([_to_input(v[0]) for v in views])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([v[1] for v in views]), torch.tensor([v[2] for v in views])


def fit_two_heads(model: nn.Module, images: torch.Tensor, emoji: torch.Tensor, color: torch.Tensor,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], steps: int, batch_size: int,
                  lr: float, seed: int, log: Callable[[str], None] | None = None, log_every: int = 10,
                  warmup: float = 0.15) -> None:
    """Train an (emoji logits, colour logits) classifier on a uint8 pool [N, 3, H, W] with labels [N] (emoji
    -100: none): one-cycle AdamW, label smoothing 0.05, emoji CE + colour CE, `augment` on every batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=warmup)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        e_logits, c_logits = model(augment(images[idx].float().div_(255.0), g))
        loss = F.cross_entropy(e_logits, emoji[idx], ignore_index=-100, label_smoothing=0.05)
        loss = loss + F.cross_entropy(c_logits, color[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // log_every) == 0:
            log(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()


def train_judge(steps: int = 6000, batch_size: int = 96, pool_size: int = 90_000, seed: int = 0,
                lr: float = 3e-3, threads: int | None = None, chars: Sequence[str] | None = None,
                log: Callable[[str], None] | None = None) -> EmojiJudge:
    """Train an `EmojiJudge` over `chars` (default: `font_emoji()`) on a pool of rendered views.

    One-cycle AdamW, label smoothing 0.05, loss = emoji CE + colour CE, fresh augmentation every step.
    Returns the model in eval mode with `meta` filled in."""
    chars = tuple(chars) if chars is not None else font_emoji()
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images, emoji, color = _render_pool(chars, pool_size, seed)
            if log:
                log(f"rendered {pool_size} views of {len(chars)} classes in {time.perf_counter() - t0:.0f}s")
            model = EmojiJudge(chars)
            fit_two_heads(model, images, emoji, color, _augment, steps, batch_size, lr, seed, log, log_every=20,
                          warmup=0.1)
    finally:
        torch.set_num_threads(old_threads)
    model.eval()
    model.meta = {"version": JUDGE_VERSION, "steps": str(steps), "batch_size": str(batch_size),
                  "pool_size": str(pool_size), "seed": str(seed), "train_seconds": f"{time.perf_counter() - t0:.0f}"}
    return model


# ------------------------------------------------------------------------------------------ save / load
def save_judge(model: EmojiJudge, path: str | Path) -> Path:
    """Write the judge as fp16 safetensors; the class characters and `meta` go in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {**model.meta, "version": JUDGE_VERSION, "chars": json.dumps(model.chars, ensure_ascii=True)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_judge(path: str | Path | None = None) -> EmojiJudge:
    """The judge written by `save_judge` (default: the shipped weights), in fp32 and eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_judge_path()
    if path.suffix != ".safetensors":
        raise ValueError(f"refusing to load {path.name}: judge weights are safetensors files")
    if not path.is_file():
        raise FileNotFoundError(f"no judge weights at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("version") != JUDGE_VERSION or "chars" not in meta:
        raise ValueError(f"{path} is not an {JUDGE_VERSION} file")
    chars = json.loads(meta.pop("chars"))
    model = EmojiJudge(chars)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    model.meta = meta
    return model.eval()


# -------------------------------------------------------------------------------------------- judging
@dataclass
class JudgeVerdict:
    """What the judge sees in N images: top-5 emoji characters, background colour indices, features."""

    top5: list[tuple[str, ...]]
    colors: np.ndarray  # [N] indices into COLORS
    features: np.ndarray  # [N, 256]

    @property
    def top1(self) -> list[str]:
        return [t[0] for t in self.top5]


@torch.inference_mode()
def judge_images(images: Sequence[Image.Image], judge: EmojiJudge | None = None, batch_size: int = 128
                 ) -> JudgeVerdict:
    """The judge's verdict on PIL images of any size (square scenes; halves come padded by `half_view`)."""
    judge = judge if judge is not None else load_judge()
    top5, colors, feats = [], [], []
    for i in range(0, len(images), batch_size):
        f = judge.features(_batch(images[i : i + batch_size]))
        idx = judge.emoji_head(f).topk(5, dim=1).indices
        top5 += [tuple(judge.chars[j] for j in row) for row in idx.tolist()]
        colors.append(judge.color_head(f).argmax(1))
        feats.append(f.double())
    if not images:
        return JudgeVerdict([], np.zeros(0, np.int64), np.zeros((0, FEATURE_DIM)))
    return JudgeVerdict(top5, torch.cat(colors).numpy(), torch.cat(feats).numpy())


def judge_accuracy(judge: EmojiJudge, n: int = 2000, seed: int = 987_654, chars: Sequence[str] | None = None
                   ) -> dict[str, float]:
    """Top-1/top-5 emoji and colour accuracy on `n` fresh clean views (seeds never used in training),
    over all classes, and on the views whose sprite is one of the demo model's emoji."""
    chars = tuple(chars) if chars is not None else judge.chars
    views = [render_view(chars, 10**12 + seed + i) for i in range(n)]
    verdict = judge_images([v[0] for v in views], judge)
    demo = {e.char for e in EMOJI}
    rows = [(v[1], t) for v, t in zip(views, verdict.top5) if v[1] >= 0]
    hit1 = [chars[lbl] == t[0] for lbl, t in rows]
    hit5 = [chars[lbl] in t for lbl, t in rows]
    on_demo = [h for (lbl, _), h in zip(rows, hit1) if chars[lbl] in demo]
    return {"emoji_top1": float(np.mean(hit1)), "emoji_top5": float(np.mean(hit5)),
            "demo_emoji_top1": float(np.mean(on_demo)) if on_demo else float("nan"),
            "color": float(np.mean(verdict.colors == np.array([v[2] for v in views]))), "n": n}


def main(argv: list[str] | None = None) -> int:
    """`python -m iris.judge --out FILE`: train a judge, print its clean accuracy, write it."""
    import argparse

    p = argparse.ArgumentParser(description="Train the strict emoji judge and write it as fp16 safetensors.")
    p.add_argument("--out", default=str(default_judge_path()))
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--pool", type=int, default=90_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    say = lambda msg: print(msg, flush=True)
    model = train_judge(args.steps, args.batch_size, args.pool, args.seed, threads=args.threads, log=say)
    acc = judge_accuracy(model)
    model.meta.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in acc.items()})
    say(f"clean accuracy: {acc}")
    say(f"wrote {save_judge(model, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
