"""Exercise: the SFT loss, next-token cross-entropy that skips unsupervised targets.

logits: (B, T, V); targets: (B, T) token ids, IGNORE_INDEX (-100) where there is no loss.
reduction="mean": the mean over the supervised targets (0, not NaN, when there are none);
reduction="sum": their sum.
Check it: python -m exercises sft_loss      Solution: model.lm_loss
"""
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits, targets, reduction="mean"):
    raise NotImplementedError("exercise: write lm_loss")
