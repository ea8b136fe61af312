"""examples/toy/train_vae.py's chunked encode/decode (the --warmup-latents path) must match
diffusers' own `AutoencoderKLWan.encode`/`decode` exactly, so a diffusers change to the causal
cache protocol shows up here and not as a silently worse toy VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.conftest import load_example

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy"


def _train_vae():
    return load_example("toy/train_vae.py")


def test_chunked_encode_decode_matches_diffusers():
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True], is_residual=True).eval()
    x, y, m = T.batch(np.random.default_rng(0), 1, 9, 32, extra=8)  # 17 frames: 5 latent frames
    assert x.shape == (1, 3, 17, 32, 32) and m.shape == (1, 1, 17, 32, 32)
    with torch.no_grad():
        ref_mu = model.encode(x).latent_dist.mean
        ref = model.decode(ref_mu).sample
        for lead in (0, 2):
            mu = T.encode_chunks(model, x, lead)
            torch.testing.assert_close(mu, ref_mu, rtol=0, atol=0)
            rec = T.decode_tail(model, mu, lead)
            assert rec.shape[2] == 17 - T.tail_frames(lead)
            torch.testing.assert_close(rec, ref[:, :, T.tail_frames(lead):], rtol=0, atol=0)
    assert [T.tail_frames(k) for k in (0, 1, 2, 3)] == [0, 1, 5, 9]


def test_warmup_frames_carry_no_gradient():
    """Gradients reach the encoder only through the latent frames after the warm-up."""
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True])
    x, _, _ = T.batch(np.random.default_rng(1), 1, 5, 16, extra=8)  # 13 frames: 4 latent frames
    x.requires_grad_(True)
    mu = T.encode_chunks(model, x, 2)
    mu[:, :, 2:].sum().backward()
    g = x.grad.abs().sum(dim=(0, 1, 3, 4))  # per frame
    assert float(g[: T.tail_frames(2)].sum()) == 0.0 and float(g[T.tail_frames(2):].sum()) > 0


def test_new_decoder_keeps_the_encoder_and_its_latents(tmp_path):
    """--decoder-base-dim: a wider, fresh decoder under the same encoder gives the same latents
    (and the same encoder fingerprint through the real loader)."""
    import diffusers

    from semgen_cli.components import load_vae

    T = _train_vae()
    torch.manual_seed(0)
    old = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                     temperal_downsample=[False, True, True], is_residual=True,
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    new = T.new_decoder(old, 8).eval()
    assert new.config.decoder_base_dim == 8 and new.decoder.conv_in.out_channels != old.decoder.conv_in.out_channels
    old.save_pretrained(tmp_path / "old", safe_serialization=True)
    new.save_pretrained(tmp_path / "new", safe_serialization=True)
    a, b = load_vae(f"wan:{tmp_path / 'old'}"), load_vae(f"wan:{tmp_path / 'new'}")
    assert a.encoder_fingerprint == b.encoder_fingerprint and a.fingerprint != b.fingerprint
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert torch.equal(a.encode(frames), b.encode(frames))


def test_patch_discriminator_and_adaptive_weight():
    T = _train_vae()
    torch.manual_seed(0)
    disc = T.PatchDiscriminator(width=8)
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    assert disc(video).shape == (10, 1, 4, 4)  # one 8x-downsampled logit grid per frame
    last = torch.nn.Parameter(torch.randn(3, 3))
    out = video.mean() + (last ** 2).sum()
    w = T.adaptive_weight(out * 2, out, last)  # the reconstruction gradient is twice the adversarial one
    assert abs(float(w) - 2.0) < 1e-3


def test_decoder_base_dim_needs_a_frozen_encoder(tmp_path):
    import pytest

    T = _train_vae()
    with pytest.raises(SystemExit, match="--decoder-base-dim needs --init and --freeze-encoder"):
        T.main(["--out", str(tmp_path / "v"), "--decoder-base-dim", "24", "--steps", "1"])
    assert not (tmp_path / "v").exists()


def test_streamed_windows_match_whole_clip_encode_decode():
    """--stream-seconds: a clip fed window by window through the carried (detached) caches gives
    the latents and frames of diffusers' encode/decode of the whole clip."""
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True], is_residual=True).eval()
    streams = T.Streams(np.random.default_rng(2), chunks=1, max_seconds=17 / T.FPS)
    windows = [streams.next_window(1, 16)[::3]]
    clip = streams.clip[0]  # the first window drew the clip
    while True:
        x, y, m, first = streams.next_window(1, 16)
        if first:  # the clip ended and a new one was drawn
            break
        windows.append((x, first))
    assert [w.shape[2] for w, _ in windows] == [5] + [4] * ((clip.shape[2] - 5) // 4)
    assert [f for _, f in windows] == [True] + [False] * (len(windows) - 1)
    with torch.no_grad():
        ref_mu = model.encode(clip).latent_dist.mean
        ref = model.decode(ref_mu).sample
        mus, recs = zip(*(T.stream_step(model, x, first, noise=0.0) for x, first in windows), strict=True)
        T.detach_caches(model)
    # equal up to float rounding: the 1x1x1 quant convs see windows instead of the whole clip
    torch.testing.assert_close(torch.cat(mus, 2), ref_mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(recs, 2), torch.clamp(ref, -1, 1), rtol=0, atol=1e-5)


def test_streamed_gradients_stop_at_the_window():
    """After detach_caches the next window's loss reaches only its own frames, not the window before."""
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True])
    x, _, _ = T.batch(np.random.default_rng(1), 1, 9, 16)
    a, b = x[:, :, :5].clone().requires_grad_(True), x[:, :, 5:].clone().requires_grad_(True)
    T.stream_step(model, a, True, noise=0.0)
    T.detach_caches(model)
    _, rec = T.stream_step(model, b, False, noise=0.0)
    rec.sum().backward()
    assert a.grad is None and float(b.grad.abs().sum()) > 0


