"""
preferences.py: comparison data, the stage between SFT and preference learning.

InstructGPT's comparison data (Ouyang et al. 2022, section 3.5): sample several answers per prompt
from the SFT model, have an annotator say which of two is better, keep (prompt, chosen, rejected).
The built-in world's annotator is tasks.Labeler, the gold grader plus noise (docs/world.md); an AI
judge can take its place (judge.AIJudge: RLAIF). reward.py and dpo.py both read what this writes.

  python preferences.py                          # samples of the SFT model, labelled by the simulated human
  python preferences.py --model-free             # pairs from demonstrations (fast, no model)
  python preferences.py --data-file prefs.jsonl  # your preference JSONL (HH-RLHF transcripts too), split 90/10

Reads <out_dir>/tokenizer/ and <out_dir>/sft/model.pt. Writes <out_dir>/preferences/train.jsonl,
heldout.jsonl (one {"prompt", "chosen", "rejected"} per line; the built-in world's pairs also carry
"family", "gold_chosen", "gold_rejected", for measuring against the gold rule) and stats.json.

Departures from InstructGPT, at this size: the labeler may answer "equally good" and such pairs are
dropped (a coin-flip label is pure noise); answers that never ended are not compared (PPO scores them
with a fixed penalty instead); train prompts also compare a clean demonstration and the family's
plausible mistake, as Anthropic's and OpenAI's data mixed human-written and model answers.
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

import tasks
from common import cli, seed_everything
from data import encode_content, pad_rows, render_responses
from evaluate import respond, score_responses
from formats import load_preferences_jsonl, write_preferences_jsonl
from model import get_device, load_policy, logprobs
from tokenizer import Tokenizer

SPLITS = ("train", "heldout")


@dataclass
class PreferenceConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/ and sft/model.pt, writes preferences/"""
    init: str = ""
    """the policy that samples the answers (default: <out_dir>/sft/model.pt)"""
    data_file: str = ""
    """your preference JSONL instead of the built-in world: 10% of its pairs are held out"""
    strict: bool = False
    """refuse the data file at its first bad record (default: skip bad records with a file:line warning)"""
    model_free: bool = False
    """built-in pairs from demonstrations (clean > wordy > mistake) instead of samples of the SFT model"""
    world_seed: int = 0
    """seed of the built-in world"""
    n_prompts: int = 2000
    """train prompts to sample answers for (about 5 kept pairs each from the default SFT model)"""
    n_heldout_prompts: int = 600
    """other train-split prompts whose pairs are held out for the reward model's accuracy"""
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
    seed: int = 1337
    """seed of the prompts, the sampling and the labels"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    quiet: bool = False
    """no progress lines"""


# -----------------------------------------------------------------------------
# Pairs from a policy, from demonstrations, from a file


def make_pair(ex, chosen, rejected):
    """A preference record of the built-in world, with the gold scores of both answers."""
    return {"prompt": ex.messages, "chosen": chosen, "rejected": rejected, "family": ex.family,
            "gold_chosen": tasks.grade(ex, chosen), "gold_rejected": tasks.grade(ex, rejected)}


def labelled_pairs(labeler, candidates):
    """Ask the labeler about every candidate (example, a, b) in one call, keep the decided ones.

    labeler.label_pairs returns True (a is better), False (b is) or None ("equally good", or an AI
    judge that could not decide): no pair then. tasks.Labeler and judge.AIJudge both answer it."""
    pairs = []
    for (ex, a, b), first in zip(candidates, labeler.label_pairs(candidates)):
        if first is not None:
            pairs.append(make_pair(ex, a, b) if first else make_pair(ex, b, a))
    return pairs


def policy_preferences(model, tok, examples, labeler, k=4, temperature=1.0, max_new_tokens=48,
                       generator=None, demonstrations=False):
    """Sample k answers per prompt from the policy, compare every pair of distinct answers.

    Returns [{"prompt", "chosen", "rejected", "family", "gold_chosen", "gold_rejected"}]. Duplicates
    are dropped (a pair of equal texts teaches nothing), and so are answers that never produced
    <|end|>: the reward model always reads an <|end|>, and PPO scores unterminated answers with a
    fixed penalty instead (the "EOS trick", OAI / N+). Pairs the labeler calls equally good (None)
    are not kept. demonstrations: the clean answer and the family's plausible mistake join each
    prompt's samples, so every prompt teaches its family's typical mistake, also where all k
    samples were right.
    """
    answers = respond(model, tok, [ex.messages for ex in examples], temperature=temperature,
                      max_new_tokens=max_new_tokens, batch_size=256, generator=generator, n=k)
    candidates = []  # (example, answer a, answer b): the comparisons to ask the labeler for
    for i, ex in enumerate(examples):
        texts = []
        for answer in answers[i * k:(i + 1) * k]:
            if answer.ended and answer.text.strip() and answer.text not in texts:
                texts.append(answer.text)
        if demonstrations:
            texts += [text for text in dict.fromkeys((ex.answer, ex.mistake)) if text not in texts]
        candidates += [(ex, texts[a], texts[b])  # all K-choose-2 pairs (InstructGPT section 3.5)
                       for a in range(len(texts)) for b in range(a + 1, len(texts))]
    return labelled_pairs(labeler, candidates)


def modelfree_preferences(examples, rng):
    """One pair per prompt without a model: (clean, mistake), (wordy, mistake) or (clean, wordy).

    The gold rule always prefers the first; tasks.demonstrate writes each kind of answer.
    """
    pairs = []
    for ex in examples:
        clean, wordy = tasks.demonstrate(ex, rng, 0.0, 0.0, 0.0), tasks.demonstrate(ex, rng, 0.0, 1.0, 0.0)
        pairs.append(make_pair(ex, *rng.choice([(clean, ex.mistake), (wordy, ex.mistake), (clean, wordy)])))
    return pairs


def split_file(path, seed, heldout_frac=0.1, strict=False):
    """(train pairs, held-out pairs) of a user's preference file: shuffled with `seed`, 10% held out.
    strict: refuse the file at its first bad record (formats.load_preferences_jsonl)."""
    pairs = load_preferences_jsonl(path, strict)
    random.Random(seed).shuffle(pairs)
    n_heldout = max(1, int(len(pairs) * heldout_frac))
    return pairs[n_heldout:], pairs[:n_heldout]


def label_agreement(pairs):
    """Share of pairs, among those the gold rule ranks, whose label agrees with it (nan if none).

    These are the labels we actually drew; tasks.labeler_agreement would draw fresh ones.
    """
    ranked = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    return sum(p["gold_chosen"] > p["gold_rejected"] for p in ranked) / len(ranked) if ranked else float("nan")


# -----------------------------------------------------------------------------
# Ranking the pairs against the gold rule, and what ranks them with no training


def gold_agreement(diff, pairs):
    """How often score differences diff (N,) (chosen minus rejected) order the pairs as the gold rule does,
    over the pairs the rule ranks; a tie counts half (a coin flip). {"gold_accuracy", "gold_accuracy/<family>"}."""
    gold = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs], dtype=torch.float)
    agree = torch.where(diff == 0, 0.5, (diff * gold > 0).float())
    ranked = gold != 0
    results = {"gold_accuracy": agree[ranked].mean().item()}  # nan when the rule ranks no pair
    for family in sorted({p["family"] for p in pairs}):
        in_family = ranked & torch.tensor([p["family"] == family for p in pairs])
        if in_family.any():
            results[f"gold_accuracy/{family}"] = agree[in_family].mean().item()
    return results


def score_differences(rm, tok, pairs):
    """(rm's score of each pair's chosen answer minus its rejected one's (N,), all 2N scores)."""
    scores = score_responses(rm, tok, [p["prompt"] for p in pairs] * 2,
                             [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    return scores[:len(pairs)] - scores[len(pairs):], scores


@torch.no_grad()
def logprob_differences(policy, tok, pairs, batch_size=128):
    """log p(chosen + <|end|> | prompt) - log p(rejected + <|end|> | prompt) under the SFT model, (N,)."""
    device = next(policy.parameters()).device
    rows = [row for p in pairs  # chosen and rejected after one shared (cut) prompt
            for row in render_responses(tok, p["prompt"], [p["chosen"], p["rejected"]], policy.config.block_size)[0]]
    sums = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_rows([ids for ids, _ in rows[i:i + batch_size]], tok.pad_id)
        answer, _ = pad_rows([loss_mask for _, loss_mask in rows[i:i + batch_size]], 0)  # 1 on answer + <|end|>
        token_logprobs = logprobs(policy, ids.to(device), mask.to(device)).float().cpu()  # (B, T-1): entry t scores t+1
        sums += (token_logprobs * answer[:, 1:]).sum(dim=1).tolist()
    return torch.tensor(sums[0::2]) - torch.tensor(sums[1::2])


def baselines(policy, tok, pairs, rm_at_init=None):
    """What ranks the pairs with no training on them, on the same pairs, against the gold rule:
    "sft_logprob" (the SFT model's own likelihood of each answer), "shorter" (the shorter answer in
    tokens wins) and "rm_init" (the reward model before training). A reward model that learned from
    the comparisons beats all three. {"baseline/<name>/gold_accuracy[/<family>]"}."""
    lengths = [(len(encode_content(tok, p["chosen"])), len(encode_content(tok, p["rejected"]))) for p in pairs]
    diffs = {"sft_logprob": logprob_differences(policy, tok, pairs),
             "shorter": torch.tensor([float(r - c) for c, r in lengths])}
    if rm_at_init is not None:
        diffs["rm_init"] = score_differences(rm_at_init, tok, pairs)[0]
    return {f"baseline/{name}/{k}": v for name, diff in diffs.items() for k, v in gold_agreement(diff, pairs).items()}


# -----------------------------------------------------------------------------
# The stage


def paths(out_dir):
    """{split: <out_dir>/preferences/<split>.jsonl}."""
    return {split: os.path.join(out_dir, "preferences", f"{split}.jsonl") for split in SPLITS}


def load_pairs(out_dir, data_file="", seed=1337, init="", world_seed=0, device="", strict=False):
    """(train pairs, held-out pairs) for reward.py and dpo.py: the user's file (split_file), else
    <out_dir>/preferences/, made first with this stage's defaults when it is missing."""
    if data_file:
        return split_file(data_file, seed, strict=strict)
    if not all(os.path.exists(f) for f in paths(out_dir).values()):
        make_preferences(PreferenceConfig(out_dir=out_dir, init=init, world_seed=world_seed, seed=seed, device=device))
    return load(out_dir)


def load(out_dir):
    """(train pairs, held-out pairs) written by this stage into <out_dir>/preferences/."""
    files = paths(out_dir)
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"no preference data at {missing[0]}: run preferences.py (or pipeline.py) first, "
                                "or give --data-file")
    return tuple(load_preferences_jsonl(files[split]) for split in SPLITS)


def prompt_sets(cfg, world):
    """{"train": n_prompts examples, "heldout": n_heldout_prompts}: train-split prompts (SFT's items and
    phrasings, so never an evaluation prompt) drawn with their own seeds, so not SFT's own prompts.

    No train prompt asks about a (family, item) of a held-out one: the reward model's held-out
    accuracy is measured on questions it never saw an answer to, not on memorised items."""
    heldout = tasks.make_examples(world, "train", cfg.n_heldout_prompts, seed=cfg.seed + 2)
    seen = {(ex.family, ex.item) for ex in heldout}
    train, draw = [], 0
    while len(train) < cfg.n_prompts:  # draw again (another seed) until n_prompts are left after the filter
        more = tasks.make_examples(world, "train", cfg.n_prompts, seed=cfg.seed + 1 + 1000 * draw)
        train += [ex for ex in more if (ex.family, ex.item) not in seen][:cfg.n_prompts - len(train)]
        draw += 1
    return {"train": train, "heldout": heldout}


def world_pairs(cfg, tok, judge=None):
    """The built-in world's (train, held-out) pairs: prompts of the train split that SFT never saw,
    answers sampled from the policy (or demonstrations, with --model-free), labelled by the simulated
    human or by `judge`, which labels the model-free pairs too (they are otherwise ordered by construction)."""
    device = str(get_device(cfg.device or None))
    world = tasks.make_world(cfg.world_seed)
    policy = None if cfg.model_free else load_policy(cfg.init or os.path.join(cfg.out_dir, "sft", "model.pt"), device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    splits = []
    for (name, examples), seed in zip(prompt_sets(cfg, world).items(), (cfg.seed + 1, cfg.seed + 2)):
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
                               "--model-free, or let the labeler flip coins on ties (--labeler-ties false)")
        splits.append(pairs)
    return splits


def make_preferences(cfg, judge=None):
    """The stage: pairs from the user's file or the built-in world, written to <out_dir>/preferences/.
    judge: a labeler to use instead of the simulated human (rlaif.py passes its AI judge).
    Returns (train pairs, held-out pairs)."""
    t0 = time.time()
    seed_everything(cfg.seed)
    if cfg.data_file:
        train_pairs, heldout_pairs = split_file(cfg.data_file, cfg.seed, strict=cfg.strict)
    else:
        tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
        train_pairs, heldout_pairs = world_pairs(cfg, tok, judge)
    files = paths(cfg.out_dir)
    for split, pairs in zip(SPLITS, (train_pairs, heldout_pairs)):
        write_preferences_jsonl(files[split], pairs)
    stats = {"train_pairs": len(train_pairs), "heldout_pairs": len(heldout_pairs), "time_s": time.time() - t0}
    if "gold_chosen" in train_pairs[0]:
        stats.update({"labels/gold_agreement": label_agreement(train_pairs),
                      "labels/heldout_gold_agreement": label_agreement(heldout_pairs),
                      "labels/gold_ranked": sum(p["gold_chosen"] != p["gold_rejected"] for p in train_pairs)})
    with open(os.path.join(cfg.out_dir, "preferences", "stats.json"), "w") as f:
        json.dump({**stats, "stage_config": asdict(cfg)}, f, indent=2)
    if not cfg.quiet:
        print(f"preferences: {len(train_pairs)} train pairs, {len(heldout_pairs)} held out ({stats['time_s']:.0f}s)")
        if "labels/gold_agreement" in stats:
            print(f"labels agree with the gold rule on {stats['labels/gold_agreement']:.1%} of the "
                  f"{stats['labels/gold_ranked']} train pairs it ranks")
    return train_pairs, heldout_pairs


if __name__ == "__main__":
    make_preferences(cli(PreferenceConfig))
