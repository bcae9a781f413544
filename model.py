"""
model.py: a small decoder-only GPT, its loss, the logprobs helper and checkpoints.

  GPT            the network: token + position embeddings, pre-LayerNorm blocks, tied LM head
  lm_loss        next-token cross-entropy over the unmasked targets
  logprobs       per-token log-probabilities of given tokens, at a temperature (reward, PPO, DPO)
  save/load      checkpoints as a state_dict + a plain-dict config (torch.load(weights_only=True));
                 load_policy reads a trained model for generation or as a frozen reference
Generation lives in generate.py, the GPT-2 import in gpt2.py; this file imports no other project file.

  model = GPT(GPTConfig(vocab_size=tok.vocab_size))
  logits, loss = model(input_ids, targets)               # training

The architecture is GPT-2's (Radford et al. 2019): learned absolute positions, LayerNorm with
bias, tanh-GELU MLP, weight tying between the token embedding and the LM head, residual
projections initialised with std 0.02/sqrt(2 * n_layer). Departures from GPT-2:
  1. attention runs through F.scaled_dot_product_attention (fused kernels where available);
  2. dropout defaults to 0: post-training (PPO's ratio, DPO's reference) needs a deterministic
     forward pass, and our models are small;
  3. positions are computed from the attention mask, so a left-padded row sees the same
     positions 0, 1, 2, ... as when it is run alone;
  4. `rope=True` swaps the learned positions for rotary embeddings (Su et al. 2021); the built-in
     models use it (it learned our corpus faster). GPT-2 checkpoints keep learned positions.
"""

import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value carry no loss (F.cross_entropy's ignore_index); data.py imports it


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

    def forward(self, idx, targets=None, attention_mask=None, cache=None, only=None):
        """Logits (B, T, V); and the mean loss over targets != IGNORE_INDEX when targets are given.

        only: a bool mask (B, T) of the positions whose logits are wanted; logits is then (n, V), the
        True positions in row-major order (hidden[only]), and targets must be the (n,) targets of those.
        DPO and the reward model need logits at the answer's tokens only, about a sixth of a row here:
        a DPO step of 64 rows x 40 tokens took 0.18-0.19 s instead of 0.22-0.27 s (2 CPU cores).
        """
        hidden = self.hidden_states(idx, attention_mask, cache)
        logits = self.lm_head(hidden if only is None else hidden[only])
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

    logits: (B, T, V) or (n, V) (GPT's `only`); targets: (B, T) or (n,). reduction "mean" divides by
    the number of supervised targets (0 loss, not NaN, when there are none); "sum" returns the sum,
    for callers that normalise over several micro-batches of a gradient-accumulation step.
    """
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return loss_sum
    n_targets = (targets != IGNORE_INDEX).sum()
    return loss_sum / n_targets.clamp(min=1)


# -----------------------------------------------------------------------------
# Log-probabilities


def logprobs(model, ids, attention_mask=None, temperature=1.0, start=0):
    """log p(ids[:, t+1] | ids[:, :t+1]) under softmax(logits / temperature), in fp32.

    ids: (B, T) -> (B, T-1-start). Entry t scores token t+1 + start: start = P - 1 gives the N
    tokens after a prompt of width P, and the LM head runs on those columns only (with a 40-token
    prompt and a 5-token answer, a sixth of the vocabulary-wide work). Used by the reward model,
    PPO (with the rollout temperature, as in OpenAI's lm-human-preferences), DPO and the KL.
    Callers mask out prompt and pad positions themselves.
    """
    hidden = model.hidden_states(ids, attention_mask)[:, start:-1]  # (B, T-1-start, C)
    return logprobs_from_logits(model.lm_head(hidden), ids[:, start + 1:], temperature)


def row_sums(values, mask):
    """Per-row sums (B,) of values (n,) that belong to the True entries of mask (B, T), in row-major
    order (what tensor[mask] gives): how a sequence logprob is summed from GPT(only=mask)'s logits."""
    rows = mask.nonzero()[:, 0]  # the row of each value
    return torch.zeros(mask.size(0), device=values.device, dtype=values.dtype).index_add(0, rows, values)


def logprobs_from_logits(logits, targets, temperature=1.0):
    """Gather log softmax(logits / temperature) at targets. logits (..., V), targets (...)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


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


def load_policy(path, device):
    """A trained language model (SFT, PPO, DPO...) for generation or as a reference, dropout forced off
    (the reward model, PPO's ratio and DPO's reference need a deterministic forward pass)."""
    gpt, _ = load_checkpoint(path, device)
    if gpt.config.dropout > 0:
        state = gpt.state_dict()
        gpt = GPT(replace(gpt.config, dropout=0.0)).to(device)
        load_state(gpt, state, path)
    return gpt.eval()
