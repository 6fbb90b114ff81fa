"""Tests for the procedural emoji-scene dataset (iris.train.emoji)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from iris.train import emoji as em
from iris.train.emoji import (
    COLORS,
    EMOJI,
    EmojiScenes,
    SceneConfig,
    article,
    caption_for,
    find_emoji_font,
    render_sprite,
)

try:
    FONT = find_emoji_font()
except FileNotFoundError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"emoji font missing ({exc})", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train() -> EmojiScenes:
    return EmojiScenes(SceneConfig(), "train")


@pytest.fixture(scope="module")
def heldout() -> EmojiScenes:
    return EmojiScenes(SceneConfig(), "heldout")


def _nearest_color(rgb: tuple[int, ...]) -> int:
    return min(range(len(COLORS)), key=lambda i: sum((a - b) ** 2 for a, b in zip(COLORS[i].rgb, rgb)))


# -- vocabulary ---------------------------------------------------------------------------------


def test_vocabulary() -> None:
    assert len(EMOJI) >= 120
    names = [e.name for e in EMOJI]
    assert len(set(names)) == len(names)
    assert len({e.char for e in EMOJI}) == len(EMOJI)
    for e in EMOJI:
        assert e.name == e.name.strip().lower() and e.name
    cats = {e.category for e in EMOJI}
    assert {"animals", "food", "faces", "weather", "vehicles", "objects", "plants"} <= cats
    apple = [e for e in EMOJI if e.name == "red apple"]
    assert apple and apple[0].char == "\U0001f34e"


def test_colors_distinct() -> None:
    assert len(COLORS) >= 12
    assert len({c.name for c in COLORS}) == len(COLORS)
    for i, a in enumerate(COLORS):
        for b in COLORS[i + 1 :]:
            dist = sum((x - y) ** 2 for x, y in zip(a.rgb, b.rgb)) ** 0.5
            assert dist > 60, (a, b)


def test_every_emoji_renders() -> None:
    for e in EMOJI:
        sprite = render_sprite(e, 64)
        assert sprite.mode == "RGBA"
        assert max(sprite.size) == 64, e
        assert sprite.getchannel("A").getbbox() is not None, f"{e.name} renders empty"
        # a real glyph covers a decent part of its bounding box
        hist = sprite.getchannel("A").histogram()
        assert sum(hist[128:]) > 0.1 * sprite.size[0] * sprite.size[1], e.name


def test_render_sprite_accepts_index_and_name() -> None:
    a = render_sprite(0, 40)
    b = render_sprite(EMOJI[0].name, 40)
    assert a.tobytes() == b.tobytes()


def test_find_font_env_and_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IRIS_EMOJI_FONT", str(FONT))
    assert find_emoji_font() == FONT
    monkeypatch.setenv("IRIS_EMOJI_FONT", str(tmp_path / "missing.ttf"))
    monkeypatch.setattr(em, "_FONT_CANDIDATES", ())
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        find_emoji_font()


# -- captions -----------------------------------------------------------------------------------


def test_article() -> None:
    assert article("owl") == "an owl"
    assert article("cat face") == "a cat face"
    assert article("unicorn") == "a unicorn"
    assert article("umbrella") == "an umbrella"
    assert article("orange") == "an orange"
    assert article("egg") == "an egg"


def test_caption_for() -> None:
    apple = [e.name for e in EMOJI].index("red apple")
    blue = [c.name for c in COLORS].index("blue")
    rng = random.Random(1)
    caps = {caption_for([apple], blue, [], rng) for _ in range(200)}
    assert len(caps) >= 10
    for cap in caps:
        assert "red apple" in cap and "blue" in cap
        assert "a apple" not in cap and "an red" not in cap
    pair = caption_for([apple, 0], blue, ["left", "right"], rng)
    assert "left" in pair and "right" in pair and EMOJI[0].name in pair


# -- scenes -------------------------------------------------------------------------------------


def test_determinism(train: EmojiScenes) -> None:
    other = EmojiScenes(SceneConfig(), "train")
    for i in (0, 7, 12345, 10**7 - 1):
        a, b = train.sample(i), other.sample(i)
        assert a.caption == b.caption
        assert a.image.tobytes() == b.image.tobytes()
        assert a.alpha.tobytes() == b.alpha.tobytes()
        assert a.boxes == b.boxes
    assert train.sample(1).image.tobytes() != train.sample(2).image.tobytes()
    reseeded = EmojiScenes(SceneConfig(seed=1), "train")
    assert [reseeded.plan(i).caption for i in range(20)] != [train.plan(i).caption for i in range(20)]


def test_independent_of_hash_seed() -> None:
    """A fresh interpreter with another string-hash salt produces the same scene."""
    # load the module file on its own so the (heavier) iris package __init__ is not imported
    code = (
        "import hashlib, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('emoji_mod', {em.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['emoji_mod'] = m\n"
        "spec.loader.exec_module(m)\n"
        "s = m.EmojiScenes().sample(3); print(s.caption, hashlib.sha1(s.image.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    s = EmojiScenes().sample(3)
    assert out.strip() == f"{s.caption} {hashlib.sha1(s.image.tobytes()).hexdigest()}"


def test_scene_format_and_caption(train: EmojiScenes) -> None:
    assert len(train) >= 10**6
    for i in range(200):
        s = train.sample(i)
        assert s.image.mode == "RGB" and s.image.size == (128, 128)
        assert s.alpha.mode == "L" and s.alpha.size == (128, 128)
        assert 1 <= len(s.emoji) <= 2 and len(s.boxes) == len(s.emoji)
        assert COLORS[s.color].name in s.caption
        for e in s.emoji:
            assert EMOJI[e].name in s.caption
        for x0, y0, x1, y1 in s.boxes:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert s.alpha.crop((x0, y0, x1, y1)).getbbox() is not None
        if len(s.emoji) == 1:
            assert s.positions == []
    small = EmojiScenes(SceneConfig(size=64), "train").sample(0)
    assert small.image.size == (64, 64)


def _free_corner(boxes: list[tuple[int, int, int, int]], size: int) -> tuple[int, int] | None:
    for x, y in ((1, 1), (size - 2, 1), (1, size - 2), (size - 2, size - 2)):
        if all(not (x0 - 2 <= x < x1 + 2 and y0 - 2 <= y < y1 + 2) for x0, y0, x1, y1 in boxes):
            return x, y
    return None


def test_background_color(train: EmojiScenes) -> None:
    checked = {"solid": 0, "gradient": 0}
    for i in range(300):
        s = train.sample(i)
        corner = _free_corner(s.boxes, 128)
        if corner is None:
            continue
        px = s.image.getpixel(corner)
        if s.background == "solid":
            assert px == COLORS[s.color].rgb, (i, s.caption)
        else:
            assert _nearest_color(px) == s.color, (i, s.caption, px)
        checked[s.background] += 1
    assert checked["solid"] > 100 and checked["gradient"] > 20


def test_two_sprite_positions(train: EmojiScenes) -> None:
    pairs = 0
    for i in range(400):
        p = train.plan(i)
        if len(p.emoji) != 2:
            continue
        pairs += 1
        (a, b) = p.boxes
        ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
        cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        pa, pb = p.positions
        if {pa, pb} == {"left", "right"}:
            left, right = (ca, cb) if pa == "left" else (cb, ca)
            assert left[0] < right[0]
            assert abs(ca[0] - cb[0]) >= abs(ca[1] - cb[1])
        else:
            assert {pa, pb} == {"top", "bottom"}
            top, bottom = (ca, cb) if pa == "top" else (cb, ca)
            assert top[1] < bottom[1]
        for word in (pa, pb):
            assert word in p.caption
        # no heavy overlap
        ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
        assert ix * iy <= 0.25 * smaller
    assert 80 < pairs < 220  # p_two = 0.35


def test_plan_matches_sample(train: EmojiScenes) -> None:
    for i in range(20):
        p, s = train.plan(i), train.sample(i)
        assert (p.caption, p.emoji, p.color, p.boxes, p.positions) == (
            s.caption,
            s.emoji,
            s.color,
            s.boxes,
            s.positions,
        )


def test_heldout_split(train: EmojiScenes, heldout: EmojiScenes) -> None:
    combos = train.heldout_combos
    total = len(EMOJI) * len(COLORS)
    assert abs(len(combos) - 0.1 * total) <= 1
    assert len(set(combos)) == len(combos)
    assert all(train.is_heldout(e, c) for e, c in combos)
    # every emoji and colour still appears in train with some colour / emoji
    for e in range(len(EMOJI)):
        assert sum(train.is_heldout(e, c) for c in range(len(COLORS))) < len(COLORS) - 1
    for i in range(4000):
        p = train.plan(i)
        for e in p.emoji:
            assert not train.is_heldout(e, p.color), (i, p.caption)
    assert len(heldout) == 512
    seen = set()
    for i in range(len(heldout)):
        p = heldout.plan(i)
        for e in p.emoji:
            assert heldout.is_heldout(e, p.color), (i, p.caption)
        seen.add((p.emoji[0], p.color))
    assert seen == set(combos)  # 512 scenes cycle through every held-out combo
    s = heldout.sample(5)
    assert all(heldout.is_heldout(e, s.color) for e in s.emoji)
    with pytest.raises(IndexError):
        heldout.sample(len(heldout))


def test_heldout_prompts(train: EmojiScenes, heldout: EmojiScenes) -> None:
    prompts = train.heldout_prompts(50)
    assert len(prompts) == 50 and prompts == heldout.heldout_prompts(50)
    assert prompts == [heldout.plan(i).caption for i in range(50)]
    assert len(set(prompts)) > 40


def test_bad_split() -> None:
    with pytest.raises(ValueError):
        EmojiScenes(split="validation")


def test_getitem_tensor(train: EmojiScenes) -> None:
    torch = pytest.importorskip("torch")
    item = train[0]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (1, 128, 128)
    assert item["caption"] == train.sample(0).caption
