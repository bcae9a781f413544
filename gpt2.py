"""
gpt2.py: pretrained GPT-2 from local files, as a run folder that sft.py and dpo.py read unchanged.

  python gpt2.py --from-gpt2 path/to/gpt2/ --out-dir runs/gpt2
  python sft.py --out-dir runs/gpt2 --data-file alpaca.json

load_gpt2 reads GPT-2 (124M to 1.5B) from a local model.safetensors / pytorch_model.bin; import_gpt2
adds our chat tokens (extend_vocab: mean initialisation, Hewitt 2021) and writes <out-dir>/tokenizer/
and <out-dir>/pretrain/model.pt. Nothing is downloaded. Loaded GPT-2 weights run with dropout 0
(GPT-2 trained with 0.1).
"""

import json
import os
from dataclasses import asdict

import torch

from generate import generate
from model import GPT, GPTConfig, load_state, save_checkpoint
from tokenizer import Tokenizer


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
    # attention variants of Hugging Face's GPT-2 config that our attention does not implement: with any
    # of them the logits would be silently wrong, so the import stops
    unsupported = {k: cfg[k] for k, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                                                ("reorder_and_upcast_attn", False)) if k in cfg and cfg[k] != default}
    if unsupported:
        raise ValueError(f"config.json sets {unsupported}: only GPT-2's own attention (scaled by 1/sqrt(head size), "
                         "no layer-index scaling) is implemented")
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
