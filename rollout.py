"""
rollout.py: the experience PPO learns from: the four models of RLHF, and one batch of rollouts.

  policy, ref_policy, critic, rm = load_models(cfg, device, None, print, tok)   # [1, 2]
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
from evaluate import prompt_ids, respond
from generate import generate
from model import autocast, load_policy, logprobs_from_logits
from reward import RewardModel, load_reward_model, normalise


def load_models(cfg, device, reward_model, say, tok):
    """(policy, frozen reference, critic, frozen reward model) for a PPO run. [1, 2]"""
    sft_path = cfg.sft_path or os.path.join(cfg.out_dir, "sft", "model.pt")
    policy = load_policy(sft_path, device)  # [1]
    ref_policy = load_policy(sft_path, device).requires_grad_(False)  # frozen [1]
    if reward_model is None and cfg.reward == "sft_logprob":
        reward_model = likelihood_reward(ref_policy, tok, cfg, device)
    elif cfg.reward not in ("model", "sft_logprob"):
        raise ValueError(f"reward must be 'model' or 'sft_logprob', got {cfg.reward!r}")
    rm = reward_model or load_reward_model(cfg.reward_path or os.path.join(cfg.out_dir, "reward", "model.pt"), device)
    if isinstance(rm, RewardModel) and rm.score_std.item() == 1.0 and rm.score_mean.item() == 0.0:
        say("warning: the reward model is not normalised; kl_coef and missing_eos_penalty assume mean 0, std 1")
    critic = make_critic(cfg.critic_init, rm, ref_policy)  # copied before rm is frozen [2]
    return policy, ref_policy, critic, rm.requires_grad_(False).eval()


def likelihood_reward(sft_model, tok, cfg, device):
    """The best reward that needs no preferences (--reward sft_logprob): the SFT model's own
    log p(answer + <|end|> | prompt), a RewardModel with a zero head and the likelihood term alone,
    normalised to mean 0, std 1 on SFT samples at the rollout temperature, as reward.py does. PPO on
    it against PPO on the learned reward model shows what the comparisons added."""
    scorer = RewardModel(copy.deepcopy(sft_model), tok.assistant_id).to(device)
    torch.nn.init.zeros_(scorer.head.weight)
    prompts = [ex.messages for ex in tasks.make_examples(tasks.make_world(cfg.world_seed), "train", 256, seed=cfg.seed + 99)]
    answers = respond(sft_model, tok, prompts, cfg.temperature, cfg.max_new_tokens,
                      generator=torch.Generator(device=device).manual_seed(cfg.seed))
    ended = [(p, a.text) for p, a in zip(prompts, answers) if a.ended]
    normalise(scorer, tok, [p for p, _ in ended], [t for _, t in ended])
    return scorer


def make_critic(init, rm, sft_model):
    """The value model: a RewardModel (trunk + scalar head) whose head reads every position. [2]

    "sft" (default, OAI): the SFT trunk with a zero head, every value 0 at the start: consistent with
    any reward model, since the whitened advantages do not depend on a constant offset of the values.
    "reward" (N+): a copy of a reward model whose score is its head alone (reward.py --likelihood
    false), so that the critic's value at the <|end|> starts equal to the score. With the likelihood
    term the head is only part of the score, and its values would start off by the rest.
    """
    if init == "reward":
        if not isinstance(rm, RewardModel) or rm.assistant_id >= 0:
            raise ValueError("critic_init 'reward' needs a head-only RewardModel (reward.py --likelihood false): "
                             "the critic reads the head alone, which is not this reward model's score; "
                             "use critic_init 'sft'")
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


def penalised_scores(rm_scores, ended, penalty):
    """The score PPO optimises (B,): the reward model's for an answer that ended, clipped from below at
    penalty + 1, and `penalty` for one that never wrote <|end|>. The clip makes ending always pay: an
    unbounded score could fall below the penalty, and then never ending would score better. [6]"""
    return torch.where(ended, rm_scores.clamp(min=penalty + 1), torch.full_like(rm_scores, penalty))


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
    scores = penalised_scores(rm_scores, ended, cfg.missing_eos_penalty)  # [6]
    texts = [decode_content(tok, r[:-1] if e else r) for r, e in zip(gen.responses, gen.ended)]
    gold = torch.tensor([tasks.grade(ex, text, e) for ex, text, e in zip(examples, texts, gen.ended)])
    return {"ids": ids, "attention_mask": mask, "prompt_width": P, "response_mask": mask[:, P:].float(),
            "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "scores": scores,
            "rm_scores": rm_scores, "ended": ended, "gold": gold,
            "seconds": {"generate": t_generate - t0, "score": time.perf_counter() - t_generate}}
