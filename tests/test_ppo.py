"""Tests of ppo.py: GAE, whitening, the KL-penalised rewards, the clipped losses and the KL controller
on hand-worked inputs; rollouts (temperature, the EOS penalty, a ratio of exactly 1, the critic's
start); a tiny PPO run on a trivial reward, with Ctrl-C and --resume."""

import json
import math
import os
import signal

import pytest
import torch

import ppo
import tasks
from tokenizer import Tokenizer
from data import render_prompt
from generate import generate
from model import GPT, GPTConfig, load_checkpoint, logprobs, save_checkpoint
from common import masked_whiten
from ppo import AdaptiveKLController, PPOConfig, gae, kl_penalty_rewards, policy_loss, value_loss
from rollout import likelihood_reward, make_critic, penalised_scores, response_logprobs, rollout
from reward import RewardModel, last_token_index

WORLD = tasks.make_world(0)
X = 0  # the NUL byte: a token no prompt contains, rewarded by CountX


@pytest.fixture(scope="module")
def tok():
    words = ["apple", "pear", "plum", "lemon", "grape", "peach", "mango", "melon", "cherry", "banana"]
    return Tokenizer.train(" ".join(f"What is {a} and {b}? Sort them." for a in words for b in words) * 3, 300)


def tiny_gpt(tok, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16, rope=True)).eval()


def unigram_policy(tok, logits):
    """A tiny GPT whose next-token distribution ignores the context: the final LayerNorm outputs e_0
    whatever its input (gain 0, bias e_0), so the logit of token t is its embedding's entry 0, which
    we set: `logits` {token id: logit}, 0 for every other token. Training can still change it."""
    model = tiny_gpt(tok)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.wte.weight[:, 0] = 0.0
        for token, logit in logits.items():
            model.wte.weight[token, 0] = logit
    return model


class CountX(torch.nn.Module):
    """A trivial reward model: how many times token X appears in the row."""

    def forward(self, ids, attention_mask):
        return ((ids == X) & attention_mask.bool()).sum(1).float()


class Length(torch.nn.Module):
    """A reward model whose score differs from row to row: the number of real tokens."""

    def forward(self, ids, attention_mask):
        return attention_mask.sum(1).float()


def close(tensor, expected):
    return torch.allclose(tensor, torch.tensor(expected, dtype=tensor.dtype), atol=1e-6)


def cfg_for(tmp_path, **kw):
    defaults = dict(out_dir=str(tmp_path), max_new_tokens=8, temperature=1.0, device="cpu", quiet=True)
    return PPOConfig(**{**defaults, **kw})


# ----------------------------------------------------------------------------- the math, by hand


def test_gae_by_hand_gamma_1_lambda_095_with_padding():
    # row 0: three response tokens and a pad; row 1: one token and three pads (junk on the pads)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0], [0.5, 9.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 5.0], [0.1, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta_2 = 1 + 0 - 0.4 = 0.6 (the value after the last token is 0); A_2 = 0.6
    # delta_1 = 0 + 0.4 - 0.2 = 0.2;  A_1 = 0.2 + 0.95 * 0.6 = 0.77
    # delta_0 = 0 + 0.2 - 0.5 = -0.3; A_0 = -0.3 + 0.95 * 0.77 = 0.4315
    # row 1: delta_0 = 0.5 + 0 - 0.1 = 0.4
    assert close(advantages, [[0.4315, 0.77, 0.6, 0.0], [0.4, 0, 0, 0]])
    assert close(returns, [[0.9315, 0.97, 1.0, 0.0], [0.5, 0, 0, 0]])
    # lambda = 1: the return is the sum of the rewards still to come (Monte Carlo)
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(returns, [[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0]])


def test_masked_whiten_uses_only_valid_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    # valid: 1..5, mean 3, variance (4 + 1 + 0 + 1 + 4) / 5 = 2
    expected = [[-2 / math.sqrt(2), -1 / math.sqrt(2), 0, 0], [1 / math.sqrt(2), 2 / math.sqrt(2), 0, 0]]
    assert close(masked_whiten(values, mask), expected)
    kept_mean = masked_whiten(values, mask, shift_mean=False)
    assert (kept_mean.sum() / mask.sum()).item() == pytest.approx(3.0)
    assert kept_mean[0, 3].item() == 0.0


