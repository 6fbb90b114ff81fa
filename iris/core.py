"""IrisCore: one loaded model and the denoising loop every task runs: load and save, encode and decode text and
images, check budgets and say what they cost, and `denoise` a latent from any time to 0 with live previews.
`generate` (text to image) is its first task; the editing tasks build on `denoise` in `iris.editing`, and
`iris.pipeline.IrisPipeline` puts them all behind one object.

A budget is (steps, iterations): `steps` sampler steps, each running the core `iterations` times.
`on_preview(event)` is called after every core iteration; `event.image` holds a cheap preview of the
image the model would give if stopped there (throttled to a share of the run time, None otherwise).
Raise `GenerationCancelled` from it to stop a run.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from . import sampling
from .budget import Budget, BudgetCost, IrisResult, PreviewCallback, PreviewEvent, PreviewThrottle
from .compose import compose, subject_seed
from .config import IrisConfig, variant_config
from .errors import GenerationCancelled, InvalidInputError, ModelLoadError
from .hub import load_weights, resolve_model, save_weights, stored_float_dtype
from .inputs import (
    check_bool,
    check_device,
    check_float,
    check_int,
    check_prompt,
    check_seed,
    pil_to_tensor,
    round_size,
    tensor_to_pil,
)
from .layout import REGIONS, Layout, parse_layout
from .limits import MAX_GUIDANCE, MAX_IMAGES, MAX_SIDE, MAX_STEPS, PREVIEW_FRACTION, max_model_parameters
from .models.generator import IrisGenerator, TextCondition
from .models.text import TextEncoder, build_text_encoder
from .models.vae import WaveletVAE, build_previewer


def count_parameters(config: IrisConfig) -> int:
    """The parameters a config implies, counted on the meta device: no memory is allocated. (The first count in
    a process takes about 2 s: initialising meta tensors loads torch's reference kernels.)"""
    from .models.adapters import build_adapter

    with torch.device("meta"):
        parts = [IrisGenerator(config.generator), WaveletVAE(config.vae), build_text_encoder(config.text)]
        parts += [build_adapter(name, config) for name in config.adapters]
    return sum(p.numel() for part in parts for p in part.parameters())


def parameter_bound(config: IrisConfig) -> int:
    """A quick over-estimate of `count_parameters` from the config's sizes, with nothing built: at least
    twice every weight matrix the generator, VAE and text encoder can hold."""
    g, v, t = config.generator, config.vae, config.text
    layers = g.core_layers + 4  # the core, the prelude's 2 blocks and the coda's 2
    rec = g.recurrent_dim or g.dim
    per_layer = (24 + 2 * g.mlp_ratio) * g.dim**2 + 4 * max(g.text_dim, t.dim) * g.dim
    per_layer += 8 * rec * g.dim + 4 * rec**2 + (g.conv_width + 60) * (rec + g.dim)  # recurrent branch, convs
    generator = layers * per_layer + (16 + g.max_iterations + 2 * g.num_classes) * g.dim
    generator += (g.latent_channels * g.patch_size**2 + 300) * g.dim  # patch embedding, time and text inputs
    widest = max((*v.channels, v.latent_channels, v.image_channels))
    vae = 40 * widest**2 * (len(v.channels) + 1) * (v.blocks_per_stage + 2)
    text = 130_000_000 if t.kind == "clip" else (49_410 + t.max_length) * t.dim + 16 * max(t.layers, 1) * t.dim**2
    adapters = len(config.adapters) * 20 * g.dim**2
    return int(2 * (generator + vae + text + adapters))


class IrisCore:
    """Text encoder + generator + WaveletVAE (+ preview decoder and optional adapters), and the loop that runs them."""

    def __init__(
        self,
        config: IrisConfig,
        generator: IrisGenerator,
        vae: WaveletVAE,
        text_encoder: TextEncoder,
        previewer: nn.Module | None = None,
        adapters: dict[str, nn.Module] | None = None,
        source: str = "",
    ):
        self.config = config
        self.generator = generator.eval()
        self.vae = vae.eval()
        self.text_encoder = text_encoder.eval()
        self.previewer = (previewer or build_previewer(config.vae)).eval()
        self.adapters = nn.ModuleDict(adapters or {}).eval()
        self.source = source
        self._text_cache: OrderedDict[str, TextCondition] = OrderedDict()
        self._use_channels_last()

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: IrisConfig, seed: int = 0, source: str = "", half_text_weights: bool = False,
                    empty: bool = False) -> IrisCore:
        """A pipeline with freshly initialised (random, seeded) weights.

        half_text_weights: hold a CLIP text encoder's weights in fp16, computing in fp32 (`ClipTextEncoder`).
        empty: build on the meta device, with no weights at all, for `iris.hub.load_weights` to fill (a CLIP
        text encoder, which may load from the hub instead, is still built for real).
        """
        from .models.adapters import build_adapter

        seed = check_seed(seed)  # torch.manual_seed overflows (a bare ValueError) beyond 64 bits
        limit = max_model_parameters()
        n = parameter_bound(config)
        if n > limit:  # near the limit (or over it): count exactly before refusing
            n = count_parameters(config)
        if n > limit:
            raise ModelLoadError(f"the model config asks for {n / 1e6:,.0f}M parameters, over the limit of "
                                 f"{limit / 1e6:,.0f}M (set IRIS_MAX_PARAMETERS to allow more)")
        device = torch.device("meta") if empty else torch.device("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with device:
                generator = IrisGenerator(config.generator)
                vae = WaveletVAE(config.vae)
                previewer = build_previewer(config.vae)
                adapters = {name: build_adapter(name, config) for name in config.adapters}
            with device if config.text.kind != "clip" else torch.device("cpu"):
                text = build_text_encoder(config.text, half_weights=half_text_weights)
        return cls(config, generator, vae, text, previewer, adapters=adapters,
                   source=source or f"random:{config.name}")

    @classmethod
    def from_variant(cls, name: str, seed: int = 0) -> IrisCore:
        """A random-weight pipeline of a named variant (nano, tiny, small, base), for tests and benchmarks."""
        return cls.from_config(variant_config(name), seed=seed, source=f"random:{name}")

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path | None = None, device: str | torch.device = "cpu",
                        ) -> IrisCore:
        """Load a model folder (config.json + *.safetensors), a hub id, or None for the bundled demo."""
        folder = resolve_model(path_or_hub_id)
        config = IrisConfig.load(folder / "config.json")

        def weights(name: str) -> Path:
            """This folder's file, else the `shares` sibling's (a plain folder name beside this one)."""
            own = folder / name
            if own.is_file() or not config.shares:
                return own
            shared = folder.parent / config.shares / name
            return shared if shared.is_file() else own

        text_file = weights("text_encoder.safetensors")
        # CLIP weights stored in fp16 stay fp16 in memory (half of their fp32 size; nothing lost)
        half_text = text_file.is_file() and stored_float_dtype(text_file) == torch.float16
        device = check_device(device)
        try:
            pipe = cls.from_config(config, source=str(path_or_hub_id or "demo"), half_text_weights=half_text,
                                   empty=True)
        except ModelLoadError:
            raise
        except Exception as err:
            raise ModelLoadError(f"{folder / 'config.json'} describes an invalid model: {err}") from err
        failure: str | None = None
        try:
            load_weights(pipe.generator, weights("generator.safetensors"))
            load_weights(pipe.vae, weights("vae.safetensors"))
            if text_file.is_file():
                load_weights(pipe.text_encoder, text_file)
            elif config.text.kind == "clip":
                pipe.text_encoder.load_hub_weights()  # type: ignore[attr-defined]
            else:
                raise ModelLoadError(f"{folder} has no text_encoder.safetensors for its built-in text encoder")
            if weights("preview.safetensors").is_file():
                load_weights(pipe.previewer, weights("preview.safetensors"))
            else:  # a model without a trained preview decoder: its kind's own initial weights
                pipe.previewer = build_previewer(config.vae).eval()
            for name, adapter in pipe.adapters.items():
                load_weights(adapter, weights(f"adapters/{name}.safetensors"))
        except ModelLoadError as err:
            failure, error_type = str(err), type(err)
        if failure is not None:
            # raised out here, with no traceback into the loading frames, so the half-loaded model is freed now
            del pipe
            gc.collect()
            raise error_type(failure)
        return pipe.to(device)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json and safetensors weights that `from_pretrained` reads (dtype e.g. torch.float16)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = IrisConfig.from_dict(self.config.to_dict())
        config.adapters = list(self.adapters.keys())
        config.save(folder / "config.json")
        save_weights(self.generator, folder / "generator.safetensors", dtype)
        save_weights(self.vae, folder / "vae.safetensors", dtype)
        save_weights(self.text_encoder, folder / "text_encoder.safetensors", dtype)
        save_weights(self.previewer, folder / "preview.safetensors")
        if len(self.adapters):
            (folder / "adapters").mkdir(exist_ok=True)
            for name, adapter in self.adapters.items():
                save_weights(adapter, folder / "adapters" / f"{name}.safetensors", dtype)
        return folder

    def to(self, device: str | torch.device) -> IrisCore:
        device = check_device(device)
        for module in (self.generator, self.vae, self.text_encoder, self.previewer, self.adapters):
            module.to(device)
        self._use_channels_last()
        self._text_cache.clear()
        return self

    def _use_channels_last(self) -> None:
        """Hold the conv weights of the VAE, preview decoder and adapters channels-last on the CPU and CUDA: the
        same values, and their convs run faster in that layout (on a 2-core x86 CPU the demo's VAE decode 1.3x,
        its tiny preview decoder 5x). The generator's only spatial conv already gets a channels-last input."""
        if self.device.type in ("cpu", "cuda", "meta"):
            for module in (self.vae, self.previewer, self.adapters):
                module.to(memory_format=torch.channels_last)

    def compile(self) -> IrisCore:
        """Compile the core's layer stack with `torch.compile` (opt-in). It pays off over many images at one
        size: on a CPU the demo's 2 x 4 image runs about 1.3x faster and its 4 x 8 guided one about 1.1x, after
        about a minute of compiling per batch size (guided steps run 2, unguided 1) and resolution. The
        iteration index stays outside the compiled code, so all iterations share one graph; the scan takes its
        static "blocked" form, which has no data-dependent shapes. Compiled code runs torch ops, not the fused
        native kernels (`iris.models.native`): on a CPU where those run, compiling gains nothing at the demo's
        size (paired with eager: 0.99x at 4 x 8 guided, 0.93x at 2 x 4), so it pays on CUDA or without a C
        compiler."""
        from .models.grfm import RGLRU

        for module in self.generator.modules():
            if isinstance(module, RGLRU):
                module.method = "blocked"
        eager = type(self.generator).core_stack.__get__(self.generator)
        self.generator.core_stack = torch.compile(eager, dynamic=False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def latent_factor(self) -> int:
        """Pixels per latent-grid cell along a side (VAE downsampling x generator patch size)."""
        return self.config.vae.downsample * self.config.generator.patch_size

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts per part."""
        count = lambda m: sum(p.numel() for p in m.parameters())
        parts = {"generator": count(self.generator), "vae": count(self.vae), "text_encoder": count(self.text_encoder)}
        for name, adapter in self.adapters.items():
            parts[f"adapter:{name}"] = count(adapter)
        return parts

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` the model's text encoder does not know (they are left out of its input);
        always empty for an open vocabulary such as CLIP's."""
        return self.text_encoder.unknown_words(check_prompt(prompt))

    def known_words(self) -> list[str] | None:
        """The words the model's text encoder knows, or None when its vocabulary is open (CLIP)."""
        return self.text_encoder.known_words()

    def effective_depth(self, iterations: int) -> int:
        """Layers run per NFE: prelude (2) + iterations x core layers + coda (2)."""
        return 2 + iterations * self.config.generator.core_layers + 2

    def cost(self, steps: Any = None, iterations: Any = None, guidance: Any = None, sampler: str | None = None
             ) -> BudgetCost:
        """The network evaluations, core passes and effective depth of a budget (defaults: the model's)."""
        b = self.check_budget(steps, iterations, guidance, sampler)
        calls = sampling.velocity_calls(b.sampler, b.steps)
        nfe = sampling.network_evaluations(b.sampler, sampling.flow_timesteps(b.steps, b.shift), b.guidance,
                                           b.guidance_max_t)
        return BudgetCost(calls, nfe, nfe * b.iterations, self.effective_depth(b.iterations))

    # ------------------------------------------------------------------------------------------ checking
    def check_budget(self, steps: Any = None, iterations: Any = None, guidance: Any = None,
                     sampler: str | None = None, shift: Any = None, exit_threshold: Any = None,
                     regional: Any = None, compose: Any = None) -> Budget:
        """Validate budget settings, filling defaults from the model config."""
        d = self.config.sampler
        sampler = sampler or d.sampler
        if sampler not in sampling.SAMPLERS:
            raise InvalidInputError(f"sampler must be one of {', '.join(sampling.SAMPLERS)}, got {sampler!r}")
        return Budget(
            steps=check_int("steps", d.steps if steps is None else steps, 1, MAX_STEPS),
            iterations=check_int("iterations", d.iterations if iterations is None else iterations, 1,
                                 self.config.generator.max_iterations),
            guidance=check_float("guidance", d.guidance if guidance is None else guidance, 0.0, MAX_GUIDANCE),
            sampler=sampler,
            shift=check_float("shift", d.shift if shift is None else shift, 0.05, 20.0),
            exit_threshold=None if exit_threshold in (None, 0, 0.0)
            else check_float("exit_threshold", exit_threshold, 0.0, 1.0),
            regional=d.regional if regional is None else check_bool("regional", regional),
            compose=d.compose if compose is None else check_bool("compose", compose),
            guidance_max_t=check_float("guidance_max_t", d.guidance_max_t, 0.0, 1.0),
        )

    def check_size(self, width: Any, height: Any) -> tuple[int, int]:
        """Width and height rounded to the latent grid (default: the model's native resolution)."""
        f, native = self.latent_factor, self.config.resolution
        w = round_size("width", native if width is None else width, f, 1, MAX_SIDE)
        h = round_size("height", native if height is None else height, f, 1, MAX_SIDE)
        return w, h

    # ---------------------------------------------------------------------------------------- internals
    @torch.inference_mode()
    def encode_text(self, prompts: list[str], regional: bool = False) -> TextCondition:
        """Per-token text states for prompts, cached by prompt; `regional` adds where each prompt places
        its subjects (`TextCondition.regions`)."""
        keys = [(p, regional) for p in prompts]
        missing = [k for k in dict.fromkeys(keys) if k not in self._text_cache]
        if missing:
            cond = self.text_encoder.encode([p for p, _ in missing], regional=regional)
            for i, key in enumerate(missing):
                mask = None if cond.mask is None else cond.mask[i : i + 1]
                regions = None if cond.regions is None else (cond.regions[0][i : i + 1], cond.regions[1][i : i + 1])
                self._text_cache[key] = TextCondition(cond.tokens[i : i + 1], mask, regions=regions)
                while len(self._text_cache) > 64:
                    self._text_cache.popitem(last=False)
        for key in keys:
            self._text_cache.move_to_end(key)
        return TextCondition.cat([self._text_cache[key] for key in keys])

    def initial_noise(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Gaussian noise from a seeded CPU generator (same seed, same noise on every device)."""
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g).to(self.device)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        with torch.inference_mode():
            return tensor_to_pil(self.vae.decode(latents))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> scaled latents (posterior mean)."""
        with torch.inference_mode():
            return self.vae.encode(images.to(self.device))

    @torch.inference_mode()
    def denoise(
        self,
        latents: torch.Tensor,
        prompt: str | list[str],
        negative_prompt: str,
        budget: Budget,
        seed: int,
        *,
        start: float = 1.0,
        residual: Callable[[float], torch.Tensor | None] | None = None,
        on_step: Callable[[int, float, torch.Tensor], torch.Tensor | None] | None = None,
        on_preview: PreviewCallback | None = None,
        preview_fraction: float | None = PREVIEW_FRACTION,
        timings: dict[str, float] | None = None,
        preview_samples: tuple[int, ...] = (0,),
        preview_combine: Callable[[list[Image.Image]], Image.Image] | None = None,
    ) -> torch.Tensor:
        """Integrate `latents` [B, C, h, w] (noisy at time `start`) to t = 0. The engine of every task.

        residual(t) -> [B, D, h, w] or None: adapter features added to the prelude (control, inpaint).
        on_step(i, t_next, z) -> replacement z or None, after each sampler step (inpainting).
        prompt: one for every image, or one per image (a list of B).
        preview_samples: the images a preview shows, decoded and joined by preview_combine(images) -> image
        (default: the first image alone).
        """
        b = latents.shape[0]
        prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
        if len(prompts) != b:
            raise ValueError(f"denoise needs one prompt or {b}, got {len(prompts)}")
        with_prompt, with_negative = sampling.guidance_branches(budget.guidance)
        if with_prompt:
            cond = self.encode_text(prompts, budget.regional)
        if with_prompt and with_negative:
            guided_text = TextCondition.cat([cond, self.encode_text([negative_prompt] * b)])
        # guidance 1 (or a step outside the guidance interval): the prompt alone; guidance 0: the negative alone
        single_text = cond if with_prompt else self.encode_text([negative_prompt] * b)
        timesteps = sampling.flow_timesteps(budget.steps, budget.shift, start)
        state_gen = torch.Generator("cpu").manual_seed(sampling.stream_seed(seed, "core_state"))
        noise_gen = torch.Generator("cpu").manual_seed(sampling.stream_seed(seed, "consistency"))
        throttle = PreviewThrottle(preview_fraction)
        gen = self.generator
        t0 = time.perf_counter()
        calls = 0

        def velocity(z: torch.Tensor, t: float, step: int) -> torch.Tensor:
            nonlocal calls
            guidance = sampling.guidance_at(t, budget.guidance, budget.guidance_max_t)
            use_cfg = all(sampling.guidance_branches(guidance))
            text = guided_text if use_cfg else single_text
            calls += 1 + use_cfg
            zz = torch.cat([z, z]) if use_cfg else z
            tt = torch.full((zz.shape[0],), t, device=z.device)
            extra = residual(t) if residual is not None else None
            if extra is not None and use_cfg:
                extra = torch.cat([extra, extra])
            c = gen.condition(tt, text)
            e = gen.embed(zz, c, extra)
            s = gen.initial_state(e[:b], state_gen)  # the guided and unguided halves share s_0
            s = torch.cat([s, s]) if use_cfg else s
            guided = lambda v: sampling.cfg_combine(*v.chunk(2), guidance) if use_cfg else v

            def preview(i: int, s: torch.Tensor) -> None:
                image = None
                if throttle.allow():
                    t_start = time.perf_counter()
                    rows = list(preview_samples)
                    x0 = sampling.predicted_x0(z[rows], guided(gen.decode(s, e, c))[rows], t)
                    shown = tensor_to_pil(self.previewer(x0))
                    image = shown[0] if preview_combine is None else preview_combine(shown)
                    throttle.record(time.perf_counter() - t_start)
                on_preview(PreviewEvent(step + 1, budget.steps, i, budget.iterations, image, time.perf_counter() - t0))

            s = gen.run_core(s, e, c, text, budget.iterations, exit_threshold=budget.exit_threshold,
                             on_iteration=preview if on_preview is not None else None)
            return guided(gen.decode(s, e, c))

        def step_hook(i: int, z: torch.Tensor) -> torch.Tensor | None:
            return on_step(i, timesteps[i + 1], z) if on_step is not None else None

        noise_fn = lambda i: self.initial_noise_like(latents, noise_gen)
        out = sampling.sample(velocity, latents, timesteps, budget.sampler, noise_fn, step_hook)
        if timings is not None:
            timings.update(sampling_s=time.perf_counter() - t0, preview_s=throttle.spent, nfe=calls)
        return out

    def initial_noise_like(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(latents.shape, generator=generator).to(latents)

    def base_params(self, task: str, prompt: str, negative_prompt: str, budget: Budget, seed: int,
                    width: int, height: int) -> dict[str, Any]:
        """The settings every task records in `IrisResult.params`."""
        return {
            "task": task, "model": self.config.name, "model_source": self.source, "prompt": prompt,
            "negative_prompt": negative_prompt, "steps": budget.steps, "iterations": budget.iterations,
            "guidance": budget.guidance, "guidance_max_t": budget.guidance_max_t, "sampler": budget.sampler,
            "shift": budget.shift,
            "exit_threshold": budget.exit_threshold, "regional": budget.regional, "seed": seed, "width": width,
            "height": height,
        }

    # ------------------------------------------------------------------------------------------- tasks
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
        regional: bool | None = None,
        compose: bool | None = None,
        on_preview: PreviewCallback | None = None,
        preview_fraction: float | None = PREVIEW_FRACTION,
    ) -> IrisResult:
        """Text to image. Sizes are rounded to multiples of `latent_factor`; defaults come from the config.

        regional: draw the subjects the prompt places ("a cat on the left and a dog on the right") in
        their regions (`iris.layout`); None takes the model's default (on).
        compose: draw each placed subject on its own and paste it into its region (`iris.compose`), the
        subjects' drafts in one batch; None takes the model's default. Prompts that place nothing ignore it."""
        prompt, negative_prompt = check_prompt(prompt), check_prompt(negative_prompt, "negative_prompt")
        budget = self.check_budget(steps, iterations, guidance, sampler, shift, exit_threshold, regional, compose)
        seed = check_seed(seed)
        width, height = self.check_size(width, height)
        n = check_int("num_images", num_images, 1, MAX_IMAGES)
        t0 = time.perf_counter()
        shape = (n, self.config.vae.latent_channels, height // self.config.vae.downsample,
                 width // self.config.vae.downsample)
        timings: dict[str, float] = {}
        layout = parse_layout(prompt) if budget.compose else None
        if layout is None:
            z = self.denoise(self.initial_noise(seed, shape), prompt, negative_prompt, budget, seed,
                             on_preview=on_preview, preview_fraction=preview_fraction, timings=timings)
            images = self.decode(z)
        else:
            images, z = self.draw_placed_subjects(layout, negative_prompt, budget, seed, shape, on_preview,
                                                  preview_fraction, timings)
        timings["total_s"] = time.perf_counter() - t0
        params = self.base_params("generate", prompt, negative_prompt, budget, seed, width, height)
        params.update(compose=budget.compose, num_images=n)
        return IrisResult(images, params, z, timings)

    def draw_placed_subjects(self, layout: Layout, negative_prompt: str, budget: Budget, seed: int,
                             shape: tuple[int, ...], on_preview: PreviewCallback | None,
                             preview_fraction: float | None, timings: dict[str, float]
                             ) -> tuple[list[Image.Image], torch.Tensor]:
        """Text to image by `iris.compose`: one draft of latent `shape` [B, C, h, w] per placed subject, as few
        batches of drafts as MAX_IMAGES allows (two subjects cost about 1.5 runs, not 2), each subject pasted
        into its region. Previews show the composite so far, their steps counted across the batches.
        -> (images, their latents [B, C, h, w] as the VAE encodes them)."""
        n, f = shape[0], self.config.vae.downsample
        size = (shape[3] * f, shape[2] * f)
        boxes = [REGIONS[p.region] for p in layout.placements]
        count = len(boxes)
        per_batch = max(1, MAX_IMAGES // n)  # subjects drawn together
        batches = [range(k, min(count, k + per_batch)) for k in range(0, count, per_batch)]
        alone = dataclasses.replace(budget, regional=False)
        own = [layout.subject_prompt(k) for k in range(count)]
        drafts: list[Image.Image] = []  # subject-major: subject k's images are drafts[k * n : (k + 1) * n]
        t0 = time.perf_counter()
        for g, group in enumerate(batches):
            started = time.perf_counter() - t0
            done = [drafts[k * n] for k in range(group.start)]

            def combine(shown: list[Image.Image], done: list[Image.Image] = done, end: int = group.stop) -> Image.Image:
                return compose(done + shown, boxes[:end], size)

            def preview(event: PreviewEvent, g: int = g, started: float = started) -> None:
                on_preview(PreviewEvent(g * budget.steps + event.step, len(batches) * budget.steps, event.iteration,
                                        event.iterations, event.image, started + event.elapsed))

            noise = torch.cat([self.initial_noise(subject_seed(seed, k), shape) for k in group])
            prompts = [own[k] for k in group for _ in range(n)]
            part: dict[str, float] = {}
            z = self.denoise(noise, prompts, negative_prompt, alone, subject_seed(seed, group.start),
                             on_preview=preview if on_preview is not None else None,
                             preview_fraction=preview_fraction, timings=part,
                             preview_samples=tuple(i * n for i in range(len(group))), preview_combine=combine)
            drafts += self.decode(z)
            for key, value in part.items():
                timings[key] = timings.get(key, 0.0) + value
        timings["drafts"] = count
        images = [compose([drafts[k * n + i] for k in range(count)], boxes, size) for i in range(n)]
        return images, self.encode(torch.cat([pil_to_tensor(image) for image in images]))

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in self.num_parameters().items())
        return f"{type(self).__name__}({self.config.name}, {parts}, device={self.device})"


__all__ = ["IrisCore", "IrisResult", "PreviewEvent", "GenerationCancelled", "Budget", "count_parameters",
           "parameter_bound"]
