"""Exercise: the logprobs of a sampled response, the numbers PPO's ratio is made of.

policy(ids, attention_mask=attention_mask) returns (logits, None), logits (B, P + N, V): a GPT's forward.
ids, attention_mask: (B, P + N): the prompts left-padded to width P, then N response columns (pads
after a row's stop token). The logits at column t predict the token at column t + 1: response token t
(column P + t) is scored by the logits of column P - 1 + t, so the first response token by the prompt's
last token, and the logits of the last column predict nothing. The rollout sampled from
softmax(logits / temperature); score the tokens under that same distribution.
Return (logprobs, entropy): logprobs (B, N), the log-probability of each response token. entropy is
only logged by PPO and is not checked (return None for it if you like). Pad positions may hold anything.
The checker's policy is a stand-in whose logits are fixed and not normalised; the gradient is checked too.
Check it: python -m exercises response_logprobs      Solution: rollout.response_logprobs
"""
import torch
import torch.nn.functional as F


def response_logprobs(policy, ids, attention_mask, prompt_width, temperature):
    raise NotImplementedError("exercise: write response_logprobs")
