"""WaveletVAE and the preview decoder (iris.models.vae)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iris.config import VAEConfig
from iris.models.vae import PreviewDecoder, WaveletVAE


@pytest.fixture(scope="module")
def default_vae() -> WaveletVAE:
    torch.manual_seed(0)
    return WaveletVAE(VAEConfig()).eval()


def test_default_vae_latent_shape_and_compression(default_vae):
    assert default_vae.downsample == 16
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        z = default_vae.encode(x)
    assert z.shape == (1, 16, 16, 16)
    assert x.numel() / z.numel() == 48
    with torch.no_grad():
        y = default_vae.decode(z)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("hw", [(64, 64), (32, 96), (128, 48)])
def test_shapes_round_trip_small_config(hw):
    cfg = VAEConfig(channels=(8, 16, 16), latent_channels=4)
    vae = WaveletVAE(cfg).eval()
    x = torch.rand(2, 3, *hw) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 4, hw[0] // 16, hw[1] // 16)
        assert vae.decode(z).shape == x.shape
        recon, mean, logvar = vae(x)
    assert recon.shape == x.shape and mean.shape == logvar.shape == z.shape
    assert logvar.min() >= -30 and logvar.max() <= 20


def test_seeded_encode_is_reproducible():
    torch.manual_seed(1)
    vae = WaveletVAE(VAEConfig(channels=(8, 16), latent_channels=4)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a = vae.encode(x, generator=torch.Generator().manual_seed(7))
        b = vae.encode(x, generator=torch.Generator().manual_seed(7))
        c = vae.encode(x, generator=torch.Generator().manual_seed(8))
        mean1, mean2 = vae.encode(x), vae.encode(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(mean1, mean2)  # posterior mean without a generator
    assert not torch.allclose(a, mean1)


def test_scale_and_shift_are_applied_and_inverted():
    torch.manual_seed(2)
    plain = WaveletVAE(VAEConfig(channels=(8, 16), latent_channels=4)).eval()
    scaled = WaveletVAE(VAEConfig(channels=(8, 16), latent_channels=4, scale=2.5, shift=0.3)).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z_plain, z_scaled = plain.encode(x), scaled.encode(x)
        torch.testing.assert_close(z_scaled, (z_plain - 0.3) * 2.5)
        torch.testing.assert_close(scaled.decode(z_scaled), plain.decode(z_plain), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("downsample,patch", [(16, 4), (8, 4), (2, 4)])
def test_preview_decoder_fits_an_exactly_representable_map(downsample, patch):
    c, n, h, w = 6, 4, 5, 7
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(n, c, h, w, generator=g)
    prev = PreviewDecoder(c, downsample, patch)
    p = prev.patch
    assert p == min(patch, downsample)
    true_w = torch.randn(3 * p * p, c, 1, 1, generator=g)
    true_b = torch.randn(3 * p * p, generator=g)
    # images: the linear map at patch resolution, then nearest-upsampled to full size (area-downsampling
    # it back, as `fit` does, gives the patch-resolution image exactly)
    small = F.pixel_shuffle(F.conv2d(latents, true_w, true_b), p)
    images = F.interpolate(small, scale_factor=downsample // p, mode="nearest")
    assert images.shape == (n, 3, h * downsample, w * downsample)
    with torch.no_grad():
        before = prev(latents)
    assert before.abs().max() == 0  # zero-initialised
    rmse = prev.fit(latents, images)
    assert rmse < 1e-4
    torch.testing.assert_close(prev.proj.weight, true_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prev.proj.bias, true_b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        out = prev(latents)
    assert out.shape == images.shape
    # the preview, area-downsampled to patch resolution, is close to the truth (bilinear blur aside)
    err = (F.interpolate(out, size=small.shape[-2:], mode="area") - small).abs().mean()
    assert err < 0.5 * small.abs().mean()


def test_preview_decoder_fit_reports_error_of_non_linear_target():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 6, 6, generator=g)
    prev = PreviewDecoder(4, 8, 4)
    images = torch.randn(3, 3, 48, 48, generator=g)  # pure noise: no linear map explains it
    assert prev.fit(latents, images) > 0.1


def test_tiny_preview_decoder_shape_and_config():
    from iris.config import IrisConfig
    from iris.errors import ModelLoadError
    from iris.models.vae import TinyPreviewDecoder, build_previewer

    tiny = build_previewer(VAEConfig(latent_channels=16, preview="tiny"))
    assert isinstance(tiny, TinyPreviewDecoder)
    out = tiny(torch.randn(2, 16, 8, 6))
    assert out.shape == (2, 3, 64, 48) and out.abs().max() <= 1
    assert isinstance(build_previewer(VAEConfig()), PreviewDecoder)  # the default stays the linear map
    with pytest.raises(ModelLoadError, match="vae.preview"):
        IrisConfig.from_dict({"vae": {"preview": "huge"}})


def test_the_shipped_preview_is_closer_to_the_real_decoder_than_a_linear_map():
    """The bundled model's learned preview against a linear map least-squares-fitted here to the same decoder,
    both at the preview's size, on held-out scenes: the learned one must win by a margin (an untrained one
    cannot)."""
    from iris import IrisPipeline
    from iris.train.emoji import EmojiScenes, find_emoji_font

    try:
        find_emoji_font()
    except FileNotFoundError:
        pytest.skip("the emoji font renders the held-out scenes (apt-get install fonts-noto-color-emoji)")
    pipe = IrisPipeline.from_pretrained()
    assert pipe.config.vae.preview == "tiny"
    scenes = EmojiScenes(split="heldout")
    images = torch.stack([scenes[i]["image"] for i in range(48)])
    with torch.inference_mode():
        latents = pipe.vae.encode(images)
        decoded = pipe.vae.decode(latents)
    linear = PreviewDecoder(pipe.config.vae.latent_channels, pipe.config.vae.downsample)
    linear.fit(latents[24:], decoded[24:])
    with torch.inference_mode():
        learned = pipe.previewer(latents[:24])
        side = learned.shape[-2:]
        ref = F.interpolate(decoded[:24], size=side, mode="area")
        psnr = lambda x: float(10 * torch.log10(4.0 / F.mse_loss(x.clamp(-1, 1), ref)))
        fitted = F.interpolate(linear(latents[:24]), size=side, mode="area")
    assert psnr(learned) > psnr(fitted) + 3.0, (psnr(learned), psnr(fitted))
