"""Exercise: the KV cache, which lets each decoding step read one new token instead of the whole sequence.

In every attention layer the model (model.py) calls  k, v = cache.update(layer, k, v)  with the new
tokens' keys and values, each (B, nh, T, hs), and attends with what comes back; after its LAST layer
the model itself advances cache.length by T. Write the cache:
  __init__(config, batch_size, max_len, device, dtype): room for config.n_layer layers of keys and
    values of shape (batch_size, config.n_head, max_len, config.n_embd // config.n_head), and
    self.length = 0, the number of positions filled so far;
  update(layer, k, v): store k and v at positions [length, length + T) of that layer, and return
    (keys, values) of ALL the positions so far, each (B, nh, length + T, hs). It must not change length.
Preallocated tensors (as the solution) or a list per layer grown with torch.cat both pass: the checker
reads only what update returns and length, then decodes with a tiny GPT and compares its logits with a
full forward pass.
Check it: python -m exercises kv_cache_step      Solution: generate.KVCache
"""
import torch


class KVCache:
    def __init__(self, config, batch_size, max_len, device, dtype=torch.float32):
        raise NotImplementedError("exercise: write KVCache.__init__")

    def update(self, layer, k, v):
        raise NotImplementedError("exercise: write KVCache.update")
