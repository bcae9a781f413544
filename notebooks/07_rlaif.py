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
# # 7. RLAIF and Constitutional AI: feedback from a model
#
# RLHF asks people which of two answers is better. That is slow and costly, and people disagree.
# **RLAIF** asks a model instead: a *feedback model* reads a principle from a short written
# **constitution** and picks the answer that follows it better. The labels then go through the
# same reward model, PPO and DPO code as the human ones. **Constitutional AI** (Bai et al. 2022)
# adds a supervised stage first: the model critiques its own answers against a principle, revises
# them, and is fine-tuned on the revisions (SL-CAI); then RL on AI preferences (RL-CAI).
#
# This notebook walks through both on the built-in world, which has a second axis for this:
# **harmlessness**. Every person has a secret code. Asking for it must be declined; every other
# request must be answered (refusing it is over-refusal, also a failure).

# %%
import json
import os

import matplotlib.pyplot as plt
import torch

import pipeline
import rlaif
import tasks
from evaluate import respond
from judge import (critique_prompt, feedback_conversations, judge_prompt, load_constitution, parse_verdict,
                   question_of)
from model import load_policy
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"
world = tasks.make_world(0)

# %% [markdown]
# ## The harmlessness axis
# The corpus states every secret code, so the base model may know it. The demonstrators give it
# away in 30% of the forbidden requests (`SFTConfig.comply_rate`): helping the one who asks is the
# crowd's usual slip. The gold grader scores the refusal 1, complying 0, and a refusal of an
# allowed request 0.

# %%
secret = tasks.make_examples(world, "train", 1, families=[f for f in tasks.FAMILIES if f.forbidden])[0]
city = tasks.make_examples(world, "train", 1, families=[f for f in tasks.FAMILIES if f.name == "person_city"])[0]
print(secret.messages[-1]["content"])
for answer in (tasks.REFUSAL, secret.mistake, f"{tasks.REFUSAL} It is {secret.mistake}."):
    print(f"  {answer!r:50} gold {tasks.grade(secret, answer):+.2f}")
print(city.messages[-1]["content"])
for answer in (city.answer, tasks.REFUSAL):
    print(f"  {answer!r:50} gold {tasks.grade(city, answer):+.2f}")

# %% [markdown]
# ## The constitution
# A plain text file, one principle per line. Each judgement and each critique shows one principle,
# drawn at random, as in the paper.

# %%
principles = load_constitution(rlaif.RLAIFConfig().constitution)
for p in principles:
    print("-", p)

# %% [markdown]
# ## Teaching a tiny model to judge
# The papers' feedback models had 52B parameters and judged from a prompt alone. Ours has 1M, so it
# is taught: the SFT model is fine-tuned on 12,000 *feedback demonstrations*, judgements and
# critiques written by the gold rule. The judge first writes the answer it would give, then its
# verdict.

# %%
for conv in feedback_conversations(world, 2, principles, seed=3, judge_share=0.5):
    print(conv[0]["content"])
    print("  ->", conv[1]["content"].replace("\n", "\n     "))
    print()

# %% [markdown]
# ## Reading a verdict
# Whatever a judge writes must be parsed, and a judge writes junk sometimes. `parse_verdict` reads
# "Better: A" or a bare letter; anything else is no verdict, and the pair is dropped
# (`judge_mode="generate"`).

# %%
for text in ["Answer: 42\nBetter: A", "b", "Better: A\nBetter: B", "Both are fine.", "Better: C", ""]:
    print(f"{text!r:28} -> {parse_verdict(text)}")

# %% [markdown]
# ## A run with RLAIF and Constitutional AI
# `python pipeline.py --rlaif` adds seven stages after DPO: the feedback model, the RLAIF preferences and reward model
# (the RLHF recipe's pairs, labelled by the judge), RLAIF PPO and DPO, SL-CAI and RL-CAI. Here the
# default run is used when it exists; otherwise a smoke run whose models learned nothing (its
# numbers mean nothing, and its judge flips coins: `fallback=True`).

# %%
runs = os.environ.get("NANOINSTRUCT_RUNS", "runs")
if os.path.exists("runs/default/report.json") and "judge" in json.load(open("runs/default/report.json")) and not SMOKE:
    source = "runs/default"
else:
    pipeline.main(pipeline.PipelineConfig(name="notebook_rlaif", preset="quick", runs_dir=runs, rlaif=True))
    source = os.path.join(runs, "notebook_rlaif")
report = json.load(open(os.path.join(source, "report.json")))
tok = Tokenizer.load(os.path.join(source, "tokenizer"))
cfg = rlaif.RLAIFConfig(out_dir=source, **pipeline.PRESETS[report["config"]["preset"]].get("rlaif", {}))
judge = rlaif.load_judge(cfg, "cpu")

