"""
model.py: a small decoder-only GPT, its KV-cache generation, and the logprobs helper.

Everything later stages need from a language model lives here:
  GPT            the network: token + position embeddings, pre-LayerNorm blocks, tied LM head
  generate       batched sampling over prompts of different lengths (left padding, KV cache),
                 greedy / temperature / top-k / top-p, per-row stop at end-of-turn
  logprobs       per-token log-probabilities of given tokens, at a temperature (reward, PPO, DPO)
  lm_loss        next-token cross-entropy over the unmasked targets
  save/load      checkpoints as a state_dict + a plain-dict config (torch.load(weights_only=True))
  load_gpt2      pretrained GPT-2 (124M to 1.5B) from a local model.safetensors / pytorch_model.bin;
                 import_gpt2 also adds our chat tokens and writes a run folder for sft.py / dpo.py:
                   python model.py --from-gpt2 path/to/gpt2/ --out-dir runs/gpt2

Usage:
  model = GPT(GPTConfig(vocab_size=tok.vocab_size))
  logits, loss = model(input_ids, targets)               # training
  out = generate(model, prompts, max_new_tokens=32, temperature=0.0, stop_id=tok.end_id,
                 pad_id=tok.pad_id)                       # out.responses: list of token lists

The architecture is GPT-2's (Radford et al. 2019): learned absolute positions, LayerNorm with
bias, tanh-GELU MLP, weight tying between the token embedding and the LM head, residual
projections initialised with std 0.02/sqrt(2 * n_layer). Where it departs from GPT-2:
  - attention runs through F.scaled_dot_product_attention (fused kernels where available);
  - dropout defaults to 0: post-training (PPO's ratio, DPO's reference) needs a deterministic
    forward pass, and our models are small;
  - positions are computed from the attention mask, so a left-padded row sees the same
    positions 0, 1, 2, ... as when it is run alone;
  - `rope=True` swaps the learned positions for rotary embeddings (Su et al. 2021). The
    built-in models use it: on our corpus a 1M-parameter model reached a validation loss of
    1.18 after 400 steps with RoPE against 1.34 with learned positions. GPT-2 checkpoints keep
    learned positions. Loaded GPT-2 weights run with dropout 0 (GPT-2 trained with 0.1).
"""

import json
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value carry no loss (same value as data.IGNORE_INDEX)


@dataclass
class GPTConfig:
    vocab_size: int = 2054
    """number of token ids (BPE ranks + special tokens)"""
    block_size: int = 256
    """longest sequence the model can see (number of learned positions)"""
    n_layer: int = 4
    """number of transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    n_embd: int = 128
    """width of the residual stream"""
    dropout: float = 0.0
    """dropout probability; keep 0 for post-training"""
    bias: bool = True
    """biases in Linear and LayerNorm layers, as in GPT-2"""
    rope: bool = False
    """rotary position embeddings (Su et al. 2021) instead of GPT-2's learned positions"""


# -----------------------------------------------------------------------------
# The network


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


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, cache=None, layer=0, rope=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:  # rotate queries and keys by their positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), S = cached + T
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None:  # plain causal attention over a full, unpadded sequence
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # attn_mask: (B, 1, T, S), True where query t may look at key s
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0, rope=None):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if not config.rope:
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        # GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layer)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and not self.config.rope else n

    def hidden_states(self, idx, attention_mask=None, cache=None):
        """The final hidden states (B, T, C), after the last LayerNorm.

        idx: (B, T) token ids. attention_mask: (B, S) with 1 on real tokens and 0 on pads, where
        S counts the cached tokens plus these T (None means no padding anywhere). The reward
        model and the PPO critic put their scalar heads on these states.
        """
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            pos = torch.arange(past, past + T, device=idx.device).expand(B, T)
            attn_mask = None if past == 0 else causal_mask(torch.ones(B, past + T, device=idx.device), T)
        else:
            # a row's position counts only its real tokens, so left padding does not shift it
            pos = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # (B, T)
            attn_mask = causal_mask(attention_mask, T)
        if pos.max() >= self.config.block_size:
            raise ValueError(f"sequence of length {pos.max() + 1} exceeds block_size {self.config.block_size}")
        if self.config.rope:
            x, rope = self.wte(idx), rope_angles(pos, self.config.n_embd // self.config.n_head)
        else:
            x, rope = self.wte(idx) + self.wpe(pos), None
        x = self.drop(x)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, i, rope)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx, targets=None, attention_mask=None, cache=None):
        """Logits (B, T, V); and the mean loss over targets != IGNORE_INDEX when targets are given."""
        logits = self.lm_head(self.hidden_states(idx, attention_mask, cache))
        loss = lm_loss(logits, targets) if targets is not None else None
        return logits, loss


