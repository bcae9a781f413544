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
# # 3. Instruction tuning and the loss mask
#
# SFT is next-token prediction on instruction -> answer conversations, with the loss on the
# answer only: the model should learn to *answer*, not to write user questions. This notebook
# shows which tokens carry the loss, then trains the same base model with the mask on and off, and
# ends with one of the experiments in `experiments/`: does teaching more kinds of task help on tasks
# never taught?

# %%
import json
import os
import shutil

import matplotlib.pyplot as plt
from IPython.display import HTML, display

import data
import evaluate
import pipeline
import sft
import tasks
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"  # train small things (the tests set it)
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own runs go (the tests: a temporary folder)


# %% [markdown]
# ## Which tokens carry the loss
# A base model and its tokenizer: from the run folder (`runs/default/` from `python pipeline.py`, or
# `NANOINSTRUCT_RUN`), otherwise from a quick run with tiny models made here (then the accuracies
# below mean nothing).

# %%
source = pipeline.run_or_quick(RUN, ["pretrain/model.pt", "tokenizer"], "notebook_sft", runs_dir=RUNS)
card = os.path.join(source, "report.json")
QUICK = SMOKE or (os.path.exists(card) and json.load(open(card))["config"]["preset"] == "quick")
tok = Tokenizer.load(os.path.join(source, "tokenizer"))

conversation = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Where does Ezra Dyer live?"},
                {"role": "assistant", "content": "Rome"}]
ids, mask = data.render_chat(tok, conversation)
spans = "".join(f'<span style="background:{"#9f9" if m else "#eee"};margin:1px;padding:2px">'
                f'{tok.decode([i]).replace("<", "&lt;")}</span>' for i, m in zip(ids, mask))
display(HTML(f"<div style='font-family:monospace'>{spans}</div><p>green: loss on this token</p>"))

# %% [markdown]
# `collate` shifts by one for next-token prediction: the target at position t is token t + 1, and
# it carries loss when token t + 1 is part of the answer. The mask moves with the targets.

# %%
batch = data.collate([(ids, mask)], tok.pad_id)
for t in range(len(ids) - 1):
    target = batch["targets"][0, t].item()
    print(f"input {tok.decode([ids[t]])!r:16} -> target {tok.decode([ids[t + 1]])!r:16}",
          "loss" if target != data.IGNORE_INDEX else "")

# %% [markdown]
# ## Masking on vs off, same base model, same budget
# Two short SFT runs from the same base model: the loss on the answers only (the default), and on
# every token (`mask_prompt=False`). Each run's progress goes to a `train.log` in its folder. Then both
# answer the same held-out prompts.

