"""Procedural "emoji scenes": seeded, reproducible captioned images for training the demo model.

Each scene is one or two emoji sprites (rendered from the Noto Color Emoji font) on a named
background colour, with a caption that names every emoji, the colour and (for two sprites) where
each one sits. A fixed, seeded set of (emoji, colour) combinations is held out of the train split
so that compositional generalisation can be measured on the ``"heldout"`` split.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLORS",
    "EMOJI",
    "Emoji",
    "EmojiScenes",
    "NamedColor",
    "Scene",
    "ScenePlan",
    "SceneConfig",
    "article",
    "caption_for",
    "find_emoji_font",
    "render_sprite",
]

FONT_SIZE = 109  # Noto Color Emoji is a bitmap (CBDT) font: this is the only size it loads at.

_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora (older)
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
    "~/.local/share/fonts/NotoColorEmoji.ttf",
    "~/.fonts/NotoColorEmoji.ttf",
)


def find_emoji_font() -> Path:
    """Return the path of NotoColorEmoji.ttf (``$IRIS_EMOJI_FONT`` first, then standard locations)."""
    env = os.environ.get("IRIS_EMOJI_FONT")
    candidates = ([env] if env else []) + list(_FONT_CANDIDATES)
    for cand in candidates:
        path = Path(cand).expanduser()
        if path.is_file():
            return path
    raise FileNotFoundError(
        "Noto Color Emoji font not found: run `apt-get install fonts-noto-color-emoji` "
        "(or point IRIS_EMOJI_FONT at NotoColorEmoji.ttf)"
    )


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Emoji:
    """One emoji: its character, a lowercase caption name and a category."""

    char: str
    name: str
    category: str


@dataclass(frozen=True)
class NamedColor:
    """A named background colour."""

    name: str
    rgb: tuple[int, int, int]


_EMOJI_TABLE: dict[str, list[tuple[str, str]]] = {
    "animals": [
        ("\U0001f431", "cat face"),
        ("\U0001f436", "dog face"),
        ("\U0001f42d", "mouse face"),
        ("\U0001f439", "hamster"),
        ("\U0001f430", "rabbit face"),
        ("\U0001f98a", "fox"),
        ("\U0001f43b", "bear"),
        ("\U0001f43c", "panda"),
        ("\U0001f428", "koala"),
        ("\U0001f42f", "tiger face"),
        ("\U0001f981", "lion"),
        ("\U0001f42e", "cow face"),
        ("\U0001f437", "pig face"),
        ("\U0001f438", "frog"),
        ("\U0001f435", "monkey face"),
        ("\U0001f414", "chicken"),
        ("\U0001f427", "penguin"),
        ("\U0001f424", "baby chick"),
        ("\U0001f986", "duck"),
        ("\U0001f989", "owl"),
        ("\U0001f434", "horse face"),
        ("\U0001f984", "unicorn"),
        ("\U0001f41d", "honeybee"),
        ("\U0001f98b", "butterfly"),
        ("\U0001f40c", "snail"),
        ("\U0001f41e", "ladybug"),
        ("\U0001f422", "turtle"),
        ("\U0001f40d", "snake"),
        ("\U0001f419", "octopus"),
        ("\U0001f980", "crab"),
        ("\U0001f420", "tropical fish"),
        ("\U0001f42c", "dolphin"),
        ("\U0001f433", "whale"),
        ("\U0001f988", "shark"),
        ("\U0001f418", "elephant"),
        ("\U0001f992", "giraffe"),
        ("\U0001f993", "zebra"),
        ("\U0001f994", "hedgehog"),
        ("\U0001f99c", "parrot"),
        ("\U0001f9a9", "flamingo"),
    ],
    "food": [
        ("\U0001f34e", "red apple"),
        ("\U0001f34f", "green apple"),
        ("\U0001f350", "pear"),
        ("\U0001f34a", "tangerine"),
        ("\U0001f34b", "lemon"),
        ("\U0001f34c", "banana"),
        ("\U0001f349", "watermelon"),
        ("\U0001f347", "bunch of grapes"),
        ("\U0001f353", "strawberry"),
        ("\U0001f352", "pair of cherries"),
        ("\U0001f351", "peach"),
        ("\U0001f34d", "pineapple"),
        ("\U0001f965", "coconut"),
        ("\U0001f95d", "kiwi fruit"),
        ("\U0001f345", "tomato"),
        ("\U0001f346", "eggplant"),
        ("\U0001f951", "avocado"),
        ("\U0001f966", "broccoli"),
        ("\U0001f955", "carrot"),
        ("\U0001f33d", "ear of corn"),
        ("\U0001f336", "hot pepper"),
        ("\U0001f950", "croissant"),
        ("\U0001f35e", "loaf of bread"),
        ("\U0001f9c0", "cheese wedge"),
        ("\U0001f354", "hamburger"),
        ("\U0001f355", "pizza"),
        ("\U0001f32d", "hot dog"),
        ("\U0001f32e", "taco"),
        ("\U0001f369", "doughnut"),
        ("\U0001f36a", "cookie"),
        ("\U0001f382", "birthday cake"),
        ("\U0001f9c1", "cupcake"),
        ("\U0001f366", "ice cream cone"),
        ("\U0001f36d", "lollipop"),
        ("\U0001f36b", "chocolate bar"),
        ("\U0001f37f", "bucket of popcorn"),
        ("\U0001f95a", "egg"),
        ("\u2615", "cup of coffee"),
    ],
    "faces": [
        ("\U0001f600", "grinning face"),
        ("\U0001f602", "laughing face with tears of joy"),
        ("\U0001f60a", "smiling face"),
        ("\U0001f60d", "heart-eyes face"),
        ("\U0001f60e", "face with sunglasses"),
        ("\U0001f609", "winking face"),
        ("\U0001f618", "face blowing a kiss"),
        ("\U0001f61b", "face with tongue out"),
        ("\U0001f914", "thinking face"),
        ("\U0001f634", "sleeping face"),
        ("\U0001f62d", "loudly crying face"),
        ("\U0001f621", "angry face"),
        ("\U0001f631", "screaming face"),
        ("\U0001f92f", "exploding head"),
        ("\U0001f973", "party face"),
        ("\U0001f929", "star-struck face"),
        ("\U0001f607", "smiling face with a halo"),
        ("\U0001f643", "upside-down face"),
        ("\U0001f610", "neutral face"),
        ("\U0001f976", "freezing cold face"),
        ("\U0001f92e", "vomiting face"),
        ("\U0001f920", "cowboy face"),
        ("\U0001f47b", "ghost"),
        ("\U0001f480", "skull"),
        ("\U0001f916", "robot"),
        ("\U0001f47d", "alien"),
    ],
    "weather": [
        ("\u2600", "sun"),
        ("\U0001f319", "crescent moon"),
        ("\U0001f31d", "full moon with a face"),
        ("\u2b50", "star"),
        ("\u2601", "cloud"),
        ("\u26c5", "sun behind a cloud"),
        ("\U0001f327", "rain cloud"),
        ("\u26c8", "thundercloud"),
        ("\U0001f328", "snow cloud"),
        ("\u2744", "snowflake"),
        ("\u26c4", "snowman"),
        ("\U0001f308", "rainbow"),
        ("\u26a1", "lightning bolt"),
        ("\U0001f32a", "tornado"),
        ("\U0001f30a", "ocean wave"),
        ("\U0001f525", "flame"),
        ("\U0001f4a7", "water droplet"),
        ("\u2602", "umbrella"),
        ("\U0001f321", "thermometer"),
        ("\u2604", "comet"),
    ],
    "vehicles": [
        ("\U0001f697", "car"),
        ("\U0001f695", "taxi"),
        ("\U0001f68c", "bus"),
        ("\U0001f3ce", "racing car"),
        ("\U0001f693", "police car"),
        ("\U0001f691", "ambulance"),
        ("\U0001f692", "fire engine"),
        ("\U0001f69a", "delivery truck"),
        ("\U0001f69c", "tractor"),
        ("\U0001f6b2", "bicycle"),
        ("\U0001f6f5", "motor scooter"),
        ("\U0001f3cd", "motorcycle"),
        ("\U0001f682", "steam locomotive"),
        ("\U0001f684", "bullet train"),
        ("\u2708", "airplane"),
        ("\U0001f681", "helicopter"),
        ("\U0001f680", "rocket"),
        ("\U0001f6f8", "flying saucer"),
        ("\u26f5", "sailboat"),
        ("\U0001f6a4", "speedboat"),
        ("\U0001f6a2", "ship"),
        ("\U0001f6f6", "canoe"),
        ("\U0001f6f4", "kick scooter"),
    ],
    "objects": [
        ("\u26bd", "soccer ball"),
        ("\U0001f3c0", "basketball"),
        ("\U0001f3c8", "american football"),
        ("\u26be", "baseball"),
        ("\U0001f3be", "tennis ball"),
        ("\U0001f388", "balloon"),
        ("\U0001f381", "wrapped gift"),
        ("\U0001f389", "party popper"),
        ("\U0001f511", "key"),
        ("\U0001f512", "padlock"),
        ("\U0001f4a1", "light bulb"),
        ("\U0001f4f1", "mobile phone"),
        ("\U0001f4bb", "laptop"),
        ("\u231a", "wristwatch"),
        ("\u23f0", "alarm clock"),
        ("\U0001f4f7", "camera"),
        ("\U0001f3b8", "guitar"),
        ("\U0001f3ba", "trumpet"),
        ("\U0001f941", "drum"),
        ("\U0001f4da", "stack of books"),
        ("\u270f", "pencil"),
        ("\u2702", "pair of scissors"),
        ("\U0001f4ce", "paperclip"),
        ("\U0001f528", "hammer"),
        ("\U0001f527", "wrench"),
        ("\U0001f9f2", "magnet"),
        ("\U0001f48e", "gem stone"),
        ("\U0001f451", "crown"),
        ("\U0001f3a9", "top hat"),
        ("\U0001f453", "pair of glasses"),
        ("\U0001f45f", "running shoe"),
        ("\U0001f56f", "candle"),
        ("\U0001f3c6", "trophy"),
        ("\U0001f3b2", "game die"),
        ("\U0001f9f8", "teddy bear"),
        ("\U0001f514", "bell"),
        ("\u2764", "red heart"),
        ("\U0001f4b0", "money bag"),
        ("\U0001f9ed", "compass"),
        ("\u2693", "anchor"),
        ("\U0001f383", "jack-o-lantern"),
        ("\U0001f3e0", "house"),
    ],
    "plants": [
        ("\U0001f335", "cactus"),
        ("\U0001f332", "pine tree"),
        ("\U0001f333", "leafy tree"),
        ("\U0001f334", "palm tree"),
        ("\U0001f331", "seedling"),
        ("\U0001f340", "four-leaf clover"),
        ("\U0001f341", "maple leaf"),
        ("\U0001f342", "fallen leaf"),
        ("\U0001f337", "tulip"),
        ("\U0001f339", "rose"),
        ("\U0001f33b", "sunflower"),
        ("\U0001f338", "cherry blossom"),
        ("\U0001f33a", "hibiscus"),
        ("\U0001f490", "bouquet"),
        ("\U0001f940", "wilted flower"),
        ("\U0001f344", "mushroom"),
        ("\U0001f33e", "sheaf of rice"),
        ("\U0001f330", "chestnut"),
    ],
}

EMOJI: list[Emoji] = [Emoji(char, name, cat) for cat, rows in _EMOJI_TABLE.items() for char, name in rows]

COLORS: list[NamedColor] = [
    NamedColor("red", (214, 39, 40)),
    NamedColor("orange", (247, 137, 24)),
    NamedColor("yellow", (250, 216, 45)),
    NamedColor("green", (52, 168, 70)),
    NamedColor("teal", (0, 128, 128)),
    NamedColor("cyan", (86, 214, 232)),
    NamedColor("blue", (36, 84, 214)),
    NamedColor("purple", (122, 56, 186)),
    NamedColor("magenta", (214, 36, 168)),
    NamedColor("pink", (247, 160, 196)),
    NamedColor("white", (246, 246, 246)),
    NamedColor("black", (18, 18, 18)),
    NamedColor("gray", (128, 128, 128)),
    NamedColor("brown", (122, 74, 38)),
]

_EMOJI_BY_NAME = {e.name: i for i, e in enumerate(EMOJI)}
_COLOR_BY_NAME = {c.name: i for i, c in enumerate(COLORS)}


# --------------------------------------------------------------------------------------------
# Sprites
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(find_emoji_font()), FONT_SIZE)


@functools.cache
def _full_sprite(char: str) -> Image.Image:
    """Full-resolution RGBA glyph cropped to its alpha bounding box (empty 1x1 if missing)."""
    font = _font()
    left, top, right, bottom = font.getbbox(char)
    pad = 16
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font, embedded_color=True)
    alpha = canvas.getchannel("A")
    bbox = alpha.point(lambda v: 255 if v > 8 else 0).getbbox()
    if bbox is None:
        return Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    return canvas.crop(bbox)


def _as_emoji(emoji: Emoji | int | str) -> Emoji:
    if isinstance(emoji, Emoji):
        return emoji
    if isinstance(emoji, int):
        return EMOJI[emoji]
    if emoji in _EMOJI_BY_NAME:
        return EMOJI[_EMOJI_BY_NAME[emoji]]
    return Emoji(emoji, emoji, "other")


@functools.lru_cache(maxsize=2048)
def _sized_sprite(char: str, size: int) -> Image.Image:
    full = _full_sprite(char)
    w, h = full.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return full if new == full.size else full.resize(new, Image.Resampling.LANCZOS)


def render_sprite(emoji: Emoji | int | str, size: int) -> Image.Image:
    """RGBA sprite of ``emoji`` (an Emoji, an index into EMOJI, a name or a raw character), cropped to
    the glyph and resized so that its longer side is ``size`` pixels. Returns a copy."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return _sized_sprite(_as_emoji(emoji).char, int(size)).copy()


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_AN_EXCEPTIONS = ("uni", "use", "usu", "eu", "one", "once")
_AN_SILENT_H = ("hour", "honest", "honor", "heir")


