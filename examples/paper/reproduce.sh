#!/usr/bin/env bash
# The paper's central claims at toy scale, from nothing, through semgen's own commands:
#
#   bash examples/paper/reproduce.sh OUT [--quick] [--device cuda]
#
# writes OUT/reproduction.md (tables, verdicts, the rule behind each verdict) and OUT/*.png, and
# prints a summary (examples/paper/README.md: the arms, the layout of OUT, the budget).
#
#   claim 1, Fig. 9    two-stage pipeline on the caption-aligned toy tower (compressed to dim 8) vs the
#                      same pipeline on compressed VAE latents (dim 8, same token budget); stage 2
#                      trained from scratch, toy-eval at 5 checkpoints along its training; 2 seeds
#   claim 2, Table 3   compressor dim 8 vs 64 vs none (the tower's raw width); toy-eval, stage-2 loss
#                      curves, plan-probe direction accuracy; 1 seed
#   claim 3, Table 2   SemanticGen (full-attention plan, shifted-window stage 1) vs Base-CT-Swin vs
#                      Base-CT on 60 s clips, sampled at 60 s: first/last 15 % accuracy, drift, and
#                      `semgen drift`'s Δ; 2 seeds
#   claim 4, encoders  claim 1 with a third arm: a tower of the same Qwen2.5-VL class trained with no
#                      labels and no captions (examples/toy/train_ssl_encoder.py); the first seed
#
# Every arm of one comparison gets the same data, steps, batch, learning rate and seeds (the values
# below; OUT/settings.json records them). The settings are the bundled pipeline's recipe
# (examples/toy/train_default.sh), which was tuned on the caption-aligned space; no arm is tuned here.
#
# Resumable: each step writes OUT/.done/STEP when it has finished; a rerun skips finished steps,
# continues unfinished training runs with semgen's --resume (exact on the CPU), and extract resumes
# its shards. Kill it at any point and run the same command again.
#
# Budget of the full CPU run: about 3.7 h of one-thread CPU time, under 2 h on a 2-core machine as two
# calls side by side (see "sizes and steps" below):
#   ARMS="caption-d8 vae-d8 caption-d64 caption-raw" OMP_NUM_THREADS=1 bash examples/paper/reproduce.sh OUT &
#   ARMS="ssl-d8 semanticgen base-ct-swin base-ct"    OMP_NUM_THREADS=1 bash examples/paper/reproduce.sh OUT
set -euo pipefail

usage() { echo "usage: bash examples/paper/reproduce.sh OUT [--quick] [--device cuda]" >&2; exit 2; }
OUT="" PROFILE=full DEVICE=cpu
while (($#)); do
  case $1 in
    --quick) PROFILE=quick ;;
    --device) [[ $# -ge 2 ]] || usage; DEVICE=$2; shift ;;
    --device=*) DEVICE=${1#--device=} ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    -*) echo "reproduce.sh: unknown option $1" >&2; usage ;;
    *) [[ -z $OUT ]] || { echo "reproduce.sh: OUT given twice ($OUT, $1)" >&2; usage; }; OUT=$1 ;;
  esac
  shift
done
[[ -n $OUT ]] || usage
case $DEVICE in cpu|cuda) ;; *) echo "reproduce.sh: --device $DEVICE: use cpu or cuda" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
command -v semgen >/dev/null || { echo "reproduce.sh: semgen is not on PATH (activate the project's environment)" >&2; exit 2; }
if [[ $DEVICE == cuda ]]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "reproduce.sh: --device cuda: CUDA is not available here; drop --device" >&2; exit 2; }
  [[ $PROFILE == quick ]] || PROFILE=gpu
