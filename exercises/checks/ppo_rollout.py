"""
exercises/checks/ppo_rollout.py: the checks of what PPO does with a batch of rollouts before any update, in
the order an iteration runs them (exercises response_logprobs, kl_penalty, gae, rollout_advantages).
"""

import math
from types import SimpleNamespace

import torch

from exercises.checks.harness import (call, check_gradient, close, diagnose, expect, fmt, num, pair, tensor)


# ------------------------------------------------------------------------ response logprobs (rollout.response_logprobs)
class FixedLogits:
    """A stand-in policy: a GPT's forward, (logits, loss), with logits fixed in advance for these ids."""

    def __init__(self, logits, ids):
        self.logits, self.ids = logits, ids

    def __call__(self, ids, targets=None, attention_mask=None, cache=None):
        expect(tuple(ids.shape) == tuple(self.ids.shape), "the policy's input", tuple(ids.shape),
               tuple(self.ids.shape), "run the policy on the whole rows, prompt and response: the response's "
               "logprobs need the prompt as context")
        expect(attention_mask is not None, "the policy's attention_mask", None, "the batch's attention_mask",
               "pass attention_mask=... by name: the model's second argument is targets" if targets is not None
               else "pass attention_mask: the prompts are left-padded, and the model takes positions from it")
        return self.logits, None


def rollout_batch():
    """ids, attention_mask (2, 5): prompts left-padded to P = 3 columns, then N = 2 response columns; row 1
    stopped after one token (a pad after it). logits (2, 5, 3) = log(w) + offset, so softmax = w / sum(w).

    Column P - 1 + t predicts response token t: columns 2 and 3 carry the answer's logprobs, column 4
    (after the last token) predicts nothing. Row 0: column 2 w = 1 2 1 and token 1: p = 2/4; column 3
    w = 1 1 2 and token 0: p = 1/4. Row 1: column 2 w = 1 1 2 and token 2: p = 2/4. The rest is junk.
    """
    ids = torch.tensor([[0, 1, 2, 1, 0], [1, 2, 2, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    log = lambda *w: torch.tensor(w).log()
    logits = torch.stack([torch.stack([log(3, 1, 1), log(1, 3, 4), log(1, 2, 1) + 4, log(1, 1, 2) - 3, log(4, 1, 3)]),
                          torch.stack([log(1, 5, 2), log(2, 2, 1), log(1, 1, 2) + 2, log(1, 3, 4) + 1, log(6, 1, 1)])])
    return ids, mask, logits


def check_response_logprobs(response_logprobs):
    ids, mask, logits = rollout_batch()
    P, valid = 3, mask[:, 3:].bool()  # only real response tokens are read; row 1's pad may hold anything

    def answer(case, logits, temperature):
        got = call(case, response_logprobs, FixedLogits(logits, ids), ids, mask, P, temperature)
        expect(isinstance(got, (tuple, list)) and len(got) == 2, case + ": what comes back", type(got).__name__,
               "(logprobs, entropy)", "return (logprobs, entropy) like the solution; entropy may be None")
        return tensor(case, got[0], (2, 2), "(B, N): one logprob per RESPONSE token, the prompt's are not returned")

    case = "temperature 1, logits not normalised"
    got = answer(case, logits, 1.0)
    want = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]])
    lp = logits.log_softmax(-1)
    not_shifted = torch.stack([lp[0, 3:].gather(-1, ids[0, 3:, None]).squeeze(-1),
                               lp[1, 3:].gather(-1, ids[1, 3:, None]).squeeze(-1)])  # column P + t for token t
    raw = logits[:, 2:4].gather(-1, ids[:, 3:, None]).squeeze(-1)
    hint = diagnose(torch.where(valid, got, 0.0), [(torch.where(valid, not_shifted, 0.0),
                                                    "the logits at column t predict token t + 1: response token "
                                                    "t (column P + t) is scored by column P - 1 + t, and the "
                                                    "first by the prompt's last token"),
                                                   (torch.where(valid, raw, 0.0), "logits are not log-probabilities: "
                                                    "log_softmax first")],
                    "logits[:, P - 1:-1] score ids[:, P:]: log_softmax, then gather the response's tokens")
    expect(close(torch.where(valid, got, 0.0), want), case + " (row 1's pad is not compared)", fmt(got), fmt(want),
           hint)

    case = "temperature 0.5: softmax(logits / 0.5)"
    got = answer(case, logits, 0.5)
    # logits / 0.5 = 2 log(w) + 2c: softmax = w^2 / sum(w^2): 4/6, 1/6 for row 0, 4/6 for row 1
    want = torch.tensor([[math.log(4 / 6), math.log(1 / 6)], [math.log(4 / 6), 0.0]])
    hint = diagnose(torch.where(valid, got, 0.0), [([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]],
                                                    "divide the logits by the temperature: the rollout sampled "
                                                    "from softmax(logits / T), and the ratio must use the same"),
                                                   ([[2 * math.log(0.5), 2 * math.log(0.25)], [2 * math.log(0.5), 0.0]],
                                                    "divide the LOGITS by T, before log_softmax, not the logprobs")],
                    "log_softmax(logits / temperature)")
    expect(close(torch.where(valid, got, 0.0), want), case, fmt(got), fmt(want), hint)

    case = "large logits: 1000 for another token"
    big = logits.clone()
    big[0, 2] = torch.tensor([1000.0, 0.0, -1000.0])  # token 1 has log p = 0 - 1000
    got = answer(case, big, 1.0)
    expect(abs(num(got[0, 0]) + 1000.0) < 1e-2, case + ": row 0, token 0", num(got[0, 0]), -1000.0,
           "log(softmax(x)) underflows to log 0 = -inf: use F.log_softmax" if not math.isfinite(num(got[0, 0]))
           else "log_softmax(logits / T) at the sampled token")

    import rollout
    check_gradient("the first case's gradient", response_logprobs, rollout.response_logprobs, {"logits": logits},
                   lambda f, logits: torch.where(valid, f(FixedLogits(logits, ids), ids, mask, P, 1.0)[0], 0.0))