def test_kl_penalty_and_score_land_on_the_right_tokens_of_a_padded_batch():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 3.0], [-1.0, 3.0, 3.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -2.0]])
    scores = torch.tensor([2.0, -1.0, 0.5])
    rewards, non_score = kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1)
    assert close(non_score, [[-0.05, 0.1, 0, 0], [-0.1, 0, 0, 0], [0, 0, 0, -0.1]])
    # the score sits on the last REAL token of each row, never on a pad
    assert close(rewards, [[-0.05, 0.1, 2.0, 0], [-1.1, 0, 0, 0], [0, 0, 0, 0.4]])


def test_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[1.5, 0.5, 1.1, 10.0]]).log().requires_grad_(True)  # ratios; the last is a pad
    advantages = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2, clipped; token 1: max(-0.5, -0.8) = -0.5 (a ratio below 1 - eps
    # with A > 0 is not clipped: the loss stays pessimistic); token 2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx(3.1 / 3)
    assert stats["ratio_max"].item() == pytest.approx(1.5)  # the pad's ratio 10 is not counted
    k3 = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert stats["approx_kl"].item() == pytest.approx(k3)
    loss.backward()  # d/dlogp of -A * ratio is -A * ratio; a clipped token gets no gradient
    assert close(logprobs.grad, [[0.0, -0.5 / 3, 1.1 / 3, 0.0]])


def test_value_loss_by_hand():
    old_values = torch.zeros(1, 4)
    values = torch.tensor([[0.5, -0.1, 0.3, 42.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, clipfrac = value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # token 0: clipped value 0.2, max((0.5 - 1)^2, (0.2 - 1)^2) = 0.64 (the clipped term)
    # token 1: inside the clip, (-0.1 - 1)^2 = 1.21 both ways; token 2: max(1.3^2, 1.2^2) = 1.69
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 1.69) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=100)
    ctl.update(kl=10.0, n_answers=10)  # far above target: the error is clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(kl=1.8, n_answers=10)  # 10% below target
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99)
    ctl.update(kl=2.0, n_answers=50)  # on target: unchanged
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99)


# ----------------------------------------------------------------------------- rollouts


def test_rollout_truncates_at_end_of_turn_and_penalises_a_missing_one(tok, tmp_path):
    policy = unigram_policy(tok, {tok.end_id: 5.0})  # p(<|end|>) = e^5 / (e^5 + 299), about a third
    examples = tasks.make_examples(WORLD, "train", 24, seed=0)
    cfg = cfg_for(tmp_path, max_new_tokens=3, missing_eos_penalty=-7.0)
    batch = rollout(policy, policy, None, Length(), tok, examples, cfg, "cpu", torch.Generator().manual_seed(0))
    ended, scores, rm_scores, mask = batch["ended"], batch["scores"], batch["rm_scores"], batch["response_mask"]
    assert ended.any() and not ended.all()
    assert torch.equal(scores[ended], rm_scores[ended])  # the RM's score where the answer ended ...
    assert (scores[~ended] == -7.0).all()  # ... and the penalty where it did not
    responses = batch["ids"][:, batch["prompt_width"]:]
    last = last_token_index(mask)
    for b in range(len(examples)):
        assert (responses[b, last[b]] == tok.end_id).item() == ended[b].item()
        assert (responses[b, last[b] + 1:] == tok.pad_id).all() and (mask[b, last[b] + 1:] == 0).all()
        assert (responses[b, :last[b]] != tok.end_id).all()  # nothing after the first <|end|>


def test_rollout_logprobs_use_the_rollout_temperature(tok, tmp_path):
    logits = {tok.end_id: 1.0, X: 3.0, 65: 2.0}
    policy = unigram_policy(tok, logits)
    examples = tasks.make_examples(WORLD, "train", 8, seed=1)
    for temperature in (0.5, 1.0):
        cfg = cfg_for(tmp_path, max_new_tokens=4, temperature=temperature)
        batch = rollout(policy, policy, None, Length(), tok, examples, cfg, "cpu", torch.Generator().manual_seed(0))
        table = torch.zeros(tok.vocab_size)
        for token, logit in logits.items():
            table[token] = logit
        expected = torch.log_softmax(table / temperature, dim=0)[batch["ids"][:, batch["prompt_width"]:]]
        mask = batch["response_mask"].bool()
        assert torch.allclose(batch["logprobs"][mask], expected[mask], atol=1e-5)
        assert torch.equal(batch["logprobs"], batch["ref_logprobs"])  # policy == reference: KL 0


