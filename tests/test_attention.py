import torch
from diffusers import UNet2DConditionModel

from eraselab.models import cross_attention_layers


def micro_sd_unet(cross_dim: int = 12) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=2, norm_num_groups=8)


def test_discovers_every_cross_attention_layer_and_only_those():
    unet = micro_sd_unet()
    layers = cross_attention_layers(unet)
    # Re-derive the plain way: in SD UNets, cross-attention modules are the transformer blocks' `attn2`.
    expected = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    assert [layer.name for layer in layers] == expected and len(expected) == 4  # down 1, mid 1, up 2
    for layer in layers:
        assert layer.text_dim == 12
        assert layer.to_k.in_features == layer.to_v.in_features == 12
        assert layer.to_q.in_features == layer.to_out.out_features


def test_discovery_follows_the_text_width_and_ignores_self_attention():
    unet = micro_sd_unet(cross_dim=20)
    layers = cross_attention_layers(unet)
    assert {layer.text_dim for layer in layers} == {20}
    assert not any(layer.name.endswith("attn1") for layer in layers)
