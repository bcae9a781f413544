"""Exercise: the adaptive KL controller (Ziegler et al. 2019, section 2.2), which steers PPO's kl_coef.

With a fixed kl_coef the KL to the reference drifts with the task and the learning rate. This
controller moves kl_coef so that the KL per answer tracks a target. After each batch of n_answers
answers whose mean KL is `kl` (nats per answer):
  error = clip(kl / target - 1, -0.2, 0.2);    value = value * (1 + error * n_answers / horizon)
A KL above the target raises the coefficient (a tighter leash), one below lowers it; over `horizon`
answers it can change by about 20% at most. self.value holds the current coefficient: PPO reads
kl_ctl.value, and calls kl_ctl.update(kl, n_answers) after each iteration.
Check it: python -m exercises adaptive_kl      Solution: ppo.AdaptiveKLController
"""


class AdaptiveKLController:
    def __init__(self, kl_coef, target, horizon):
        raise NotImplementedError("exercise: write AdaptiveKLController.__init__")

    def update(self, kl, n_answers):
        raise NotImplementedError("exercise: write AdaptiveKLController.update")
