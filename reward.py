"""
reward.py: a reward model learned from comparisons, the first half of RLHF.

Given (prompt, chosen, rejected) pairs (preferences.py makes them), train a scalar model r(prompt,
response) so that the Bradley-Terry probability sigmoid(r_chosen - r_rejected) fits the labels
(Stiennon et al. 2020; Ouyang et al. 2022, "InstructGPT"). The built-in world's labels come from a
simulated annotator with a hidden rule, so we measure how well the model learned that rule, not only
the noisy labels; best-of-N sampling (evaluate.best_of_n) shows whether optimising it helps.

  python reward.py                          # <out_dir>/preferences/ (made first if missing) -> RM -> best-of-N
  python reward.py --likelihood false       # the plain head on the last token, the textbook model
  python reward.py --data-file prefs.jsonl  # your preference JSONL (HH-RLHF transcripts too)

Reads <out_dir>/tokenizer/, sft/model.pt and preferences/{train,heldout}.jsonl. Writes
<out_dir>/reward/model.pt (read it with load_reward_model), metrics.jsonl and eval.json.

References: OpenAI lm-human-preferences (OAI: head init, reward normalisation); "The N+ implementation
details of RLHF with PPO" (arXiv 2403.17031, N+: score at the end-of-sequence token, normalisation);
Llama 2 (arXiv 2307.09288: the optional margin); Gao et al. 2022 (arXiv 2210.10760: best-of-N).
Departures:
  1. The score is head(h_last) + w * log p(answer | prompt) under the model's own trunk, w a trained
     scalar starting at 1 (--likelihood false: the head alone). A head on the last hidden state must
     learn to check an answer from comparisons alone; the trunk's LM head already holds much of that
     knowledge. The idea is DPO's implicit reward (Rafailov et al. 2023) and generative verifiers
     (Zhang et al. 2024, arXiv 2408.15240). The two parts know different things: the likelihood term
     starts as the SFT model's own judgement (right answers over wrong ones, but also the demonstrators'
     habitual "Hope this helps!" over the bare answer), and the head, trained with the trunk, learns
     what only the comparisons show (the labelers' taste for the bare answer). eval.json sets the
     trained score beside the SFT likelihood alone ("sft_logprob") and the untrained model ("rm_init").
  2. The reward model has the SFT model's size (InstructGPT: a 6B RM for a 175B policy).
  3. All comparisons of a prompt share a batch (InstructGPT); each comparison weighs the same
     (InstructGPT averages them per prompt).
  4. OAI normalises with a gain and bias on the head; two buffers score_mean / score_std do the same.
"""

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import preferences
import tasks
from common import (cleanup_distributed, cli, epoch_batch, fit, rank0_first, rank_and_world_size, seed_everything,
                    setup_distributed)
from data import cut_summary, pad_rows, render_responses
from evaluate import best_of_n, respond, score_responses
from model import GPT, GPTConfig, load_policy, load_state, logprobs_from_logits, row_sums, save_checkpoint
from tokenizer import Tokenizer


