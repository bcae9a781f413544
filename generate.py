"""
generate.py: sampling from a GPT: the KV cache, batched generation, streaming one token at a time.

  generate   batched sampling over prompts of different lengths (left padding, KV cache),
             greedy / temperature / top-k / top-p, per-row stop at end-of-turn
  stream     one prompt, one token at a time (chat.py prints the answer as it is written)

  out = generate(model, prompts, max_new_tokens=32, temperature=0.0, stop_id=tok.end_id,
                 pad_id=tok.pad_id)                       # out.responses: list of token lists

Departure: sample_from draws one uniform number per row (inverse CDF) instead of torch.multinomial,
which draws one per vocabulary entry: the same distribution, a quarter less generation time on a CPU.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import autocast


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated.

    k, v: (n_layer, B, nh, max_len, hs). `length` is how many positions are filled; a forward
    pass writes its new keys at [length, length + T) and the model advances `length` after the
    last layer.
    """

    def __init__(self, config, batch_size, max_len, device, dtype=torch.float32):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after the cached ones; return all keys and values so far."""
        T = k.size(2)
        end = self.length + T
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep(self, rows):
        """Keep only the batch rows `rows` (an index or a bool mask): a finished row leaves the batch."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


def filter_logits(logits, top_k=None, top_p=None):
    """Set logits outside the top-k tokens, or outside the top-p nucleus, to -inf. logits (B, V)."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # nucleus sampling (Holtzman et al. 2019): the smallest set whose probability >= top_p
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@dataclass
class Generation:
    """Result of generate(). B rows, P = padded prompt width, N = new-token columns."""
    tokens: torch.Tensor  # (B, P + N) left-padded prompts followed by responses, pad after a stop
    attention_mask: torch.Tensor  # (B, P + N) 1 on real prompt and response tokens
    prompt_width: int  # P: the response of every row starts at column P
    responses: list  # B lists of response token ids, up to and including the stop token
    ended: list  # B bools: did the row produce the stop token?
    logprobs: torch.Tensor = None  # (B, N) logprob of each sampled token (0 after a stop)


def sample_from(probs, generator=None):
    """One token per row of probs (B, V), drawn by inverse CDF: the first token whose cumulative
    probability exceeds a uniform draw u. One random number per row; torch.multinomial draws one
    per vocabulary entry, which was a quarter of the generation time on a CPU. Returns (B,)."""
    u = torch.rand(probs.size(0), 1, device=probs.device, generator=generator)  # (B, 1)
    token = torch.searchsorted(probs.cumsum(dim=-1), u, right=True).squeeze(-1)  # zero-probability tokens add no width
    # u just below 1 against a cumsum rounded below 1: the last token that has any probability
    last_possible = probs.size(-1) - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
    return torch.where(token >= probs.size(-1), last_possible, token)


@torch.no_grad()  # not inference_mode: PPO later backpropagates through logprobs of these tokens
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             stop_id=None, pad_id=0, use_cache=True, return_logprobs=False, generator=None, num_samples=1):
    """Sample continuations of a batch of prompts (lists of token ids of any lengths).

    Prompts are left-padded so every row's next token is in the same column; positions come from
    the attention mask, so each row gives the tokens it would give alone. temperature 0 is greedy.
    A row stops after it emits stop_id; it is then padded. With return_logprobs, the logprob of
    each sampled token under softmax(logits / temperature) (temperature 1 when greedy), before
    top-k / top-p filtering, i.e. what logprobs() computes for the same tokens.
    num_samples: answers per prompt; rows i * num_samples ... (i + 1) * num_samples - 1 answer prompt i.
    """
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (render_prompt adds <|bos|> and the turn tokens)")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    model.eval()
    device = next(model.parameters()).device
    B, P = len(prompts) * num_samples, max(len(p) for p in prompts)
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                         f"{model.config.block_size}")
    tokens = torch.full((B, P + max_new_tokens), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens)
    for i, p in enumerate(prompts):  # left padding; each prompt in num_samples rows
        tokens[i * num_samples:(i + 1) * num_samples, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        mask[i * num_samples:(i + 1) * num_samples, P - len(p):P] = 1
    sampled_logprobs = torch.zeros(B, max_new_tokens, device=device)
    # The rows still writing. A row that emits stop_id leaves the batch (and the KV cache): later steps
    # compute only the others. Answers here are short and uneven (median 3 tokens, a few run to 48), so
    # a batch would otherwise spend most of its steps on rows that are done. Measured on the default
    # run's SFT model, 256 prompts a batch, 2 CPU cores: 1.7x faster greedy, 2.0x at T=1 (the same
    # greedy tokens). A finished row's later columns stay pad_id with mask 0.
    rows = torch.arange(B, device=device)
    cache = KVCache(model.config, len(prompts), P + max_new_tokens, device) if use_cache else None

    def next_logits(ids, attention_mask, cache=None):  # (rows, V): the LM head at the last position only
        return model.lm_head(model.hidden_states(ids, attention_mask, cache)[:, -1]).float()

    for t in range(max_new_tokens):
        end = P + t
        if cache is None:  # recompute the whole sequence every step
            logits = next_logits(tokens[rows, :end], mask[rows, :end])
        elif t == 0:  # the whole prompt, once per prompt; its keys, values and logits are then copied to its
            # num_samples rows. Prompts here average 26 tokens and answers about 5: of 0.68 s for 256 sampled
            # answers, 0.60 s was the prompt pass. Best-of-16 on the report's prompts: 76 s -> 26 s.
            first = torch.arange(0, B, num_samples, device=device)
            logits = next_logits(tokens[first, :P], mask[first, :P], cache).repeat_interleave(num_samples, dim=0)
            cache.keep(torch.arange(len(prompts), device=device).repeat_interleave(num_samples))
        else:  # only the newest token
            start = cache.length
            logits = next_logits(tokens[rows, start:end], mask[rows, :end], cache)
        if not bool(torch.isfinite(logits).all()):  # else every row would silently sample the same id
            raise FloatingPointError(f"generate: the model's logits at new token {t} contain NaN or inf "
                                     "(a diverged model, or a broken checkpoint)")
        if temperature == 0:
            next_token = logits.argmax(dim=-1)
            logp = F.log_softmax(logits, dim=-1)
        else:
            logp = F.log_softmax(logits / temperature, dim=-1)
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
            if not bool(torch.isfinite(probs).all()):  # a temperature so small that logits / T overflow
                raise FloatingPointError(f"generate: temperature {temperature} turns the logits into inf; "
                                         "use a larger one, or 0 for greedy")
            next_token = sample_from(probs, generator)
        tokens[rows, end] = next_token
        mask[rows, end] = 1
        sampled_logprobs[rows, t] = logp.gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
        if stop_id is None:
            continue
        writing = next_token != stop_id
        if not writing.any():
            break
        if not writing.all():  # the finished rows leave the batch
            rows = rows[writing]
            if cache is not None:
                cache.keep(writing)
    n_new = t + 1
    tokens, mask, sampled_logprobs = tokens[:, :P + n_new], mask[:, :P + n_new], sampled_logprobs[:, :n_new]
    responses, ended = [], []
    for i in range(B):
        row = tokens[i, P:][mask[i, P:].bool()].tolist()
        responses.append(row)
        ended.append(stop_id is not None and len(row) > 0 and row[-1] == stop_id)
    return Generation(tokens, mask, P, responses, ended, sampled_logprobs if return_logprobs else None)


@torch.no_grad()
def stream(model, prompt_ids, max_new_tokens, stop_id, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """Yield the answer's token ids one at a time, the last one stop_id if the model ends its turn.

    generate() for a single prompt: one row needs no padding and no attention mask, so the
    loop is short. The first pass reads the prompt and fills the KV cache, each later pass reads
    only the newest token. Same tokens as generate(model, [prompt_ids], ...) with the same generator.
    """
    model.eval()
    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, len(prompt_ids) + max_new_tokens, device)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T): the prompt, then one token
    for _ in range(max_new_tokens):
        with autocast(device):
            logits, _ = model(x, cache=cache)
        logits = logits[:, -1, :].float()  # (1, V)
        if temperature == 0:
            token = logits.argmax(dim=-1)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
            token = sample_from(probs, generator)  # (1,)
        yield token.item()
        if token.item() == stop_id:
            return
        x = token.view(1, 1)  # (1, 1): the next pass reads only this token
