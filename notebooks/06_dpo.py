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
import preferences
from common import epoch_batch
from model import load_policy
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"  # train small things (the tests set it)
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own runs go (the tests: a temporary folder)


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
# ## ln 2 at the start, on real pairs
# The policy starts as a copy of the reference: every log-ratio is 0, so every pair's loss is
# -log sigmoid(0) = ln 2, whatever the answers. The cell loads the SFT model twice, as the policy and
# as the frozen reference (two separate copies, as `dpo.train` does), takes the first training batch
# of the run's preference pairs, and computes the loss the way `dpo.train` does at step 0: the
# reference's logprobs with `pair_logprobs` (each distinct row once, rows batched by length), the
# policy's with `concatenated_logprobs` (one forward pass over the batch's chosen and rejected rows,
# padded together). Two different batchings of the same rows: the loss is ln 2 only if the padding
# and the masking leave each row's logprob unchanged, and only because policy == reference.
#
# The models and pairs come from the run folder (`runs/default/` from `python pipeline.py`, or
# `NANOINSTRUCT_RUN`), otherwise from a quick run with tiny models made here.

# %%
source = pipeline.run_or_quick(RUN, ["preferences/train.jsonl", "preferences/heldout.jsonl", "sft/model.pt",
                                    "pretrain/model.pt", "tokenizer", "report.json"], "notebook_dpo", runs_dir=RUNS)
report = json.load(open(os.path.join(source, "report.json")))
QUICK = SMOKE or report["config"]["preset"] == "quick"
cfg = pipeline.stage_configs(pipeline.PipelineConfig(preset=report["config"]["preset"]), source)["dpo"]  # the run's DPO
tok = Tokenizer.load(os.path.join(source, "tokenizer"))
sft_path = os.path.join(source, "sft", "model.pt")
ref = load_policy(sft_path, "cpu").requires_grad_(False)  # frozen
policy = load_policy(sft_path, "cpu")                      # a second copy: the one DPO trains
max_len = min(cfg.max_len, policy.config.block_size)
train_pairs, heldout_pairs = preferences.load(source)
train_examples = dpo.tokenize_pairs(tok, train_pairs, max_len + 1)
picks = epoch_batch(len(train_examples), cfg.batch_size, 0, cfg.seed)  # step 0's pairs, as dpo.train draws them
first = [train_examples[i] for i in picks]
ref_chosen, ref_rejected = dpo.pair_logprobs(ref, first, tok.pad_id, max_len)
batch = dpo.collate_pairs(first, tok.pad_id, max_len)
with torch.no_grad():
    policy_chosen, policy_rejected = dpo.concatenated_logprobs(policy, batch)
losses, _, _ = dpo.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta)
print(f"the first batch: {len(first)} pairs of {len(train_pairs)}, beta {cfg.beta}")
print(f"mean log pi(chosen) {policy_chosen.mean():.3f}, log pi(rejected) {policy_rejected.mean():.3f} (policy); "
      f"largest |policy - reference| {max((policy_chosen - ref_chosen).abs().max(), (policy_rejected - ref_rejected).abs().max()):.1e}")
print(f"mean loss at step 0: {losses.mean():.6f}   ln 2 = {math.log(2):.6f}   "
      f"every pair within 1e-4 of ln 2: {bool(((losses - math.log(2)).abs() < 1e-4).all())}")

# %% [markdown]
# What a bug would print instead. Two small computations on the same batch:
# - **a wrong reference**: the base model (`pretrain/model.pt`) as the reference instead of the SFT
#   model the policy starts from. The log-ratios are no longer 0 and the loss is not ln 2.
# - **a masking bug on one side**: the policy's logprob summed over every position of its padded
#   batch (prompt and padding too) instead of over the answer's tokens, against the correct reference.
#   The shared prompt cancels between chosen and rejected; the pads do not (the two rows of a pair
#   have different lengths), so the loss moves off ln 2.
#
# A bug made identically on both sides (the same wrong mask for policy and reference) still prints
# ln 2 at step 0, since the log-ratio of two equal numbers is 0: this check catches a reference that is
# not the starting policy and two sides computed differently. The mask itself is checked on
# hand-built rows in `tests/test_dpo.py`.

# %%
base = load_policy(os.path.join(source, "pretrain", "model.pt"), "cpu")
base_chosen, base_rejected = dpo.pair_logprobs(base, first, tok.pad_id, max_len)
wrong_ref = dpo.dpo_loss(policy_chosen, policy_rejected, base_chosen, base_rejected, cfg.beta)[0]
with torch.no_grad():
    logits, _ = policy(batch["input_ids"])
every_position = torch.ones_like(batch["targets"])  # the bug: no loss mask
unmasked_chosen, unmasked_rejected = dpo.sequence_logprobs(logits, batch["targets"], every_position).chunk(2)
wrong_mask = dpo.dpo_loss(unmasked_chosen, unmasked_rejected, ref_chosen, ref_rejected, cfg.beta)[0]
print(f"ln 2                          {math.log(2):.6f}")
print(f"correct                       {losses.mean():.6f}")
print(f"base model as the reference   {wrong_ref.mean():.6f}   (off ln 2 by {abs(wrong_ref.mean() - math.log(2)):.2g})")
print(f"policy summed over every row  {wrong_mask.mean():.6f}   (off ln 2 by {abs(wrong_mask.mean() - math.log(2)):.2g})")

