"""Exercise: the attention mask of a causal model over a left-padded batch, with or without a KV cache.

attention_mask: (B, S), 1 on real tokens and 0 on pads (left padding: a row's pads come first), over
all S positions, the cached ones and the new ones. T: the number of queries, the LAST T of the S
positions (T = S without a cache, T = 1 for a cache step): query t sits at position S - T + t.
Return a bool tensor (B, 1, T, S), True where query t may attend to key s:
  key s is at or before the query's position AND key s is a real token; and, whatever the mask,
  every query may attend to itself (s == its position): a pad query's row would otherwise be all
  False, and a softmax over no keys is 0 / 0.
The 1 is the heads' dimension: F.scaled_dot_product_attention broadcasts it over every head.
Check it: python -m exercises causal_mask      Solution: model.causal_mask
"""
import torch


def causal_mask(attention_mask, T):
    raise NotImplementedError("exercise: write causal_mask")