# ----------------------------------------------------------------------------- KL penalty (ppo.kl_penalty_rewards)
def check_kl_penalty(kl_penalty_rewards):
    case = "three rows of 3, 1 and 4 tokens, junk on the pads, kl_coef 0.1"
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 3.0], [-1.0, 3.0, 3.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -2.0]])
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards, non_score = pair(case, call(case, kl_penalty_rewards, logprobs, ref_logprobs, scores, mask, kl_coef=0.1,
                                         _hint="an index error here: the last real token is at mask.sum() - 1, "
                                         "not mask.sum() (one past it, outside a full row)"),
                              "(rewards, non_score_rewards)")
    tensor(case, rewards, (3, 4))
    tensor(case, non_score, (3, 4))
    # log-ratios 0.5, -1, 0 | 1 | 0, 0, 0, 1; times -0.1
    want = [[-0.05, 0.1, 0, 0], [-0.1, 0, 0, 0], [0, 0, 0, -0.1]]
    with_scores = [[-0.05, 0.1, 2.0, 0], [-1.1, 0, 0, 0], [0, 0, 0, 0.4]]
    hint = diagnose(non_score, [([[-0.05, 0.1, 0, -1.2], [-0.1, -1.2, -1.2, -1.2], [0, 0, 0, -0.1]],
                                 "pads must carry no penalty: multiply by response_mask (the logprobs at pads "
                                 "are junk)"),
                                ([[0.05, -0.1, 0, 0], [0.1, 0, 0, 0], [0, 0, 0, 0.1]], "the sign: a token the "
                                 "policy likes MORE than the reference (logp > ref_logp) is penalised"),
                                ([[-0.5, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, -1.0]], "multiply by kl_coef"),
                                (with_scores, "non_score_rewards is the penalty alone: add the scores to a copy "
                                 "(clone), not in place")],
                    "per token -kl_coef * (logprobs - ref_logprobs), 0 on pads")
    expect(close(non_score, want), case + ": non_score_rewards, -kl_coef * (logp - ref_logp), 0 on pads",
           fmt(non_score), want, hint)
    hint = diagnose(rewards, [([[-0.05, 0.1, 0, 2.0], [-0.1, 0, 0, -1.0], [0, 0, 0, 0.4]],
                               "the score goes on the last REAL token of each row; you put it on the last column, "
                               "a pad"),
                              ([[-0.05, 0.1, 0, 2.0], [-0.1, -1.0, 0, 0], [0, 0, 0, 0.4]],
                               "the last real token is at mask.sum() - 1; mask.sum() is the first pad"),
                              ([[1.95, 0.1, 0, 0], [-1.1, 0, 0, 0], [0.5, 0, 0, -0.1]],
                               "the score goes on the LAST real token: the reward model scores the whole answer"),
                              ([[1.95, 2.1, 2.0, 0], [-1.1, 0, 0, 0], [0.5, 0.5, 0.5, 0.4]],
                               "the score is added once, on the last real token, not on every token"),
                              ([[-0.05, 0.1, 0.2, 0], [-0.2, 0, 0, 0], [0, 0, 0, -0.05]],
                               "kl_coef scales the penalty only, not the score")],
                    "rewards = the penalty, plus the score on the last real token")
    expect(close(rewards, with_scores), case + ": rewards, the penalty plus the score at the end of each answer",
           fmt(rewards), with_scores, hint)

    case = "large log-ratios, kl_coef 0.5"
    rewards, _ = pair(case, call(case, kl_penalty_rewards, torch.tensor([[-0.1, -20.0, 4.0]]),
                                 torch.tensor([[-10.1, 0.0, 0.0]]), torch.tensor([1.0]),
                                 torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5), "(rewards, non_score_rewards)")
    want = [[-5.0, 11.0, 0.0]]  # -0.5 * 10 = -5; -0.5 * -20 = 10, plus the score 1; the pad: 0
    expect(close(rewards, want), case, fmt(rewards), want, "-kl_coef * (logp - ref_logp) on each real token, the "
           "score on the last real one, 0 on the pad")


