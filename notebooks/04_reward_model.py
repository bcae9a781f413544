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
# # 4. The reward model: learning a labeler's taste from comparisons
#
# People find it easier to say which of two answers is better than to score one. The Bradley-Terry
# model turns such comparisons into a scalar reward: P(A preferred to B) = sigmoid(r(A) - r(B)).
# `reward.py` fits r with a GPT trunk (initialised from the SFT model) and a scalar head.

# %%
import json
import math
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import pipeline
import preferences
import reward
import tasks

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
_ = torch.manual_seed(0)

# %% [markdown]
# ## Bradley-Terry, drafted on toy tensors
# The loss of one comparison is -log sigmoid(r_chosen - r_rejected). Its gradient with respect to
# r_chosen is -sigmoid(r_rejected - r_chosen): large when the model still gets the pair wrong,
# small once it is sure.

# %%
r_chosen = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
r_rejected = torch.tensor([0.0, 0.0, 0.0])
loss = -torch.log(torch.sigmoid(r_chosen - r_rejected))      # the textbook form
loss.sum().backward()
print("loss      ", loss.detach().numpy().round(4), " (ln 2 =", round(math.log(2), 4), "for a tie)")
print("autograd  ", r_chosen.grad.numpy().round(4))
print("by hand   ", (-torch.sigmoid(r_rejected - r_chosen.detach())).numpy().round(4))
print("reward.py ", reward.bradley_terry_loss(r_chosen.detach(), r_rejected).numpy().round(4),
      "(F.logsigmoid: the same, and finite for a difference of -100:",
      reward.bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0])).item(), ")")

# %% [markdown]
# ## Recovering hidden utilities from noisy comparisons
# Five answers with hidden utilities; a noisy annotator compares random pairs (Bradley-Terry
# itself); one free score per answer, fitted by gradient descent on the BT loss.

# %%
true = torch.tensor([2.0, 1.0, 0.0, -0.5, -2.0])
a, b = torch.randint(0, 5, (2000,)), torch.randint(0, 5, (2000,))
keep = a != b
a, b = a[keep], b[keep]
a_wins = torch.rand(len(a)) < torch.sigmoid(true[a] - true[b])
chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
scores = torch.zeros(5, requires_grad=True)
optimizer = torch.optim.Adam([scores], lr=0.05)
for step in range(300):
    loss = reward.bradley_terry_loss(scores[chosen], scores[rejected]).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
fitted = scores.detach() - scores.detach().mean()  # BT only fixes differences: centre both
print("true   ", (true - true.mean()).numpy().round(2))
print("fitted ", fitted.numpy().round(2))

# %% [markdown]
# ## The built-in labeler
# `tasks.Labeler` compares two answers with the gold score plus noise, like a human annotator who
# is usually right. Its agreement with the hidden gold rule:

# %%
world = tasks.make_world(0)
examples = tasks.make_examples(world, "train", 300, seed=5)
rng = __import__("random").Random(0)
pairs = preferences.modelfree_preferences(examples, rng)  # (clean, mistake), (wordy, mistake) or (clean, wordy)
labeler = tasks.Labeler(temperature=0.25, seed=0)
agree = sum(labeler.prefers_first(ex, p["chosen"], p["rejected"]) for ex, p in zip(examples, pairs)) / len(pairs)
print(f"the labeler agrees with the gold rule on {agree:.0%} of {len(pairs)} pairs")
for p in pairs[:3]:
    print(f"  {p['prompt'][-1]['content'][:55]:55} chosen {p['chosen']!r:32} rejected {p['rejected']!r}")

# %% [markdown]
# ## Where the score is read
# The head reads the hidden state of the last REAL token (the `<|end|>` closing the answer), for
# right- and left-padded rows alike; never a pad.

# %%
mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
print("last real token of [1 1 1 0 0] and [0 0 1 1 1]:", reward.last_token_index(mask).tolist())

# %% [markdown]
# ## The real reward model, and best-of-N
# From `python pipeline.py` when it has run (otherwise from a quick run with tiny models, whose
# numbers mean nothing). Best-of-N samples N answers and keeps the RM's favourite: the RM score of
# the pick keeps rising with N, and the gold score follows only while the RM is right.

# %%
if os.path.exists("runs/default/reward/eval.json"):
    run_dir = "runs/default"
else:
    runs = os.environ.get("NANOINSTRUCT_RUNS", "runs")
    pipeline.main(pipeline.PipelineConfig(name="notebook_reward", preset="quick", runs_dir=runs))
    run_dir = os.path.join(runs, "notebook_reward")
results = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
print(f"{run_dir}: held-out pairs, RM agrees with the labels on {results['heldout/accuracy']:.1%}, "
      f"with the gold rule on {results.get('heldout/gold_accuracy', float('nan')):.1%}")
ns = sorted({int(k.split("/")[1]) for k in results if k.startswith("bon/")})
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(ns, [results[f"bon/{n}/gold"] for n in ns], "o-", label="gold score of the pick")
ax.plot(ns, [results[f"bon/{n}/rm"] for n in ns], "s--", label="RM score of the pick")
ax.set_xscale("log", base=2); ax.set_xlabel("N"); ax.legend(); ax.set_title("best-of-N")
plt.tight_layout(); plt.show()
