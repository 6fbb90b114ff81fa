"""Export IRIS to ONNX for mobile and edge runtimes: `iris export --model M --format onnx OUT_DIR`.

OUT_DIR/
  manifest.json                    model, resolutions, latent shapes, graphs (files, inputs, outputs, ops),
                                   sampler defaults, VAE scale/shift, dtype, how the seeded noise is drawn
  text_encoder.onnx                ids [B, L] int64 -> text [B, L, Dt], text_mask [B, L] bool
  <W>x<H>/embed.onnx               z [B, C, h, w], t [B], text, text_mask -> c [B, D], e [B, h, w, D]
  <W>x<H>/iterate.onnx             s, e [B, h, w, D], c, text, text_mask, iteration (int64 scalar) -> s_next
  <W>x<H>/decode.onnx              s, e, c -> velocity v [B, C, h, w]
  <W>x<H>/vae_decoder.onnx         latents [B, C, h, w] -> image [B, 3, H, W] in [-1, 1] (not clamped)
  bpe_simple_vocab_16e6.txt.gz     open_clip's BPE vocabulary (the runner's tokenizer)
  onnx_runner.py                   the reference runner (onnxruntime + numpy, no torch)

The generator is exported in pieces (one core iteration per graph call, the iteration index an input) so a
runtime loops the shared core itself: the file holds one copy of the shared core weights, any budget r runs
from the same files, and every iteration can be previewed. The batch axis is dynamic (1, or 2 with
classifier-free guidance); the spatial size of each resolution is static, because the DFT matrices of the
Fourier path, the Manhattan-attention mask, the scan chunks and the Coda's windows are constants of it.

For export the generator is reconfigured on a copy: AFNO uses the DFT-as-matmul path and the RG-LRU the
"matrix" scan (a masked decay matrix per fixed chunk), so every op is a standard one and nothing depends on
the data. `check_export` measures each graph against torch's normal path (FFT or DFT as configured, cumsum
scan) on the same inputs.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import sampling
from .errors import InvalidInputError, IrisError
from .models.generator import IrisGenerator, TextCondition
from .models.grfm import AFNO2D, RGLRU, _dense_dft_mats, _separable_mats
from .models.vae import WaveletVAE
from .models.wavelet import haar_filters

OPSET = 17
SCAN_CHUNK = 16  # tokens per chunk of the exported (matrix-form) RG-LRU scan
FORMAT_VERSION = 1
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
RUNNER_FILE = "onnx_runner.py"
GENERATOR_GRAPHS = ("embed", "iterate", "decode", "vae_decoder")


class ExportError(IrisError):
    """A model that cannot be exported, or a missing optional dependency (onnx, onnxruntime)."""


def require_onnx(runtime: bool = False) -> None:
    """Raise a one-line ExportError when the `onnx` extra (onnx, and onnxruntime if asked) is missing."""
    names = ["onnx"] + (["onnxruntime"] if runtime else [])
    for name in names:
        try:
            __import__(name)
        except ImportError as err:
            raise ExportError(f"{name} is not installed; pip install 'iris-studio[onnx]' (onnx, onnxruntime)") from err


# ------------------------------------------------------------------------------------------------- graphs


def exportable_generator(generator: IrisGenerator, scan_chunk: int = SCAN_CHUNK) -> IrisGenerator:
    """A float32 eval copy of `generator` on the CPU with only standard, data-independent ops.

    AFNO -> the "dft" path (matmuls with constant cos/sin matrices); RG-LRU -> the "matrix" scan (a masked
    decay matrix per fixed chunk of `scan_chunk` tokens; the "cumsum" form picks its chunk length from the
    data). The scan is exact for any chunk length; the matrix form costs O(chunk) per token, so a short chunk
    is faster (16 vs 64: about 1.5x on a whole core iteration of the nano at 128 px, onnxruntime CPU).
    """
    if scan_chunk < 1:
        raise InvalidInputError(f"scan_chunk must be >= 1, got {scan_chunk}")
    gen = copy.deepcopy(generator).float().cpu().eval()
    for module in gen.modules():
        if isinstance(module, AFNO2D):
            module.impl = "dft"
        elif isinstance(module, RGLRU):
            module.method, module.chunk = "matrix", min(module.chunk, scan_chunk)
    gen.config.fourier_impl, gen.config.scan_method = "dft", "matrix"
    gen.config.scan_chunk = min(gen.config.scan_chunk, scan_chunk)
    return gen


class TextGraph(nn.Module):
    """ids [B, L] int64 -> (text [B, L, Dt], text_mask [B, L] bool)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.encoder(ids)
        return cond.tokens, cond.mask


