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
RUN = os.environ.get("NANOINSTRUCT_RUN", "runs/default")  # the run folder this notebook reads
RUNS = os.environ.get("NANOINSTRUCT_RUNS", "runs")        # where its own quick run goes (the tests: a temporary folder)


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
g = r_chosen.grad.abs()
print("the gradient is largest for the pair it gets wrong (difference -2), smallest for the surest (+1):",
      bool(g[2] > g[0] > g[1]))

# %% [markdown]
# ## Recovering hidden utilities from noisy comparisons
# Five answers with hidden utilities; a noisy annotator compares random pairs (Bradley-Terry
# itself); one free score per answer, fitted by gradient descent on the BT loss. Expect the fitted
# scores to come out in the true order and close to the true values (up to a shared shift, which BT
# cannot see); the cell checks both. With fewer comparisons, or utilities closer together, the
# noise can swap two neighbours.

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
print("same order as the true utilities:", torch.equal(fitted.argsort(), true.argsort()),
      f"  largest error: {(fitted - (true - true.mean())).abs().max():.2f}")

# %% [markdown]
# ## The built-in labeler
# `tasks.Labeler` compares two answers with the gold score plus noise, like a human annotator who
# is usually right: expect well over half of its labels to agree with the hidden gold rule, and not
# all of them (the noise is the point). Its agreement on this notebook's pairs:

# %%
world = tasks.make_world(0)
examples = tasks.make_examples(world, "train", 300, seed=5)
rng = __import__("random").Random(0)
pairs = preferences.modelfree_preferences(examples, rng)  # (clean, mistake), (wordy, mistake) or (clean, wordy)
labeler = tasks.Labeler(temperature=0.25, seed=0)
agree = sum(labeler.prefers_first(ex, p["chosen"], p["rejected"]) for ex, p in zip(examples, pairs)) / len(pairs)
print(f"the labeler agrees with the gold rule on {agree:.0%} of {len(pairs)} pairs "
      f"(usually right: {agree > 0.5}; sometimes wrong: {agree < 1})")
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
# From the run folder (`runs/default/` from `python pipeline.py`, or `NANOINSTRUCT_RUN`) when it has
# one, otherwise from a quick run with tiny models made here, whose numbers mean nothing.
# Best-of-N samples N answers and keeps the RM's favourite. Expect the RM score of the pick to keep
# rising with N, and the gold score to follow only while the RM is right: it rises less, flattens,
# or falls at large N. The cell checks this on the run's numbers. With few test prompts per N
# (the run's `bon_n`) a difference of a few hundredths in gold may be chance.

# %%
run_dir = pipeline.run_or_quick(RUN, ["reward/eval.json"], "notebook_reward", runs_dir=RUNS)
card = os.path.join(run_dir, "report.json")
QUICK = os.path.exists(card) and json.load(open(card))["config"]["preset"] == "quick"
results = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
print(f"{run_dir}: held-out pairs, RM agrees with the labels on {results['heldout/accuracy']:.1%}, "
      f"with the gold rule on {results.get('heldout/gold_accuracy', float('nan')):.1%}")
ns = sorted({int(k.split("/")[1]) for k in results if k.startswith("bon/")})
gold, rm = [results[f"bon/{n}/gold"] for n in ns], [results[f"bon/{n}/rm"] for n in ns]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(ns, gold, "o-", label="gold score of the pick")
ax.plot(ns, rm, "s--", label="RM score of the pick")
ax.set_xscale("log", base=2); ax.set_xlabel("N (samples per prompt)"); ax.set_ylabel("mean score of the pick")
ax.legend(); ax.set_title("best-of-N on test prompts")
plt.tight_layout(); plt.show()
for n, g, r in zip(ns, gold, rm):
    print(f"N={n:<3} gold {g:+.3f}   RM {r:+.3f}")
if any(math.isnan(v) for v in gold + rm):
    print("some scores are NaN (no pick ended its answer at that N): this run cannot show the trend")
else:
    print(f"this run: the RM score rises from N={ns[0]} to N={ns[-1]}: {rm[-1] > rm[0]}; gold rises too: "
          f"{gold[-1] > gold[0]}; gold at N={ns[-1]} below its peak (over-optimisation seen): {gold[-1] < max(gold)}"
          + ("  (a quick run: means nothing)" if QUICK else ""))

# %% [markdown]
# ## Did it learn anything its starting point did not know?
# A reward model that only repeats what the SFT model already believes adds nothing to RLHF. So the
# stage scores the same held-out pairs (their prompts share no question with the training pairs)
# with three scores that need no training on comparisons: the SFT model's own log-likelihood of each
# answer (`sft_logprob`), "the shorter answer wins" (`shorter`), and the reward model before training
# (`rm_init`). The demonstrators end 60% of their clean answers with "Hope this helps!", so the SFT
# likelihood prefers the signed-off answer the labelers dislike. Expect the trained reward model to
# order more pairs as the gold rule does than the best of the three; the cell checks it, family by family.

# %%
agreement = {"reward model": results.get("heldout/gold_accuracy", float("nan"))}
agreement.update({name: results[f"heldout/baseline/{name}/gold_accuracy"] for name in ("sft_logprob", "shorter", "rm_init")
                  if f"heldout/baseline/{name}/gold_accuracy" in results})
for name, value in agreement.items():
    print(f"{name:13} orders {value:.1%} of the held-out pairs as the gold rule does")
best = max((n for n in agreement if n != "reward model"), key=agreement.get, default=None)
if best is not None:
    print(f"best score without comparisons: {best}; the reward model beats it by "
          f"{100 * (agreement['reward model'] - agreement[best]):+.1f} points"
          + ("  (a quick run: means nothing)" if QUICK else ""))
families = sorted(k.rsplit("/", 1)[1] for k in results if k.startswith("heldout/gold_accuracy/"))
for family in families:
    rm_value = results[f"heldout/gold_accuracy/{family}"]
    base_value = results.get(f"heldout/baseline/sft_logprob/gold_accuracy/{family}", float("nan"))
    print(f"  {family:12} reward model {rm_value:6.1%}   sft_logprob {base_value:6.1%}")
