"""IrisPipeline (iris.pipeline) end to end on the nano variant with random, perturbed weights."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from iris import IrisPipeline
from iris.errors import GenerationCancelled, HubOfflineError, InvalidInputError, ModelLoadError
from iris.hub import load_weights

FAST = dict(steps=2, iterations=2, width=32, height=32)  # a 2x2 latent grid: cheap


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def saved(nano_pipe, tmp_path_factory) -> Path:
    """The perturbed nano pipeline written once with save_pretrained."""
    return nano_pipe.save_pretrained(tmp_path_factory.mktemp("models") / "nano")


def clone_folder(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A model folder whose files link to `src`'s (cheap); files named in `skip` are left out."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


# -------------------------------------------------------------------------------------------- generate


def test_generate_returns_native_size_image_and_params(nano_pipe):
    res = nano_pipe.generate("a red apple on a blue background", steps=2, iterations=1, guidance=2.5, seed=11)
    native = nano_pipe.config.resolution
    assert isinstance(res.image, Image.Image) and res.image.mode == "RGB"
    assert res.image.size == (native, native)
    assert len(res.images) == 1
    p = res.params
    expected = {"prompt": "a red apple on a blue background", "seed": 11, "steps": 2, "iterations": 1,
                "guidance": 2.5, "width": native, "height": native}
    assert {k: p[k] for k in expected} == expected
    f = nano_pipe.config.vae.downsample
    assert res.latents.shape == (1, nano_pipe.config.vae.latent_channels, native // f, native // f)
    assert res.timings["nfe"] == 2 * 2  # two steps, with CFG
    json.dumps(p)  # params are plain JSON (they go into PNG metadata)


def test_defaults_come_from_the_config(nano_pipe):
    d = nano_pipe.config.sampler
    budget = nano_pipe.check_budget()
    assert (budget.steps, budget.iterations, budget.guidance, budget.sampler) == (d.steps, d.iterations,
                                                                                   d.guidance, d.sampler)
    res = nano_pipe.generate("x", steps=1, width=16, height=16)
    assert (res.params["iterations"], res.params["guidance"]) == (d.iterations, d.guidance)
    assert nano_pipe.check_size(None, None) == (nano_pipe.config.resolution,) * 2


def test_seed_determines_the_image(nano_pipe):
    a = nano_pipe.generate("a cat", seed=3, **FAST).image
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(1000)
    b = nano_pipe.generate("a cat", seed=3, **FAST).image
    c = nano_pipe.generate("a cat", seed=4, **FAST).image
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_prompt_and_iterations_change_the_image(nano_pipe):
    base = pixels(nano_pipe.generate("a cat", seed=1, **FAST).image)
    other_prompt = pixels(nano_pipe.generate("a dog", seed=1, **FAST).image)
    more_iterations = pixels(nano_pipe.generate("a cat", seed=1, **{**FAST, "iterations": 3}).image)
    assert not np.array_equal(base, other_prompt)
    assert not np.array_equal(base, more_iterations)


@pytest.mark.parametrize("asked,expected", [(100, 96), (130, 128), (1, 16), (64, 64), ("80", 80)])
def test_sizes_round_to_the_latent_grid(nano_pipe, asked, expected):
    assert nano_pipe.latent_factor == 16
    res = nano_pipe.generate("x", steps=1, iterations=1, width=asked, height=48)
    assert res.image.size == (expected, 48)
    assert res.params["width"] == expected and res.params["height"] == 48


def test_num_images(nano_pipe):
    res = nano_pipe.generate("x", num_images=2, **FAST)
    assert len(res.images) == 2 and res.params["num_images"] == 2
    assert not np.array_equal(pixels(res.images[0]), pixels(res.images[1]))


# --------------------------------------------------------------------------------------------- previews


def test_preview_events_every_core_iteration(nano_pipe):
    events = []
    steps, iterations = 2, 3
    res = nano_pipe.generate("a tree", steps=steps, iterations=iterations, seed=2, width=48, height=32,
                             on_preview=events.append, preview_fraction=None)
    assert len(events) == steps * iterations
    assert [(e.step, e.iteration) for e in events] == [(s, i) for s in range(1, steps + 1)
                                                       for i in range(1, iterations + 1)]
    assert all(e.steps == steps and e.iterations == iterations for e in events)
    assert all(isinstance(e.image, Image.Image) and e.image.size == res.image.size for e in events)
    progress = [e.progress for e in events]
    assert all(a < b for a, b in zip(progress, progress[1:])) and progress[-1] == pytest.approx(1.0)
    assert events[4].label == "step 2/2 · iteration 2/3"
    assert all(b.elapsed >= a.elapsed for a, b in zip(events, events[1:]))
    # the previews change as the core iterates
    assert not np.array_equal(pixels(events[0].image), pixels(events[iterations - 1].image))


def test_previews_do_not_change_the_result(nano_pipe):
    plain = nano_pipe.generate("a tree", seed=9, **FAST)
    watched = nano_pipe.generate("a tree", seed=9, on_preview=lambda e: None, preview_fraction=None, **FAST)
    assert np.array_equal(pixels(plain.image), pixels(watched.image))


def test_throttled_previews_still_send_every_event(nano_pipe):
    events = []
    nano_pipe.generate("x", steps=2, iterations=3, width=32, height=32, on_preview=events.append,
                       preview_fraction=0.0)
    assert len(events) == 6
    assert events[0].image is not None  # nothing spent yet: the first preview is always allowed
    assert all(e.image is None for e in events[1:])


def test_cancel_from_preview_stops_the_run_and_the_next_run_works(nano_pipe):
    events = []

    def cancel_at_third(event):
        events.append(event)
        if len(events) == 3:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        nano_pipe.generate("x", steps=3, iterations=4, on_preview=cancel_at_third, width=32, height=32)
    assert len(events) == 3
    after = []
    res = nano_pipe.generate("x", steps=2, iterations=2, on_preview=after.append, width=32, height=32, seed=5)
    assert len(after) == 4 and res.image.size == (32, 32)
    again = nano_pipe.generate("x", steps=2, iterations=2, width=32, height=32, seed=5)
    assert np.array_equal(pixels(res.image), pixels(again.image))


def test_large_exit_threshold_gives_fewer_events(nano_pipe):
    events = []
    steps, iterations = 2, 8
    res = nano_pipe.generate("x", steps=steps, iterations=iterations, exit_threshold=1.0, width=32, height=32,
                             on_preview=events.append)
    assert 0 < len(events) < steps * iterations
    assert {e.step for e in events} == {1, 2}  # every step still runs
    assert res.params["exit_threshold"] == 1.0
    full = []
    nano_pipe.generate("x", steps=1, iterations=iterations, exit_threshold=0, width=16, height=16, guidance=1,
                       on_preview=full.append)
    assert len(full) == iterations  # 0 means off


def test_guidance_one_skips_cfg(nano_pipe):
    no_cfg = nano_pipe.generate("a red apple", guidance=1.0, seed=1, **FAST)
    cfg = nano_pipe.generate("a red apple", guidance=3.0, seed=1, **FAST)
    assert no_cfg.timings["nfe"] == FAST["steps"]
    assert cfg.timings["nfe"] == 2 * FAST["steps"]
    assert not np.array_equal(pixels(no_cfg.image), pixels(cfg.image))


@pytest.mark.parametrize("max_t", [1.0, 0.5])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("guidance", [0.0, 1.0, 3.0])
def test_cost_matches_the_network_evaluations_the_pipeline_runs(nano_pipe, monkeypatch, guidance, sampler, max_t):
    """`cost()` (what the studio and the CLI show) against a count of the generator's real evaluations:
    the batch rows of every `decode` call outside previews; with a guidance interval (max_t 0.5) too."""
    monkeypatch.setattr(nano_pipe.config.sampler, "guidance_max_t", max_t)
    counted = []
    real_decode = type(nano_pipe.generator).decode
    monkeypatch.setattr(type(nano_pipe.generator), "decode",
                        lambda self, s, e, c: counted.append(s.shape[0]) or real_decode(self, s, e, c))
    iterated = []
    real_iterate = type(nano_pipe.generator).iterate
    monkeypatch.setattr(type(nano_pipe.generator), "iterate",
                        lambda self, s, *a: iterated.append(s.shape[0]) or real_iterate(self, s, *a))
    res = nano_pipe.generate("a red apple", negative_prompt="blurry", steps=3, iterations=2, guidance=guidance,
                             sampler=sampler, seed=1, width=32, height=32)
    cost = nano_pipe.cost(3, 2, guidance, sampler)
    assert sum(counted) == cost.nfe == res.timings["nfe"]
    assert sum(iterated) == cost.core_iterations == cost.nfe * 2
    assert cost.calls == (5 if sampler == "heun" else 3) and cost.effective_depth == nano_pipe.effective_depth(2)
    if max_t == 1.0:
        assert cost.nfe == cost.calls * (2 if guidance == 3.0 else 1)
    else:  # 3 steps: t = 1, 2/3, 1/3; only velocities at 1/3 are guided (one for euler, two for heun)
        assert cost.nfe == cost.calls + (guidance == 3.0) * (2 if sampler == "heun" else 1)
    assert res.params["guidance_max_t"] == max_t


def test_a_step_outside_the_guidance_interval_is_the_prompt_alone(nano_pipe, monkeypatch):
    monkeypatch.setattr(nano_pipe.config.sampler, "guidance_max_t", 0.9)
    one_step = dict(steps=1, iterations=2, width=32, height=32, seed=4, negative_prompt="blurry")
    guided = nano_pipe.generate("a red apple", guidance=3.0, **one_step)  # its only step is at t = 1
    alone = nano_pipe.generate("a red apple", guidance=1.0, **one_step)
    assert guided.timings["nfe"] == 1
    assert np.array_equal(pixels(guided.image), pixels(alone.image))
    two = nano_pipe.generate("a red apple", guidance=3.0, **{**one_step, "steps": 2})  # t = 1, then 0.5 guided
    assert two.timings["nfe"] == 3
    assert not np.array_equal(pixels(two.image), pixels(nano_pipe.generate("a red apple", guidance=1.0,
                                                                            **{**one_step, "steps": 2}).image))


def test_guidance_zero_is_the_negative_prompt_alone(nano_pipe):
    zero = nano_pipe.generate("a red apple", negative_prompt="a dog", guidance=0.0, seed=2, **FAST)
    negative = nano_pipe.generate("a dog", guidance=1.0, seed=2, **FAST)
    assert zero.timings["nfe"] == FAST["steps"]
    assert np.array_equal(pixels(zero.image), pixels(negative.image))


@pytest.mark.parametrize("sampler", ["heun", "consistency"])
def test_other_samplers(nano_pipe, sampler):
    res = nano_pipe.generate("x", sampler=sampler, seed=1, **FAST)
    assert res.params["sampler"] == sampler and res.image.size == (32, 32)


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("kwargs,name", [
    ({"steps": 0}, "steps"),
    ({"steps": "abc"}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"iterations": 65}, "iterations"),
    ({"iterations": 0}, "iterations"),
    ({"guidance": -1}, "guidance"),
    ({"guidance": float("nan")}, "guidance"),
    ({"guidance": float("inf")}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"width": 0}, "width"),
    ({"height": 5000}, "height"),
    ({"prompt": "a" * 10001}, "prompt"),
    ({"prompt": 123}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"negative_prompt": 5}, "negative_prompt"),
    ({"sampler": "ddim"}, "sampler"),
    ({"exit_threshold": 2.0}, "exit_threshold"),
    ({"num_images": 0}, "num_images"),
])
def test_bad_inputs_raise_invalid_input(nano_pipe, kwargs, name):
    args = {"prompt": "x", "steps": 1, "iterations": 1, "width": 32, "height": 32, **kwargs}
    with pytest.raises(InvalidInputError, match=name) as info:
        nano_pipe.generate(**args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt", [
    "a" * 10_000,
    "",
    None,
    "🍎🐱🌈 on a 青い background — naïve café",
    "\x00nul and\ttabs\nnewlines",
    "👨‍👩‍👧‍👦" * 200,
], ids=["10000-chars", "empty", "none", "unicode-emoji", "control-chars", "emoji-zwj-x200"])
def test_unusual_prompts_work(nano_pipe, prompt):
    res = nano_pipe.generate(prompt, steps=1, iterations=1, width=32, height=32)
    assert res.image.size == (32, 32)
    assert isinstance(res.params["prompt"], str)


# ------------------------------------------------------------------------------------ save and load


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_and_load_round_trip_is_exact(nano_pipe, saved):
    assert sorted(f.name for f in saved.iterdir()) == [
        "config.json", "generator.safetensors", "preview.safetensors", "text_encoder.safetensors",
        "vae.safetensors"]
    loaded = IrisPipeline.from_pretrained(saved)
    assert loaded.config == nano_pipe.config
    for part in ("generator", "vae", "text_encoder", "previewer"):
        assert _state_equal(getattr(loaded, part), getattr(nano_pipe, part)), part
    a = nano_pipe.generate("a green frog", seed=21, **FAST)
    b = loaded.generate("a green frog", seed=21, **FAST)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    assert torch.equal(a.latents, b.latents)


def test_loading_builds_nothing_random_and_reads_each_file_once(nano_pipe, saved, monkeypatch):
    """from_pretrained builds on the meta device (no random initialisation to throw away), fills every
    tensor from its file, rebuilds the buffers derived from the config, and opens each weights file once to
    check it and once to read it (LOAD_BLOCK_BYTES is far above these files' sizes)."""
    import safetensors

    from iris import hub

    opened: list[str] = []
    real = safetensors.safe_open

    def counting(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    init_on = []
    real_init = torch.nn.init.kaiming_uniform_

    def spy(tensor, *args, **kwargs):
        init_on.append(tensor.device.type)
        return real_init(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", spy)
    loaded = IrisPipeline.from_pretrained(saved)
    assert init_on and set(init_on) == {"meta"}  # no real tensor was randomly initialised, then thrown away
    for part in ("generator", "vae", "text_encoder", "previewer"):
        module = getattr(loaded, part)
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()]), part
        assert _state_equal(module, getattr(nano_pipe, part)), part
    for name, buf in nano_pipe.text_encoder.named_buffers():  # derived, not stored: rebuilt the same
        assert torch.equal(dict(loaded.text_encoder.named_buffers())[name], buf), name
    for name, buf in nano_pipe.generator.named_buffers():
        assert torch.equal(dict(loaded.generator.named_buffers())[name], buf), name
    files = [n for n in opened if n != "preview.safetensors"]
    assert {n: files.count(n) for n in set(files)} == {"generator.safetensors": 2, "vae.safetensors": 2,
                                                      "text_encoder.safetensors": 3}  # + its dtype check
    assert hub.LOAD_BLOCK_BYTES > (saved / "generator.safetensors").stat().st_size


def test_save_in_float16_loads_and_generates(nano_pipe, tmp_path):
    folder = nano_pipe.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert load_file(str(folder / "generator.safetensors"))["final.weight"].dtype == torch.float16
    half_size = (folder / "generator.safetensors").stat().st_size
    loaded = IrisPipeline.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in loaded.generator.parameters())
    for (name, p), q in zip(nano_pipe.generator.named_parameters(), loaded.generator.parameters()):
        torch.testing.assert_close(q, p.half().float(), msg=name)
    res = loaded.generate("a green frog", seed=21, **FAST)
    assert res.image.size == (32, 32)
    full_size = sum(p.numel() for p in nano_pipe.generator.state_dict().values()) * 4
    assert half_size < 0.6 * full_size