class EmbedGraph(nn.Module):
    """Conditioning and Prelude: (z, t, text, text_mask) -> (c [B, D], e [B, h, w, D])."""

    def __init__(self, gen: IrisGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor):
        c = self.gen.condition(t, TextCondition(text, text_mask))
        return c, self.gen.embed(z, c)


class IterateGraph(nn.Module):
    """One core iteration with the 1-based iteration index as a tensor input: -> s_next [B, h, w, D].

    Mirrors `IrisGenerator.iterate`, whose index is a Python int (`min(i - 1, max - 1)` cannot be traced).
    """

    def __init__(self, gen: IrisGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, s, e, c, text, text_mask, iteration):
        g = self.gen
        idx = (iteration.reshape(1) - 1).clamp(0, g.config.max_iterations - 1).expand(s.shape[0])
        mod = g.core_mod(nn.functional.silu(c + g.iter_embed(idx)))
        x = g.inject(torch.cat([s, e], dim=-1))
        cond = TextCondition(text, text_mask)
        for layer in g.core:
            x = layer(x, mod, cond)
        return g.state_norm(x)


class DecodeGraph(nn.Module):
    """Coda: (s, e, c) -> velocity [B, C, h, w]."""

    def __init__(self, gen: IrisGenerator):
        super().__init__()
        self.gen = gen

    def forward(self, s: torch.Tensor, e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.gen.decode(s, e, c)


class VaeDecoderGraph(nn.Module):
    """Scaled latents [B, C, h, w] -> image [B, 3, H, W] in [-1, 1] (not clamped).

    `WaveletVAE.decode` with the inverse-Haar filters as a constant: `idwt` builds them from the traced
    channel count, which the TorchScript exporter cannot use as a kernel shape.
    """

    def __init__(self, vae: WaveletVAE):
        super().__init__()
        self.vae = vae
        self.register_buffer("haar", haar_filters(vae.config.image_channels), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        y = self.vae.decoder(latents / cfg.scale + cfg.shift)
        return F.conv_transpose2d(y, self.haar.to(y), stride=2, groups=cfg.image_channels)


GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text_encoder": (("ids",), ("text", "text_mask")),
    "embed": (("z", "t", "text", "text_mask"), ("c", "e")),
    "iterate": (("s", "e", "c", "text", "text_mask", "iteration"), ("s_next",)),
    "decode": (("s", "e", "c"), ("v",)),
    "vae_decoder": (("latents",), ("image",)),
}


# ------------------------------------------------------------------------------------------------ helpers


def parse_resolution(value: Any) -> tuple[int, int]:
    """128, "128", "160x96" or (160, 96) -> (width, height)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        w, h = value
    elif isinstance(value, int) and not isinstance(value, bool):
        w = h = value
    elif isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise InvalidInputError(f"resolution must be WIDTH or WIDTHxHEIGHT, got {value!r}")
        w, h = int(parts[0]), int(parts[-1])
    else:
        raise InvalidInputError(f"resolution must be WIDTH or WIDTHxHEIGHT, got {value!r}")
    return int(w), int(h)


@contextmanager
def _export_mode():
    """No autograd, no fused transformer fast path (not exportable), quiet tracer; clean caches after."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        _dense_dft_mats.cache_clear()  # tracing may key the caches by traced sizes
        _separable_mats.cache_clear()


def _export(module: nn.Module, args: tuple, path: Path, name: str, opset: int) -> None:
    inputs, outputs = GRAPH_IO[name]
    dynamic = {n: {0: "batch"} for n in inputs + outputs if n != "iteration"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=list(inputs),
                      output_names=list(outputs), dynamic_axes=dynamic, do_constant_folding=True)


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def graph_entry(path: Path, folder: Path) -> dict[str, Any]:
    """Manifest entry of one graph: file, size, inputs/outputs (name, dtype, shape) and its op types."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    io = lambda vis: [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(
        v.type.tensor_type.elem_type).name, "shape": _dims(v)} for v in vis]
    return {"file": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
            "inputs": io(model.graph.input), "outputs": io(model.graph.output),
            "ops": sorted({n.op_type for n in model.graph.node})}


def convert_to_fp16(path: Path) -> None:
    """Rewrite an ONNX file with float16 weights and compute; inputs and outputs stay float32."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as err:
        raise ExportError("fp16 export needs onnxruntime (its float16 converter); pip install onnxruntime") from err
    model = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(path))


