"""Reference runner for an exported IRIS model: prompt -> image with onnxruntime + numpy only (no torch).

    python onnx_runner.py OUT_DIR "a red apple on a blue background" --seed 1 -o apple.png
    # or, with the package installed:  python -m iris.onnx_runner OUT_DIR "..." -o apple.png

The export folder (written by `iris export --format onnx`) holds `manifest.json`, the graphs, the BPE
vocabulary and a copy of this file, so it runs on a machine that has only onnxruntime, numpy and `regex`
(`ftfy` is used when present, as open_clip does). This module imports nothing from `iris` on purpose.

It reproduces `IrisPipeline.generate`: the same tokenizer, the same sampler arithmetic (Euler / Heun /
consistency, classifier-free guidance, shifted timesteps, adaptive exit) and the same seeded noise: torch's
CPU `randn` (mt19937 + Box-Muller in blocks of 16) is re-implemented in numpy, so a seed gives the torch
pipeline's image, within float rounding.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import math
import struct
import sys
import time
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SAMPLERS = ("euler", "heun", "consistency")

# ------------------------------------------------------------------------------------ torch-compatible noise


def _mt19937_key(seed: int) -> np.ndarray:
    """mt19937's init_genrand state for the low 32 bits of `seed` (what torch.Generator.manual_seed does)."""
    key = np.empty(624, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for j in range(1, 624):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


class TorchRandn:
    """`torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` in numpy, as a stream.

    torch's CPU normal sampler for float32 tensors of >= 16 values: one 24-bit uniform per value from
    mt19937, Box-Muller over blocks of 16 (u1 = 1 - u[j], u2 = u[j + 8]), and the last 16 values redrawn
    from fresh uniforms when the size is not a multiple of 16. Matches torch to ~1 ulp (float libm).
    """

    def __init__(self, seed: int):
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_key(int(seed)), "pos": 624}}

    def _uniform(self, n: int) -> np.ndarray:
        raw = self._bits.random_raw(n).astype(np.uint64) & np.uint64(0xFFFFFF)
        return (raw.astype(np.float64) / float(1 << 24)).astype(np.float32)

    @staticmethod
    def _box_muller(u: np.ndarray) -> np.ndarray:
        blocks = u.reshape(-1, 16)
        radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - blocks[:, :8]))
        theta = np.float32(2.0 * math.pi) * blocks[:, 8:]
        return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if n < 16:
            raise ValueError(f"torch-compatible noise needs at least 16 values, got shape {shape}")
        out = self._uniform(n)
        full = n - n % 16
        out[:full] = self._box_muller(out[:full])
        if n % 16:
            out[n - 16:] = self._box_muller(self._uniform(16))
        return out.reshape(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ tokenizer


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class BPETokenizer:
    """open_clip's `SimpleTokenizer` (CLIP BPE, clean="lower") without torch: prompts -> int64 ids [B, L]."""

    SPECIAL = ("<start_of_text>", "<end_of_text>")

    def __init__(self, vocab_path: str | Path):
        merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(self.SPECIAL)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[self.SPECIAL[0]], self.encoder[self.SPECIAL[1]]
        self.cache: dict[str, str] = {t: t for t in self.SPECIAL}
        try:
            import regex

            self.pat = regex.compile("|".join(self.SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                     r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
        except ImportError:  # close approximation of the unicode classes with the standard library
            import re

            self.pat = re.compile("|".join(self.SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+""",
                                  re.IGNORECASE)
        try:
            import ftfy

            self._fix = ftfy.fix_text
        except ImportError:
            self._fix = lambda text: text

    def _clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._fix(text))).strip()
        return " ".join(text.split()).strip().lower()

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word[:-1], word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        byte_encoder = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pat.findall(self._clean(text)):
            token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def __call__(self, prompts: list[str], length: int, known: frozenset[int] | None = None) -> np.ndarray:
        """Ids [B, length]; `known` (a compact vocabulary): every other token is left out before truncating."""
        out = np.zeros((len(prompts), length), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids = [self.sot] + [i for i in self.encode(prompt) if known is None or i in known] + [self.eot]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out


# ---------------------------------------------------------------------------------------------- sampling


def flow_timesteps(steps: int, shift: float = 1.0, start: float = 1.0) -> list[float]:
    """`iris.sampling.flow_timesteps` (torch.linspace's float64 formula, then the shift warp)."""
    n = steps + 1
    step = (0.0 - start) / (n - 1)
    ts = [start + i * step if i < n // 2 else 0.0 - (n - 1 - i) * step for i in range(n)]
    return [shift * t / (1 + (shift - 1) * t) for t in ts]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3], rounding as `iris.inputs.tensor_to_pil` does."""
    x = ((np.clip(images.astype(np.float32), -1, 1) + np.float32(1)) * np.float32(127.5)).round()
    return x.astype(np.uint8).transpose(0, 2, 3, 1)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] as an 8-bit RGB PNG with zlib only."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.write_bytes(png)
    return path


# ------------------------------------------------------------------------------------------------- runner

# on_iteration(step, iteration, preview): preview() decodes the image the model would give if stopped now.
IterationCallback = Callable[[int, int, Callable[[], np.ndarray]], None]


class OnnxIris:
    """An exported IRIS folder on onnxruntime: `generate(prompt, seed=...)` -> uint8 images [B, H, W, 3]."""

    def __init__(self, folder: str | Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest: dict[str, Any] = json.loads((self.folder / "manifest.json").read_text())
        self._ort = ort
        ort.set_default_logger_severity(3)  # no warnings about constant folding at session start
        self._options = ort.SessionOptions()
        self._options.log_severity_level = 3
        if threads:
            self._options.intra_op_num_threads = threads
            self._options.inter_op_num_threads = 1
        self._providers = providers or ["CPUExecutionProvider"]
        # e.g. NchwcTransformer for float16 graphs (an fp32-only layout pass that crashes on them)
        self._disabled = list(self.manifest.get("onnxruntime", {}).get("disabled_optimizers", []))
        self._sessions: dict[str, Any] = {}
        text = self.manifest["text"]
        self.tokenizer = BPETokenizer(self.folder / text["vocab_file"])
        known = text.get("known_ids")  # older exports: None (every token reaches the encoder)
        self._known_ids = frozenset(int(i) for i in known) if known is not None else None
        self.timings: dict[str, float] = {}

    # -- graphs
    def session(self, key: str, resolution: str | None = None) -> Any:
        graphs = self.manifest["graphs"] if resolution is None else self.manifest["resolutions"][resolution]["graphs"]
        entry = graphs[key]
        path = str(self.folder / entry["file"])
        if path not in self._sessions:
            self._sessions[path] = self._ort.InferenceSession(path, self._options, providers=self._providers,
                                                              disabled_optimizers=self._disabled or None)
        return self._sessions[path]

    def resolution_key(self, width: int | None = None, height: int | None = None) -> str:
        """The manifest key "WxH" of an exported resolution (default: the first one listed)."""
        res = self.manifest["resolutions"]
        if width is None and height is None:
            return next(iter(res))
        key = f"{width or height}x{height or width}"
        if key not in res:
            raise ValueError(f"resolution {key} was not exported; exported: {', '.join(res)}")
        return key

    def encode_text(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompts -> per-token states [B, L, Dt] float32 and validity mask [B, L] bool."""
        ids = self.tokenizer(prompts, self.manifest["text"]["max_length"], self._known_ids)
        tokens, mask = self.session("text_encoder").run(None, {"ids": ids})
        return tokens, mask

    def decode_latents(self, latents: np.ndarray, resolution: str) -> np.ndarray:
        """Scaled latents [B, C, h, w] -> uint8 images [B, H, W, 3]."""
        return to_uint8(self.session("vae_decoder", resolution).run(None, {"latents": latents})[0])

    # -- the pipeline
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        steps: int | None = None,
        iterations: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        sampler: str | None = None,
        shift: float | None = None,
        exit_threshold: float | None = None,
        on_iteration: IterationCallback | None = None,
    ) -> np.ndarray:
        """Text to image, as `IrisPipeline.generate` with the same arguments. Returns uint8 [B, H, W, 3]."""
        d = self.manifest["sampler"]
        steps = int(d["steps"] if steps is None else steps)
        iterations = int(d["iterations"] if iterations is None else iterations)
        guidance = float(d["guidance"] if guidance is None else guidance)
        sampler = sampler or d["sampler"]
        shift = float(d["shift"] if shift is None else shift)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if steps < 1 or iterations < 1:
            raise ValueError("steps and iterations must be >= 1")
        exit_threshold = None if exit_threshold in (None, 0, 0.0) else float(exit_threshold)
        res = self.resolution_key(width, height)
        t_start = time.perf_counter()
        latent_shape = (num_images, *self.manifest["resolutions"][res]["latent_shape"])
        z = TorchRandn(seed).randn(latent_shape)
        streams = self.manifest["noise"]["seed_streams"]  # as the engine draws them (iris.sampling.SEED_STREAMS)
        stream = lambda name: (seed * streams[name][0] + streams[name][1]) % (2**63)
        state_noise = TorchRandn(stream("core_state"))
        fresh_noise = TorchRandn(stream("consistency"))
        # as iris.sampling.guidance_branches: 1 is the prompt alone, 0 the negative prompt alone, else both;
        # as iris.sampling.guidance_at: outside the guidance interval (t > guidance_max_t) the prompt alone
        max_t = float(d.get("guidance_max_t", 1.0))
        rep = lambda a, i: np.repeat(a[i : i + 1], num_images, axis=0)
        if guidance in (0.0, 1.0):
            tokens, mask = self.encode_text([prompt if guidance == 1.0 else negative_prompt])
            texts = {"prompt" if guidance == 1.0 else "negative": (rep(tokens, 0), rep(mask, 0))}
        else:
            tokens, mask = self.encode_text([prompt, negative_prompt])
            both = np.concatenate([rep(tokens, 0), rep(tokens, 1)]), np.concatenate([rep(mask, 0), rep(mask, 1)])
            texts = {"both": both, "prompt": (rep(tokens, 0), rep(mask, 0))}
        embed, iterate = self.session("embed", res), self.session("iterate", res)
        decode = self.session("decode", res)
        std = np.float32(self.manifest["generator"]["state_init_std"])
        calls = 0

        def velocity(z: np.ndarray, t: float, step: int) -> np.ndarray:
            nonlocal calls
            g = 1.0 if t > max_t and guidance != 0.0 else guidance
            use_cfg = g not in (0.0, 1.0)
            text, text_mask = texts["both" if use_cfg else "prompt" if g == 1.0 else "negative"]
            calls += 1 + use_cfg

            def guided(v: np.ndarray) -> np.ndarray:
                if not use_cfg:
                    return v
                v_cond, v_uncond = np.split(v, 2)
                return v_uncond + np.float32(g) * (v_cond - v_uncond)

            zz = np.concatenate([z, z]) if use_cfg else z
            tt = np.full((zz.shape[0],), t, dtype=np.float32)
            c, e = embed.run(None, {"z": zz, "t": tt, "text": text, "text_mask": text_mask})
            s = state_noise.randn((num_images, *e.shape[1:])) * std  # the guided and unguided halves share s_0
            s = np.concatenate([s, s]) if use_cfg else s
            for i in range(1, iterations + 1):
                s_next = iterate.run(None, {"s": s, "e": e, "c": c, "text": text, "text_mask": text_mask,
                                            "iteration": np.array(i, dtype=np.int64)})[0]
                done = False
                if exit_threshold is not None:
                    flat = lambda a: a.reshape(a.shape[0], -1)
                    change = np.linalg.norm(flat(s_next - s), axis=1) / np.maximum(
                        np.linalg.norm(flat(s_next), axis=1), 1e-8)
                    done = bool((change < exit_threshold).all())
                s = s_next
                if on_iteration is not None:
                    s_now = s

                    def preview(s_now: np.ndarray = s_now) -> np.ndarray:
                        v = guided(decode.run(None, {"s": s_now, "e": e, "c": c})[0])
                        return self.decode_latents((z - np.float32(t) * v)[:1].astype(np.float32), res)

                    on_iteration(step + 1, i, preview)
                if done:
                    break
            return guided(decode.run(None, {"s": s, "e": e, "c": c})[0])

        timesteps = flow_timesteps(steps, shift)
        for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:])):
            v = velocity(z, t, i)
            if sampler == "consistency":
                x0 = z - np.float32(t) * v
                z = x0 if t_next <= 0 else (1 - t_next) * x0 + t_next * fresh_noise.randn(z.shape)
            elif sampler == "heun" and t_next > 0:
                z_pred = z + (t_next - t) * v
                v_next = velocity(z_pred, t_next, i)
                z = z + (t_next - t) * 0.5 * (v + v_next)
            else:
                z = z + (t_next - t) * v
            z = z.astype(np.float32)
        t_decode = time.perf_counter()
        images = self.decode_latents(z, res)
        end = time.perf_counter()
        self.timings = {"sampling_s": t_decode - t_start, "decode_s": end - t_decode, "total_s": end - t_start,
                        "nfe": calls}
        self.latents = z
        return images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onnx_runner", description="Generate an image from an exported IRIS folder.")
    p.add_argument("folder", help="export folder with manifest.json")
    p.add_argument("prompt")
    p.add_argument("--negative", default="")
    p.add_argument("--steps", type=int)
    p.add_argument("--iterations", "-r", type=int)
    p.add_argument("--guidance", "-g", type=float)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", help="WIDTHxHEIGHT among the exported ones (default: the first)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", "-o", default=None, help="output PNG (default: onnx-<seed>.png)")
    args = p.parse_args(argv)
    runner = OnnxIris(args.folder, threads=args.threads)
    width = height = None
    if args.resolution:
        width, _, height = args.resolution.partition("x")
        width, height = int(width), int(height or width)
    images = runner.generate(args.prompt, args.negative, args.steps, args.iterations, args.guidance, args.seed,
                             width, height, sampler=args.sampler)
    out = write_png(args.output or f"onnx-{args.seed}.png", images[0])
    h, w = images.shape[1:3]
    print(f"wrote {out} ({w}x{h}, {runner.timings['total_s']:.2f}s, {runner.timings['nfe']} NFE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
