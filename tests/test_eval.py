"""Tests for the independent evaluator (iris.eval): metric maths, the classifier, and evaluate() end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from iris import eval as ev
from iris.hub import demo_model_path

try:
    from iris.train.emoji import find_emoji_font

    find_emoji_font()
    FONT_REASON = ""
except FileNotFoundError as exc:  # pragma: no cover - depends on the machine
    FONT_REASON = f"emoji font missing ({exc}); install fonts-noto-color-emoji or set IRIS_EMOJI_FONT"

needs_font = pytest.mark.skipif(bool(FONT_REASON), reason=FONT_REASON or "font present")


# ------------------------------------------------------------------------------------------ Fréchet
def _exact_gaussian(mu: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is exactly mu and sample covariance exactly diag(std^2)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mu)))
    z -= z.mean(0)
    cov = np.cov(z, rowvar=False)
    w, v = np.linalg.eigh(cov)
    z = z @ (v / np.sqrt(w)) @ v.T  # whitened: sample covariance = identity
    return mu + z * std


def test_frechet_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(200, 16))
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_shift_adds_squared_distance():
    a = np.random.default_rng(1).normal(size=(300, 8))
    shift = np.arange(8) * 0.1
    d = ev.frechet_distance(a, a + shift)
    assert d > 0
    assert d == pytest.approx(float(shift @ shift), rel=1e-6, abs=1e-8)


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 0.5, 0.3])
    a = _exact_gaussian(mu_a, sd_a, 500, 2)
    b = _exact_gaussian(mu_b, sd_b, 400, 3)
    closed = float(((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum())
    assert ev.frechet_distance(a, b) == pytest.approx(closed, rel=1e-6)
    assert ev.frechet_from_stats(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2)) == pytest.approx(closed, rel=1e-9)


def test_frechet_symmetric_and_handles_rank_deficient_sets():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(7, 32)) + 1
    assert ev.frechet_distance(a, b) == pytest.approx(ev.frechet_distance(b, a), rel=1e-6)
    assert math.isfinite(ev.frechet_distance(a[:1], b[:1]))
    with pytest.raises(ValueError):
        ev.frechet_distance(a, b[:, :3])


# ---------------------------------------------------------------------------------------- edge F1, PSNR
def _line_map(col: int, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[4:28, col] = True
    return m


def test_edge_f1_identical_disjoint_and_tolerance():
    a = _line_map(10)
    assert ev.edge_f1(a, a) == pytest.approx(1.0)
    assert ev.edge_f1(a, _line_map(25)) == 0.0  # 15 px apart
    shifted = _line_map(12)
    assert ev.edge_f1(shifted, a, tolerance_px=0) == 0.0
    assert ev.edge_f1(shifted, a, tolerance_px=1) == 0.0
    assert ev.edge_f1(shifted, a, tolerance_px=2) == pytest.approx(1.0)
    # half the predicted pixels right, the reference fully covered: P = 1/2, R = 1, F1 = 2/3
    pred = a | _line_map(25)
    assert ev.edge_f1(pred, a) == pytest.approx(2 / 3)
    assert ev.edge_f1(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 1.0
    assert ev.edge_f1(np.zeros((8, 8), bool), np.eye(8, dtype=bool)) == 0.0
    # PIL white-on-black maps (what iris.control.canny returns) work too
    pil = Image.fromarray((a * 255).astype(np.uint8)).convert("RGB")
    assert ev.edge_f1(pil, a) == pytest.approx(1.0)


def test_psnr_identical_and_constant_offset():
    img = np.random.default_rng(5).integers(20, 200, size=(16, 16, 3), dtype=np.uint8)
    assert ev.psnr(img, img) == math.inf
    assert ev.psnr(Image.fromarray(img), Image.fromarray(img + 10)) == pytest.approx(20 * math.log10(255 / 10))
    with pytest.raises(ValueError):
        ev.psnr(img, img[:8])


def test_parse_budgets():
    assert ev.parse_budgets("1x4, 4x8,8X16") == [(1, 4), (4, 8), (8, 16)]
    with pytest.raises(ValueError):
        ev.parse_budgets("")


# ----------------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def tiny_clf():
    if FONT_REASON:
        pytest.skip(FONT_REASON)
    return ev.train_classifier(steps=3, batch_size=8, pool_size=60, seed=0)


@needs_font
def test_tiny_classifier_end_to_end(tiny_clf, tmp_path):
    from iris.train.emoji import COLORS, EMOJI, EmojiScenes, SceneConfig

    n_params = sum(p.numel() for p in tiny_clf.parameters())
    assert 300_000 <= n_params <= 1_000_000
    scenes = [EmojiScenes(SceneConfig(), "heldout").sample(i) for i in range(5)]
    images = [s.image for s in scenes] + [Image.new("RGB", (40, 30), (0, 0, 255))]  # any size is accepted
    e, c, f = ev.classify(images, tiny_clf)
    assert e.shape == (6,) and c.shape == (6,) and f.shape == (6, ev.FEATURE_DIM)
    assert e.max() < len(EMOJI) and c.max() < len(COLORS)
    assert tiny_clf.meta["version"] == ev.CLASSIFIER_VERSION and tiny_clf.meta["steps"] == "3"

    path = ev.save_classifier(tiny_clf, tmp_path / "clf.safetensors")
    loaded = ev.load_classifier(path)
    e2, c2, f2 = ev.classify(images, loaded)
    assert (e2 == e).all() and (c2 == c).all() and np.allclose(f2, f, atol=1e-5)
    assert loaded.meta["steps"] == "3"
    with pytest.raises(ValueError):
        ev.load_classifier(tmp_path / "clf.pt")
    # the cache: a current classifier with enough steps is reused, one with too few is not (train=False)
    assert ev.get_classifier(steps=3, path=path, train=False).meta["steps"] == "3"
    with pytest.raises(FileNotFoundError):
        ev.get_classifier(steps=4, path=path, train=False)

    acc = ev.classifier_accuracy(tiny_clf, n=10, n_pairs=4)
    assert 0 <= acc["emoji_acc"] <= 1 and 0 <= acc["color_acc"] <= 1 and 0 <= acc["half_emoji_acc"] <= 1


@needs_font
def test_views_and_position_accuracy(monkeypatch):
    from iris.train.emoji import EmojiScenes, SceneConfig

    pairs = EmojiScenes(SceneConfig(min_sprites=2, max_sprites=2), "heldout")
    scene = next(s for s in (pairs.sample(i) for i in range(20)) if len(s.emoji) == 2)
    for side in ("left", "right", "top", "bottom"):
        assert ev.half_view(scene.image, side).size == (128, 128)
    assert ev.region_view(scene.image, (10, 10, 30, 50)).size == (64, 64)
    with pytest.raises(ValueError):
        ev.half_view(scene.image, "middle")

    # position_accuracy classifies each sprite's half in caption order: stand in a classifier that answers
    # the true labels (all right), then the swapped ones (every half wrong)
    labels = list(scene.emoji)
    monkeypatch.setattr(ev, "classify", lambda views, clf=None: (np.array(labels), None, None))
    assert ev.position_accuracy([scene.image], [scene], object()) == 1.0
    assert ev.position_accuracy([scene.image], [scene], object(), per_sprite=True) == 1.0
    monkeypatch.setattr(ev, "classify", lambda views, clf=None: (np.array([labels[0], -1]), None, None))
    assert ev.position_accuracy([scene.image], [scene], object()) == 0.0
    assert ev.position_accuracy([scene.image], [scene], object(), per_sprite=True) == 0.5
    single = EmojiScenes(SceneConfig(max_sprites=1), "heldout").sample(0)
    assert ev.position_accuracy([single.image], [single], object()) is None


# ------------------------------------------------------------------------------------------ evaluate
@needs_font
def test_evaluate_end_to_end_on_random_nano(tiny_clf):
    from iris import IrisPipeline

    pipe = IrisPipeline.from_variant("nano")
    res = ev.evaluate(pipe, n_prompts=2, budgets=[(1, 1)], seed=0, classifier=tiny_clf, task_budget=(1, 1),
                      n_task=2)
    for key in ("model", "n_prompts", "real", "generation", "vae", "super_resolution", "inpaint", "control",
                "classifier", "task_budget"):
        assert key in res, key
    (row,) = res["generation"]
    assert (row["steps"], row["iterations"]) == (1, 1)
    for key in ("emoji_acc", "color_acc", "position_acc", "position_sprite_acc", "frechet", "seconds_per_image"):
        assert key in row
    assert 0 <= row["color_acc"] <= 1 and row["frechet"] >= 0
    assert res["real"]["frechet"] == 0.0
    assert math.isfinite(res["vae"]["psnr"])
    sr = res["super_resolution"]
    assert math.isfinite(sr["psnr_model"]) and math.isfinite(sr["psnr_bicubic"]) and sr["adapter"] is False
    assert res["inpaint"]["n"] >= 1 and 0 <= res["inpaint"]["emoji_acc"] <= 1
    ctl = res["control"]
    assert ctl["adapter"] is False and ctl["edge_f1_control"] is None and 0 <= ctl["edge_f1_no_control"] <= 1
    table = ev.format_markdown(res)
    assert "1×1" in table and "real renders" in table and "no adapter" in table
    import json

    json.dumps(res)  # JSON-serialisable


@needs_font
def test_evaluate_scores_an_oracle_generator_like_the_real_renders(tiny_clf):
    """A stand-in generator returning the real render of prompt i (seed = i) must score exactly as the real
    renders do, at Fréchet distance 0: the metrics measure the images, not constants."""
    from types import SimpleNamespace

    from iris.train.emoji import EmojiScenes, SceneConfig

    ds = EmojiScenes(SceneConfig(), "heldout")
    calls = []

    def generate(prompt, seed=0, **kw):
        calls.append((prompt, seed))
        assert prompt == ds.sample(seed).caption
        return SimpleNamespace(images=[ds.sample(seed).image])

    config = SimpleNamespace(name="oracle", resolution=128, sampler=SimpleNamespace(guidance=1.0))
    oracle = SimpleNamespace(config=config, source="oracle", generate=generate)
    res = ev.evaluate(oracle, n_prompts=6, budgets=[(1, 1)], classifier=tiny_clf, tasks=())
    (row,) = res["generation"]
    assert len(calls) == 6
    for key in ("emoji_acc", "color_acc", "position_acc", "position_sprite_acc"):
        assert row[key] == res["real"][key]
    assert row["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert res["vae"] is None and res["control"] is None and res["task_budget"] is None


# --------------------------------------------------------------------------------------- demo model
@pytest.mark.slow
@needs_font
@pytest.mark.skipif(not (demo_model_path() / "config.json").is_file(),
                    reason=f"no bundled demo model at {demo_model_path()}")
def test_demo_model_beats_untrained_on_the_evaluator():
    from iris import IrisPipeline

    try:
        clf = ev.get_classifier(train=False)
    except FileNotFoundError:
        clf = ev.get_classifier(steps=800)  # not cached: a shorter training keeps this test to a few minutes
    demo = IrisPipeline.from_pretrained()
    untrained = IrisPipeline.from_config(demo.config, seed=0)
    kw = dict(n_prompts=24, budgets=[(2, 4)], seed=0, classifier=clf, tasks=())
    got = ev.evaluate(demo, **kw)["generation"][0]
    base = ev.evaluate(untrained, **kw)["generation"][0]
    # the trained model must be measurably better: background colours right far more often, generations
    # closer to real scenes in the classifier's feature space, and never worse at naming the emoji
    assert got["color_acc"] >= base["color_acc"] + 0.3, (got, base)
    assert got["frechet"] < base["frechet"], (got, base)
    assert got["emoji_acc"] >= base["emoji_acc"], (got, base)


@needs_font
@pytest.mark.skipif(not (demo_model_path() / "config.json").is_file(),
                    reason=f"no bundled demo model at {demo_model_path()}")
def test_demo_model_upscaler_beats_bicubic_on_heldout_scenes():
    """The bundled model's learned upscaler (strength 0) against bicubic on held-out scenes, 64 -> 128 px."""
    from PIL import Image

    from iris import IrisPipeline
    from iris.train.emoji import EmojiScenes, SceneConfig

    demo = IrisPipeline.from_pretrained()
    assert "pixel_upscale" in demo.adapters
    scenes = EmojiScenes(SceneConfig(), "heldout")
    gains = []
    for i in range(6):
        hi = scenes.sample(i).image.convert("RGB")
        lo = hi.resize((64, 64), Image.Resampling.BOX)
        learned = ev.psnr(demo.upscale(lo, 2, strength=0.0).image, hi)
        gains.append(learned - ev.psnr(lo.resize((128, 128), Image.Resampling.BICUBIC), hi))
    assert float(np.mean(gains)) > 2.0, gains