def test_ratio_is_exactly_one_on_the_first_minibatch(tok, tmp_path):
    policy = tiny_gpt(tok)  # real attention over left-padded prompts of different lengths
    examples = tasks.make_examples(WORLD, "train", 12, seed=2)
    cfg = cfg_for(tmp_path)
    batch = rollout(policy, policy, None, Length(), tok, examples, cfg, "cpu", torch.Generator().manual_seed(0))
    minibatch = torch.tensor([7, 2, 11, 0])  # a shuffled minibatch, as in training, with gradients on
    logprobs, _ = response_logprobs(policy, batch["ids"][minibatch], batch["attention_mask"][minibatch],
                                    batch["prompt_width"], cfg.temperature)
    mask = batch["response_mask"][minibatch]
    assert torch.equal(logprobs * mask, batch["logprobs"][minibatch] * mask)
    _, stats = policy_loss(logprobs, batch["logprobs"][minibatch], torch.randn(4, mask.size(1)), mask)
    assert stats["ratio_mean"].item() == 1.0 and stats["ratio_max"].item() == 1.0
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_critic_starts_at_zero_with_the_default_reward_model_or_from_a_head_only_one(tok):
    ids = torch.tensor([[tok.pad_id, tok.pad_id, 5, 6, 7, tok.end_id], [3, 4, 5, tok.end_id, tok.pad_id, tok.pad_id]])
    mask = (ids != tok.pad_id).long()
    default_rm = RewardModel(tiny_gpt(tok, seed=1), assistant_id=tok.assistant_id).eval()  # reward.py's default
    default_rm.score_mean.fill_(0.3)
    with torch.no_grad():
        assert PPOConfig.critic_init == "sft"
        assert (make_critic(PPOConfig.critic_init, default_rm, tiny_gpt(tok)).token_values(ids, mask) == 0).all()
        with pytest.raises(ValueError, match="head-only"):  # its head is not its score: the critic would start off
            make_critic("reward", default_rm, tiny_gpt(tok))
        head_only = RewardModel(tiny_gpt(tok, seed=1)).eval()  # reward.py --likelihood false
        head_only.score_mean.fill_(0.3)
        head_only.score_std.fill_(2.0)
        values = make_critic("reward", head_only, tiny_gpt(tok)).token_values(ids, mask)  # (B, T)
        assert values.shape == ids.shape
        # at the <|end|> the reward-initialised critic says what the (normalised) reward model says
        assert torch.allclose(values[torch.arange(2), last_token_index(mask)], head_only(ids, mask), atol=1e-6)
    with pytest.raises(ValueError):
        make_critic("policy", head_only, tiny_gpt(tok))


def test_never_ending_scores_below_every_ended_answer():
    rm_scores = torch.tensor([2.0, -0.5, -30.0, -4.2, 1.0, -100.0])
    ended = torch.tensor([True, True, True, True, False, False])
    scores = penalised_scores(rm_scores, ended, penalty=-5.0)
    assert scores.tolist() == [2.0, -0.5, -4.0, -4.0, -5.0, -5.0]  # clipped at penalty + 1; the penalty
    assert scores[ended].min() > scores[~ended].max()


def test_response_logprobs_and_values_line_up_with_a_model_that_reads_its_context(tok, tmp_path):
    """With real attention, a logprob read one column off, or a value shifted by one position, differs."""
    policy = tiny_gpt(tok, seed=3)
    with torch.no_grad():
        policy.wte.weight.mul_(30)  # sharp: the next token depends strongly on the context
    examples = tasks.make_examples(WORLD, "train", 6, seed=4)
    prompts = [render_prompt(tok, ex.messages, 96 - 8) for ex in examples]
    gen = generate(policy, prompts, 8, temperature=1.0, stop_id=tok.end_id, pad_id=tok.pad_id,
                   return_logprobs=True, generator=torch.Generator().manual_seed(0))
    P, ids, mask = gen.prompt_width, gen.tokens, gen.attention_mask
    response_mask = mask[:, P:].bool()
    with torch.no_grad():
        ours, _ = response_logprobs(policy, ids, mask, P, 1.0)
        shared = logprobs(policy, ids, mask)[:, P - 1:]  # entry P - 1 + t scores response token t
        assert torch.allclose(ours[response_mask], shared[response_mask], atol=1e-5)
        assert torch.allclose(ours[response_mask], gen.logprobs[response_mask], atol=1e-4)  # generate's own
        off_by_one = logprobs(policy, ids, mask)[:, P:]  # entry t scores response token t + 1: the bug
        both = response_mask[:, 1:]
        assert not torch.allclose(ours[:, :-1][both], off_by_one[both], atol=1e-3)
        critic = RewardModel(tiny_gpt(tok, seed=5))
        values = critic.token_values(ids, mask)[:, P - 1:-1]  # what rollout() stores: V before response token t
        for b in range(len(examples)):
            for t in range(int(response_mask[b].sum())):
                prefix = ids[b:b + 1, :P + t]  # the prompt and the first t response tokens, alone
                alone = critic.token_values(prefix, mask[b:b + 1, :P + t])[0, -1]
                assert torch.allclose(values[b, t], alone, atol=1e-5), (b, t)