def _vocab_path() -> Path:
    from open_clip.tokenizer import default_bpe

    return Path(default_bpe())


# -------------------------------------------------------------------------------------------------- export
def max_opset() -> int:
    """The newest opset torch's TorchScript exporter (the one used here, dynamo=False) writes: past it, the
    export failed with a RuntimeError and a dump of the whole graph."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))



def export_onnx(pipe: Any, out_dir: str | Path, resolutions: Iterable[Any] | None = None, *, fp16: bool = False,
                opset: int = OPSET, scan_chunk: int = SCAN_CHUNK) -> dict[str, Any]:
    """Export `pipe` (an IrisPipeline) as ONNX graphs plus manifest.json into `out_dir`; returns the manifest.

    resolutions: sizes as 128, "128" or "160x96" (default: the model's native size), each rounded to the
    latent grid like `generate` does. fp16: float16 weights and compute with float32 inputs and outputs.
    scan_chunk: tokens per chunk of the exported RG-LRU scan (see `exportable_generator`).
    """
    import json

    require_onnx(runtime=fp16)
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSET <= opset <= max_opset():
        raise InvalidInputError(f"opset must be between {OPSET} and {max_opset()} (the most torch's exporter "
                                f"writes), got {opset!r}")
    cfg = pipe.config
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    sizes: list[tuple[int, int]] = []
    for value in resolutions or [cfg.resolution]:
        size = pipe.check_size(*parse_resolution(value))
        if size not in sizes:
            sizes.append(size)
    gen = exportable_generator(pipe.generator, scan_chunk)
    vae = copy.deepcopy(pipe.vae).float().cpu().eval()
    text_encoder = copy.deepcopy(pipe.text_encoder).float().cpu().eval()
    ids = text_encoder.token_ids(["a red apple on a blue background", ""])
    files: dict[str, Path] = {}
    with _export_mode():
        cond = text_encoder(ids)
        text, mask = cond.tokens, cond.mask
        files["text_encoder"] = out / "text_encoder.onnx"
        _export(TextGraph(text_encoder), (ids,), files["text_encoder"], "text_encoder", opset)
        for width, height in sizes:
            key = f"{width}x{height}"
            ds = cfg.vae.downsample
            z = torch.randn(2, cfg.vae.latent_channels, height // ds, width // ds,
                            generator=torch.Generator().manual_seed(0))
            t = torch.full((2,), 0.5)
            c = gen.condition(t, TextCondition(text, mask))
            e = gen.embed(z, c)
            s = torch.randn(e.shape, generator=torch.Generator().manual_seed(1))
            it = torch.tensor(1, dtype=torch.int64)
            jobs = {"embed": (EmbedGraph(gen), (z, t, text, mask)),
                    "iterate": (IterateGraph(gen), (s, e, c, text, mask, it)),
                    "decode": (DecodeGraph(gen), (s, e, c)),
                    "vae_decoder": (VaeDecoderGraph(vae), (z,))}
            for name, (module, args) in jobs.items():
                files[f"{key}/{name}"] = out / key / f"{name}.onnx"
                _export(module, args, files[f"{key}/{name}"], name, opset)
    if fp16:
        for path in files.values():
            convert_to_fp16(path)
    shutil.copyfile(_vocab_path(), out / VOCAB_FILE)
    shutil.copyfile(Path(__file__).with_name(RUNNER_FILE), out / RUNNER_FILE)

    from .models.text import EOT, SOT

    g = cfg.generator
    manifest: dict[str, Any] = {
        "format": "iris-onnx",
        "format_version": FORMAT_VERSION,
        "model": cfg.name,
        "source": pipe.source,
        "dtype": "float16" if fp16 else "float32",
        "io_dtype": "float32",
        "opset": opset,
        "exporter": f"torch.onnx.export (TorchScript-based), torch {torch.__version__.split('+')[0]}",
        "design": "piecewise generator: embed once per NFE, iterate r times (iteration index is an input; "
                  "one copy of the shared core), decode once; classifier-free guidance as batch 2",
        "text": {"kind": cfg.text.kind, "max_length": cfg.text.max_length, "dim": cfg.text.dim,
                 "vocab_file": VOCAB_FILE, "sot": SOT, "eot": EOT, "tokenizer": "open_clip SimpleTokenizer (lower)",
                 # a compact vocabulary: only these ids reach the encoder, every other token is left out
                 "known_ids": sorted(known) if (known := pipe.text_encoder.known_ids()) is not None else None},
        "generator": {"dim": g.dim, "core_layers": g.core_layers, "max_iterations": g.max_iterations,
                      "state_init_std": g.state_init_std, "patch_size": g.patch_size, "fourier_impl": "dft",
                      "scan_method": "matrix", "scan_chunk": gen.config.scan_chunk},
        "sampler": asdict(cfg.sampler),
        "vae": {"scale": cfg.vae.scale, "shift": cfg.vae.shift, "downsample": cfg.vae.downsample,
                "latent_channels": cfg.vae.latent_channels, "applied_in_graph": True},
        "noise": {"generator": "torch CPU randn (mt19937, Box-Muller in blocks of 16), float32",
                  "latents": "manual_seed(seed)",
                  "core_state": "manual_seed((seed * a + b) % 2**63) with [a, b] = seed_streams.core_state, one "
                  "draw of [images, h, w, D] per network call, times state_init_std, shared by the guided and "
                  "unguided halves of the batch",
                  "consistency": "manual_seed((seed * a + b) % 2**63) with [a, b] = seed_streams.consistency, one "
                  "draw per step but the last",
                  "seed_streams": {k: list(v) for k, v in sampling.SEED_STREAMS.items()}},
        "graphs": {"text_encoder": graph_entry(files["text_encoder"], out)},
        "resolutions": {},
    }
    if fp16:  # onnxruntime's NCHWc layout pass (fp32 convs only) segfaults on the fp16 text encoder (ORT 1.32)
        manifest["onnxruntime"] = {"disabled_optimizers": ["NchwcTransformer"]}
    for width, height in sizes:
        key = f"{width}x{height}"
        ds = cfg.vae.downsample
        manifest["resolutions"][key] = {
            "width": width, "height": height,
            "latent_shape": [cfg.vae.latent_channels, height // ds, width // ds],
            "graphs": {name: graph_entry(files[f"{key}/{name}"], out) for name in GENERATOR_GRAPHS},
        }
    manifest["total_bytes"] = sum(p.stat().st_size for p in files.values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------------- check


def check_export(pipe: Any, folder: str | Path, resolution: str | None = None, prompt: str = "a red apple",
                 negative_prompt: str = "", seed: int = 0, threads: int | None = None) -> dict[str, float]:
    """Max abs difference between each exported graph (onnxruntime) and torch's normal path on the same inputs.

    Inputs: the prompt and negative prompt (batch 2, as with guidance), seeded latents and core state, t = 0.7,
    iteration 2. Keys: text_encoder, embed, iterate, decode, vae_decoder (and text_mask_equal: 0 or 1).
    """
    import numpy as np

    require_onnx(runtime=True)
    from .onnx_runner import OnnxIris

    runner = OnnxIris(folder, threads=threads)
    res = runner.resolution_key(*(parse_resolution(resolution) if resolution else (None, None)))
    shape = runner.manifest["resolutions"][res]["latent_shape"]
    gen, vae = pipe.generator, pipe.vae
    diff = lambda a, b: float(np.abs(np.asarray(a, dtype=np.float64) - b.detach().double().cpu().numpy()).max())
    out: dict[str, float] = {}
    with torch.inference_mode():
        tokens, mask = runner.encode_text([prompt, negative_prompt])
        ref = pipe.text_encoder(pipe.text_encoder.token_ids([prompt, negative_prompt]).to(pipe.device))
        out["text_encoder"] = diff(tokens, ref.tokens)
        out["text_mask_equal"] = float(np.array_equal(mask, ref.mask.cpu().numpy()))
        text = TextCondition(ref.tokens, ref.mask)
        t_np, m_np = ref.tokens.float().cpu().numpy(), ref.mask.cpu().numpy()
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((2, *shape), generator=g)
        t = torch.full((2,), 0.7)
        c_ort, e_ort = runner.session("embed", res).run(None, {"z": z.numpy(), "t": t.numpy(), "text": t_np,
                                                               "text_mask": m_np})
        dev = pipe.device
        c = gen.condition(t.to(dev), text)
        e = gen.embed(z.to(dev), c)
        out["embed"] = max(diff(c_ort, c), diff(e_ort, e))
        s = torch.randn(e.shape, generator=g).to(dev)
        c_np, e_np, s_np = c.float().cpu().numpy(), e.float().cpu().numpy(), s.float().cpu().numpy()
        s2 = runner.session("iterate", res).run(None, {"s": s_np, "e": e_np, "c": c_np, "text": t_np,
                                                       "text_mask": m_np,
                                                       "iteration": np.array(2, dtype=np.int64)})[0]
        s_ref = gen.iterate(s, e, c, text, 2)
        out["iterate"] = diff(s2, s_ref)
        v = runner.session("decode", res).run(None, {"s": s_ref.float().cpu().numpy(), "e": e_np, "c": c_np})[0]
        out["decode"] = diff(v, gen.decode(s_ref, e, c))
        img = runner.session("vae_decoder", res).run(None, {"latents": z.numpy()})[0]
        out["vae_decoder"] = diff(img, vae.decode(z.to(dev)))
    return out


def compare_images(a: Any, b: Any) -> tuple[int, float]:
    """(max, mean) absolute difference in pixel levels (0-255) between two images or uint8 arrays."""
    import numpy as np

    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    d = np.abs(x - y)
    return int(d.max()), float(d.mean())


def file_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """Bytes per graph ("text_encoder", "<W>x<H>/iterate", ...) from a manifest."""
    sizes = {"text_encoder": manifest["graphs"]["text_encoder"]["bytes"]}
    for key, res in manifest["resolutions"].items():
        for name, entry in res["graphs"].items():
            sizes[f"{key}/{name}"] = entry["bytes"]
    return sizes


__all__: Sequence[str] = ("export_onnx", "check_export", "compare_images", "exportable_generator", "ExportError",
                          "parse_resolution", "file_sizes")
