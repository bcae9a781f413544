"""
pipeline.py: the whole journey on the built-in world in one command, and a report card.

Tokenizer -> base model (pretrain.py) -> SFT model (sft.py) -> comparisons (preferences.py) -> reward
model (reward.py) -> PPO policy (ppo.py) and DPO policy (dpo.py) -> one evaluation of every model on the
same prompts, with 95% intervals and paired differences to SFT (report.py) -> report card.

  python pipeline.py                   # CPU default into runs/default/ (see the README for the time)
  python pipeline.py --quick           # a smoke run of every stage, in seconds, into runs/quick/
  python pipeline.py --preset gpu      # larger models and data, for one GPU
  python pipeline.py --name exp1       # another run folder: runs/exp1/
  python pipeline.py --fresh           # delete the run folder and start over
  python pipeline.py --rlaif           # then RLAIF and Constitutional AI too (rlaif.py), with their rows

Each stage writes <run>/<stage>/done.json when it finishes and is skipped when that file exists, so
running the command again after an interruption redoes only what was not finished: the interrupted
stage restarts from its last checkpoint (--resume) where the stage supports it.
Writes <run>/report.md (printed at the end), <run>/report.json and PNG plots in <run>/plots/.
"""

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace

import dpo
import ppo
import preferences
import pretrain
import reward
import rlaif
import sft
from common import cli, format_seconds
from report import STAGES, ReportConfig, report, update_readme, write_report

# Overrides of each stage's config dataclass; "cpu" is the stages' own defaults.
PRESETS = {
    "cpu": {"report": {}},
    "quick": {
        "pretrain": dict(corpus_size=0.05, vocab_size=400, n_layer=2, n_head=2, n_embd=48, block_size=96,
                         batch_size=16, max_steps=60, warmup_steps=5, eval_every=0, ckpt_every=0, log_every=20),
        "sft": dict(n_examples=400, batch_size=16, max_steps=60, warmup_steps=5, eval_every=0, eval_n=0,
                    ckpt_every=0, log_every=20, ptx_batch_size=2),
        "preferences": dict(model_free=True, n_prompts=48, n_heldout_prompts=16, max_new_tokens=16),
        "reward": dict(max_new_tokens=16, n_norm=16, bon_n=4, bon_ns="1,2,4", log_every=5, warmup_steps=2),
        "ppo": dict(iterations=2, rollout_batch=8, minibatch=4, ppo_epochs=1, max_new_tokens=16, eval_every=0,
                    eval_n=2, ckpt_every=0),
        "dpo": dict(max_steps=5, batch_size=8, eval_n=0, max_new_tokens=16, log_every=5, warmup_steps=2),
        # the quick models write no verdict or revision a parser could read: fallback keeps the stages going
        "rlaif": dict(feedback_examples=200, feedback_steps=10, batch_size=16, judge_eval_prompts=8, cai_prompts=24,
                      cai_steps=5, max_new_tokens=16, judge_max_new_tokens=16, critique_max_new_tokens=16,
                      fallback=True),
        "report": dict(eval_n=6, harm_n=6, bon_n=4, max_new_tokens=16, n_transcript=2, n_boot=200),
    },
    "gpu": {  # sized for one modern GPU (bf16 autocast is automatic on CUDA)
        "pretrain": dict(corpus_size=8.0, vocab_size=4096, n_layer=8, n_head=8, n_embd=512, block_size=256,
                         batch_size=64, max_steps=4000, lr=1e-3, warmup_steps=200, eval_every=500, ckpt_every=500),
        "sft": dict(n_examples=40000, batch_size=128, max_steps=2000, lr=3e-4, ptx_batch_size=16, eval_every=500),
        "preferences": dict(n_prompts=8000, n_heldout_prompts=1000),
        "reward": dict(lr=3e-4),
        "ppo": dict(iterations=100, rollout_batch=256, minibatch=64, lr=1e-5),
        "dpo": dict(lr=1e-5, batch_size=64),
        "rlaif": dict(feedback_examples=20000, feedback_steps=1000, batch_size=128, cai_prompts=8000, cai_steps=500),
        "report": dict(eval_n=500),
    },
}


@dataclass
class PipelineConfig(ReportConfig):
    """The report card's options (report.ReportConfig: eval_n, seed, ...) and these."""
    name: str = ""
    """run name, the folder <runs_dir>/<name>/ (default: "quick" with --quick, else "default")"""
    preset: str = "cpu"
    """cpu (default), quick (smoke run of every stage) or gpu"""
    quick: bool = False
    """the same as --preset quick"""
    fresh: bool = False
    """delete the run folder first and redo every stage"""
    rlaif: bool = False
    """also run RLAIF and Constitutional AI (rlaif.py) after DPO, and report their models"""