# ----------------------------------------------------------------------------- GAE (ppo.gae)
def check_gae(gae):
    # row 0: three response tokens and a pad; row 1: one token and three pads; row 2: four tokens (junk on pads)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0], [0.5, 9.0, 9.0, 9.0], [0.2, -0.1, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 5.0], [0.1, 3.0, 3.0, 3.0], [0.3, 0.1, 0.2, 0.4]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])

    def run(case, gamma, lam):
        got = pair(case, call(case, gae, rewards, values, mask, gamma=gamma, lam=lam), "(advantages, returns)")
        return tensor(case, got[0], (3, 4)), tensor(case, got[1], (3, 4))

    def pads_leak(advantages, want):  # the padded rows wrong, the full row right: pads leak into the recursion
        return close(advantages[2], want[2]) and not close(advantages[:2], want[:2])

    case = "gamma=1, lam=0.95, a padded batch"
    advantages, returns = run(case, 1.0, 0.95)
    # row 0: delta_2 = 1 + 0 - 0.4 = 0.6 (nothing after the last token); delta_1 = 0 + 0.4 - 0.2 = 0.2;
    # delta_0 = 0 + 0.2 - 0.5 = -0.3. A_2 = 0.6, A_1 = 0.2 + 0.95 * 0.6 = 0.77, A_0 = -0.3 + 0.95 * 0.77 = 0.4315.
    # row 1: A_0 = 0.5 - 0.1 = 0.4. row 2: deltas 0.2 + 0.1 - 0.3 = 0, -0.1 + 0.2 - 0.1 = 0, 0 + 0.4 - 0.2 = 0.2,
    # 1 - 0.4 = 0.6; A_3 = 0.6, A_2 = 0.2 + 0.57 = 0.77, A_1 = 0.7315, A_0 = 0.694925
    want = [[0.4315, 0.77, 0.6, 0.0], [0.4, 0, 0, 0], [0.694925, 0.7315, 0.77, 0.6]]
    no_lambda = [[0.5, 0.8, 0.6, 0.0], [0.4, 0, 0, 0], [0.8, 0.8, 0.8, 0.6]]
    hint = ("the padded rows are wrong and the full row is right: pads carry no reward and no value; the value "
            "after the last real token is 0, not the pad's" if pads_leak(advantages, want) else
            diagnose(advantages, [(no_lambda, "A_t = delta_t + gamma * LAMBDA * A_{t+1}: you left out lambda")],
                     "work backwards from the last real token; the value after it is 0 and pads carry nothing"))
    expect(close(advantages, want), case + ": advantages", fmt(advantages), want, hint)
    want_returns = [[0.9315, 0.97, 1.0, 0.0], [0.5, 0, 0, 0], [0.994925, 0.8315, 0.97, 1.0]]
    hint = diagnose(returns, [(want, "returns = advantages + VALUES: the critic's targets"),
                              ([[0.9315, 0.97, 1.0, 5.0], [0.5, 3, 3, 3], [0.994925, 0.8315, 0.97, 1.0]],
                               "returns are 0 on pads: add the values there only where the mask is 1")],
                    "returns = advantages + values, 0 on pads")
    expect(close(returns, want_returns), case + ": returns = advantages + values (0 on pads)", fmt(returns),
           want_returns, hint)

    case = "gamma=0.9, lam=0.8: both discount"
    advantages, returns = run(case, 0.9, 0.8)
    # gamma * lam = 0.72. row 0: delta_2 = 1 - 0.4 = 0.6, delta_1 = 0 + 0.9 * 0.4 - 0.2 = 0.16,
    # delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32; A_2 = 0.6, A_1 = 0.16 + 0.72 * 0.6 = 0.592, A_0 = -0.32 + 0.72 * 0.592
    # = 0.10624. row 1: 0.4. row 2: deltas -0.01, -0.02, 0.16, 0.6: A_3 = 0.6, A_2 = 0.592,
    # A_1 = -0.02 + 0.72 * 0.592 = 0.40624, A_0 = -0.01 + 0.72 * 0.40624 = 0.2824928
    want = [[0.10624, 0.592, 0.6, 0.0], [0.4, 0, 0, 0], [0.2824928, 0.40624, 0.592, 0.6]]
    # gamma = 1 everywhere: deltas -0.3, 0.2, 0.6 | 0, 0, 0.2, 0.6, and A_t = delta_t + 0.8 A_{t+1}
    no_gamma = [[0.244, 0.68, 0.6, 0.0], [0.4, 0, 0, 0], [0.4352, 0.544, 0.68, 0.6]]
    # gamma in delta only: deltas -0.32, 0.16, 0.6 | -0.01, -0.02, 0.16, 0.6 and A_t = delta_t + 0.8 A_{t+1}
    gamma_only_in_delta = [[0.192, 0.64, 0.6, 0.0], [0.4, 0, 0, 0], [0.3836, 0.492, 0.64, 0.6]]
    # gamma in the recursion only: deltas -0.3, 0.2, 0.6 | 0, 0, 0.2, 0.6 and A_t = delta_t + 0.72 A_{t+1}
    gamma_only_in_recursion = [[0.15504, 0.632, 0.6, 0.0], [0.4, 0, 0, 0], [0.3276288, 0.45504, 0.632, 0.6]]
    hint = ("the padded rows are wrong and the full row is right: pads carry no reward and no value; the value "
            "after the last real token is 0, not the pad's" if pads_leak(advantages, want) else
            diagnose(advantages, [(no_gamma, "you left out gamma: delta_t = r_t + GAMMA * V_{t+1} - V_t and "
                                   "A_t = delta_t + GAMMA * lam * A_{t+1}"),
                                  (gamma_only_in_delta, "A_t = delta_t + GAMMA * lam * A_{t+1}: the recursion "
                                   "discounts too"),
                                  (gamma_only_in_recursion, "delta_t = r_t + GAMMA * V_{t+1} - V_t: the next "
                                   "value is discounted too")],
                     "delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}"))
    expect(close(advantages, want), case + ": advantages", fmt(advantages), want, hint)

    case = "gamma=1, lam=1: the return is the sum of the rewards still to come"
    _, returns = run(case, 1.0, 1.0)
    want = [[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0], [1.1, 0.9, 1.0, 1.0]]
    expect(close(returns, want), case, fmt(returns), want, "with lam = 1 the values cancel: R_t = r_t + ... + r_T")


