"""
evaluate.py: everything that measures a model against the built-in world's ground truth.

Every stage and the report card measure models with these functions, on the same prompts and the
same gold grader (tasks.grade), so their numbers can be set side by side:

  respond          answer a list of conversations: [Answer(text, ended, n_tokens, ids)]
  eval_sets        n prompts of every evaluation split (test, heldout_phrasing, heldout_people, heldout_task)
  harm_sets        forbidden requests (a person's secret code) and allowed ones
  evaluate         generate for every split, grade, summarise (one temperature)
  evaluate_policy  greedy AND sampled, means over the splits, KL to a reference, reward-model score
  kl_to_reference  KL(policy || reference) per answer, on the policy's own samples
  score_responses  a reward model's scores of (prompt, response) pairs
  best_of_n        sample N answers, keep the reward model's favourite, grade it, for several N
  wilson_interval, bootstrap_interval   95% intervals of a proportion, of a mean, of a paired difference

  sets = eval_sets(tasks.make_world(0), n=100)
  results = evaluate(model, tok, sets)                 # {"test/accuracy": ..., "test/gold": ..., ...}
  answers = respond(model, tok, [sets["test"][0].messages])
  answers[0].text, answers[0].ended, answers[0].n_tokens

The keys `evaluate` returns are listed in its docstring; `evaluate_policy` prefixes them with the
decoding ("greedy/", "sampled/").
"""

from collections import defaultdict
from typing import NamedTuple

import numpy as np
import torch

import tasks
from data import decode_content, length_batches, pad_rows, render_prompt, render_response
from generate import generate
from model import autocast, logprobs

EVAL_SPLITS = ("test", "heldout_phrasing", "heldout_people", "heldout_task")


class Answer(NamedTuple):
    """One generated answer."""
    text: str  # decoded, without the end-of-turn token
    ended: bool  # did the model end its turn (produce <|end|>)?
    n_tokens: int  # tokens generated, <|end|> included
    ids: tuple = ()  # those tokens' ids: what kl_to_reference scores when it is given answers


# -----------------------------------------------------------------------------
# Generating answers


def prompt_ids(model, tok, messages, max_new_tokens):
    """The token ids of a prompt that leave room for max_new_tokens in the model's window: a longer
    prompt loses its start (data.render_prompt). Every stage that generates builds its prompts here."""
    return render_prompt(tok, messages, model.config.block_size - max_new_tokens)


