"""ONNX export (iris.export) and the onnxruntime reference runner (iris.onnx_runner).

A random-weight nano (perturbed, see conftest) is exported once; every graph is checked against torch on the
same inputs and the runner's images against `IrisPipeline.generate` for the same seed. The demo model is
exported too when it is present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'iris-studio[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'iris-studio[onnx]')")

import onnx  # noqa: E402

from iris.errors import InvalidInputError  # noqa: E402
from iris.export import check_export, compare_images, export_onnx, file_sizes, parse_resolution  # noqa: E402
from iris.hub import demo_model_path  # noqa: E402
from iris.onnx_runner import BPETokenizer, OnnxIris, TorchRandn, flow_timesteps  # noqa: E402

GRAPH_TOL = 1e-3  # max abs difference, onnxruntime vs torch, per graph (fp32)
PROMPT = "a red apple on a blue background"


@pytest.fixture(scope="module")
def exported(nano_pipe, tmp_path_factory) -> Path:
    """The perturbed nano, exported in fp32 at its native 128 px and at 64 px (a cheap 4x4 latent grid)."""
    out = tmp_path_factory.mktemp("onnx") / "nano"
    export_onnx(nano_pipe, out, resolutions=[128, "64x64"])
    return out


@pytest.fixture(scope="module")
def runner(exported) -> OnnxIris:
    return OnnxIris(exported, threads=2)


def max_pixel_diff_ok(a, b) -> tuple[int, float]:
    worst, mean = compare_images(a, b)
    assert worst <= 3 or mean <= 0.5, (worst, mean)
    return worst, mean


# -------------------------------------------------------------------------------------------- manifest


def test_manifest_describes_graphs_resolutions_and_defaults(exported, nano_pipe):
    m = json.loads((exported / "manifest.json").read_text())
    cfg = nano_pipe.config
    assert m["format"] == "iris-onnx" and m["dtype"] == "float32" and m["opset"] >= 17
    assert list(m["resolutions"]) == ["128x128", "64x64"]  # native first: the runner's default
    assert m["resolutions"]["128x128"]["latent_shape"] == [16, 8, 8]
    assert m["resolutions"]["64x64"]["latent_shape"] == [16, 4, 4]
    assert m["sampler"]["steps"] == cfg.sampler.steps and m["sampler"]["guidance"] == cfg.sampler.guidance
    assert (m["vae"]["scale"], m["vae"]["shift"]) == (cfg.vae.scale, cfg.vae.shift)
    assert m["text"]["max_length"] == cfg.text.max_length
    assert (exported / m["text"]["vocab_file"]).is_file() and (exported / "onnx_runner.py").is_file()
    it = m["resolutions"]["128x128"]["graphs"]["iterate"]
    assert [i["name"] for i in it["inputs"]] == ["s", "e", "c", "text", "text_mask", "iteration"]
    assert it["inputs"][0]["shape"] == ["batch", 8, 8, cfg.generator.dim]
    assert it["inputs"][-1] == {"name": "iteration", "dtype": "int64", "shape": []}
    assert m["graphs"]["text_encoder"]["outputs"][1]["dtype"] == "bool"
    assert m["generator"]["scan_method"] == "matrix" and m["generator"]["fourier_impl"] == "dft"
    lru = nano_pipe.generator.core[0].mixer.recurrent.lru  # exporting reconfigures a copy, not the pipeline
    assert (lru.method, lru.chunk) == (cfg.generator.scan_method, cfg.generator.scan_chunk)
    sizes = file_sizes(m)
    assert sum(sizes.values()) == m["total_bytes"]
    for name in sizes:
        path = exported / (f"{name}.onnx")
        assert path.stat().st_size == sizes[name]
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard ops only
        assert not {"FFT", "DFT", "Loop", "If", "Scan"} & {n.op_type for n in model.graph.node}


# ------------------------------------------------------------------------------------------- numerics


def test_each_graph_matches_torch(exported, nano_pipe):
    diffs = check_export(nano_pipe, exported, "128x128", prompt=PROMPT, negative_prompt="blurry")
    assert diffs.pop("text_mask_equal") == 1.0
    assert set(diffs) == {"text_encoder", "embed", "iterate", "decode", "vae_decoder"}
    for name, d in diffs.items():
        assert d < GRAPH_TOL, (name, d)


def test_iteration_index_is_an_input_and_is_clamped(runner, nano_pipe):
    from iris.models.generator import TextCondition

    g = torch.Generator().manual_seed(3)
    d = nano_pipe.config.generator.dim
    s, e = torch.randn(1, 4, 4, d, generator=g), torch.randn(1, 4, 4, d, generator=g)
    c, text = torch.randn(1, d, generator=g), torch.randn(1, 32, 256, generator=g)
    mask = torch.ones(1, 32, dtype=torch.bool)
    sess = runner.session("iterate", "64x64")
    outs = {}
    for i in (1, 5, 200):
        feeds = {"s": s.numpy(), "e": e.numpy(), "c": c.numpy(), "text": text.numpy(), "text_mask": mask.numpy(),
                 "iteration": np.array(i, dtype=np.int64)}
        outs[i] = sess.run(None, feeds)[0]
        with torch.inference_mode():
            ref = nano_pipe.generator.iterate(s, e, c, TextCondition(text, mask), i)
        assert np.abs(outs[i] - ref.numpy()).max() < GRAPH_TOL
    assert np.abs(outs[1] - outs[5]).max() > 1e-3


@pytest.mark.parametrize("options", [
    dict(steps=2, iterations=2, guidance=3.0, seed=7, negative_prompt="blurry"),   # CFG: batch 2
    dict(steps=2, iterations=3, guidance=1.0, seed=123456789012, sampler="heun"),  # no CFG: batch 1
    dict(steps=2, iterations=2, guidance=0.0, seed=3, sampler="consistency"),      # unconditional, fresh noise
])
def test_runner_image_equals_torch_pipeline(runner, nano_pipe, options):
    ours = runner.generate(PROMPT, width=64, height=64, **options)
    ref = nano_pipe.generate(PROMPT, width=64, height=64, **options)
    assert ours.shape == (1, 64, 64, 3) and ours.dtype == np.uint8
    assert np.asarray(ref.image).std() > 1.0  # a non-trivial image
    max_pixel_diff_ok(ours[0], ref.image)
    assert runner.timings["nfe"] == ref.timings["nfe"]


def test_runner_follows_the_guidance_interval(runner, nano_pipe, monkeypatch):
    """With guidance_max_t below 1, both runtimes guide only the late velocities, in the same places."""
    monkeypatch.setitem(runner.manifest["sampler"], "guidance_max_t", 0.5)
    monkeypatch.setattr(nano_pipe.config.sampler, "guidance_max_t", 0.5)
    options = dict(steps=3, iterations=2, guidance=3.0, seed=5, sampler="heun", negative_prompt="blurry")
    ours = runner.generate(PROMPT, width=64, height=64, **options)
    ref = nano_pipe.generate(PROMPT, width=64, height=64, **options)
    max_pixel_diff_ok(ours[0], ref.image)
    # heun, 3 steps: velocities at t = 1, 2/3, 2/3, 1/3, 1/3; only the two at 1/3 are guided
    assert runner.timings["nfe"] == ref.timings["nfe"] == 7 == nano_pipe.cost(3, 2, 3.0, "heun").nfe


def test_runner_previews_every_iteration(runner):
    seen = []
    runner.generate("a cat", steps=1, iterations=3, width=64, height=64,
                    on_iteration=lambda step, i, preview: seen.append((step, i, preview().shape)))
    assert seen == [(1, i, (1, 64, 64, 3)) for i in (1, 2, 3)]


def test_torch_noise_is_reproduced_without_torch():
    for seed in (0, 7, 2**40 + 5, (3 * 7919 + 17) % 2**63):
        g = torch.Generator("cpu").manual_seed(seed)
        ours = TorchRandn(seed)
        for shape in [(1, 16, 8, 8), (2, 4, 4, 128), (3, 5, 7), (17,)]:  # streams continue across draws
            np.testing.assert_allclose(ours.randn(shape), torch.randn(shape, generator=g).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="16"):
        TorchRandn(0).randn((3, 4))


def test_tokenizer_and_timesteps_match_the_engine():
    from open_clip.tokenizer import default_bpe

    from iris.models.text import tokenize
    from iris.sampling import flow_timesteps as torch_timesteps

    prompts = [PROMPT, "", "Hello, WORLD!!  it's 3.14 ünïcödé 😀 &amp;", "word " * 40, "two cats\non green_grass"]
    ours = BPETokenizer(default_bpe())
    for length in (32, 77):
        assert np.array_equal(ours(prompts, length), tokenize(prompts, length).numpy())
    known = frozenset(ours(["a red apple on a blue background, two cats"], 32)[0].tolist()) - {0}
    for length in (8, 32):  # a compact vocabulary leaves the same tokens out
        assert np.array_equal(ours(prompts, length, known), tokenize(prompts, length, known).numpy())
    for steps, shift in [(1, 1.0), (4, 1.0), (7, 3.0)]:
        assert np.allclose(flow_timesteps(steps, shift), torch_timesteps(steps, shift), atol=1e-12)


def test_copied_runner_generates_without_torch(exported, runner, tmp_path):
    """The export folder is self-contained: its onnx_runner.py runs with torch made unimportable."""
    out = tmp_path / "apple.png"
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['iris'] = None; "
            f"sys.argv = ['onnx_runner', {str(exported)!r}, {PROMPT!r}, '--seed', '4', '--steps', '1', "
            f"'--iterations', '2', '--resolution', '64x64', '--threads', '2', '-o', {str(out)!r}]; "
            f"runpy.run_path({str(exported / 'onnx_runner.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB"))
    ours = runner.generate(PROMPT, seed=4, steps=1, iterations=2, width=64, height=64)[0]
    assert np.array_equal(image, ours)


# -------------------------------------------------------------------------------------- fp16, CLIP, demo


def test_fp16_export_is_smaller_and_close(nano_pipe, exported, tmp_path):
    out = export_onnx(nano_pipe, tmp_path / "fp16", resolutions=["64"], fp16=True)
    fp32 = json.loads((exported / "manifest.json").read_text())
    assert out["dtype"] == "float16" and out["resolutions"]["64x64"]["graphs"]["iterate"]["inputs"][0]["dtype"] == \
        "float32"
    big, small = file_sizes(fp32), file_sizes(out)
    for name, size in small.items():
        assert size < 0.6 * big[name], name
    diffs = check_export(nano_pipe, tmp_path / "fp16", prompt=PROMPT)
    assert max(v for k, v in diffs.items() if k != "text_mask_equal") < 5e-2, diffs
    opts = dict(steps=2, iterations=2, seed=7, width=64, height=64)
    ours = OnnxIris(tmp_path / "fp16", threads=2).generate(PROMPT, **opts)
    max_pixel_diff_ok(ours[0], nano_pipe.generate(PROMPT, **opts).image)


def test_clip_text_tower_exports(tmp_path):
    """A CLIP-kind variant (its text tower shrunk to one 16-wide layer so the test stays quick)."""
    from conftest import perturb, tiny_config
    from open_clip.transformer import QuickGELU, TextTransformer
    from torch import nn

    from iris import IrisPipeline
    from iris.config import IrisConfig, TextConfig, VAEConfig
    from iris.models.generator import IrisGenerator
    from iris.models.text import ClipTextEncoder
    from iris.models.vae import WaveletVAE

    torch.manual_seed(0)
    cfg = IrisConfig(name="iris-clip-test", resolution=32, vae=VAEConfig(latent_channels=4, channels=(8, 8, 8)),
                     text=TextConfig(kind="clip", dim=16, max_length=77), generator=tiny_config())
    enc = ClipTextEncoder.__new__(ClipTextEncoder)
    nn.Module.__init__(enc)
    enc.config = cfg.text
    enc.model = TextTransformer(context_length=77, vocab_size=49408, width=16, heads=2, layers=1, output_dim=16,
                                act_layer=QuickGELU, output_tokens=True)
    pipe = IrisPipeline(cfg, perturb(IrisGenerator(cfg.generator), 0.05), WaveletVAE(cfg.vae), enc)
    export_onnx(pipe, tmp_path / "clip")
    diffs = check_export(pipe, tmp_path / "clip", prompt="a cat")
    assert diffs.pop("text_mask_equal") == 1.0 and max(diffs.values()) < GRAPH_TOL, diffs
    opts = dict(steps=2, iterations=2, seed=1)
    max_pixel_diff_ok(OnnxIris(tmp_path / "clip").generate("a cat", **opts)[0], pipe.generate("a cat", **opts).image)


@pytest.mark.skipif(not (demo_model_path() / "config.json").is_file(), reason="the bundled demo model is absent")
def test_demo_model_exports_and_matches(tmp_path):
    from iris import IrisPipeline

    pipe = IrisPipeline.from_pretrained()
    manifest = export_onnx(pipe, tmp_path / "demo")
    diffs = check_export(pipe, tmp_path / "demo", prompt=PROMPT)
    assert diffs.pop("text_mask_equal") == 1.0 and max(diffs.values()) < GRAPH_TOL, diffs
    opts = dict(steps=2, iterations=4, seed=1)
    ours = OnnxIris(tmp_path / "demo", threads=2).generate(PROMPT, **opts)
    ref = pipe.generate(PROMPT, **opts)
    assert ours.shape[1:3] == (manifest["resolutions"][next(iter(manifest["resolutions"]))]["height"],
                               manifest["resolutions"][next(iter(manifest["resolutions"]))]["width"])
    max_pixel_diff_ok(ours[0], ref.image)


# --------------------------------------------------------------------------------------- errors and CLI



def test_an_opset_past_the_exporters_newest_is_refused_before_anything_is_written(nano_pipe, tmp_path):
    """`iris export --opset 999` failed inside torch with a RuntimeError and a dump of the whole graph."""
    from iris.export import max_opset

    for bad in (max_opset() + 1, 999, True, 17.5):
        with pytest.raises(InvalidInputError, match=f"between 17 and {max_opset()}"):
            export_onnx(nano_pipe, tmp_path / "x", opset=bad)
    assert not (tmp_path / "x").exists()

def test_bad_settings_are_refused(nano_pipe, runner, tmp_path):
    assert parse_resolution("160x96") == (160, 96) and parse_resolution(128) == (128, 128)
    for bad in ("12x", "axb", "1x2x3", 1.5):
        with pytest.raises(InvalidInputError):
            parse_resolution(bad)
    with pytest.raises(InvalidInputError, match="opset"):
        export_onnx(nano_pipe, tmp_path / "x", opset=13)
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match="not a folder"):
        export_onnx(nano_pipe, tmp_path / "file")
    with pytest.raises(ValueError, match="not exported"):
        runner.generate("x", width=96, height=96)


def test_cli_export_plumbing(monkeypatch, tmp_path, capsys):
    import iris.export
    from iris.cli import main

    calls = {}

    def fake_export(pipe, out_dir, resolutions=None, fp16=False, opset=17):
        calls.update(model=pipe.config.name, out=out_dir, resolutions=resolutions, fp16=fp16, opset=opset)
        for value in resolutions or ():
            iris.export.parse_resolution(value)
        return {"model": pipe.config.name, "dtype": "float16", "resolutions": {"128x128": {}}, "total_bytes": 10,
                "graphs": {"text_encoder": {"bytes": 10}}}

    monkeypatch.setattr(iris.export, "export_onnx", fake_export)
    monkeypatch.setattr(iris.export, "file_sizes", lambda m: {"text_encoder": 10})
    out = tmp_path / "o"
    assert main(["export", "--model", "nano", "--format", "onnx", str(out), "--fp16", "--resolution", "128",
                 "--resolution", "64x32"]) == 0
    assert calls == dict(model="iris-nano", out=str(out), resolutions=["128", "64x32"], fp16=True, opset=17)
    assert "manifest.json" in capsys.readouterr().out
    assert main(["export", str(out), "--model", "nano", "--resolution", "12x"]) == 2


def test_position_embedded_generator_exports_and_matches(nano_pipe, tmp_path):
    import copy

    from iris.train.assemble import add_position_embedding

    pipe = copy.deepcopy(nano_pipe)
    add_position_embedding(pipe)
    with torch.no_grad():
        pipe.generator.pos_proj.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
    export_onnx(pipe, tmp_path / "placed", resolutions=["64x64"])
    diffs = check_export(pipe, tmp_path / "placed", "64x64", prompt="a cat on the left")
    assert diffs.pop("text_mask_equal") == 1.0 and max(diffs.values()) < GRAPH_TOL, diffs
