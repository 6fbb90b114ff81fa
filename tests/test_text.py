"""Text encoders (iris.models.text): tokenizer, masks, compact vocabulary, CLIP tower, offline hub."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from iris.config import TextConfig
from iris.errors import HubOfflineError, ModelLoadError
from iris.models.text import (
    EOT,
    SOT,
    ClipTextEncoder,
    TinyTextEncoder,
    build_text_encoder,
    padding_mask,
    tokenize,
)


def tiny(vocab=(), dim=32, max_length=16) -> TinyTextEncoder:
    torch.manual_seed(0)
    cfg = TextConfig(kind="tiny", dim=dim, max_length=max_length, layers=1, heads=2, vocab=list(vocab))
    return TinyTextEncoder(cfg).eval()


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache, whatever this machine has cached."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_tokenize_adds_start_and_end_and_pads():
    ids = tokenize(["a red apple", ""], 10)
    assert ids.shape == (2, 10)
    assert ids[0, 0] == SOT and ids[0, 4] == EOT and torch.all(ids[0, 5:] == 0)
    assert ids[1, 0] == SOT and ids[1, 1] == EOT and torch.all(ids[1, 2:] == 0)


def test_tiny_encoder_shapes_and_mask():
    enc = tiny()
    prompts = ["a red apple", "", "two cats on a green background"]
    with torch.no_grad():
        cond = enc.encode(prompts)
    assert cond.tokens.shape == (3, 16, 32)
    assert cond.mask.shape == (3, 16) and cond.mask.dtype == torch.bool
    ids = tokenize(prompts, 16)
    assert cond.mask.sum(1).tolist() == (ids != 0).sum(1).tolist() == [5, 2, 8]  # words + start + end
    for row in cond.mask:  # valid tokens form a prefix
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    assert torch.isfinite(cond.tokens).all()


def test_padding_mask_stops_at_the_first_end_token():
    ids = torch.tensor([[SOT, 320, EOT, 0, 0], [SOT, 320, EOT, 555, 777], [SOT, EOT, EOT, 0, 0]])
    mask = padding_mask(ids)
    assert mask.tolist() == [[True, True, True, False, False]] * 2 + [[True, True, False, False, False]]


def test_tokens_after_the_end_token_do_not_change_valid_states():
    enc = tiny()
    clean = torch.tensor([[SOT, 320, 1615, EOT, 0, 0]])
    junk = torch.tensor([[SOT, 320, 1615, EOT, 4000, 5000]])
    with torch.no_grad():
        a, b = enc(clean), enc(junk)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.tokens[:, :4], b.tokens[:, :4], atol=1e-6, rtol=1e-6)


def test_long_prompt_is_truncated_with_an_end_token():
    enc = tiny()
    ids = tokenize(["word " * 500], 16)
    assert ids[0, -1] == EOT
    with torch.no_grad():
        cond = enc.encode(["word " * 500])
    assert cond.mask.all()


def test_compact_vocabulary_maps_unknown_ids_to_one():
    kept = [SOT, EOT, 320, 1615]  # start, end, "a", "red"-ish ids
    enc = tiny(vocab=kept)
    assert enc.token_embedding.num_embeddings == len(kept) + 2
    lookup = enc.lookup
    assert lookup[0] == 0  # padding
    assert [int(lookup[i]) for i in kept] == [2, 3, 4, 5]  # kept ids, in order
    others = torch.tensor([1, 2, 321, 1614, 1616, 49405])
    assert torch.all(lookup[others] == 1)
    # two prompts that differ only in out-of-vocabulary words encode identically
    a = torch.tensor([[SOT, 320, 9999, EOT, 0]])
    b = torch.tensor([[SOT, 320, 12345, EOT, 0]])
    c = torch.tensor([[SOT, 320, 1615, EOT, 0]])
    with torch.no_grad():
        ta, tb, tc = enc(a).tokens, enc(b).tokens, enc(c).tokens
    assert torch.equal(ta, tb)
    assert not torch.allclose(ta, tc)


def test_build_text_encoder_kinds():
    assert isinstance(build_text_encoder(TextConfig(kind="tiny", dim=16, heads=2, layers=1)), TinyTextEncoder)
    with pytest.raises(ValueError, match="kind"):
        build_text_encoder(TextConfig(kind="t5"))


@pytest.mark.slow
def test_clip_text_encoder_with_random_weights():
    torch.manual_seed(0)
    enc = ClipTextEncoder(TextConfig()).eval()
    assert 120e6 < sum(p.numel() for p in enc.parameters()) < 130e6  # CLIP-L/14 text tower
    with torch.no_grad():
        cond = enc.encode(["a photo of a cat", "hello"])
    assert cond.tokens.shape == (2, 77, 768)
    assert cond.mask.sum(1).tolist() == [7, 3]
    assert torch.isfinite(cond.tokens).all()
    assert not torch.allclose(cond.tokens[0, :3], cond.tokens[1, :3])


@pytest.mark.slow
def test_fp16_stored_clip_weights_stay_half_in_memory_and_compute_in_fp32(tmp_path):
    from iris.config import variant_config
    from iris.pipeline import IrisPipeline

    config = variant_config("tiny")
    assert config.text.kind == "clip"
    pipe = IrisPipeline.from_config(config)
    pipe.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    loaded = IrisPipeline.from_pretrained(tmp_path / "fp16")
    blocks = loaded.text_encoder.model.transformer.resblocks
    assert {p.dtype for p in blocks.parameters()} == {torch.float16}
    assert loaded.text_encoder.model.token_embedding.weight.dtype == torch.float16
    half_bytes = sum(p.numel() * p.element_size() for p in loaded.text_encoder.parameters())
    assert half_bytes < 0.55 * 4 * sum(p.numel() for p in loaded.text_encoder.parameters())
    # the same fp16-rounded weights held in fp32 give the same states: nothing is computed in half precision
    with torch.no_grad():
        for p in pipe.text_encoder.parameters():
            p.copy_(p.half().float())
    prompts = ["a photo of a cat", ""]
    with torch.inference_mode():
        ref, got = pipe.text_encoder.encode(prompts), loaded.text_encoder.encode(prompts)
    assert got.tokens.dtype == torch.float32
    torch.testing.assert_close(got.tokens, ref.tokens, atol=1e-4, rtol=1e-4)
    assert {p.dtype for p in blocks.parameters()} == {torch.float16}  # put back after the call
    # fp32-stored weights load as fp32
    pipe.save_pretrained(tmp_path / "fp32")
    full = IrisPipeline.from_pretrained(tmp_path / "fp32")
    assert {p.dtype for p in full.text_encoder.parameters()} == {torch.float32}


@pytest.mark.parametrize("hub_id", ["timm/vit_large_patch14_clip_224.openai", "someone/some-clip"])
def test_clip_hub_weights_offline_error_names_the_hub_id(offline_hub, hub_id):
    # the hub lookup comes before the tower is touched: a stand-in with the config is enough (no 123M build)
    stand_in = SimpleNamespace(config=TextConfig(clip_hub_id=hub_id), model=None)
    with pytest.raises(HubOfflineError) as info:
        ClipTextEncoder.load_hub_weights(stand_in)
    message = str(info.value)
    assert hub_id in message
    assert "offline" in message.lower() or "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, ModelLoadError)
    assert "\n" not in message


def test_half_stored_block_recovers_from_errors_and_serves_threads():
    import threading

    from torch import nn

    from iris.models.text import store_half_compute_float

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
    ref = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
    ref.load_state_dict(block.state_dict())
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    store_half_compute_float(block)
    x = torch.randn(4, 8)
    torch.testing.assert_close(block(x), ref(x))
    with pytest.raises(RuntimeError):
        block(torch.randn(3, 5))  # a failing call puts the fp16 weights back and frees the block
    assert {p.dtype for p in block.parameters()} == {torch.float16}
    failures = []

    def work():
        for _ in range(100):
            if not torch.allclose(block(x), ref(x), atol=1e-6):
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and {p.dtype for p in block.parameters()} == {torch.float16}


def test_compact_vocabulary_names_the_words_it_does_not_know():
    from iris.config import TextConfig
    from iris.models.text import TinyTextEncoder, clip_tokenizer

    tok = clip_tokenizer()
    vocab = sorted({i for w in ("a", "red", "apple", "on", "blue", "background", "sunny") for i in tok.encode(w)})
    enc = TinyTextEncoder(TextConfig(kind="tiny", dim=16, max_length=16, layers=1, heads=2, vocab=vocab))
    assert enc.unknown_words("A red kitten on a BEACH, a red kitten again; apple!") == ["kitten", "beach", "again"]
    assert enc.unknown_words("a red apple on a blue background") == []
    assert enc.known_words() == sorted(["a", "red", "apple", "on", "blue", "background", "sunny"])
    full = TinyTextEncoder(TextConfig(kind="tiny", dim=16, max_length=16, layers=1, heads=2))
    assert full.unknown_words("a kitten on a beach") == [] and full.known_words() is None


def test_words_outside_a_compact_vocabulary_are_left_out():
    from iris.models.text import clip_tokenizer

    tok = clip_tokenizer()
    known_words = "a red apple on blue background"
    kept = sorted({SOT, EOT, *tok.encode(known_words)})
    enc = tiny(vocab=kept)
    # the unknown words vanish and the known ones keep their order, as if they had never been typed
    ids = enc.token_ids(["draw a red apple; make it on plain blue background", known_words])
    assert torch.equal(ids[0], ids[1])
    assert enc.unknown_words("draw a red apple; make it on plain blue background") == ["draw", "make", "it",
                                                                                         "plain"]
    with torch.no_grad():
        a, b = enc.encode(["zebra a red apple", "a red apple"]).tokens.unbind(0)
    assert torch.equal(a, b)
    # only unknown words: start and end alone; and truncation keeps the end token
    assert enc.token_ids(["zebra"])[0, :3].tolist() == [SOT, EOT, 0]
    long = enc.token_ids(["zebra " * 100 + "a red apple " * 20])
    assert long[0, -1] == EOT and long[0, 1] == tok.encode("a")[0]
    # an open vocabulary keeps every token
    full = tiny()
    assert torch.equal(full.token_ids(["zebra a red apple"]), tokenize(["zebra a red apple"], 16))
