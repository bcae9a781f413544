"""
reward.py: a reward model learned from (simulated) human comparisons, and best-of-N sampling.

The first half of RLHF (Stiennon et al. 2020; Ouyang et al. 2022, "InstructGPT"): sample several
answers per prompt from the SFT model, let an annotator say which of two is better, and train a
scalar model r(prompt, response) so that the Bradley-Terry probability sigmoid(r_chosen - r_rejected)
fits the labels. The built-in world's annotator is tasks.Labeler (the gold grader plus noise), so
we can measure how well the reward model learned the *hidden* rule, not only the noisy labels.

  python reward.py                          # SFT samples -> labels -> RM -> best-of-N (3 min 36 s on 2 cores)
  python reward.py --model-free             # pairs from demonstrations (fast, no sampling)
  python reward.py --data-file prefs.jsonl  # your preference JSONL (HH-RLHF transcripts too)

Reads <out_dir>/tokenizer/ and <out_dir>/sft/model.pt. Writes <out_dir>/preferences/{train,heldout}.jsonl,
<out_dir>/reward/model.pt (read it with load_reward_model), metrics.jsonl and eval.json.

References: OpenAI lm-human-preferences (OAI: head init, reward normalisation); "The N+ implementation
details of RLHF with PPO" (arXiv 2403.17031, N+: score at the end-of-sequence token, normalisation);
Llama 2 (Touvron et al. 2023, arXiv 2307.09288: the optional margin); Gao et al. 2022, "Scaling laws
for reward model overoptimization" (arXiv 2210.10760: best-of-N as the simplest optimiser of an RM).
Deviations, for a CPU-sized run:
  - the reward model has the SFT model's size (InstructGPT used a 6B RM for a 175B policy);
  - as InstructGPT, all comparisons of a prompt share a batch; we weigh each comparison the same
    (InstructGPT averages them per prompt);
  - OAI normalises with a gain and bias on the head; our two buffers score_mean / score_std do the same.

The likelihood term. A head on the last hidden state must learn to *check* an answer ("is Rome Ezra
Dyer's city? is 42 the sum?") from comparisons alone. With 4,000 prompts it learned the form of a good
answer (short, the right kind of word) but not its truth: 76% of held-out pairs ranked as the gold rule
does, and best-of-16 fell below N = 1. The trunk's LM head already holds that knowledge: the SFT
model's own log p(answer | prompt) ranks 96% of those pairs right. So the score adds w * log p(answer |
prompt) under the reward model's own trunk, w a trained scalar starting at 1: the trunk stays a
language model the head can lean on, and training moves both. On the default run: 93% held-out gold
accuracy, and best-of-N gold rises with N (0.47 at N = 1, 0.81 at N = 16). --likelihood false gives
the plain head. The idea is the one behind DPO's implicit reward (Rafailov et al. 2023, "Your language
model is secretly a reward model") and generative verifiers that read a reward off the LM's own token
probabilities (Zhang et al. 2024, arXiv 2408.15240). The sum over tokens favours short answers, as the
gold rule does; on data that prefers long answers, turn it off or expect the RM to learn against it.
"""

import copy
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import sft
import tasks
from common import barrier, cleanup_distributed, cli, fit, seed_everything, setup_distributed
from data import (Tokenizer, encode_content, load_preferences_jsonl, render_chat, truncate,
                  write_preferences_jsonl)
from model import (GPT, GPTConfig, autocast, load_checkpoint, load_state, logprobs,
                   logprobs_from_logits, save_checkpoint)