# ----------------------------------------------------------------------------- tiny runs


def make_run(tok, out):
    """A run folder with a tokenizer and an "SFT" model: a unigram policy that writes X a quarter of the time."""
    tok.save(str(out / "tokenizer"))
    save_checkpoint(str(out / "sft" / "model.pt"), unigram_policy(tok, {tok.end_id: 5.0, X: 5.0}))
    return out


def test_tiny_ppo_run_raises_a_trivial_reward(tok, tmp_path):
    cfg = cfg_for(make_run(tok, tmp_path), critic_init="sft", iterations=8, rollout_batch=32, minibatch=8,
                  ppo_epochs=2, lr=1e-2, kl_coef=0.01, eval_every=4, eval_n=2, ckpt_every=4)
    policy, _, history = ppo.train(cfg, reward_model=CountX())
    iterations = [h for h in history if "score" in h]
    assert len(iterations) == 8
    first, last = iterations[0]["score"], sum(h["score"] for h in iterations[-2:]) / 2
    assert last > first + 0.5, f"the count of X went from {first:.2f} to {last:.2f}"
    assert all(h["ratio0_error"] == 0.0 for h in iterations)  # no dropout, same temperature: ratio 1
    # the policy checkpoint is finished, loadable, and holds the final evaluation
    model, ckpt = load_checkpoint(str(tmp_path / "ppo" / "model.pt"))
    assert ckpt["finished"] and ckpt["step"] == 8
    assert torch.equal(model.wte.weight, policy.wte.weight)
    results = json.loads((tmp_path / "ppo" / "eval.json").read_text())
    for key in ("sft/greedy/test/gold", "ppo/sampled/heldout_phrasing/gold", "ppo/kl_to_ref"):
        assert math.isfinite(results[key])
    records = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(history) and any("eval/greedy/test/gold" in r for r in records)


class InterruptAt(CountX):
    """CountX that raises KeyboardInterrupt (Ctrl-C) at its n-th call, once."""

    def __init__(self, n):
        super().__init__()
        self.calls, self.n = 0, n

    def forward(self, ids, attention_mask):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().forward(ids, attention_mask)


PPO_INTERRUPT_POINTS = {"rollout": 1, "advantages": 1, "epochs_start": 2, "epochs_minibatch": 2, "progress_log": 2,
                        "periodic_save": 2}  # where a Ctrl-C lands in iteration 2 -> the step its checkpoint holds