else
  export CUDA_VISIBLE_DEVICES=""  # semgen's trainers take a GPU when they see one; a CPU run must not
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# ---- sizes and steps per profile -------------------------------------------------------------------
# Budget of the full CPU profile, from costs measured on the 2-core machine with one torch thread as
# CPU seconds (user + sys of /usr/bin/time, two step counts subtracted; examples/paper/README.md):
#   train-latent 4 s clips, batch 16: 0.63 s/step (semantic and vae conditions alike);
#   train-semantic 4 s clips: 0.25 s/step; fit-compressor: 0.14 s/step; SSL tower, batch 32: 0.55 s/step;
#   train-latent on 8 s windows: swin with plan 1.71 s/step, full attention without plan 0.68 s/step;
#   train-semantic on whole 60 s clips: 8.35 s/step; toy-eval 3.4 s per 4 s prompt, 45.6 s per 60 s
#   prompt; extract 0.2 s per second of video; each semgen command ~5-7 s to start.
# Full profile, with toy-eval at 20 Euler steps per stage (a third cheaper than 30):
# Per 4 s arm (x7: caption-d8 x2, vae-d8 x2, ssl-d8, caption-d64, caption-raw):
#   compressor 56 s + stage 1 504 s + stage 2 150 s + 6 toy-evals ~250 s + starts ~60 s = ~17 min -> 2 h
# Per claim-3 seed (x2): SemanticGen 56 + 430 + 670 + 130 s, Base-CT-Swin 430 + 130 s,
#   Base-CT 170 + 130 s = ~36 min -> 1.2 h
# Data, extracts (3), SSL tower, probes: ~0.5 h.  Total ~3.7 h of one-thread CPU time. These step counts
# are a tenth of the bundled pipeline's or less: the report's stage-1 ceilings (`--plans rendered`)
# say how much of each arm's score its stage 1 allows.
SEEDS=(0 1)                 # claims 1 and 3 (claim 2 and the SSL arm of claim 4 use the first)
BATCH=16 LR=3e-4 SHIFT=4
EMA=0.99                    # half-life ~70 steps: the EMA at the first stage-2 checkpoint holds little of the random init
EVAL_STEPS=30               # Euler steps per stage in every toy-eval (generate's default)
SAVE_EVERY=200              # stage-1 checkpoints (the last step always saves): a killed run loses little
case $PROFILE in
  quick)
    CLIPS=8 LONG_CLIPS=4 LONG_SECONDS=8 LONG_WINDOW=4
    SEEDS=(0)                 # one seed and two checkpoints: quick mode checks the plumbing, nothing else
    COMP_STEPS=10 LAT_STEPS=4 SEM_CHECKPOINTS=(2 4) LONG_LAT_STEPS=3 LONG_SEM_STEPS=3
    BATCH=2 WARMUP=0 EMA=0 EVAL_STEPS=2
    EVAL_COUNT=2 EVAL_SECONDS=4 LONG_EVAL_COUNT=1 PROBE_COUNT=2 PROBE_REFS=1
    SSL_STEPS=3 SSL_BATCH=4 PROBE_CLIPS=4 ;;
  full)
    CLIPS=400 LONG_CLIPS=32 LONG_SECONDS=60 LONG_WINDOW=8
    COMP_STEPS=400 LAT_STEPS=800 SEM_CHECKPOINTS=(100 200 300 450 600) LONG_LAT_STEPS=250 LONG_SEM_STEPS=80
    WARMUP=50 EVAL_STEPS=20
    EVAL_COUNT=16 EVAL_SECONDS=4 LONG_EVAL_COUNT=4 PROBE_COUNT=12 PROBE_REFS=6
    # toy-eval's built-in prompts put the 8 held-out ones first: 16 scores 8 held-out and 8 seen;
    # claim 3's 4 prompts of 60 s are held-out combinations only
    SSL_STEPS=600 SSL_BATCH=32 PROBE_CLIPS=64 ;;
  gpu)  # the same experiment at a larger scale; only on --device cuda (not yet run)
    CLIPS=2000 LONG_CLIPS=400 LONG_SECONDS=60 LONG_WINDOW=16
    COMP_STEPS=3000 LAT_STEPS=20000 SEM_CHECKPOINTS=(1000 2500 5000 10000 20000) LONG_LAT_STEPS=10000 LONG_SEM_STEPS=10000
    BATCH=32 WARMUP=200
    EVAL_COUNT=24 EVAL_SECONDS=20 LONG_EVAL_COUNT=24 PROBE_COUNT=24 PROBE_REFS=8
    SSL_STEPS=3000 SSL_BATCH=64 PROBE_CLIPS=256 ;;
esac
SEM_STEPS=${SEM_CHECKPOINTS[-1]}
HELD_OUT=$(python -c "from semgen_cli.toy.prompts import held_out_flag; print(held_out_flag())")
# both towers see 112x112 frames under Qwen's image-path pixel bounds (56² to 1280·28², the toy
# tower's default), so they give the same 4x4 token grid; `qwen2.5-vl:PATH` alone would default to
# the video bounds and upscale the self-supervised tower's input to 12x12 tokens
EXTRACT=(--vae toy --text minilm --fps 8 --size 64 --semantic-size 112 --semantic-fps 3.2 --num-workers 1 --shard-size 64
         --min-pixels 3136 --max-pixels 1003520)
COMMON=(--preset toy --batch-size "$BATCH" --lr "$LR" --warmup "$WARMUP" --ema-decay "$EMA" --keep-last 2)
# (the trainers draw data order, timesteps and noise from --seed; toy-eval's seed is fixed at 0 for every arm)

