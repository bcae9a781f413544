"""Exercise: generalised advantage estimation (Schulman et al. 2015) over a padded batch of answers.

rewards, values, response_mask: (B, T); response_mask is 1 on real response tokens, 0 on pads (at
the end of a row). delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1},
with nothing after the last real token (V = 0 there). Pads carry no reward and no value.
Return (advantages, returns = advantages + values), both (B, T) and 0 on pads. The checker uses
gamma < 1 too. Rewards and values come from rollouts, without gradients: no gradient check here.
Check it: python -m exercises gae      Solution: ppo.gae
"""
import torch


def gae(rewards, values, response_mask, gamma=1.0, lam=0.95):
    raise NotImplementedError("exercise: write gae")
