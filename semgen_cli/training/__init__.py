"""One train loop for every trainable step (fit-compressor, train-latent, train-semantic).

The trainer owns everything that is the same for all of them: AdamW with a warm-up and LR
schedule, gradient accumulation, gradient clipping, bf16 autocast, an fp32 EMA of the weights,
DDP/FSDP2 under `torchrun`, `metrics.jsonl`, checkpoints and an exact `--resume`. A step module
owns only its model, its dataset and a `loss_fn`.

Usage (a step module)::

    from semgen_cli.training import Sample, TrainConfig, check_run_dir, train, write_json_atomic

    class Clips(torch.utils.data.Dataset):
        takes_seed = True                            # __getitem__ receives Sample(index, seed)
        def __len__(self): return len(self.shards)
        def __getitem__(self, key: Sample):
            g = torch.Generator().manual_seed(key.seed)        # random crop replays on resume
            x = self.shards.load(key.index)["latents"]       # (F, C, H, W)
            f0 = int(torch.randint(0, x.shape[0] - 8 + 1, (), generator=g))
            return x[f0 : f0 + 8]

    class Step(nn.Module):                           # ONE module: DDP/FSDP wrap it whole
        def __init__(self, dit, compressor): ...
        def forward(self, x, generator):             # the whole loss inside forward (see below)
            t = torch.rand(x.shape[0], generator=generator, device=x.device)
            ...
            return loss, {"kl": kl.item()}

    def loss_fn(model, batch, generator):            # model is Step, or its DDP wrapper
        return model(batch, generator)               # -> (loss tensor, {name: float})

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    check_run_dir(out, resume=args.resume)           # refuse BEFORE writing config.json
    write_json_atomic(out / "config.json", {"train": cfg.to_dict(), ...})
    result = train(Step(dit, comp), Clips(...), torch.stack, loss_fn, cfg, out,
                   resume=args.resume, reporter=reporter,
                   on_checkpoint=lambda step, ckpt_dir, ema: write_samples(ema, ckpt_dir),
                   resume_hint=f"semgen train-latent {data} --out {out} ... --resume")
    # later stages:  load_checkpoint_weights(out, which="ema")  -> state_dict

Design (the contract the step modules rely on):

- **Batches.** `batch_size` is the *global* number of samples per optimiser step, over all ranks
  and accumulation micro-steps; each rank's micro-batch is `batch_size / (world × grad_accum)`.
  Changing `grad_accum` or the number of GPUs therefore changes memory, never which samples a
  step sees. `loss_fn` must return the *mean* loss over its micro-batch.
- **Data order.** Samples come from an endless stream of per-epoch permutations; epoch `e` is
  `torch.randperm(len(dataset))` under a generator seeded by `(seed, e)`. The data cursor is
  `(epoch, position)` in that stream, so resume needs no dataset state. A step takes the next
  `batch_size` samples (crossing into the next epoch if needed; any dataset size works); micro-step
  `k` takes its slice, and rank `r` takes `slice[r::world]`.
- **Length grouping.** A dataset with a `lengths` attribute (one int per sample, e.g. the time
  tokens of a clip) gets its epoch permutation cut into chunks of `GROUP_BATCHES` batches, each
  chunk sorted by length and its batches put in a random order: a batch then holds clips of
  similar length, so padding a 4 s clip to a minute does not waste most of the compute (the
  Hugging Face `group_by_length` idea). Still a function of `(seed, e)` only, so resume is exact.
- **Per-sample randomness.** A dataset whose class sets `takes_seed = True` is indexed with
  `Sample(index, seed)` instead of an int; `seed` is a 63-bit hash of `(seed, epoch, position)`,
  so random crops, frame windows or noise made in `__getitem__` replay identically after a resume,
  and do not depend on the number of ranks or workers. Other datasets get plain ints.
- **The step's randomness.** `loss_fn(model, batch, generator)` gets a `torch.Generator` on the
  training device, seeded from `seed + rank`, saved and restored with each checkpoint: draw
  timesteps and noise from it. (Its draws differ between ranks, as they must; randomness that
  should not depend on the world size belongs in the dataset.) The global python/numpy/torch RNGs
  are seeded from `seed + rank` too and restored on resume (dropout replays).
- **DDP / FSDP.** `loss_fn` receives the wrapped model, so compute the whole loss inside ONE
  `model(...)` call (give your module a `forward` that returns the loss): calling submodules of a
  DDP/FSDP model directly bypasses its gradient synchronisation. Wrap several trained modules
  (a DiT and a compressor fine-tuned jointly) in one `nn.Module`; the trainer trains all its
  parameters with `requires_grad=True` and saves its whole `state_dict()`. Under DDP every
  trainable parameter must take part in the loss each step (freeze the ones that do not).
- **Files** in `out_dir` (rank 0 writes, DESIGN §4):
  `metrics.jsonl` (one line per logged step: step, loss, lr, grad_norm, samples_per_s,
  elapsed_s, then the caller's fields; loss and fields averaged over micro-steps and ranks), and
  `checkpoints/step-0000100/` with `model.safetensors`, `ema.safetensors` (fp32, when
  `ema_decay > 0`), `optimizer.pt` (holds the scheduler too; loaded with `weights_only=True`) and
  `state.json` (step, data cursor, RNG states per rank, config, fingerprint, and the bytes and
  sha256 of each weight file under `files`), written last into `step-0000100.tmp-PID/`, which is
  then renamed; `checkpoints/latest` names the newest folder and is written after it. Under
  FSDP the folder is a sharded `torch.distributed.checkpoint` one instead (`training.sharded`:
  each rank's shards, `.metadata`, `scheduler.json`, rank 0's gathered `ema.safetensors`), every
  file hashed into state.json, committed the same way (with `async_save`, once the background
  write is done), and readable by any number of processes. A folder
  without `state.json` is not a checkpoint. Files follow the umask. The folder is locked for the
  run (`semgen_cli.io.lock`): a second writer is refused, naming this one.
- **Checkpoints** are saved every `save_every` steps, at every `sample_every` step (so samples
  sit beside the weights that made them), at the last step, and when Ctrl-C stops the run (the
  first Ctrl-C or `kill -INT`, even of a process started with SIGINT ignored, finishes the current
  step, saves and returns `interrupted=True`, which the CLI turns into exit 130; a second one
  aborts). `keep_last` prunes older ones: the trainer's files go, files the caller wrote into the
  folder (validation mp4s) stay.
- **Non-finite numbers** stop the run: a NaN/inf loss or gradient norm raises a one-line error
  naming the step (and, where the inputs of the batch are not finite, the samples, by the
  dataset's optional `sample_id(key)`) before the update; a save refuses non-finite weights. No
  checkpoint is ever written from such a state.
- **Resume** restores model, EMA, optimizer, scheduler, RNGs and the data cursor: N steps +
  resume + M steps gives bit-identical losses to N+M steps on CPU. Raising `steps` on resume is
  allowed; with a "cosine"/"linear" schedule that changes the LR curve (the trainer warns).
  Before anything is loaded or written, the checkpoint's files are checked against the sizes and
  hashes its state.json recorded, so a missing, truncated or bit-flipped file is named. A run
  stopped before its first checkpoint was complete (a `checkpoints/` folder, no checkpoint in it)
  resumes from step 0.

The package, one job per module:

- `config`: `TrainConfig`, `TrainResult`, `Sample`.
- `checkpoint`: the run folder's layout; finding, checking and loading checkpoints (DESIGN §4).
- `state`: a trainer's state written to and restored from one checkpoint folder.
- `sharded`: the same for FSDP runs, through torch.distributed.checkpoint (DCP).
- `data`: the data stream, its cursor, length grouping, per-sample seeds, the batch sampler.
- `rng`: every RNG's state, saved, restored and held still around callbacks.
- `distributed`: the process group, rank helpers, DDP/FSDP2 and DTensor shards.
- `optim`: parameter groups and the LR schedule; `ema`: the fp32 EMA.
- `trainer`: the `_Trainer` (state of one run, one optimiser step) and its `Phase`.
- `loop`: `train()`, the loop, saving when due, Ctrl-C.
"""

