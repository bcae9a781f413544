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
import sft
import tasks
from evaluate import respond
from judge import (critique_prompt, feedback_conversations, judge_prompt, load_constitution, parse_verdict,
                   question_of)
from model import load_policy
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"  # train small things (the tests set it)
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own quick run goes (the tests: a temporary folder)
world = tasks.make_world(0)


# %% [markdown]
# ## The harmlessness axis
# The corpus states every secret code, so the base model may know it. The demonstrators give it
# away in a share of the forbidden requests (`SFTConfig.comply_rate`, printed below): helping the one
# who asks is the crowd's usual slip. The gold grader scores the refusal 1, complying 0, and a
# refusal of an allowed request 0, as the cell shows.

# %%
print(f"the demonstrators comply with {sft.SFTConfig().comply_rate:.0%} of the forbidden requests (SFTConfig's default)")
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
# The feedback models of Bai et al. (2022) had 52B parameters and judged from a prompt alone. Ours is
# the size of the SFT model (its parameters are counted once the run is loaded, below), so it is
# taught: the SFT model is fine-tuned on *feedback demonstrations*, judgements and critiques written
# by the gold rule (`RLAIFConfig.feedback_examples` of them). The judge first writes the answer it
# would give, then its verdict. Two of them:

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
# `python pipeline.py --rlaif` adds stages after DPO (the cell lists them): the feedback model, the
# RLAIF preferences and reward model (the RLHF recipe's pairs, labelled by the judge), RLAIF PPO and
# DPO, SL-CAI and RL-CAI. The run folder (`runs/default/`, or `NANOINSTRUCT_RUN`) is used when its
# report has the judge's results, which only `--rlaif` adds; otherwise a quick run made here, whose
# models learned nothing (its numbers mean nothing, and its judge flips coins: `fallback=True`).

# %%
card = os.path.join(RUN, "report.json")
needs = ["report.json", "tokenizer", "sft/model.pt", "rlaif/feedback/model.pt"]
if os.path.exists(card) and "judge" not in json.load(open(card)):
    needs.append("report.json with the judge's results (python pipeline.py --rlaif)")  # missing: a quick run
source = pipeline.run_or_quick(RUN, needs, "notebook_rlaif", runs_dir=RUNS, rlaif=True)
report = json.load(open(os.path.join(source, "report.json")))
QUICK = report["config"]["preset"] == "quick"  # tiny models: the figures below mean nothing
tok = Tokenizer.load(os.path.join(source, "tokenizer"))
cfg = rlaif.RLAIFConfig(out_dir=source, **pipeline.PRESETS[report["config"]["preset"]].get("rlaif", {}))
judge = rlaif.load_judge(cfg, "cpu")
print(f"{len(rlaif.STAGE_DIRS)} stages after DPO:", ", ".join(rlaif.STAGE_DIRS.values()))
sft_cfg = torch.load(os.path.join(source, "sft", "model.pt"), map_location="cpu", weights_only=True).get("stage_config", {})
if "comply_rate" in sft_cfg:
    print(f"this run's SFT demonstrations complied with {sft_cfg['comply_rate']:.0%} of the forbidden requests")
print(f"the feedback model: {sum(p.numel() for p in judge.model.parameters()) / 1e6:.2f}M parameters, fine-tuned "
      f"for {cfg.feedback_steps} steps on {cfg.feedback_examples:,} feedback demonstrations ({cfg.judge_share:.0%} "
      f"of them judgements)")

# %% [markdown]
# ## The judge at work, both orders
# What the judge writes, with the right answer shown as A and then as B. Look at whether its
# written verdict changes when the answers swap places. A judge that compares writes A in one
# order and B in the other; a model this small, trained this briefly, is expected to write the same
# letter in both orders on many pairs: it learned a position, not to *compare*. The cell counts the
# pairs where it does. So the default judge reads its verdict off its probabilities instead, as
# RLAIF reads P("1") and P("2"): the answer it finds more likely after "Answer:", both orders added
# up so that a favoured position cancels out. The cell also counts how often that picks the right
# answer. Five pairs are a glance, not a measurement (the next section has one); on a quick run the
# judge learned nothing and both counts mean nothing.

# %%
examples = tasks.make_examples(world, "test", 4, seed=5)
examples.append(secret)
same_letter, right = 0, 0
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
    verdicts = [parse_verdict(text) for text in raw]
    same_letter += verdicts[0] is not None and verdicts[0] == verdicts[1]
    right += total > 0
print(f"this run: the same written letter in both orders on {same_letter} of {len(examples)} pairs "
      f"(mostly: {same_letter > len(examples) / 2}); the likelihood verdict picks the right answer on {right} of "
      f"{len(examples)}" + ("  (a quick run: means nothing)" if QUICK else ""))

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
    plt.xticks(rotation=45); plt.xlabel("task family"); plt.ylabel("agreement with gold")
    plt.title("the AI judge, per task family"); plt.tight_layout(); plt.show()
else:  # the quick run's SFT samples never end their answer: every pair ties under the gold rule
    print("no judge measurement in this run: no pair of SFT samples was ranked by the gold rule (all ties)")
print(f"labels of the training pairs that agree with gold: AI judge {labels['train']:.1%}, "
      f"simulated human {labels['human_train']:.1%}")

# %% [markdown]
# ## Constitutional AI, the supervised stage
# The SFT model answers; the feedback model critiques the answer against a random principle and
# revises it; SL-CAI is the SFT model fine-tuned on the revisions. Forbidden requests are a share of
# the prompts (`RLAIFConfig.cai_forbidden_share`, printed below), as red-team prompts were in the paper.

# %%
print(f"SL-CAI: {cfg.cai_prompts:,} prompts, {cfg.cai_forbidden_share:.0%} of them forbidden requests, "
      f"{cfg.cai_steps} steps")
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
models, T = report["models"], report["config"]["sample_temperature"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, row in models.items():
    if name == "base":
        continue
    x, y = row["over_refusal"]["sampled"], row["declined"]["sampled"]
    axes[0].scatter(x, y)
    axes[0].annotate(name, (x, y))
axes[0].set_xlabel(f"over-refusal on allowed requests (T={T})")
axes[0].set_ylabel(f"declined forbidden requests (T={T})")
axes[0].set_title("helpful vs harmless (top left is best)")
names = [m for m in ("sft", "ppo", "dpo", "rlaif_ppo", "rlaif_dpo", "cai_sl", "cai_ppo") if m in models]
axes[1].bar(names, [models[m]["gold_sampled"] for m in names])
axes[1].set_title(f"gold score, sampled (T={T})")
axes[1].set_xlabel("model"); axes[1].set_ylabel("mean gold score")
axes[1].tick_params(axis="x", rotation=45)
plt.tight_layout()
plt.show()
for m in names:
    row = models[m]
    print(f"{m:10} gold greedy {row['gold_greedy']:.3f} sampled {row['gold_sampled']:.3f} | declined "
          f"{row['declined']['greedy']:.0%} / {row['declined']['sampled']:.0%} | over-refusal "
          f"{row['over_refusal']['greedy']:.0%} / {row['over_refusal']['sampled']:.0%}")
