# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. A tour: from a base model to an aligned one, measured
#
# nanoinstruct trains a tiny GPT on a synthetic world whose every instruction has a checkable answer,
# then instruction-tunes it (SFT), learns a reward model from simulated comparisons, and aligns the
# SFT model with PPO and with DPO. This notebook reads the report card of a finished run.
#
# The run folder is `runs/default/` (what `python pipeline.py` writes; the README gives its time on 2
# CPU cores), or the folder named by the environment variable `NANOINSTRUCT_RUN` (a path relative to
# the repository root, or absolute). Without one, the notebook first makes a quick run with the
# **quick** preset into `runs/notebook_tour/` (`NANOINSTRUCT_RUNS` moves it): its models are tiny and
# briefly trained, so every stage runs but its numbers mean nothing.

# %%
import json
import math
import os

from IPython.display import Image, Markdown, display

import pipeline
import report as report_card

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))  # the repository root: runs/ lives there
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own quick run goes (the tests: a temporary folder)


# %% [markdown]
# ## Every stage
# `pipeline.main` runs tokenizer -> pretrain -> sft -> preferences -> reward -> ppo -> dpo -> report
# into `runs/<name>/`, skipping stages that finished before (`python pipeline.py --quick` is the
# same quick run from a shell). The cell says which run it reads, and for a quick run made here, how
# long each stage took and where its log went.

# %%
source = pipeline.run_or_quick(RUN, ["report.json", "plots/best_of_n.png"], "notebook_tour", runs_dir=RUNS)
report = json.load(open(os.path.join(source, "report.json")))
QUICK = report["config"]["preset"] == "quick"  # tiny models: every figure below means nothing
print(f"preset {report['config']['preset']!r}; the stages' times in that run:",
      ", ".join(f"{k} {v:.0f}s" for k, v in report["stage_seconds"].items()))

# %% [markdown]
# ## The report card
# One row per model, the same prompts for all, every figure with its 95% interval (`report.tables`
# writes the same tables as `report.md`). `gold` is the grader's score (`tasks.grade`): 1 for a
# concise right answer, 0.5 to 0.75 for a wordy one, 0 for a wrong one, -1 for an answer that never
# ends. The second table is each model's difference to SFT on the same prompts; `*` marks the
# differences whose interval excludes 0. `heldout_task` asks for tasks SFT never taught: zero-shot.

# %%
display(Markdown("\n".join(report_card.tables(report))))

# %% [markdown]
# ## Base vs SFT, on the same prompts
# The base model only continues text; the SFT model should answer, and end its turn with `<|end|>`.
# The cell prints a few transcripts, then checks on this run's card whether SFT ends more of its
# answers than the base model. Expect it to, on a full run. If it does not: on a quick run that means
# nothing (neither model learned anything); on a full run, SFT did not learn the chat format (look at
# its loss in `plots/losses.png`).

# %%
for t in report["transcripts"][:4]:
    print(f"[{t['split']}/{t['family']}] {t['prompt']}   (answer: {t['answer']})")
    for model in ("base", "sft"):
        text, ended, gold = t["answers"][model]
        print(f"  {model:5}: {text[:100]!r}{'' if ended else ' ...(no end of turn)'}   gold {gold:+.2f}")
ended = {m: report["models"][m]["ended"] for m in ("base", "sft")}
print(f"\nanswers that end their turn: base {ended['base']:.0%}, SFT {ended['sft']:.0%}"
      f" -> this run shows SFT ending more: {ended['sft'] > ended['base']}" + ("  (a quick run: means nothing)" if QUICK else ""))

# %% [markdown]
# ## Best-of-N: the first place over-optimisation shows
# Sample N answers, keep the one the reward model likes best. Expect the RM score of the pick to rise
# with N (that is what picking the maximum does), and the gold score to rise at first, then to stop
# following: the RM is an imperfect stand-in for the gold rule, and the harder we pick by it, the more
# we pick its errors. The cell checks both on this run: does the RM score rise, and is the gold score
# highest before the largest N (over-optimisation seen) or still rising there (not seen at these N)?
# With few prompts per N the gold curve is noisy, so a dip of a few hundredths may be chance; on a
# quick run both mean nothing.

# %%
display(Image(os.path.join(source, "plots", "best_of_n.png")))
bon = report["reward"]
ns = sorted(int(k.split("/")[1]) for k in bon if k.startswith("bon/") and k.endswith("/gold"))
rm, gold = [bon[f"bon/{n}/rm"] for n in ns], [bon[f"bon/{n}/gold"] for n in ns]
for n, r, g in zip(ns, rm, gold):
    print(f"N={n:<3} RM score of the pick {r:+.3f}   gold {g:+.3f}")
if any(math.isnan(v) for v in rm + gold):
    print("some scores are NaN (no answer ended at that N): this run cannot show the trend")
else:
    best = ns[gold.index(max(gold))]
    print(f"this run: the RM score rises from N={ns[0]} to N={ns[-1]}: {rm[-1] > rm[0]}; gold is highest at N={best}, "
          f"and at N={ns[-1]} below that peak (over-optimisation seen): {gold[-1] < max(gold)}"
          + ("  (a quick run: means nothing)" if QUICK else ""))
