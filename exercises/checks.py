"""
The checks behind every exercise: small, hand-computed cases, each failure explained.

A check takes the function(s) under test and raises ExerciseFailure with a message that says which
case failed, what was expected, what came back, and the usual cause. tests/test_exercises.py runs
every check on the project's own implementations (they must pass) and on known-wrong ones (they
must fail, with the right hint).
"""

import math

import torch

IGNORE_INDEX = -100  # the target value that carries no loss (model.IGNORE_INDEX)


class ExerciseFailure(AssertionError):
    pass


def expect(ok, case, got, want, hint=""):
    if not ok:
        message = f"{case}\n  expected: {want}\n  got:      {got}"
        raise ExerciseFailure(message + (f"\n  hint: {hint}" if hint else ""))


def close(got, want, tol=1e-4):
    want = torch.as_tensor(want, dtype=torch.float32)
    got = torch.as_tensor(got, dtype=torch.float32)
    return got.shape == want.shape and torch.allclose(got, want, atol=tol)


def num(t):  # a Python float of a 0-d tensor (or number), detached
    return float(torch.as_tensor(t).detach())


def fmt(t):  # a tensor as (nested) lists of numbers rounded to 4 places, for messages
    return torch.as_tensor(t, dtype=torch.float32).detach().round(decimals=4).tolist()


# ----------------------------------------------------------------------------- masking (data.collate)
def check_masking(collate):
    # <|bos|>=1, two prompt tokens 2 3, answer tokens 4 5 (loss_mask 1); a second, shorter example
    examples = [([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]), ([1, 6, 7], [0, 0, 1])]
    batch = collate(examples, pad_id=0)
    expect(close(batch["input_ids"], [[1, 2, 3, 4], [1, 6, 0, 0]]), "input_ids: each row without its last "
           "token, right-padded with pad_id", fmt(batch["input_ids"]), [[1, 2, 3, 4], [1, 6, 0, 0]],
           "inputs are ids[:-1]: the last token is never an input, only a target")
    want = [[IGNORE_INDEX, IGNORE_INDEX, 4, 5], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]]
    shifted = ([[IGNORE_INDEX] * 3 + [5], [IGNORE_INDEX] * 4],  # used loss_mask[t]
               [[IGNORE_INDEX, 3, 4, IGNORE_INDEX], [6] + [IGNORE_INDEX] * 3])  # used loss_mask[t + 2]
    got = batch["targets"].tolist()
    expect(got == want, "targets: ids[1:], and IGNORE_INDEX where the token being PREDICTED is not part of "
           "the answer", got, want,
           "the mask moves with the targets: targets[t] = ids[t+1] is supervised when loss_mask[t+1] is 1 "
           "(yours is a mask shifted by one)" if got in shifted else
           "targets[t] = ids[t+1] if loss_mask[t+1] else IGNORE_INDEX; pads get IGNORE_INDEX")
    expect(batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]], "attention_mask: 1 on real "
           "input tokens, 0 on pads", batch["attention_mask"].tolist(), [[1, 1, 1, 1], [1, 1, 0, 0]])


# ----------------------------------------------------------------------------- the SFT loss (model.lm_loss)
def check_sft_loss(lm_loss):
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])  # (B=1, T=3, V=2)
    targets = torch.tensor([[IGNORE_INDEX, 0, 0]])
    ce1, ce2 = math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))  # -log softmax of the target
    got = num(lm_loss(logits, targets))
    all_positions = (ce1 + ce2 + math.log(2)) / 3
    expect(abs(got - (ce1 + ce2) / 2) < 1e-4, "mean cross-entropy over the SUPERVISED targets only", got,
           (ce1 + ce2) / 2, "skip targets equal to IGNORE_INDEX and divide by how many are left, not by T"
           if abs(got - all_positions) < 1e-3 or abs(got - (ce1 + ce2) / 3) < 1e-3 else
           "loss = -log softmax(logits)[target], averaged over the targets that are not IGNORE_INDEX")
    got = num(lm_loss(logits, targets, reduction="sum"))
    expect(abs(got - (ce1 + ce2)) < 1e-4, 'reduction="sum": the sum over supervised targets', got, ce1 + ce2)
    got = num(lm_loss(logits, torch.full((1, 3), IGNORE_INDEX)))
    expect(got == 0.0, "no supervised target at all: the loss is 0 (not NaN)", got, 0.0,
           "0 / 0 is NaN: divide by max(count, 1)")