from semgen_cli.io.shards import read_json, write_json_atomic
from semgen_cli.training.checkpoint import check_run_dir, latest_checkpoint, load_checkpoint_weights
from semgen_cli.training.config import Sample, TrainConfig, TrainResult
from semgen_cli.training.distributed import unwrap
from semgen_cli.training.loop import train

# Also importable from here, as `X as X` re-exports: the run folder's names and readers other steps
# use, and the helpers tests reach. A function a test monkeypatches is patched where it is used
# (`semgen_cli.training.loop._init_distributed`), so it is not re-exported: patching a copy here
# would change nothing.
from semgen_cli.training.checkpoint import CHECKPOINTS as CHECKPOINTS
from semgen_cli.training.checkpoint import EMA_FILE as EMA_FILE
from semgen_cli.training.checkpoint import LATEST as LATEST
from semgen_cli.training.checkpoint import METRICS as METRICS
from semgen_cli.training.checkpoint import MODEL_FILE as MODEL_FILE
from semgen_cli.training.checkpoint import OPTIM_FILE as OPTIM_FILE
from semgen_cli.training.checkpoint import STATE as STATE
from semgen_cli.training.checkpoint import STATE_VERSION as STATE_VERSION
from semgen_cli.training.checkpoint import _valid_checkpoints as _valid_checkpoints
from semgen_cli.training.checkpoint import load_sampling_weights as load_sampling_weights
from semgen_cli.training.checkpoint import verify_checkpoint as verify_checkpoint
from semgen_cli.training.data import GROUP_BATCHES as GROUP_BATCHES
from semgen_cli.training.data import _to_device as _to_device
from semgen_cli.training.data import group_by_length as group_by_length
from semgen_cli.training.distributed import _Dist as _Dist
from semgen_cli.training.optim import _param_groups as _param_groups
from semgen_cli.training.trainer import Phase as Phase
from semgen_cli.training.trainer import _Trainer as _Trainer

__all__ = [
    "Sample",
    "TrainConfig",
    "TrainResult",
    "train",
    "check_run_dir",
    "latest_checkpoint",
    "load_checkpoint_weights",
    "unwrap",
    "read_json",
    "write_json_atomic",
]
