"""LoRA on the DiT (semgen_cli.lora): injection, what trains, what a checkpoint holds, merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semgen_cli.errors import ConfigError, MismatchError
from semgen_cli.lora import DEFAULT_TARGETS, LoraSpec, apply_lora, base_fingerprint, merged_dit_state, target_modules
from semgen_cli.models.dit import DiT
from semgen_cli.models.presets import preset

FRESH = ("semantic_embed.", "sigma_embed.")


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(preset("tiny", in_channels=4, text_dim=16, semantic_dim=8, attention="full"))


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    t = torch.rand(2, generator=g)
    text = torch.randn(2, 5, 16, generator=g)
    sem = torch.randn(2, 2, 2, 2, 8, generator=g)
    return x, t, dict(text=text, semantic=sem, semantic_sigma=torch.zeros(2))


def test_default_targets_are_the_block_projections():
    dit = tiny_dit()
    names = target_modules(dit, DEFAULT_TARGETS)
    assert len(names) == 10 * dit.config.layers
    assert all(n.startswith("blocks.") for n in names)
    assert not any("time_embed" in n or "text_embed" in n for n in names)
    assert sorted(target_modules(dit, ("q",))) == sorted(n for n in names if n.endswith(".q"))
    assert len(target_modules(dit, ("self_attn",))) == 4 * dit.config.layers


def test_a_target_matching_nothing_is_one_line():
    with pytest.raises(ConfigError, match="--lora-targets 'qkv' matches no linear layer") as err:
        target_modules(tiny_dit(), ("qkv",))
    assert "\n" not in str(err.value) and "self_attn.q" in str(err.value)


@pytest.mark.parametrize("rank, alpha, targets, msg", [(0, None, None, "--lora-rank"), (4, -1.0, None, "--lora-alpha"),
                                                       (4, None, " , ", "--lora-targets"), (None, 2.0, None, "need --lora-rank")])
def test_bad_flags(rank, alpha, targets, msg):
    with pytest.raises(ConfigError, match=msg):
        LoraSpec.from_flags(rank, alpha, targets)


def test_only_adapters_and_fresh_layers_train_and_output_starts_unchanged():
    dit = tiny_dit()
    x, t, cond = inputs()
    before = dit(x, t, **cond)
    modules = apply_lora(dit, LoraSpec(4), FRESH)
    trained = {n for n, p in dit.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith(FRESH) for n in trained)
    assert any(n.startswith("semantic_embed.") for n in trained)
    assert sum(".lora_A." in n for n in trained) == len(modules)
    # B starts at zero: the adapted DiT computes what the base did
    torch.testing.assert_close(dit(x, t, **cond), before)
    # the frozen base is marked external (left out of checkpoints and the EMA), nothing trained is
    assert dit.external_weights and not (dit.external_weights & trained)
    assert "blocks.0.self_attn.q.base_layer.weight" in dit.external_weights


def _train_a_little(dit: DiT) -> None:
    opt = torch.optim.SGD([p for p in dit.parameters() if p.requires_grad], lr=0.1)
    x, t, cond = inputs()
    for _ in range(3):
        opt.zero_grad()
        dit(x, t, **cond).square().mean().backward()
        opt.step()


def test_merged_state_computes_what_the_adapted_dit_does(tmp_path):
    base = tiny_dit()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    fp = base_fingerprint(base, FRESH)
    spec = LoraSpec(4, alpha=8.0)
    modules = apply_lora(base, spec, FRESH)
    _train_a_little(base)
    x, t, cond = inputs()
    with torch.no_grad():
        want = base(x, t, **cond)
    saved = {k: v for k, v in base.state_dict().items() if k not in base.external_weights}
    assert not any("base_layer" in k for k in saved)
    # the base comes back from a "run": its weights are rebuilt here by a stand-in loader
    import semgen_cli.lora as lora

    def load_base(dit, source, fully_trained, flag):
        dit.load_state_dict({k: v for k, v in base_state.items() if not k.startswith(fully_trained)}, strict=False)

    rec = lora.record(spec, modules, FRESH, "wan:/nowhere", fp)
    orig = lora.load_base
    lora.load_base = load_base
    try:
        merged = merged_dit_state(base.config.to_dict(), rec, saved, "--latent-run RUN")
        plain = DiT(base.config)
        plain.load_state_dict(merged)
        with torch.no_grad():
            torch.testing.assert_close(plain(x, t, **cond), want, rtol=1e-4, atol=1e-5)
        # a checkpoint that lacks an adapter (edited, or of another semgen) is named
        with pytest.raises(MismatchError, match="does not fit its LoRA record") as err:
            merged_dit_state(base.config.to_dict(), rec, {k: v for k, v in saved.items() if "blocks.0.ffn.fc1.lora_A" not in k}, "--latent-run RUN")
        assert "\n" not in str(err.value)
        # another base is refused with one line naming it
        base_state["blocks.0.ffn.fc1.weight"] += 1
        with pytest.raises(MismatchError, match="LoRA base /nowhere holds other weights") as err:
            merged_dit_state(base.config.to_dict(), rec, saved, "--latent-run RUN")
        assert "\n" not in str(err.value)
    finally:
        lora.load_base = orig


class _Step(nn.Module):
    """A tiny step module around a LoRA DiT, the shape the trainer expects."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, batch, generator):
        x, t, cond = inputs()
        noise = torch.randn(x.shape, generator=generator)
        return (self.dit(x + 0.1 * noise, t, **cond) - x).square().mean() + 0 * batch.sum(), {}


def _lora_step(seed=0):
    dit = tiny_dit(seed)
    apply_lora(dit, LoraSpec(2), FRESH)
    return _Step(dit)


def test_trainer_stores_only_what_trains_and_resumes_exactly(tmp_path):
    from semgen_cli.io.shards import load_tensors
    from semgen_cli.training import TrainConfig, latest_checkpoint, train

    data = [torch.zeros(1) for _ in range(8)]

    def run(out, steps, resume=False):
        cfg = TrainConfig(steps=steps, batch_size=2, lr=1e-2, save_every=2, seed=0, ema_decay=0.9)
        return train(_lora_step(), data, torch.stack, lambda m, b, g: m(b, g), cfg, out, resume=resume)

    full = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    assert resumed.loss == full.loss
    ckpt = latest_checkpoint(tmp_path / "a")
    step = _lora_step()
    kept = {k for k, p in step.named_parameters() if p.requires_grad}
    for f in ("model.safetensors", "ema.safetensors"):
        assert set(load_tensors(ckpt / f)) == kept  # adapters and the fresh layers, no base weight
