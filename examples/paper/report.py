"""Write OUT/reproduction.md and OUT/*.png from the outputs of `examples/paper/reproduce.sh OUT`.

    python examples/paper/report.py OUT
    python examples/paper/report.py OUT --publish docs/reproduction.md   # the page and its plots for the docs

Reads only what the script's steps wrote: OUT/settings.json (sizes, steps, seeds), OUT/times.tsv
(wall time of each finished step), the `semgen toy-eval --json` documents under
OUT/eval/ARM/sSEED/ (step-K.json at stage-2 step K, rendered.json with stage 1 on rendered plans,
long.json at 60 s), `semgen drift --json` (drift.json), examples/toy/diagnostics/plan_probe.py --json
(plan-probe.json), examples/toy/train_ssl_encoder.py --probe (eval/encoder-probe.json) and the
trainers' metrics.jsonl. Arms or steps that have not run yet are shown as missing, so the report of
a partial run is still written. Every verdict is computed from the numbers by the rule printed
beside it (`verdict_*` below); none is written by hand.

The claims (paper: ../shared/paper, DESIGN §6 for the toy world):
1. Fig. 9 / §4.3 "SemanticGen converges faster": stage 2 in the semantic space against the same
   pipeline in a compressed-VAE space, the same steps.
2. Table 3 / Fig. 8 / §3.2: compressing the semantic space (dim 8 < 64 < none) helps.
3. Table 2 / §4.2: less drift in long videos than Base-CT-Swin (and Base-CT).
4. App. C future work: semantic encoders trained by other paradigms (here: self-supervised).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semgen_cli.io.atomic import write_bytes_atomic, write_text_atomic

ATTRS = ("background", "colour", "shape", "motion")
MARGIN = 2.0
"""Points of accuracy (or of drift) a difference must reach to count as a reproduction."""
DRIFT_METRICS = ("temporal_flickering", "motion_smoothness_linear", "colour_histogram_distance", "brightness", "colourfulness", "sharpness")
UNIT_METRICS = {"temporal_flickering", "motion_smoothness_linear", "colour_histogram_distance", "brightness"}
"""Metrics on a 0–1 scale: their Δ is given in points (×100); the others as Δ % of the first segment."""
ARM_LABEL = {
    "caption-d8": "caption-aligned tower, dim 8", "vae-d8": "compressed VAE, dim 8", "ssl-d8": "self-supervised tower, dim 8",
    "caption-d64": "caption-aligned tower, dim 64", "caption-raw": "caption-aligned tower, no compression (raw, width 64)",
    "semanticgen": "SemanticGen (full-attention plan, swin stage 1)", "base-ct-swin": "Base-CT-Swin (no plan, swin)",
    "base-ct": "Base-CT (no plan, full attention)",
}
ONE_SEED = ("caption-d64", "caption-raw", "ssl-d8")
"""Arms trained on the first seed only (claim 2, and the self-supervised arm of claim 4)."""
CLAIM1_ARMS = ("caption-d8", "vae-d8")
CLAIM2_ARMS = ("caption-d8", "caption-d64", "caption-raw")
CLAIM3_ARMS = ("semanticgen", "base-ct-swin", "base-ct")
CLAIM4_ARMS = ("caption-d8", "ssl-d8", "vae-d8")
USED_BY = {"caption-d8": "claims 1, 2, 4", "vae-d8": "claims 1, 4", "ssl-d8": "claim 4", "caption-d64": "claim 2",
           "caption-raw": "claim 2", "semanticgen": "claim 3", "base-ct-swin": "claim 3", "base-ct": "claim 3",
           "encoders": "claim 4 (and the encoder probe)", "data": "all claims"}
REPORT = "reproduction.md"


# -- reading ---------------------------------------------------------------------------------------
def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_times(out: Path) -> list[tuple[str, float]]:
    path = out / "times.tsv"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, _, sec = line.partition("\t")
        if name and sec.strip():
            rows.append((name, float(sec)))
    return rows


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written when the run stopped
            pass
    return rows


def accuracy(doc: dict | None, group: str = "all") -> dict[str, float] | None:
    """toy-eval --json -> per-attribute mean per-frame accuracy in points for `group` (all, seen, held-out)."""
    if not doc:
        return None
    g = doc.get("summary", {}).get(group)
    if not g:
        return None
    return {a: 100.0 * g[a]["frames"] for a in ATTRS if a in g}


def mean_attr(acc: dict[str, float] | None) -> float | None:
    return sum(acc[a] for a in ATTRS) / len(ATTRS) if acc and all(a in acc for a in ATTRS) else None


def segments(doc: dict | None) -> dict[str, dict[str, float]] | None:
    """toy-eval --json of long videos -> per attribute: first-15 %, last-15 % accuracy and the mean
    per-video |first − last| (FramePack's Δ per video, then the mean over videos), in points."""
    if not doc or not doc.get("videos"):
        return None
    rows = doc["videos"]
    out = {}
    for a in ATTRS:
        first = [r["first"][a] for r in rows]
        last = [r["last"][a] for r in rows]
        out[a] = {"first": 100 * _mean(first), "last": 100 * _mean(last),
                  "drift": 100 * _mean([abs(f - l) for f, l in zip(first, last, strict=True)])}
    return out


def seconds_per_step(rows: list[dict]) -> float | None:
    """Median of Δelapsed_s / Δstep over consecutive logged steps (a resumed segment restarts its clock:
    intervals whose elapsed time goes back are skipped)."""
    rates = []
    for a, b in zip(rows, rows[1:], strict=False):
        ds, dt = b.get("step", 0) - a.get("step", 0), b.get("elapsed_s", 0) - a.get("elapsed_s", 0)
        if ds > 0 and dt > 0:
            rates.append(dt / ds)
    return sorted(rates)[len(rates) // 2] if rates else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def spread(xs) -> str:
    """'mean [min–max]' over seeds (one value: the value)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m = sum(xs) / len(xs)
    return f"{m:.1f}" if len(xs) == 1 else f"{m:.1f} [{min(xs):.1f}–{max(xs):.1f}]"


# -- verdicts (the rules are printed in the report) ---------------------------------------------------
RULE_HIGHER = (f"**reproduced** when the first arm's score is higher by at least {MARGIN:g} points on the mean over "
               "seeds and higher on every seed (paired by seed); **partly reproduced** when it is higher on the mean "
               "but not by that much or not on every seed; **not reproduced** otherwise.")


def verdict_higher(a: list[float], b: list[float]) -> str:
    """a, b: per-seed scores, paired by seed; the claim is that a is higher."""
    if not a or not b or len(a) != len(b):
        return "not measured"
    gap = _mean(a) - _mean(b)
    if gap >= MARGIN and all(x > y for x, y in zip(a, b, strict=False)):
        return "reproduced"
    return "partly reproduced" if gap > 0 else "not reproduced"


RULE_ORDER = (f"**reproduced** when dim 8 ≥ dim 64 ≥ none and dim 8 beats none by at least {MARGIN:g} points; "
              "**partly reproduced** when dim 8 beats none or dim 64 but not in that order or by less; **not reproduced** "
              "otherwise (dim 8 no better than either).")


def verdict_order(d8: float | None, d64: float | None, raw: float | None) -> str:
    if None in (d8, d64, raw):
        return "not measured"
    if d8 >= d64 >= raw and d8 - raw >= MARGIN:
        return "reproduced"
    return "partly reproduced" if d8 > raw or d8 > d64 else "not reproduced"


FAIR_START = 50.0  # % first-15 % accuracy (colour, shape, motion) under which claim 3's drift is called untested
RULE_LOWER = (f"**reproduced** when SemanticGen's drift is lower than each baseline's by at least {MARGIN:g} points on the "
              "mean over seeds and lower on every seed; **partly reproduced** when it is lower than at least one "
              "baseline's on the mean; **not reproduced** otherwise.")


def verdict_lower(ours: list[float], baselines: list[list[float]]) -> str:
    if not ours or any(not b or len(b) != len(ours) for b in baselines) or not baselines:
        return "not measured"
    m = _mean(ours)
    if all(_mean(b) - m >= MARGIN and all(x < y for x, y in zip(ours, b, strict=False)) for b in baselines):
        return "reproduced"
    return "partly reproduced" if any(m < _mean(b) for b in baselines) else "not reproduced"


# -- the experiment's numbers ---------------------------------------------------------------------------
class Results:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.settings = read_json(self.out / "settings.json") or {}
        self.seeds = list(self.settings.get("seeds", [0]))
        self.checkpoints = list(self.settings.get("semantic_checkpoints", []))
        self.times = read_times(self.out)

    def eval(self, arm: str, seed: int, name: str):
        return read_json(self.out / "eval" / arm / f"s{seed}" / name)

    def curve(self, arm: str, seed: int, group: str = "all") -> dict[int, dict[str, float]]:
        """stage-2 step -> per-attribute accuracy (points), for the checkpoints evaluated so far."""
        out = {}
        for k in self.checkpoints:
            acc = accuracy(self.eval(arm, seed, f"step-{k}.json"), group)
            if acc:
                out[k] = acc
        return out

    def auc(self, arm: str, seed: int) -> float | None:
        """Mean over the checkpoints of the mean-over-attributes accuracy (all prompts); None until every checkpoint is in."""
        c = self.curve(arm, seed)
        if len(c) < len(self.checkpoints) or not c:
            return None
        return _mean([mean_attr(v) for v in c.values()])

    def final(self, arm: str, seed: int, group: str = "all"):
        return accuracy(self.eval(arm, seed, f"step-{self.checkpoints[-1]}.json"), group) if self.checkpoints else None

    def seeds_of(self, arm: str) -> list[int]:
        return self.seeds if arm not in ONE_SEED else self.seeds[:1]

    def metrics(self, arm: str, seed: int, stage: str = "semantic") -> list[dict]:
        return read_metrics(self.out / "runs" / arm / f"s{seed}" / stage / "metrics.jsonl")


# -- plots -------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(res: Results, arms, path: Path, title: str) -> bool:
    """Accuracy (points) vs stage-2 steps: one panel per attribute and one for their mean; per arm the
    mean over seeds, shaded between the lowest and highest seed."""
    series = {arm: [res.curve(arm, s) for s in res.seeds_of(arm)] for arm in arms}
    if not any(c for cs in series.values() for c in cs):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6), sharey=True)
    for ax, attr in zip(axes, ATTRS + ("mean",), strict=True):
        for arm, curves in series.items():
            steps = sorted({k for c in curves for k in c})
            if not steps:
                continue
            vals = [[(mean_attr(c[k]) if attr == "mean" else c[k][attr]) for c in curves if k in c] for k in steps]
            ax.plot(steps, [_mean(v) for v in vals], marker="o", label=ARM_LABEL.get(arm, arm))
            if len(curves) > 1:
                ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2)
        ax.set_title(attr)
        ax.set_xlabel("stage-2 steps")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("toy-eval accuracy (%, frames)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_losses(res: Results, arms, path: Path) -> bool:
    curves = {arm: res.metrics(arm, res.seeds[0]) for arm in arms}
    if not any(curves.values()):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rows in curves.items():
        if not rows:
            continue
        steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
        w = max(1, len(losses) // 20)  # rolling mean over 5 % of the points
        smooth = [sum(losses[max(0, i - w + 1): i + 1]) / len(losses[max(0, i - w + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, label=ARM_LABEL.get(arm, arm))
    ax.set_xlabel("stage-2 steps")
    ax.set_ylabel("flow-matching loss (rolling mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Table 3: stage-2 training loss (each in its own target space)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_long(res: Results, path: Path) -> bool:
    data = {arm: [segments(res.eval(arm, s, "long.json")) for s in res.seeds] for arm in CLAIM3_ARMS}
    if not any(x for xs in data.values() for x in xs):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True)
    for ax, attr in zip(axes, ATTRS, strict=True):
        for i, segs in enumerate(data.values()):
            segs = [s for s in segs if s]
            if not segs:
                continue
            first, last = _mean([s[attr]["first"] for s in segs]), _mean([s[attr]["last"] for s in segs])
            ax.bar([i - 0.2, i + 0.2], [first, last], width=0.38, color=["C0", "C3"])
        ax.set_xticks(range(len(data)), [a.replace("semanticgen", "SemanticGen") for a in data], fontsize=8)
        ax.set_title(f"{attr}: first (blue) / last (red) 15 %")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("toy-eval accuracy (%, frames)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# -- the report ----------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def curve_rows(res: Results, arms, group: str) -> list[list[str]]:
    rows = []
    for arm in arms:
        seeds = res.seeds_of(arm)
        for k in res.checkpoints:
            accs = [res.curve(arm, s, group).get(k) for s in seeds]
            if not any(accs):
                rows.append([arm, str(k)] + ["—"] * 5)
                continue
            rows.append([arm, str(k)] + [spread([a[attr] if a else None for a in accs]) for attr in ATTRS]
                        + [spread([mean_attr(a) for a in accs])])
    return rows


def fig9_section(res: Results, arms, a: str, b: str, png: str, title: str, verdict_name: str,
                 tabled=None) -> tuple[list[str], str]:
    """Accuracy along stage-2 training for `arms` (per-step tables for `tabled`, default all), the
    score per seed, the plot, and the verdict that `a` beats `b`."""
    lines = []
    drew = plot_curves(res, arms, res.out / png, title)
    for group, what in (("seen", "seen combinations"), ("held-out", "held-out combinations (never in the training data)")):
        lines += ["", f"Accuracy of the {what}, % of frames, mean [range] over seeds {res.seeds_of((tabled or arms)[0])}:", ""]
        lines += table(["arm", "stage-2 step"] + list(ATTRS) + ["mean"], curve_rows(res, tabled or arms, group))
    aucs = {arm: [res.auc(arm, s) for s in res.seeds_of(arm)] for arm in arms}
    lines += ["", "Score = accuracy over all prompts, mean over the 4 attributes and over the checkpoints (the area under the curves):", ""]
    lines += table(["arm", "score per seed", "mean [range]"],
                   [[arm, ", ".join("—" if x is None else f"{x:.1f}" for x in v), spread(v)] for arm, v in aucs.items()])
    paired = [sd for sd in res.seeds_of(a) if sd in res.seeds_of(b)]  # the verdict compares the seeds both arms have
    sa, sb = [res.auc(a, sd) for sd in paired], [res.auc(b, sd) for sd in paired]
    ok = bool(paired) and all(x is not None for x in sa + sb)
    v = verdict_higher(sa, sb) if ok else "not measured"
    if drew:
        lines += ["", f"![{title}]({png})"]
    gap = f"{_mean(sa) - _mean(sb):+.1f} points" if ok else "incomplete"
    lines += ["", f"**Verdict ({verdict_name}): {v}** ({a} − {b} = {gap} on seeds {paired}; rule: {RULE_HIGHER})"]
    return lines, v


def ceilings(res: Results, arms) -> list[str]:
    rows = []
    for arm in arms:
        accs = [accuracy(res.eval(arm, s, "rendered.json")) for s in res.seeds_of(arm)]
        rows.append([arm] + [spread([x[attr] if x else None for x in accs]) for attr in ATTRS] + [spread([mean_attr(x) for x in accs])])
    return (["", "Stage 1 alone (`toy-eval --plans rendered`: each prompt's plan taken from a rendered clip, the plan a perfect "
             "stage 2 would make), all prompts, % of frames: the ceiling each arm's stage 1 puts on the curves above.", ""]
            + table(["arm"] + list(ATTRS) + ["mean"], rows))


def _claim2(res: Results, s: dict, verdicts: dict[str, str]) -> list[str]:
    """Claim 2 (Table 3): compressor dims."""
    L: list[str] = []
    L += ["", "## Claim 2 (paper Table 3): compressing the semantic space helps", "",
          f"Compressor dim 8 against 64 against none, seed {res.seeds[0]}, the same steps. The toy tower's raw width is 64, so "
          "here dim 64 keeps the width and differs from none by the MLP and its KL term only."]
    rows, scores = [], {}
    for arm in CLAIM2_ARMS:
        acc = res.final(arm, res.seeds[0])
        pp = read_json(res.out / "eval" / arm / f"s{res.seeds[0]}" / "plan-probe.json") or {}
        way = (pp.get("right_way_fraction") or {}).get("sampled", {}).get("all")
        fwd = (pp.get("forward_fraction") or {}).get("sampled", {}).get("all")
        ref = (pp.get("right_way_fraction") or {}).get("rendered", {}).get("all")
        m = res.metrics(arm, res.seeds[0])
        tail = [r["loss"] for r in m[-max(1, len(m) // 10):]] if m else []
        scores[arm] = mean_attr(acc)
        rows.append([arm] + [f"{acc[a]:.1f}" if acc else "—" for a in ATTRS] + [f"{scores[arm]:.1f}" if scores[arm] is not None else "—"]
                    + [f"{100 * x:.1f}" if x is not None else "—" for x in (way, fwd, ref)]
                    + [f"{_mean(tail):.4f}" if tail else "—"])
    L += ["", f"toy-eval at the last checkpoint (all prompts, % of frames); plan probe (examples/toy/diagnostics/plan_probe.py, "
              f"{s.get('plan_probe_count')} prompts): % of sampled plans whose mean step goes the caption's way, % of plan steps "
              "that move as the caption says, and the probe's check on rendered clips' plans; final stage-2 loss "
              "(mean of the last 10 % of the logged steps; each arm's loss is in its own space, so compare shapes, not levels):", ""]
    L += table(["arm"] + list(ATTRS) + ["mean", "plan right way", "plan steps forward", "probe on rendered", "final loss"], rows)
    if plot_losses(res, CLAIM2_ARMS, res.out / "claim2-loss.png"):
        L += ["", "![Table 3 at toy scale: stage-2 loss](claim2-loss.png)"]
    if plot_curves(res, CLAIM2_ARMS, res.out / "claim2-curves.png", "Table 3 at toy scale: accuracy vs stage-2 steps"):
        L += ["", "![Table 3 at toy scale: accuracy vs stage-2 steps](claim2-curves.png)"]
    v = verdict_order(scores["caption-d8"], scores["caption-d64"], scores["caption-raw"])
    verdicts["claim 2 (Table 3)"] = v
    sc = ", ".join(f"{a} {scores[a]:.1f}" if scores[a] is not None else f"{a} —" for a in CLAIM2_ARMS)
    L += ["", f"**Verdict (Table 3): {v}** (mean accuracy: {sc}; one seed; rule: {RULE_ORDER})"]
    return L


def _held_out_note(res: Results) -> str:
    """' (n of them held-out combinations)' from the first long.json found, else ''."""
    doc = next((d for arm in CLAIM3_ARMS for sd in res.seeds if (d := res.eval(arm, sd, "long.json"))), None)
    if not doc:
        return ""
    n = sum(bool(v.get("held_out")) for v in doc["videos"])
    return f" ({'all' if n == len(doc['videos']) else n} of them held-out combinations, never in the training clips)" if n else " (all of them seen combinations)"


def _claim3(res: Results, s: dict, verdicts: dict[str, str]) -> list[str]:
    """Claim 3 (Table 2): drift in long videos."""
    L: list[str] = []
    L += ["", "## Claim 3 (paper Table 2): less drift in long videos", "",
          f"Each arm's stage 1 was trained on the same {s.get('long_window_seconds')} s windows of the same "
          f"{s.get('long_seconds')} s clips for the same steps; SemanticGen's stage 2 plans the whole clip with full attention. "
          f"Sampled at {s.get('long_seconds')} s, {s.get('long_eval_count')} prompts{_held_out_note(res)}. Per attribute: accuracy over the first and "
          "the last 15 % of the frames and their drift |first − last| (per video, then the mean), mean [range] over seeds:", ""]
    rows, drifts, segs_of = [], {}, {}
    for arm in CLAIM3_ARMS:
        segs = segs_of[arm] = [segments(res.eval(arm, sd, "long.json")) for sd in res.seeds]
        drifts[arm] = [_mean([x[a]["drift"] for a in ATTRS]) if x else None for x in segs]
        cells = []
        for a in ATTRS:
            cells += [spread([x[a][k] if x else None for x in segs]) for k in ("first", "last", "drift")]
        rows.append([ARM_LABEL[arm]] + cells + [spread(drifts[arm])])
    L += table(["method"] + [f"{a} {k}" for a in ATTRS for k in ("first", "last", "Δ")] + ["mean Δ"], rows)
    rows = []
    for arm in CLAIM3_ARMS:
        docs = [read_json(res.out / "eval" / arm / f"s{sd}" / "drift.json") for sd in res.seeds]
        cells = []
        for name in DRIFT_METRICS:
            vals = []
            for d in docs:
                m = (d or {}).get("mean", {}).get("metrics", {}).get(name)
                if m:
                    # semgen drift's own columns: Δ in points for 0–1 metrics, else the relative change
                    vals.append(m["delta_points"] if m.get("delta_points") is not None else m["relative_change_pct"])
            cells.append(spread(vals))
        rows.append([ARM_LABEL[arm]] + cells)
    L += ["", "`semgen drift` on the same videos (weight-free metrics; Δ = |M(first 15 %) − M(last 15 %)|, mean over videos; "
              "0–1 metrics in points (×100), sharpness and colourfulness as Δ % of the first segment), mean [range] over seeds:", ""]
    L += table(["method"] + [f"{n} Δ" + ("" if n in UNIT_METRICS else " %") for n in DRIFT_METRICS], rows)
    if plot_long(res, res.out / "claim3-drift.png"):
        L += ["", "![Table 2 at toy scale: first and last 15 %](claim3-drift.png)"]
    ok = all(x is not None for v in drifts.values() for x in v)
    v = verdict_lower(drifts["semanticgen"], [drifts["base-ct-swin"], drifts["base-ct"]]) if ok else "not measured"
    verdicts["claim 3 (Table 2)"] = v
    L += ["", f"**Verdict (Table 2): {v}** (mean toy-eval drift: "
              + ", ".join(f"{a} {spread(drifts[a])}" for a in CLAIM3_ARMS) + f"; rule: {RULE_LOWER})"]
    if ok:  # drift is a fair test only of videos that start right
        first = {arm: _mean([_mean([x[a]["first"] for a in ("colour", "shape", "motion")]) for x in segs_of[arm]])
                 for arm in CLAIM3_ARMS}
        L += ["", "Accuracy of the first 15 % over colour, shape and motion, mean over seeds: "
              + ", ".join(f"{ARM_LABEL[a].split(' (')[0]} {first[a]:.1f}" for a in CLAIM3_ARMS) + "."
              + (f" Below {FAIR_START:g} % for every arm: the videos are mostly wrong from their first frames, so their drift says "
                 "little about keeping a right video right; read this verdict as untested at this scale."
                 if max(first.values()) < FAIR_START else "")]
    return L


def _claim4(res: Results, s: dict, verdicts: dict[str, str]) -> list[str]:
    """Claim 4: which semantic encoder."""
    L: list[str] = []
    L += ["", "## Claim 4 (beyond the paper, its App. C future work): which semantic encoder", "",
          "The bundled toy tower was trained on the toy world's labels, so its space could be easy for a trivial reason. "
          "A second tower of the same Qwen2.5-VL vision class was trained with no labels and no captions "
          "(examples/toy/train_ssl_encoder.py: masked-patch reconstruction) and compared as in claim 1."]
    probe = read_json(res.out / "eval" / "encoder-probe.json")
    if probe:
        keys = ("colour_acc", "shape_acc", "background_acc", "motion_acc", "objectness_iou")
        L += ["", "Linear probes of the towers' features (fresh linear heads fitted on held-out clips, scored on others; %):", ""]
        L += table(["tower"] + [k.replace("_acc", "").replace("_", " ") for k in keys],
                   [[p["spec"].replace(str(res.out) + "/", "")] + [f"{100 * p[k]:.1f}" for k in keys] for p in probe["probe"]])
    lines, verdicts["claim 4 (encoders)"] = fig9_section(res, CLAIM4_ARMS, "ssl-d8", "vae-d8", "claim4-encoders.png",
                                                         "Encoders: accuracy vs stage-2 steps", "Fig. 9 with the self-supervised tower",
                                                         tabled=("ssl-d8",))
    L += ["", "(The caption-aligned and compressed-VAE arms are claim 1's runs: their per-step tables are above.)"]
    L += lines + ceilings(res, ("ssl-d8",))
    a_cap = [res.auc("caption-d8", sd) for sd in res.seeds_of("ssl-d8")]
    a_ssl = [res.auc("ssl-d8", sd) for sd in res.seeds_of("ssl-d8")]
    if all(x is not None for x in a_cap + a_ssl):
        L += ["", f"Caption-aligned − self-supervised score: {_mean(a_cap) - _mean(a_ssl):+.1f} points on seeds {res.seeds_of('ssl-d8')} "
                  "(no verdict: the paper makes no claim here)."]
    return L


def _wall_time(res: Results, s: dict, verdicts: dict[str, str]) -> list[str]:
    """Wall time of each part, seconds per step, and the verdicts so far."""
    L: list[str] = []
    L += ["", "## Wall time of each part", ""]
    parts: dict[str, float] = {}
    for name, sec in res.times:
        bits = name.split("/")
        part = "/".join(bits[:2]) if bits[0] == "arms" else bits[0]
        parts[part] = parts.get(part, 0.0) + sec
    L += table(["part", "used by", "wall time"], [[p, USED_BY.get(p.removeprefix("arms/"), "all claims"), f"{sec / 60:.1f} min"]
                                                  for p, sec in parts.items()]
               + [["total", "", f"{sum(parts.values()) / 3600:.2f} h"]])
    rates = []
    for run in sorted((res.out / "runs").glob("*/s*/*")):
        rate = seconds_per_step(read_metrics(run / "metrics.jsonl"))
        if rate is not None:
            rates.append([str(run.relative_to(res.out / "runs")), str(read_metrics(run / "metrics.jsonl")[-1]["step"]), f"{rate:.2f}"])
    if rates:
        L += ["", "Measured seconds per optimiser step (metrics.jsonl: median over logged intervals of elapsed time / steps):", ""]
        L += table(["run", "steps", "s/step"], rates)
    L += ["", "## Verdicts", ""] + [f"- {k}: **{v}**" for k, v in verdicts.items()]
    return L


def build(out: Path) -> tuple[str, dict[str, str]]:
    res = Results(out)
    s = res.settings
    verdicts: dict[str, str] = {}
    L = ["# SemanticGen's claims at toy scale", ""]
    if s.get("profile") == "quick":
        L += ["> **Quick mode (`--quick`): every arm ran for a handful of steps on a few short clips. These numbers prove "
              "nothing; they only show that every step runs end to end.**", ""]
    where = f"{s.get('cpus', '?')}-core CPU ({s.get('threads', '?')} torch thread{'' if s.get('threads') == '1' else 's'} per call)" if s.get("device") != "cuda" else f"GPU {s.get('cuda')}"
    L += [f"Made by `bash examples/paper/reproduce.sh OUT{' --quick' if s.get('profile') == 'quick' else ''}"
          f"{' --device cuda' if s.get('device') == 'cuda' else ''}` (profile {s.get('profile', '?')}, commit {s.get('commit') or '?'}, "
          f"started {s.get('started', '?')}) on a {where}; `python examples/paper/report.py OUT` rewrites this page from the "
          "run's files. The toy world is DESIGN §6: 64×64 clips, one object, the pixel-exact judge of `semgen toy-eval`.", ""]
    if s.get("profile") == "full":
        L += [f"Scale: every generator is trained from scratch for {s.get('latent_steps')} stage-1 and {s.get('semantic_checkpoints', [0])[-1]} "
              "stage-2 steps, a small fraction of what the bundled toy pipeline was trained for, so absolute accuracies are low; "
              "the verdicts compare arms trained alike at this scale, and the stage-1 ceilings (`--plans rendered`) show how much "
              "of each score stage 1 allows.", ""]
    L += ["## Settings (the same for every arm of a comparison)", ""]
    L += table(["setting", "value"], [
        ["training data (claims 1, 2, 4)", f"{s.get('clips')} toy clips of {s.get('clip_seconds')} s (seed 0), held-out combinations {s.get('held_out')} left out"],
        ["training data (claim 3)", f"{s.get('long_clips')} toy clips of {s.get('long_seconds')} s (seed 1), the same combinations left out"],
        ["extract", f"`{s.get('extract')}`, semantic encoder per arm"],
        ["compressor", f"fit-compressor {s.get('compressor_steps')} steps, then fine-tuned jointly with stage 1"],
        ["stage 1 (train-latent)", f"preset toy, {s.get('latent_steps')} steps (claim 3: {s.get('long_latent_steps')} on {s.get('long_window_seconds')} s windows)"],
        ["stage 2 (train-semantic)", f"preset toy, shift {s.get('stage2_shift')}, evaluated at steps {s.get('semantic_checkpoints')} (claim 3: {s.get('long_semantic_steps')} steps on whole clips)"],
        ["batch, lr, warm-up, EMA", f"{s.get('batch')}, {s.get('lr')}, {s.get('warmup')}, {s.get('ema_decay')}"],
        ["seeds (training)", f"{s.get('seeds')} for claims 1 and 3 (and claim 4's caption-aligned and VAE arms); "
                             f"{s.get('seeds', [0])[:1]} for claim 2 and the self-supervised arm"],
        ["toy-eval", f"{s.get('eval_count')} built-in prompts × {s.get('eval_seconds')} s (claim 3: {s.get('long_eval_count')} × {s.get('long_seconds')} s), "
                     f"{s.get('eval_euler_steps')} Euler steps per stage, seed 0 for every arm"],
        ["self-supervised tower", f"{s.get('ssl_steps')} steps × {s.get('ssl_batch')} frame pairs, no labels, no captions"],
    ])

    # claim 1
    L += ["", "## Claim 1 (paper Fig. 9): the semantic space converges faster than a compressed VAE space", "",
          "Both arms: the same two-stage pipeline, the compressor at dim 8 on the same token budget; only the space stage 2 "
          "learns differs (the caption-aligned toy tower's features, or the toy VAE's latents pooled to the semantic grid). "
          "Stage 1 of each arm is trained first for the same steps; stage 2 is trained from scratch and scored along its training."]
    lines, verdicts["claim 1 (Fig. 9)"] = fig9_section(res, CLAIM1_ARMS, "caption-d8", "vae-d8", "claim1-fig9.png",
                                                        "Fig. 9 at toy scale: accuracy vs stage-2 steps", "Fig. 9")
    L += lines + ceilings(res, CLAIM1_ARMS)
    L += _claim2(res, s, verdicts)
    L += _claim3(res, s, verdicts)
    L += _claim4(res, s, verdicts)
    L += _wall_time(res, s, verdicts)
    return "\n".join(L) + "\n", verdicts


def _save(fig, path: Path) -> None:
    """Write the figure atomically (two reproduce.sh calls on one OUT may draw it at once)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    write_bytes_atomic(path, buf.getvalue())


def publish(out: Path, text: str, doc: Path) -> list[Path]:
    """Write the page to `doc` with its plots in a folder named after it (docs/reproduction.md ->
    docs/reproduction/*.png), the links rewritten to match. Returns the plots copied."""
    import re

    folder = doc.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(set(re.findall(r"\]\(([\w.-]+\.png)\)", text)))
    for name in names:
        write_bytes_atomic(folder / name, (out / name).read_bytes())
    text = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({folder.name}/{m.group(1)})", text)
    write_text_atomic(doc, text)
    return [folder / n for n in names]


def _die(msg: str) -> None:
    print(msg, file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the OUT folder of examples/paper/reproduce.sh")
    p.add_argument("--publish", type=Path, metavar="DOC",
                   help="also write the page to DOC (e.g. docs/reproduction.md), its plots into DOC's name without .md")
    args = p.parse_args(argv)
    if not (args.out / "settings.json").is_file():
        _die(f"report.py: {args.out}/settings.json is missing: not an OUT folder of examples/paper/reproduce.sh")
    if args.publish is not None and (args.publish.suffix != ".md" or not args.publish.parent.is_dir()):
        _die(f"report.py: --publish {args.publish}: give a .md path in an existing folder")
    text, verdicts = build(args.out)
    write_text_atomic(args.out / REPORT, text)  # atomic: two reproduce.sh calls on one OUT may write it at once
    print(f"wrote {args.out / REPORT}")
    if args.publish is not None:
        plots = publish(args.out, text, args.publish)
        print(f"wrote {args.publish} and {len(plots)} plots in {args.publish.with_suffix('')}")
    for k, v in verdicts.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
