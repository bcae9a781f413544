"""Tests of reward.py: the Bradley-Terry loss, where the score is read, normalisation, a tiny RM that
learns a separable preference, and a tiny end-to-end run (preferences.py, then reward.py)."""

import json
import math
import os
import random
import shutil

import pytest
import torch

import preferences
import pretrain
import reward
import sft
import tasks
from data import encode_content, pad_rows, render_response
from evaluate import score_responses as score
from formats import load_preferences_jsonl
from model import GPT, GPTConfig, logprobs
from reward import (RewardConfig, RewardModel, bradley_terry_loss, evaluate_reward, last_token_index,
                    load_reward_model, normalise)
from tokenizer import Tokenizer

WORLD = tasks.make_world(0)
WORDS = ["apple", "pear", "plum", "lemon", "grape", "peach", "mango", "melon", "cherry", "banana", "kiwi", "fig"]


@pytest.fixture(scope="module")
def tok():
    text = " ".join(f"I like {a} and {b}. Name two fruits." for a in WORDS for b in WORDS) * 3
    return Tokenizer.train(text, vocab_size=300)


def tiny_rm(tok, rope=False, seed=0, likelihood=False):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32, rope=rope))
    return RewardModel(gpt, tok.assistant_id if likelihood else None).eval()


# ----------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_and_gradient_by_hand():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert loss[1].item() == pytest.approx(math.log(2))  # no preference: ln 2
    loss.sum().backward()
    s = 1 / (1 + math.exp(2))  # sigmoid(-2)
    assert chosen.grad.tolist() == pytest.approx([-s, -0.5])
    assert rejected.grad.tolist() == pytest.approx([s, 0.5])


def test_bradley_terry_margin_and_stability():
    c, r = torch.tensor([2.0]), torch.tensor([0.0])
    assert bradley_terry_loss(c, r, margin=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert bradley_terry_loss(c, r, margin=torch.tensor([2.0])).item() == pytest.approx(math.log(2))
    big = bradley_terry_loss(torch.tensor([0.0, 200.0]), torch.tensor([200.0, 0.0]))
    assert big[0].item() == pytest.approx(200.0) and big[1].item() == pytest.approx(0.0)  # finite, no overflow


# ----------------------------------------------------------------------------- where the score is read


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]
    with pytest.raises(ValueError):
        last_token_index(torch.tensor([[0, 0]]))


@pytest.mark.parametrize("likelihood", [False, True], ids=["head", "head+likelihood"])
@pytest.mark.parametrize("rope", [False, True], ids=["learned-pos", "rope"])
def test_score_is_read_at_the_last_real_token_whatever_the_padding(tok, rope, likelihood):
    rm = tiny_rm(tok, rope, likelihood=likelihood)
    prompt = [{"role": "user", "content": "Name two fruits."}]
    rows = [render_response(tok, prompt, r, 64) for r in ["fig", "I like apple and banana", "kiwi and pear"]]
    with torch.no_grad():
        alone = torch.cat([rm(torch.tensor([row])) for row in rows])
        for side in ("right", "left"):
            ids, mask = pad_rows(rows, tok.pad_id, side)
            assert torch.allclose(rm(ids, mask), alone, atol=1e-5), side
            other_pads = torch.where(mask.bool(), ids, torch.randint_like(ids, tok.vocab_size))
            assert torch.allclose(rm(other_pads, mask), alone, atol=1e-5), side  # pads never matter
        # and the read token is the final <|end|>: changing the last real token changes the score
        ids, mask = pad_rows(rows, tok.pad_id, "right")
        last = last_token_index(mask)
        assert (ids[torch.arange(3), last] == tok.end_id).all()
        ids[0, last[0]] = tok.user_id
        assert not torch.isclose(rm(ids, mask)[0], alone[0])


@pytest.mark.parametrize("side", ["right", "left"])
def test_likelihood_term_is_the_answers_logprob_under_the_trunk(tok, side):
    rm = tiny_rm(tok, likelihood=True)
    prompt = [{"role": "user", "content": "Name two fruits."}]
    answers = ["fig", "I like apple and banana", "kiwi and pear"]
    rows = [render_response(tok, prompt, a, 64) for a in answers]
    ids, mask = pad_rows(rows, tok.pad_id, side)
    with torch.no_grad():
        hidden = rm.gpt.hidden_states(ids, mask)
        got = rm.answer_logprob(ids, mask, hidden)
        for b, (row, answer) in enumerate(zip(rows, answers)):  # by hand: each row alone, its answer tokens
            token_lp = logprobs(rm.gpt, torch.tensor([row]))[0]  # entry t scores token t+1
            n_answer = len(encode_content(tok, answer)) + 1  # the answer and its <|end|>
            assert got[b].item() == pytest.approx(token_lp[-n_answer:].sum().item(), abs=1e-4)
        head_only = rm.head(hidden[torch.arange(3), last_token_index(mask)]).squeeze(-1)
        rm.likelihood_weight.fill_(0.5)
        assert torch.allclose(rm.raw_scores(ids, mask), head_only + 0.5 * got, atol=1e-5)
    # without the <|assistant|> id there is no likelihood term, and its weight cannot train
    plain = tiny_rm(tok)
    assert plain.likelihood_weight.item() == 0.0 and not plain.likelihood_weight.requires_grad