# ------------------------------------------------------------------------------------- loading errors


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError):
        IrisPipeline.from_pretrained(tmp_path / "does-not-exist")


def test_folder_without_config(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("config.json",))
    with pytest.raises(ModelLoadError, match="config.json"):
        IrisPipeline.from_pretrained(folder)


def test_file_instead_of_folder(saved):
    with pytest.raises(ModelLoadError, match="folder"):
        IrisPipeline.from_pretrained(saved / "config.json")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"generator": {"dim": "wide"}}', '{"unknown_key": 1}',
                                  "\xff\xfe garbage"])
def test_malformed_config(saved, tmp_path, text):
    folder = clone_folder(saved, tmp_path / "m", skip=("config.json",))
    (folder / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(ModelLoadError):
        IrisPipeline.from_pretrained(folder)


def test_config_that_builds_an_invalid_model(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("config.json",))
    cfg = json.loads((saved / "config.json").read_text())
    cfg["generator"]["afno_blocks"] = 7  # dim not divisible
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="invalid model"):
        IrisPipeline.from_pretrained(folder)


@pytest.mark.parametrize("patch", [
    {"generator": {"heads": 0}},
    {"vae": {"channels": []}},
    {"text": {"heads": 3}},  # text dim 256 not divisible by 3: torch asserts
])
def test_invalid_config_values_raise_model_load_error(saved, tmp_path, patch):
    folder = clone_folder(saved, tmp_path / "m", skip=("config.json",))
    cfg = json.loads((saved / "config.json").read_text())
    for part, values in patch.items():
        cfg[part].update(values)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError):
        IrisPipeline.from_pretrained(folder)


