"""Exercise: the SFT loss, next-token cross-entropy that skips unsupervised targets.

logits: (B, T, V), not normalised; targets: (B, T) token ids, IGNORE_INDEX (-100) where there is no loss.
reduction="mean": the mean over every supervised target of the batch (rows have different numbers of
them: not a mean of row means), and 0, not NaN, when there are none; reduction="sum": their sum.
It must stay finite for large logits and keep its gradient (the checker compares it with the solution's).
Check it: python -m exercises sft_loss      Solution: model.lm_loss
"""
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits, targets, reduction="mean"):
    raise NotImplementedError("exercise: write lm_loss")