# ---- bookkeeping -----------------------------------------------------------------------------------
if [[ -f $OUT/settings.json ]]; then
  was=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['profile'])" "$OUT/settings.json")
  [[ $was == "$PROFILE" ]] || { echo "reproduce.sh: $OUT holds a '$was' run, this is '$PROFILE'; choose another OUT" >&2; exit 2; }
fi
mkdir -p "$OUT/.done" "$OUT/logs"

# step NAME CMD...: run CMD once (stdout+stderr to OUT/logs/NAME.log), then mark NAME done and
# record its wall time in OUT/times.tsv. Finished steps are skipped.
# Two calls may run side by side on one OUT (ARMS split between them): each step holds a lock while it
# runs, and a call that reaches a step the other is running waits for it and then skips it.
step() {
  local name=$1 lock; shift
  [[ -f $OUT/.done/$name ]] && return 0
  mkdir -p "$(dirname "$OUT/.done/$name")" "$(dirname "$OUT/logs/$name.log")" "$(dirname "$OUT/.locks/$name")"
  exec {lock}>"$OUT/.locks/$name"
  flock "$lock"
  if [[ -f $OUT/.done/$name ]]; then exec {lock}>&-; return 0; fi
  printf '%s  %s\n' "$(date +%H:%M:%S)" "$name"
  local t0=$SECONDS
  if ! "$@" >"$OUT/logs/$name.log" 2>&1; then
    echo "reproduce.sh: step $name failed: $(tail -n 1 "$OUT/logs/$name.log")" >&2
    echo "  (log: $OUT/logs/$name.log; rerun the same command to continue from here)" >&2
    exit 1
  fi
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >>"$OUT/times.tsv"
  touch "$OUT/.done/$name"
  exec {lock}>&-
}

# to FILE CMD...: CMD's stdout into FILE, atomically (FILE appears only when CMD succeeded).
to() { local f=$1; shift; mkdir -p "$(dirname "$f")"; "$@" >"$f.tmp" && mv "$f.tmp" "$f"; }

# train RUN CMD...: a semgen training command writing RUN, continued with --resume when RUN holds a
# committed checkpoint (a run stopped part-way, or finished but not yet marked done).
train() {
  local run=$1; shift
  if compgen -G "$run/checkpoints/step-*/state.json" >/dev/null; then "$@" --out "$run" --resume; else "$@" --out "$run"; fi
}

# wanted ARM: ARM is among $ARMS (default: every arm). ARMS="caption-d8 ssl-d8" runs part of the
# experiment (the report marks the rest as not measured); a later call without it does the rest.
ARMS=${ARMS:-all}
wanted() { [[ $ARMS == all || " $ARMS " == *" $1 "* ]]; }

# at_step RUN K: RUN's newest checkpoint is step K (so toy-eval scores that checkpoint).
at_step() { [[ $(cat "$1/checkpoints/latest") == "$(printf 'step-%07d' "$2")" ]] || { echo "$1: newest checkpoint is $(cat "$1/checkpoints/latest"), expected step $2" >&2; return 1; }; }

python - "$OUT/settings.json" <<PY
import json, os, platform, subprocess, sys, torch
s = {"profile": "$PROFILE", "device": "$DEVICE", "seeds": [${SEEDS[*]/%/,}], "batch": $BATCH, "lr": $LR, "warmup": $WARMUP,
     "ema_decay": $EMA, "stage2_shift": $SHIFT, "eval_euler_steps": $EVAL_STEPS,
     "clips": $CLIPS, "clip_seconds": 4, "long_clips": $LONG_CLIPS, "long_seconds": $LONG_SECONDS, "long_window_seconds": $LONG_WINDOW,
     "compressor_steps": $COMP_STEPS, "latent_steps": $LAT_STEPS, "semantic_checkpoints": [${SEM_CHECKPOINTS[*]/%/,}],
     "long_latent_steps": $LONG_LAT_STEPS, "long_semantic_steps": $LONG_SEM_STEPS,
     "eval_count": $EVAL_COUNT, "eval_seconds": $EVAL_SECONDS, "long_eval_count": $LONG_EVAL_COUNT,
     "plan_probe_count": $PROBE_COUNT, "plan_probe_references": $PROBE_REFS,
     "ssl_steps": $SSL_STEPS, "ssl_batch": $SSL_BATCH, "probe_clips": $PROBE_CLIPS,
     "held_out": "$HELD_OUT", "extract": "${EXTRACT[*]}", "threads": os.environ.get("OMP_NUM_THREADS"),
     "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
     "cuda": torch.cuda.get_device_name(0) if "$DEVICE" == "cuda" else None,
     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None}