def test_normalise_gives_mean_0_std_1(tok):
    rm = tiny_rm(tok)
    prompts = [[{"role": "user", "content": "Name two fruits."}]] * len(WORDS)
    responses = [f"I like {w}" for w in WORDS]
    mean, std = normalise(rm, tok, prompts, responses)
    scores = score(rm, tok, prompts, responses)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(score(rm, tok, prompts, responses, raw=True), scores * std + mean, atol=1e-5)
    assert rm.head.bias.item() == 0.0 and rm.head.weight.std().item() == pytest.approx(1 / math.sqrt(33), rel=0.5)


def test_group_by_prompt_scores_each_response_once(tok):
    p, q = [{"role": "user", "content": "Name two fruits."}], [{"role": "user", "content": "Name a fruit."}]
    pairs = [{"prompt": p, "chosen": "fig", "rejected": "kiwi"}, {"prompt": q, "chosen": "plum", "rejected": "pear"},
             {"prompt": p, "chosen": "fig", "rejected": "lime"}, {"prompt": p, "chosen": "lime", "rejected": "kiwi"}]
    groups = reward.group_by_prompt(tok, pairs, 64)
    assert [len(rows) for rows, _ in groups] == [3, 2]
    rows, comparisons = groups[0]
    assert rows == [render_response(tok, p, text, 64) for text in ("fig", "kiwi", "lime")]
    assert comparisons == [(0, 1), (0, 2), (2, 1)]


# ----------------------------------------------------------------------------- learning


def test_tiny_rm_learns_a_separable_preference(tok, tmp_path):
    """Answers that contain "banana" are preferred: a 1-layer RM learns it in 60 steps."""
    rng = random.Random(0)
    others = [w for w in WORDS if w != "banana"]

    def pair():
        a, b, c = rng.sample(others, 3)
        good = rng.choice([f"I like banana and {a}", f"I like {a} and banana"])
        prompt = [{"role": "user", "content": f"Name two fruits. {rng.randrange(1000)}"}]
        return {"prompt": prompt, "chosen": good, "rejected": f"I like {b} and {c}"}

    train_pairs, heldout = [pair() for _ in range(400)], [pair() for _ in range(100)]
    rm = tiny_rm(tok)
    before = evaluate_reward(rm, tok, heldout)["accuracy"]
    cfg = RewardConfig(batch_size=16, max_steps=60, lr=3e-3, warmup_steps=5, log_every=20, device="cpu", quiet=True)
    history = reward.fit_reward_model(rm, tok, train_pairs, cfg, str(tmp_path / "rm.pt"))
    after = evaluate_reward(rm, tok, heldout)
    assert after["accuracy"] >= 0.97, (before, after)
    assert after["margin"] > 1.0
    assert history[-1]["loss"] < history[0]["loss"]


# ----------------------------------------------------------------------------- end to end