# ----------------------------------------------------------------------------- Bradley-Terry (reward.bradley_terry_loss)
def check_bradley_terry(bradley_terry_loss):
    chosen = torch.tensor([0.0, 1.0, -100.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 0.0, 0.5])
    loss = bradley_terry_loss(chosen, rejected)
    want = [math.log(2), math.log(1 + math.exp(-1.0)), 100.0, math.log(1 + math.exp(-1.5))]
    expect(close(loss, want, 1e-3), "-log sigmoid(r_chosen - r_rejected), per pair", fmt(loss), fmt(want),
           "a loss of 100 for a difference of -100 needs a stable form: F.logsigmoid, not log(sigmoid(x))"
           if not torch.isfinite(torch.as_tensor(loss)).all() else
           "equal scores give ln 2; the chosen answer must score higher for the loss to fall")
    loss.sum().backward()
    want_grad = [-0.5, -1 / (1 + math.e), -1.0, -1 / (1 + math.exp(1.5))]
    expect(close(chosen.grad, want_grad, 1e-3), "gradient with respect to r_chosen: -sigmoid(r_rejected - r_chosen)",
           fmt(chosen.grad), fmt(want_grad))
    with_margin = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
    expect(close(with_margin, [math.log(2)]), "margin m: -log sigmoid(r_c - r_r - m); here 1 - 0 - 1 = 0",
           fmt(with_margin), [round(math.log(2), 4)])


# ----------------------------------------------------------------------------- GAE (ppo.gae)
def check_gae(gae):
    # row 0: three response tokens and a pad; row 1: one token and three pads (junk on the pads)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0], [0.5, 9.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 5.0], [0.1, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta_2 = 1 + 0 - 0.4 = 0.6 (nothing after the last token); delta_1 = 0 + 0.4 - 0.2 = 0.2;
    # delta_0 = 0 + 0.2 - 0.5 = -0.3. A_2 = 0.6, A_1 = 0.2 + 0.95 * 0.6 = 0.77, A_0 = -0.3 + 0.95 * 0.77
    want = [[0.4315, 0.77, 0.6, 0.0], [0.4, 0, 0, 0]]
    no_lambda = [[0.5, 0.8, 0.6, 0.0], [0.4, 0, 0, 0]]
    hint = ("A_t = delta_t + gamma * LAMBDA * A_{t+1}: you left out lambda" if close(advantages, no_lambda) else
            "work backwards from the last real token; the value after it is 0 and pads carry nothing")
    expect(close(advantages, want), "advantages, gamma=1, lam=0.95, padded batch", fmt(advantages), want, hint)
    expect(close(returns, [[0.9315, 0.97, 1.0, 0.0], [0.5, 0, 0, 0]]), "returns = advantages + values "
           "(0 on pads)", fmt(returns), [[0.9315, 0.97, 1.0, 0.0], [0.5, 0, 0, 0]])
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    expect(close(returns, [[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0]]), "lam=1: the return is the sum of the "
           "rewards still to come", fmt(returns), [[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0]])


# ----------------------------------------------------------------------------- PPO losses (ppo.policy_loss, ppo.value_loss)
def check_ppo_losses(policy_loss, value_loss):
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[1.5, 0.5, 1.1, 10.0]]).log().requires_grad_(True)  # ratios 1.5, 0.5, 1.1; a pad
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, _ = policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    want = (-1.2 - 0.5 + 1.1) / 3
    hint = ("token 0 has ratio 1.5 > 1 + eps and A > 0: the clipped term -A * clip(ratio) must win "
            "(you did not clip)" if abs(num(loss) - (-1.5 - 0.5 + 1.1) / 3) < 1e-4 else
            "loss = mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); ratio = exp(logp - old_logp)")
    expect(abs(num(loss) - want) < 1e-4, "policy loss, eps=0.2", num(loss), want, hint)
    loss.backward()
    expect(close(logprobs.grad, [[0.0, -0.5 / 3, 1.1 / 3, 0.0]]), "policy-loss gradient: a clipped token and a "
           "pad get none", fmt(logprobs.grad), fmt([[0.0, -0.5 / 3, 1.1 / 3, 0.0]]))
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    loss, _ = value_loss(values, torch.zeros(1, 4), returns, mask, cliprange_value=0.2)
    # token 0: clipped value 0.2: max(0.25, 0.64) = 0.64; token 1: 1.21; token 2: max(1.69, 1.44) = 1.69
    want = 0.5 * (0.64 + 1.21 + 1.69) / 3
    hint = ("token 0 moved 0.5 from its old value: the clipped prediction 0.2 gives the larger error, "
            "and the larger one counts (you did not clip)" if abs(num(loss) - 0.5 * (0.25 + 1.21 + 1.69) / 3) < 1e-4
            else "loss = 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) over valid tokens")
    expect(abs(num(loss) - want) < 1e-4, "value loss, eps=0.2", num(loss), want, hint)


