"""The judge's ceiling for a toy VAE: render toy clips, encode and decode them with the VAE, judge
the result. No generator on top of this VAE can score above these numbers. Shape accuracy is
also given per true shape (decoded triangles and squares come out rounded).

    python examples/toy/diagnostics/vae_ceiling.py [wan:semgen_cli/assets/toy/vae] [--clips 16] [--frames 33]

Clips are drawn by `sample_spec(default_rng([777, i]))` at 8 fps; the rendered clips themselves
score 100 % (tests/test_judge.py).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("vae", nargs="?", default="toy", help="VAE spec (default: the bundled toy VAE)")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--frames", type=int, default=33)
    args = p.parse_args(argv)

    from semgen_cli.components import load_vae
    from semgen_cli.toy.fidelity import latent_frame_spans, psnr
    from semgen_cli.toy.judge import ATTRIBUTES, judge
    from semgen_cli.toy.world import render, sample_spec

    vae = load_vae(args.vae)
    acc = {k: [] for k in ATTRIBUTES}
    by_shape: dict[str, list[float]] = {}
    psnrs, per_latent = [], []
    for i in range(args.clips):
        spec = sample_spec(np.random.default_rng([777, i]), seconds=args.frames / 8.0, fps=8.0)
        clip = render(spec)
        dec = vae.decode(vae.encode(clip))
        psnrs.append(psnr(dec, clip))
        per_latent.append([psnr(dec[a:b], clip[a:b]) for a, b in latent_frame_spans(len(clip))])
        res = judge(dec, spec.caption)
        for k in ATTRIBUTES:
            acc[k].append(res.accuracy[k])
        by_shape.setdefault(spec.shape, []).append(res.accuracy["shape"])
    out = {"vae": args.vae, "fingerprint": vae.fingerprint, "clips": args.clips, "frames": args.frames,
           "psnr_mean": round(float(np.mean(psnrs)), 2),
           "psnr_per_latent_frame": [round(float(v), 1) for v in np.mean(per_latent, 0)],
           "judge_frame_accuracy_percent": {k: round(100 * float(np.mean(v)), 1) for k, v in acc.items()},
           "shape_accuracy_percent_by_shape": {k: {"clips": len(v), "frames_percent": round(100 * float(np.mean(v)), 1)}
                                               for k, v in sorted(by_shape.items())}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
