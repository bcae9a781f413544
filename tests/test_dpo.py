"""Tests of dpo.py: the losses by hand, response-only sequence logprobs, the concatenated forward pass,
the direction of the gradient, the KL estimate, and tiny runs (a trivial preference; the built-in world)."""

import json
import math
import random

import pytest
import torch

import dpo
import preferences
import tasks
from data import encode_content, render_prompt
from dpo import (DPOConfig, collate_pairs, concatenated_logprobs, dpo_loss, pair_logprobs,
                 sequence_logprobs, tokenize_pairs)
from evaluate import kl_to_reference
from formats import write_preferences_jsonl
from generate import generate
from model import GPT, IGNORE_INDEX, GPTConfig, load_checkpoint, logprobs, save_checkpoint
from tokenizer import Tokenizer

FRUITS = ["apple", "pear", "plum", "lemon", "grape", "peach", "mango", "melon", "cherry", "banana", "kiwi", "fig"]
LN2 = math.log(2)


@pytest.fixture(scope="module")
def tok():
    text = " ".join(f"I like {a} and {b}. Name a fruit. No." for a in FRUITS for b in FRUITS) * 3
    return Tokenizer.train(text, vocab_size=300)


def tiny_gpt(tok, seed=0, block_size=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=32,
                         rope=True)).eval()


