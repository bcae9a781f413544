# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The tokenizer and the GPT
#
# Two pieces every later stage stands on: a byte-level BPE tokenizer with chat tokens
# (`tokenizer.py`, its chat template in `data.py`), and a small GPT with a causal attention mask
# (`model.py`) that samples with a KV cache (`generate.py`).

# %%
import os
import time

import matplotlib.pyplot as plt
import torch

import data
import tasks
from generate import generate
from model import GPT, GPTConfig, causal_mask
from tokenizer import SPECIAL_TOKENS, Tokenizer

SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"  # the tests run a smaller version
_ = torch.manual_seed(0)

# %% [markdown]
# ## BPE, drafted on a toy string
# Byte-pair encoding starts from single bytes and repeatedly merges the most frequent adjacent
# pair. One merge, by hand:

# %%
from collections import Counter

ids = list("the cat sat on the mat".encode())
pairs = Counter(zip(ids, ids[1:]))
(a, b), count = pairs.most_common(1)[0]
print(f"most frequent pair: {bytes([a])!r} + {bytes([b])!r}, {count} times")
merged, i = [], 0
while i < len(ids):
    if i + 1 < len(ids) and (ids[i], ids[i + 1]) == (a, b):
        merged.append(256); i += 2   # the new token gets the next free id
    else:
        merged.append(ids[i]); i += 1
print(len(ids), "bytes ->", len(merged), "tokens")

# %% [markdown]
# `tokenizer.train_bpe` does the same, many times, with incremental pair counts instead of recounting
# everything after each merge. Here it learns on the built-in corpus.

# %%
world = tasks.make_world(0)
text = "\n".join(tasks.pretrain_corpus(world, size=0.02 if SMOKE else 0.2))
t0 = time.time()
tok = Tokenizer.train(text, vocab_size=400 if SMOKE else 1024)
print(f"{len(text):,} characters, vocabulary {tok.vocab_size} ({len(SPECIAL_TOKENS)} special tokens), {time.time() - t0:.1f}s")

# %% [markdown]
# Digits are split one per token (the split pattern), so the model sees `4` `7`, not `47`: a sum is
# then learnable digit by digit. The cell checks it on this sentence.

# %%
sentence = "Ana Reed lives in Paris. 47 plus 38 is 85."
pieces = [tok.decode([i]) for i in tok.encode(sentence)]
print(len(pieces), "tokens:", pieces)
with_digits = [p for p in pieces if any(c.isdigit() for c in p)]
print("every token with a digit holds one digit and nothing else:", all(len(p) == 1 for p in with_digits), with_digits)

# %% [markdown]
# ## The chat template
# A conversation becomes `<|bos|><|user|>...<|end|><|assistant|>...<|end|>`. `render_chat`
# returns the ids and a loss mask that is 1 only on the assistant's answer and its `<|end|>`.

# %%
ids, mask = data.render_chat(tok, [{"role": "user", "content": "What is 2 plus 3?"},
                                   {"role": "assistant", "content": "5"}])
for i, m in zip(ids, mask):
    print(f"{tok.decode([i])!r:18} loss" if m else f"{tok.decode([i])!r:18}")

# %% [markdown]
# ## The causal attention mask, with left padding
# Generation pads prompts on the left. Query t may look at key s when s <= t and s is a real
# token. Row 1 below has two pads: its real tokens never look at them.

# %%
attention = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
allowed = causal_mask(attention, T=6)  # (B, 1, T, S)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for b, ax in enumerate(axes):
    ax.imshow(allowed[b, 0].int(), cmap="Greens")
    ax.set_title(f"row {b}: mask {attention[b].tolist()}", fontsize=9)
    ax.set_xlabel("key position"); ax.set_ylabel("query position")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## The KV cache
# Without a cache, every new token re-runs the model over the whole sequence. With one, each step
# feeds only the newest token and reads the keys and values stored for the others. Same tokens,
# less work. The cell checks both: the tokens must be the same (greedy decoding, so anything else is
# a bug in the cache), and the cached run should be faster. The speed-up grows with the number of new
# tokens; on a short generation (the tests' smoke mode makes 32) or a busy machine the two times can
# be close, or the order can flip.

# %%
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=4, n_head=4, n_embd=128, rope=True))
prompts = [tok.encode(" Once upon a time")] * 8
n_new = 32 if SMOKE else 128
outputs, timings = {}, {}
for use_cache in (False, True):
    t0 = time.time()
    outputs[use_cache] = generate(model, prompts, n_new, temperature=0.0, use_cache=use_cache).tokens
    timings[use_cache] = time.time() - t0
print(f"{n_new} new tokens x 8 rows: {timings[False]:.2f}s without the cache, {timings[True]:.2f}s with it")
print("same tokens:", torch.equal(outputs[False], outputs[True]))
print(f"this run: the cache is faster: {timings[True] < timings[False]} ({timings[False] / timings[True]:.1f}x)")