@dataclass
class RewardConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/ and sft/model.pt, writes preferences/ and reward/"""
    init: str = ""
    """SFT checkpoint that samples the answers and initialises the reward model (default: <out_dir>/sft/model.pt)"""
    data_file: str = ""
    """your preference JSONL instead of the built-in world (world-based metrics are then skipped)"""
    model_free: bool = False
    """built-in pairs from demonstrations (clean > wordy > mistake) instead of samples of the SFT model"""
    world_seed: int = 0
    """seed of the built-in world"""
    n_prompts: int = 4000
    """train prompts to sample answers for (without the likelihood term, 2000 -> 4000: held-out gold
    accuracy 71% -> 76%)"""
    n_heldout_prompts: int = 300
    """other train-split prompts whose pairs are held out for the accuracy"""
    samples_per_prompt: int = 4
    """answers sampled per prompt (K); every pair of distinct answers is compared, as InstructGPT"""
    sample_temperature: float = 1.0
    """sampling temperature of the SFT model"""
    max_new_tokens: int = 48
    """longest sampled answer"""
    labeler_temperature: float = 0.25
    """noise of the simulated annotator (0: always agrees with the gold rule)"""
    labeler_ties: bool = True
    """the annotator may answer "equally good" (equal gold); such pairs are not kept (else: a coin flip)"""
    demonstrations: bool = True
    """train prompts also compare the clean answer and a plausible mistake (tasks.demonstrate) with the samples"""
    likelihood: bool = True
    """add a learned multiple of the trunk's log p(answer | prompt) to the head's score (held-out gold
    accuracy 93% with it, 76% without; see "The likelihood term" above)"""
    margin: float = 0.0
    """margin m in -log sigmoid(r_chosen - r_rejected - m) (Llama 2); 0 is plain Bradley-Terry"""
    batch_size: int = 16
    """prompts per optimizer step, each with all its comparisons"""
    grad_accum: int = 1
    """micro-batches the step's prompts are split into (under torchrun: a multiple of the processes)"""
    epochs: float = 2.0
    """passes over the training pairs (one or two: small data overfits)"""
    max_steps: int = 0
    """optimizer steps (0: from epochs)"""
    max_len: int = 128
    """longest prompt + response; longer ones lose the start of their prompt"""
    lr: float = 3e-4
    """peak learning rate (1e-3 left the loss near ln 2 on a 4-layer SFT trunk; 3e-4 learned)"""
    warmup_steps: int = 10
    """linear warmup steps"""
    min_lr_frac: float = 0.1
    """the cosine schedule ends at lr * min_lr_frac"""
    weight_decay: float = 0.0
    """AdamW weight decay on 2-D weights"""
    grad_clip: float = 1.0
    """clip the gradient norm to this (0 = off)"""
    n_norm: int = 256
    """fresh SFT samples on train prompts that set the normalisation (mean 0, std 1)"""
    bon_n: int = 64
    """test prompts for best-of-N and the gold correlation (0 = skip)"""
    bon_ns: str = "1,2,4,8,16"
    """the N of best-of-N"""
    eval_every: int = 0
    """steps between held-out evaluations during training (0: only at the end)"""
    log_every: int = 20
    """steps between progress lines"""
    ckpt_every: int = 0
    """steps between checkpoints (0: only at the end)"""
    seed: int = 1337
    """seed of sampling, labels and training"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    resume: bool = False
    """continue from <out_dir>/reward/model.pt"""
    quiet: bool = False
    """no progress lines"""
    compile: bool = False
    """torch.compile the model for the training steps (pays off on a GPU; on a CPU the compile takes a minute)"""


# -----------------------------------------------------------------------------
# The model and its loss


def last_token_index(attention_mask):
    """Column of the last real token of each row. attention_mask (B, T) with 1 on real tokens -> (B,).

    Right padding [1 1 1 0 0] -> 2, left padding [0 0 1 1 1] -> 4: the score is never read at a pad.
    """
    if not bool((attention_mask.sum(dim=1) > 0).all()):
        raise ValueError("every row needs at least one real token")
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)  # (T,)
    return (positions * attention_mask.long()).argmax(dim=1)  # the largest position with mask 1


class RewardModel(nn.Module):
    """A GPT trunk with a scalar head read at the last real token (the <|end|> closing the answer);
    given the <|assistant|> id, plus a learned multiple of the trunk's log-likelihood of the answer.

    score = head(h_last) + w * log p_trunk(answer | prompt), w starting at likelihood_weight. Why the
    second term: see "The likelihood term" in the module docstring. Without assistant_id, w is 0.
    """

    def __init__(self, gpt, assistant_id=None, likelihood_weight=1.0):
        super().__init__()
        self.gpt = gpt  # its LM head scores the answer's tokens for the likelihood term
        self.config = gpt.config  # for model.save_checkpoint
        n_embd = gpt.config.n_embd
        self.head = nn.Linear(n_embd, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(n_embd + 1))  # OAI reward head init
        nn.init.zeros_(self.head.bias)
        # the answer is every token after the last <|assistant|>; -1: no likelihood term
        self.register_buffer("assistant_id", torch.tensor(-1 if assistant_id is None else assistant_id))
        self.likelihood_weight = nn.Parameter(torch.tensor(0.0 if assistant_id is None else likelihood_weight),
                                              requires_grad=assistant_id is not None)
        # normalisation, set after training by `normalise` (OAI; N+): scores = (raw - mean) / std
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def raw_scores(self, ids, attention_mask=None):
        """Un-normalised scores (B,) of token rows ids (B, T), padded on either side."""
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        hidden = self.gpt.hidden_states(ids, attention_mask)  # (B, T, C)
        last = hidden[torch.arange(ids.size(0), device=ids.device), last_token_index(attention_mask)]  # (B, C)
        scores = self.head(last).squeeze(-1).float()  # (B,)
        if self.assistant_id >= 0:
            scores = scores + self.likelihood_weight * self.answer_logprob(ids, attention_mask, hidden)
        return scores

    def answer_logprob(self, ids, attention_mask, hidden):
        """log p(answer | prompt) (B,): the trunk's LM head on `hidden`, summed over the tokens after
        the last <|assistant|> (the answer and its <|end|>), pads left out."""
        token_logprobs = logprobs_from_logits(self.gpt.lm_head(hidden[:, :-1]), ids[:, 1:])  # (B, T-1): token t+1
        positions = torch.arange(ids.size(1), device=ids.device)  # (T,)
        last_assistant = (positions * (ids == self.assistant_id).long()).argmax(dim=1)  # (B,)
        answer = (positions[1:] > last_assistant[:, None]) & attention_mask[:, 1:].bool()  # (B, T-1)
        return (token_logprobs * answer).sum(dim=1)

    def forward(self, ids, attention_mask=None):
        """Normalised scores (B,) = (raw - score_mean) / score_std."""
        return (self.raw_scores(ids, attention_mask) - self.score_mean) / self.score_std


def bradley_terry_loss(chosen, rejected, margin=0.0):
    r"""Bradley-Terry loss per pair: $-\log \sigma(r_c - r_r - m)$ (InstructGPT eq. 1; m: Llama 2's margin).

    chosen, rejected: (B,) scores; margin: a float or (B,). Returns (B,). F.logsigmoid is stable
    for large differences. Gradient: d/dr_c = -sigmoid(-(r_c - r_r - m)) = -d/dr_r.
    """
    return -F.logsigmoid(chosen - rejected - margin)


def render_scored(tok, prompt, response, max_len):
    """Token ids of prompt + assistant response, ending with <|end|>: what the reward model reads."""
    ids, loss_mask = render_chat(tok, prompt + [{"role": "assistant", "content": response}])
    return truncate(ids, loss_mask, max_len)[0]  # too long: cut the prompt's start, keep the response


def pad(rows, pad_id, side="right"):
    """Token lists of different lengths -> (ids, attention_mask), each (B, T) LongTensors."""
    B, T = len(rows), max(len(row) for row in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(T - len(row), T)
        ids[b, cols], mask[b, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


@torch.no_grad()
def score(rm, tok, prompts, responses, batch_size=128, raw=False):
    """Reward-model scores (N,) of responses (strings) to prompts (message lists), on the CPU."""
    rm.eval()
    device = next(rm.parameters()).device
    rows = [render_scored(tok, p, r, rm.config.block_size) for p, r in zip(prompts, responses)]
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad(rows[i:i + batch_size], tok.pad_id)
        with autocast(device):
            fn = rm.raw_scores if raw else rm
            out.append(fn(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def normalise(rm, tok, prompts, responses):
    """Set score_mean / score_std so the given (SFT) samples score mean 0, std 1 (OAI; N+).

    PPO's KL coefficient only means something on a fixed reward scale. Returns (mean, std).
    """
    if len(responses) < 2:
        raise ValueError(f"normalise needs at least 2 samples, got {len(responses)}")
    raw = score(rm, tok, prompts, responses, raw=True)
    mean, std = raw.mean(), raw.std().clamp(min=1e-6)
    rm.score_mean.fill_(mean.item())
    rm.score_std.fill_(std.item())
    return mean.item(), std.item()


def load_sft_policy(path, device):
    """The SFT model, with dropout forced off (the reward model must be deterministic)."""
    gpt, _ = load_checkpoint(path, device)
    if gpt.config.dropout > 0:
        state = gpt.state_dict()
        gpt = GPT(replace(gpt.config, dropout=0.0)).to(device)
        load_state(gpt, state, path)
    return gpt.eval()


def load_reward_model(path, device="cpu"):
    """Read a checkpoint written by reward.train (a RewardModel state_dict + the GPT config)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reward model at {path}: run reward.py first")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    rm = RewardModel(GPT(GPTConfig(**ckpt["config"])))
    load_state(rm, ckpt["model"], path)
    return rm.to(device).eval()


# -----------------------------------------------------------------------------
# Preference data (world.md section 6)


def policy_preferences(model, tok, examples, labeler, k=4, temperature=1.0, max_new_tokens=48,
                       generator=None, demonstrations=False):
    """Sample k answers per prompt from the SFT model, compare every pair of distinct answers.

    Returns [{"prompt", "chosen", "rejected", "family", "gold_chosen", "gold_rejected"}]. Duplicates
    are dropped (a pair of equal texts teaches nothing), and so are answers that never produced
    <|end|>: the reward model always reads an <|end|>, and PPO scores unterminated answers with a
    fixed penalty instead (the "EOS trick", OAI / N+). Pairs the labeler calls equally good (None)
    are not kept: their label would be a coin flip, pure noise for the RM and for DPO.
    demonstrations: the clean answer and the family's plausible mistake (what tasks.demonstrate
    writes) join each prompt's samples, so the labeler compares them too: every train prompt then
    teaches its family's typical mistake, also where all k samples were right (mixing human-written
    and model answers, as Anthropic's and OpenAI's comparison data did); only the train split uses it.
    """
    answers = sft.respond(model, tok, [ex.messages for ex in examples for _ in range(k)],
                          temperature=temperature, max_new_tokens=max_new_tokens, batch_size=256,
                          generator=generator)
    candidates = []  # (example, answer a, answer b): the comparisons to ask the labeler for
    for i, ex in enumerate(examples):
        texts = []
        for text, ended, _ in answers[i * k:(i + 1) * k]:
            if ended and text.strip() and text not in texts:
                texts.append(text)
        if demonstrations:
            texts += [text for text in dict.fromkeys((ex.answer, ex.mistake)) if text not in texts]
        candidates += [(ex, texts[a], texts[b])  # all K-choose-2 pairs (InstructGPT section 3.5)
                       for a in range(len(texts)) for b in range(a + 1, len(texts))]
    return labelled_pairs(labeler, candidates)


def labelled_pairs(labeler, candidates):
    """Ask the labeler about every candidate (example, a, b) in one call, keep the decided ones.

    labeler.label_pairs returns True (a is better), False (b is) or None ("equally good", or an AI
    judge that could not decide): no pair then. tasks.Labeler and rlaif.AIJudge both answer it."""
    pairs = []
    for (ex, a, b), first in zip(candidates, labeler.label_pairs(candidates)):
        if first is not None:
            pairs.append(_pair(ex, a, b) if first else _pair(ex, b, a))
    return pairs


def modelfree_preferences(examples, rng):
    """One pair per prompt without a model: (clean, mistake), (wordy, mistake) or (clean, wordy).

    The gold rule always prefers the first; tasks.demonstrate writes each kind of answer.
    """
    pairs = []
    for ex in examples:
        clean, wordy = tasks.demonstrate(ex, rng, 0.0, 0.0, 0.0), tasks.demonstrate(ex, rng, 0.0, 1.0, 0.0)
        pairs.append(_pair(ex, *rng.choice([(clean, ex.mistake), (wordy, ex.mistake), (clean, wordy)])))
    return pairs


def _pair(ex, chosen, rejected):
    return {"prompt": ex.messages, "chosen": chosen, "rejected": rejected, "family": ex.family,
            "gold_chosen": tasks.grade(ex, chosen), "gold_rejected": tasks.grade(ex, rejected)}


def label_agreement(pairs):
    """Share of pairs, among those the gold rule ranks, whose label agrees with it (nan if none).

    These are the labels we actually drew; tasks.labeler_agreement would draw fresh ones.
    """
    ranked = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    return sum(p["gold_chosen"] > p["gold_rejected"] for p in ranked) / len(ranked) if ranked else float("nan")


# -----------------------------------------------------------------------------
# Metrics and best-of-N


def evaluate_reward(rm, tok, pairs):
    """Accuracy against the labels, accuracy against the gold rule (pairs it ranks), margin, spread."""
    n = len(pairs)
    scores = score(rm, tok, [p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] +
                   [p["rejected"] for p in pairs])
    chosen, rejected = scores[:n], scores[n:]
    results = {"accuracy": (chosen > rejected).float().mean().item(),
               "margin": (chosen - rejected).mean().item(),
               "score_mean": scores.mean().item(), "score_std": scores.std().item()}
    if n and "gold_chosen" in pairs[0]:
        gold = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs])
        agree = ((chosen - rejected) * gold > 0).float()  # the RM orders the pair as the gold rule does
        results["gold_accuracy"] = agree[gold != 0].mean().item()  # nan when the rule ranks no pair
        for family in sorted({p["family"] for p in pairs}):
            in_family = (gold != 0) & torch.tensor([p["family"] == family for p in pairs])
            if in_family.any():
                results[f"gold_accuracy/{family}"] = agree[in_family].mean().item()
    return results