def stage_configs(cfg, run_dir):
    """The config of every stage: its dataclass defaults, the preset's overrides, the run folder."""
    preset = PRESETS[cfg.preset]
    classes = {"pretrain": pretrain.PretrainConfig, "sft": sft.SFTConfig,
               "preferences": preferences.PreferenceConfig, "reward": reward.RewardConfig,
               "ppo": ppo.PPOConfig, "dpo": dpo.DPOConfig, "rlaif": rlaif.RLAIFConfig}
    configs = {name: cls(**{"out_dir": run_dir, "device": cfg.device, **preset.get(name, {})})
               for name, cls in classes.items()}
    for name in ("pretrain", "sft", "reward", "ppo", "dpo"):  # an interrupted stage continues from its checkpoint
        configs[name].resume = True
    # the stages' own end-of-run evaluations are skipped or kept small: the report evaluates every model
    configs["ppo"].eval_every = 0
    configs["ppo"].eval_n = min(configs["ppo"].eval_n, 20)
    configs["dpo"].eval_n, configs["dpo"].compare_sft = 0, False
    return configs


# -----------------------------------------------------------------------------
# Plots of every stage's training curves

def read_metrics(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_plots(run_dir):
    """PNG plots from every stage's metrics.jsonl. Returns the file names (none without matplotlib).

    matplotlib's Figure class draws without pyplot, so no global backend is switched for the caller."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("report: matplotlib is not installed; no plots (pip install -e '.[notebooks]')")
        return []
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    m = {stage: read_metrics(os.path.join(run_dir, stage, "metrics.jsonl")) for stage in STAGES}

    def series(records, key):
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    panels = [("losses.png", [("pretrain", "loss", "pretrain loss", "nats per token"),
                              ("pretrain", "val_loss", "pretrain val loss", "nats per token"),
                              ("sft", "sft_loss", "SFT loss (answers)", "nats per token")], "step"),
              ("reward.png", [("reward", "accuracy", "RM train accuracy (labels)", "accuracy")], "step"),
              ("ppo.png", [("ppo", "score", "RM score", "mean RM score"), ("ppo", "gold", "gold score", "mean gold score"),
                           ("ppo", "kl", "KL to SFT", "nats per answer")], "iteration"),
              ("dpo.png", [("dpo", "margin", "margin", "reward margin"),
                           ("dpo", "accuracy", "preference accuracy", "accuracy")], "step")]
    written = []
    for filename, curves, xlabel in panels:
        fig = Figure(figsize=(4 * len(curves), 3))
        axes = fig.subplots(1, len(curves), squeeze=False)[0]
        for ax, (stage, key, title, ylabel) in zip(axes, curves):
            ax.plot(*series(m[stage], key))
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "plots", filename), dpi=80)
        written.append(filename)
    bon = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
    ns = sorted(int(k.split("/")[1]) for k in bon if k.startswith("bon/") and k.endswith("/gold"))
    if ns:
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        ax.plot(ns, [bon[f"bon/{n}/gold"] for n in ns], "o-", label="gold score")
        ax.plot(ns, [bon[f"bon/{n}/rm"] for n in ns], "s-", label="RM score")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples per prompt)")
        ax.set_ylabel("mean score of the pick")
        ax.set_title("best-of-N on test prompts")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "plots", "best_of_n.png"), dpi=80)
        written.append("best_of_n.png")
    return written



# -----------------------------------------------------------------------------
# The pipeline


def run_stage(name, fn, run_dir):
    """Run fn() unless <run>/<name>/done.json exists; returns the stage's seconds (from done.json when skipped)."""
    done = os.path.join(run_dir, name, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            seconds = json.load(f)["seconds"]
        print(f"== {name}: done already ({format_seconds(seconds)}), skipped")
        return seconds
    t0 = time.time()
    fn()
    seconds = time.time() - t0
    os.makedirs(os.path.dirname(done), exist_ok=True)
    with open(done, "w") as f:
        json.dump({"seconds": seconds}, f)
    return seconds


def check_preset(run_dir, preset):
    """Record the run folder's preset in <run>/preset.json, and refuse a folder that holds another preset's
    stages: its finished stages would be skipped, and the card would mix two sizes of model."""
    path = os.path.join(run_dir, "preset.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)["preset"]
        if before != preset:
            raise ValueError(f"{run_dir} holds a run of the {before!r} preset, not {preset!r}: give another --name, "
                             f"or --fresh to delete it first")
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"preset": preset}, f)


def main(cfg):
    """Every stage in order, then the report card. Returns (report dict, report markdown)."""
    preset = "quick" if cfg.quick else cfg.preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    name = cfg.name or ("quick" if preset == "quick" else "default")  # a smoke run never touches runs/default
    cfg = replace(cfg, name=name, preset=preset, **PRESETS[preset].get("report", {}))  # a copy: the caller's is kept
    run_dir = os.path.join(cfg.runs_dir, cfg.name)
    if cfg.fresh and os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    check_preset(run_dir, preset)
    configs = stage_configs(cfg, run_dir)
    t_start, seconds = time.time(), {}
    pre = configs["pretrain"]
    stages = [("tokenizer", lambda: pretrain.get_tokenizer(pre, pretrain.corpus_documents(pre))),
              ("pretrain", lambda: pretrain.train(pre)), ("sft", lambda: sft.train(configs["sft"])),
              ("preferences", lambda: preferences.make_preferences(configs["preferences"])),
              ("reward", lambda: reward.train(configs["reward"])), ("ppo", lambda: ppo.train(configs["ppo"])),
              ("dpo", lambda: dpo.train(configs["dpo"]))]
    if cfg.rlaif:  # each stage in its folder of the run (rlaif/..., cai/...)
        stages += [(rlaif.STAGE_DIRS[name], fn) for name, fn in rlaif.stages(
            configs["rlaif"], configs["preferences"], configs["reward"], configs["ppo"], configs["dpo"])]
    for i, (name, fn) in enumerate(stages):
        print(f"== stage {i + 1}/{len(stages) + 1}: {name} | elapsed {format_seconds(time.time() - t_start)}",
              flush=True)
        seconds[name] = run_stage(name, fn, run_dir)
    print(f"== stage {len(stages) + 1}/{len(stages) + 1}: report | elapsed {format_seconds(time.time() - t_start)}")
    eval_t0 = time.time()
    stage_seconds = dict(seconds)  # tokenizer, pretrain, ..., dpo, and rlaif/..., cai/... with --rlaif
    stage_seconds["eval"] = 0.0
    make_plots(run_dir)
    result = report(cfg, run_dir, stage_seconds)
    result["stage_seconds"]["eval"] = time.time() - eval_t0
    text = write_report(run_dir, result)
    if cfg.readme:
        update_readme(cfg.readme, result)
    print(text)
    print(f"pipeline finished in {format_seconds(time.time() - t_start)} (this invocation); report in {run_dir}/report.md")
    return result, text


# -----------------------------------------------------------------------------
# For the notebooks: read a finished run, or make a quick one

def logged(log, fn):
    """fn(), with what it prints going to the file `log` instead of the screen. Returns (fn's result, seconds)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        out = fn()
    return out, time.time() - t0


def run_or_quick(run, needs, name, runs_dir="runs", **options):
    """The run folder `run` when it holds every path in `needs`; else a quick run of tiny models into
    runs_dir/name (options go to PipelineConfig), its progress written to a log and summarised here."""
    missing = [p for p in needs if not os.path.exists(os.path.join(run, p))]
    if not missing:
        print(f"reading the run {run}")
        return run
    cfg = PipelineConfig(name=name, preset="quick", runs_dir=runs_dir, **options)
    log = os.path.join(runs_dir, name, "pipeline.log")
    (result, _), seconds = logged(log, lambda: main(cfg))
    lines = open(log).read().splitlines()
    skipped = [line.split()[1].rstrip(":") for line in lines if line.startswith("== ") and line.endswith("skipped")]
    print(f"no {missing[0]} in {run}: a quick run of tiny models instead (its numbers mean nothing), "
          f"{seconds:.0f}s, into {os.path.join(runs_dir, name)}")
    print("  stages run:", ", ".join(f"{k} {v:.1f}s" for k, v in result["stage_seconds"].items() if k not in skipped))
    if skipped:
        print("  done before, skipped:", ", ".join(skipped))
    print(f"  the pipeline's progress: {log} ({len(lines)} lines)")
    return os.path.join(runs_dir, name)


if __name__ == "__main__":
    main(cli(PipelineConfig))
