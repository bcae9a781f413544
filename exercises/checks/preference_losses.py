"""
exercises/checks/preference_losses.py: the checks of the losses learned from comparisons: the reward
model's Bradley-Terry loss and DPO's (exercises bradley_terry, dpo_loss).
"""

import math

import torch

from exercises.checks.harness import (IGNORE_INDEX, NAN_GRADIENT, call, check_gradient, close, diagnose, expect, fmt,
                                      gradients, num, pair, tensor)


# ---------------------------------------------------------------------------- Bradley-Terry (reward.bradley_terry_loss)
def check_bradley_terry(bradley_terry_loss):
    case = "-log sigmoid(r_chosen - r_rejected), per pair"
    chosen, rejected = torch.tensor([0.0, 1.0, -100.0, 2.0, 100.0]), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.0])
    loss = call(case, bradley_terry_loss, chosen, rejected)
    # differences 0, 1, -100, 1.5, 100: log 2, log(1 + e^-1), 100 (large margin, wrong way), log(1 + e^-1.5), ~0
    want = [math.log(2), math.log(1 + math.exp(-1.0)), 100.0, math.log(1 + math.exp(-1.5)), 0.0]
    tensor(case, loss, (5,), "return one loss per pair, shape (B,): the caller takes the mean")
    hint = ("a loss of 100 for a difference of -100 needs a stable form: F.logsigmoid or F.softplus, not "
            "log(sigmoid(x)) or log(1 + exp(-x))" if not torch.isfinite(loss).all() else
            "the loss of a badly wrong pair saturates: an epsilon inside the log or a clamp caps it (and its "
            "gradient); F.logsigmoid needs neither" if torch.is_tensor(loss) and 1 < num(loss[2]) < 99 else
            diagnose(loss, [([math.log(2), math.log(1 + math.e), 0.0, math.log(1 + math.exp(1.5)), 100.0],
                             "the sign: the loss falls as r_chosen - r_rejected grows; yours is "
                             "-log sigmoid(r_rejected - r_chosen)")],
                     "equal scores give ln 2; the chosen answer must score higher for the loss to fall"))
    expect(close(loss, want, 1e-3), case, fmt(loss), fmt(want), hint)

    case = "the margin m: -log sigmoid(r_c - r_r - m), m = 1.0"
    loss = call(case, bradley_terry_loss, torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), margin=1.0)
    want = [math.log(2), math.log(1 + math.exp(-2.0))]  # 1 - 0 - 1 = 0 and 3 - 0 - 1 = 2
    hint = diagnose(loss, [([math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(-4.0))], "SUBTRACT the margin: "
                            "a pair must win by m before its loss falls below ln 2"),
                           ([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(-3.0))], "you ignored the margin")],
                    "-log sigmoid(r_chosen - r_rejected - margin)")
    expect(close(loss, want), case, fmt(loss), fmt(want), hint)

    case = "a margin per pair, shape (B,): m = 0.5, 2.0"
    loss = call(case, bradley_terry_loss, torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]),
                margin=torch.tensor([0.5, 2.0]))
    want = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(-1.0))]  # 1 - 0.5 = 0.5 and 3 - 2 = 1
    expect(close(loss, want), case, fmt(loss), fmt(want), "pair b uses its own margin[b]: subtract the whole "
           "tensor elementwise")

    case = "gradient with respect to r_chosen: -sigmoid(r_rejected - r_chosen)"
    chosen = torch.tensor([1.0, -100.0, 2.0], requires_grad=True)
    loss = call(case, bradley_terry_loss, chosen, torch.tensor([0.0, 0.0, 0.5]))
    grad = gradients(case, loss, [chosen], ["chosen"], bradley_terry_loss.__qualname__, weighted=False)["chosen"]
    want = [-1 / (1 + math.e), -1.0, -1 / (1 + math.exp(1.5))]  # -sigmoid(-1), -sigmoid(100) = -1, -sigmoid(-1.5)
    expect(close(grad, want, 1e-3), case, fmt(grad), fmt(want),
           NAN_GRADIENT if not torch.isfinite(grad).all() else
           "a gradient of 0 where the pair is badly wrong: a saturating form; the derivative of -log sigmoid(x) "
           "tends to -1, not 0, as x -> -inf")

    import reward
    # away from ties (differences 0.2, -2.1, 2.75, -50, 39): at a tie, correct forms may get different subgradients
    inputs = {"chosen": torch.tensor([0.3, -1.2, 2.5, -40.0, 35.0]),
              "rejected": torch.tensor([0.1, 0.4, -0.5, 10.0, -5.0])}
    margin = torch.tensor([0.0, 0.5, 0.25, 0.0, 1.0])
    check_gradient("pairs of every kind, a margin each", bradley_terry_loss, reward.bradley_terry_loss, inputs,
                   lambda f, chosen, rejected: f(chosen, rejected, margin=margin))


