"""The generator's optimised paths equal their plain forms (iris.models.reference) within fp32 round-off:
values and gradients, on random modules, on grids that take every branch, and on the bundled model."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, tiny_config

from iris.models.generator import IrisGenerator, TextCondition
from iris.models.reference import PLAIN_FORMS, baseline, plain_forms


def _inputs(cfg, h: int, w: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.latent_channels, h, w, generator=g)
    t = torch.rand(batch, generator=g)
    tokens = torch.randn(batch, 5, cfg.text_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:batch]
    return z, t, TextCondition(tokens, mask)


def _generator(**overrides) -> IrisGenerator:
    torch.manual_seed(0)
    gen = perturb(IrisGenerator(tiny_config(**overrides)), std=0.2).eval()
    with torch.no_grad():  # larger AFNO weights, so that softshrink passes most of the spectrum
        for name, p in gen.named_parameters():
            if "fourier" in name:
                p.mul_(10.0)
    return gen


def _velocity(gen: IrisGenerator, inputs, iterations: int = 3) -> torch.Tensor:
    z, t, text = inputs
    state = torch.Generator().manual_seed(1)
    return gen(z, t, TextCondition(text.tokens, text.mask), iterations, state_generator=state)


# 4 x 4 and 8 x 6: the whole-grid DFT; 17 x 16: torch.fft (more tokens than AFNO2D.DFT_MAX_TOKENS);
# exact_max 0: the decomposed Manhattan attention (every grid above its exact limit)
@pytest.mark.parametrize("hw", [(4, 4), (8, 6), (17, 16)])
@pytest.mark.parametrize("exact_max", [1024, 0])
@pytest.mark.parametrize("name", [*PLAIN_FORMS, "all"])
def test_each_optimised_path_equals_its_plain_form(hw, exact_max, name):
    gen = _generator(manhattan_exact_max_tokens=exact_max)
    inputs = _inputs(gen.config, *hw)
    with torch.no_grad(), baseline(name):
        fast = _velocity(gen, inputs)
        with plain_forms(*(() if name == "all" else (name,))):
            plain = _velocity(gen, inputs)
    assert fast.abs().max() > 1e-2  # a real output, not the zero of an untouched adaLN-Zero model
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_plain_forms_really_swap_the_code():
    """Each plain form must run instead of the optimised one, or the comparison above proves nothing."""
    gen = _generator()
    inputs = _inputs(gen.config, 4, 4)
    for name, swaps in PLAIN_FORMS.items():
        calls: list[int] = []
        owner, attr, plain = swaps[0]

        def counted(*args, _plain=plain, _calls=calls, **kwargs):
            _calls.append(1)
            return _plain(*args, **kwargs)

        with baseline(name), plain_forms(name):
            setattr(owner, attr, counted)
            with torch.no_grad():
                _velocity(gen, inputs, iterations=1)
        assert calls, f"the plain form of {name!r} never ran"
        assert getattr(owner, attr) is not plain  # restored after the block


def test_gradients_through_the_optimised_paths_equal_the_plain_forms():
    gen = _generator()
    inputs = _inputs(gen.config, 6, 5)

    def grads():
        gen.zero_grad()
        _velocity(gen, inputs, iterations=2).square().mean().backward()
        return {n: p.grad.clone() for n, p in gen.named_parameters() if p.grad is not None}

    fast = grads()
    with plain_forms():
        plain = grads()
    assert fast.keys() == plain.keys() and len(fast) > 50
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_inference_caches_follow_weight_changes():
    """The fused projection, AFNO's real weights, the conv's taps and the RG-LRU's decay rate are cached at
    inference; changing a weight in place (a fine-tune step, load_state_dict) must rebuild them."""
    gen = _generator()
    inputs = _inputs(gen.config, 4, 4)
    with torch.no_grad():
        before = _velocity(gen, inputs)
        gen.core[0].mixer.gate.weight.add_(0.5)
        gen.core[0].mixer.fourier.w1.mul_(2.0)
        gen.core[1].mixer.recurrent.lru.a_param.sub_(1.0)
        gen.core[1].mixer.recurrent.conv.weight.mul_(1.5)
        after = _velocity(gen, inputs)
        with plain_forms():
            plain = _velocity(gen, inputs)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)


def test_bundled_model_generation_equals_the_plain_forms():
    from iris import IrisPipeline

    pipe = IrisPipeline.from_pretrained()
    run = lambda: pipe.generate("a red apple on a blue background", negative_prompt="blurry", steps=2,
                                iterations=4, guidance=3.0, seed=3).latents
    fast = run()
    with plain_forms():
        plain = run()
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def _contiguous_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(memory_format=torch.contiguous_format)


def test_channels_last_conv_weights_equal_the_plain_layout():
    """The VAE, preview decoder and adapters hold their conv weights channels-last (faster convs on the CPU);
    every output equals the plain contiguous layout's within fp32 round-off."""
    from iris import IrisPipeline

    pipe = IrisPipeline.from_pretrained()
    convs = [m for part in (pipe.vae, pipe.previewer, pipe.adapters) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not convs[0].weight.is_contiguous()  # really the other layout, so the comparisons below mean something
    pipe.to("cpu")  # moving keeps the layout
    assert pipe.vae.decoder.stem.weight.is_contiguous(memory_format=torch.channels_last)

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, pipe.config.vae.latent_channels, 8, 6, generator=g)
    images = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    plain_vae, plain_preview = _contiguous_copy(pipe.vae), _contiguous_copy(pipe.previewer)
    with torch.inference_mode():
        torch.testing.assert_close(pipe.vae.decode(z), plain_vae.decode(z), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pipe.vae.encode(images), plain_vae.encode(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pipe.previewer(z), plain_preview(z), atol=1e-5, rtol=1e-5)
        control = pipe.adapters["control_canny"]
        torch.testing.assert_close(control(images), _contiguous_copy(control)(images), atol=1e-5, rtol=1e-5)
