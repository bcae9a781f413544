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
# # 5. PPO: advantages by hand, the KL leash, and over-optimisation
#
# RLHF with PPO treats each answer as an episode: one action per token, a KL penalty on every token
# (how far the policy moved from the SFT model) and the reward model's score on the last token.
# A critic estimates values; GAE turns rewards and values into advantages; PPO's clipped loss
# takes several small steps on them.

# %%
import json
import os
import shutil

import matplotlib.pyplot as plt
import torch

import pipeline
import ppo

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"

# %% [markdown]
# ## Per-token rewards: the KL penalty and the score
# Three tokens and a pad. The penalty is -beta * (log pi - log pi_ref) on each real token; the
# score goes on the last real token, never on the pad.

# %%
logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
rewards, penalty = ppo.kl_penalty_rewards(logprobs, ref_logprobs, torch.tensor([1.0]), mask, kl_coef=0.1)
print("KL penalty per token", penalty.tolist())
print("rewards             ", rewards.tolist())

# %% [markdown]
# ## GAE, worked by hand
# delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lambda A_{t+1}, backwards from the
# last token (nothing comes after it). gamma = 1, lambda = 0.95:

# %%
r, v, gamma, lam = [0.0, 0.0, 1.0], [0.5, 0.2, 0.4], 1.0, 0.95
advantage, by_hand = 0.0, []
for t in reversed(range(3)):
    next_value = v[t + 1] if t + 1 < 3 else 0.0
    delta = r[t] + gamma * next_value - v[t]
    advantage = delta + gamma * lam * advantage
    by_hand.insert(0, advantage)
    print(f"t={t}: delta = {r[t]} + {next_value} - {v[t]} = {delta:+.3f}   A = {advantage:+.4f}")
adv, ret = ppo.gae(torch.tensor([r + [9.0]]), torch.tensor([v + [9.0]]), mask, gamma, lam)  # a pad at the end
print("ppo.gae:", adv[0, :3].tolist(), " returns = A + V:", ret[0, :3].tolist())

# %% [markdown]
# ## The clipped policy loss
# With ratio rho = pi / pi_old, PPO minimises max(-A rho, -A clip(rho, 1 - eps, 1 + eps)). For a
# good action (A > 0), pushing rho above 1 + eps earns nothing more: the update stays small.

# %%
rho = torch.linspace(0.5, 1.5, 101)
for A, style in ((1.0, "-"), (-1.0, "--")):
    loss = torch.maximum(-A * rho, -A * rho.clamp(0.8, 1.2))
    plt.plot(rho, loss, style, label=f"A = {A:+.0f}")
plt.axvspan(0.8, 1.2, alpha=0.1); plt.xlabel("ratio pi / pi_old"); plt.ylabel("loss"); plt.legend()
plt.title("PPO clipped loss, eps = 0.2"); plt.show()

# %% [markdown]
# ## The KL leash and over-optimisation
# The default PPO run (from `python pipeline.py`) keeps a KL penalty of 0.1. Here the same PPO
# runs without it and with a larger step; the cell prints the rollouts' RM score, gold score and KL
# to SFT at its first and last iterations. Watch for the RM score rising while the gold score does
# not follow and the KL grows: the policy walking away from the SFT model for a reward that is not
# the goal. Without a real run, a quick run with tiny models stands in (its curves mean nothing).

# %%
runs = os.environ.get("NANOINSTRUCT_RUNS", "runs")
if os.path.exists("runs/default/ppo/metrics.jsonl") and not SMOKE:
    source = "runs/default"
else:
    pipeline.main(pipeline.PipelineConfig(name="notebook_ppo", preset="quick", runs_dir=runs))
    source = os.path.join(runs, "notebook_ppo")
out = os.path.join(runs, "notebook_ppo_unleashed")
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(out, "tokenizer"))
unleashed = ppo.PPOConfig(out_dir=out, sft_path=os.path.join(source, "sft", "model.pt"),
                          reward_path=os.path.join(source, "reward", "model.pt"), kl_coef=0.0, lr=2e-4,
                          ppo_epochs=2, iterations=3 if SMOKE else 20, rollout_batch=8 if SMOKE else 64,
                          minibatch=4 if SMOKE else 16, max_new_tokens=16 if SMOKE else 48,
                          eval_every=0, eval_n=2 if SMOKE else 20, quiet=True)
_ = ppo.train(unleashed)

# %%
def curves(path):
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if "score" in r and "gold" in r]
    return [r["step"] for r in rows], {k: [r[k] for r in rows] for k in ("score", "gold", "kl")}

fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for label, path in (("KL coef 0.1 (default)", os.path.join(source, "ppo", "metrics.jsonl")),
                    ("KL coef 0, lr 2e-4", os.path.join(out, "ppo", "metrics.jsonl"))):
    steps, c = curves(path)
    for ax, key in zip(axes, ("score", "gold", "kl")):
        ax.plot(steps, c[key], label=label); ax.set_title({"score": "RM score (rollouts)", "gold": "gold score (rollouts)",
                                                          "kl": "KL to SFT, nats/answer"}[key]); ax.set_xlabel("iteration")
axes[0].legend(fontsize=8); plt.tight_layout(); plt.show()

for label, path in (("default", os.path.join(source, "ppo", "metrics.jsonl")), ("unleashed", os.path.join(out, "ppo", "metrics.jsonl"))):
    steps, c = curves(path)
    k = max(1, len(steps) // 4)
    print(f"{label:9}: first {k} -> last {k} iterations | RM score {sum(c['score'][:k]) / k:+.2f} -> {sum(c['score'][-k:]) / k:+.2f}"
          f" | gold {sum(c['gold'][:k]) / k:.2f} -> {sum(c['gold'][-k:]) / k:.2f} | KL {sum(c['kl'][:k]) / k:.2f} -> {sum(c['kl'][-k:]) / k:.2f}")
