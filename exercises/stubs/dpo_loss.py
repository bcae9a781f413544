"""Exercise: the DPO loss (Rafailov et al. 2023, eq. 7) and the sequence logprob it needs.

sequence_logprobs(logits (B, T, V), targets (B, T), loss_mask (B, T)) -> (B,): log pi(answer | prompt),
  the token logprobs of the targets where loss_mask is 1, combined over the answer. The logits are not
  normalised; targets[:, t] is the token scored by logits[:, t] (already shifted), and it is
  IGNORE_INDEX (-100) wherever loss_mask is 0.
dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing),
  all (B,) sequence logprobs. With h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
    "dpo": -log sigmoid(beta h);  "ipo": (h - 1 / (2 beta))^2;
    "conservative": -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), eps = label_smoothing.
  Return (losses (B,), chosen_rewards, rejected_rewards), the rewards beta * log-ratio.
Both must stay finite for large values and keep their gradients (compared with the solutions').
Check it: python -m exercises dpo_loss      Solutions: dpo.dpo_loss, dpo.sequence_logprobs
"""
import torch
import torch.nn.functional as F


def sequence_logprobs(logits, targets, loss_mask):
    raise NotImplementedError("exercise: write sequence_logprobs")


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, loss_type="dpo", label_smoothing=0.0):
    raise NotImplementedError("exercise: write dpo_loss")
