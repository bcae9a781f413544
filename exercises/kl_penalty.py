"""Exercise: RLHF's per-token rewards, a KL penalty on every token and the reward model's score at the end.

logprobs, ref_logprobs, response_mask: (B, T), pads at the end of a row; scores: (B,).
non_score_rewards = -kl_coef * (logprobs - ref_logprobs), 0 on pads; rewards = the same plus each
row's score on its LAST REAL token. Return (rewards, non_score_rewards).
Rollouts carry no gradient: there is no gradient check here.
Check it: python -m exercises kl_penalty      Solution: ppo.kl_penalty_rewards
"""
import torch


def kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    raise NotImplementedError("exercise: write kl_penalty_rewards")