@torch.no_grad()
def logprob_baseline(policy, tok, pairs, batch_size=128):
    """Gold accuracy of ranking each pair by the SFT model's own log p(response + <|end|> | prompt).

    A baseline that needs no training: a reward model far above it learned more than the SFT model
    already believed; one near it shows the knowledge of its trunk is the limit.
    """
    device = next(policy.parameters()).device
    rows, n_response = [], []
    for p in pairs:
        for text in (p["chosen"], p["rejected"]):
            rows.append(render_scored(tok, p["prompt"], text, policy.config.block_size))
            n_response.append(len(encode_content(tok, text)) + 1)  # the answer's tokens and its <|end|>
    sums = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad(rows[i:i + batch_size], tok.pad_id)
        token_logprobs = logprobs(policy, ids.to(device), mask.to(device)).float().cpu()  # (B, T-1)
        for b, row in enumerate(rows[i:i + batch_size]):  # the last n_response targets of the row
            sums.append(token_logprobs[b, len(row) - 1 - n_response[i + b]:len(row) - 1].sum().item())
    gold = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs])
    diff = torch.tensor(sums[0::2]) - torch.tensor(sums[1::2])
    return (diff * gold > 0)[gold != 0].float().mean().item()


def gold_correlation(rm, tok, examples, answers):
    """Pearson correlation of RM score with gold score over answers [(text, ended, ...)] that ended."""
    kept = [(ex, text) for ex, (text, ended, *_) in zip(examples, answers) if ended]
    if len(kept) < 2:
        return float("nan")
    rm_scores = score(rm, tok, [ex.messages for ex, _ in kept], [text for _, text in kept])
    gold = torch.tensor([tasks.grade(ex, text) for ex, text in kept])
    return torch.corrcoef(torch.stack([rm_scores, gold]))[0, 1].item()