# %%
world = tasks.make_world(0)
sets = {k: v for k, v in evaluate.eval_sets(world, 6 if SMOKE else 60).items() if k != "heldout_task"}
results, correct = {}, {}
for mask_prompt in (True, False):
    out = os.path.join(RUNS, f"notebook_sft_mask_{mask_prompt}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(out, "tokenizer"))
    cfg = sft.SFTConfig(out_dir=out, init=os.path.join(source, "pretrain", "model.pt"), mask_prompt=mask_prompt,
                        max_steps=10 if SMOKE else 150, n_examples=200 if SMOKE else 4000, batch_size=16 if SMOKE else 64,
                        ptx_batch_size=2 if SMOKE else 8, warmup_steps=2 if SMOKE else 15, eval_n=0)
    (model, _, _), seconds = pipeline.logged(os.path.join(out, "train.log"), lambda: sft.train(cfg))
    print(f"masking {'on ' if mask_prompt else 'off'}: {cfg.max_steps} steps of {cfg.batch_size} conversations "
          f"in {seconds:.0f}s, progress in {os.path.join(out, 'train.log')}")
    answers = {}
    results[mask_prompt] = evaluate.evaluate(model.eval(), tok, sets, answers_out=answers)
    correct[mask_prompt] = [c for split in sets for c in evaluate.grade_answers(sets[split], answers[split])[0]]
for split in sets:
    print(f"{split:17} accuracy: masking on {results[True][f'{split}/accuracy']:.0%}, "
          f"off {results[False][f'{split}/accuracy']:.0%}   ({len(sets[split])} prompts)")

fig, ax = plt.subplots(figsize=(6, 3))
x = range(len(sets))
ax.bar([i - 0.2 for i in x], [results[True][f"{s}/accuracy"] for s in sets], 0.4, label="loss on the answer only")
ax.bar([i + 0.2 for i in x], [results[False][f"{s}/accuracy"] for s in sets], 0.4, label="loss on every token")
ax.set_xticks(list(x), list(sets)); ax.set_xlabel("evaluation split"); ax.set_ylabel("accuracy (greedy)")
ax.set_title("SFT with the prompt masked vs not"); ax.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# What to expect: with the same steps, the model trained on the answers only should be at least as
# accurate, because the unmasked one spends part of its updates on predicting the user's questions,
# which it is never asked to write. The cell checks it on this run: the difference in accuracy over
# all the prompts above, with its 95% interval (paired bootstrap over the prompts,
# `evaluate.bootstrap_interval`). An interval that contains 0 means this run cannot tell the two
# apart: a short run on a few dozen prompts per split often cannot, and the sign may then go either
# way. A smoke or quick run (tiny models, a few steps) means nothing.

# %%
diff = sum(correct[True]) / len(correct[True]) - sum(correct[False]) / len(correct[False])
lo, hi = evaluate.bootstrap_interval(correct[True], paired_with=correct[False])
print(f"accuracy, masking on - off: {diff:+.1%} (95% interval {lo:+.1%} to {hi:+.1%}, {len(correct[True])} prompts)")
print(f"this run: masking on does better: {diff > 0}; beyond the noise (interval above 0): {lo > 0}"
      + ("  (a smoke or quick run: means nothing)" if QUICK else ""))


# %% [markdown]
# ## An experiment: more kinds of task, better zero-shot?
# FLAN (Wei et al. 2021) instruction-tuned a model on more and more task clusters and found its
# zero-shot accuracy on clusters it never saw rising with their number, except at small model sizes,
# where the benefit vanished or reversed. `experiments/task_diversity.py` asks the same of this world.
# It is short; each point is two calls:
#
# ```python
# families = ORDER[:k]                      # the first k of the 12 taught families
# model = lab.sft_point(run, "task_diversity", f"k{k}", quick, families=",".join(families))  # sft.train
# graded = lab.grade(model, tok, {"heldout_task": None, "heldout_phrasing": families}, eval_n)
# ```
#
# Every model sees the same number of demonstrations and steps; only how many families they come from
# changes. `heldout_task` holds the 3 families no SFT model ever sees (repeat, last, smaller);
# `heldout_phrasing` the taught families in a phrasing SFT never shows. Training five SFT models takes
# minutes, so this cell reads the results: those of your run folder when you ran the experiment
# (`python experiments/task_diversity.py` writes `runs/default/experiments/task_diversity/`), otherwise
# the ones `docs/experiments.md` shows (`docs/experiments/task_diversity.json`, from a fresh default run
# of the commit it names).

# %%
mine = os.path.join(RUN, "experiments", "task_diversity", "results.json")
path = mine if os.path.exists(mine) else os.path.join("docs", "experiments", "task_diversity.json")
experiment = json.load(open(path))
print(f"read {path}: `{experiment['command']}` at commit {experiment['commit']}")
for row in experiment["rows"]:
    print(f"k = {row['k']:2}: " + ",  ".join(
        f"{split} {row[split]['accuracy']:.1%} ({row[split]['accuracy_interval'][0]:.1%}-"
        f"{row[split]['accuracy_interval'][1]:.1%}, {row[split]['n']} prompts)" for split in ("heldout_task", "heldout_phrasing")))

fig, ax = plt.subplots(figsize=(5, 3))
ks = [row["k"] for row in experiment["rows"]]
for split in ("heldout_task", "heldout_phrasing"):
    values = [row[split]["accuracy"] for row in experiment["rows"]]
    errors = [[v - row[split]["accuracy_interval"][0] for v, row in zip(values, experiment["rows"])],
              [row[split]["accuracy_interval"][1] - v for v, row in zip(values, experiment["rows"])]]
    ax.errorbar(ks, values, yerr=errors, fmt="o-", capsize=3, label=split)
ax.set_xscale("log", base=2); ax.set_xlabel("taught families in SFT (k)"); ax.set_ylabel("accuracy (greedy)")
ax.set_title("Task diversity (95% intervals)"); ax.legend(fontsize=8); plt.tight_layout(); plt.show()

# %% [markdown]
# What to read in it: FLAN's claim holds here if zero-shot accuracy on the unseen tasks at k = 12 is
# above k = 1 with intervals that do not overlap (the cell below checks it). Where the intervals
# overlap, this world cannot tell; where the line falls, it agrees with FLAN's small-model result
# instead. The held-out phrasing line asks a different question: whether the taught families are
# learned in a way that survives rewording. Try it: change `ORDER` in the script (which families come
# first) or its `ks`, rerun it, then rerun this cell.

# %%
first, last = experiment["rows"][0], experiment["rows"][-1]
for split in ("heldout_task", "heldout_phrasing"):
    a, b = first[split], last[split]
    apart = a["accuracy_interval"][1] < b["accuracy_interval"][0] or b["accuracy_interval"][1] < a["accuracy_interval"][0]
    trend = ("higher" if b["accuracy"] > a["accuracy"] else "lower") if apart else "no difference the intervals can show"
    print(f"{split}: k = {last['k']} {b['accuracy']:.1%} vs k = {first['k']} {a['accuracy']:.1%}: {trend}"
          + ("  (a quick run: means nothing)" if experiment["config"].get("quick") else ""))