# ---------------------------------------------------------------------------- DPO (dpo.dpo_loss, dpo.sequence_logprobs)
def dpo_batch():
    """logits (2, 4, 3) = log(w) + offset (not normalised), targets with IGNORE_INDEX outside the answers.

    Row 0: the answer at positions 1 and 2: w = 1 2 1 with token 1 (p = 1/2), w = 1 1 2 with token 2
    (p = 1/2). Row 1: the answer at positions 2 and 3: w = 2 1 1 with token 0 (p = 1/2), w = 1 1 2 with
    token 0 (p = 1/4). The other positions hold junk.
    """
    log = lambda *w: torch.tensor(w).log()
    logits = torch.stack([torch.stack([log(1, 4, 1), log(1, 2, 1) + 3.0, log(1, 1, 2) - 1.0, log(5, 1, 1)]),
                          torch.stack([log(3, 1, 1), log(1, 1, 6) + 2.0, log(2, 1, 1) + 5.0, log(1, 1, 2) - 4.0])])
    targets = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    return logits, targets, mask


def check_dpo_loss(dpo_loss, sequence_logprobs):
    import dpo
    check_sequence_logprobs(sequence_logprobs, dpo.sequence_logprobs)
    check_dpo_values(dpo_loss, dpo.dpo_loss)


