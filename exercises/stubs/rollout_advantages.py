"""Exercise: step 2 of a PPO iteration, from a batch of rollouts to advantages and value targets.

batch: a dict as rollout() returns it; here "logprobs", "ref_logprobs", "values", "response_mask", each
(B, T) with pads at the end of a row, and "scores" (B,). cfg has gamma, lam and whiten_rewards. In order:
  1. rewards, non_score_rewards: the KL penalty on every token plus the score (exercise kl_penalty);
  2. if cfg.whiten_rewards: rescale the rewards to std 1 over the valid tokens, KEEPING their mean;
  3. advantages, returns: GAE with cfg.gamma and cfg.lam (exercise gae);
  4. whiten the advantages: (A - mean) / sqrt(var + 1e-8), with the mean and variance over the valid
     tokens of the whole batch, 0 on pads. The returns stay as GAE made them.
Return (advantages, returns, non_score_rewards), each (B, T). You may import ppo.kl_penalty_rewards,
ppo.gae and common.masked_whiten (or use your own from the other exercises). Either variance estimate,
biased or unbiased, passes. Rollouts carry no gradient: there is no gradient check here.
Check it: python -m exercises rollout_advantages      Solution: ppo.rewards_and_advantages
"""
import torch


def rewards_and_advantages(batch, kl_coef, cfg):
    raise NotImplementedError("exercise: write rewards_and_advantages")
