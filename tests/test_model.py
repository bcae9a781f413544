"""Tests of model.py: causality, the loss, logprobs, KV-cache and padded generation, checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F

from generate import filter_logits, generate, sample_from
from model import GPT, IGNORE_INDEX, GPTConfig, causal_mask, get_device, lm_loss, load_checkpoint, logprobs, save_checkpoint

CFG = GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(params=[False, True], ids=["learned-pos", "rope"])
def model(request):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**vars(CFG), "rope": request.param})).eval()


def test_causal_future_tokens_do_not_change_earlier_logits(model):
    ids = torch.randint(0, 50, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(0, 50, (2, 5))
    a, _ = model(ids)
    b, _ = model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])  # and the later ones do change


def test_causal_mask_by_hand():
    # one row of 4 tokens, the first is a pad; last 2 positions are queries
    m = causal_mask(torch.tensor([[0, 1, 1, 1]]), T=2)[0, 0]
    expected = torch.tensor([[False, True, True, False],
                             [False, True, True, True]])
    assert torch.equal(m, expected)
    # a pad query may still attend to itself, so its softmax row is never empty
    assert causal_mask(torch.tensor([[0, 1]]), T=2)[0, 0, 0, 0]


def test_weight_tying_and_init(model):
    assert model.lm_head.weight is model.wte.weight
    std = model.blocks[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * CFG.n_layer)) < 0.004


def test_loss_ignores_masked_targets_and_is_finite_when_all_masked(model):
    ids = torch.randint(0, 50, (2, 10))
    targets = torch.randint(0, 50, (2, 10))
    targets[:, :4] = IGNORE_INDEX
    logits, loss = model(ids, targets)
    keep = targets != IGNORE_INDEX
    direct = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, direct, atol=1e-6)
    _, loss = model(ids, torch.full_like(targets, IGNORE_INDEX))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # and a backward pass through it is fine


def test_only_gives_the_logits_and_loss_of_the_chosen_positions(model):
    from model import row_sums
    ids = torch.randint(0, 50, (3, 9))
    only = torch.zeros(3, 9, dtype=torch.bool)
    only[0, 2:5], only[2, 7:] = True, True  # row 1 has no position: its sum is 0
    full, _ = model(ids)
    logits, _ = model(ids, only=only)
    assert logits.shape == (5, 50) and torch.allclose(logits, full[only], atol=1e-6)
    targets = torch.full((3, 9), IGNORE_INDEX)
    targets[only] = ids[only]
    assert torch.allclose(lm_loss(logits, ids[only], "sum"), lm_loss(full, targets, "sum"), atol=1e-5)
    values = torch.arange(1.0, 6.0)  # 1, 2, 3 in row 0; 4, 5 in row 2
    assert row_sums(values, only).tolist() == [6.0, 0.0, 9.0]


def test_lm_loss_sum_over_micro_batches_equals_mean_over_all_tokens():
    logits = torch.randn(4, 6, 9)
    targets = torch.randint(0, 9, (4, 6))
    targets[0, :5] = IGNORE_INDEX  # micro-batches with very different numbers of targets
    n = (targets != IGNORE_INDEX).sum()
    summed = lm_loss(logits[:2], targets[:2], "sum") + lm_loss(logits[2:], targets[2:], "sum")
    assert torch.allclose(summed / n, lm_loss(logits, targets), atol=1e-6)


def test_logprobs_against_direct_computation(model):
    ids = torch.randint(0, 50, (3, 9))
    lp = logprobs(model, ids, temperature=0.7)
    logits, _ = model(ids)
    for b in range(3):
        for t in range(8):
            direct = torch.log(torch.softmax(logits[b, t] / 0.7, dim=-1)[ids[b, t + 1]])
            assert abs(lp[b, t].item() - direct.item()) < 1e-5
    # start: only the entries from column start on, each still scoring the token after it
    assert torch.allclose(logprobs(model, ids, temperature=0.7, start=5), lp[:, 5:], atol=1e-6)
    assert logprobs(model, ids, start=5).shape == (3, 3)


def test_cached_generation_equals_uncached(model):
    prompts = [[1, 2, 3, 4], [5, 6]]
    a = generate(model, prompts, 12, temperature=0, use_cache=True, return_logprobs=True)
    b = generate(model, prompts, 12, temperature=0, use_cache=False, return_logprobs=True)
    assert a.responses == b.responses
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = generate(model, prompts, 12, temperature=1.0, top_k=10, use_cache=True, generator=g1)
    b = generate(model, prompts, 12, temperature=1.0, top_k=10, use_cache=False, generator=g2)
    assert a.responses == b.responses


def test_padded_batch_gives_each_row_what_it_gives_alone(model):
    prompts = [[7, 8, 9, 10, 11, 12], [3], [4, 4, 2]]
    batch = generate(model, prompts, 10, temperature=0, return_logprobs=True)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], 10, temperature=0, return_logprobs=True)
        assert batch.responses[i] == alone.responses[0]
        assert torch.allclose(batch.logprobs[i], alone.logprobs[0], atol=1e-5)


def test_num_samples_shares_the_prompt_pass_and_gives_what_repeated_prompts_give(model):
    prompts = [[7, 8, 9, 10, 11, 12], [3], [4, 4, 2]]
    repeated = [p for p in prompts for _ in range(3)]
    for temperature in (0.0, 1.0):
        shared = generate(model, prompts, 10, temperature=temperature, return_logprobs=True, num_samples=3,
                          generator=torch.Generator().manual_seed(5))
        plain = generate(model, repeated, 10, temperature=temperature, return_logprobs=True,
                         generator=torch.Generator().manual_seed(5))
        assert shared.responses == plain.responses and torch.equal(shared.tokens, plain.tokens)
        assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5)
    uncached = generate(model, prompts, 10, temperature=1.0, num_samples=3, use_cache=False,
                        generator=torch.Generator().manual_seed(5))
    assert uncached.responses == shared.responses
    assert len(set(map(tuple, shared.responses[3:6]))) > 1  # the copies of a prompt are sampled apart
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, prompts, 4, num_samples=0)


def test_generation_logprobs_match_logprobs_helper(model):
    gen = generate(model, [[1, 2, 3], [4]], 8, temperature=0.8, return_logprobs=True,
                   generator=torch.Generator().manual_seed(0))
    lp = logprobs(model, gen.tokens, gen.attention_mask, temperature=0.8)  # (B, T-1)
    P = gen.prompt_width
    response_lp = lp[:, P - 1:]  # entry t scores token t+1, so the response starts at P-1
    mask = gen.attention_mask[:, P:].bool()
    assert torch.allclose(response_lp[mask], gen.logprobs[mask], atol=1e-5)


def test_generate_builds_no_autograd_graph(model):
    # a graph kept per generated token grew a reward-data run to 24 GB before it was killed
    gen = generate(model, [[1, 2, 3], [4]], 4, temperature=1.0, return_logprobs=True,
                   generator=torch.Generator().manual_seed(0))
    assert not gen.logprobs.requires_grad and not gen.tokens.requires_grad


def test_stop_token_ends_rows_independently(model):
    gen = generate(model, [[1, 2], [3]], 6, temperature=0)
    stop = gen.responses[0][-1]  # a token row 0 produces greedily
    stop_at = gen.responses[0].index(stop) + 1  # where row 0 stops when `stop` is the stop token
    gen = generate(model, [[1, 2], [3]], 6, temperature=0, stop_id=stop, pad_id=0)
    assert gen.responses[0][-1] == stop and gen.ended[0]
    assert len(gen.responses[0]) == stop_at
    # after the stop, the row holds pads with mask 0
    assert gen.attention_mask[0, gen.prompt_width + stop_at:].sum() == 0
    assert all(t == 0 for t in gen.tokens[0, gen.prompt_width + stop_at:].tolist())
    assert gen.ended[1] == (stop in gen.responses[1])


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    # nucleus 0.7: 0.5 alone is < 0.7, so 0.5 and 0.3 stay and the rest go
    kept = torch.isfinite(filter_logits(logits, top_p=0.7)[0])
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, top_p=0.5)[0])
    assert kept.tolist() == [True, False, False, False]


def test_too_long_raises(model):
    with pytest.raises(ValueError, match="block_size"):
        generate(model, [[1] * 60], 10)


def test_checkpoint_round_trip_and_mismatch(tmp_path, model):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, {"step": 3})
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3
    ids = torch.randint(0, 50, (1, 5))
    assert torch.equal(model(ids)[0], loaded.eval()(ids)[0])
    # a checkpoint whose weights do not fit the config it claims
    sd = model.state_dict()
    sd["wte.weight"] = torch.zeros(60, 32)
    torch.save({"model": sd, "config": vars(CFG)}, path)
    with pytest.raises(ValueError, match="wte.weight"):
        load_checkpoint(path)
    torch.save({"model": sd, "config": {**vars(CFG), "n_experts": 4}}, path)
    with pytest.raises(ValueError, match="n_experts"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "nope.pt"))


def test_get_device_override():
    assert get_device("cpu").type == "cpu"


def test_sample_from_follows_the_distribution_and_never_picks_a_zero():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(20_000, 4)
    draws = sample_from(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.015)
    assert (draws != 1).all()  # a filtered token (probability 0) is never drawn
    # the same generator seed draws the same tokens
    assert torch.equal(draws, sample_from(probs, torch.Generator().manual_seed(0)))
    # a row whose cumulative sum rounds below 1 still gets a valid token
    assert sample_from(torch.tensor([[0.5, 0.4999]]), torch.Generator().manual_seed(1)).item() in (0, 1)
    # ... and never a zero-probability last id: u above the whole mass of [0.3, 0.3, 0] falls on token 1
    assert (sample_from(torch.tensor([[0.3, 0.3, 0.0]]).expand(2000, 3), torch.Generator().manual_seed(2)) != 2).all()


def test_generate_refuses_bad_arguments_and_non_finite_logits(model):
    prompt = [[1, 2, 3]]
    for kwargs, message in ((dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
                            (dict(top_p=0.0), "top_p"), (dict(max_new_tokens=0), "max_new_tokens")):
        args = {"max_new_tokens": 4, **kwargs}
        with pytest.raises(ValueError, match=message):
            generate(model, prompt, **args)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 4)
    with pytest.raises(FloatingPointError, match="inf"):
        generate(model, prompt, 4, temperature=1e-40)  # logits / T overflow
    broken = GPT(model.config)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))  # a diverged model
    with pytest.raises(FloatingPointError, match="NaN"):
        generate(broken, prompt, 4)


class NotATensor:  # any pickled object: what a malicious or foreign checkpoint could hold
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_holding_an_arbitrary_object_is_refused(tmp_path, model):
    path = str(tmp_path / "model.pt")
    torch.save({"model": model.state_dict(), "config": {}, "extra": NotATensor()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        load_checkpoint(path)
