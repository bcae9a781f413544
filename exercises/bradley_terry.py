"""Exercise: the Bradley-Terry loss of a reward model (InstructGPT eq. 1, with Llama 2's margin).

chosen, rejected: (B,) scores of the preferred and the other answer; margin: a float or (B,).
Return the loss per pair, (B,): -log sigmoid(chosen - rejected - margin). It must stay finite for
large differences, and keep its gradient with respect to both scores (the checker compares it with
the solution's).
Check it: python -m exercises bradley_terry      Solution: reward.bradley_terry_loss
"""
import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen, rejected, margin=0.0):
    raise NotImplementedError("exercise: write bradley_terry_loss")
