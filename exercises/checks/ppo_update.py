"""
exercises/checks/ppo_update.py: the checks of PPO's update and its KL leash (exercises ppo_losses,
adaptive_kl).
"""

import torch

from exercises.checks.harness import (call, check_gradient, close, diagnose, expect, fmt, gradients, num, pair,
                                      scalar)


# ------------------------------------------------------------------------- PPO losses (ppo.policy_loss, ppo.value_loss)
def check_ppo_losses(policy_loss, value_loss):
    import ppo
    check_policy_loss(policy_loss, ppo.policy_loss)
    check_value_loss(value_loss, ppo.value_loss)


def check_policy_loss(policy_loss, solution):
    case = "policy loss, eps=0.2, one row"
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[1.5, 0.5, 1.1, 10.0]]).log().requires_grad_(True)  # ratios 1.5, 0.5, 1.1; a pad
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, _ = pair(case, call(case, policy_loss, logprobs, old, advantages, mask, cliprange=0.2), "(loss, stats)")
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    want = (-1.2 - 0.5 + 1.1) / 3
    log_ratio = logprobs.detach() - old
    no_exp = torch.max(-advantages * log_ratio, -advantages * log_ratio.clamp(0.8, 1.2))[:, :3].mean()
    hint = diagnose(scalar(case, loss), [((-1.5 - 0.5 + 1.1) / 3, "token 0 has ratio 1.5 > 1 + eps and A > 0: the "
                                          "clipped term -A * clip(ratio) must win (you did not clip)"),
                                         ((-1.5 - 0.8 + 1.1) / 3, "the loss is the MAX of -A * ratio and -A * "
                                          "clip(ratio) (the pessimistic bound); you took the min"),
                                         # the pad: ratio 10, A 5: max(-50, -6) = -6
                                         ((-1.2 - 0.5 + 1.1 - 6.0) / 4, "average over valid tokens only: pads hold "
                                          "junk ratios and advantages"),
                                         ((-1.2 - 0.5 + 1.1) / 4, "average over valid tokens only: divide by their "
                                          "number, not by B * T"),
                                         (num(no_exp), "ratio = exp(logprobs - old_logprobs), not their difference")],
                    "loss = mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); "
                    "ratio = exp(logp - old_logp)")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    grad = gradients(case, loss, [logprobs], ["logprobs"], policy_loss.__qualname__)["logprobs"]
    want = [[0.0, -0.5 / 3, 1.1 / 3, 0.0]]  # d(-A ratio)/d logp = -A ratio / n; the clipped token and the pad: 0
    expect(close(grad, want), case + ": gradient, a clipped token and a pad get none", fmt(grad), fmt(want),
           "the clipped term has no gradient: clamp the ratio (a constant at the bound), do not clip the loss")

    case = "policy loss, two rows of 3 and 2 tokens, negative advantages, old logprobs not 0"
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0]])
    ratios = torch.tensor([[1.5, 0.5, 1.1, 10.0], [0.5, 1.5, 3.0, 3.0]])
    logprobs = old + ratios.log()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0], [-1.0, -1.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    loss, _ = pair(case, call(case, policy_loss, logprobs, old, advantages, mask, cliprange=0.2), "(loss, stats)")
    # row 0 as above: -1.2, -0.5, 1.1. row 1: ratio 0.5 with A = -1: max(0.5, 0.8) = 0.8 (clipped);
    # ratio 1.5 with A = -1: max(1.5, 1.2) = 1.5 (unclipped wins). Mean over the 5 valid tokens: 1.7 / 5
    want = (-1.2 - 0.5 + 1.1 + 0.8 + 1.5) / 5
    log_ratio = ratios.log()
    no_exp = torch.max(-advantages * log_ratio, -advantages * log_ratio.clamp(0.8, 1.2))
    hint = diagnose(scalar(case, loss), [((-0.6 / 3 + 2.3 / 2) / 2, "average over every valid token of the batch, "
                                          "not the mean of each row's mean"),
                                         ((-1.5 - 0.5 + 1.1 + 0.5 + 1.5) / 5, "you did not clip: with A < 0 a "
                                          "ratio below 1 - eps is clipped (row 1, token 0)"),
                                         ((-1.5 - 0.8 + 1.1 + 0.5 + 1.2) / 5, "the loss is the MAX of the two "
                                          "terms (the pessimistic bound); you took the min"),
                                         ((1.7 - 6.0 - 2.4 - 2.4) / 8, "average over valid tokens only: pads hold "
                                          "junk ratios and advantages"),
                                         (1.7 / 8, "average over valid tokens only: divide by their number, not "
                                          "by B * T"),
                                         (num((no_exp * mask).sum() / 5), "ratio = exp(logprobs - old_logprobs), "
                                          "not their difference")],
                    "loss = mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    check_gradient(case, policy_loss, solution, {"logprobs": logprobs},
                   lambda f, logprobs: f(logprobs, old, advantages, mask, cliprange=0.2)[0])


def check_value_loss(value_loss, solution):
    around_returns = ("you clipped nothing, OR you clipped around the RETURNS (R + clip(V - R)): that error is "
                      "never the larger one, so nothing changes. Clip around the OLD values: "
                      "V_old + clip(V - V_old, -eps, eps), and keep the larger of the two errors")
    case = "value loss, eps=0.2, old values 0"
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, _ = pair(case, call(case, value_loss, values, torch.zeros(1, 4), returns, mask, cliprange_value=0.2),
                   "(loss, clipfrac)")
    # token 0: clipped value 0.2: max(0.25, 0.64) = 0.64; token 1: 1.21; token 2: max(1.69, 1.44) = 1.69
    want = 0.5 * (0.64 + 1.21 + 1.69) / 3
    hint = diagnose(scalar(case, loss), [(0.5 * (0.25 + 1.21 + 1.69) / 3, around_returns),
                                         (0.5 * (0.25 + 1.21 + 1.44) / 3, "keep the LARGER of the two errors "
                                          "(max), not the smaller"),
                                         (0.5 * (0.64 + 1.21 + 1.44) / 3, "the loss is the max of the clipped AND "
                                          "the unclipped error; you used the clipped one alone"),
                                         ((0.64 + 1.21 + 1.69) / 3, "the loss is 0.5 times the mean"),
                                         # the pad: V = 42, R = 0: max(42^2, 0.2^2)
                                         (0.5 * (0.64 + 1.21 + 1.69 + 42 ** 2) / 4, "average over valid tokens only: "
                                          "pads hold junk values"),
                                         (0.5 * (0.64 + 1.21 + 1.69) / 4, "average over valid tokens only: divide "
                                          "by their number, not by B * T")],
                    "loss = 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) over valid "
                    "tokens")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)

    case = "value loss, two rows, old values not 0"
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0], [1.0, 0.0, 7.0, 7.0]])
    old_values = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0], [2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    loss, _ = pair(case, call(case, value_loss, values, old_values, returns, mask, cliprange_value=0.2),
                   "(loss, clipfrac)")
    # row 0 as above: 0.64, 1.21, 1.69. row 1, token 0: V moved 0.4 from 0.6, clipped to 0.8:
    # max((1 - 2)^2, (0.8 - 2)^2) = 1.44; token 1: moved -0.1, within the clip: (0 + 1)^2 = 1
    want = 0.5 * (0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 5
    hint = diagnose(scalar(case, loss), [(0.5 * (0.25 + 1.21 + 1.69 + 1.0 + 1.0) / 5, around_returns),
                                         (0.5 * (0.25 + 1.21 + 1.44 + 1.0 + 1.0) / 5, "keep the LARGER of the two "
                                          "errors (max), not the smaller"),
                                         (0.5 * (0.64 + 1.21 + 1.44 + 1.44 + 1.0) / 5, "the loss is the max of the "
                                          "clipped AND the unclipped error; you used the clipped one alone"),
                                         ((0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 5, "the loss is 0.5 times the mean"),
                                         # the pads: max(42^2, 0.2^2) and twice max(7^2, 0.2^2)
                                         (0.5 * (0.64 + 1.21 + 1.69 + 42 ** 2 + 1.44 + 1.0 + 7 ** 2 * 2) / 8,
                                          "average over valid tokens only: pads hold junk values"),
                                         (0.5 * (0.64 + 1.21 + 1.69 + 1.44 + 1.0) / 8, "average over valid tokens "
                                          "only: divide by their number, not by B * T")],
                    "loss = 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) over valid "
                    "tokens")
    expect(abs(num(loss) - want) < 1e-4, case, num(loss), want, hint)
    check_gradient(case, value_loss, solution, {"values": values},
                   lambda f, values: f(values, old_values, returns, mask, cliprange_value=0.2)[0])


# ---------------------------------------------------------------- the adaptive KL controller (ppo.AdaptiveKLController)
def check_adaptive_kl(AdaptiveKLController):
    def after(case, kl_coef, target, horizon, updates):
        controller = call(case, AdaptiveKLController, kl_coef, target, horizon)
        expect(getattr(controller, "value", None) == kl_coef, case + ": .value before any update",
               getattr(controller, "value", "missing"), kl_coef,
               "store the coefficient in .value: PPO reads kl_ctl.value")
        for kl, n in updates:
            call(case, controller.update, kl, n, _name=f"{AdaptiveKLController.__name__}.update")
        return controller.value

    def update(case, kl, n, want, mistakes):
        got = after(case, 0.5, 2.0, 100, [(kl, n)])
        expect(isinstance(got, (int, float)) or torch.is_tensor(got), case + ": .value", type(got).__name__,
               "a number")
        mistakes = mistakes + [(0.5, "update must change self.value in place: PPO reads kl_ctl.value after it")]
        expect(abs(num(got) - want) < 1e-6, case, num(got), want,
               diagnose(num(got), mistakes,
                        "error = clip(KL / target - 1, -0.2, 0.2); value *= 1 + error * n / horizon"))

    # kl_coef 0.5, target 2, horizon 100 in every case; e = clip(KL / target - 1, -0.2, 0.2)
    # KL 2.3: e = 0.15, value = 0.5 * (1 + 0.15 * 10 / 100) = 0.5075
    update("KL 2.3 above the target 2, 10 answers", 2.3, 10, 0.5075,
           [(0.5 * (1 - 0.015), "the sign: a KL above the target must RAISE the coefficient (a tighter leash)"),
            (0.5 * 1.02, "the error is relative: KL / target - 1, not KL - target"),
            (0.5 * 1.15, "scale the step by n_answers / horizon: the horizon is how many answers a 20% change takes"),
            (0.5 + 0.015, "the update is multiplicative: value *= 1 + error * n / horizon"),
            (0.5 * (1 + (2 / 2.3 - 1) * 0.1), "the error is KL / target - 1: you inverted the ratio")])
    # KL 10: e = 4 clipped to 0.2: 0.5 * 1.02 = 0.51
    update("KL 10, far above the target", 10.0, 10, 0.51,
           [(0.5 * 1.4, "clip the error to [-0.2, 0.2]: one bad batch must not move the coefficient much"),
            (0.5 * 1.2, "clip the error itself, then scale by n / horizon (you clipped the product)")])
    # KL 0: e = -1 clipped to -0.2: 0.5 * 0.98 = 0.49
    update("KL 0, far below the target", 0.0, 10, 0.49,
           [(0.5 * 0.9, "clip the error to [-0.2, 0.2]: one batch must not move the coefficient much"),
            (0.5 * 1.02, "the sign: a KL below the target must LOWER the coefficient")])
    # KL 1.8: e = -0.1; 50 answers: 0.5 * (1 - 0.1 * 0.5) = 0.475
    update("KL 1.8 below the target, 50 answers", 1.8, 50, 0.475,
           [(0.5 * 0.9, "the error is relative: KL / target - 1, not KL - target")])
    case = "two updates compound: kl_coef 0.5, target 1, horizon 10"
    # KL 1.5: e = 0.5 -> 0.2, 0.5 * (1 + 0.2 * 5 / 10) = 0.55; then KL 1.1: e = 0.1, 0.55 * (1 + 0.05) = 0.5775
    got = num(after(case, 0.5, 1.0, 10, [(1.5, 5), (1.1, 5)]))
    expect(abs(got - 0.5775) < 1e-6, case, got, 0.5775,
           diagnose(got, [(0.5 * 1.05, "each update starts from the CURRENT value: the changes compound")],
                    "value *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon, once per update"))
