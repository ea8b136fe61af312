"""Wan2.1 weights in semgen's DiT: key mapping and reading a diffusers folder.

DESIGN §2 (the base model is Wan-like; semgen loads Wan2.1 from the diffusers format so users
fine-tune Wan2.1-T2V-1.3B instead of training from scratch) and issue 4 item 1. The mapping is
one-to-one; only the in-context semantic layers (``semantic_embed``, ``sigma_embed``) have no Wan
counterpart and keep their fresh initialisation (a stage-2 DiT, whose input and output are
compressed semantic channels, also keeps a fresh patch embedding and head: ``fresh=``). Reading
is plain safetensors + JSON, so it works with a single-file or a sharded
(``*.safetensors.index.json``) checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from semgen_cli.errors import InputError, MismatchError

# (semgen name pattern, diffusers Wan name pattern); {i} is the block index
_RENAMES: tuple[tuple[str, str], ...] = (
    ("patch_embed.", "patch_embedding."),
    ("time_embed.fc1.", "condition_embedder.time_embedder.linear_1."),
    ("time_embed.fc2.", "condition_embedder.time_embedder.linear_2."),
    ("time_proj.", "condition_embedder.time_proj."),
    ("text_embed.fc1.", "condition_embedder.text_embedder.linear_1."),
    ("text_embed.fc2.", "condition_embedder.text_embedder.linear_2."),
    ("blocks.{i}.self_attn.q.", "blocks.{i}.attn1.to_q."),
    ("blocks.{i}.self_attn.k.", "blocks.{i}.attn1.to_k."),
    ("blocks.{i}.self_attn.v.", "blocks.{i}.attn1.to_v."),
    ("blocks.{i}.self_attn.o.", "blocks.{i}.attn1.to_out.0."),
    ("blocks.{i}.self_attn.q_norm.", "blocks.{i}.attn1.norm_q."),
    ("blocks.{i}.self_attn.k_norm.", "blocks.{i}.attn1.norm_k."),
    ("blocks.{i}.cross_attn.q.", "blocks.{i}.attn2.to_q."),
    ("blocks.{i}.cross_attn.k.", "blocks.{i}.attn2.to_k."),
    ("blocks.{i}.cross_attn.v.", "blocks.{i}.attn2.to_v."),
    ("blocks.{i}.cross_attn.o.", "blocks.{i}.attn2.to_out.0."),
    ("blocks.{i}.cross_attn.q_norm.", "blocks.{i}.attn2.norm_q."),
    ("blocks.{i}.cross_attn.k_norm.", "blocks.{i}.attn2.norm_k."),
    ("blocks.{i}.cross_norm.", "blocks.{i}.norm2."),
    ("blocks.{i}.ffn.fc1.", "blocks.{i}.ffn.net.0.proj."),
    ("blocks.{i}.ffn.fc2.", "blocks.{i}.ffn.net.2."),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    ("head_modulation", "scale_shift_table"),
    ("head.", "proj_out."),
)
_FRESH = ("semantic_embed.", "sigma_embed.")


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)"))


_SEMGEN_TO_WAN = [(_compile(a), b) for a, b in _RENAMES]


def wan_key(name: str) -> str | None:
    """The diffusers Wan key of a semgen DiT parameter name (None if it has no Wan counterpart)."""
    for pattern, target in _SEMGEN_TO_WAN:
        m = pattern.match(name)
        if m:
            prefix = target.format(i=m.group("i")) if "i" in m.groupdict() else target
            return prefix + name[m.end() :]
    return None


def load_wan_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], fresh: tuple[str, ...] = ()) -> list[str]:
    """Copy a diffusers ``WanTransformer3DModel`` state dict into ``model`` (a semgen DiT).

    Every Wan tensor must land somewhere and every semgen parameter must be found, except the
    semantic layers and the semgen parameters under the prefixes ``fresh`` (whose Wan weights are
    left out on purpose, e.g. ``("patch_embed.", "head.")`` for other input and output channels);
    returns the names of those left as initialised.
    """
    own = model.state_dict()
    used, kept, loaded = set(), [], {}
    for name, param in own.items():
        key = wan_key(name)
        if name.startswith(tuple(fresh)):
            kept.append(name)
            used.add(key)
            continue
        if key is None or key not in state_dict:
            if name.startswith(_FRESH):
                kept.append(name)
                continue
            raise MismatchError(f"the Wan checkpoint has no weight {key or name!r} for semgen's {name!r}; is it a Wan2.1 T2V transformer?")
        tensor = state_dict[key]
        if tuple(tensor.shape) != tuple(param.shape):
            raise MismatchError(f"Wan weight {key!r} has shape {tuple(tensor.shape)}, semgen's {name!r} needs {tuple(param.shape)}")
        loaded[name] = tensor
        used.add(key)
    unused = sorted(k for k in set(state_dict) - used if not k.endswith("norm_added_q.weight"))
    if unused:
        raise MismatchError(f"the Wan checkpoint has weights semgen cannot place, e.g. {unused[:3]}; is it an I2V model?")
    with torch.no_grad():
        for name, tensor in loaded.items():
            own[name].copy_(tensor)
    return kept


def to_wan_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The Wan-named state dict of a semgen DiT (semantic layers left out)."""
    return {wan_key(k): v for k, v in model.state_dict().items() if wan_key(k) is not None}


def _transformer_folder(source) -> Path:
    folder = Path(source)
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    return folder


def read_wan_config(source) -> dict:
    """The config dict of a WanTransformer3DModel folder (as `read_wan`), without its weights."""
    folder = _transformer_folder(source)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder} has no config.json; give a Wan transformer folder saved by diffusers")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise InputError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise MismatchError(f"{config_path} describes a {config['_class_name']}, not a WanTransformer3DModel")
    return config


def read_wan(source) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config dict, state dict)`` of a WanTransformer3DModel given as a module or a folder.

    A folder is a transformer folder saved with ``save_pretrained`` (``config.json`` +
    ``diffusion_pytorch_model*.safetensors``) or a pipeline folder holding ``transformer/``.
    """
    if isinstance(source, nn.Module):
        return dict(source.config), source.state_dict()
    from safetensors.torch import load_file

    folder = _transformer_folder(source)
    config = read_wan_config(folder)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} has no *.safetensors weights; save the model with safe_serialization=True")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise InputError(f"{f} is listed in the safetensors index but missing")
        state_dict.update(load_file(str(f)))
    return config, state_dict
