"""Components are specs (DESIGN §3): a string resolves to a frozen module plus a fingerprint.

    load_vae("wan:/models/Wan2.1-T2V-1.3B-Diffusers")      # or ltx:, cogvideox:, tiny
    load_semantic_encoder("qwen2.5-vl:/models/Qwen2.5-VL-3B-Instruct")   # or vjepa2:, videomae:, tiny
    load_text_encoder("umt5:/models/Wan2.1-T2V-1.3B-Diffusers")           # or t5:, minilm, tiny

Everything loads from local folders through the libraries' own `from_pretrained`; nothing here
reaches a hub. torch/diffusers/transformers are imported on first use of a loader.
"""

from semgen_cli.components.semantic_encoder import SemanticEncoder, load_semantic_encoder, qwen_patchify, smart_resize
from semgen_cli.components.text_encoder import TextEncoder, load_text_encoder
from semgen_cli.components.vae import VAE, load_vae

__all__ = [
    "VAE", "SemanticEncoder", "TextEncoder",
    "load_vae", "load_semantic_encoder", "load_text_encoder",
    "qwen_patchify", "smart_resize",
]