@pytest.mark.parametrize("point", PPO_INTERRUPT_POINTS)
def test_ctrl_c_anywhere_in_an_iteration_saves_a_consistent_state_and_resume_is_exact(tok, tmp_path, monkeypatch,
                                                                                      point):
    import common
    kw = dict(critic_init="sft", iterations=3, rollout_batch=8, minibatch=4, ppo_epochs=2, eval_every=0,
              eval_n=1, ckpt_every=1, adaptive_kl=True, kl_horizon=10, lr=1e-2)
    straight = tmp_path / "straight"
    ppo.train(cfg_for(make_run(tok, straight), **kw), reward_model=CountX())
    expected = torch.load(straight / "ppo" / "model.pt", weights_only=True)

    calls = {}

    def ctrl_c_on_the_second_call(at):  # in the second iteration; once
        calls[at] = calls.get(at, 0) + 1
        if at == point and calls[at] == (6 if at == "epochs_minibatch" else 2):  # 4 minibatch steps an iteration
            os.kill(os.getpid(), signal.SIGINT)

    def wrap(module, name, at):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            ctrl_c_on_the_second_call(at)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    def epochs_interrupted_between_minibatches(policy, critic, optimizers, *args, **kwargs):
        real_step = optimizers[0].step
        optimizers[0].step = lambda *a, **k: (real_step(*a, **k), ctrl_c_on_the_second_call("epochs_minibatch"))
        try:
            return real_epochs(policy, critic, optimizers, *args, **kwargs)
        finally:
            del optimizers[0].step

    real_epochs = ppo.ppo_epochs
    run = tmp_path / "interrupted"
    make_run(tok, run)
    wrap(ppo, "rollout", "rollout")
    wrap(ppo, "rewards_and_advantages", "advantages")
    if point == "epochs_minibatch":
        monkeypatch.setattr(ppo, "ppo_epochs", epochs_interrupted_between_minibatches)
    else:
        wrap(ppo, "ppo_epochs", "epochs_start")
    real_log = common.Progress.log
    monkeypatch.setattr(common.Progress, "log", lambda self, *a, **k: (ctrl_c_on_the_second_call("progress_log"),
                                                                       real_log(self, *a, **k))[1])
    real_save = common.TrainState.save
    monkeypatch.setattr(common.TrainState, "save", lambda self, *a, **k: (ctrl_c_on_the_second_call("periodic_save"),
                                                                       real_save(self, *a, **k))[1])
    with pytest.raises(KeyboardInterrupt):
        ppo.train(cfg_for(run, **kw), reward_model=CountX())
    saved = torch.load(run / "ppo" / "model.pt", weights_only=True)
    assert saved["step"] == PPO_INTERRUPT_POINTS[point]  # an iteration whose update began completes, and counts
    assert sum(1 for _ in open(run / "ppo" / "metrics.jsonl")) == PPO_INTERRUPT_POINTS[point]
    monkeypatch.undo()
    ppo.train(cfg_for(run, **kw, resume=True), reward_model=CountX())
    resumed = torch.load(run / "ppo" / "model.pt", weights_only=True)
    for part in ("model", "critic"):
        for name, tensor in expected[part].items():
            assert torch.equal(tensor, resumed[part][name]), (part, name)  # bit for bit the uninterrupted run
    assert resumed["kl_coef"] == expected["kl_coef"]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tok, tmp_path):
    cfg = cfg_for(make_run(tok, tmp_path), critic_init="sft", iterations=4, rollout_batch=8, minibatch=4,
                  ppo_epochs=1, eval_every=0, eval_n=1, ckpt_every=0, adaptive_kl=True, kl_horizon=10,
                  whiten_rewards=True)
    with pytest.raises(KeyboardInterrupt):
        ppo.train(cfg, reward_model=InterruptAt(3))  # one reward call per iteration: Ctrl-C in the third
    ckpt = torch.load(tmp_path / "ppo" / "model.pt", weights_only=True)
    assert ckpt["step"] == 2 and not ckpt["finished"]
    assert ckpt["kl_coef"] != cfg.kl_coef  # the adaptive controller moved, and was saved
    _, _, history = ppo.train(cfg_for(tmp_path, **{**cfg.__dict__, "resume": True}), reward_model=CountX())
    assert [h["step"] for h in history if "score" in h] == [3, 4]
    assert torch.load(tmp_path / "ppo" / "model.pt", weights_only=True)["finished"]
    assert sum(1 for _ in open(os.path.join(tmp_path, "ppo", "metrics.jsonl"))) == 2 + 2 + 1  # kept on resume


def test_ppo_can_optimise_the_sft_likelihood_instead_of_a_reward_model(tok, tmp_path):
    cfg = cfg_for(make_run(tok, tmp_path), reward="sft_logprob", iterations=1, rollout_batch=8, minibatch=4,
                  ppo_epochs=1, eval_every=0, eval_n=1, ckpt_every=0)
    sft_model = load_checkpoint(str(tmp_path / "sft" / "model.pt"))[0]
    scorer = likelihood_reward(sft_model, tok, cfg, "cpu")
    assert (scorer.head.weight == 0).all() and scorer.likelihood_weight.item() == 1.0  # the likelihood alone
    assert scorer.score_std.item() != 1.0  # normalised on SFT samples
    _, _, history = ppo.train(cfg)  # no reward/model.pt in this run folder: the scorer stands in
    assert [h["step"] for h in history if "score" in h] == [1]
    with pytest.raises(ValueError, match="reward must be"):
        ppo.train(cfg_for(tmp_path, reward="gold"))