@dataclass
class RewardConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/, sft/model.pt and preferences/, writes reward/"""
    init: str = ""
    """SFT checkpoint that initialises the reward model (default: <out_dir>/sft/model.pt)"""
    data_file: str = ""
    """your preference JSONL instead of <out_dir>/preferences/ (world-based metrics are then skipped)"""
    strict: bool = False
    """refuse the data file at its first bad record (default: skip bad records with a file:line warning)"""
    world_seed: int = 0
    """seed of the built-in world (best-of-N prompts)"""
    likelihood: bool = True
    """add a learned multiple of the trunk's log p(answer | prompt) to the head's score (departure 1)"""
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
    sample_temperature: float = 1.0
    """temperature of the SFT samples for best-of-N"""
    norm_temperature: float = 0.7
    """temperature of the SFT samples that set the normalisation: PPO's rollout temperature, so that
    its rollouts score mean 0, std 1 at the start"""
    max_new_tokens: int = 48
    """longest sampled answer"""
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
    """seed of sampling and training"""
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

    score = head(h_last) + w * log p_trunk(answer | prompt), w starting at likelihood_weight
    (departure 1 in the module docstring). Without assistant_id, w is 0 and frozen.
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
        positions = torch.arange(ids.size(1), device=ids.device)  # (T,)
        last_assistant = (positions * (ids == self.assistant_id).long()).argmax(dim=1)  # (B,)
        answer = (positions[1:] > last_assistant[:, None]) & attention_mask[:, 1:].bool()  # (B, T-1): token t+1
        # the LM head on the answer's positions only (n, V): a sixth of a row here
        token_logprobs = logprobs_from_logits(self.gpt.lm_head(hidden[:, :-1][answer]), ids[:, 1:][answer])  # (n,)
        return row_sums(token_logprobs, answer)

    def forward(self, ids, attention_mask=None):
        """Normalised scores (B,) = (raw - score_mean) / score_std."""
        return (self.raw_scores(ids, attention_mask) - self.score_mean) / self.score_std

    def token_values(self, ids, attention_mask):
        """The head at EVERY position (B, T), normalised like the scores: PPO's critic reads V(prefix ids[:, :t+1])
        here. The likelihood term is left out: it scores a whole answer, not a prefix."""
        hidden = self.gpt.hidden_states(ids, attention_mask)  # (B, T, C)
        return (self.head(hidden).squeeze(-1).float() - self.score_mean) / self.score_std


def bradley_terry_loss(chosen, rejected, margin=0.0):
    r"""Bradley-Terry loss per pair: $-\log \sigma(r_c - r_r - m)$ (InstructGPT eq. 1; m: Llama 2's margin).

    chosen, rejected: (B,) scores; margin: a float or (B,). Returns (B,). F.logsigmoid is stable
    for large differences. Gradient: d/dr_c = -sigmoid(-(r_c - r_r - m)) = -d/dr_r.
    """
    return -F.logsigmoid(chosen - rejected - margin)


def normalise(rm, tok, prompts, responses):
    """Set score_mean / score_std so the given (SFT) samples score mean 0, std 1 (OAI; N+).

    PPO's KL coefficient only means something on a fixed reward scale. Returns (mean, std).
    """
    if len(responses) < 2:
        raise ValueError(f"normalise needs at least 2 samples, got {len(responses)}")
    raw = score_responses(rm, tok, prompts, responses, raw=True)
    mean, std = raw.mean(), raw.std().clamp(min=1e-6)
    rm.score_mean.fill_(mean.item())
    rm.score_std.fill_(std.item())
    return mean.item(), std.item()


def load_reward_model(path, device="cpu"):
    """Read a checkpoint written by reward.train (a RewardModel state_dict + the GPT config)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reward model at {path}: run reward.py first")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    rm = RewardModel(GPT(GPTConfig(**ckpt["config"])))
    load_state(rm, ckpt["model"], path)
    return rm.to(device).eval()


# -----------------------------------------------------------------------------
# How well it learned: held-out pairs against the labels and the gold rule


def evaluate_reward(rm, tok, pairs):
    """Accuracy against the labels, accuracy against the gold rule (pairs it ranks, and per family), margin, spread."""
    diff, scores = preferences.score_differences(rm, tok, pairs)
    results = {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item(),
               "score_mean": scores.mean().item(), "score_std": scores.std().item()}
    if pairs and "gold_chosen" in pairs[0]:
        results.update(preferences.gold_agreement(diff, pairs))
    return results


def agreement_table(results):
    """Markdown lines: the reward model's held-out gold agreement per family beside the baselines'."""
    names = [n for n in ("sft_logprob", "shorter", "rm_init") if f"heldout/baseline/{n}/gold_accuracy" in results]
    families = sorted(k.rsplit("/", 1)[1] for k in results if k.startswith("heldout/gold_accuracy/"))
    lines = ["| family | reward model | " + " | ".join(f"baseline: {n}" for n in names) + " |",
             "|" + "---|" * (2 + len(names))]
    for family, suffix in [("all", "")] + [(f, f"/{f}") for f in families]:
        cells = [results.get(f"heldout/gold_accuracy{suffix}")] + [
            results.get(f"heldout/baseline/{n}/gold_accuracy{suffix}") for n in names]
        lines.append(f"| {family} | " + " | ".join("—" if c is None else f"{100 * c:.1f}%" for c in cells) + " |")
    return lines


# -----------------------------------------------------------------------------
# Training


def group_by_prompt(tok, pairs, max_len, cuts=None):
    """[(rows, comparisons)] per prompt: the token rows of its distinct responses, and (chosen, rejected)
    indices into them. InstructGPT (section 3.5) trains all comparisons of a prompt as one batch
    element: shuffled into the dataset, a response seen in K-1 comparisons made the RM overfit. Scoring
    each response once is also cheaper: with K=4, about 2.3 times fewer rows than two per pair.
    cuts: a list that gets (cut, lost supervised tokens) per prompt (data.render_responses), for the log."""
    groups = {}
    for p in pairs:
        texts, comparisons = groups.setdefault(json.dumps(p["prompt"]), ([], []))
        for text in (p["chosen"], p["rejected"]):
            if text not in texts:
                texts.append(text)
        comparisons.append((texts.index(p["chosen"]), texts.index(p["rejected"])))
    prompts = {json.dumps(p["prompt"]): p["prompt"] for p in pairs}
    result = []
    for key, (texts, comparisons) in groups.items():  # a prompt's answers share one cut prompt
        rows, cut, lost = render_responses(tok, prompts[key], texts, max_len)
        result.append(([ids for ids, _ in rows], comparisons))  # a reward model reads every token: no loss mask
        if cuts is not None:
            cuts.append((cut, lost))
    return result


def fit_reward_model(rm, tok, pairs, cfg, ckpt_path, heldout=None, extra=None):
    """Train on pairs [{"prompt", "chosen", "rejected"}] with common.fit. Returns the history.

    cfg.max_steps 0: as many steps as cfg.epochs passes over the prompts take (cfg is not changed)."""
    cuts = []
    groups = group_by_prompt(tok, pairs, min(cfg.max_len, rm.config.block_size), cuts)
    if not cfg.quiet and rank_and_world_size()[0] == 0:
        print(f"reward: {len(groups)} prompts with their answers; {cut_summary(cuts, min(cfg.max_len, rm.config.block_size))}")
    cfg = replace(cfg, max_steps=cfg.max_steps or max(1, math.ceil(cfg.epochs * len(groups) / cfg.batch_size)))

    def next_batch(step):
        picks = epoch_batch(len(groups), cfg.batch_size, step, cfg.seed)
        batches = []
        for k in range(cfg.grad_accum):  # the step's prompts in grad_accum micro-batches
            rows, chosen, rejected = [], [], []
            for g in picks[k::cfg.grad_accum]:
                group_rows, comparisons = groups[g]
                chosen += [len(rows) + c for c, _ in comparisons]
                rejected += [len(rows) + r for _, r in comparisons]
                rows += group_rows
            ids, mask = pad_rows(rows, tok.pad_id)  # chosen and rejected answers in ONE forward pass
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


def normalise_on_samples(rm, policy, tok, train_pairs, cfg, generator):
    """Normalisation on fresh SFT samples of train prompts (OAI; N+); unterminated ones are left out."""
    prompts = list({json.dumps(p["prompt"]): p["prompt"] for p in train_pairs}.values())[:cfg.n_norm]
    answers = respond(policy, tok, prompts, temperature=cfg.norm_temperature,
                      max_new_tokens=cfg.max_new_tokens, batch_size=256, generator=generator)
    ended = [(p, a.text) for p, a in zip(prompts, answers) if a.ended]
    if len(ended) < 2:  # a barely trained SFT model: better a rough scale than none
        ended = [(p, a.text) for p, a in zip(prompts, answers)]
    return normalise(rm, tok, [p for p, _ in ended], [t for _, t in ended]), len(ended)


def train(cfg):
    """Reward model, normalisation, evaluation. Returns (reward model, tokenizer, history)."""
    t0 = time.time()
    rank, _, device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    cfg = replace(cfg, device=device)  # a copy: the caller's cfg is left as it was
    seed_everything(cfg.seed + rank)
    say = (lambda *a: None) if cfg.quiet or rank != 0 else print
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    policy = load_policy(cfg.init or os.path.join(cfg.out_dir, "sft", "model.pt"), device)
    train_pairs, heldout_pairs = rank0_first(  # the user's file, else <out_dir>/preferences/ (made if missing)
        lambda: preferences.load_pairs(cfg.out_dir, cfg.data_file, cfg.seed, cfg.init, cfg.world_seed, device,
                                         cfg.strict))
    world_labels = "gold_chosen" in train_pairs[0]  # pairs of the built-in world carry their gold scores
    say(f"reward: {len(train_pairs)} train pairs, {len(heldout_pairs)} held out")

    rm = RewardModel(copy.deepcopy(policy), tok.assistant_id if cfg.likelihood else None)  # from SFT, head fresh (OAI)
    rm = rm.to(device)
    rm_at_init = copy.deepcopy(rm) if rank == 0 and world_labels else None  # a baseline (see `baselines`)
    ckpt_path = os.path.join(cfg.out_dir, "reward", "model.pt")
    history = fit_reward_model(rm, tok, train_pairs, cfg, ckpt_path, heldout_pairs if cfg.eval_every else None,
                               extra={"stage_config": asdict(cfg)})
    if rank != 0:  # normalisation, evaluation and the final checkpoint: rank 0's
        return rm, tok, history

    t_train = time.time()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    (mean, std), n = normalise_on_samples(rm, policy, tok, train_pairs, cfg, generator)
    say(f"normalised on {n} SFT samples: raw score mean {mean:.3f}, std {std:.3f}")

    results = {f"heldout/{k}": v for k, v in evaluate_reward(rm, tok, heldout_pairs).items()}
    if world_labels:
        results["labels/gold_agreement"] = preferences.label_agreement(train_pairs)
        results["labels/heldout_gold_agreement"] = preferences.label_agreement(heldout_pairs)
        results.update({f"heldout/{k}": v for k, v in preferences.baselines(policy, tok, heldout_pairs, rm_at_init).items()})
    if world_labels and cfg.bon_n:
        test = tasks.make_examples(tasks.make_world(cfg.world_seed), "test", cfg.bon_n, seed=1)
        ns = tuple(int(n) for n in cfg.bon_ns.split(","))
        results.update(best_of_n(policy, rm, tok, test, ns, cfg.sample_temperature, cfg.max_new_tokens, generator))
    results["time_s"] = time.time() - t0
    results.update({"time/train_s": t_train - t0, "time/eval_s": time.time() - t_train})
    history.append({"step": history[-1]["step"] if history else 0, **results})

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