# ------------------------------------------------------------------- rollout -> advantages (ppo.rewards_and_advantages)
def check_rollout_advantages(rewards_and_advantages):
    def rollout(log_ratio_row0, log_ratio_row1, scores, values, mask):
        """A batch as rollout() returns it: logprobs - ref_logprobs are the given log-ratios."""
        ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
        return {"logprobs": ref + torch.tensor([log_ratio_row0, log_ratio_row1]), "ref_logprobs": ref,
                "scores": torch.tensor(scores), "values": torch.tensor(values), "response_mask": torch.tensor(mask)}

    def run(case, batch, kl_coef, **cfg):
        got = call(case, rewards_and_advantages, batch, kl_coef, SimpleNamespace(**cfg))
        expect(isinstance(got, (tuple, list)) and len(got) == 3, case + ": what comes back", type(got).__name__,
               "(advantages, returns, non_score_rewards)")
        return [tensor(case, t, (2, 3)) for t in got]

    # rows of 3 and 2 tokens; the pad of row 1 holds junk (log-ratio 14, value 9)
    batch = rollout([0.0, 2.0, 0.0], [1.0, 0.0, 14.0], [2.0, 1.0], [[0.5, 0.5, 0.5], [0.0, 0.5, 9.0]],
                    [[1.0, 1, 1], [1, 1, 0]])
    case = "kl_coef 0.5, gamma = lam = 1, no reward whitening"
    advantages, returns, non_score = run(case, batch, 0.5, gamma=1.0, lam=1.0, whiten_rewards=False)
    # penalty -0.5 * log-ratio: [0, -1, 0], [-0.5, 0, pad 0]; the scores on the last real tokens make
    # the rewards [0, -1, 2], [-0.5, 1]
    want = [[0.0, -1.0, 0.0], [-0.5, 0.0, 0.0]]
    expect(close(non_score, want), case + ": non_score_rewards, the KL penalty alone", fmt(non_score), want,
           "the third result is the penalty -kl_coef * (logp - ref_logp), before any whitening and without the "
           "score: kl_penalty_rewards' second result")
    # gamma = lam = 1: returns are rewards still to come: [1, 1, 2], [0.5, 1]; raw advantages = returns - values
    want_returns = [[1.0, 1.0, 2.0], [0.5, 1.0, 0.0]]
    # raw advantages [0.5, 0.5, 1.5], [0.5, 0.5]: mean 3.5 / 5 = 0.7, deviations -0.2 -0.2 0.8 -0.2 -0.2,
    # variance 0.8 / 5 = 0.16 (std 0.4): whitened -0.5, -0.5, 2, -0.5, -0.5. With the unbiased variance
    # 0.8 / 4 = 0.2 (TRL's masked_var): -0.4472, ..., 1.7889; both pass
    want = [[-0.5, -0.5, 2.0], [-0.5, -0.5, 0.0]]
    unbiased = [[-0.447214, -0.447214, 1.788854], [-0.447214, -0.447214, 0.0]]
    # GAE's default lam = 0.95 instead of cfg.lam = 1: row 0 A = 0.40375, 0.425, 1.5; row 1 A = 0.475, 0.5
    hint = diagnose(returns, [([[0.0, 0.0, 2.5], [-0.5, 0.0, 0.0]], "returns come from the RAW advantages (GAE's "
                               "advantages + values): whitening is for the policy loss only; the critic must "
                               "learn the real scale"),
                              ([[0.90375, 0.925, 2.0], [0.475, 1.0, 0.0]], "pass cfg.gamma and cfg.lam to GAE, not "
                               "its defaults (lam = 0.95)")],
                    "returns = GAE's returns, from the rewards (KL penalty + score) and the values")
    expect(close(returns, want_returns), case + ": returns", fmt(returns), want_returns, hint)
    hint = diagnose(advantages, [([[0.5, 0.5, 1.5], [0.5, 0.5, 0.0]], "whiten the advantages: (A - mean) / std "
                                  "over the valid tokens"),
                                 ([[-0.5, -0.5, 2.0], [-0.5, -0.5, -1.75]], "pads get 0 after whitening: multiply "
                                  "by response_mask (masked_whiten does)"),
                                 ([[-0.707107, -0.707107, 1.414214], [0.0, 0.0, 0.0]], "whiten over the whole "
                                  "batch, not row by row"),
                                 ([[0.2, 0.2, 2.7], [0.2, 0.2, 0.0]], "advantages are whitened to mean 0 "
                                  "(shift_mean=True); only the reward whitening keeps the mean")],
                    "advantages: GAE's, then (A - mean) / std with the mean and variance over the VALID tokens of "
                    "the batch (pads 0 before and after)")
    expect(close(advantages, want) or close(advantages, unbiased), case + ": whitened advantages", fmt(advantages),
           want, hint)

    # rows of 3 and 1 tokens. kl_coef 1: penalties [-1.5, 2.5, 0], [-0.5]; scores 2.5 and -1: rewards
    # [-1.5, 2.5, 2.5], [-1.5]: mean 0.5, deviations -2 2 2 -2, variance 4, std 2
    batch = rollout([1.5, -2.5, 0.0], [0.5, 3.0, 3.0], [2.5, -1.0], [[0.5, 1.0, 0.5], [0.5, 9.0, 9.0]],
                    [[1.0, 1, 1], [1, 0, 0]])
    case = "whiten_rewards=True: the rewards scaled to std 1, their mean kept"
    advantages, returns, _ = run(case, batch, 1.0, gamma=1.0, lam=1.0, whiten_rewards=True)
    # whitened with the mean kept: (r - 0.5) / 2 + 0.5 = [-0.5, 1.5, 1.5], [-0.5]; rewards to come:
    # [2.5, 3.0, 1.5], [-0.5]. With the unbiased variance 16 / 3 (std 2.3094): +-2 / 2.3094 = +-0.8660 around 0.5
    want_returns = [[2.5, 3.0, 1.5], [-0.5, 0.0, 0.0]]
    unbiased = [[2.366025, 2.732051, 1.366025], [-0.366025, 0.0, 0.0]]
    hint = diagnose(returns, [([[3.5, 5.0, 2.5], [-1.5, 0.0, 0.0]], "cfg.whiten_rewards is True here: scale the "
                               "rewards (masked_whiten with shift_mean=False) before GAE"),
                              ([[1.0, 2.0, 1.0], [-1.0, 0.0, 0.0]], "reward whitening keeps the mean "
                               "(shift_mean=False): only the scale changes, so the score keeps its sign")],
                    "whiten the rewards over the valid tokens, keeping their mean, then GAE")
    expect(close(returns, want_returns) or close(returns, unbiased), case + ": returns", fmt(returns), want_returns,
           hint)
    whitened(case, advantages, batch["response_mask"])

    case = "cfg.gamma = cfg.lam = 0.5"
    batch = rollout([0.0, 2.0, 0.0], [1.0, 0.0, 14.0], [2.0, 1.0], [[0.5, 0.5, 0.5], [0.0, 0.5, 9.0]],
                    [[1.0, 1, 1], [1, 1, 0]])
    advantages, returns, _ = run(case, batch, 0.5, gamma=0.5, lam=0.5, whiten_rewards=False)
    # rewards [0, -1, 2], [-0.5, 1]; gamma * lam = 0.25. row 0: delta_2 = 2 - 0.5 = 1.5,
    # delta_1 = -1 + 0.5 * 0.5 - 0.5 = -1.25, delta_0 = 0 + 0.25 - 0.5 = -0.25; A = -0.46875, -0.875, 1.5.
    # row 1: delta_1 = 1 - 0.5 = 0.5, delta_0 = -0.5 + 0.25 - 0 = -0.25; A = -0.125, 0.5. returns = A + values
    want_returns = [[0.03125, -0.375, 2.0], [-0.125, 1.0, 0.0]]
    expect(close(returns, want_returns), case + ": returns", fmt(returns), want_returns,
           "pass cfg.gamma and cfg.lam to GAE (not its defaults)")
    whitened(case, advantages, batch["response_mask"])


def whitened(case, advantages, mask):
    """Advantages of mean 0 and variance 1 over the valid tokens (n / (n - 1) less with the unbiased
    estimate of the std), 0 on pads."""
    valid = mask.bool()
    mean, var = num(advantages[valid].mean()), num(advantages[valid].var(unbiased=False))
    n = int(valid.sum())
    expect(abs(mean) < 1e-4 and (abs(var - 1) < 1e-3 or abs(var - (n - 1) / n) < 1e-3) and not advantages[~valid].any(),
           case + ": advantages have mean 0 and variance 1 over the valid tokens, 0 on pads",
           f"mean {mean:.4f}, variance {var:.4f}, pads {fmt(advantages[~valid])}", "mean 0, variance 1, pads 0",
           "(A - mean) / std over the valid tokens of the whole batch, then 0 on pads")