path = sys.argv[1]
if os.path.exists(path):
    s["started"] = json.load(open(path)).get("started")
else:
    import datetime
    s["started"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
tmp = f"{path}.{os.getpid()}.tmp"  # two calls on one OUT write the same settings
open(tmp, "w").write(json.dumps(s, indent=2) + "\n"); os.replace(tmp, path)
PY

# ---- data and encoders (each made once, when an arm in $ARMS needs it) ---------------------------
SHORT_ARMS="caption-d8 vae-d8 ssl-d8 caption-d64 caption-raw" LONG_ARMS="semanticgen base-ct-swin base-ct"
wanted_any() { local a; for a in "$@"; do wanted "$a" && return 0; done; return 1; }
if wanted_any $SHORT_ARMS; then
  step data/toy-short semgen toy-data "$OUT/videos/short" --count "$CLIPS" --seconds 4 --seed 0 \
      --exclude-combos "$HELD_OUT" --overwrite
fi
if wanted_any caption-d8 vae-d8 caption-d64 caption-raw; then
  step data/extract-caption semgen extract "$OUT/videos/short" --out "$OUT/data/caption" --semantic toy "${EXTRACT[@]}" --device "$DEVICE"
fi
if wanted ssl-d8; then
  step encoders/ssl-tower python examples/toy/train_ssl_encoder.py --out "$OUT/ssl-tower" --steps "$SSL_STEPS" \
      --batch "$SSL_BATCH" --seed 0 --threads "$OMP_NUM_THREADS" --device "$DEVICE" --probe-clips "$PROBE_CLIPS"
  step encoders/probe python examples/toy/train_ssl_encoder.py --probe toy "qwen2.5-vl:$OUT/ssl-tower" \
      --probe-clips "$PROBE_CLIPS" --json "$OUT/eval/encoder-probe.json"
  step data/extract-ssl semgen extract "$OUT/videos/short" --out "$OUT/data/ssl" --semantic "qwen2.5-vl:$OUT/ssl-tower" "${EXTRACT[@]}" --device "$DEVICE"
fi
if wanted_any $LONG_ARMS; then
  step data/toy-long semgen toy-data "$OUT/videos/long" --count "$LONG_CLIPS" --seconds "$LONG_SECONDS" --seed 1 \
      --exclude-combos "$HELD_OUT" --overwrite
  step data/extract-long semgen extract "$OUT/videos/long" --out "$OUT/data/long" --semantic toy "${EXTRACT[@]}" --device "$DEVICE"
fi

S0=${SEEDS[0]}

# ---- claims 1, 2, 4: two-stage pipelines on 4 s clips ---------------------------------------------
# arm NAME SEED DATA COMPRESSOR_FLAGS... -- LATENT_FLAGS...: compressor, stage 1, then stage 2 in
# segments ending at each of SEM_CHECKPOINTS (one run continued with --resume: with a constant
# learning rate that is the same run as one call), toy-eval after each.
arm() {
  local name=$1 seed=$2 data=$3; shift 3
  wanted "$name" || return 0
  local comp_flags=() lat_flags=()
  while [[ $1 != -- ]]; do comp_flags+=("$1"); shift; done; shift
  lat_flags=("$@")
  local R=$OUT/runs/$name/s$seed E=$OUT/eval/$name/s$seed P=arms/$name/s$seed
  step "$P/compressor" train "$R/compressor" semgen fit-compressor "$data" "${comp_flags[@]}" --seed "$seed"
  step "$P/latent" train "$R/latent" semgen train-latent "$data" --compressor "$R/compressor" "${lat_flags[@]}" \
      "${COMMON[@]}" --steps "$LAT_STEPS" --save-every "$SAVE_EVERY" --seed "$seed"
  local k
  for k in "${SEM_CHECKPOINTS[@]}"; do
    step "$P/semantic-$k" train "$R/semantic" semgen train-semantic "$data" --latent-run "$R/latent" "${COMMON[@]}" \
        --shift "$SHIFT" --steps "$k" --save-every "$k" --seed "$seed"
    step "$P/eval-$k" eval_at "$R" "$k" "$E/step-$k.json"
  done
  step "$P/eval-rendered" to "$E/rendered.json" semgen toy-eval --latent-run "$R/latent" --plans rendered \
      --count "$EVAL_COUNT" --seconds "$EVAL_SECONDS" --steps "$EVAL_STEPS" --seed 0 --json
}
eval_at() {
  at_step "$1/semantic" "$2" && to "$3" semgen toy-eval --latent-run "$1/latent" --semantic-run "$1/semantic" \
      --count "$EVAL_COUNT" --seconds "$EVAL_SECONDS" --steps "$EVAL_STEPS" --seed 0 --json
}
plan_probe() {
  local R=$OUT/runs/$1/s$2
  to "$OUT/eval/$1/s$2/plan-probe.json" python examples/toy/diagnostics/plan_probe.py --latent-run "$R/latent" --semantic-run "$R/semantic" \
      --seconds "$EVAL_SECONDS" --count "$PROBE_COUNT" --references "$PROBE_REFS" --steps "$EVAL_STEPS" --json
}

for seed in "${SEEDS[@]}"; do
  # claim 1 / 4: the caption-aligned tower, dim 8 (also claim 2's dim-8 arm on the first seed)
  arm caption-d8 "$seed" "$OUT/data/caption" --dim 8 --steps "$COMP_STEPS" --batch-size 32 --lr 1e-3 --
  # claim 1 / 4: compressed VAE latents, dim 8, pooled to the semantic token budget (paper Fig. 9)
  arm vae-d8 "$seed" "$OUT/data/caption" --features vae --dim 8 --steps "$COMP_STEPS" --batch-size 32 --lr 1e-3 -- --condition vae
done
# claim 4: the self-supervised tower, dim 8, first seed (compared with claim 1's arms on that seed)
arm ssl-d8 "$S0" "$OUT/data/ssl" --dim 8 --steps "$COMP_STEPS" --batch-size 32 --lr 1e-3 --
# claim 2: dim 64 and none (raw features) beside caption-d8, first seed
arm caption-d64 "$S0" "$OUT/data/caption" --dim 64 --steps "$COMP_STEPS" --batch-size 32 --lr 1e-3 --
arm caption-raw "$S0" "$OUT/data/caption" --dim none --
for name in caption-d8 caption-d64 caption-raw; do
  if wanted "$name"; then step "arms/$name/s$S0/plan-probe" plan_probe "$name" "$S0"; fi
done

# ---- claim 3: 60 s videos ---------------------------------------------------------------------------
# Stage 1 of every arm trains on the same LONG_WINDOW-second windows of the same 60 s clips for the
# same steps; SemanticGen's stage 2 plans whole clips with full attention.
long_arm() {
  local name=$1 seed=$2; shift 2
  wanted "$name" || return 0
  local R=$OUT/runs/$name/s$seed E=$OUT/eval/$name/s$seed P=arms/$name/s$seed D=$OUT/data/long
  local gen=(--latent-run "$R/latent")
  if [[ $name == semanticgen ]]; then
    step "$P/compressor" train "$R/compressor" semgen fit-compressor "$D" --dim 8 --steps "$COMP_STEPS" --batch-size 32 --lr 1e-3 --seed "$seed"
    step "$P/latent" train "$R/latent" semgen train-latent "$D" --compressor "$R/compressor" --attention swin \
        --clip-seconds "$LONG_WINDOW" "${COMMON[@]}" --steps "$LONG_LAT_STEPS" --save-every "$SAVE_EVERY" --seed "$seed"
    step "$P/semantic" train "$R/semantic" semgen train-semantic "$D" --latent-run "$R/latent" "${COMMON[@]}" \
        --shift "$SHIFT" --steps "$LONG_SEM_STEPS" --save-every "$((SAVE_EVERY / 4))" --seed "$seed"
    gen+=(--semantic-run "$R/semantic")
  else
    step "$P/latent" train "$R/latent" semgen train-latent "$D" --condition none "$@" \
        --clip-seconds "$LONG_WINDOW" "${COMMON[@]}" --steps "$LONG_LAT_STEPS" --save-every "$SAVE_EVERY" --seed "$seed"
  fi
  step "$P/eval-long" to "$E/long.json" semgen toy-eval "${gen[@]}" --count "$LONG_EVAL_COUNT" --seconds "$LONG_SECONDS" \
      --steps "$EVAL_STEPS" --seed 0 --keep "$E/videos" --json
  step "$P/drift" drift_of "$E"
}
drift_of() { to "$1/drift.json" semgen drift $(python -c "import json,sys; print(' '.join(r['path'] for r in json.load(open(sys.argv[1]))['videos']))" "$1/long.json") --json; }

for seed in "${SEEDS[@]}"; do
  long_arm semanticgen "$seed"
  long_arm base-ct-swin "$seed" --attention swin
  long_arm base-ct "$seed" --attention full
done

# ---- the report --------------------------------------------------------------------------------------
python examples/paper/report.py "$OUT"