# ----------------------------------------------------------------------------- KL penalty (ppo.kl_penalty_rewards)
def check_kl_penalty(kl_penalty_rewards):
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 3.0], [-1.0, 3.0, 3.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -2.0]])
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards, non_score = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1)
    want = [[-0.05, 0.1, 0, 0], [-0.1, 0, 0, 0], [0, 0, 0, -0.1]]
    expect(close(non_score, want), "per-token penalty -kl_coef * (logp - ref_logp), 0 on pads", fmt(non_score),
           want, "the sign: a token the policy likes MORE than the reference is penalised")
    want = [[-0.05, 0.1, 2.0, 0], [-1.1, 0, 0, 0], [0, 0, 0, 0.4]]
    hint = ("the score goes on the last REAL token of each row; you put it on the last column, a pad"
            if close(rewards[:, -1], [2.0, -1.0, 0.4]) else "rewards = the penalty, plus the score on the last real token")
    expect(close(rewards, want), "rewards: penalty plus the score at the end of each answer", fmt(rewards), want, hint)


# ----------------------------------------------------------------------------- DPO (dpo.dpo_loss, dpo.sequence_logprobs)
def check_dpo_loss(dpo_loss, sequence_logprobs):
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))  # (1, 3, 2): probabilities
    targets, mask = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 1]])  # the answer: positions 1 and 2
    got = num(sequence_logprobs(logits, targets, mask)[0])
    want = math.log(0.9) + math.log(0.8)
    expect(abs(got - want) < 1e-4, "log pi(answer | prompt): summed over the answer's tokens", got, want,
           "the SUM of the answer's token logprobs, not the mean (the mean changes beta's scale with the answer's "
           "length)" if abs(got - want / 2) < 1e-4 else "prompt positions (mask 0) contribute nothing")
    same = torch.tensor([-3.0, -7.0])
    losses, chosen_rewards, _ = dpo_loss(same, same - 2, same, same - 2, beta=0.1)
    expect(close(losses, [math.log(2)] * 2), "policy == reference: loss ln 2 for every pair", fmt(losses),
           [round(math.log(2), 4)] * 2, "the loss reads log-RATIOS to the reference, not the policy's logprobs")
    expect(close(chosen_rewards, [0.0, 0.0]), "policy == reference: implicit rewards 0", fmt(chosen_rewards), [0, 0])
    # chosen ratio +1, rejected ratio -1: h = 2, beta = 0.1
    losses, chosen_rewards, rejected_rewards = dpo_loss(torch.tensor([-2.0]), torch.tensor([-6.0]),
                                                        torch.tensor([-3.0]), torch.tensor([-5.0]), beta=0.1)
    want = math.log(1 + math.exp(-0.2))
    expect(close(losses, [want]), "DPO: -log sigmoid(beta * h), h = 2, beta = 0.1", fmt(losses), [round(want, 4)])
    expect(close(chosen_rewards, [0.1]) and close(rejected_rewards, [-0.1]), "implicit rewards beta * log-ratio",
           (fmt(chosen_rewards), fmt(rejected_rewards)), ([0.1], [-0.1]))
    args = (torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-5.0]))
    ipo, _, _ = dpo_loss(*args, beta=0.1, loss_type="ipo")
    expect(close(ipo, [(2 - 5) ** 2]), "IPO: (h - 1 / (2 beta))^2 = (2 - 5)^2", fmt(ipo), [9.0])
    cdpo, _, _ = dpo_loss(*args, beta=0.1, loss_type="conservative", label_smoothing=0.1)
    want = 0.9 * math.log(1 + math.exp(-0.2)) + 0.1 * math.log(1 + math.exp(0.2))
    expect(close(cdpo, [want]), "conservative DPO, eps = 0.1: -(1-eps) log s(bh) - eps log s(-bh)", fmt(cdpo),
           [round(want, 4)])


def project_functions(name):
    """The project's own implementation(s) of an exercise: the solutions."""
    import data
    import dpo
    import model
    import ppo
    import reward
    return {"masking": (data.collate,), "sft_loss": (model.lm_loss,), "bradley_terry": (reward.bradley_terry_loss,),
            "gae": (ppo.gae,), "ppo_losses": (ppo.policy_loss, ppo.value_loss),
            "kl_penalty": (ppo.kl_penalty_rewards,), "dpo_loss": (dpo.dpo_loss, dpo.sequence_logprobs)}[name]


CHECKS = {"masking": check_masking, "sft_loss": check_sft_loss, "bradley_terry": check_bradley_terry,
          "gae": check_gae, "ppo_losses": check_ppo_losses, "kl_penalty": check_kl_penalty,
          "dpo_loss": check_dpo_loss}
