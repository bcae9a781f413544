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
# # 6. DPO: the reward model folded into the policy
#
# RLHF maximises E[r(x, y)] - beta KL(pi || pi_ref). Its optimum has a closed form,
# pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so the reward can be written with the policy:
# r(x, y) = beta log pi(y|x) / pi_ref(y|x) + beta log Z(x). Put that into the Bradley-Terry loss of
# a comparison (y_w preferred to y_l) and Z(x) cancels:
#
# loss = -log sigmoid(beta [log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l)])
#
# No reward model, no sampling, no critic: a supervised loop over the preference pairs.

# %%
import json
import math
import os
import shutil

import matplotlib.pyplot as plt
import torch

import dpo
import pipeline
from formats import load_preferences_jsonl
from model import load_policy
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"

# %% [markdown]
# ## The loss, drafted on toy numbers
# Sequence logprobs (sums over the answer's tokens) of a chosen and a rejected answer, under the
# policy and the frozen reference.

# %%
beta = 0.1
policy_w, policy_l, ref_w, ref_l = torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-5.0])
h = (policy_w - ref_w) - (policy_l - ref_l)
print("by hand:", (-torch.nn.functional.logsigmoid(beta * h)).item())
print("dpo.py :", dpo.dpo_loss(policy_w, policy_l, ref_w, ref_l, beta)[0].item())

# %% [markdown]
# ## ln 2 at the start
# The policy starts as a copy of the reference: every log-ratio is 0, so every pair's loss is
# -log sigmoid(0) = ln 2, whatever the answers. A loss that does not start at ln 2 means the
# reference or the masking is wrong.

# %%
runs = os.environ.get("NANOINSTRUCT_RUNS", "runs")
if os.path.exists("runs/default/preferences/train.jsonl") and not SMOKE:
    source = "runs/default"
else:
    pipeline.main(pipeline.PipelineConfig(name="notebook_dpo", preset="quick", runs_dir=runs))
    source = os.path.join(runs, "notebook_dpo")
tok = Tokenizer.load(os.path.join(source, "tokenizer"))
ref = load_policy(os.path.join(source, "sft", "model.pt"), "cpu")
pairs = load_preferences_jsonl(os.path.join(source, "preferences", "heldout.jsonl"))[:64]
examples = dpo.tokenize_pairs(tok, pairs)
chosen, rejected = dpo.pair_logprobs(ref, examples, tok.pad_id, ref.config.block_size)
losses, _, _ = dpo.dpo_loss(chosen, rejected, chosen, rejected, beta=0.5)
print(f"mean loss at step 0: {losses.mean():.6f}   ln 2 = {math.log(2):.6f}")

# %% [markdown]
# ## Chosen logprobs fall too
# DPO only widens the GAP between chosen and rejected. In practice both logprobs often fall, the
# rejected faster. Here 100 steps of the paper's DPO (`nll_coef=0`) and of the project's default,
# which adds an NLL term on the chosen answer (RPO, Pang et al. 2024), measured on the same held-out
# pairs; the cell prints the chosen and rejected logprobs and their gap before and after each.

# %%
after = {}
for nll_coef in (0.0, 1.0):
    out = os.path.join(runs, f"notebook_dpo_nll{nll_coef}")
    shutil.rmtree(out, ignore_errors=True)
    for folder in ("tokenizer", "preferences"):
        shutil.copytree(os.path.join(source, folder), os.path.join(out, folder))
    cfg = dpo.DPOConfig(out_dir=out, init=os.path.join(source, "sft", "model.pt"), nll_coef=nll_coef,
                        max_steps=4 if SMOKE else 100, eval_n=0, compare_sft=False, quiet=True)
    policy, _, _ = dpo.train(cfg)
    after[nll_coef] = dpo.pair_logprobs(policy, examples, tok.pad_id, ref.config.block_size)  # the same 64 held-out pairs

labels = ["reference (SFT)", "DPO", "DPO + NLL (default)"]
values = [(chosen.mean(), rejected.mean())] + [(c.mean(), r.mean()) for c, r in after.values()]
fig, ax = plt.subplots(figsize=(6, 3))
x = torch.arange(3)
ax.bar(x - 0.2, [v[0] for v in values], 0.4, label="chosen"); ax.bar(x + 0.2, [v[1] for v in values], 0.4, label="rejected")
ax.set_xticks(x, labels); ax.set_ylabel("mean log pi(answer)"); ax.legend(); plt.tight_layout(); plt.show()
for label, (c, r) in zip(labels, values):
    print(f"{label:20} held-out chosen {c:.3f}  rejected {r:.3f}  gap {c - r:.2f}")

# %% [markdown]
# ## DPO vs PPO: gold score and the KL price
# From the pipeline's report card (the quick run's numbers mean nothing).

# %%
report_path = os.path.join(source, "report.json")
if os.path.exists(report_path):
    models = json.load(open(report_path))["models"]
    names = [m for m in ("sft", "ppo", "dpo") if m in models]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, key, title in zip(axes, ("gold_greedy", "gold_sampled", "kl_to_sft"),
                              ("gold, greedy", "gold, sampled (T=0.7)", "KL to SFT at T=0.7, nats/answer")):
        ax.bar(names, [models[m][key]["T=0.7"] if key == "kl_to_sft" else models[m][key] for m in names])
        ax.set_title(title)
    plt.tight_layout(); plt.show()
    for m in names:
        row = models[m]
        print(f"{m:4} gold greedy {row['gold_greedy']:.3f} {row['interval']['gold_greedy']}  sampled "
              f"{row['gold_sampled']:.3f}  KL at T=0.7 {row['kl_to_sft']['T=0.7']:.2f}"
              + (f"  gold greedy - SFT's {row['vs_sft']['greedy/gold']}" if m != "sft" else ""))
