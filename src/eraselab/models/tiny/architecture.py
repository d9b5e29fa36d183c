"""Configurations of the tiny model's parts: standard diffusers / transformers classes, small sizes.

The shipped model is a Stable Diffusion pipeline in miniature: 32x32 RGB images, an AutoencoderKL that
downsamples 4x to 8x8x4 latents, a CLIP text encoder (the text tower of a tiny CLIP trained contrastively on
the world's captions, then frozen), and a UNet2DConditionModel with cross-attention at 8x8 and 4x4.
``TinySizes`` holds every size; tests build a micro model by passing smaller ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig


@dataclass(frozen=True)
class TinySizes:
    image_size: int = 32
    max_length: int = 24  # tokens, including start and end
    text_width: int = 128
    text_layers: int = 3
    vision_width: int = 128
    vision_layers: int = 3
    projection: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (64, 128)
    unet_heads: int = 4
    classifier_channels: tuple[int, ...] = (32, 64, 128)

    def to_dict(self) -> dict:
        return asdict(self)


def make_clip(sizes: TinySizes, vocab_size: int, bos_id: int, eos_id: int) -> CLIPModel:
    """A tiny CLIP (text transformer + ViT with 4x4 patches) with Stable Diffusion's token conventions."""
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.text_width,
        intermediate_size=2 * sizes.text_width,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=4,
        max_position_embeddings=sizes.max_length,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=sizes.projection,
    )
    vision = CLIPVisionConfig(
        hidden_size=sizes.vision_width,
        intermediate_size=2 * sizes.vision_width,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=4,
        image_size=sizes.image_size,
        patch_size=4,
        projection_dim=sizes.projection,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=sizes.projection)
    return CLIPModel(config)


def make_vae(sizes: TinySizes) -> AutoencoderKL:
    n = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=sizes.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, sizes.vae_channels[0]),
        sample_size=sizes.image_size,
    )


def make_unet(sizes: TinySizes, latent_size: int) -> UNet2DConditionModel:
    n = len(sizes.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=sizes.unet_channels,
        layers_per_block=1,
        cross_attention_dim=sizes.text_width,
        attention_head_dim=sizes.unet_heads,  # diffusers' legacy name: the number of heads in SD 1.x configs
        norm_num_groups=min(32, sizes.unet_channels[0]),
    )


def make_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.x's noise schedule and DDIM sampler settings."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


class AttributeClassifier(nn.Module):
    """The tiny world's judge: a small CNN with one head per attribute (shape, colour, fill, background)."""

    def __init__(self, head_sizes: dict[str, int], channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU()]
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(previous, n) for name, n in head_sizes.items()})
        self.head_sizes = dict(head_sizes)
        self.channels = tuple(channels)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, C) features (also used as a feature extractor for FID)."""
        return self.features(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.embed(images)
        return {name: head(features) for name, head in self.heads.items()}