def test_missing_tensor(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("generator.safetensors",))
    state = load_file(str(saved / "generator.safetensors"))
    del state["final.weight"]
    save_file(state, str(folder / "generator.safetensors"))
    with pytest.raises(ModelLoadError, match="final.weight"):
        IrisPipeline.from_pretrained(folder)


def test_unexpected_tensor(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("vae.safetensors",))
    state = load_file(str(saved / "vae.safetensors"))
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(folder / "vae.safetensors"))
    with pytest.raises(ModelLoadError, match="extra.weight"):
        IrisPipeline.from_pretrained(folder)


def test_mis_shaped_tensor(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("generator.safetensors",))
    state = load_file(str(saved / "generator.safetensors"))
    state["inject.bias"] = torch.zeros(state["inject.bias"].shape[0] + 1)
    save_file(state, str(folder / "generator.safetensors"))
    with pytest.raises(ModelLoadError, match="inject.bias"):
        IrisPipeline.from_pretrained(folder)


def test_corrupt_safetensors(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("vae.safetensors",))
    (folder / "vae.safetensors").write_bytes(b"\x00" * 7 + b"this is not a safetensors file")
    with pytest.raises(ModelLoadError, match="vae.safetensors"):
        IrisPipeline.from_pretrained(folder)


def test_missing_text_encoder_weights_for_tiny_encoder(saved, tmp_path):
    folder = clone_folder(saved, tmp_path / "m", skip=("text_encoder.safetensors",))
    with pytest.raises(ModelLoadError, match="text_encoder"):
        IrisPipeline.from_pretrained(folder)