def respond(model, tok, prompts, temperature=0.0, max_new_tokens=48, batch_size=256, generator=None, n=1):
    """Answer a list of conversations (message lists), n answers each. Returns [Answer]: the n answers
    of prompt i are answers[i * n:(i + 1) * n].

    A prompt longer than block_size - max_new_tokens keeps only its last tokens (prompt_ids). Batches
    hold about batch_size answers, prompts of similar lengths together (data.length_batches); the n
    answers of a prompt share its prompt pass (generate's num_samples).
    """
    device = next(model.parameters()).device
    ids = [prompt_ids(model, tok, messages, max_new_tokens) for messages in prompts]
    answers = [None] * (len(prompts) * n)
    for batch in length_batches([len(row) for row in ids], max(1, batch_size // n)):
        with autocast(device):
            gen = generate(model, [ids[i] for i in batch], max_new_tokens, temperature=temperature,
                           stop_id=tok.end_id, pad_id=tok.pad_id, generator=generator, num_samples=n)
        for j, (response, ended) in enumerate(zip(gen.responses, gen.ended)):
            text_ids = response[:-1] if ended else response
            answers[batch[j // n] * n + j % n] = Answer(decode_content(tok, text_ids), ended, len(response),
                                                        tuple(response))
    return answers


# -----------------------------------------------------------------------------
# The prompts


def eval_sets(world, n, seed=1):
    """{split: n examples} for every evaluation split of the built-in world."""
    return {split: tasks.make_examples(world, split, n, seed=seed) for split in EVAL_SPLITS}


def harm_sets(world, n, seed=1):
    """The helpful-vs-harmless test: {"forbidden": n secret-code requests (a third each from the test,
    heldout_phrasing and heldout_people splits), "allowed": n requests of every other taught family,
    a third of them person facts (the near neighbours of the forbidden ones), from the test split}."""
    secret = [f for f in tasks.FAMILIES if f.forbidden]
    people = [f for f in tasks.FAMILIES if f.about_people and not f.forbidden]
    others = [f for f in tasks.FAMILIES if not (f.forbidden or f.about_people or f.heldout)]
    third = max(1, n // 3)
    forbidden = [ex for split, k in (("test", third), ("heldout_phrasing", third), ("heldout_people", max(1, n - 2 * third)))
                 for ex in tasks.make_examples(world, split, k, seed=seed, families=secret)]
    allowed = (tasks.make_examples(world, "test", third, seed=seed, families=people)
               + tasks.make_examples(world, "test", n - third, seed=seed, families=others))
    return {"forbidden": forbidden, "allowed": allowed}


# -----------------------------------------------------------------------------
# Grading and summarising


def harm_rates(examples, answers, prefix):
    """"<prefix>/declined": share of forbidden requests declined (gold >= 0.5: the refusal, no digit);
    "<prefix>/over_refusal": share of allowed requests answered with the refusal. Absent without such requests."""
    forbidden = [tasks.is_correct(ex, a.text, a.ended) for ex, a in zip(examples, answers) if ex.forbidden]
    allowed = [tasks.is_refusal(a.text) for ex, a in zip(examples, answers) if not ex.forbidden]
    rates = {}
    if forbidden:
        rates[f"{prefix}/declined"] = sum(forbidden) / len(forbidden)
    if allowed:
        rates[f"{prefix}/over_refusal"] = sum(allowed) / len(allowed)
    return rates


def grade_answers(examples, answers):
    """Per answer: (correct [0/1], gold [float]), by tasks.is_correct and the gold grader tasks.grade."""
    correct = [float(tasks.is_correct(ex, a.text, a.ended)) for ex, a in zip(examples, answers)]
    return correct, [tasks.grade(ex, a.text, a.ended) for ex, a in zip(examples, answers)]


def summarise(split, examples, answers):
    """The metrics of one split's answers, graded by the gold grader (the keys: see `evaluate`)."""
    by_family, by_difficulty = defaultdict(list), defaultdict(list)
    correct, golds = grade_answers(examples, answers)
    for ex, c in zip(examples, correct):
        by_family[ex.family].append(c)
        by_difficulty[ex.difficulty].append(c)
    results = {f"{split}/accuracy": sum(correct) / len(correct),
               f"{split}/gold": sum(golds) / len(golds),
               f"{split}/length": sum(a.n_tokens for a in answers) / len(answers),
               f"{split}/ended": sum(a.ended for a in answers) / len(answers)}
    results.update(harm_rates(examples, answers, split))
    for family, c in sorted(by_family.items()):
        results[f"{split}/family/{family}"] = sum(c) / len(c)
    for d, c in sorted(by_difficulty.items()):
        results[f"{split}/difficulty/{d}"] = sum(c) / len(c)
    return results


def evaluate(model, tok, sets, temperature=0.0, max_new_tokens=48, seed=0, answers_out=None):
    """Generate for every split, grade with the gold grader, summarise.

    Returns a flat dict: "<split>/accuracy", "<split>/gold", "<split>/length", "<split>/ended",
    "<split>/declined" (share of forbidden requests declined without a digit: their accuracy),
    "<split>/over_refusal" (share of allowed requests answered with the refusal),
    "<split>/family/<name>" (accuracy per family) and "<split>/difficulty/<d>" (accuracy per
    difficulty). Accuracy counts correct answers, concise or wordy (tasks.is_correct).
    answers_out: a dict that receives {split: [Answer]}, for callers that reuse the answers.
    """
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # draws on the model's device
    results = {}
    for split, examples in sets.items():
        if not examples:
            continue
        answers = respond(model, tok, [ex.messages for ex in examples], temperature, max_new_tokens, generator=g)
        if answers_out is not None:
            answers_out[split] = answers
        results.update(summarise(split, examples, answers))
    return results


def evaluate_policy(model, tok, sets, ref=None, rm=None, sample_temperature=0.7, max_new_tokens=48, seed=0,
                    generator=None, kl_temperature=1.0, answers_out=None):
    """`evaluate` greedy and at sample_temperature (None: greedy only), plus what a policy is judged by.

    Returns "greedy/<key>" and "sampled/<key>" for every key of `evaluate`; "greedy/gold",
    "greedy/length", "greedy/ended" (and "sampled/...") averaged over the splits; with `ref`,
    "kl_to_ref" (kl_to_reference at kl_temperature on all the prompts: on the sampled answers when
    kl_temperature == sample_temperature, else on new samples drawn from `generator`, or one seeded by
    `seed`); with `rm`, "rm_score" (its mean normalised score of the greedy answers).
    answers_out: a dict that receives {"greedy": {split: [Answer]}, "sampled": {split: [Answer]}}.
    """
    decodings = {"greedy": 0.0} if sample_temperature is None else {"greedy": 0.0, "sampled": sample_temperature}
    splits = [split for split, examples in sets.items() if examples]
    results, answers = {}, {name: {} for name in decodings}
    for name, temperature in decodings.items():
        scores = evaluate(model, tok, sets, temperature, max_new_tokens, seed, answers_out=answers[name])
        results.update({f"{name}/{k}": v for k, v in scores.items()})
        for key in ("gold", "length", "ended"):  # the mean over the splits
            results[f"{name}/{key}"] = sum(scores[f"{s}/{key}"] for s in splits) / len(splits)
    prompts = [ex.messages for s in splits for ex in sets[s]]
    if ref is not None:
        if generator is None:
            generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        sampled = ([a for s in splits for a in answers["sampled"][s]] if sample_temperature == kl_temperature
                   else None)  # the samples at that temperature exist already: scored, not drawn again
        results["kl_to_ref"] = kl_to_reference(model, ref, tok, prompts, max_new_tokens, generator=generator,
                                               temperature=kl_temperature, answers=sampled)
    if rm is not None:
        texts = [a.text for s in splits for a in answers["greedy"][s]]
        results["rm_score"] = score_responses(rm, tok, prompts, texts).mean().item()
    if answers_out is not None:
        answers_out.update(answers)
    return results


def headline(results):
    """The accuracy per split, for a progress line."""
    return {k.replace("/accuracy", "_acc"): v for k, v in results.items() if k.endswith("/accuracy")}


# -----------------------------------------------------------------------------
# 95% intervals: how far a figure measured on a few hundred prompts can be trusted


def wilson_interval(k, n, z=1.96):
    """The Wilson score interval (lo, hi) of a proportion k / n (Wilson 1927): unlike p +- z * se, it
    stays inside [0, 1] and is not empty at 0 or n successes."""
    if n == 0:
        return (float("nan"), float("nan"))
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * ((p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5) / (1 + z2 / n)
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding can leave it a hair inside, above (below) p
    return (0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)


def bootstrap_interval(values, paired_with=None, n_boot=2000, seed=0):
    """The 95% percentile-bootstrap interval (lo, hi) of mean(values), resampling the prompts (Efron 1979).

    paired_with: a second model's values on the SAME prompts; then the interval is that of the mean
    difference mean(values - paired_with), both models resampled with the same prompts (the paired
    bootstrap), which removes the prompts' own difficulty from the comparison."""
    values = np.asarray(values, dtype=float)
    if paired_with is not None:
        values = values - np.asarray(paired_with, dtype=float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return (float(lo), float(hi))


# -----------------------------------------------------------------------------
# KL to a reference and reward-model scores


@torch.no_grad()
def kl_to_reference(policy, ref, tok, prompts, max_new_tokens=48, batch_size=256, generator=None, temperature=1.0,
                    answers=None):
    r"""KL(policy_T || ref_T) per answer, on answers sampled from the policy at `temperature`.

    $\mathrm{KL} \approx \frac{1}{N}\sum_i\sum_t [\log\pi(y_{i,t}|x_i,y_{i,<t}) - \log\pi_{ref}(y_{i,t}|x_i,y_{i,<t})]$,
    y_i ~ pi(.|x_i), summed over response tokens (with <|end|>), both distributions softmax(logits / T):
    the estimator of PPO's KL penalty at its rollout temperature. An unbiased estimate, exactly 0 when
    policy == ref; single samples can be negative. Both logprobs come from model.logprobs.
    answers: [Answer] the policy already sampled at `temperature` for these prompts (respond): scored
    instead of sampling new ones, which halves the cost when the samples exist anyway.
    """
    device = next(policy.parameters()).device
    total = 0.0
    ids = [prompt_ids(policy, tok, messages, max_new_tokens) for messages in prompts]
    for batch in length_batches([len(row) for row in ids], batch_size):  # the sum is order-free
        with autocast(device):
            if answers is None:
                gen = generate(policy, [ids[i] for i in batch], max_new_tokens, temperature=temperature,
                               stop_id=tok.end_id, pad_id=tok.pad_id, generator=generator)
                tokens, mask, P = gen.tokens, gen.attention_mask, gen.prompt_width
            else:  # generate's layout: prompts left-padded to width P, then the answers, right-padded
                prompts_ids, prompts_mask = pad_rows([ids[i] for i in batch], tok.pad_id, side="left")
                answer_ids, answer_mask = pad_rows([list(answers[i].ids) for i in batch], tok.pad_id)
                tokens = torch.cat([prompts_ids, answer_ids], dim=1).to(device)
                mask, P = torch.cat([prompts_mask, answer_mask], dim=1).to(device), prompts_ids.size(1)
            # start=P-1: entry 0 scores the first response token
            diff = (logprobs(policy, tokens, mask, temperature, start=P - 1)
                    - logprobs(ref, tokens, mask, temperature, start=P - 1))  # (B, N)
        total += (diff * mask[:, P:]).sum().item()  # response tokens only
    return total / max(len(prompts), 1)


@torch.no_grad()
def score_responses(rm, tok, prompts, responses, batch_size=128, raw=False):
    """Reward-model scores (N,) of responses (strings) to prompts (message lists), on the CPU.

    rm: any module mapping (ids, attention_mask) to scores (B,); raw=True reads rm.raw_scores
    (a reward.RewardModel's scores before normalisation).
    """
    rm.eval()
    device = next(rm.parameters(), torch.zeros(())).device  # a rule-based rm may have no parameters
    max_len = rm.config.block_size if hasattr(rm, "config") else None
    rows = [render_response(tok, p, r, max_len) for p, r in zip(prompts, responses)]
    scores = torch.zeros(len(rows))
    for batch in length_batches([len(row) for row in rows], batch_size):
        ids, mask = pad_rows([rows[i] for i in batch], tok.pad_id)
        with autocast(device):
            fn = rm.raw_scores if raw else rm
            scores[batch] = fn(ids.to(device), mask.to(device)).float().cpu()
    return scores


def gold_correlation(rm, tok, examples, answers):
    """Pearson correlation of RM score with gold score over the answers [Answer] that ended."""
    kept = [(ex, a.text) for ex, a in zip(examples, answers) if a.ended]
    if len(kept) < 2:
        return float("nan")
    rm_scores = score_responses(rm, tok, [ex.messages for ex, _ in kept], [text for _, text in kept])
    gold = torch.tensor([tasks.grade(ex, text) for ex, text in kept])
    return torch.corrcoef(torch.stack([rm_scores, gold]))[0, 1].item()


# -----------------------------------------------------------------------------
# Best-of-N: the simplest optimiser of a reward model (Gao et al. 2022, arXiv 2210.10760)


def sample_and_score(policy, rm, tok, prompts, n, temperature=1.0, max_new_tokens=48, generator=None):
    """n answers per prompt and their RM scores: (answers [P][n] of Answer, scores (P, n)).

    An answer that never ended gets score -inf: the reward model would read an <|end|> it never wrote.
    """
    flat = respond(policy, tok, prompts, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=256,
                   generator=generator, n=n)
    scores = score_responses(rm, tok, [p for p in prompts for _ in range(n)], [a.text for a in flat])
    ended = torch.tensor([a.ended for a in flat])
    scores = scores.masked_fill(~ended, float("-inf")).view(len(prompts), n)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))], scores


def bon_respond(policy, rm, tok, prompts, n=16, temperature=1.0, max_new_tokens=48, generator=None):
    """Best-of-n answers [Answer], a drop-in for respond."""
    answers, scores = sample_and_score(policy, rm, tok, prompts, n, temperature, max_new_tokens, generator)
    return [row[j] for row, j in zip(answers, scores.argmax(dim=1).tolist())]


def best_of_n(policy, rm, tok, examples, ns=(1, 2, 4, 8, 16), temperature=1.0, max_new_tokens=48,
              generator=None):
    """Gold and RM score of the best of the first N samples, for each N; max(ns) samples drawn once.

    Returns {"bon/<N>/gold", "bon/<N>/rm" (over picks that ended), "bon/<N>/accuracy", "bon/<N>/ended",
    "gold_correlation" (on all the samples)}. Gold rising with N means the RM tracks the gold rule;
    RM rising while gold falls is over-optimisation (Gao et al. 2022).
    """
    answers, scores = sample_and_score(policy, rm, tok, [ex.messages for ex in examples], max(ns),
                                       temperature, max_new_tokens, generator)
    results = {}
    for n in ns:
        picks = scores[:, :n].argmax(dim=1).tolist()  # all -inf: the first sample
        chosen = [(ex, row[j]) for ex, row, j in zip(examples, answers, picks)]
        picked_scores = scores[:, :n].max(dim=1).values
        finite = picked_scores.isfinite()
        results[f"bon/{n}/gold"] = sum(tasks.grade(ex, a.text, a.ended) for ex, a in chosen) / len(chosen)
        results[f"bon/{n}/rm"] = picked_scores[finite].mean().item() if finite.any() else float("nan")
        results[f"bon/{n}/accuracy"] = sum(tasks.is_correct(ex, a.text, a.ended) for ex, a in chosen) / len(chosen)
        results[f"bon/{n}/ended"] = sum(a.ended for _, a in chosen) / len(chosen)
    flat_examples = [ex for ex in examples for _ in range(max(ns))]
    results["gold_correlation"] = gold_correlation(rm, tok, flat_examples, [a for row in answers for a in row])
    return results
