"""The training loop: AdamW with warmup, grad clipping, EMA, exact resume, DDP, logs, samples, export.

One process, or `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPU): the same command line.
Checkpoints are folders `out_dir/checkpoints/step_XXXXXXXX/` holding the whole model (as
`IrisPipeline.save_pretrained` writes it), the EMA weights, the optimiser state (safetensors) and
`state.json`; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import variant_config
from ..errors import ModelLoadError
from ..hub import demo_model_path
from ..pipeline import IrisPipeline
from .config import OptimConfig, TrainConfig
from .data import BatchStream, build_dataset
from .stages import Stage, build_stage


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for one (seed, rank, step): the only source of training randomness."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def load_start_model(model: str, seed: int) -> IrisPipeline:
    """A variant name (random weights), a model folder, or 'demo'."""
    if model == "demo":
        return IrisPipeline.from_pretrained(demo_model_path())
    if Path(model).expanduser().is_dir():
        return IrisPipeline.from_pretrained(model)
    try:
        variant_config(model)
    except Exception as err:
        raise ModelLoadError(f"--model {model!r} is neither a variant name nor a model folder") from err
    return IrisPipeline.from_variant(model, seed=seed)


def build_vocab(captions: list[str], extra: list[str] = ()) -> list[int]:
    """Sorted open_clip token ids used by the captions (for the tiny text encoder's compact vocabulary)."""
    from ..models.text import EOT, SOT, clip_tokenizer

    tok = clip_tokenizer()
    ids = {SOT, EOT}
    for text in list(captions) + list(extra):
        ids.update(tok.encode(text))
    return sorted(ids)


NO_DECAY_LEAVES = {"bias", "b1", "b2", "table", "position", "a_param", "log_gamma_raw", "alpha"}
NO_DECAY_EMBEDDINGS = ("iter_embed.", "class_embed.", "token_embedding.")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether AdamW decays a parameter: weight matrices and kernels do; norms, biases (AFNO's block
    biases too), per-channel scales, embeddings, adaLN tables and the RG-LRU decay rates do not, as in
    nanoGPT and DiT."""
    leaf = name.rpartition(".")[2]
    return param.ndim >= 2 and leaf not in NO_DECAY_LEAVES and not any(e in name for e in NO_DECAY_EMBEDDINGS)


def lr_scale(name: str, scales: dict[str, float]) -> float:
    """The learning-rate multiplier of a parameter: that of the longest prefix of ``name`` in ``scales``, else 1."""
    hits = [prefix for prefix in scales if name == prefix or name.startswith(prefix + ".")]
    return float(scales[max(hits, key=len)]) if hits else 1.0


def param_groups(named: dict[str, torch.Tensor], optim: OptimConfig) -> list[dict]:
    """AdamW groups, one per (weight decay, lr scale): decayed groups first, then by scale; each lists its
    parameter ``names`` in ``named``'s order (the optimiser's flat order is these groups' concatenation)."""
    groups: dict[tuple[bool, float], dict] = {}
    for name, p in named.items():
        key = (decays(name, p), lr_scale(name, optim.lr_scales))
        groups.setdefault(key, {"names": [], "weight_decay": optim.weight_decay if key[0] else 0.0,
                                "lr_scale": key[1]})["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.stop_requested = False  # set (e.g. by a signal handler) to stop after the current step
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = self._device()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.data = BatchStream(build_dataset(cfg.data), cfg.batch_size, cfg.seed, self.rank, self.world)
        self._batches: Iterator[dict[str, Any]] | None = None  # the stream train_step draws from
        self._batches_step = -1  # the step of the stream's next batch
        self.schedule_steps = cfg.steps  # where the cosine decay ends (moved to the time limit, if one is set)
        latest = self.latest_checkpoint()
        self.step = 0
        if latest is not None:
            self.pipe = IrisPipeline.from_pretrained(latest / "model")
        else:
            self.pipe = load_start_model(cfg.model, cfg.seed)
            self._prepare_model()
        self.pipe.to(self.device)
        teacher = IrisPipeline.from_pretrained(cfg.teacher).to(self.device) if cfg.teacher else None
        self.stage: Stage = build_stage(cfg, self.pipe, teacher).to(self.device)
        self.stage.freeze_all_but_trainable()
        named = {
            f"{part}.{name}": p
            for part, module in self.stage.trainable().items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }
        groups = param_groups(named, cfg.optim)
        # the optimiser's flat parameter order is this dict's order (checkpoints name optimiser state by it)
        self.params = {k: named[k] for g in groups for k in g["names"]}
        self.optimizer = torch.optim.AdamW(
            [{"params": [named[k] for k in g["names"]], "weight_decay": g["weight_decay"], "lr_scale": g["lr_scale"]}
             for g in groups],
            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
        )
        self.ema = {k: p.detach().clone() for k, p in self.params.items()}
        if latest is not None:
            self._load_checkpoint(latest)
        self.model: nn.Module = self.stage
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.stage, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    # ------------------------------------------------------------------------------------------ setup
    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (FFTs, scans, losses)
            torch.backends.cudnn.allow_tf32 = True
            return torch.device("cuda", local)
        return torch.device(want)

    def _prepare_model(self) -> None:
        """Stage-specific changes to a fresh start model: compact vocabulary, class embedding."""
        cfg, pipe = self.cfg, self.pipe
        if cfg.stage == "text" and pipe.config.text.kind == "tiny" and not pipe.config.text.vocab:
            dataset = self.data.dataset
            n = min(cfg.vocab_captions, len(dataset))
            if hasattr(dataset, "scenes"):  # procedural: captions without rendering
                captions = [dataset.scenes.plan(i).caption for i in range(n)]
            else:
                captions = [dataset.records[i].caption for i in range(n)]
            extra = []
            if hasattr(dataset, "scenes"):
                from .emoji import COLORS, EMOJI

                extra = [e.name for e in EMOJI] + [c.name for c in COLORS]
            pipe.config.text.vocab = build_vocab(captions, extra)
            from ..models.text import build_text_encoder

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                pipe.text_encoder = build_text_encoder(pipe.config.text)
        if cfg.stage == "class":
            classes = getattr(self.data.dataset, "classes", [])
            n = len(classes) or int(max(self.data.batch(0)["label"].max().item() + 1, 1))
            if pipe.config.generator.num_classes != n:
                pipe.config.generator.num_classes = n
                pipe.generator.class_embed = nn.Embedding(n + 1, pipe.config.generator.dim)

    # ------------------------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        final = self.ckpt_dir / f"step_{self.step:08d}"
        tmp = self.ckpt_dir / f".tmp_step_{self.step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.pipe.save_pretrained(tmp / "model")
        save_file({k: v.contiguous().cpu() for k, v in self.ema.items()}, str(tmp / "ema.safetensors"))
        current = {k: p.detach().contiguous().cpu() for k, p in self.params.items()}
        save_file(current, str(tmp / "trainable.safetensors"))
        names = list(self.params)
        opt_tensors, groups = {}, self.optimizer.state_dict()
        for idx, state in groups["state"].items():
            for key, value in state.items():
                opt_tensors[f"{names[idx]}::{key}"] = value.detach().cpu().contiguous()
        save_file(opt_tensors, str(tmp / "optim.safetensors"))
        meta = {"step": self.step, "param_groups": groups["param_groups"], "config": self.cfg.to_dict()}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=list))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(self.ckpt_dir.glob("step_*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _load_checkpoint(self, path: Path) -> None:
        meta = json.loads((path / "state.json").read_text())
        self.step = int(meta["step"])
        ema = load_file(str(path / "ema.safetensors"))
        current = load_file(str(path / "trainable.safetensors"))
        with torch.no_grad():
            for k in self.ema:
                self.ema[k].copy_(ema[k])
                self.params[k].copy_(current[k])
        opt = load_file(str(path / "optim.safetensors"))
        names = list(self.params)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in opt.items():
            name, _, field = key.rpartition("::")
            state.setdefault(names.index(name), {})[field] = value.to(self.device) if field != "step" else value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})

    # ---------------------------------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.decay == "cosine":
            progress = (step - o.warmup_steps) / max(1, self.schedule_steps - o.warmup_steps)
            return o.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        return o.lr

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
        for k, p in self.params.items():
            self.ema[k].lerp_(p.detach(), 1 - decay)

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights into the model."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])

    def next_batch(self) -> dict[str, Any]:
        """The batch of the current step, from a stream drawn ahead by `data.workers` processes."""
        if self._batches is None or self._batches_step != self.step:
            self._batches = self.data.stream(self.step, self.cfg.data.workers)
            self._batches_step = self.step
        self._batches_step += 1
        return next(self._batches)

    def autocast(self) -> contextlib.AbstractContextManager:
        want = self.cfg.precision
        if want == "auto":
            want = "bf16" if self.device.type == "cuda" else "fp32"
        if want == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self) -> dict[str, float]:
        batch = self.next_batch()
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        rng = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.rank, self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step) * group.get("lr_scale", 1.0)
        with self.autocast():
            loss, logs = self.model(batch, rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return {"step": self.step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                "lr": self.lr_at(self.step - 1), **logs}

    def train(self, steps: int | None = None) -> list[dict[str, float]]:
        """Run until cfg.steps (or `steps` more), cfg.time_limit minutes, or until `stop_requested` is set;
        returns this call's logs."""
        from tqdm import tqdm

        end = self.cfg.steps if steps is None else min(self.cfg.steps, self.step + steps)
        started, first_step = time.perf_counter(), self.step
        deadline = started + 60 * self.cfg.time_limit if self.cfg.time_limit > 0 else None
        history: list[dict[str, float]] = []
        log_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=end, initial=self.step, disable=self.rank != 0, desc=f"iris-train {self.cfg.stage}")
        t_last, n_last = time.perf_counter(), 0
        while self.step < end:
            logs = self.train_step()
            history.append(logs)
            n_last += 1
            if self.rank == 0:
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    logs["samples_per_s"] = n_last * self.cfg.batch_size * self.world / (now - t_last)
                    if self.device.type == "cuda":
                        logs["gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    t_last, n_last = now, 0
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", sps=f"{logs['samples_per_s']:.1f}")
                    with log_path.open("a") as f:
                        f.write(json.dumps(logs) + "\n")
                if self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
                    self.save_samples()
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_checkpoint()
                self.barrier()
            if self.stop_requested:
                break
            if deadline is not None:
                now = time.perf_counter()
                if now >= deadline:
                    break
                rate = (self.step - first_step) / (now - started)  # steps per second so far
                self.schedule_steps = min(self.cfg.steps, self.step + int(rate * (deadline - now)))
        bar.close()
        self._batches = None  # let the workers go
        return history

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------------------------ outputs
    @torch.no_grad()
    def save_samples(self) -> Path | None:
        """A PNG grid: reconstructions (VAE), upscales (pixel upscaler) or generations with EMA weights (others)."""
        from PIL import Image

        from ..inputs import tensor_to_pil

        batch = self.data.batch(0)
        images = batch["image"][:8].to(self.device)
        self.stage.eval()
        with self.ema_weights():
            if self.cfg.stage == "vae":
                recon = self.pipe.vae.decode(self.pipe.vae.encode(images))
                tiles = tensor_to_pil(torch.cat([images, recon]))
            elif self.cfg.stage == "pixel_upscale":  # rows: originals, then their box downscales upscaled
                up = self.pipe.adapters["pixel_upscale"](torch.nn.functional.avg_pool2d(images, 2))
                tiles = tensor_to_pil(torch.cat([images, up.clamp(-1, 1)]))
            else:
                tiles = []
                for caption in batch["caption"][:8]:
                    s = self.pipe.config.sampler
                    tiles += self.pipe.generate(caption or "an image", seed=0, steps=min(4, s.steps),
                                                iterations=s.iterations).images
        for module in self.stage.trainable().values():
            module.train()
        w, h = tiles[0].size
        cols = 8
        grid = Image.new("RGB", (w * cols, h * math.ceil(len(tiles) / cols)))
        for i, tile in enumerate(tiles):
            grid.paste(tile, ((i % cols) * w, (i // cols) * h))
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        return path

    @torch.no_grad()
    def finalize_vae(self, batches: int = 8) -> None:
        """After VAE training: latent shift/scale from data statistics (unless the encoder stayed frozen, so
        the latent space and its normalisation are the ones the generator knows), and the preview decoder fit."""
        vae = self.pipe.vae
        imgs = [self.data.batch(10_000 + i)["image"].to(self.device) for i in range(batches)]
        if self.cfg.train_encoder:
            vae.config.scale, vae.config.shift = 1.0, 0.0
            raw = torch.cat([vae.encode(x) for x in imgs])
            mean, std = float(raw.mean()), float(raw.std())
            vae.config.shift, vae.config.scale = mean, 1.0 / max(std, 1e-6)
            self.pipe.config.vae = vae.config
            scaled = (raw - mean) * vae.config.scale
        else:
            scaled = torch.cat([vae.encode(x) for x in imgs])
        if self.pipe.config.vae.preview != "linear" and self.cfg.train_encoder:
            # a learned preview knew the old latent space: start again from the fitted linear map, and let
            # `iris-train preview` train a new one on the new latents
            from ..models.vae import PreviewDecoder

            self.pipe.config.vae.preview = "linear"
            self.pipe.previewer = PreviewDecoder(vae.config.latent_channels, vae.config.downsample).to(self.device)
        if hasattr(self.pipe.previewer, "fit"):
            self.pipe.previewer.fit(scaled, torch.cat(imgs))

    def export(self, folder: str | Path | None = None) -> Path:
        """Write the EMA model in `from_pretrained` format (rank 0)."""
        folder = Path(folder or self.out / "export")
        if self.rank != 0:
            return folder
        with self.ema_weights():
            if self.cfg.stage == "vae":
                self.finalize_vae()
            if self.cfg.stage == "distill":
                self.pipe.config.distilled = True
                s = self.pipe.config.sampler
                s.sampler, s.guidance, s.steps = "consistency", 1.0, min(s.steps, 4)
            dtype = torch.float16 if self.cfg.export_dtype == "float16" else None
            self.pipe.save_pretrained(folder, dtype=dtype)
        return folder

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