def fruit_pairs(n, seed=0):
    """Prompts of different lengths; chosen answers of different lengths; two pairs share a prompt and an answer."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = [{"role": "user", "content": "Name a fruit." + " Please." * (i % 3)}]
        pairs.append({"prompt": prompt, "chosen": " and ".join(rng.sample(FRUITS, 1 + i % 2)), "rejected": "No."})
    return pairs


# ----------------------------------------------------------------------------- the losses


def test_loss_is_ln2_with_zero_margin_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -0.5, -12.0]), torch.tensor([-7.0, -0.1, -2.0])
    for loss_type in ("dpo", "conservative"):
        losses, chosen, rejected = dpo_loss(*logps, *logps, beta=0.3, loss_type=loss_type, label_smoothing=0.2)
        assert losses.shape == (3,)
        assert losses.tolist() == pytest.approx([LN2] * 3)
        assert chosen.tolist() == [0.0] * 3 and rejected.tolist() == [0.0] * 3  # zero implicit rewards, zero margin
    losses, _, _ = dpo_loss(*logps, *logps, beta=0.25, loss_type="ipo")
    assert losses.tolist() == pytest.approx([4.0] * 3)  # (0 - 1/(2 * 0.25))^2


def test_dpo_loss_rewards_and_gradient_by_hand():
    # h = (pc - rc) - (pr - rr) = (-1 + 1.5) - (-2 + 1.5) = 1, beta = 0.5: loss = -log sigmoid(0.5)
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(pc, pr, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)  # beta * log-ratio
    losses.sum().backward()
    s = 1 / (1 + math.exp(0.5))  # sigmoid(-beta h)
    assert pc.grad.item() == pytest.approx(-0.5 * s)  # descent raises the chosen logprob ...
    assert pr.grad.item() == pytest.approx(0.5 * s)  # ... and lowers the rejected one, by as much
    far = torch.tensor([0.0, -500.0]), torch.tensor([-500.0, 0.0])
    big = dpo_loss(*far, torch.zeros(2), torch.zeros(2), beta=1.0)[0]
    assert big.tolist() == pytest.approx([0.0, 500.0])  # finite: no overflow


def test_conservative_and_ipo_by_hand():
    args = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])  # h = 1
    conservative = dpo_loss(*args, beta=0.5, loss_type="conservative", label_smoothing=0.2)[0]
    expected = 0.8 * math.log(1 + math.exp(-0.5)) + 0.2 * math.log(1 + math.exp(0.5))
    assert conservative.item() == pytest.approx(expected)
    no_smoothing = dpo_loss(*args, beta=0.5, loss_type="conservative", label_smoothing=0.0)[0]
    assert no_smoothing.item() == pytest.approx(dpo_loss(*args, beta=0.5)[0].item())
    assert dpo_loss(*args, beta=0.25, loss_type="ipo")[0].item() == pytest.approx(1.0)  # (1 - 2)^2
    assert dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item() == pytest.approx(0.0)  # h = 1/(2 beta): done
    assert dpo_loss(*args, beta=1.0, loss_type="ipo")[0].item() == pytest.approx(0.25)  # overshoot is penalised
    with pytest.raises(ValueError):
        dpo_loss(*args, loss_type="kto")


# ----------------------------------------------------------------------------- sequence logprobs


def test_sequence_logprobs_sum_response_tokens_only():
    logits = torch.zeros(1, 5, 4)  # uniform: every token has logprob -ln 4 ...
    logits[0, 2] = torch.tensor([0.0, math.log(3.0), 0.0, 0.0])  # ... except token 1 at t = 2: 3/6
    targets = torch.tensor([[IGNORE_INDEX, 2, 1, 3, IGNORE_INDEX]])  # a prompt target, 3 response targets, a pad
    mask = targets != IGNORE_INDEX
    expected = -2 * math.log(4) + math.log(0.5)
    assert sequence_logprobs(logits, targets, mask).item() == pytest.approx(expected)
    changed = logits.clone()
    changed[0, 0], changed[0, 4] = torch.randn(4) * 10, float("-inf")  # prompt and pad positions
    assert sequence_logprobs(changed, targets, mask).item() == pytest.approx(expected)


def test_render_and_collate_mask_exactly_the_answer_and_its_end(tok):
    pair = {"prompt": [{"role": "user", "content": "Name a fruit. Please."}], "chosen": "kiwi and fig",
            "rejected": "No."}
    (chosen, _), = tokenize_pairs(tok, [pair])
    batch = collate_pairs(tokenize_pairs(tok, [pair]), tok.pad_id, 64)
    answer = encode_content(tok, "kiwi and fig") + [tok.end_id]
    row = batch["targets"][0]
    assert row[row != IGNORE_INDEX].tolist() == answer  # the first answer token is a target, the prompt is not
    assert batch["input_ids"][0, (row != IGNORE_INDEX).nonzero()[0, 0]].item() == tok.assistant_id
    assert len(chosen[0]) == len(render_prompt(tok, pair["prompt"])) + len(answer)


def test_prompt_and_padding_logprobs_do_not_change_the_loss(tok):
    model = tiny_gpt(tok)
    batch = collate_pairs(tokenize_pairs(tok, fruit_pairs(4)), tok.pad_id, 64)
    ref = tuple(x - 1.0 for x in concatenated_logprobs(model, batch))
    with torch.no_grad():
        logits, _ = model(batch["input_ids"])
    mask = batch["targets"] != IGNORE_INDEX
    loss = dpo_loss(*sequence_logprobs(logits, batch["targets"], mask).chunk(2), *ref)[0]
    noise = torch.randn_like(logits) * 5
    changed = torch.where(mask.unsqueeze(-1), logits, noise)  # new logits at prompt and pad positions
    assert torch.equal(dpo_loss(*sequence_logprobs(changed, batch["targets"], mask).chunk(2), *ref)[0], loss)
    # and in the model: other token ids in the pad positions change no response logprob
    pads = batch["attention_mask"] == 0
    assert pads.any()
    other = dict(batch, input_ids=torch.where(pads, torch.randint_like(batch["input_ids"], tok.vocab_size),
                                              batch["input_ids"]))
    with torch.no_grad():
        for a, b in zip(concatenated_logprobs(model, batch), concatenated_logprobs(model, other)):
            assert torch.allclose(a, b, atol=1e-5)


def test_concatenated_forward_equals_separate_forwards(tok):
    model = tiny_gpt(tok)
    examples = tokenize_pairs(tok, fruit_pairs(5))
    with torch.no_grad():
        chosen, rejected = concatenated_logprobs(model, collate_pairs(examples, tok.pad_id, 64))
        for j, (ids, mask) in enumerate(pair for example in examples for pair in example):
            alone = logprobs(model, torch.tensor([ids]))[0]  # one unpadded row, its own forward pass
            expected = alone[torch.tensor(mask[1:]).bool()].sum()
            got = chosen[j // 2] if j % 2 == 0 else rejected[j // 2]
            assert got.item() == pytest.approx(expected.item(), abs=1e-4), j
        # the precomputation scores each distinct row once and maps it back to every pair
        batched = pair_logprobs(model, examples, tok.pad_id, 64, batch_size=3)
    assert torch.allclose(batched[0], chosen, atol=1e-5) and torch.allclose(batched[1], rejected, atol=1e-5)


def test_a_gradient_step_raises_chosen_relative_to_rejected(tok):
    model = tiny_gpt(tok).train()
    batch = collate_pairs(tokenize_pairs(tok, fruit_pairs(6)), tok.pad_id, 64)
    with torch.no_grad():
        ref_chosen, ref_rejected = concatenated_logprobs(model, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(*concatenated_logprobs(model, batch), ref_chosen, ref_rejected)
    assert losses.mean().item() == pytest.approx(LN2, abs=1e-6)  # policy == reference
    assert (chosen_rewards - rejected_rewards).abs().max() < 1e-6
    losses.mean().backward()
    with torch.no_grad():  # one plain gradient-descent step
        for p in model.parameters():
            p -= 0.1 * p.grad
    with torch.no_grad():
        chosen, rejected = concatenated_logprobs(model, batch)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)  # h of every pair
    assert margin.mean() > 0.01, margin
    assert dpo_loss(chosen, rejected, ref_chosen, ref_rejected)[0].mean() < LN2


# ----------------------------------------------------------------------------- the KL estimate


def test_kl_to_reference_sums_response_tokens_of_policy_samples(tok):
    policy, ref = tiny_gpt(tok, seed=0), tiny_gpt(tok, seed=1)
    prompts = [p["prompt"] for p in fruit_pairs(3)]  # prompts of 3 lengths: left padding in the batch
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert kl_to_reference(policy, policy, tok, prompts, max_new_tokens=6, generator=seeded()) == 0.0
    kl = kl_to_reference(policy, ref, tok, prompts, max_new_tokens=6, generator=seeded())
    ids = [render_prompt(tok, p) for p in prompts]  # the same samples again, each row scored alone
    gen = generate(policy, ids, 6, temperature=1.0, stop_id=tok.end_id, pad_id=tok.pad_id, generator=seeded())
    expected = 0.0
    for prompt, response in zip(ids, gen.responses):
        row = torch.tensor([prompt + response])
        with torch.no_grad():
            expected += (logprobs(policy, row) - logprobs(ref, row))[0, len(prompt) - 1:].sum().item()
    assert kl == pytest.approx(expected / len(prompts), abs=1e-4)
    assert kl != 0.0


# ----------------------------------------------------------------------------- tiny runs


def tiny_run_dir(tmp_path, tok, block_size=64):
    tok.save(str(tmp_path / "tokenizer"))
    save_checkpoint(str(tmp_path / "sft" / "model.pt"), tiny_gpt(tok, block_size=block_size))
    return tmp_path


TINY_CFG = dict(batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, device="cpu", quiet=True)


def test_tiny_dpo_run_learns_a_trivial_preference(tok, tmp_path):
    """Any fruit is preferred to "No.": 40 steps of a 1-layer model reach ~100% preference accuracy."""
    out = tiny_run_dir(tmp_path, tok)
    rng = random.Random(1)
    lines = [{"prompt": f"Name a fruit. {rng.randrange(1000)}", "chosen": rng.choice(FRUITS), "rejected": "No."}
             for _ in range(200)]
    (out / "prefs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    cfg = DPOConfig(out_dir=str(out), data_file=str(out / "prefs.jsonl"), max_steps=40, eval_every=20, **TINY_CFG)
    policy, _, history = dpo.train(cfg)
    steps = [h for h in history if "accuracy" in h]
    assert steps[0]["dpo_loss"] == pytest.approx(LN2, abs=1e-4)  # step 0: policy == precomputed reference
    # the optimised loss adds the RPO term: nll_coef * the per-token NLL of the chosen answers
    assert steps[0]["nll"] > 0 and steps[0]["loss"] == pytest.approx(LN2 + cfg.nll_coef * steps[0]["nll"], abs=1e-4)
    assert abs(steps[0]["margin"]) < 1e-4 and abs(steps[0]["reward_chosen"]) < 1e-4
    assert history[-1]["heldout/accuracy"] == 1.0 and history[-1]["heldout/margin"] > 1.0
    assert sum(h["accuracy"] for h in steps[-5:]) / 5 >= 0.95
    assert any("heldout/accuracy" in h for h in history[:-1])  # the periodic evaluation ran
    _, ckpt = load_checkpoint(str(out / "dpo" / "model.pt"))
    assert ckpt["finished"] and ckpt["step"] == 40
    assert json.loads((out / "dpo" / "eval.json").read_text())["heldout/accuracy"] == 1.0


def test_tiny_run_on_the_built_in_world(tok, tmp_path):
    """Preference files as preferences.py writes them; the shared evaluation for DPO and SFT, and the KL."""
    out = tiny_run_dir(tmp_path, tok, block_size=128)
    world = tasks.make_world(0)
    for split, n in (("train", 16), ("heldout", 4)):
        pairs = preferences.modelfree_preferences(tasks.make_examples(world, "train", n, seed=n), random.Random(0))
        write_preferences_jsonl(out / "preferences" / f"{split}.jsonl", pairs)
    cfg = DPOConfig(out_dir=str(out), max_steps=2, eval_n=2, max_new_tokens=4, **TINY_CFG)
    _, _, history = dpo.train(cfg)
    results = json.loads((out / "dpo" / "eval.json").read_text())
    assert history[-1] == {"step": 2, **results}
    for key in ("heldout/accuracy", "dpo/greedy/test/gold", "dpo/sampled/heldout_task/gold", "dpo/greedy/gold",
                "dpo/kl_to_ref", "sft/greedy/test/gold", "sft/sampled/gold"):
        assert key in results, key
    assert "sft/kl_to_ref" not in results
    assert [h["step"] for h in history if "loss" in h] == [1, 2]


@pytest.mark.parametrize("setting, message", [({"loss_type": "kto"}, "loss-type"), ({"beta": 0.0}, "beta"),
                                              ({"loss_type": "conservative", "label_smoothing": 0.5}, "label-smoothing")])
def test_bad_settings_are_refused_before_any_work(setting, message, tmp_path):
    with pytest.raises(ValueError, match=message):  # tmp_path has no tokenizer: nothing was read yet
        dpo.train(DPOConfig(out_dir=str(tmp_path), device="cpu", **setting))


@pytest.mark.parametrize("setting, message", [(dict(beta=0.0), "--beta must be positive"),
                                              (dict(beta=-1.0), "--beta must be positive"),
                                              (dict(loss_type="conservative", label_smoothing=0.5), "--label-smoothing"),
                                              (dict(loss_type="kto"), "--loss-type must be")])
def test_a_setting_the_loss_cannot_use_is_refused_before_any_work(tmp_path, setting, message):
    import dpo
    # the run folder does not exist: any work (loading the model, the reference pass) would fail differently
    with pytest.raises(ValueError, match=message):
        dpo.train(dpo.DPOConfig(out_dir=str(tmp_path / "no_run"), **setting))