def sample_and_score(policy, rm, tok, prompts, n, temperature=1.0, max_new_tokens=48, generator=None):
    """n answers per prompt and their RM scores: (answers [P][n] of (text, ended, n_tokens), scores (P, n)).

    An answer that never ended gets score -inf: the reward model would read an <|end|> it never wrote.
    """
    flat = sft.respond(policy, tok, [p for p in prompts for _ in range(n)], temperature=temperature,
                       max_new_tokens=max_new_tokens, batch_size=256, generator=generator)
    scores = score(rm, tok, [p for p in prompts for _ in range(n)], [text for text, _, _ in flat])
    ended = torch.tensor([e for _, e, _ in flat])
    scores = scores.masked_fill(~ended, float("-inf")).view(len(prompts), n)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))], scores


def bon_respond(policy, rm, tok, prompts, n=16, temperature=1.0, max_new_tokens=48, generator=None):
    """Best-of-n answers [(text, ended, n_tokens)], a drop-in for sft.respond."""
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
        results[f"bon/{n}/gold"] = sum(tasks.grade(ex, t, e) for ex, (t, e, _) in chosen) / len(chosen)
        results[f"bon/{n}/rm"] = picked_scores[finite].mean().item() if finite.any() else float("nan")
        results[f"bon/{n}/accuracy"] = sum(tasks.is_correct(ex, t, e) for ex, (t, e, _) in chosen) / len(chosen)
        results[f"bon/{n}/ended"] = sum(e for _, (_, e, _) in chosen) / len(chosen)
    flat_examples = [ex for ex in examples for _ in range(max(ns))]
    results["gold_correlation"] = gold_correlation(rm, tok, flat_examples, [a for row in answers for a in row])
    return results


