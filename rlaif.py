"""
rlaif.py: feedback from a model instead of from people: RLAIF and Constitutional AI.

RLHF needs people to compare answers. RLAIF asks a *feedback model* instead: it reads one principle of a
short written constitution (constitution.txt) and says which of two answers follows it better (Bai et
al. 2022, "Constitutional AI", arXiv 2212.08073; Lee et al. 2023, "RLAIF", arXiv 2309.00267). Its labels
go through the very same preferences.py, reward.py, ppo.py and dpo.py as the simulated human's.
Constitutional AI adds a supervised stage: the model critiques its own answers against a principle,
revises them, and is fine-tuned on the revisions (SL-CAI); then PPO on AI preferences (RL-CAI).

  python rlaif.py                      # every stage (STAGE_DIRS), after pipeline.py wrote <out_dir>/sft/
  python rlaif.py --stages feedback    # only the feedback model and the judge's agreement with gold

rlaif/ and cai/ are run folders of their own, so the stage modules read and write them unchanged. The
feedback model's tasks and the AI judge are in judge.py.
Departures from the papers, at the size of this project:
  1. The judge is a separate feedback model, the SFT model fine-tuned on judging and critique-and-revision
     demonstrations written by the gold rule: a 1M-parameter model cannot judge from a prompt alone, as
     the 52B models of the papers did. A model of its own keeps the labeler fixed while the policy trains.
  2. The judge writes the answer it would give, then its verdict ("Answer: 42" / "Better: A"):
     chain-of-thought judging (Lee et al.) with a reference answer (Zheng et al. 2023, arXiv 2306.05685).
  3. The verdict is read off the judge's probabilities by default: a is better when log p("Answer: a") >
     log p("Answer: b") under the judging prompt (Lee et al. read P("1") vs P("2")). The written verdict
     (--judge-mode generate, judge.parse_verdict) is there too; the README reports how each does.
  4. Judges prefer a position (Zheng et al.): every pair is judged in both orders; the likelihood verdict
     adds the two log-ratios, written verdicts must agree or the pair is dropped.
  5. One principle, drawn at random, is shown per judgement and per critique (Bai et al.).
  6. RL-CAI reuses the RLAIF reward model (trained on AI labels of SFT samples); Bai et al. sample the
     pairs from the SL-CAI model.
"""

import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace

import torch

import dpo
import ppo
import preferences
import reward
import sft
import tasks
from common import cli, format_seconds, seed_everything
from evaluate import respond
from formats import write_jsonl
from judge import (AIJudge, critique_prompt, feedback_conversations, judge_agreement, load_constitution,
                   parse_revision, question_of)