def rope_angles(pos, head_dim, base=10000.0):
    """cos and sin of the rotary angles pos * base^(-2i/hs), each (B, 1, T, hs/2). pos: (B, T)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim)
    angles = pos.float().unsqueeze(-1) * inv_freq  # (B, T, hs/2)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+hs/2}) of x (B, nh, T, hs) by its angle (RoPE, Su et al. 2021)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_mask(attention_mask, T):
    """Boolean attention mask (B, 1, T, S) for the last T of S positions.

    Query t (at absolute position S - T + t) may attend to key s when s <= its position and key s
    is a real token. Each query may always attend to itself, so a pad query's row is never all
    False (that would give NaN); pad positions' outputs are ignored anyway.
    """
    B, S = attention_mask.shape
    device = attention_mask.device
    q_pos = torch.arange(S - T, S, device=device).view(T, 1)  # (T, 1)
    k_pos = torch.arange(S, device=device).view(1, S)  # (1, S)
    allowed = (k_pos <= q_pos) & attention_mask.bool().view(B, 1, S)  # (B, T, S)
    allowed = allowed | (k_pos == q_pos)  # the diagonal
    return allowed.unsqueeze(1)  # (B, 1, T, S)


def lm_loss(logits, targets, reduction="mean"):
    """Next-token cross-entropy, ignoring targets equal to IGNORE_INDEX.

    logits: (B, T, V); targets: (B, T). reduction "mean" divides by the number of supervised
    targets (0 loss, not NaN, when there are none); "sum" returns the sum, for callers that
    normalise over several micro-batches of a gradient-accumulation step.
    """
    loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return loss_sum
    n_targets = (targets != IGNORE_INDEX).sum()
    return loss_sum / n_targets.clamp(min=1)


# -----------------------------------------------------------------------------
# Log-probabilities and generation


def logprobs(model, ids, attention_mask=None, temperature=1.0):
    """log p(ids[:, t+1] | ids[:, :t+1]) under softmax(logits / temperature), in fp32.

    ids: (B, T) -> (B, T-1). Entry t scores token t+1. Used by the reward model, PPO (with the
    rollout temperature, as in OpenAI's lm-human-preferences) and DPO. Callers mask out prompt
    and pad positions themselves.
    """
    logits, _ = model(ids, attention_mask=attention_mask)
    return logprobs_from_logits(logits[:, :-1], ids[:, 1:], temperature)


def logprobs_from_logits(logits, targets, temperature=1.0):
    """Gather log softmax(logits / temperature) at targets. logits (B, T, V), targets (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


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
    return token.clamp(max=probs.size(-1) - 1)  # u just below 1 against a cumsum rounded below 1


@torch.no_grad()  # not inference_mode: PPO later backpropagates through logprobs of these tokens
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             stop_id=None, pad_id=0, use_cache=True, return_logprobs=False, generator=None):
    """Sample continuations of a batch of prompts (lists of token ids of any lengths).

    Prompts are left-padded so every row's next token is in the same column; positions come from
    the attention mask, so each row gives the tokens it would give alone. temperature 0 is greedy.
    A row stops after it emits stop_id; it is then padded. With return_logprobs, the logprob of
    each sampled token under softmax(logits / temperature) (temperature 1 when greedy), before
    top-k / top-p filtering, i.e. what logprobs() computes for the same tokens.
    """
    model.eval()
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                         f"{model.config.block_size}")
    tokens = torch.full((B, P + max_new_tokens), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens)
    for i, p in enumerate(prompts):  # left padding
        tokens[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):P] = 1
    sampled_logprobs = torch.zeros(B, max_new_tokens, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = KVCache(model.config, B, P + max_new_tokens, device) if use_cache else None
    for t in range(max_new_tokens):
        end = P + t
        if cache is None:  # recompute the whole sequence every step
            logits, _ = model(tokens[:, :end], attention_mask=mask[:, :end])
        else:  # first step: the whole prompt; then only the newest token
            start = cache.length
            logits, _ = model(tokens[:, start:end], attention_mask=mask[:, :end], cache=cache)
        logits = logits[:, -1, :].float()  # (B, V)
        if temperature == 0:
            next_token = logits.argmax(dim=-1)
            logp = F.log_softmax(logits, dim=-1)
        else:
            logp = F.log_softmax(logits / temperature, dim=-1)
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
            next_token = sample_from(probs, generator)
        next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
        tokens[:, end] = next_token
        mask[:, end] = (~done).long()
        chosen_logp = logp.gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
        sampled_logprobs[:, t] = torch.where(done, torch.zeros_like(chosen_logp), chosen_logp)
        if stop_id is not None:
            done = done | (next_token == stop_id)
        if done.all():
            break
    n_new = t + 1
    tokens, mask, sampled_logprobs = tokens[:, :P + n_new], mask[:, :P + n_new], sampled_logprobs[:, :n_new]
    responses, ended = [], []
    for i in range(B):
        row = tokens[i, P:][mask[i, P:].bool()].tolist()
        responses.append(row)
        ended.append(stop_id is not None and len(row) > 0 and row[-1] == stop_id)
    return Generation(tokens, mask, P, responses, ended, sampled_logprobs if return_logprobs else None)


# -----------------------------------------------------------------------------
# Devices and checkpoints


def get_device(name=None):
    """'cuda' if available, else 'mps', else 'cpu'; `name` (e.g. from --device) overrides."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA; a no-op elsewhere (fp32 on CPU and MPS)."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def save_checkpoint(path, model, extra=None):
    """Write {"model": state_dict, "config": plain dict, **extra} atomically.

    The file is written to path + ".tmp" and renamed, so an interrupted save never destroys the
    previous checkpoint. `extra` must hold only tensors and plain Python values (optimizer state
    dicts, step counters, configs as dicts) so torch.load(weights_only=True) can read it.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ckpt = {"model": model.state_dict(), "config": asdict(model.config), **(extra or {})}
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, device="cpu", config_cls=GPTConfig):
    """Read a checkpoint written by save_checkpoint. Returns (model, ckpt dict)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(ckpt["config"]) - known)
    if unknown:
        raise ValueError(f"{path}: checkpoint config has unknown fields {unknown}; "
                         f"expected fields of {config_cls.__name__}: {sorted(known)}")
    model = GPT(config_cls(**ckpt["config"]))
    load_state(model, ckpt["model"], path)
    return model.to(device), ckpt


def load_state(model, state_dict, where="checkpoint"):
    """model.load_state_dict with an error that lists every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    problems = [f"missing key {k} {tuple(v.shape)}" for k, v in own.items() if k not in state_dict]
    problems += [f"unexpected key {k}" for k in state_dict if k not in own]
    problems += [f"{k}: checkpoint has shape {tuple(state_dict[k].shape)}, model expects {tuple(v.shape)}"
                 for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if problems:
        raise ValueError(f"{where} does not match the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict)


# -----------------------------------------------------------------------------
# GPT-2 weights from a local file
#
# The public GPT-2 checkpoints (Hugging Face `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`) are a
# GPT2LMHeadModel state dict in model.safetensors or pytorch_model.bin. Our GPT is the same network
# (learned positions, LayerNorm with bias and eps 1e-5, tanh GELU, tied head), so loading is a rename:
#   [transformer.]wte.weight (V, C)          -> wte.weight
#   [transformer.]wpe.weight (n_positions, C) -> wpe.weight
#   [transformer.]h.{i}.<name>               -> blocks.{i}.<name>
#   [transformer.]ln_f.{weight,bias}         -> ln_f.{weight,bias}
#   lm_head.weight (optional, tied)          -> lm_head.weight = wte.weight
# except that GPT-2's Conv1D stores its weight as (in, out) and computes x @ W + b, where nn.Linear
# stores (out, in) and computes x @ W.T + b: those four weights are transposed. Files saved from
# GPT2Model lack the "transformer." prefix (the hub's gpt2 files do); older .bin files also hold the
# causal-mask buffers h.{i}.attn.bias and h.{i}.attn.masked_bias, which are ignored.

GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # n_embd -> n_head: gpt2, -medium, -large, -xl
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of older files: not weights


def gpt2_shapes(config):
    """{key: shape} of a GPT-2 checkpoint for `config`, in GPT-2's names and (in, out) Conv1D layout."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.block_size, C)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
                       f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
                       f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
                       f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
                       f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
                       f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def _gpt2_layout(config):
    """The expected keys and shapes, one line per kind of key, for error messages."""
    one_layer = GPTConfig(**{**asdict(config), "n_layer": 1})
    lines = [f"  {k.replace('h.0.', 'h.{i}.')} {shape}" for k, shape in gpt2_shapes(one_layer).items()]
    return (f"a GPT-2 checkpoint with n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size="
            f"{config.vocab_size}, n_positions={config.block_size} holds (keys with or without a "
            "'transformer.' prefix; i = 0.." + f"{config.n_layer - 1}; Conv1D weights as (in, out)):\n"
            + "\n".join(lines) + "\n  lm_head.weight: optional, must equal wte.weight (tied)"
            "\n  h.{i}.attn.bias, h.{i}.attn.masked_bias: optional buffers, ignored")


def read_weights(path):
    """{name: tensor} from a .safetensors file, or a .bin / .pt state dict (torch.load(weights_only=True)).

    `path` may be a folder holding model.safetensors or pytorch_model.bin (a copy of a hub repository).
    """
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in ("model.safetensors", "pytorch_model.bin")
                 if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
        path = found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}: expected a GPT-2 model.safetensors or "
                                "pytorch_model.bin (from the Hugging Face gpt2 repositories), or a folder holding one")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file  # optional: only .safetensors files need it
        except ImportError:
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors "
                              "(or pip install -e '.[gpt2]'), or use the pytorch_model.bin of the same model") from None
        return load_file(path, device="cpu")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a zip/pickle file, or a pickle holding more than tensors
        raise ValueError(f"could not read {path} as a PyTorch state dict ({type(e).__name__}); "
                         "a .safetensors file must be named *.safetensors") from None
    if isinstance(weights, dict) and "model" in weights and "config" in weights:
        raise ValueError(f"{path} is a nanoinstruct checkpoint, not a GPT-2 one: read it with load_checkpoint")
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ValueError(f"{path} is not a state dict (a dict of name -> tensor)")
    return weights


def gpt2_config(weights, n_head=None, config_json=None):
    """A GPTConfig for GPT-2 weights ({name: tensor}, with or without the "transformer." prefix).

    Sizes come from the tensor shapes. The number of heads does not show in any shape: it is
    `n_head` if given, else config.json's n_head (dict `config_json`), else GPT-2's own for that width.
    config.json's n_layer, when given, wins over the layers found, so a file missing a whole layer fails.
    """
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    if "wte.weight" not in weights or "wpe.weight" not in weights:
        some = ", ".join(list(weights)[:6]) or "none"
        raise ValueError("not a GPT-2 checkpoint: no wte.weight / wpe.weight (or transformer.wte.weight / "
                         f"transformer.wpe.weight); its first keys are: {some}")
    vocab_size, n_embd = weights["wte.weight"].shape
    layers = {int(k.split(".")[1]) for k in weights if k.startswith("h.") and k.split(".")[1].isdigit()}
    cfg = config_json or {}
    if cfg.get("activation_function", "gelu_new") != "gelu_new" or cfg.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError("only GPT-2's tanh GELU (gelu_new) and LayerNorm eps 1e-5 are supported; config.json has "
                         f"{cfg.get('activation_function')!r} and {cfg.get('layer_norm_epsilon')!r}")
    n_head = n_head or cfg.get("n_head") or GPT2_HEADS.get(n_embd)
    if not n_head:
        raise ValueError(f"n_embd {n_embd} is not one of GPT-2's sizes {sorted(GPT2_HEADS)}: give n_head "
                         "(--n-head) or put the model's config.json next to the weights")
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
    n_layer = cfg.get("n_layer") or (max(layers) + 1 if layers else 0)
    return GPTConfig(vocab_size=vocab_size, block_size=weights["wpe.weight"].shape[0],
                     n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     dropout=0.0, bias=True, rope=False)


def gpt2_to_state_dict(weights, config, where="GPT-2 weights"):
    """GPT-2 tensors -> a state dict of our GPT(config): renamed, Conv1D weights transposed, head tied.

    Raises ValueError listing every missing, mis-shaped or unexpected key and the expected layout.
    """
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    expected = gpt2_shapes(config)
    problems = [f"missing {k} {shape}" for k, shape in expected.items() if k not in weights]
    problems += [f"{k}: file has {tuple(weights[k].shape)}, expected {shape}" for k, shape in expected.items()
                 if k in weights and tuple(weights[k].shape) != shape]
    problems += [f"unexpected key {k}" for k in weights if k not in expected and k != "lm_head.weight"
                 and not (k.startswith("h.") and k.split(".", 2)[-1] in GPT2_BUFFERS)]
    head, wte = weights.get("lm_head.weight"), weights.get("wte.weight")
    if head is not None and not (wte is not None and head.shape == wte.shape and torch.equal(head, wte)):
        problems.append("lm_head.weight differs from wte.weight: our GPT ties the head to the embedding")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"{where} do not match GPT-2's layout:\n  " + "\n  ".join(shown)
                         + "\n" + _gpt2_layout(config))
    state = {}
    for k in expected:
        tensor = weights[k].float()  # fp32 master weights; training autocasts to bf16 on a GPU
        if k.endswith(GPT2_CONV1D):
            tensor = tensor.t().contiguous()  # Conv1D (in, out) -> nn.Linear (out, in)
        state["blocks." + k[2:] if k.startswith("h.") else k] = tensor
    state["lm_head.weight"] = state["wte.weight"]  # tied
    return state


def load_gpt2(path, n_head=None):
    """GPT-2 from a local model.safetensors / pytorch_model.bin (or a folder holding one). Never downloads.

    A config.json next to the weights (the hub's) gives the number of heads when n_head is None.
    Returns our GPT, in fp32, dropout 0 (GPT-2 trained with 0.1; see the module docstring).
    """
    weights = read_weights(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = os.path.join(folder, "config.json")
    config_json = None
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config_json = json.load(f)
    config = gpt2_config(weights, n_head, config_json)
    model = GPT(config)
    load_state(model, gpt2_to_state_dict(weights, config, where=str(path)), str(path))
    return model


@torch.no_grad()
def extend_vocab(model, vocab_size):
    """A copy of model with vocab_size token embeddings; the new rows are the mean of the old ones.

    The new ids are our chat tokens (<|bos|>, <|user|>, ...), unseen by GPT-2. Mean initialisation
    (Hewitt 2021, "Initializing New Word Embeddings for Pretrained Language Models"): the logits of
    the old ids do not change at all, and by Jensen's inequality exp(h . mean) <= mean of exp(h . e_i),
    so each new token starts with probability at most 1/V_old and the model's distribution barely
    moves; random rows can instead take a large share of the probability.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")
    state = model.state_dict()
    wte = state["wte.weight"]  # (V_old, C)
    new_rows = wte.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
    state["wte.weight"] = state["lm_head.weight"] = torch.cat([wte, new_rows])  # (V, C), still tied
    bigger = GPT(GPTConfig(**{**asdict(model.config), "vocab_size": vocab_size})).to(wte.device)
    load_state(bigger, state, "extend_vocab")
    return bigger


def import_gpt2(weights_path, out_dir, tokenizer_dir=None, n_head=None):
    """GPT-2 weights + GPT-2 tokenizer -> a run folder that sft.py and dpo.py read unchanged.

    Writes <out_dir>/tokenizer/ (GPT-2's BPE + our six chat tokens, ids 50257..50262) and
    <out_dir>/pretrain/model.pt (the weights, embedding grown by those six rows). tokenizer_dir
    holds vocab.json + merges.txt or encoder.json + vocab.bpe (default: the weights' folder).
    Returns (model, tokenizer).
    """
    from data import Tokenizer  # the one place model.py needs the tokenizer

    model = load_gpt2(weights_path, n_head)
    if tokenizer_dir is None:
        tokenizer_dir = weights_path if os.path.isdir(weights_path) else os.path.dirname(os.path.abspath(weights_path))
    tok = Tokenizer.from_gpt2(tokenizer_dir)
    n_gpt2_ids = tok.special_tokens["<|endoftext|>"] + 1  # 50257 for GPT-2
    if n_gpt2_ids != model.config.vocab_size:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has {n_gpt2_ids} ids (BPE + <|endoftext|>) but the "
                         f"weights in {weights_path} have {model.config.vocab_size} token embeddings")
    model = extend_vocab(model, tok.vocab_size)
    tok.save(os.path.join(out_dir, "tokenizer"))
    save_checkpoint(os.path.join(out_dir, "pretrain", "model.pt"), model,
                    {"gpt2_source": os.path.abspath(weights_path)})
    return model, tok


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Import GPT-2 weights and tokenizer into a run folder "
                                     "(<out-dir>/tokenizer/, <out-dir>/pretrain/model.pt) for sft.py and dpo.py.")
    parser.add_argument("--from-gpt2", required=True,
                        help="model.safetensors, pytorch_model.bin, or a folder holding one")
    parser.add_argument("--out-dir", required=True, help="run folder to write, e.g. runs/gpt2")
    parser.add_argument("--tokenizer-dir", default=None,
                        help="folder with vocab.json + merges.txt or encoder.json + vocab.bpe "
                        "(default: the weights' folder)")
    parser.add_argument("--n-head", type=int, default=None,
                        help="attention heads (default: config.json next to the weights, else GPT-2's for the width)")
    args = parser.parse_args()
    gpt, tokenizer = import_gpt2(args.from_gpt2, args.out_dir, args.tokenizer_dir, args.n_head)
    c = gpt.config
    print(f"GPT-2 with n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, block_size={c.block_size}: "
          f"{gpt.num_params(non_embedding=False) / 1e6:.1f}M parameters; "
          f"vocabulary {c.vocab_size} (GPT-2's + our chat tokens)")
    print(f"wrote {os.path.join(args.out_dir, 'tokenizer')}/ and {os.path.join(args.out_dir, 'pretrain', 'model.pt')}")
    prompt = tokenizer.encode("The meaning of life is")  # a real GPT-2 continues in fluent English
    out = generate(gpt, [prompt], max_new_tokens=min(16, c.block_size - len(prompt)), temperature=0.0)
    print("greedy check:", repr(tokenizer.decode(prompt + out.responses[0])))