# -----------------------------------------------------------------------------
# Training


def group_by_prompt(tok, pairs, max_len):
    """[(rows, comparisons)] per prompt: the token rows of its distinct responses, and (chosen, rejected)
    indices into them. InstructGPT (section 3.5) trains all comparisons of a prompt as one batch
    element: shuffled into the dataset, a response seen in K-1 comparisons made the RM overfit. Scoring
    each response once is also cheaper: with K=4, about 2.3 times fewer rows than two per pair."""
    groups = {}
    for p in pairs:
        texts, comparisons = groups.setdefault(json.dumps(p["prompt"]), ([], []))
        for text in (p["chosen"], p["rejected"]):
            if text not in texts:
                texts.append(text)
        comparisons.append((texts.index(p["chosen"]), texts.index(p["rejected"])))
    prompts = {json.dumps(p["prompt"]): p["prompt"] for p in pairs}
    return [([render_scored(tok, prompts[key], text, max_len) for text in texts], comparisons)
            for key, (texts, comparisons) in groups.items()]


def fit_reward_model(rm, tok, pairs, cfg, ckpt_path, heldout=None, extra=None):
    """Train on pairs [{"prompt", "chosen", "rejected"}] with common.fit. Returns the history."""
    groups = group_by_prompt(tok, pairs, min(cfg.max_len, rm.config.block_size))
    if not cfg.max_steps:
        cfg.max_steps = max(1, math.ceil(cfg.epochs * len(groups) / cfg.batch_size))

    def next_batch(step):
        epoch, start = divmod(step * cfg.batch_size, len(groups))
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        picks = [order[i % len(groups)].item() for i in range(start, start + cfg.batch_size)]  # wraps around
        batches = []
        for k in range(cfg.grad_accum):  # the step's prompts in grad_accum micro-batches
            rows, chosen, rejected = [], [], []
            for g in picks[k::cfg.grad_accum]:
                group_rows, comparisons = groups[g]
                chosen += [len(rows) + c for c, _ in comparisons]
                rejected += [len(rows) + r for _, r in comparisons]
                rows += group_rows
            ids, mask = pad(rows, tok.pad_id)  # chosen and rejected answers in ONE forward pass
            batches.append({"input_ids": ids, "attention_mask": mask, "chosen": torch.tensor(chosen),
                            "rejected": torch.tensor(rejected), "n": len(chosen), "n_tokens": mask.sum()})
        return batches

    def loss_fn(model, batch):
        scores = model(batch["input_ids"], batch["attention_mask"])  # (R,) one per distinct response
        chosen, rejected = scores[batch["chosen"]], scores[batch["rejected"]]  # (B,) per comparison
        # every comparison weighs the same; InstructGPT divides each prompt's sum by K-choose-2
        loss = bradley_terry_loss(chosen, rejected, cfg.margin).sum()
        return loss, {"accuracy": (chosen > rejected).float().sum(), "margin": (chosen - rejected).sum()}

    def evaluate(model):  # the headline numbers, for the progress line
        return {f"heldout_{k}": v for k, v in evaluate_reward(model, tok, heldout).items() if "/" not in k}

    return fit(rm, cfg, next_batch, loss_fn, ckpt_path, evaluate if heldout else None, extra=extra,
               name="reward | ")


