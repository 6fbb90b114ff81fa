"""Text encoders: prompts -> per-token states [B, L, Dt] and a validity mask [B, L].

- `ClipTextEncoder`: the text tower of CLIP-L/14 through open_clip ([B, 77, 768]); weights come from the
  Hugging Face hub cache (safetensors only), or random for tests.
- `TinyTextEncoder`: a small transformer over open_clip's tokenizer with a compact vocabulary, trained
  together with the demo model.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import torch
from torch import nn

from ..config import TextConfig
from ..layout import parse_layout
from .generator import TextCondition

SOT, EOT = 49406, 49407


@lru_cache(maxsize=1)
def clip_tokenizer():
    """open_clip's BPE tokenizer (its vocabulary ships inside the package; no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(prompts: list[str], length: int, known: frozenset[int] | None = None) -> torch.Tensor:
    """Prompts -> open_clip token ids [B, length] (start/end tokens added, truncated, zero padded).

    known: with a compact vocabulary, the ids it holds; every other token is left out before truncating (the
    model never learned one for it, and leaving it out keeps the known words where training put them).
    """
    if known is None:
        return clip_tokenizer()(prompts, context_length=length)
    tok, out = clip_tokenizer(), torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = [SOT] + [i for i in tok.encode(prompt) if i in known] + [EOT]
        if len(ids) > length:
            ids = ids[: length - 1] + [EOT]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """True up to and including the end token of each row: [B, L] bool."""
    is_eot = ids == EOT
    after = is_eot.int().cumsum(1) - is_eot.int()  # >0 strictly after the first end token
    return (after == 0) & ((ids != 0) | is_eot)


class TextEncoder(nn.Module):
    """Interface: `encode(prompts)` -> TextCondition(tokens [B, L, dim], mask [B, L])."""

    config: TextConfig

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> the ids [B, max_length] `forward` takes (words outside a compact vocabulary left out)."""
        return tokenize(prompts, self.config.max_length, self.known_ids())

    def encode(self, prompts: list[str], regional: bool = False) -> TextCondition:
        """regional: a prompt that places subjects ("a cat on the left and a dog on the right") is also read
        once per placed subject (`iris.layout`); its row then holds those readings after the prompt's own
        tokens, [B, (K + 1) * L, dim], with `regions` saying which tokens belong to which region."""
        layouts = [parse_layout(p) for p in prompts] if regional else [None] * len(prompts)
        if all(layout is None for layout in layouts):
            return self(self.token_ids(prompts).to(self.device))
        texts = [t for p, layout in zip(prompts, layouts) for t in [p] + (layout.variants() if layout else [])]
        read = self(self.token_ids(texts).to(self.device))
        rows, start = [], 0
        for layout in layouts:
            k = len(layout.placements) if layout else 0
            part = slice(start, start + k + 1)
            tokens, mask = read.tokens[part].flatten(0, 1)[None], read.mask[part].flatten()[None]
            labels = torch.arange(k + 1).repeat_interleave(read.tokens.shape[1])[None]
            boxes = layout.boxes()[None] if layout else torch.zeros(1, 0, 4)
            rows.append(TextCondition(tokens, mask, regions=(labels, boxes)))
            start += k + 1
        return TextCondition.cat(rows)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def known_ids(self) -> frozenset[int] | None:
        """The token ids the encoder learned, when it has a compact vocabulary; None for an open one (CLIP)."""
        return None

    def known_words(self) -> list[str] | None:
        """The whole words the encoder has its own tokens for, sorted; None for an open vocabulary (CLIP)."""
        return None

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of `prompt` (in order, each once) the encoder has no token for (left out of its input)."""
        return []


def store_half_compute_float(block: nn.Module) -> None:
    """Keep `block`'s floating parameters in fp16 between calls and run it in fp32.

    A forward pre-hook swaps in fp32 copies (and casts floating inputs to fp32); a forward hook, called even
    when the forward raises, puts the fp16 tensors back. A lock held from one hook to the other keeps threads
    sharing the block from seeing each other's swap. Memory: half the weights, plus one block in fp32 while
    it runs.
    """
    params = [p for p in block.parameters() if p.is_floating_point()]
    for p in params:
        p.data = p.data.half()
    lock = threading.Lock()
    stored: list[torch.Tensor] = []

    def upcast(module: nn.Module, args: tuple) -> tuple:
        lock.acquire()
        stored[:] = [p.data for p in params]
        for p in params:
            p.data = p.data.float()
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def restore(module: nn.Module, args: tuple, out):
        for p, half in zip(params, stored):
            p.data = half
        stored.clear()
        lock.release()
        return out

    block.register_forward_pre_hook(upcast)
    block.register_forward_hook(restore, always_call=True)