# %% [markdown]
# ## Chosen logprobs fall too
# DPO only widens the GAP between chosen and rejected; nothing in its loss keeps the chosen answer's
# own logprob up. Expect both logprobs to fall during plain DPO, the rejected faster (DPO repo issue
# #8, TRL #800), and the chosen one to fall less, or rise, with the project's default, which adds an
# NLL term on the chosen answer (RPO, Pang et al. 2024). Here a short run of each from the SFT model
# (the paper's DPO is `nll_coef=0`; the cell prints the steps, each run's progress goes to its
# `train.log`), measured on the same held-out pairs before and after.

# %%
heldout = dpo.tokenize_pairs(tok, heldout_pairs[:64], max_len + 1)
before = dpo.pair_logprobs(ref, heldout, tok.pad_id, max_len)
after = {}
for nll_coef in (0.0, 1.0):
    out = os.path.join(RUNS, f"notebook_dpo_nll{nll_coef}")
    shutil.rmtree(out, ignore_errors=True)
    for folder in ("tokenizer", "preferences"):
        shutil.copytree(os.path.join(source, folder), os.path.join(out, folder))
    run = dpo.DPOConfig(out_dir=out, init=sft_path, nll_coef=nll_coef, max_steps=4 if SMOKE else 100, eval_n=0,
                        compare_sft=False)
    (trained, _, _), seconds = pipeline.logged(os.path.join(out, "train.log"), lambda: dpo.train(run))
    print(f"nll_coef {nll_coef}: {run.max_steps} steps of {run.batch_size} pairs in {seconds:.0f}s, "
          f"progress in {os.path.join(out, 'train.log')}")
    after[nll_coef] = dpo.pair_logprobs(trained, heldout, tok.pad_id, max_len)

labels = ["reference (SFT)", "DPO", "DPO + NLL (default)"]
values = [(c.mean().item(), r.mean().item()) for c, r in [before, after[0.0], after[1.0]]]
fig, ax = plt.subplots(figsize=(6, 3))
x = torch.arange(3)
ax.bar(x - 0.2, [v[0] for v in values], 0.4, label="chosen"); ax.bar(x + 0.2, [v[1] for v in values], 0.4, label="rejected")
ax.set_xticks(x, labels); ax.set_xlabel("model"); ax.set_ylabel("mean log pi(answer)")
ax.set_title(f"{len(heldout)} held-out pairs"); ax.legend(); plt.tight_layout(); plt.show()
for label, (c, r) in zip(labels, values):
    print(f"{label:20} held-out chosen {c:.3f}  rejected {r:.3f}  gap {c - r:.2f}")

# %% [markdown]
# The check, on these numbers. When this run disagrees: a short run on a few dozen pairs is noisy,
# and a policy that barely moved (few steps, small learning rate) may show no fall at all; plain DPO
# keeping its chosen logprob up on one run does not mean it always does. A smoke or quick run means
# nothing.

# %%
(c0, r0), (c1, r1), (c2, r2) = values
print(f"this run, plain DPO: the chosen logprob fell: {c1 < c0}; the rejected fell more: {r0 - r1 > c0 - c1}; "
      f"the gap widened: {c1 - r1 > c0 - r0}")
print(f"this run, with the NLL term: the chosen logprob fell less than with plain DPO: {c0 - c2 < c0 - c1}"
      + ("  (a smoke or quick run: means nothing)" if QUICK else ""))

# %% [markdown]
# ## DPO vs PPO: gold score and the KL price
# From the run's report card (a quick run's numbers mean nothing).

# %%
models, T = report["models"], report["config"]["sample_temperature"]
names = [m for m in ("sft", "ppo", "dpo") if m in models]
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, key, title, ylabel in zip(axes, ("gold_greedy", "gold_sampled", "kl_to_sft"),
                                  ("gold, greedy", f"gold, sampled (T={T})", f"KL to SFT at T={T}"),
                                  ("mean gold score", "mean gold score", "nats per answer")):
    ax.bar(names, [models[m][key][f"T={T}"] if key == "kl_to_sft" else models[m][key] for m in names])
    ax.set_title(title); ax.set_xlabel("model"); ax.set_ylabel(ylabel)
plt.tight_layout(); plt.show()
for m in names:
    row = models[m]
    print(f"{m:4} gold greedy {row['gold_greedy']:.3f} {row['interval']['gold_greedy']}  sampled "
          f"{row['gold_sampled']:.3f}  KL at T={T} {row['kl_to_sft'][f'T={T}']:.2f}"
          + (f"  gold greedy - SFT's {row['vs_sft']['greedy/gold']}" if m != "sft" else ""))
