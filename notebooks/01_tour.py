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
# SFT model with PPO and with DPO. This notebook runs the whole pipeline with the **quick** preset
# (tiny models, about 10 seconds) and reads its report card.
#
# The quick models are too small to learn the tasks; they only show that every stage runs. The
# real numbers come from `python pipeline.py` (the README gives its time on 2 CPU cores): when
# `runs/default/report.json` exists, the last cells read it instead.

# %%
import json
import os

from IPython.display import Image, Markdown, display

import pipeline
import report as report_card

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))  # the repository root: runs/ lives there

# %% [markdown]
# ## Run every stage
# `pipeline.main` runs tokenizer -> pretrain -> sft -> reward -> ppo -> dpo -> report into
# `runs/<name>/`, skipping stages that finished before.

# %%
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")  # the tests point this at a temporary folder
cfg = pipeline.PipelineConfig(name="notebook_tour", preset="quick", fresh=True, runs_dir=RUNS)
result, text = pipeline.main(cfg)

# %% [markdown]
# ## The report card
# One row per model, the same prompts for all, every figure with its 95% interval (`report.tables`
# writes the same tables as `report.md`). `gold` is the grader's score: 1 for a concise right answer,
# 0.5-0.75 for a wordy one, 0 for a wrong one, -1 for an answer that never ends. The second table is
# each model's difference to SFT on the same prompts; `*` marks the differences whose interval
# excludes 0. `heldout_task` asks for tasks SFT never taught: zero-shot.

# %%
def card(result):
    return Markdown("\n".join(report_card.tables(result)))

display(card(result))

# %% [markdown]
# ## The real run
# If you ran `python pipeline.py`, here is its card, and the same prompts answered by the base
# model (it only continues text) and by the SFT model (it answers, and stops).

# %%
real = "runs/default/report.json"
report = json.load(open(real)) if os.path.exists(real) else result
print("reading", real if os.path.exists(real) else "the quick run (run `python pipeline.py` for real numbers)")
display(card(report))

# %%
for t in report["transcripts"][:4]:
    print(f"[{t['split']}/{t['family']}] {t['prompt']}   (answer: {t['answer']})")
    for model in ("base", "sft"):
        text, ended, gold = t["answers"][model]
        print(f"  {model:5}: {text[:100]!r}{'' if ended else ' ...(no end of turn)'}   gold {gold:+.2f}")

# %% [markdown]
# ## Best-of-N: the first place over-optimisation shows
# Sample N answers, keep the one the reward model likes best. The RM score of the pick rises with
# N; the gold score does not follow for long.

# %%
run_dir = os.path.dirname(real) if os.path.exists(real) else os.path.join(RUNS, "notebook_tour")
display(Image(os.path.join(run_dir, "plots", "best_of_n.png")))