TINY = dict(corpus_size=0.05, vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=96, batch_size=8,
            warmup_steps=2, log_every=10, eval_every=0, ckpt_every=0, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def tiny_sft_run(tmp_path_factory):
    """A tiny pretrain + SFT run (seconds): its answers are poor but many end, enough for pairs."""
    out = tmp_path_factory.mktemp("rmrun")
    pretrain.train(pretrain.PretrainConfig(out_dir=str(out), max_steps=30, lr=3e-3, **TINY))
    sft.train(sft.SFTConfig(out_dir=str(out), n_examples=300, batch_size=16, max_steps=100, lr=3e-3, warmup_steps=2,
                            log_every=10, eval_every=0, eval_n=0, ckpt_every=0, device="cpu", quiet=True))
    return out


@pytest.mark.parametrize("model_free", [True, False], ids=["model-free", "policy"])
def test_tiny_run_end_to_end(model_free, tiny_sft_run):
    out = tiny_sft_run
    preferences.make_preferences(preferences.PreferenceConfig(
        out_dir=str(out), model_free=model_free, n_prompts=24, n_heldout_prompts=12, samples_per_prompt=3,
        max_new_tokens=24, device="cpu", quiet=True,  # room for the demonstrators' sign-off, which it copies
        labeler_ties=False))  # the tiny model's answers are nearly all wrong: all ties otherwise
    cfg = RewardConfig(out_dir=str(out), max_new_tokens=12, batch_size=8, max_steps=4, warmup_steps=1,
                       n_norm=16, bon_n=6, bon_ns="1,2,4", log_every=2, eval_every=2, device="cpu", quiet=True)
    rm, tok, history = reward.train(cfg)
    results = history[-1]
    for key in ("heldout/accuracy", "heldout/gold_accuracy", "heldout/margin", "labels/gold_agreement",
                "bon/1/gold", "bon/4/gold", "bon/4/rm", "gold_correlation", "heldout/baseline/sft_logprob/gold_accuracy",
                "heldout/baseline/shorter/gold_accuracy", "heldout/baseline/rm_init/gold_accuracy"):
        assert key in results, key
    assert os.path.exists(out / "preferences" / "train.jsonl") and os.path.exists(out / "preferences" / "heldout.jsonl")
    assert load_preferences_jsonl(out / "preferences" / "heldout.jsonl")
    ckpt = torch.load(out / "reward" / "model.pt", weights_only=True)
    assert ckpt["finished"] and ckpt["normalised"] and ckpt["step"] == 4
    loaded = load_reward_model(str(out / "reward" / "model.pt"))
    prompts = [ex.messages for ex in tasks.make_examples(WORLD, "test", 5)]
    responses = ["cat, dog", "42", "Sure! It is red.", "x", "PEAR"]
    assert torch.equal(score(rm, tok, prompts, responses), score(loaded, tok, prompts, responses))
    assert loaded.score_std.item() != 1.0  # the normalisation was saved


def test_tiny_run_on_a_users_hh_rlhf_file(tiny_sft_run, tmp_path):
    """--data-file: any preference form formats.load_preferences_jsonl reads; world metrics are skipped."""
    shutil.copytree(tiny_sft_run / "tokenizer", tmp_path / "tokenizer")
    lines = []
    for a, b in [(a, b) for a in range(2, 9) for b in range(2, 9)]:
        human = f"\n\nHuman: What is {a} + {b}?\n\nAssistant: "
        lines.append(json.dumps({"chosen": human + str(a + b), "rejected": human + str(a + b + 1)}))
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    cfg = RewardConfig(out_dir=str(tmp_path), init=str(tiny_sft_run / "sft" / "model.pt"),
                       data_file=str(tmp_path / "hh.jsonl"), max_new_tokens=12, batch_size=8, max_steps=3,
                       warmup_steps=1, n_norm=8, device="cpu", quiet=True)
    rm, tok, history = reward.train(cfg)
    results = history[-1]
    assert 0.0 <= results["heldout/accuracy"] <= 1.0
    assert not any("gold" in key or key.startswith("bon/") for key in results)
    assert load_reward_model(str(tmp_path / "reward" / "model.pt")).score_std.item() == rm.score_std.item()


def pair(family, chosen, rejected, gold_chosen, gold_rejected):
    return {"prompt": [{"role": "user", "content": "q"}], "chosen": chosen, "rejected": rejected,
            "family": family, "gold_chosen": gold_chosen, "gold_rejected": gold_rejected}


def test_gold_agreement_and_the_shorter_answer_baseline_by_hand(tok):
    pairs = [pair("add", "5", "The answer is 6.", 1.0, 0.0),    # gold ranks chosen first; chosen is shorter
             pair("add", "It is 5.", "6", 0.6, 0.0),            # chosen first; chosen is LONGER
             pair("sort", "a, b", "b, a", 1.0, 0.0),            # chosen first; same length: a tie
             pair("sort", "x", "y", 0.0, 0.0)]                  # the rule ranks neither: left out
    diff = torch.tensor([1.0, -2.0, 0.0, 5.0])
    results = preferences.gold_agreement(diff, pairs)
    assert results["gold_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)  # a tie counts half
    assert results["gold_accuracy/add"] == 0.5 and results["gold_accuracy/sort"] == 0.5
    policy = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    base = preferences.baselines(policy, tok, pairs)
    assert base["baseline/shorter/gold_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert base["baseline/shorter/gold_accuracy/add"] == 0.5
    assert 0.0 <= base["baseline/sft_logprob/gold_accuracy"] <= 1.0 and "baseline/rm_init/gold_accuracy" not in base


def test_preference_prompts_held_out_share_no_item_with_the_train_ones():
    cfg = preferences.PreferenceConfig(n_prompts=600, n_heldout_prompts=200)
    sets = preferences.prompt_sets(cfg, WORLD)
    assert len(sets["train"]) == 600 and len(sets["heldout"]) == 200
    held = {(ex.family, ex.item) for ex in sets["heldout"]}
    assert not any((ex.family, ex.item) in held for ex in sets["train"])