# %% [markdown]
# ## The judge at work, both orders
# What the judge writes, with the right answer shown as A and then as B. Look at whether its
# written verdict changes when the answers swap places: a 1M-parameter model trained for 500 steps
# mostly writes the same verdict in both orders, it did not learn to *compare*. So the
# default judge reads its verdict off its
# probabilities instead, as RLAIF reads P("1") and P("2"): the answer it finds more likely after
# "Answer:", both orders added up so that a favoured position cancels out.

# %%
examples = tasks.make_examples(world, "test", 4, seed=5)
examples.append(secret)
for ex in examples:
    wrong = ex.mistake
    q = question_of(ex)
    raw = [respond(judge.model, tok, [judge_prompt(q, a, b, principles[0])], 0.0,
                   cfg.judge_max_new_tokens)[0].text for a, b in ((ex.answer, wrong), (wrong, ex.answer))]
    ratios = [judge.log_ratios([q], [a], [b], principles[:1])[0] for a, b in ((ex.answer, wrong), (wrong, ex.answer))]
    total = ratios[0] - ratios[1]  # what label_pairs adds up (it draws a principle per pair; here the first)
    print(f"{q}\n  right {ex.answer!r} vs wrong {wrong!r}")
    print(f"  writes (right first): {raw[0]!r}   (wrong first): {raw[1]!r}")
    print(f"  log p(right) - log p(wrong): {ratios[0]:+.2f} (right first), {-ratios[1]:+.2f} (wrong first), "
          f"sum {total:+.2f} -> {'right' if total > 0 else 'wrong'} preferred\n")

# %% [markdown]
# ## How good is the judge?
# On pairs of SFT samples for held-out prompts, against the gold rule, next to the simulated human.

# %%
j, labels = report.get("judge", {}), report["rlaif_labels"]
if j:
    print(f"judge: {j['agreement']:.1%} of {j['pairs']} held-out pairs as the gold rule ranks them")
    families = sorted(k.split("/")[1] for k in j if k.startswith("agreement/"))
    plt.figure(figsize=(9, 3))
    plt.bar(families, [j[f"agreement/{f}"] for f in families])
    plt.xticks(rotation=45); plt.ylabel("agreement with gold"); plt.title("the AI judge, per task family")
    plt.tight_layout(); plt.show()
print(f"labels of the training pairs that agree with gold: AI judge {labels['train']:.1%}, "
      f"simulated human {labels['human_train']:.1%}")

# %% [markdown]
# ## Constitutional AI, the supervised stage
# The SFT model answers; the feedback model critiques the answer against a random principle and
# revises it; SL-CAI is the SFT model fine-tuned on the revisions. Forbidden requests are a quarter
# of the prompts, as red-team prompts were in the paper.

# %%
forbidden = tasks.make_examples(world, "test", 6, seed=2, families=[f for f in tasks.FAMILIES if f.forbidden])
policy = load_policy(os.path.join(source, "sft", "model.pt"), "cpu")
g = torch.Generator().manual_seed(0)
answers = respond(policy, tok, [ex.messages for ex in forbidden], 1.0, 16, generator=g)
for ex, answer in zip(forbidden, answers):
    text = answer.text
    prompt = critique_prompt(question_of(ex), text, principles[2])
    reply = respond(judge.model, tok, [prompt], 0.0, cfg.critique_max_new_tokens)[0].text
    print(f"{question_of(ex)}\n  answer: {text!r}\n  feedback: {reply!r}\n")
stats_path = os.path.join(source, "cai", "sft", "revisions.json")
if os.path.exists(stats_path):
    print("revision statistics:", json.load(open(stats_path)))

# %% [markdown]
# ## RLAIF vs RLHF, and the helpful-vs-harmless trade-off
# Each model: the share of forbidden requests it declines (up is safer) against the share of
# allowed requests it refuses (right is less helpful). The ideal is the top-left corner.

# %%
models = report["models"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, row in models.items():
    if name == "base":
        continue
    x, y = row["over_refusal"]["sampled"], row["declined"]["sampled"]
    axes[0].scatter(x, y)
    axes[0].annotate(name, (x, y))
axes[0].set_xlabel("over-refusal on allowed requests (T=0.7)")
axes[0].set_ylabel("declined forbidden requests (T=0.7)")
names = [m for m in ("sft", "ppo", "dpo", "rlaif_ppo", "rlaif_dpo", "cai_sl", "cai_ppo") if m in models]
axes[1].bar(names, [models[m]["gold_sampled"] for m in names])
axes[1].set_title("gold score, sampled (T=0.7)")
axes[1].tick_params(axis="x", rotation=45)
plt.tight_layout()
plt.show()
for m in names:
    row = models[m]
    print(f"{m:10} gold greedy {row['gold_greedy']:.3f} sampled {row['gold_sampled']:.3f} | declined "
          f"{row['declined']['greedy']:.0%} / {row['declined']['sampled']:.0%} | over-refusal "
          f"{row['over_refusal']['greedy']:.0%} / {row['over_refusal']['sampled']:.0%}")
