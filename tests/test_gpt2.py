"""GPT-2 import: a tiny random checkpoint in GPT-2's own key names and Conv1D layout (no download),
checked against a direct re-implementation of GPT-2's forward pass; clear errors for bad files; the
vocabulary extension; the conversion CLI followed by a few steps of SFT and DPO."""

import builtins
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dpo
import sft
from data import render_chat
from gpt2 import extend_vocab, gpt2_config, gpt2_shapes, import_gpt2, load_gpt2, read_weights
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from tokenizer import Tokenizer
from test_data import write_fake_gpt2  # fake vocab.bpe / encoder.json: 256 bytes + 4 merges + <|endoftext|>

ROOT = Path(__file__).resolve().parent.parent
N_LAYER, N_HEAD, N_EMBD, N_POS = 2, 4, 64, 32
FAKE_VOCAB = 261  # write_fake_gpt2's ids 0..260, <|endoftext|> = 260


def random_gpt2_weights(vocab_size=FAKE_VOCAB, n_layer=N_LAYER, n_embd=N_EMBD, n_pos=N_POS, prefix="transformer.",
                        buffers=True, seed=0):
    """A random GPT2LMHeadModel state dict: real key names, Conv1D weights as (in, out), mask buffers.

    Values are large enough (weights ~0.3, LayerNorm gains around 1, non-zero biases) that a wrong
    transpose, a swapped q/k/v or a missing bias changes the logits by far more than the tolerance.
    """
    g = torch.Generator().manual_seed(seed)
    C = n_embd
    sd = {}
    for key, shape in gpt2_shapes(GPTConfig(vocab_size=vocab_size, block_size=n_pos, n_layer=n_layer,
                                            n_head=N_HEAD, n_embd=C)).items():
        if "ln" in key and key.endswith("weight"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) / math.sqrt(shape[0] if len(shape) == 2 and "h." in key else C)
        sd[prefix + key] = value
        if buffers and key.endswith("attn.c_attn.bias"):  # older .bin files carry the causal-mask buffers
            layer = key.split(".")[1]
            sd[f"{prefix}h.{layer}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
            sd[f"{prefix}h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd[prefix + "wte.weight"]  # GPT2LMHeadModel ties the head
    return sd


def reference_gpt2_logits(sd, ids, n_head):
    """GPT-2's forward pass written out from the raw tensors (Radford et al. 2019; HF's modeling_gpt2).

    Conv1D: x @ W + b with W (in, out). gelu_new written out. Explicit causal softmax. No use of our GPT.
    """
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    B, T = ids.shape
    C = sd["wte.weight"].shape[1]
    hs = C // n_head
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("h.")})

    def layer_norm(x, name):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def conv1d(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    x = sd["wte.weight"][ids] + sd["wpe.weight"][torch.arange(T)]  # (B, T, C)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(n_layer):
        q, k, v = conv1d(layer_norm(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + conv1d(y, f"h.{i}.attn.c_proj")
        h = conv1d(layer_norm(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))  # gelu_new
        x = x + conv1d(h, f"h.{i}.mlp.c_proj")
    return layer_norm(x, "ln_f") @ sd["wte.weight"].t()  # (B, T, V), tied head


def save_bin(sd, folder, n_head=N_HEAD, name="pytorch_model.bin", **config_json):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / name)
    if n_head is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": n_head, **config_json}))
    return folder / name


# -----------------------------------------------------------------------------
# Loading and the forward pass


@pytest.mark.parametrize("prefix", ["transformer.", ""], ids=["GPT2LMHeadModel", "GPT2Model"])
def test_loaded_gpt2_computes_what_gpt2_computes(tmp_path, prefix):
    sd = random_gpt2_weights(prefix=prefix)
    model = load_gpt2(str(save_bin(sd, tmp_path)))  # n_head from config.json
    c = model.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (FAKE_VOCAB, N_POS, N_LAYER, N_HEAD, N_EMBD)
    assert not c.rope and c.bias and c.dropout == 0.0
    assert model.blocks[0].attn.c_attn.weight.shape == (3 * N_EMBD, N_EMBD)  # nn.Linear layout (out, in)
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, FAKE_VOCAB, (3, N_POS), generator=torch.Generator().manual_seed(1))
    expected = reference_gpt2_logits(sd, ids, N_HEAD)
    logits, _ = model.eval()(ids)
    assert expected.abs().max() > 1.0  # not trivially small logits
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5), (logits - expected).abs().max()


def test_a_wrong_layout_would_be_caught(tmp_path):
    # the forward-pass check can fail: square Conv1D weights loaded without their transpose differ
    sd = random_gpt2_weights()
    model = load_gpt2(str(save_bin(sd, tmp_path)))
    with torch.no_grad():
        model.blocks[1].attn.c_proj.weight.copy_(model.blocks[1].attn.c_proj.weight.t().clone())
    ids = torch.randint(0, FAKE_VOCAB, (1, 8))
    assert not torch.allclose(model.eval()(ids)[0], reference_gpt2_logits(sd, ids, N_HEAD), atol=1e-3)


