#!/usr/bin/env bash
# The whole SemanticGen pipeline as one script, on tiny settings (a few minutes on a CPU):
#
#   toy-data → extract → fit-compressor → train-latent (stage 1) → train-semantic (stage 2)
#            → generate (text → semantic plan → latents → mp4) → drift
#
# Run from the repository root with the project environment active (`semgen` on PATH):
#
#   bash examples/pipeline.sh [WORKDIR]        # default WORKDIR: runs/example
#
# The runs here are trained for a handful of steps on random tiny components, so the video is
# noise with the right shape, length and metadata; for a real model swap the component specs
# (--semantic qwen2.5-vl:PATH --vae wan:PATH --text umt5:PATH), the presets and the step counts.
set -euo pipefail

W=${1:-runs/example}
PROMPT="a red circle moving left on a black background"
mkdir -p "$W"

# 1. data: toy-world clips with captions, then shards of semantic features, VAE latents and text
semgen toy-data "$W/videos" --count 8 --seconds 4 --seed 0 --overwrite
rm -rf "$W/data"   # a rerun starts the data over (extract would otherwise resume it)
semgen extract "$W/videos" --out "$W/data" --semantic tiny --vae tiny --text tiny --fps 8

# 2. the compressor (semantic features → 8 channels), then stage 1 and stage 2
rm -rf "$W/compressor" "$W/latent" "$W/semantic"
semgen fit-compressor "$W/data" --dim 8 --steps 20 --out "$W/compressor"
semgen train-latent "$W/data" --compressor "$W/compressor" --preset tiny --batch-size 2 --steps 10 --out "$W/latent"
semgen train-semantic "$W/data" --latent-run "$W/latent" --preset tiny --batch-size 2 --steps 10 --out "$W/semantic"

# 3. generate a minute (far longer than the 4 s training clips: it warns that it extrapolates),
#    keeping the semantic plan beside it, then re-render that plan with another seed
semgen generate "$PROMPT" --seconds "${SECONDS_OUT:-60}" --latent-run "$W/latent" --semantic-run "$W/semantic" \
    --steps 4 --seed 0 --save-semantics --out "$W/out.mp4"
semgen generate "$PROMPT" --latent-run "$W/latent" --semantic-from "$W/out.semantic.safetensors" \
    --steps 4 --seed 1 --out "$W/out-replan.mp4"

# 4. how much the video drifts between its first and last 15 %
semgen drift "$W/out.mp4"

echo "done: $W/out.mp4 ($W/out.json holds prompt, seed and settings)"