def article(phrase: str) -> str:
    """``phrase`` with the right indefinite article: "a cat face", "an owl", "a unicorn"."""
    word = phrase.strip().lower()
    vowel = word[:1] in "aeiou" and not word.startswith(_AN_EXCEPTIONS)
    if word.startswith(_AN_SILENT_H):
        vowel = True
    return f"{'an' if vowel else 'a'} {phrase}"


# {a}: "a cat face", {n}: "cat face", {c}: "blue", {ac}: "a blue"
_SINGLE_TEMPLATES = (
    "{a} on {ac} background",
    "{a} on {ac} background",
    "{a} on {ac} background",
    "{n}, {c} background",
    "{n} on {c}",
    "{a} on {c}",
    "an emoji of {a} over {ac} backdrop",
    "{a} in front of {ac} wall",
    "{a} against {ac} background",
    "a picture of {a} on {ac} background",
    "{ac} background with {a}",
    "{a} emoji on {ac} background",
    "{ac} background featuring {a}",
    "an illustration of {a} on {c}",
    "{a}, {c} backdrop",
    "{a} set against {ac} backdrop",
    "a simple emoji of {a} on {ac} background",
    "{a} with {ac} background",
    "{n} emoji, {c} background",
    "an icon of {a} on {ac} background",
    "a drawing of {a} on {c}",
    "{c} background, {n}",
    "{a} floating over {ac} background",
    "{a} on a background of {c}",
)