class TinyTextEncoder(TextEncoder):
    """Small bidirectional transformer over a compact slice of open_clip's vocabulary."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        vocab = list(cfg.vocab) or list(range(49408))
        self.register_buffer("lookup", torch.ones(49408, dtype=torch.long), persistent=False)
        self.token_embedding = nn.Embedding(len(vocab) + 2, cfg.dim)
        self.position = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.01)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.init_derived()

    def init_derived(self) -> None:
        """(Re)build the token lookup from the config (compact ids: 0 = pad, 1 = unknown, then the kept
        open_clip ids in order); not stored with the weights."""
        vocab = list(self.config.vocab) or list(range(49408))
        lookup = torch.ones(49408, dtype=torch.long, device=self.position.device)
        lookup[0] = 0
        lookup[torch.tensor(vocab, dtype=torch.long)] = torch.arange(2, len(vocab) + 2)
        self.lookup = lookup
        self._known_ids = frozenset(self.config.vocab) | {SOT, EOT} if self.config.vocab else None

    def _is_known(self, token_id: int) -> bool:
        return bool(self.lookup[token_id] != 1)

    def known_ids(self) -> frozenset[int] | None:
        """The open_clip ids of the compact vocabulary (with the start and end tokens); None for the full one."""
        return self._known_ids

    def known_words(self) -> list[str] | None:
        if not self.config.vocab:
            return None
        tok = clip_tokenizer()
        words = {tok.decoder[i][: -len("</w>")] for i in self.config.vocab
                 if i in tok.decoder and tok.decoder[i].endswith("</w>")}
        return sorted(w for w in words if any(ch.isalnum() for ch in w))

    def unknown_words(self, prompt: str) -> list[str]:
        if not self.config.vocab:
            return []
        import re

        tok, out = clip_tokenizer(), []
        for word in re.findall(r"[^\W_]+(?:['-][^\W_]+)*", prompt.lower()):
            if word not in out and not all(self._is_known(i) for i in tok.encode(word)):
                out.append(word)
        return out

    def forward(self, ids: torch.Tensor) -> TextCondition:
        """open_clip ids [B, L] -> states [B, L, dim]."""
        mask = padding_mask(ids)
        x = self.token_embedding(self.lookup[ids]) + self.position[: ids.shape[1]]
        x = self.transformer(x, src_key_padding_mask=~mask)
        return TextCondition(self.norm(x), mask)



class ClipTextEncoder(TextEncoder):
    """CLIP-L/14 text tower (open_clip) giving per-token states [B, 77, 768]."""

    def __init__(self, cfg: TextConfig, half_weights: bool = False):
        """half_weights: hold the token table and transformer blocks in fp16 (half the memory; for weights
        stored in fp16 nothing is lost) and compute in fp32, each block cast while it runs."""
        super().__init__()
        import open_clip
        from open_clip.transformer import QuickGELU, TextTransformer

        self.config = cfg
        model_cfg = open_clip.get_model_config(cfg.clip_model)
        if model_cfg is None:
            raise ValueError(f"open_clip has no model named {cfg.clip_model!r}")
        tc = model_cfg["text_cfg"]
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16 if half_weights else default)  # never a full fp32 copy
        try:
            self.model = TextTransformer(
                context_length=tc["context_length"], vocab_size=tc["vocab_size"], width=tc["width"],
                heads=tc["heads"], layers=tc["layers"], output_dim=model_cfg["embed_dim"],
                act_layer=QuickGELU, output_tokens=True,
            )
        finally:
            torch.set_default_dtype(default)
        if half_weights:
            blocks = self.model.transformer.resblocks
            for name, module in self.model.named_children():
                if module is not self.model.transformer and name != "token_embedding":
                    module.float()
            for param in self.model.parameters(recurse=False):
                param.data = param.data.float()
            for name, buf in self.model.named_buffers(recurse=False):
                setattr(self.model, name, buf.float())
            for block in blocks:
                store_half_compute_float(block)
            self.model.transformer.get_cast_dtype = lambda: torch.float32  # open_clip reads it from block 0

    def load_hub_weights(self) -> None:
        """Load the text tower from the hub cache (downloading when online). Safetensors only."""
        from safetensors.torch import load_file

        from ..hub import hub_file

        path = hub_file(self.config.clip_hub_id, "open_clip_model.safetensors", what="CLIP-L/14 text encoder")
        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("visual.") and k != "logit_scale"}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            from ..errors import ModelLoadError

            raise ModelLoadError(f"CLIP weights in {path} lack {len(missing)} tensors, e.g. {missing[0]}")

    def forward(self, ids: torch.Tensor) -> TextCondition:
        _, tokens = self.model(ids)
        return TextCondition(tokens, padding_mask(ids))


def build_text_encoder(cfg: TextConfig, half_weights: bool = False) -> TextEncoder:
    """The text encoder a config names (random weights); half_weights: see `ClipTextEncoder` (CLIP only)."""
    if cfg.kind == "tiny":
        return TinyTextEncoder(cfg)
    if cfg.kind == "clip":
        return ClipTextEncoder(cfg, half_weights=half_weights)
    raise ValueError(f"unknown text encoder kind {cfg.kind!r} (expected 'clip' or 'tiny')")
