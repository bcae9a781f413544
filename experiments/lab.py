"""
experiments/lab.py: what the experiments share. Each experiment is one script in this folder that
trains with the stage modules (sft.py, ppo.py, ...) and grades against the built-in world's gold rule;
this file holds the four things they all do:

  1. `run_folder`: the pipeline run they build on (its tokenizer, base, SFT and reward models),
     made by pipeline.py when it is missing;
  2. `sft_point`: one SFT model trained with some options changed, reused when it already exists;
  3. `grade`: accuracy per split with Wilson intervals and the gold score with a bootstrap interval;
  4. `write`: results.json, table.md and plot.png into <run>/experiments/<name>/.
"""

import json
import os
import sys
from dataclasses import asdict, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules

import pipeline  # noqa: E402
import report  # noqa: E402
import sft  # noqa: E402
import tasks  # noqa: E402
from evaluate import (bootstrap_interval, eval_sets, evaluate, grade_answers, harm_rates, harm_sets,  # noqa: E402
                      respond, wilson_interval)
from model import load_checkpoint, load_policy  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

# Smaller SFT points than the pipeline's: an experiment trains several. 300 steps of 64 demonstrations.
SFT_POINT = dict(max_steps=300, eval_every=0, eval_n=0, ckpt_every=0, log_every=100, quiet=True, resume=True)
SFT_POINT_QUICK = dict(pipeline.PRESETS["quick"]["sft"], max_steps=20, eval_every=0, eval_n=0, ckpt_every=0,
                       quiet=True, resume=True)


def run_folder(quick, needs=("pretrain",)):
    """runs/default (runs/quick with --quick); pipeline.py makes it first when a stage in `needs` is missing."""
    name = "quick" if quick else "default"
    folder = os.path.join("runs", name)
    if not all(os.path.exists(os.path.join(folder, stage, "done.json")) for stage in needs):
        print(f"experiments: {folder} lacks {', '.join(needs)}; running pipeline.py first")
        pipeline.main(pipeline.PipelineConfig(name=name, quick=quick))
    return folder


def out_folder(run, experiment):
    folder = os.path.join(run, "experiments", experiment)
    os.makedirs(folder, exist_ok=True)
    return folder


def sft_point(run, experiment, point, quick, **options):
    """An SFT model trained from the run's base model with `options` (SFTConfig fields) changed, into
    <run>/experiments/<experiment>/<point>/; a finished one is loaded instead of trained again."""
    stage = os.path.join("experiments", experiment, point)
    path = os.path.join(run, stage, "model.pt")
    if os.path.exists(path) and load_checkpoint(path)[1].get("finished"):
        return load_policy(path, "cpu")
    cfg = sft.SFTConfig(out_dir=run, stage=stage, **{**(SFT_POINT_QUICK if quick else SFT_POINT), **options})
    print(f"experiments | {experiment} | training {point}: " + ", ".join(f"{k}={v}" for k, v in options.items()), flush=True)
    model, _, _ = sft.train(cfg)
    return model.eval()


def tokenizer(run):
    return Tokenizer.load(os.path.join(run, "tokenizer"))


def grade(model, tok, splits, n, seed=1, n_boot=2000):
    """Greedy answers to n prompts of each split. splits: {split: None, or the family names to keep}.
    Returns {split: {"accuracy", "accuracy_interval" (Wilson 95%), "gold", "gold_interval" (bootstrap
    95% over the prompts), "n"}}."""
    world = tasks.make_world(sft.SFTConfig.world_seed)
    sets = {split: [ex for ex in examples if splits[split] is None or ex.family in splits[split]]
            for split, examples in eval_sets(world, n, seed).items() if split in splits}
    empty = [split for split, examples in sets.items() if not examples]
    if empty:
        raise ValueError(f"no prompt of the families {splits[empty[0]]} among {n} of {empty[0]}: raise eval_n")
    answers = {}
    evaluate(model, tok, sets, answers_out=answers)
    graded = {}
    for split, examples in sets.items():
        correct, gold = grade_answers(examples, answers[split])
        graded[split] = {"accuracy": sum(correct) / len(correct),
                         "accuracy_interval": list(wilson_interval(sum(correct), len(correct))),
                         "gold": sum(gold) / len(gold), "gold_interval": list(bootstrap_interval(gold, n_boot=n_boot)),
                         "n": len(correct)}
    return graded


def declines(model, tok, n, seed=1):
    """Share of n forbidden requests (a person's secret code) declined, greedy: {"declined",
    "declined_interval" (Wilson 95%), "n"} (evaluate.harm_sets, the report card's requests)."""
    forbidden = harm_sets(tasks.make_world(sft.SFTConfig.world_seed), n, seed)["forbidden"]
    answers = respond(model, tok, [ex.messages for ex in forbidden])
    k = round(harm_rates(forbidden, answers, "greedy")["greedy/declined"] * len(forbidden))
    return {"declined": k / len(forbidden), "declined_interval": list(wilson_interval(k, len(forbidden))),
            "n": len(forbidden)}


def pct(value, interval):
    return f"{100 * value:.1f}% ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def write(folder, experiment, config, rows, table, figure, command):
    """<folder>/results.json ({experiment, config, rows, command, commit}), table.md (the markdown
    lines `table`) and plot.png (a matplotlib Figure, drawn without pyplot)."""
    result = {"experiment": experiment, "command": command, "commit": report.commit(),
              "config": asdict(config) if hasattr(config, "__dataclass_fields__") else config, "rows": rows}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    figure.tight_layout()
    figure.savefig(os.path.join(folder, "plot.png"), dpi=80)
    print("\n".join(table))
    print(f"experiments | {experiment} | wrote {folder}/results.json, table.md, plot.png")
    return result


def errorbar(ax, xs, values, intervals, label=None, fmt="o-"):
    """Points with their 95% intervals as error bars."""
    lower = [v - lo for v, (lo, _) in zip(values, intervals)]
    upper = [hi - v for v, (_, hi) in zip(values, intervals)]
    ax.errorbar(xs, values, yerr=[lower, upper], fmt=fmt, capsize=3, label=label)


def with_quick(cfg):
    """The config with the quick preset's smaller evaluation when cfg.quick."""
    return replace(cfg, eval_n=min(cfg.eval_n, 6), n_boot=200) if cfg.quick else cfg


def compare(name_a, a, a_interval, name_b, b, b_interval, as_pct=True):
    """A sentence comparing two measured values by their 95% intervals: a difference is claimed only when
    the intervals do not overlap (a conservative test), otherwise "no difference the intervals can show"."""
    show = (lambda v, i: pct(v, i)) if as_pct else (lambda v, i: f"{v:.3f} ({i[0]:.3f}–{i[1]:.3f})")
    if a_interval[1] < b_interval[0] or b_interval[1] < a_interval[0]:
        verdict = "higher" if b > a else "lower"
        return f"{name_b} {show(b, b_interval)} is {verdict} than {name_a} {show(a, a_interval)}"
    return (f"{name_a} {show(a, a_interval)} and {name_b} {show(b, b_interval)}: no difference the intervals "
            "can show")
