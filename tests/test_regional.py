"""Regional prompts: where a prompt places its subjects, and the cross-attention that draws them there."""

from __future__ import annotations

import pytest
import torch

from iris.layout import MAX_LAYOUT_CHARS, MAX_SUBJECTS, REGIONS, parse_layout, region_attention_mask
from iris.models.generator import TextCondition
from iris.models.layers import CrossAttention


def placed(prompt: str) -> list[tuple[str, str]] | None:
    layout = parse_layout(prompt)
    return None if layout is None else [(layout.subject(k), p.region) for k, p in enumerate(layout.placements)]


@pytest.mark.parametrize("prompt,want", [
    ("a cat on the left and a dog on the right, blue background", [("a cat", "left"), ("a dog", "right")]),
    ("on a blue background, a cat is on the left and a dog is on the right", [("a cat", "left"), ("a dog", "right")]),
    ("A ghost on the RIGHT, a pumpkin on the LEFT", [("A ghost", "right"), ("a pumpkin", "left")]),
    ("a rocket at the top and a moon at the bottom", [("a rocket", "top"), ("a moon", "bottom")]),
    ("left: a cat; right: a dog; the background is red", [("a cat", "left"), ("a dog", "right")]),
    ("on the left, a cat. on the right, a dog", [("a cat", "left"), ("a dog", "right")]),
    ("a cat to the left of a dog on a green backdrop", [("a cat", "left"), ("a dog", "right")]),
    ("a dog to the right of a cat", [("a dog", "right"), ("a cat", "left")]),
    ("a cat above a dog", [("a cat", "top"), ("a dog", "bottom")]),
    ("a dog below a cat", [("a dog", "bottom"), ("a cat", "top")]),
    ("a hat on top of a ghost", [("a hat", "top"), ("a ghost", "bottom")]),
    ("a cat (left) and a dog (right)", [("a cat", "left"), ("a dog", "right")]),
    ("the left half shows a cat and the right half shows a dog", [("a cat", "left"), ("a dog", "right")]),
    ("a rocket in the top-left corner and a moon in the bottom right corner",
     [("a rocket", "top left"), ("a moon", "bottom right")]),
    ("a top hat on the left with a ghost on the right", [("a top hat", "left"), ("a ghost", "right")]),
    ("a cat on the left side of the picture", [("a cat", "left")]),
    ("an image of a cat on the left and a dog on the right", [("a cat", "left"), ("a dog", "right")]),
    ("a cat, left; a dog, right", [("a cat", "left"), ("a dog", "right")]),
    ("top: a sun\nbottom: a fish", [("a sun", "top"), ("a fish", "bottom")]),
    ("left:\n  a cat\nright:\n  a dog", [("a cat", "left"), ("a dog", "right")]),
    ("top: a sun | bottom: a fish", [("a sun", "top"), ("a fish", "bottom")]),
    ("left: ; right: a dog", [("a dog", "right")]),  # an empty label places nothing, and takes nothing
])
def test_the_subjects_and_their_regions_are_read(prompt, want):
    assert placed(prompt) == want


@pytest.mark.parametrize("prompt", [
    "a cat face on a blue background", "a single cat over a plain blue backdrop",
    "draw a cat; make the background blue", "blue all around, with a cat in the middle", "a top hat",
    "a cat above a blue background", "a left-facing fist", "", "   ", "🐱🐶 ← →", "left", "on the left",
    "a cat lying on the floor", "the man left the room",
])
def test_a_prompt_that_places_nothing_has_no_layout(prompt):
    assert parse_layout(prompt) is None


def test_each_region_reads_the_prompt_with_only_its_own_subject():
    layout = parse_layout("a cat on the left and a dog on the right, blue background")
    assert layout.variants() == ["a cat on the left and a cat on the right, blue background",
                                 "a dog on the left and a dog on the right, blue background"]
    assert layout.boxes().tolist() == [list(REGIONS["left"]), list(REGIONS["right"])]


def test_many_placements_are_capped_and_long_odd_prompts_parse():
    prompt = ", ".join(f"a cat number {i} on the {'left' if i % 2 else 'right'}" for i in range(40))
    assert len(parse_layout(prompt).placements) == MAX_SUBJECTS
    for odd in ("\u202e a cat on the left \u0000 and a dog on the right", "ａ cat on the left" * 200,
                "on the left on the right at the top at the bottom", ":::: left: : right: ::"):
        layout = parse_layout(odd)
        assert layout is None or all(0 <= p.start < p.end <= len(odd) for p in layout.placements)


def test_the_mask_gives_each_half_its_own_reading_and_the_rest_the_prompt():
    # tokens: 2 of the prompt as written (0), 2 of the left reading (1), 2 of the top-right reading (2)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    boxes = torch.tensor([[REGIONS["left"], REGIONS["top right"]]])
    mask = region_attention_mask(labels, boxes, 4, 4)  # [1, 1, 16, 6]
    assert mask.shape == (1, 1, 16, 6)
    grid = mask[0, 0].view(4, 4, 6)
    assert grid[:, :2].eq(torch.tensor([False, False, True, True, False, False])).all()  # left half
    assert grid[:2, 2:].eq(torch.tensor([False, False, False, False, True, True])).all()  # top right
    assert grid[2:, 2:].eq(torch.tensor([True, True, False, False, False, False])).all()  # no region