class _Tripwire:
    """Unpickling this creates a file: proof that somebody unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_weights_are_never_loaded(saved, tmp_path):
    marker = tmp_path / "UNPICKLED"
    folder = clone_folder(saved, tmp_path / "m", skip=("generator.safetensors",))
    payload = pickle.dumps(_Tripwire(marker))
    (folder / "generator.bin").write_bytes(payload)
    with pytest.raises(ModelLoadError, match="generator"):
        IrisPipeline.from_pretrained(folder)
    for name in ("x.pt", "weights.bin", "model.ckpt", "model.PTH"):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ModelLoadError, match="pickle"):
            load_weights(torch.nn.Linear(2, 2), path)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_weights(torch.nn.Linear(2, 2), Path("x.pt"))  # refused by name, before looking for the file
    assert not marker.exists()


def test_offline_hub_id(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # so "someone/some-model" is not a local folder by accident
    with pytest.raises(HubOfflineError) as info:
        IrisPipeline.from_pretrained("someone/some-model")
    message = str(info.value)
    assert "someone/some-model" in message and "offline" in message.lower()
    assert "\n" not in message


def test_not_a_folder_nor_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="hub id") as info:
        IrisPipeline.from_pretrained("no/such/thing/here")
    assert not isinstance(info.value, HubOfflineError)


def test_parameter_counts_and_depth(nano_pipe):
    counts = nano_pipe.num_parameters()
    assert counts["generator"] == sum(p.numel() for p in nano_pipe.generator.parameters())
    assert 1e6 < counts["generator"] < 10e6
    assert nano_pipe.effective_depth(8) == 2 + 8 * nano_pipe.config.generator.core_layers + 2
    assert math.isfinite(sum(counts.values()))


def test_saved_folder_is_self_contained(saved, tmp_path):
    # a copy (not links) of the folder elsewhere loads the same
    copy = Path(shutil.copytree(saved, tmp_path / "copy"))
    loaded = IrisPipeline.from_pretrained(str(copy))
    assert loaded.source == str(copy)
    assert loaded.config.name == "iris-nano"


def test_guidance_zero_is_the_unconditional_velocity(nano_pipe):
    import numpy as np

    zero = nano_pipe.generate("a red apple", negative_prompt="a blue car", guidance=0.0, seed=3, **FAST)
    plain = nano_pipe.generate("a blue car", guidance=1.0, seed=3, **FAST)
    diff = np.abs(np.asarray(zero.images[0], int) - np.asarray(plain.images[0], int))
    assert diff.max() <= 1


@pytest.mark.slow
def test_compiled_core_gives_the_same_image():
    import shutil as sh

    if sh.which("cc") is None and sh.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler (none on PATH)")
    from conftest import perturb, tiny_config

    from iris.config import IrisConfig, TextConfig

    config = IrisConfig(name="compile-test", resolution=64, generator=tiny_config(latent_channels=16, text_dim=32),
                        text=TextConfig(kind="tiny", dim=32, heads=2, layers=1, max_length=16))
    pipe = IrisPipeline.from_config(config)
    perturb(pipe.generator, std=0.02, seed=0)
    eager = pixels(pipe.generate("a cat", steps=2, iterations=3, guidance=2.0, seed=5).images[0])
    pipe.compile()
    lrus = [m for m in pipe.generator.modules() if hasattr(m, "method") and hasattr(m, "chunk")]
    assert lrus and all(m.method == "blocked" for m in lrus)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = pipe.generate("a cat", steps=2, iterations=3, guidance=2.0, seed=5).images[0]
    assert np.abs(pixels(compiled).astype(int) - eager.astype(int)).max() <= 1
    # every iteration and step ran one graph: no graph breaks, no recompiling per iteration index
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