from model import get_device, load_policy
from tokenizer import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class RLAIFConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/, pretrain/ and sft/, writes rlaif/ and cai/"""
    constitution: str = os.path.join(HERE, "constitution.txt")
    """the principles, one per line (# starts a comment)"""
    stages: str = "feedback,preferences,reward,ppo,dpo,cai_sft,cai_ppo"
    """the stages to run, in this order"""
    world_seed: int = 0
    """seed of the built-in world"""
    feedback_examples: int = 12000
    """feedback demonstrations (judgements and critiques) to fine-tune the feedback model on"""
    judge_share: float = 0.85
    """share of them that are judgements (the rest: critique + revision)"""
    feedback_steps: int = 500
    """optimizer steps of the feedback fine-tune (300 steps at lr 5e-4 judged worse than 500 at 1e-3)"""
    feedback_lr: float = 1e-3
    """its peak learning rate"""
    batch_size: int = 64
    """conversations per step of the feedback fine-tune and of SL-CAI"""
    judge_mode: str = "likelihood"
    """likelihood: the verdict from the judge's probabilities of the two answers; generate: the judge
    writes "Better: A" or "B" (at this size it fails; see judge.AIJudge)"""
    swap: bool = True
    """judge every pair in both orders too (likelihood: add the two; generate: keep it only if they agree)"""
    fallback: bool = False
    """no usable verdict: a coin flip instead of dropping the pair; no revision: keep the answer as it was
    (for smoke runs: the quick preset's tiny feedback model writes neither)"""
    clip_chars: int = 40
    """answers longer than this are cut in the judge's and the critic's prompts"""
    judge_eval_prompts: int = 300
    """held-out prompts whose SFT samples measure the judge against the gold rule"""
    cai_prompts: int = 2000
    """prompts whose SFT samples are critiqued and revised for SL-CAI"""
    cai_forbidden_share: float = 0.25
    """share of forbidden requests among them (Bai et al. used red-team prompts, plus helpful ones)"""
    cai_steps: int = 150
    """optimizer steps of SL-CAI (from the SFT model, on the revisions)"""
    cai_lr: float = 3e-4
    """its peak learning rate"""
    max_new_tokens: int = 48
    """longest sampled answer"""
    judge_max_new_tokens: int = 32
    """longest judgement ("Answer: ..." and "Better: A"); the prompt keeps block_size minus this"""
    critique_max_new_tokens: int = 40
    """longest critique + revision"""
    seed: int = 1337
    """seed of sampling, principles and training"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    quiet: bool = False
    """no progress lines"""


# -----------------------------------------------------------------------------
# Stages


# the folder of the run each stage writes (pipeline.py names its stages by them)
STAGE_DIRS = {"feedback": "rlaif/feedback", "preferences": "rlaif/preferences", "reward": "rlaif/reward",
              "ppo": "rlaif/ppo", "dpo": "rlaif/dpo", "cai_sft": "cai/sft", "cai_ppo": "cai/ppo"}


def paths(cfg):
    run = cfg.out_dir
    return {"tokenizer": os.path.join(run, "tokenizer"), "pretrain": os.path.join(run, "pretrain", "model.pt"),
            "sft": os.path.join(run, "sft", "model.pt"), "rlaif": os.path.join(run, "rlaif"),
            "cai": os.path.join(run, "cai"), "feedback": os.path.join(run, "rlaif", "feedback", "model.pt"),
            "rlaif_reward": os.path.join(run, "rlaif", "reward", "model.pt"),
            "cai_sft": os.path.join(run, "cai", "sft", "model.pt")}


def sub_run(cfg, name):
    """rlaif/ or cai/ as a run folder of its own: the stage modules read <folder>/tokenizer/."""
    folder = paths(cfg)[name]
    if not os.path.exists(os.path.join(folder, "tokenizer")):
        shutil.copytree(paths(cfg)["tokenizer"], os.path.join(folder, "tokenizer"))
    return folder


def say(cfg, *args):
    if not cfg.quiet:
        print(*args, flush=True)


def load_judge(cfg, device):
    p = paths(cfg)
    return AIJudge(load_policy(p["feedback"], device), Tokenizer.load(p["tokenizer"]),
                   load_constitution(cfg.constitution), seed=cfg.seed, mode=cfg.judge_mode, swap=cfg.swap,
                   clip_chars=cfg.clip_chars, max_new_tokens=cfg.judge_max_new_tokens, fallback=cfg.fallback)


def train_feedback(cfg):
    """Fine-tune the SFT model on feedback demonstrations, then measure the judge against the gold rule
    on pairs of SFT samples for held-out prompts (written to rlaif/feedback/eval.json)."""
    p, folder = paths(cfg), sub_run(cfg, "rlaif")
    world = tasks.make_world(cfg.world_seed)
    principles = load_constitution(cfg.constitution)
    data_file = os.path.join(folder, "feedback", "data.jsonl")
    write_jsonl(data_file, [{"messages": conv} for conv in feedback_conversations(
        world, cfg.feedback_examples, principles, cfg.seed, cfg.judge_share, cfg.clip_chars)])
    sft.train(sft.SFTConfig(out_dir=folder, stage="feedback", init=p["sft"], replay_from=p["pretrain"], ptx_coef=1.0,
                            data_file=data_file, max_steps=cfg.feedback_steps, lr=cfg.feedback_lr,
                            warmup_steps=min(20, cfg.feedback_steps // 10), batch_size=cfg.batch_size, eval_n=0,
                            ckpt_every=100, log_every=50, seed=cfg.seed, device=cfg.device, quiet=cfg.quiet,
                            resume=os.path.exists(p["feedback"])))
    return evaluate_judge(cfg)


def evaluate_judge(cfg):
    """The judge against the gold rule: pairs of 4 SFT samples (T=1) for judge_eval_prompts train-split
    prompts, ordered by the gold rule, ties dropped; written to rlaif/feedback/eval.json."""
    device = str(get_device(cfg.device or None))
    p = paths(cfg)
    seed_everything(cfg.seed)
    judge, tok = load_judge(cfg, device), Tokenizer.load(p["tokenizer"])
    policy = load_policy(p["sft"], device)
    examples = tasks.make_examples(tasks.make_world(cfg.world_seed), "train", cfg.judge_eval_prompts, seed=cfg.seed + 7)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # the gold rule as a perfect labeler orders each pair: chosen is the gold-better answer, ties dropped
    pairs = preferences.policy_preferences(policy, tok, examples, tasks.Labeler(0.0, ties=True), 4, 1.0,
                                           cfg.max_new_tokens, gen)
    results = judge_agreement(judge, pairs)
    with open(os.path.join(p["rlaif"], "feedback", "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    say(cfg, f"judge ({cfg.judge_mode}) vs gold on {results.get('pairs', 0)} held-out pairs of SFT samples: "
             f"{results.get('agreement', float('nan')):.1%} agree, {results.get('decided', float('nan')):.1%} decided")
    return results


def train_rlaif_preferences(cfg, preference_cfg=None):
    """preferences.make_preferences on the RLHF recipe's prompts and samples, labelled by the AI judge."""
    p, folder = paths(cfg), sub_run(cfg, "rlaif")
    preference_cfg = replace(preference_cfg or preferences.PreferenceConfig(device=cfg.device), out_dir=folder,
                             init=p["sft"])
    judge = load_judge(cfg, str(get_device(preference_cfg.device or None)))
    out = preferences.make_preferences(preference_cfg, judge=judge)
    say(cfg, f"AI judge: {dict(judge.stats)}")
    return out


def train_rlaif_reward(cfg, reward_cfg=None):
    """reward.train on the AI-labelled pairs of rlaif/preferences/."""
    p, folder = paths(cfg), sub_run(cfg, "rlaif")
    return reward.train(replace(reward_cfg or reward.RewardConfig(device=cfg.device), out_dir=folder, init=p["sft"]))


def train_rlaif_ppo(cfg, ppo_cfg=None):
    p, folder = paths(cfg), sub_run(cfg, "rlaif")
    return ppo.train(replace(ppo_cfg or ppo.PPOConfig(device=cfg.device), out_dir=folder, sft_path=p["sft"],
                             reward_path=p["rlaif_reward"]))


def train_rlaif_dpo(cfg, dpo_cfg=None):
    p, folder = paths(cfg), sub_run(cfg, "rlaif")
    return dpo.train(replace(dpo_cfg or dpo.DPOConfig(device=cfg.device), out_dir=folder, init=p["sft"]))


def cai_prompts(world, n, forbidden_share, seed):
    """Train-split prompts for SL-CAI, forbidden requests over-represented (red-team prompts)."""
    n_forbidden = round(n * forbidden_share)
    forbidden = [f for f in tasks.FAMILIES if f.forbidden]
    allowed = [f for f in tasks.FAMILIES if not f.forbidden]
    return (tasks.make_examples(world, "train", n_forbidden, seed=seed, families=forbidden)
            + tasks.make_examples(world, "train", n - n_forbidden, seed=seed, families=allowed))


def cai_revisions(cfg, policy, feedback, tok, principles, device):
    """SL-CAI data: the SFT model answers (T=1), the feedback model critiques each answer against a
    random principle and revises it; the revision becomes the assistant message. Returns (conversations,
    stats)."""
    rng = random.Random(cfg.seed)
    examples = cai_prompts(tasks.make_world(cfg.world_seed), cfg.cai_prompts, cfg.cai_forbidden_share, cfg.seed + 11)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    answers = respond(policy, tok, [ex.messages for ex in examples], 1.0, cfg.max_new_tokens, 256, gen)
    prompts = [critique_prompt(question_of(ex), answer.text, rng.choice(principles), cfg.clip_chars)
               for ex, answer in zip(examples, answers)]
    replies = respond(feedback, tok, prompts, 0.0, cfg.critique_max_new_tokens, 256)
    convs, stats = [], Counter()
    for ex, answer, reply in zip(examples, answers, replies):
        text, ended = answer.text, answer.ended
        revision = parse_revision(reply.text) if reply.ended else None
        if revision is None:
            stats["unparsed"] += 1
            if not cfg.fallback:
                continue
            revision = text
        kind = "forbidden" if ex.forbidden else "allowed"
        stats[kind] += 1
        stats[f"{kind}/gold_before"] += tasks.grade(ex, text, ended)
        stats[f"{kind}/gold_after"] += tasks.grade(ex, revision)
        stats[f"{kind}/changed"] += revision != text
        convs.append(ex.messages + [{"role": "assistant", "content": revision}])
    for kind in ("forbidden", "allowed"):
        for key in ("gold_before", "gold_after", "changed"):
            stats[f"{kind}/{key}"] /= max(1, stats[kind])
    return convs, dict(stats)


def train_cai_sft(cfg):
    """SL-CAI: critique-and-revise the SFT model's answers, then fine-tune the SFT model on the revisions."""
    device = str(get_device(cfg.device or None))
    p, folder = paths(cfg), sub_run(cfg, "cai")
    seed_everything(cfg.seed)
    tok = Tokenizer.load(p["tokenizer"])
    convs, stats = cai_revisions(cfg, load_policy(p["sft"], device),
                                 load_policy(p["feedback"], device), tok,
                                 load_constitution(cfg.constitution), device)
    say(cfg, "cai revisions: " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()))
    if not convs:
        raise RuntimeError("SL-CAI: the feedback model wrote no parsable revision; train it longer (--feedback-steps)")
    data_file = os.path.join(folder, "revisions.jsonl")
    write_jsonl(data_file, [{"messages": conv} for conv in convs])
    out = sft.train(sft.SFTConfig(out_dir=folder, stage="sft", init=p["sft"], replay_from=p["pretrain"], ptx_coef=1.0,
                                  data_file=data_file, max_steps=cfg.cai_steps, lr=cfg.cai_lr,
                                  warmup_steps=min(10, cfg.cai_steps // 10), batch_size=cfg.batch_size, eval_n=0,
                                  ckpt_every=100, log_every=50, seed=cfg.seed, device=cfg.device, quiet=cfg.quiet,
                                  resume=os.path.exists(p["cai_sft"])))
    with open(os.path.join(folder, "sft", "revisions.json"), "w") as f:
        json.dump(stats, f, indent=2)
    return out


def train_cai_ppo(cfg, ppo_cfg=None):
    """RL-CAI: PPO from the SL-CAI model (also its KL reference) against the RLAIF reward model."""
    p, folder = paths(cfg), sub_run(cfg, "cai")
    return ppo.train(replace(ppo_cfg or ppo.PPOConfig(device=cfg.device), out_dir=folder, sft_path=p["cai_sft"],
                             reward_path=p["rlaif_reward"]))


def stages(cfg, preference_cfg=None, reward_cfg=None, ppo_cfg=None, dpo_cfg=None):
    """[(name, run)] of the selected stages, in order (pipeline.py runs them as its own stages)."""
    every = {"feedback": lambda: train_feedback(cfg),
             "preferences": lambda: train_rlaif_preferences(cfg, preference_cfg),
             "reward": lambda: train_rlaif_reward(cfg, reward_cfg),
             "ppo": lambda: train_rlaif_ppo(cfg, ppo_cfg), "dpo": lambda: train_rlaif_dpo(cfg, dpo_cfg),
             "cai_sft": lambda: train_cai_sft(cfg), "cai_ppo": lambda: train_cai_ppo(cfg, ppo_cfg)}
    chosen = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in every]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(every)}")
    return [(name, every[name]) for name in chosen]


if __name__ == "__main__":
    cfg = cli(RLAIFConfig)
    if not os.path.exists(paths(cfg)["sft"]):
        raise SystemExit(f"rlaif: no SFT model at {paths(cfg)['sft']}: run `python pipeline.py` (or pretrain.py, sft.py) first")
    t0 = time.time()
    for name, run in stages(cfg):
        t = time.time()
        print(f"== rlaif stage {name}", flush=True)
        run()
        print(f"== rlaif stage {name} took {format_seconds(time.time() - t)}", flush=True)
    print(f"rlaif finished in {format_seconds(time.time() - t0)}; {cfg.out_dir}/rlaif and /cai hold the models")