# {a1}/{a2}: articled names, {p1}/{p2}: "on the left", "at the top", ...
_PAIR_TEMPLATES = (
    "{a1} {p1} and {a2} {p2}, {c} background",
    "{a1} {p1} and {a2} {p2}, {c} background",
    "{a1} {p1} and {a2} {p2} on {ac} background",
    "{ac} background with {a1} {p1} and {a2} {p2}",
    "{a1} {p1}, {a2} {p2}, {c} backdrop",
    "two emoji on {ac} background: {a1} {p1} and {a2} {p2}",
    "{a1} {p1} and {a2} {p2} in front of {ac} wall",
    "{a1} {p1} with {a2} {p2}, against {ac} background",
    "an image of {a1} {p1} and {a2} {p2} on {c}",
)

_PLACE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}


def caption_for(
    emoji_indices: list[int] | tuple[int, ...],
    color_idx: int,
    positions: list[str] | tuple[str, ...] = (),
    rng: random.Random | None = None,
) -> str:
    """A caption naming every emoji, the background colour and (for two emoji) their positions.

    ``positions`` gives one word per emoji ("left"/"right"/"top"/"bottom"/"center") or is empty.
    """
    rng = rng if rng is not None else random.Random(0)
    if not emoji_indices:
        raise ValueError("need at least one emoji")
    if positions and len(positions) != len(emoji_indices):
        raise ValueError("positions must be empty or match emoji_indices")
    c = COLORS[color_idx].name
    ac = article(c)
    names = [EMOJI[i].name for i in emoji_indices]
    if len(names) == 1:
        tpl = rng.choice(_SINGLE_TEMPLATES)
        return tpl.format(a=article(names[0]), n=names[0], c=c, ac=ac)
    if len(names) == 2 and positions:
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        tpl = rng.choice(_PAIR_TEMPLATES)
        (i, j) = order
        return tpl.format(
            a1=article(names[i]),
            p1=_PLACE[positions[i]],
            a2=article(names[j]),
            p2=_PLACE[positions[j]],
            c=c,
            ac=ac,
        )
    # generic fallback: any count, optional positions
    parts = [
        article(n) + (f" {_PLACE[p]}" if positions else "")
        for n, p in zip(names, positions or [""] * len(names))
    ]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed} on {ac} background"


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """Scene generation settings. Sprite scales are fractions of the image side."""

    size: int = 128
    min_sprites: int = 1
    max_sprites: int = 2
    p_two: float = 0.35
    single_scale: tuple[float, float] = (0.45, 0.8)
    pair_scale: tuple[float, float] = (0.35, 0.5)
    p_gradient: float = 0.25  # soft vertical gradient between two shades of the same colour
    gradient_strength: tuple[float, float] = (0.06, 0.18)
    p_off_edge: float = 0.1  # single sprite may poke slightly past the border
    seed: int = 0
    heldout_fraction: float = 0.1
    train_size: int = 10**7
    heldout_size: int = 512

    def __post_init__(self) -> None:
        if not (1 <= self.min_sprites <= self.max_sprites <= 2):
            raise ValueError("need 1 <= min_sprites <= max_sprites <= 2")
        if self.size < 16:
            raise ValueError("size must be >= 16")
        for name in ("p_two", "p_gradient", "p_off_edge"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not (0.0 <= self.heldout_fraction < 1.0):
            raise ValueError("heldout_fraction must be in [0, 1)")
        for lo, hi in (self.single_scale, self.pair_scale):
            if not (0.0 < lo <= hi <= 1.0):
                raise ValueError("scale ranges must satisfy 0 < lo <= hi <= 1")
        if self.pair_scale[1] > 0.5:
            raise ValueError("pair_scale max must be <= 0.5 so two sprites fit side by side")


Box = tuple[int, int, int, int]


@dataclass
class ScenePlan:
    """Everything about a scene except its pixels (cheap to compute)."""

    caption: str
    emoji: list[int]
    color: int
    boxes: list[Box]  # (x0, y0, x1, y1), x1/y1 exclusive, clipped to the image
    positions: list[str]
    background: str  # "solid" or "gradient"
    gradient: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # (top, bottom) colours
    placements: list[tuple[int, int, int]] = field(default_factory=list)  # (x, y, sprite size), unclipped


@dataclass
class Scene:
    """A rendered scene."""

    image: Image.Image  # RGB, size x size
    caption: str
    emoji: list[int]
    color: int
    boxes: list[Box]
    positions: list[str]
    alpha: Image.Image  # "L" mask of the sprites
    background: str = "solid"

    @property
    def emoji_names(self) -> list[str]:
        return [EMOJI[i].name for i in self.emoji]

    @property
    def color_name(self) -> str:
        return COLORS[self.color].name


def _derive_seed(*parts: int | str) -> int:
    """Stable 64-bit seed from ints/strings (independent of PYTHONHASHSEED)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _shade(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """Lighten (amount > 0) or darken (amount < 0) a colour by mixing with white/black."""
    target = 255 if amount > 0 else 0
    a = abs(amount)
    return tuple(int(round(c + (target - c) * a)) for c in rgb)  # type: ignore[return-value]


def _nearest_color(rgb: tuple[int, int, int]) -> int:
    """Index of the named colour closest to ``rgb`` (squared RGB distance)."""
    return min(range(len(COLORS)), key=lambda i: sum((a - b) ** 2 for a, b in zip(COLORS[i].rgb, rgb)))


@functools.lru_cache(maxsize=64)
def _heldout_combos(seed: int, fraction: float, n_emoji: int, n_colors: int) -> tuple[tuple[int, int], ...]:
    """Balanced, seeded set of held-out (emoji, colour) pairs: ~fraction of all pairs."""
    total = n_emoji * n_colors
    n = int(round(fraction * total))
    if n == 0:
        return ()
    rng = random.Random(_derive_seed("iris-emoji-heldout", seed))
    combos = [(e, c) for e in range(n_emoji) for c in range(n_colors)]
    rng.shuffle(combos)
    per_emoji = -(-n // n_emoji)  # ceil
    per_color = -(-n // n_colors)
    cnt_e = [0] * n_emoji
    cnt_c = [0] * n_colors
    chosen: list[tuple[int, int]] = []
    for e, c in combos:
        if cnt_e[e] < per_emoji and cnt_c[c] < per_color:
            chosen.append((e, c))
            cnt_e[e] += 1
            cnt_c[c] += 1
            if len(chosen) == n:
                break
    # a final shuffle so heldout index i -> combo i % n is balanced but not ordered
    rng.shuffle(chosen)
    return tuple(chosen)


class EmojiScenes:
    """Seeded virtual dataset of emoji scenes; ``sample(i)`` is a pure function of (seed, split, i)."""

    def __init__(self, config: SceneConfig | None = None, split: str = "train") -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.config = config if config is not None else SceneConfig()
        self.split = split
        cfg = self.config
        self.heldout_combos: tuple[tuple[int, int], ...] = _heldout_combos(
            cfg.seed, cfg.heldout_fraction, len(EMOJI), len(COLORS)
        )
        self._heldout = frozenset(self.heldout_combos)
        # allowed emoji per colour, for each split
        self._train_by_color = [
            [e for e in range(len(EMOJI)) if (e, c) not in self._heldout] for c in range(len(COLORS))
        ]
        self._heldout_by_color = [
            [e for e in range(len(EMOJI)) if (e, c) in self._heldout] for c in range(len(COLORS))
        ]
        if split == "heldout" and not self.heldout_combos:
            raise ValueError("heldout split is empty (heldout_fraction is 0)")

    def __len__(self) -> int:
        return self.config.train_size if self.split == "train" else self.config.heldout_size

    def __repr__(self) -> str:
        return f"EmojiScenes(split={self.split!r}, len={len(self)}, seed={self.config.seed})"

    # -- held-out bookkeeping ---------------------------------------------------------------

    def is_heldout(self, emoji_idx: int, color_idx: int) -> bool:
        """True if (emoji, colour) is reserved for the held-out split."""
        return (emoji_idx, color_idx) in self._heldout

    def heldout_prompts(self, n: int) -> list[str]:
        """Captions of the first ``n`` held-out scenes (cycling evenly through the held-out combos)."""
        return [self._plan(i, "heldout").caption for i in range(n)]

    # -- sampling ----------------------------------------------------------------------------

    def plan(self, index: int) -> ScenePlan:
        """Layout and caption of scene ``index`` without rendering pixels."""
        self._check_index(index)
        return self._plan(index, self.split)

    def sample(self, index: int) -> Scene:
        """Render scene ``index`` (deterministic for the config seed, split and index)."""
        return self.render(self.plan(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Torch-friendly item: image float32 3xHxW in [-1, 1], mask float32 1xHxW in [0, 1], caption."""
        import torch

        scene = self.sample(index)
        img = torch.from_numpy(np.asarray(scene.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        mask = torch.from_numpy(np.asarray(scene.alpha, dtype=np.uint8).copy())[None]
        return {
            "image": img.float().div_(127.5).sub_(1.0),
            "mask": mask.float().div_(255.0),
            "caption": scene.caption,
            "color": scene.color,
        }

    def _check_index(self, index: int) -> None:
        if not (0 <= index < len(self)):
            raise IndexError(f"index {index} out of range for {self!r}")

    def _plan(self, index: int, split: str) -> ScenePlan:
        cfg = self.config
        rng = random.Random(_derive_seed("iris-emoji-scene", cfg.seed, split, index))
        n_sprites = 1
        if cfg.max_sprites >= 2 and (cfg.min_sprites >= 2 or rng.random() < cfg.p_two):
            n_sprites = 2

        if split == "heldout":
            first, color = self.heldout_combos[index % len(self.heldout_combos)]
            pool = self._heldout_by_color[color]
        else:
            color = rng.randrange(len(COLORS))
            pool = self._train_by_color[color]
            first = rng.choice(pool)
        emoji = [first]
        if n_sprites == 2:
            others = [e for e in pool if e != first]
            if others:
                emoji.append(rng.choice(others))

        size = cfg.size
        placements: list[tuple[int, int, int]] = []
        positions: list[str] = []
        if len(emoji) == 1:
            s = round(size * rng.uniform(*cfg.single_scale))
            lo, hi = 0, size - s
            if rng.random() < cfg.p_off_edge:
                slack = round(0.15 * s)
                lo, hi = -slack, size - s + slack
            placements.append((rng.randint(lo, hi), rng.randint(lo, hi), s))
        else:
            s1, s2 = (round(size * rng.uniform(*cfg.pair_scale)) for _ in range(2))
            half = size // 2
            overlap = round(0.04 * size)  # sprites may cross the midline a little
            if rng.random() < 0.6:  # side by side
                xa = rng.randint(0, max(0, half - s1 + overlap))
                xb = rng.randint(min(size - s2, half - overlap), size - s2)
                ya = rng.randint(0, size - s1)
                yb = rng.randint(0, size - s2)
                # keep vertical offset modest so the pair reads as left/right
                max_dy = size // 5
                ya = _pull_towards(ya + s1 / 2, yb + s2 / 2, max_dy) - s1 / 2
                ya = min(max(ya, 0), size - s1)
                placements += [(xa, round(ya), s1), (xb, yb, s2)]
            else:  # stacked
                ya = rng.randint(0, max(0, half - s1 + overlap))
                yb = rng.randint(min(size - s2, half - overlap), size - s2)
                xa = rng.randint(0, size - s1)
                xb = rng.randint(0, size - s2)
                max_dx = size // 5
                xa = _pull_towards(xa + s1 / 2, xb + s2 / 2, max_dx) - s1 / 2
                xa = min(max(xa, 0), size - s1)
                placements += [(round(xa), ya, s1), (xb, yb, s2)]
            if rng.random() < 0.5:  # swap which emoji goes where
                placements.reverse()

        boxes: list[Box] = []
        for (x, y, s), e in zip(placements, emoji):
            w, h = _sized_dims(EMOJI[e].char, s)
            # center the (possibly non-square) sprite inside its s x s cell
            x0, y0 = x + (s - w) // 2, y + (s - h) // 2
            boxes.append((max(0, x0), max(0, y0), min(size, x0 + w), min(size, y0 + h)))
        if len(emoji) == 2:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            dx = (bx0 + bx1) / 2 - (ax0 + ax1) / 2
            dy = (by0 + by1) / 2 - (ay0 + ay1) / 2
            if abs(dx) >= abs(dy):
                positions = ["left", "right"] if dx > 0 else ["right", "left"]
            else:
                positions = ["top", "bottom"] if dy > 0 else ["bottom", "top"]

        rgb = COLORS[color].rgb
        gradient = None
        background = "solid"
        if rng.random() < cfg.p_gradient:
            background = "gradient"
            k = rng.uniform(*cfg.gradient_strength)
            light, dark = _shade(rgb, k), _shade(rgb, -k)
            # keep both ends unmistakably the named colour (e.g. dark "white" must not drift to pink/gray)
            while k > 0.01 and not (_nearest_color(light) == _nearest_color(dark) == color):
                k *= 0.7
                light, dark = _shade(rgb, k), _shade(rgb, -k)
            gradient = (light, dark) if rng.random() < 0.5 else (dark, light)

        caption = caption_for(emoji, color, positions, rng)
        return ScenePlan(
            caption=caption,
            emoji=emoji,
            color=color,
            boxes=boxes,
            positions=positions,
            background=background,
            gradient=gradient,
            placements=placements,
        )

    def render(self, plan: ScenePlan) -> Scene:
        """Draw a plan: background, then sprites with their alpha; also builds the sprite mask."""
        size = self.config.size
        if plan.gradient is None:
            image = Image.new("RGB", (size, size), COLORS[plan.color].rgb)
        else:
            image = _gradient(size, *plan.gradient)
        alpha = Image.new("L", (size, size), 0)
        for (x, y, s), e in zip(plan.placements, plan.emoji):
            sprite = _sized_sprite(EMOJI[e].char, s)
            w, h = sprite.size
            pos = (x + (s - w) // 2, y + (s - h) // 2)
            a = sprite.getchannel("A")
            image.paste(sprite, pos, sprite)
            alpha.paste(255, pos, a)
        return Scene(
            image=image,
            caption=plan.caption,
            emoji=list(plan.emoji),
            color=plan.color,
            boxes=list(plan.boxes),
            positions=list(plan.positions),
            alpha=alpha,
            background=plan.background,
        )


def _pull_towards(value: float, target: float, max_dist: float) -> float:
    """Move ``value`` towards ``target`` until they are at most ``max_dist`` apart."""
    return min(max(value, target - max_dist), target + max_dist)


def _sized_dims(char: str, size: int) -> tuple[int, int]:
    return _sized_sprite(char, size).size


@functools.lru_cache(maxsize=256)
def _gradient_array(size: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1.0 - t) + np.asarray(bottom, np.float32) * t
    return np.ascontiguousarray(np.broadcast_to(np.rint(col), (size, size, 3)).astype(np.uint8))


def _gradient(size: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(_gradient_array(size, top, bottom), "RGB")
