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
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"  # train small things (the tests set it)
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own runs go (the tests: a temporary folder)


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
print("ppo.gae equals the hand computation:", torch.allclose(adv[0, :3], torch.tensor(by_hand)))

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
# The PPO run of the run folder (`runs/default/` from `python pipeline.py`, or `NANOINSTRUCT_RUN`)
# keeps a KL penalty (the cell prints its coefficient). Here the same PPO runs without it and with a
# larger step, its progress going to a `train.log`; the next cell plots the rollouts' RM score,
# gold score and KL to SFT over the iterations of both. Without a run folder, a quick run with tiny
# models made here stands in (its curves mean nothing).

# %%
source = pipeline.run_or_quick(RUN, ["ppo/metrics.jsonl", "sft/model.pt", "reward/model.pt", "tokenizer"], "notebook_ppo",
                               runs_dir=RUNS)
card = os.path.join(source, "report.json")
QUICK = SMOKE or (os.path.exists(card) and json.load(open(card))["config"]["preset"] == "quick")
out = os.path.join(RUNS, "notebook_ppo_unleashed")
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(out, "tokenizer"))
unleashed = ppo.PPOConfig(out_dir=out, sft_path=os.path.join(source, "sft", "model.pt"),
                          reward_path=os.path.join(source, "reward", "model.pt"), kl_coef=0.0, lr=2e-4,
                          ppo_epochs=2, iterations=3 if SMOKE else 20, rollout_batch=8 if SMOKE else 64,
                          minibatch=4 if SMOKE else 16, max_new_tokens=16 if SMOKE else 48,
                          eval_every=0, eval_n=2 if SMOKE else 20)
_, seconds = pipeline.logged(os.path.join(out, "train.log"), lambda: ppo.train(unleashed))
print(f"unleashed PPO: {unleashed.iterations} iterations of {unleashed.rollout_batch} rollouts in {seconds:.0f}s, "
      f"progress in {os.path.join(out, 'train.log')}")

# %% [markdown]
# What to expect. Without the leash the policy is free to walk away from the SFT model for whatever
# the reward model pays for: its KL to SFT should grow more than the leashed run's, its RM score
# should rise at least as much, and its gold score should rise less than the leashed run's, or fall:
# the RM's errors being exploited (over-optimisation, Gao et al. 2022). The cell below checks these
# on the first and last quarter of the iterations both runs have. A run that disagrees is not proof
# of the opposite: a few dozen rollouts per iteration make noisy curves, and a short run may stop
# before the gold score turns. A smoke or quick run (tiny models, a few iterations) means nothing.

# %%
def curves(path):
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if "score" in r and "gold" in r]
    return [r["step"] for r in rows], {k: [r[k] for r in rows] for k in ("score", "gold", "kl", "kl_coef")}


runs_to_plot = {f"KL coef {curves(os.path.join(source, 'ppo', 'metrics.jsonl'))[1]['kl_coef'][0]:g} (the run's)":
                os.path.join(source, "ppo", "metrics.jsonl"),
                f"KL coef 0, lr {unleashed.lr:g}": os.path.join(out, "ppo", "metrics.jsonl")}
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
titles = {"score": ("RM score (rollouts)", "mean RM score"), "gold": ("gold score (rollouts)", "mean gold score"),
          "kl": ("KL to SFT", "nats per answer")}
for label, path in runs_to_plot.items():
    steps, c = curves(path)
    for ax, key in zip(axes, ("score", "gold", "kl")):
        ax.plot(steps, c[key], label=label)
        ax.set_title(titles[key][0]); ax.set_ylabel(titles[key][1]); ax.set_xlabel("iteration")
axes[0].legend(fontsize=8); plt.tight_layout(); plt.show()

n = min(len(curves(path)[0]) for path in runs_to_plot.values())  # compare the same iterations of both
k = max(1, n // 4)
change = {}
for name, (label, path) in zip(("leashed", "unleashed"), runs_to_plot.items()):
    c = {key: values[:n] for key, values in curves(path)[1].items()}
    change[name] = {key: sum(c[key][n - k:]) / k - sum(c[key][:k]) / k for key in ("score", "gold", "kl")}
    print(f"{label:22}: first {k} -> last {k} of iterations 1-{n} | " + " | ".join(
        f"{key} {sum(c[key][:k]) / k:+.3f} -> {sum(c[key][n - k:]) / k:+.3f}" for key in ("score", "gold", "kl")))
u, l = change["unleashed"], change["leashed"]
print(f"this run, unleashed vs leashed: KL grew more: {u['kl'] > l['kl']}; RM score rose at least as much: "
      f"{u['score'] >= l['score']}; gold rose less: {u['gold'] < l['gold']}; unleashed gold fell: {u['gold'] < 0}"
      + ("  (a smoke or quick run: means nothing)" if QUICK else ""))
