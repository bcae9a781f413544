"""Exercise: build a next-token batch whose loss falls on the answer only.

Each example is (ids, loss_mask): token ids of one rendered conversation and a 0/1 list, 1 on the
assistant's tokens (data.render_chat makes them). Write `collate` so that
  - input_ids[b]  = ids[:-1], right-padded with pad_id to the longest row;
  - targets[b][t] = ids[t + 1] when that token is part of the answer, else IGNORE_INDEX (-100);
    pads get IGNORE_INDEX too;
  - attention_mask[b][t] = 1 on real input tokens, 0 on pads.
All three are (B, T) LongTensors in a dict. The checker uses the defaults of max_len and pad_side.
Check it: python -m exercises masking      Solution: data.collate
"""
import torch

IGNORE_INDEX = -100


def collate(examples, pad_id, max_len=None, pad_side="right"):
    raise NotImplementedError("exercise: write collate")