def test_stream_seconds_rejects_warmup_and_bad_windows(tmp_path):
    import pytest

    T = _train_vae()
    for extra in (["--warmup-latents", "4"], ["--frames", "1"], ["--frames", "6"]):
        with pytest.raises(SystemExit, match="--stream-seconds needs --frames 4k\\+1"):
            T.main(["--out", str(tmp_path / "v"), "--stream-seconds", "8", "--steps", "1", *extra])
    with pytest.raises(SystemExit, match="--stream-groups must be at least 1, got 0"):
        T.main(["--out", str(tmp_path / "v"), "--stream-seconds", "8", "--frames", "5", "--stream-groups", "0", "--steps", "1"])
    assert not (tmp_path / "v").exists()


def test_stream_restarts_with_empty_caches_after_a_save():
    """A save measures latent statistics with the model (clearing its caches), so the stream must
    start new clips, with `first` set, at the next window."""
    T = _train_vae()
    streams = T.Streams(np.random.default_rng(3), chunks=2, max_seconds=40 / T.FPS)
    assert streams.next_window(2, 16)[3] is True
    assert streams.next_window(2, 16)[3] is False
    streams.restart()
    x, _, _, first = streams.next_window(2, 16)
    assert first is True and x.shape[2] == 9


def test_stream_groups_take_turns_with_their_own_caches():
    """Two groups interleaved window by window: each still reproduces its own clip's whole-clip
    encode/decode, so the caches travel with their group."""
    import diffusers

    T = _train_vae()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                       temperal_downsample=[False, True, True], is_residual=True).eval()
    streams = T.Streams(np.random.default_rng(0), chunks=1, max_seconds=13 / T.FPS, groups=2)
    clips, mus, recs = [None, None], [[], []], [[], []]
    with torch.no_grad():
        for _ in range(6):  # both groups: windows of 5, 4, 4 frames at most (clips of 5 to 13 frames)
            g = streams.turn
            x, _, _, first = streams.next_window(1, 16)
            if first and clips[g] is not None:
                streams.leave(model)
                continue
            if first:
                clips[g] = streams.clip[0]
            streams.enter(model)
            mu, rec = T.stream_step(model, x, first, noise=0.0)
            mus[g].append(mu), recs[g].append(rec)
            streams.leave(model)
        for g in (0, 1):
            ref_mu = model.encode(clips[g]).latent_dist.mean
            ref = model.decode(ref_mu).sample
            got = torch.cat(mus[g], 2)
            torch.testing.assert_close(got, ref_mu[:, :, :got.shape[2]], rtol=0, atol=1e-6)
            torch.testing.assert_close(torch.cat(recs[g], 2), torch.clamp(ref, -1, 1)[:, :, :sum(r.shape[2] for r in recs[g])], rtol=0, atol=1e-5)
    assert not torch.equal(clips[0], clips[1])
    assert [len(m) for m in mus] == [3, 3]  # this seed: both clips 13 frames, so both groups carry caches


def _script_calls(script: Path, name: str) -> list[list[str]]:
    """Arguments of each `python examples/toy/NAME ...` call in a bash script: continuation lines
    joined, `${VAR:-default}` replaced by its default, a `$VAR` by the default the script gives it
    (`VAR=${VAR:-default}`) or else by the placeholder X."""
    import re
    import shlex

    text = re.sub(r"\\\n\s*", " ", script.read_text())
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", text, flags=re.M))
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), "X"), text)
    return [shlex.split(line)[2:] for line in text.splitlines()
            if line.strip().startswith(f"python examples/toy/{name} ")]


def test_train_default_script_calls_parse():
    """Each train_vae.py call in train_default.sh is accepted by train_vae.py's own parser, so the
    script that reproduces the bundle cannot drift from the flags the trainer has."""
    T = _train_vae()
    calls = _script_calls(TOY / "train_default.sh", "train_vae.py")
    assert len(calls) == 5  # single frames, streamed windows, the decoder alone (three runs)
    parsed = [T.parse_args(argv) for argv in calls]
    assert [a.freeze_encoder for a in parsed] == [False, False, True, True, True]
    assert all(b.init == a.out for a, b in zip(parsed, parsed[1:], strict=False))  # each phase continues the last
    assert parsed[-1].out == Path("semgen_cli/assets/toy/vae")
