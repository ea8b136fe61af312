"""The published architectures of the real components, built with random weights.

semgen runs on Wan2.1-T2V-1.3B (transformer and VAE, diffusers format), the Qwen2.5-VL-3B vision
tower (paper §3.2: the semantic encoder) and UMT5-XXL (Wan's text encoder). Their weights cannot be
downloaded everywhere, but their architectures can be built from the published configs, which is
what `examples/real_size.sh` and `benchmarks/gpu.py` do to exercise the real-size path. The values
below are those of the published `config.json` files:

- `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, `transformer/config.json` and `vae/config.json`;
- `Qwen/Qwen2.5-VL-3B-Instruct`, `config.json` → `vision_config`;
- `google/umt5-xxl`, `config.json` (encoder only; `layers=` builds fewer blocks of the same width).

`build(name, device="meta")` constructs a model without allocating its weights, so parameter
counts are cheap to check (`PARAMETER_COUNTS` holds the counts of the full published builds).
"""

from __future__ import annotations

from pathlib import Path

import torch

from semgen_cli.errors import ConfigError

WAN_T2V_1_3B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)

WAN_2_1_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
)

QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
)

UMT5_XXL = dict(
    d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", vocab_size=256384,
    dropout_rate=0.0, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
)

COMPONENTS = ("wan-1.3b-transformer", "wan-vae", "qwen2.5-vl-3b-vision", "umt5-xxl-encoder")

PARAMETER_COUNTS = {
    "wan-1.3b-transformer": 1_418_996_800,
    "wan-vae": 126_892_531,
    "qwen2.5-vl-3b-vision": 668_684_288,
    "umt5-xxl-encoder": 5_680_910_336,
}
"""Parameters of the full published builds (`build(name, device="meta")`); the 1.3B, the VAE's
127 M, the 3B's 0.67 B vision tower and UMT5-XXL's 5.7 B encoder are the published sizes."""


def build(name: str, device: str | torch.device = "meta", *, layers: int | None = None,
          vocab_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model `name` (one of COMPONENTS) in its published config, random weights.

    `layers` replaces the depth (Wan `num_layers`, Qwen `depth`, UMT5 `num_layers`) keeping the
    width; `vocab_size` replaces UMT5's (a smaller tokenizer's vocabulary). On the meta device no
    weight memory is allocated."""
    if name not in COMPONENTS:
        raise ConfigError(f"unknown published component {name!r}; choose one of {', '.join(COMPONENTS)}")
    if layers is not None and layers < 1:
        raise ConfigError(f"layers must be >= 1, got {layers}")
    with torch.device(device):
        if name == "wan-1.3b-transformer":
            import diffusers

            cfg = dict(WAN_T2V_1_3B_TRANSFORMER, **({"num_layers": layers} if layers else {}))
            module = diffusers.WanTransformer3DModel(**cfg)
        elif name == "wan-vae":
            import diffusers

            module = diffusers.AutoencoderKLWan(**WAN_2_1_VAE)
        elif name == "qwen2.5-vl-3b-vision":
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            cfg = dict(QWEN2_5_VL_3B_VISION, **({"depth": layers} if layers else {}))
            if layers:  # full-attention blocks that still exist (the published last one: the new last)
                cfg["fullatt_block_indexes"] = sorted({min(i, layers - 1) for i in cfg["fullatt_block_indexes"]})
            module = Qwen2_5_VisionTransformerPretrainedModel._from_config(
                Qwen2_5_VLVisionConfig(**cfg), attn_implementation="sdpa")
        else:
            from transformers import UMT5Config, UMT5EncoderModel

            cfg = dict(UMT5_XXL, **({"num_layers": layers} if layers else {}),
                       **({"vocab_size": vocab_size} if vocab_size else {}))
            module = UMT5EncoderModel(UMT5Config(**cfg))
    return module.to(dtype) if dtype != torch.float32 else module


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_random(name: str, folder: str | Path, *, seed: int = 0, layers: int | None = None,
                tokenizer=None, dtype: torch.dtype = torch.float32) -> int:
    """Build `name` with random weights (seeded) and `save_pretrained` it into `folder`, in the
    layout the matching semgen spec reads (`wan:`, `qwen2.5-vl:`, `umt5:`); a UMT5 encoder needs
    `tokenizer`, saved beside it, whose vocabulary sizes the embedding. Returns the parameter count."""
    folder = Path(folder)
    if name == "umt5-xxl-encoder" and tokenizer is None:
        raise ConfigError("a UMT5 encoder folder needs a tokenizer saved beside it")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build(name, "cpu", layers=layers, vocab_size=len(tokenizer) if tokenizer is not None else None)
    if name == "umt5-xxl-encoder":
        module.config.pad_token_id = tokenizer.pad_token_id
    if dtype != torch.float32:
        module = module.to(dtype)
    module.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    n = parameter_count(module)
    del module
    return n
