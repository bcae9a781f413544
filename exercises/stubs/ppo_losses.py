"""Exercise: PPO's clipped policy loss and clipped value loss, averaged over valid tokens.

policy_loss: ratio = exp(logprobs - old_logprobs); per token max(-A * ratio, -A * clip(ratio, 1 - eps,
  1 + eps)); the mean over every token of the batch where response_mask is 1. Return (loss, stats)
  where stats is a dict (it may be empty for this exercise).
value_loss: per token max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2); 0.5 times the mean
  over valid tokens. Return (loss, clipfrac) (clipfrac may be anything for this exercise).
All inputs (B, T). Both losses must keep their gradients (the checker compares them with the solutions').
Check it: python -m exercises ppo_losses      Solutions: ppo.policy_loss, ppo.value_loss
"""
import torch


def policy_loss(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    raise NotImplementedError("exercise: write policy_loss")


def value_loss(values, old_values, returns, response_mask, cliprange_value=0.2):
    raise NotImplementedError("exercise: write value_loss")
