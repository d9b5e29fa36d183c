"""Find every cross-attention layer of a UNet by inspecting its modules, never by SD 1.4 module names.

Closed-form editors (UCE, RECE, TRCE) rewrite the key and value projections of these layers; attacks and
guards swap their attention processors. Discovery works on any diffusers UNet (SD 1.x/2.x, SDXL, micro test
models) because it asks each ``Attention`` module whether it attends to an encoder sequence.

>>> from diffusers import UNet2DConditionModel
>>> unet = UNet2DConditionModel(block_out_channels=(8, 16), norm_num_groups=8, cross_attention_dim=12,
...     attention_head_dim=2, layers_per_block=1, sample_size=8,
...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
>>> [(layer.name, layer.text_dim) for layer in cross_attention_layers(unet)][:1]
[('down_blocks.0.attentions.0.transformer_blocks.0.attn2', 12)]
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.models.attention_processor import Attention
from torch import nn


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer: its module path and its query, key, value and output projections."""

    name: str
    module: Attention
    to_q: nn.Linear
    to_k: nn.Linear
    to_v: nn.Linear
    to_out: nn.Linear

    @property
    def text_dim(self) -> int:
        """Width of the text embeddings the layer attends to (768 for SD 1.x, 1024 for SD 2.x)."""
        return self.to_k.in_features


def _is_cross_attention(module: Attention) -> bool:
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    return module.to_k.in_features != module.to_q.in_features  # older diffusers: widths tell


def cross_attention_layers(unet: nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of ``unet``, in module order."""
    layers = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and _is_cross_attention(module):
            out = module.to_out[0] if isinstance(module.to_out, nn.ModuleList) else module.to_out
            layers.append(CrossAttentionLayer(name, module, module.to_q, module.to_k, module.to_v, out))
    return layers