def check_sequence_logprobs(sequence_logprobs, solution):
    logits, targets, mask = dpo_batch()
    case = "sequence_logprobs: two rows, logits not normalised, IGNORE_INDEX targets outside the answers"
    clamp = ("targets are IGNORE_INDEX (-100) wherever loss_mask is 0, and gather cannot read index -100: "
             "clamp them first (targets.clamp(min=0)), then let the mask zero those positions")
    got = tensor(case, call(case, sequence_logprobs, logits, targets, mask, _hint=clamp), (2,),
                 "(B,): one log-probability per sequence, the sum over its answer's tokens")
    want = [math.log(0.5) + math.log(0.5), math.log(0.5) + math.log(0.25)]  # -1.3863, -2.0794
    lp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (2, 4)
    raw = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    shifted = (logits[:, :-1].log_softmax(-1).gather(-1, targets[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
               * mask[:, 1:]).sum(-1)  # shifted once more: position t scored by the logits at t - 1
    hint = diagnose(got, [([want[0] / 2, want[1] / 2], "the SUM of the answer's token logprobs, not the mean (the "
                           "mean changes beta's scale with the answer's length)"),
                          ((raw * mask).sum(-1), "logits are not log-probabilities: log_softmax first"),
                          (lp.sum(-1), "prompt and pad positions (mask 0) contribute nothing: multiply by the mask"),
                          (shifted, "the targets are already aligned with the logits here (the shift is done): "
                           "logits[:, t] scores targets[:, t]")],
                    "sum over t of log_softmax(logits)[t, targets[t]] where loss_mask is 1")
    expect(close(got, want), case, fmt(got), fmt(want), hint)

    case = "sequence_logprobs: large logits, 1000 for another token"
    big = logits.clone()
    big[0, 1] = torch.tensor([1000.0, 0.0, -1000.0])  # the target, token 1, has log p = -1000
    got = tensor(case, call(case, sequence_logprobs, big, targets, mask, _hint=clamp), (2,))
    want = -1000.0 + math.log(0.5)
    expect(abs(num(got[0]) - want) < 1e-2, case + ": row 0", num(got[0]), want,
           "log(softmax(x)) underflows to log 0 = -inf: use F.log_softmax" if not math.isfinite(num(got[0])) else
           "the sum of log_softmax(logits) at the answer's tokens")

    check_gradient("sequence_logprobs: the first case's gradient", sequence_logprobs, solution, {"logits": logits},
                   lambda f, logits: f(logits, targets, mask))


def check_dpo_values(dpo_loss, solution):
    def losses(case, *args, **kwargs):
        got = call(case, dpo_loss, *args, **kwargs)
        expect(isinstance(got, (tuple, list)) and len(got) == 3, case + ": what comes back", type(got).__name__,
               "(losses, chosen_rewards, rejected_rewards)")
        tensor(case, got[0], args[0].shape, "one loss per pair, shape (B,): the caller takes the mean")
        return got

    beta_outside = ("beta goes INSIDE the sigmoid: -log sigmoid(beta * h), not -beta * log sigmoid(h) (beta sets "
                    "how far from the reference the policy may go, not the loss's scale)")
    case = "policy == reference: loss ln 2 for every pair"
    same = torch.tensor([-3.0, -7.0])
    got, chosen_rewards, _ = losses(case, same, same - 2, same, same - 2, beta=0.1)
    want = [math.log(2)] * 2
    hint = diagnose(got, [([0.1 * math.log(2)] * 2, beta_outside),
                          ([math.log(1 + math.exp(-0.2))] * 2, "the loss reads log-RATIOS to the reference, "
                           "log pi - log pi_ref, not the policy's logprobs alone")],
                    "h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected) = 0 here")
    expect(close(got, want), case, fmt(got), fmt(want), hint)
    expect(close(chosen_rewards, [0.0, 0.0]), case + ": implicit rewards 0", fmt(chosen_rewards), [0, 0],
           "the implicit reward is beta * (log pi - log pi_ref), 0 when they are equal")

    # chosen log-ratio -2 - (-3) = +1, rejected -6 - (-5) = -1: h = 2, beta = 0.1
    args = (torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-5.0]))
    case = "DPO: -log sigmoid(beta * h), h = 2, beta = 0.1"
    got, chosen_rewards, rejected_rewards = losses(case, *args, beta=0.1)
    want = [math.log(1 + math.exp(-0.2))]  # 0.5981
    hint = diagnose(got, [([0.1 * math.log(1 + math.exp(-2.0))], beta_outside),
                          ([math.log(1 + math.exp(-2.0))], "multiply h by beta inside the sigmoid"),
                          ([math.log(1 + math.exp(0.2))], "the sign: h = chosen log-ratio MINUS rejected log-ratio")],
                    "-log sigmoid(beta * h)")
    expect(close(got, want), case, fmt(got), fmt(want), hint)
    hint = diagnose(chosen_rewards, [([1.0], "the implicit rewards are BETA times the log-ratio"),
                                     ([-0.2], "the implicit rewards are beta times the log-RATIO to the reference")],
                    "chosen_rewards = beta * (policy_chosen - ref_chosen)")
    expect(close(chosen_rewards, [0.1]) and close(rejected_rewards, [-0.1]), case + ": implicit rewards "
           "beta * log-ratio", (fmt(chosen_rewards), fmt(rejected_rewards)), ([0.1], [-0.1]), hint)

    case = "three pairs: h = 2, -10000 and 10000 (large margins), beta = 0.1"
    got, _, _ = losses(case, torch.tensor([-2.0, -10000.0, 0.0]), torch.tensor([-6.0, 0.0, -10000.0]),
                       torch.tensor([-3.0, 0.0, 0.0]), torch.tensor([-5.0, 0.0, 0.0]), beta=0.1)
    want = [math.log(1 + math.exp(-0.2)), 1000.0, 0.0]  # beta * h = 0.2, -1000 (loss 1000), 1000 (loss ~0)
    expect(close(got, want, 1e-3), case, fmt(got), fmt(want),
           "-log sigmoid(-1000) overflows in log(sigmoid(x)) or log(1 + exp(-x)): use F.logsigmoid"
           if torch.is_tensor(got) and not torch.isfinite(got).all() else "one loss per pair, shape (B,)")

    case = "IPO: (h - 1 / (2 beta))^2 = (2 - 5)^2"
    got, _, _ = losses(case, *args, beta=0.1, loss_type="ipo")
    hint = diagnose(got, [([(2 - 10) ** 2], "the target is 1 / (2 beta) = 5, not 1 / beta"),
                          ([(0.2 - 5) ** 2], "IPO regresses h itself to 1 / (2 beta), not beta * h")],
                    "(h - 1 / (2 beta))^2")
    expect(close(got, [9.0]), case, fmt(got), [9.0], hint)

    case = "conservative DPO, eps = 0.1: -(1-eps) log s(bh) - eps log s(-bh)"
    got, _, _ = losses(case, *args, beta=0.1, loss_type="conservative", label_smoothing=0.1)
    a, b = math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.2))  # -log s(0.2), -log s(-0.2)
    hint = diagnose(got, [([0.1 * a + 0.9 * b], "(1 - eps) weighs the label as given, eps the flipped label: you "
                           "swapped them"),
                          ([a], "use label_smoothing as eps")],
                    "-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)")
    expect(close(got, [0.9 * a + 0.1 * b]), case, fmt(got), [round(0.9 * a + 0.1 * b, 4)], hint)

    inputs = {"policy_chosen": torch.tensor([-2.0, -4.5, -1.0]), "policy_rejected": torch.tensor([-6.0, -3.0, -2.5])}
    ref_chosen, ref_rejected = torch.tensor([-3.0, -4.0, -1.5]), torch.tensor([-5.0, -3.5, -2.0])
    for loss_type in ("dpo", "ipo", "conservative"):
        check_gradient(f"the gradient of loss_type={loss_type!r}", dpo_loss, solution, inputs,
                       lambda f, policy_chosen, policy_rejected: f(policy_chosen, policy_rejected, ref_chosen,
                                                                   ref_rejected, beta=0.1, loss_type=loss_type,
                                                                   label_smoothing=0.1)[0])
