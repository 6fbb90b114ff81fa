"""Composed placements (`iris.compose`): each placed subject drawn alone, cut out and pasted into its region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from iris.compose import FILL, compose, foreground_box, subject_seed
from iris.layout import REGIONS, parse_layout


def _draft(subject: tuple[int, int, int], background: tuple[int, int, int], box: tuple[int, int, int, int],
           size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    image.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), subject), box[:2])
    return image


def test_foreground_box_finds_what_differs_from_the_border():
    assert foreground_box(_draft((255, 0, 0), (0, 0, 255), (10, 20, 30, 50))) == (10, 20, 30, 50)
    assert foreground_box(Image.new("RGB", (40, 40), (9, 9, 9))) is None  # nothing but backdrop
    assert foreground_box(Image.new("L", (40, 40), 200)) is None  # any mode is read as RGB


def test_each_subject_lands_centred_in_its_region_at_the_set_size():
    red = _draft((255, 0, 0), (0, 0, 250), (4, 10, 24, 50))  # 20 x 40 subject: longer side vertical
    green = _draft((0, 255, 0), (0, 0, 254), (30, 30, 60, 45))  # 30 x 15
    out = np.asarray(compose([red, green], [REGIONS["left"], REGIONS["right"]], (128, 128))).astype(int)
    assert out.shape == (128, 128, 3)
    assert np.abs(out[0, 0] - [0, 0, 252]).max() <= 1  # the drafts' mean backdrop

    def box_of(colour):
        ys, xs = np.nonzero(np.abs(out - colour).sum(-1) < 60)
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

    x0, y0, x1, y1 = box_of([255, 0, 0])
    assert x1 <= 64 and abs((x0 + x1) / 2 - 32) <= 1 and abs((y0 + y1) / 2 - 64) <= 1
    assert abs((y1 - y0) - FILL * 128) <= 2 and abs((x1 - x0) - FILL * 64) <= 2  # aspect kept
    x0, y0, x1, y1 = box_of([0, 255, 0])
    assert x0 >= 64 and abs((x0 + x1) / 2 - 96) <= 1 and abs((x1 - x0) - FILL * 128) <= 2


def test_a_small_region_bounds_the_subject_and_a_blank_draft_is_used_whole():
    blank = Image.new("RGB", (64, 64), (200, 10, 10))
    dot = _draft((255, 255, 0), (0, 0, 0), (20, 20, 44, 44))
    out = np.asarray(compose([dot], [(0.0, 0.0, 0.25, 0.25)], (128, 96))).astype(int)
    ys, xs = np.nonzero(out.sum(-1) > 300)
    assert xs.max() < 32 and ys.max() < 24 and ys.max() - ys.min() + 1 <= 0.95 * 24 + 1
    whole = np.asarray(compose([blank], [REGIONS["right"]], (64, 64))).astype(int)
    assert (np.abs(whole - [200, 10, 10]).sum(-1) < 3).all()  # the flat draft on its own colour


def test_compose_needs_one_box_per_draft():
    with pytest.raises(ValueError, match="one box per draft"):
        compose([Image.new("RGB", (8, 8))], [REGIONS["left"], REGIONS["right"]], (32, 32))
    with pytest.raises(ValueError, match="one box per draft"):
        compose([], [], (32, 32))


def test_subject_seeds_start_at_the_run_seed_and_differ():
    seeds = [subject_seed(2**63 - 1, k) for k in range(8)]
    assert seeds[0] == 2**63 - 1 and len(set(seeds)) == 8 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("prompt, expected", [
    ("a cat on the left and a dog on the right, on a blue background",
     ["a cat, on a blue background", "a dog, on a blue background"]),
    ("left: a pizza; right: a ghost", ["a pizza", "a ghost"]),
    ("the left half shows a rocket and the right half shows a cat, over red",
     ["a rocket, over red", "a cat, over red"]),
    ("a cat (left) and a dog (right) in pixel art style", ["a cat, in pixel art style", "a dog, in pixel art style"]),
    ("a red apple to the left of a banana", ["a red apple", "a banana"]),
])
def test_a_subject_prompt_keeps_the_shared_words_and_drops_the_other_subjects(prompt, expected):
    layout = parse_layout(prompt)
    assert [layout.subject_prompt(k) for k in range(len(layout.placements))] == expected


def test_generate_composes_placed_prompts_and_leaves_others_alone(nano_pipe):
    kw = dict(steps=2, iterations=2, seed=3, width=64, height=64, preview_fraction=1.0)
    unplaced = "a cat face on a blue background"
    assert np.array_equal(np.asarray(nano_pipe.generate(unplaced, compose=True, **kw).images[0]),
                          np.asarray(nano_pipe.generate(unplaced, compose=False, **kw).images[0]))
    placed = "a cat face on the left and a dog face on the right, blue background"
    events = []
    on = nano_pipe.generate(placed, compose=True, on_preview=events.append, **kw)
    off = nano_pipe.generate(placed, compose=False, **kw)
    assert on.params["compose"] is True and off.params["compose"] is False
    assert on.images[0].size == (64, 64) and on.latents.shape == off.latents.shape
    assert on.timings["drafts"] == 2 and on.timings["nfe"] == off.timings["nfe"]  # the same calls, batched
    # both subjects are drawn in one batch; its previews show the composite (the image's size)
    assert [e.step for e in events] == [1, 1, 2, 2] and events[-1].steps == 2 and events[-1].progress == 1.0
    assert all(e.image is not None and e.image.size == (64, 64) for e in events)
    # exactly the composite of the subjects' own prompts, each from its own seed's noise, regional off
    layout = parse_layout(placed)
    prompts = [layout.subject_prompt(k) for k in range(2)]
    noise = torch.cat([nano_pipe.initial_noise(subject_seed(3, k), (1, 16, 4, 4)) for k in range(2)])
    budget = nano_pipe.check_budget(2, 2, regional=False)
    drafts = nano_pipe.decode(nano_pipe.denoise(noise, prompts, "", budget, 3, preview_fraction=None))
    expected = compose(drafts, [REGIONS["left"], REGIONS["right"]], (64, 64))
    assert np.array_equal(np.asarray(on.images[0]), np.asarray(expected))
    batch = nano_pipe.generate(placed, compose=True, num_images=2, **{**kw, "preview_fraction": None})
    assert len(batch.images) == 2 and batch.latents.shape[0] == 2


def test_drafts_that_would_pass_the_image_limit_run_in_several_batches(nano_pipe):
    from iris.limits import MAX_IMAGES

    n = MAX_IMAGES // 2 + 1  # two subjects of n images each do not fit in one batch
    events = []
    out = nano_pipe.generate("left: a cat face; right: a dog face", steps=1, iterations=1, seed=0, width=32,
                             height=32, num_images=n, compose=True, on_preview=events.append, preview_fraction=1.0)
    assert len(out.images) == n and out.timings["drafts"] == 2
    assert [(e.step, e.steps) for e in events] == [(1, 2), (2, 2)]


def test_compose_must_be_a_bool(nano_pipe):
    from iris.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="compose must be true or false"):
        nano_pipe.generate("a cat on the left", steps=1, iterations=1, compose="yes")