def test_a_region_attends_exactly_as_if_its_reading_were_the_only_prompt():
    torch.manual_seed(0)
    attn = CrossAttention(16, 8, 2).eval()
    x, own, left, right = torch.randn(1, 16, 16), torch.randn(1, 5, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    cond = TextCondition(torch.cat([own, left, right], 1), torch.ones(1, 15, dtype=torch.bool),
                         regions=(torch.tensor([[0] * 5 + [1] * 5 + [2] * 5]),
                                  torch.tensor([[REGIONS["left"], REGIONS["right"]]])))
    with torch.no_grad():
        y = attn(x, cond.tokens, cond.attention_mask(4, 4)).view(4, 4, 16)
        alone_left = attn(x, left, None).view(4, 4, 16)
        alone_right = attn(x, right, None).view(4, 4, 16)
    torch.testing.assert_close(y[:, :2], alone_left[:, :2])
    torch.testing.assert_close(y[:, 2:], alone_right[:, 2:])


def test_stacking_pads_the_shorter_condition_and_pools_the_prompt_as_written():
    own = torch.randn(1, 4, 8)
    regional = TextCondition(torch.cat([own, torch.randn(1, 8, 8)], 1), torch.ones(1, 12, dtype=torch.bool),
                             regions=(torch.tensor([[0] * 4 + [1] * 4 + [2] * 4]),
                                      torch.tensor([[REGIONS["top"], REGIONS["bottom"]]])))
    plain = TextCondition(torch.randn(1, 4, 8), torch.tensor([[True, True, True, False]]))
    both = TextCondition.cat([regional, plain])
    assert both.tokens.shape == (2, 12, 8) and both.mask[1].tolist() == [True] * 3 + [False] * 9
    assert both.regions[0][1].eq(0).all() and both.regions[1][1].eq(0).all()
    torch.testing.assert_close(both.pooled()[0], own[0].mean(0))
    torch.testing.assert_close(both.pooled()[1], plain.tokens[0, :3].mean(0))
    mask = both.attention_mask(2, 2)  # the plain row: every image token sees its 3 real tokens
    assert mask.shape == (2, 1, 4, 12) and mask[1, 0].sum(1).eq(3).all()


def test_the_text_encoder_reads_each_region_once(nano_pipe):
    enc = nano_pipe.text_encoder
    prompt = "a cat face on the left and a dog face on the right, blue background"
    cond = enc.encode([prompt, "a cat face"], regional=True)
    n = enc.config.max_length
    assert cond.tokens.shape[1] == 3 * n
    labels, boxes = cond.regions
    assert labels[0].tolist() == [0] * n + [1] * n + [2] * n
    variants = enc.encode(parse_layout(prompt).variants())
    torch.testing.assert_close(cond.tokens[0, n : 2 * n], variants.tokens[0])
    torch.testing.assert_close(cond.tokens[0, 2 * n :], variants.tokens[1])
    assert not cond.mask[1, n:].any()  # the unplaced prompt is padded
    plain = enc.encode([prompt])
    torch.testing.assert_close(cond.pooled()[0], plain.pooled()[0])


def test_regional_changes_only_prompts_that_place_subjects(nano_pipe):
    kw = dict(steps=2, iterations=2, seed=3, width=64, height=64, preview_fraction=None)
    unplaced = "a cat face on a blue background"
    a = nano_pipe.generate(unplaced, regional=True, **kw)
    b = nano_pipe.generate(unplaced, regional=False, **kw)
    assert torch.equal(a.latents, b.latents)
    placed_prompt = "a cat face on the left and a dog face on the right, blue background"
    on = nano_pipe.generate(placed_prompt, **kw)
    off = nano_pipe.generate(placed_prompt, regional=False, **kw)
    assert on.params["regional"] is True and off.params["regional"] is False
    assert not torch.equal(on.latents, off.latents)


def test_regional_must_be_a_bool(nano_pipe):
    from iris.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="regional must be true or false"):
        nano_pipe.generate("a cat on the left", steps=1, iterations=1, regional="yes")


def test_place_words_are_read_only_near_the_start_of_a_long_prompt():
    """What a text encoder never reads places nothing (and costs nothing to parse)."""
    pad = "x" * MAX_LAYOUT_CHARS
    assert parse_layout(pad + " a cat on the left") is None
    layout = parse_layout("a dog on the right, " + pad + ", a cat on the left")
    assert [(layout.subject(k), p.region) for k, p in enumerate(layout.placements)] == [("a dog", "right")]
    assert layout.variants() == [layout.prompt]  # one subject: its region reads the prompt as written
