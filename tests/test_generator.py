"""The recurrent-depth generator (iris.models.generator) on a tiny config."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, tiny_config

from iris.models.generator import IrisGenerator, TextCondition, window_merge, window_partition


def make_gen(seed: int = 0, std: float | None = 0.02, **overrides) -> IrisGenerator:
    torch.manual_seed(seed)
    gen = IrisGenerator(tiny_config(**overrides))
    if std is not None:
        perturb(gen, std=std, seed=seed + 1)
    return gen


def make_text(b: int = 1, length: int = 5, dim: int = 16, seed: int = 0,
              valid: int | None = None) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, length, dim, generator=g)
    mask = None
    if valid is not None:
        mask = torch.zeros(b, length, dtype=torch.bool)
        mask[:, :valid] = True
    return TextCondition(tokens, mask)


def make_inputs(b: int = 1, hw: tuple[int, int] = (4, 4), c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, *hw, generator=g), torch.rand(b, generator=g)


def run(gen: IrisGenerator, z, t, text, iterations: int, seed: int = 0, **kw) -> torch.Tensor:
    return gen(z, t, text, iterations, state_generator=torch.Generator().manual_seed(seed), **kw)


def count_graph_nodes(out: torch.Tensor) -> int:
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return len(seen)


@pytest.mark.parametrize("b,hw", [(1, (4, 4)), (2, (3, 5)), (3, (6, 2)), (1, (9, 9))])
def test_output_shape(b, hw):
    gen = make_gen()
    z, t = make_inputs(b, hw)
    with torch.no_grad():
        v = run(gen, z, t, make_text(b), 2)
    assert v.shape == z.shape
    assert torch.isfinite(v).all()


def test_zero_initialised_generator_outputs_exactly_zero():
    gen = make_gen(std=None)
    z, t = make_inputs(2, (4, 5))
    with torch.no_grad():
        v = run(gen, z, t, make_text(2), 3)
    assert v.shape == z.shape
    assert torch.count_nonzero(v) == 0


def test_every_iteration_count_runs_and_changes_the_output():
    gen = make_gen(core_layers=1)  # 136 core iterations in all: keep each cheap
    z, t = make_inputs(hw=(3, 3))
    text = make_text()
    outs = []
    with torch.no_grad():
        for r in range(1, 17):
            v = run(gen, z, t, text, r)
            assert v.shape == z.shape and torch.isfinite(v).all()
            outs.append(v)
    for r in range(1, 16):
        assert not torch.allclose(outs[r - 1], outs[r], atol=1e-7), f"iterations {r} and {r + 1} agree"


def test_iterations_must_be_positive():
    gen = make_gen()
    z, t = make_inputs()
    with pytest.raises(ValueError, match="iterations"):
        run(gen, z, t, make_text(), 0)


def test_state_generator_makes_runs_reproducible():
    gen = make_gen()
    z, t = make_inputs()
    text = make_text()
    with torch.no_grad():
        a, b = run(gen, z, t, text, 3, seed=5), run(gen, z, t, text, 3, seed=5)
        c = run(gen, z, t, text, 3, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_on_iteration_called_every_iteration_and_matches_preview_decode():
    gen = make_gen()
    z, t = make_inputs()
    text = make_text()
    calls: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        run(gen, z, t, text, 5, on_iteration=lambda i, s: calls.append((i, s.clone())))
        assert [i for i, _ in calls] == [1, 2, 3, 4, 5]
        assert calls[0][1].shape == (1, 4, 4, 32)
        # decoding the state after iteration 3 gives what a 3-iteration run outputs (the live preview)
        c = gen.condition(t, text)
        e = gen.embed(z, c)
        preview = gen.decode(calls[2][1], e, c)
        torch.testing.assert_close(preview, run(gen, z, t, text, 3), atol=1e-6, rtol=1e-5)


def test_exit_threshold_stops_early():
    gen = make_gen()
    z, t = make_inputs()
    text = make_text()
    seen: list[int] = []
    with torch.no_grad():
        early = run(gen, z, t, text, 8, exit_threshold=10.0, on_iteration=lambda i, s: seen.append(i))
        assert seen == [1]
        torch.testing.assert_close(early, run(gen, z, t, text, 1), atol=1e-6, rtol=1e-5)
        seen.clear()
        run(gen, z, t, text, 8, exit_threshold=0.0, on_iteration=lambda i, s: seen.append(i))
        assert seen == list(range(1, 9))  # a relative change is never below 0


def test_gradients_reach_every_parameter_with_full_backprop():
    gen = make_gen()
    z, t = make_inputs(2)
    iterations = 3
    v = run(gen, z, t, make_text(2), iterations, backprop_iterations=iterations)
    (v * torch.randn_like(v)).sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None, name
        if name == "iter_embed.weight":
            used = p.grad[:iterations].abs().sum(1)
            assert torch.all(used > 0), "every used iteration embedding gets a gradient"
            assert p.grad[iterations:].abs().max() == 0, "unused iteration embeddings get none"
        else:
            assert p.grad.abs().max() > 0, name


def test_truncated_backprop():
    gen = make_gen()
    z, t = make_inputs(2)
    text = make_text(2)
    iterations = 4
    grad_flags: list[bool] = []
    v = run(gen, z, t, text, iterations, backprop_iterations=1,
            on_iteration=lambda i, s: grad_flags.append(s.requires_grad))
    assert grad_flags == [False, False, False, True]  # only the last iteration is in the graph
    nodes_truncated = count_graph_nodes(v)
    v_full = run(gen, z, t, text, iterations, backprop_iterations=iterations)
    nodes_full = count_graph_nodes(v_full)
    assert nodes_truncated < 0.5 * nodes_full
    torch.testing.assert_close(v, v_full)  # same forward value, only the graph differs
    (v * torch.randn_like(v)).sum().backward()
    core = ("core.", "inject", "core_mod")
    core_grads = {n: p.grad for n, p in gen.named_parameters() if n.startswith(core)}
    assert core_grads and all(g is not None and g.abs().max() > 0 for g in core_grads.values())
    for part in ("patch_embed.weight", "prelude.0.dwconv.weight", "final.weight", "t_embed.mlp.0.weight"):
        assert gen.get_parameter(part).grad.abs().max() > 0, part
    rows = gen.iter_embed.weight.grad.abs().sum(1)
    assert rows[iterations - 1] > 0 and rows[: iterations - 1].max() == 0


def test_class_labels_change_the_output():
    gen = make_gen(num_classes=5)
    assert gen.class_embed is not None and gen.class_embed.num_embeddings == 6
    z, t = make_inputs()
    text = make_text()
    with torch.no_grad():
        a = run(gen, z, t, text, 2, labels=torch.tensor([1]))
        b = run(gen, z, t, text, 2, labels=torch.tensor([3]))
        a2 = run(gen, z, t, text, 2, labels=torch.tensor([1]))
    assert torch.equal(a, a2)
    assert not torch.allclose(a, b, atol=1e-6)


def test_unconditional_config_has_no_class_embedding():
    assert make_gen().class_embed is None


def test_patch_size_two():
    gen = make_gen(patch_size=2)
    z, t = make_inputs(2, (8, 6))
    states = []
    with torch.no_grad():
        v = run(gen, z, t, make_text(2), 2, on_iteration=lambda i, s: states.append(s.shape))
    assert v.shape == z.shape
    assert states[0] == (2, 4, 3, 32)  # the token grid is half the latent grid
    assert torch.count_nonzero(v) > 0


def test_text_and_time_condition_the_output_and_masked_tokens_are_ignored():
    gen = make_gen()
    z, t = make_inputs()
    text = make_text(valid=3)
    with torch.no_grad():
        base = run(gen, z, t, text, 2)
        # change only the padded (masked-out) tokens: nothing may change
        padded = TextCondition(text.tokens.clone(), text.mask)
        padded.tokens[:, 3:] = 100.0
        assert torch.equal(run(gen, z, t, padded, 2), base)
        # change a real token: the output changes
        real = TextCondition(text.tokens.clone(), text.mask)
        real.tokens[:, 1] += 1.0
        assert not torch.allclose(run(gen, z, t, real, 2), base, atol=1e-6)
        assert not torch.allclose(run(gen, z, t * 0.5, text, 2), base, atol=1e-6)


def test_pooled_text_uses_the_mask():
    text = make_text(b=2, length=4, valid=2)
    torch.testing.assert_close(text.pooled(), text.tokens[:, :2].mean(1))
    assert TextCondition(text.tokens).pooled().shape == (2, 16)


@pytest.mark.parametrize("hw,ws", [((8, 8), 4), ((5, 7), 4), ((3, 3), 8)])
def test_window_partition_round_trip(hw, ws):
    x = torch.randn(2, *hw, 6)
    win, padded = window_partition(x, ws)
    assert win.shape[1:] == (ws * ws, 6)
    assert padded[0] % ws == 0 and padded[1] % ws == 0
    assert torch.equal(window_merge(win, 2, hw, padded, ws), x)


def test_grid_sincos_marks_every_cell_apart_on_any_grid():
    from iris.models.generator import grid_sincos

    for h, w, d in [(8, 8, 192), (3, 5, 16), (16, 4, 18)]:
        pe = grid_sincos(h, w, d)
        assert pe.shape == (h, w, d) and pe.abs().max() <= 1.0
        flat = pe.reshape(h * w, d)
        assert torch.cdist(flat, flat).add(torch.eye(h * w) * 9).min() > 0.1  # no two cells alike
        assert torch.equal(pe[..., 4 * (d // 4):], torch.zeros(h, w, d - 4 * (d // 4)))
    # places are fractions of the side: cell (0, 0) of a 3 x 3 grid and (1, 1) of a 9 x 9 one share a centre
    assert torch.allclose(grid_sincos(3, 3, 16)[0, 0], grid_sincos(9, 9, 16)[1, 1], atol=1e-5)
    assert not torch.allclose(grid_sincos(3, 3, 16)[0, 0], grid_sincos(9, 9, 16)[0, 0], atol=1e-2)


def test_position_embedding_starts_as_a_no_op_and_learns():
    plain, placed = make_gen(seed=3), make_gen(seed=3, position_embedding=True, std=None)
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["pos_proj.weight"] and not unexpected
    z, t = make_inputs(2, (4, 4))
    text = make_text(2)
    with torch.no_grad():
        assert torch.equal(run(plain, z, t, text, 2), run(placed, z, t, text, 2))
    out = run(placed, z, t, text, 2)
    out.square().mean().backward()
    assert placed.pos_proj.weight.grad is not None and placed.pos_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        placed.pos_proj.weight.normal_(0.0, 0.3)
        moved = run(placed, z, t, text, 2)
    assert not torch.allclose(moved, run(plain, z, t, text, 2).detach())
    # a uniform latent now gives different velocities on the left and right
    flat = torch.zeros(1, 4, 4, 4)
    with torch.no_grad():
        v = run(placed, flat, t[:1], make_text(1), 2)
    assert not torch.allclose(v[..., :2], v[..., 2:].flip(-1), atol=1e-4)