def preference_data(cfg, policy, tok, generator, judge=None):
    """(train pairs, held-out pairs): the user's file, or the built-in world's, written to <out_dir>/preferences/.
    judge: a labeler to use instead of the simulated human (rlaif.AIJudge: RLAIF); it labels the
    model-free pairs too, which are otherwise ordered by construction."""
    if cfg.data_file:
        pairs = load_preferences_jsonl(cfg.data_file)
        random.Random(cfg.seed).shuffle(pairs)
        n_heldout = max(1, len(pairs) // 10)
        return pairs[n_heldout:], pairs[:n_heldout]
    world = tasks.make_world(cfg.world_seed)
    splits = []
    for name, n, seed in (("train", cfg.n_prompts, cfg.seed + 1), ("heldout", cfg.n_heldout_prompts, cfg.seed + 2)):
        examples = tasks.make_examples(world, "train", n, seed=seed)  # train-split prompts, not SFT's
        if cfg.model_free:
            pairs = modelfree_preferences(examples, random.Random(seed))
            if judge is not None:
                pairs = labelled_pairs(judge, [(ex, p["chosen"], p["rejected"]) for ex, p in zip(examples, pairs)])
        else:
            labeler = judge or tasks.Labeler(cfg.labeler_temperature, seed=seed, ties=cfg.labeler_ties)
            pairs = policy_preferences(policy, tok, examples, labeler, cfg.samples_per_prompt,
                                       cfg.sample_temperature, cfg.max_new_tokens, generator,
                                       demonstrations=cfg.demonstrations and name == "train")
        if not pairs:
            raise RuntimeError(f"no {name} preference pairs: the SFT model produced no two distinct, ended "
                               "answers of different gold score for any prompt; train SFT longer, use "
                               "--model-free, or let the labeler flip coins on ties (--labeler-ties False)")
        write_preferences_jsonl(os.path.join(cfg.out_dir, "preferences", f"{name}.jsonl"), pairs)
        splits.append(pairs)
    return splits


def train(cfg, judge=None):
    """Preferences, reward model, normalisation, evaluation. Returns (reward model, tokenizer, history).
    judge: an AI labeler instead of the simulated human (see preference_data; rlaif.py passes one)."""
    t0 = time.time()
    rank, _, cfg.device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    seed_everything(cfg.seed + rank)
    say = (lambda *a: None) if cfg.quiet or rank != 0 else print
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    policy = load_sft_policy(cfg.init or os.path.join(cfg.out_dir, "sft", "model.pt"), cfg.device)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)

    if rank == 0:
        train_pairs, heldout_pairs = preference_data(cfg, policy, tok, generator, judge)
    barrier()  # under torchrun rank 0 makes the pairs and writes them to <out_dir>/preferences/: the others read them
    if rank != 0:
        files = [os.path.join(cfg.out_dir, "preferences", f"{split}.jsonl") for split in ("train", "heldout")]
        train_pairs, heldout_pairs = (preference_data(cfg, policy, tok, generator) if cfg.data_file
                                      else [load_preferences_jsonl(f) for f in files])
    t_data = time.time()
    say(f"preferences: {len(train_pairs)} train pairs, {len(heldout_pairs)} held out ({time.time() - t0:.0f}s)")
    if "gold_chosen" in train_pairs[0]:
        say(f"labels agree with the gold rule on {label_agreement(train_pairs):.1%} of the pairs it ranks; "
            f"it ranks {sum(p['gold_chosen'] != p['gold_rejected'] for p in train_pairs)}")

    rm = RewardModel(copy.deepcopy(policy), tok.assistant_id if cfg.likelihood else None)  # from SFT, head fresh (OAI)
    rm = rm.to(cfg.device)
    ckpt_path = os.path.join(cfg.out_dir, "reward", "model.pt")
    history = fit_reward_model(rm, tok, train_pairs, cfg, ckpt_path, heldout_pairs if cfg.eval_every else None,
                               extra={"stage_config": asdict(cfg)})
    if rank != 0:  # normalisation, evaluation and the final checkpoint: rank 0's
        return rm, tok, history

    t_train = time.time()
    # normalisation on fresh SFT samples of train prompts (OAI; N+); unterminated ones are left out
    prompts = list({json.dumps(p["prompt"]): p["prompt"] for p in train_pairs}.values())[:cfg.n_norm]
    answers = sft.respond(policy, tok, prompts, temperature=cfg.sample_temperature,
                          max_new_tokens=cfg.max_new_tokens, batch_size=256, generator=generator)
    ended = [(p, text) for p, (text, e, _) in zip(prompts, answers) if e]
    if len(ended) < 2:  # a barely trained SFT model: better a rough scale than none
        ended = [(p, text) for p, (text, _, _) in zip(prompts, answers)]
    mean, std = normalise(rm, tok, [p for p, _ in ended], [t for _, t in ended])
    say(f"normalised on {len(ended)} SFT samples: raw score mean {mean:.3f}, std {std:.3f}")

    results = {f"heldout/{k}": v for k, v in evaluate_reward(rm, tok, heldout_pairs).items()}
    if "gold_chosen" in train_pairs[0]:
        results["labels/gold_agreement"] = label_agreement(train_pairs)
        results["labels/heldout_gold_agreement"] = label_agreement(heldout_pairs)
        results["heldout/sft_logprob_gold_accuracy"] = logprob_baseline(policy, tok, heldout_pairs)
    if not cfg.data_file and cfg.bon_n:
        test = tasks.make_examples(tasks.make_world(cfg.world_seed), "test", cfg.bon_n, seed=1)
        ns = tuple(int(n) for n in cfg.bon_ns.split(","))
        results.update(best_of_n(policy, rm, tok, test, ns, cfg.sample_temperature, cfg.max_new_tokens, generator))
    results["time_s"] = time.time() - t0
    results.update({"time/data_s": t_data - t0, "time/train_s": t_train - t_data, "time/eval_s": time.time() - t_train})
    history.append({"step": cfg.max_steps, **results})

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # keep fit's optimizer state for --resume
    save_checkpoint(ckpt_path, rm, {**{k: v for k, v in ckpt.items() if k not in ("model", "config")},
                                    "normalised": True, "results": results})
    with open(os.path.join(cfg.out_dir, "reward", "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    for key, value in results.items():
        if "/gold_accuracy/" not in key:
            say(f"  {key:28} {value:.4g}")
    return rm, tok, history


if __name__ == "__main__":
    train(cli(RewardConfig))
    cleanup_distributed()
