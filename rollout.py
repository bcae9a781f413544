"""
rollout.py: the experience PPO learns from: the four models of RLHF, and one batch of rollouts.

  policy, ref_policy, critic, rm = load_models(cfg, device)      # [1, 2]
  batch = rollout(policy, ref_policy, critic, rm, tok, examples, cfg, device, generator)   # [3-7]

A rollout samples one answer per prompt at the rollout temperature, recomputes the logprobs of the
policy and the frozen reference at that temperature, reads the critic's values and the reward model's
score, and grades the answer with the gold grader (for us, never for the policy). The numbers in
brackets are ppo.py's numbered details.
"""

import copy
import os
import time

import torch
import torch.nn.functional as F

import tasks
from data import decode_content
from evaluate import prompt_ids
from generate import generate
from model import autocast, load_policy, logprobs_from_logits
from reward import RewardModel, load_reward_model


def load_models(cfg, device, reward_model, say):
    """(policy, frozen reference, critic, frozen reward model) for a PPO run. [1, 2]"""
    sft_path = cfg.sft_path or os.path.join(cfg.out_dir, "sft", "model.pt")
    policy = load_policy(sft_path, device)  # [1]
    ref_policy = load_policy(sft_path, device).requires_grad_(False)  # frozen [1]
    rm = reward_model or load_reward_model(cfg.reward_path or os.path.join(cfg.out_dir, "reward", "model.pt"), device)
    if isinstance(rm, RewardModel) and rm.score_std.item() == 1.0 and rm.score_mean.item() == 0.0:
        say("warning: the reward model is not normalised; kl_coef and missing_eos_penalty assume mean 0, std 1")
    critic = make_critic(cfg.critic_init, rm, ref_policy)  # copied before rm is frozen [2]
    return policy, ref_policy, critic, rm.requires_grad_(False).eval()


def make_critic(init, rm, sft_model):
    """The value model: a RewardModel (trunk + scalar head) whose head reads every position. [2]

    "reward" (default, N+): a copy of the reward model. Its trunk already computes the score, so
    the head calibrates fast; its values away from the <|end|> (where alone it was trained) start
    off. "sft" (OAI): the SFT trunk with a zero head, every value 0 at the start.
    """
    if init == "reward":
        if not isinstance(rm, RewardModel):
            raise ValueError("critic_init 'reward' needs a RewardModel; use critic_init 'sft'")
        critic = copy.deepcopy(rm)
    elif init == "sft":
        critic = RewardModel(copy.deepcopy(sft_model))
        torch.nn.init.zeros_(critic.head.weight)  # the bias is already 0
    else:
        raise ValueError(f"critic_init must be 'reward' or 'sft', got {init!r}")
    return critic.to(next(sft_model.parameters()).device).requires_grad_(True)


def response_logprobs(policy, ids, attention_mask, prompt_width, temperature):
    """Logprobs and entropies (B, N) of the policy at the N response tokens, at the temperature. [4]

    ids, attention_mask: (B, P + N), prompts left-padded to width P; column P - 1 + t predicts
    response token t. The same function computes the rollout's and the training's logprobs.
    """
    logits, _ = policy(ids, attention_mask=attention_mask)
    logits = logits[:, prompt_width - 1:-1]  # (B, N, V)
    logprobs = logprobs_from_logits(logits, ids[:, prompt_width:], temperature)  # logits / T [4]
    with torch.no_grad():
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)  # logged, not optimised [13]
    return logprobs, entropy


@torch.no_grad()
def rollout(policy, ref_policy, critic, rm, tok, examples, cfg, device, generator=None):
    """Sample one answer per example and compute what PPO needs. [3-7]

    Returns a dict: ids, attention_mask (B, P + N); response_mask, logprobs, ref_logprobs, values
    (B, N) (values None without a critic); scores (B,) (the RM's, or the penalty), rm_scores, gold,
    ended (B,); prompt_width P.
    """
    prompts = [prompt_ids(policy, tok, ex.messages, cfg.max_new_tokens) for ex in examples]  # fits the window
    t0 = time.perf_counter()
    with autocast(device):
        gen = generate(policy, prompts, cfg.max_new_tokens, cfg.temperature, stop_id=tok.end_id,
                       pad_id=tok.pad_id, generator=generator)  # plain softmax [3]; stop at <|end|> [5]
        t_generate = time.perf_counter()
        P, ids, mask = gen.prompt_width, gen.tokens, gen.attention_mask
        # recomputed, not generate's cached logprobs: the training pass must see the same numbers [4, 15]
        logprobs, _ = response_logprobs(policy, ids, mask, P, cfg.temperature)
        ref_logprobs, _ = response_logprobs(ref_policy, ids, mask, P, cfg.temperature)
        values = critic.token_values(ids, mask)[:, P - 1:-1] if critic is not None else None
        rm_scores = rm(ids, mask).float()  # the RM reads the last real token: the <|end|> [7]
    ended = torch.tensor(gen.ended, device=ids.device)
    scores = torch.where(ended, rm_scores, torch.full_like(rm_scores, cfg.missing_eos_penalty))  # [6]
    texts = [decode_content(tok, r[:-1] if e else r) for r, e in zip(gen.responses, gen.ended)]
    gold = torch.tensor([tasks.grade(ex, text, e) for ex, text, e in zip(examples, texts, gen.ended)])
    return {"ids": ids, "attention_mask": mask, "prompt_width": P, "response_mask": mask[:, P:].float(),
            "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "scores": scores,
            "rm_scores": rm_scores, "ended": ended, "gold": gold,
            "seconds": {"generate": t_generate - t0, "score": time.perf_counter() - t_generate}}