def test_folder_and_safetensors(tmp_path):
    sd = random_gpt2_weights(prefix="", buffers=False)
    del sd["lm_head.weight"]  # the hub's safetensors omit the tied head
    save_bin(sd, tmp_path / "bin")
    from_folder = load_gpt2(str(tmp_path / "bin"))  # a folder: finds pytorch_model.bin and config.json
    ids = torch.randint(0, FAKE_VOCAB, (2, 10))
    assert torch.allclose(from_folder(ids)[0], reference_gpt2_logits(sd, ids, N_HEAD), atol=1e-5, rtol=1e-5)
    safetensors = pytest.importorskip("safetensors.torch")
    (tmp_path / "st").mkdir()
    safetensors.save_file(sd, str(tmp_path / "st" / "model.safetensors"))
    from_st = load_gpt2(str(tmp_path / "st" / "model.safetensors"), n_head=N_HEAD)
    assert all(torch.equal(a, b) for a, b in zip(from_st.state_dict().values(), from_folder.state_dict().values()))


def test_safetensors_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError("No module named 'safetensors'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(ImportError, match=r"pip install safetensors.*pytorch_model\.bin"):
        read_weights(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("n_embd, n_layer, n_head", [(768, 12, 12), (1024, 24, 16), (1280, 36, 20), (1600, 48, 25)])
def test_config_of_the_four_gpt2_sizes_from_shapes(n_embd, n_layer, n_head):
    meta = {k: torch.empty(shape, device="meta") for k, shape in gpt2_shapes(
        GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=1, n_embd=n_embd)).items()}
    c = gpt2_config(meta)  # no config.json: the heads come from GPT-2's sizes
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50257, 1024, n_layer, n_head, n_embd)
    assert gpt2_config(meta, config_json={"n_head": 8}).n_head == 8
    assert gpt2_config(meta, n_head=4, config_json={"n_head": 8}).n_head == 4  # the argument wins
    assert gpt2_config(meta, config_json={"n_layer": n_layer + 1}).n_layer == n_layer + 1  # config.json's n_layer wins
    with pytest.raises(ValueError, match="gelu_new"):
        gpt2_config(meta, config_json={"activation_function": "relu"})
    assert gpt2_config(meta, config_json={"scale_attn_weights": True, "reorder_and_upcast_attn": False}).n_embd == n_embd
    for flag, value in (("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                        ("reorder_and_upcast_attn", True)):  # variants our attention does not compute
        with pytest.raises(ValueError, match=flag):
            gpt2_config(meta, config_json={flag: value})


# -----------------------------------------------------------------------------
# Bad files


def test_missing_file_and_folder(tmp_path):
    expected = r"no weights file at .*nothere\.bin.*model\.safetensors or pytorch_model\.bin"
    with pytest.raises(FileNotFoundError, match=expected):
        load_gpt2(str(tmp_path / "nothere.bin"))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin in"):
        load_gpt2(str(tmp_path))


def test_missing_misshaped_and_unexpected_keys_are_named_with_the_expected_layout(tmp_path):
    sd = random_gpt2_weights()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.attn.c_attn.weight"] = sd["transformer.h.0.attn.c_attn.weight"].t()  # nn.Linear layout
    sd["score.weight"] = torch.zeros(2, N_EMBD)  # a classification head
    with pytest.raises(ValueError) as err:
        load_gpt2(str(save_bin(sd, tmp_path)))
    message = str(err.value)
    assert "missing h.1.mlp.c_fc.bias (256,)" in message
    assert "h.0.attn.c_attn.weight: file has (192, 64), expected (64, 192)" in message
    assert "unexpected key score.weight" in message
    assert "h.{i}.mlp.c_proj.weight (256, 64)" in message and "wte.weight (261, 64)" in message  # the layout
    assert "attn.masked_bias" not in message.split("holds")[0]  # buffers are not complaints


def test_a_file_missing_a_whole_layer_fails_when_config_json_gives_n_layer(tmp_path):
    sd = {k: v for k, v in random_gpt2_weights().items() if ".h.1." not in k}
    assert load_gpt2(str(save_bin(sd, tmp_path / "a"))).config.n_layer == 1  # without n_layer: shapes only
    with pytest.raises(ValueError, match=r"missing h\.1\.ln_1\.weight \(64,\)"):
        load_gpt2(str(save_bin(sd, tmp_path / "b", n_layer=2)))


def test_untied_head_is_refused(tmp_path):
    sd = random_gpt2_weights()
    sd["lm_head.weight"] = torch.randn(FAKE_VOCAB, N_EMBD)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(str(save_bin(sd, tmp_path)))


def test_files_that_are_not_gpt2(tmp_path):
    save_bin({"encoder.weight": torch.zeros(3, 4)}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"not a GPT-2 checkpoint: no wte\.weight.*encoder\.weight"):
        load_gpt2(str(tmp_path / "a" / "pytorch_model.bin"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pytorch_model.bin").write_text("not a pickle")
    with pytest.raises(ValueError, match="could not read .* as a PyTorch state dict"):
        load_gpt2(str(tmp_path / "b" / "pytorch_model.bin"))
    ours = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_checkpoint(str(tmp_path / "c" / "model.pt"), ours)
    with pytest.raises(ValueError, match="nanoinstruct checkpoint.*load_checkpoint"):
        load_gpt2(str(tmp_path / "c" / "model.pt"))
    sd = random_gpt2_weights()
    with pytest.raises(ValueError, match=r"n_embd 64 is not one of GPT-2's sizes.*--n-head"):
        load_gpt2(str(save_bin(sd, tmp_path / "d", n_head=None)))  # no config.json, a non-GPT-2 width


# -----------------------------------------------------------------------------
# The chat tokens


def test_extend_vocab_keeps_old_logits_and_starts_new_tokens_at_the_mean(tmp_path):
    model = load_gpt2(str(save_bin(random_gpt2_weights(), tmp_path))).eval()
    bigger = extend_vocab(model, FAKE_VOCAB + 6).eval()
    assert bigger.config.vocab_size == FAKE_VOCAB + 6 and bigger.lm_head.weight is bigger.wte.weight
    assert torch.equal(bigger.wte.weight[:FAKE_VOCAB], model.wte.weight)
    assert torch.allclose(bigger.wte.weight[FAKE_VOCAB:], model.wte.weight.mean(0).expand(6, -1))
    ids = torch.randint(0, FAKE_VOCAB, (2, 12))
    old, new = model(ids)[0], bigger(ids)[0]
    assert torch.equal(new[..., :FAKE_VOCAB], old)  # the old ids' logits do not move at all
    # Hewitt 2021: exp(h . mean) <= mean exp(h . e_i), so each new token has probability <= 1 / V_old
    assert (new.softmax(-1)[..., FAKE_VOCAB:] <= 1.0 / FAKE_VOCAB + 1e-7).all()
    with pytest.raises(ValueError, match="cannot shrink"):
        extend_vocab(model, 10)


def test_tokenizer_and_weights_must_agree(tmp_path):
    save_bin(random_gpt2_weights(vocab_size=300), tmp_path)
    write_fake_gpt2(tmp_path)
    with pytest.raises(ValueError, match="tokenizer .* has 261 ids .* have 300 token embeddings"):
        import_gpt2(str(tmp_path), str(tmp_path / "run"))


# -----------------------------------------------------------------------------
# The recipe end to end: conversion CLI, SFT on an Alpaca file, DPO on a preference file


def test_cli_then_sft_then_dpo(tmp_path):
    weights = save_bin(random_gpt2_weights(), tmp_path / "gpt2")
    write_fake_gpt2(tmp_path / "gpt2_tok", "merges.txt", "vocab.json")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "gpt2.py", "--from-gpt2", str(weights), "--tokenizer-dir",
                             str(tmp_path / "gpt2_tok"), "--out-dir", str(run)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "n_layer=2, n_head=4, n_embd=64" in result.stdout and "greedy check" in result.stdout

    tok = Tokenizer.load(run / "tokenizer")
    assert tok.kind == "gpt2" and tok.vocab_size == FAKE_VOCAB + 6 and tok.bos_id == FAKE_VOCAB
    imported, ckpt = load_checkpoint(str(run / "pretrain" / "model.pt"))
    assert imported.config.vocab_size == tok.vocab_size and ckpt["gpt2_source"] == str(weights)
    ids = torch.randint(0, FAKE_VOCAB, (1, 8))
    gpt2 = {k: v for k, v in torch.load(weights, weights_only=True).items()}
    assert torch.allclose(imported.eval()(ids)[0][..., :FAKE_VOCAB], reference_gpt2_logits(gpt2, ids, N_HEAD),
                          atol=1e-5, rtol=1e-5)

    alpaca = [{"instruction": "Say hello to the world.", "input": "", "output": "hello world"},
              {"instruction": "Repeat", "input": "well hello", "output": "well hello"}] * 4
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    common = dict(out_dir=str(run), device="cpu", quiet=True, log_every=1, ckpt_every=0, warmup_steps=1)
    _, _, history = sft.train(sft.SFTConfig(data_file=str(tmp_path / "alpaca.json"), max_steps=2, batch_size=4,
                                            max_len=64, lr=1e-3, ptx_coef=0.0, eval_n=0, **common))
    assert [h["step"] for h in history] == [1, 2] and all(math.isfinite(h["loss"]) for h in history)
    tuned, _ = load_checkpoint(str(run / "sft" / "model.pt"))
    assert not torch.equal(tuned.wte.weight, imported.wte.weight)
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    assert max(render_chat(tok, chat)[0]) < tuned.config.vocab_size

    prefs = [{"prompt": "Say hello.", "chosen": "hello", "rejected": "well well"},
             {"prompt": "Repeat: world", "chosen": "world", "rejected": "hello hello hello"}] * 5
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    _, _, history = dpo.train(dpo.DPOConfig(data_file=str(tmp_path / "prefs.jsonl"), max_steps=2, batch_size=4,
                                            max_len=64, lr=1e-4, score_batch_size=3, **common))
    steps = [h for h in history if "dpo_loss" in h]
    assert len(steps) == 2 and steps[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert os.path.exists(run / "dpo" / "model.pt")
