"""
ppo.py: RLHF with PPO. The SFT model learns to please the reward model, on a KL leash to itself.

The second half of RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022): sample an
answer to each prompt, score it with the learned reward model, and improve the policy with PPO
(Schulman et al. 2017) on reward = score - kl_coef * log(pi / pi_sft), summed over the answer. The
built-in world shows what the reward model cannot: the gold score of every rollout.

  python ppo.py                                  # against <out_dir>/reward/model.pt
  python ppo.py --critic-init reward             # N+'s critic: a copy of a head-only reward model
  python ppo.py --adaptive-kl true               # OAI's adaptive KL controller (target kl_target)
  python ppo.py --kl-coef 0 --lr 2e-4            # no leash: over-optimisation, on purpose
  python ppo.py --reward sft_logprob --out-dir runs/nopref --sft-path runs/default/sft/model.pt
                                                 # SFT's own likelihood, no preferences (copy tokenizer/ there)

Reads <out_dir>/tokenizer/, sft/model.pt and reward/model.pt (normalised to mean 0, std 1 on SFT
samples). Writes <out_dir>/ppo/model.pt (the policy), metrics.jsonl (one record per iteration) and eval.json.

References: OpenAI lm-human-preferences (OAI); "The N+ implementation details of RLHF with PPO"
(arXiv 2403.17031, N+); CleanRL's ppo.py and "The 37 implementation details of PPO" (CleanRL).
Departures: no entropy bonus and no early stop on approx_kl (OAI and N+ use neither); Adam eps 1e-8
as every stage (N+, CleanRL: 1e-5); a cosine learning-rate decay (OAI: linear to 0).
"""

# The details, numbered; [n] in the code marks where each is implemented (1-7: in rollout.py):
#  1. Policy and frozen reference both start from SFT, dropout off (model.load_policy).
#  2. The critic is a RewardModel read at every token, from SFT with a zero head (OAI; default: every
#     value starts at 0) or from a head-only reward model (N+): --critic-init.
#  3. Rollouts sampled at one fixed temperature with plain softmax: no top-k, no top-p (OAI).
#  4. Logprobs recomputed by a forward pass with logits / the same temperature (OAI; N blog "Policy #1").
#  5. Truncation at end-of-turn: generate stops a row at <|end|> and pads the rest; pads are masked.
#  6. The EOS trick: an answer without <|end|> scores missing_eos_penalty, not the RM (OAI, N+, TRL);
#     ended answers score at least missing_eos_penalty + 1 (ours: the RM's scores have no floor).
#  7. The score is added on the last real response token, never on a pad (TRL #3750 was this bug).
#  8. Per-token KL penalty r_t = -kl_coef * (log pi - log pi_ref); fixed or adaptive kl_coef (OAI).
#  9. GAE with gamma 1, lambda 0.95, over response tokens only (Schulman et al. 2015).
# 10. Advantages whitened over the valid tokens of every process's batch; optional reward whitening (N+).
# 11. Clipped surrogate objective, clip 0.2.
# 12. Clipped value loss (clip 0.2), vf_coef 0.1 (OAI).
# 13. No entropy bonus (OAI, N+); the entropy is logged.
# 14. ppo_epochs passes over shuffled minibatches of every rollout batch (CleanRL).
# 15. Dropout off everywhere, so the ratio is exactly 1 on the first minibatch: ratio0_error reads 0
#     on a CPU (tested); on a GPU, kernels picked per batch size may leave rounding-level differences.
# 16. Learning rate decay (common.lr_at); gradients clipped per model.
# 17. Logged every iteration: RM score, gold score, KL, non-score reward, approx_kl, clipfrac, value
#     clipfrac, ratio mean/max, entropy, response length, share ended, explained variance.
# 18. Every eval_every iterations and at the end: evaluate.evaluate_policy on held-out prompts.

import functools
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

import tasks
from common import (Progress, TrainState, all_reduce_gradients, all_reduce_sum, cleanup_distributed, cli,
                    format_seconds, lr_at, make_optimizer, masked_mean, masked_mean_var, masked_var, masked_whiten,
                    seed_everything, setup_distributed)
from evaluate import eval_sets, evaluate_policy
from model import autocast
from reward import last_token_index
from rollout import load_models, response_logprobs, rollout
from tokenizer import Tokenizer


@dataclass
class PPOConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/, sft/ and reward/, writes <stage>/"""
    stage: str = "ppo"
    """the folder under out_dir this run writes (experiments write elsewhere)"""
    sft_path: str = ""
    """policy and reference start here (default: <out_dir>/sft/model.pt)"""
    reward_path: str = ""
    """the reward model to optimise (default: <out_dir>/reward/model.pt)"""
    reward: str = "model"
    """'model': the learned reward model; 'sft_logprob': the SFT model's own log-likelihood of the answer,
    the best score that needs no preferences (rollout.likelihood_reward), to see what the comparisons add"""
    critic_init: str = "sft"
    """critic from 'sft' with a zero value head (OAI: every value starts at 0), or from the 'reward'
    model (N+; only for a reward model without the likelihood term, whose head alone is its score)"""
    world_seed: int = 0
    """seed of the built-in world (rollout prompts: train split; evaluation: held-out splits)"""
    iterations: int = 30
    """PPO iterations: one rollout batch, then ppo_epochs passes over it"""
    rollout_batch: int = 64
    """prompts per iteration, one sampled answer each"""
    minibatch: int = 16
    """answers per gradient step"""
    ppo_epochs: int = 4
    """passes over each rollout batch"""
    max_new_tokens: int = 48
    """longest answer; one without <|end|> by then gets missing_eos_penalty"""
    temperature: float = 0.7
    """rollout temperature; every logprob divides the logits by it (0.7: closer to greedy than 1.0, and
    the SFT model's samples are better)"""
    missing_eos_penalty: float = -5.0
    """score of an answer that never produced <|end|>; an ended answer's score is clipped from below at
    missing_eos_penalty + 1, so ending always pays (the RM scores have mean 0, std 1 on SFT samples)"""
    kl_coef: float = 0.1
    """beta of the per-token KL penalty (the start value with --adaptive-kl)"""
    adaptive_kl: bool = False
    """adapt kl_coef so the KL per answer tracks kl_target (OAI)"""
    kl_target: float = 2.0
    """target KL to the reference, nats per answer (with --adaptive-kl)"""
    kl_horizon: int = 2000
    """answers over which kl_coef can change by 20% at most (with --adaptive-kl)"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE lambda"""
    whiten_rewards: bool = False
    """scale the per-token rewards to std 1 over the batch, keeping their mean (N+)"""
    cliprange: float = 0.2
    """policy ratio clip epsilon"""
    cliprange_value: float = 0.2
    """value clip: the new value stays within this of the rollout's"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    lr: float = 3e-5
    """peak learning rate of policy and critic"""
    min_lr_frac: float = 0.1
    """the cosine decay ends at lr * min_lr_frac"""
    grad_clip: float = 1.0
    """clip each model's gradient norm to this"""
    eval_every: int = 10
    """iterations between evaluations on held-out prompts (0: only at the end)"""
    eval_n: int = 100
    """prompts per evaluation split"""
    ckpt_every: int = 10
    """iterations between checkpoints (Ctrl-C also saves one)"""
    seed: int = 1337
    """seed of prompts, sampling and shuffling"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    resume: bool = False
    """continue from <out_dir>/<stage>/model.pt"""
    quiet: bool = False
    """no progress lines"""


# -----------------------------------------------------------------------------
# The math: pure tensor functions. B answers, T response tokens (right-padded), mask 1 on real ones.
# masked_mean, masked_var and masked_whiten (common.py) average over the real tokens only.


def kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask, kl_coef):
    r"""Per-token rewards $r_t = -\beta(\log\pi(y_t) - \log\pi_{ref}(y_t))$, plus the score at the end. [7, 8]

    logprobs, ref_logprobs, response_mask: (B, T); scores: (B,). The log-ratio of the sampled token
    estimates KL(pi || pi_ref) (Ziegler et al. 2019, eq. 2; OAI). Returns (rewards, non_score_rewards),
    each (B, T) and 0 on pads.
    """
    non_score_rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards = non_score_rewards.clone()
    rows = torch.arange(scores.size(0), device=scores.device)
    rewards[rows, last_token_index(response_mask)] += scores  # the last REAL token, not a pad [7]
    return rewards, non_score_rewards


def gae(rewards, values, response_mask, gamma=1.0, lam=0.95):
    r"""Generalised advantage estimation (Schulman et al. 2015, eqs. 11-16) over response tokens. [9]

    $\delta_t = r_t + \gamma V_{t+1} - V_t$, $A_t = \delta_t + \gamma\lambda A_{t+1}$, and the value after
    the last real token is 0: the episode ends there. rewards, values, response_mask: (B, T).
    Returns (advantages, returns = advantages + values, the value targets), (B, T), 0 on pads.
    """
    rewards, values = rewards * response_mask, values * response_mask  # pads: no reward, no value
    advantages = torch.zeros_like(rewards)
    next_advantage, next_value = torch.zeros_like(rewards[:, 0]), torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t], next_value = next_advantage, values[:, t]
    advantages = advantages * response_mask
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, response_mask, cliprange=0.2):
    r"""PPO's clipped surrogate as a loss (Schulman et al. 2017, eq. 7), averaged over valid tokens. [11]

    $L = \max(-\rho_t A_t, -\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A_t)$, $\rho_t = \pi(y_t) / \pi_{old}(y_t)$.
    All inputs (B, T). Returns (loss, stats): clipfrac (share of tokens where the clipped term won),
    approx_kl (the k3 estimator (rho - 1) - log rho of KL(old || new); Schulman's blog "Approximating
    KL divergence", as CleanRL), ratio_mean, ratio_max.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), response_mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
                 "approx_kl": masked_mean((ratio - 1) - log_ratio, response_mask),
                 "ratio_mean": masked_mean(ratio, response_mask),
                 "ratio_max": ratio[response_mask.bool()].max()}
    return loss, stats


def value_loss(values, old_values, returns, response_mask, cliprange_value=0.2):
    r"""Clipped value loss (OAI; CleanRL detail 9), averaged over valid tokens. [12]

    $L = \frac12 \max((V - R)^2, (V_{old} + \mathrm{clip}(V - V_{old}, -\epsilon, \epsilon) - R)^2)$.
    All inputs (B, T). Returns (loss, clipfrac: share of tokens where the clipped term won).
    """
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), response_mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), response_mask).detach()


class AdaptiveKLController:
    """A kl_coef that steers the KL towards a target (Ziegler et al. 2019, section 2.2; OAI). [8]

    After each batch of n answers: e = clip(KL / target - 1, -0.2, 0.2), kl_coef *= 1 + e * n / horizon.
    """

    def __init__(self, kl_coef, target, horizon):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl, n_answers):
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_answers / self.horizon


def rollout_prompts(world, cfg, iteration, rank=0):
    """The prompts of one iteration's rollouts: a fresh batch of the train split (never an evaluation
    prompt), each rank its own."""
    return tasks.make_examples(world, "train", cfg.rollout_batch, seed=cfg.seed * 1000 + iteration + 1_000_003 * rank)


def rewards_and_advantages(batch, kl_coef, cfg):
    """Step 2 of an iteration: per-token rewards, GAE, whitening. Returns (advantages, returns,
    non_score_rewards), each (B, N). Whitening uses the moments of every process's rollouts. [8-10]"""
    response_mask = batch["response_mask"]
    rewards, non_score_rewards = kl_penalty_rewards(batch["logprobs"], batch["ref_logprobs"],
                                                    batch["scores"], response_mask, kl_coef)  # [8]
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, response_mask, shift_mean=False,
                                moments=masked_mean_var(rewards, response_mask))  # [10]
    advantages, returns = gae(rewards, batch["values"], response_mask, cfg.gamma, cfg.lam)  # [9]
    advantages = masked_whiten(advantages, response_mask, moments=masked_mean_var(advantages, response_mask))  # [10]
    return advantages, returns, non_score_rewards


def ppo_epochs(policy, critic, optimizers, batch, advantages, returns, cfg, device, shuffle):
    """Step 3: ppo_epochs passes over shuffled minibatches of the rollout batch. [11-15]
    optimizers: (policy's, critic's). Returns {stat: [one value per minibatch]}."""
    ids, mask, P, response_mask = batch["ids"], batch["attention_mask"], batch["prompt_width"], batch["response_mask"]
    stats = defaultdict(list)
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.rollout_batch, generator=shuffle).to(device)
        for first in range(0, cfg.rollout_batch, cfg.minibatch):
            mb = order[first:first + cfg.minibatch]
            with autocast(device):
                logprobs, entropy = response_logprobs(policy, ids[mb], mask[mb], P, cfg.temperature)
                values = critic.token_values(ids[mb], mask[mb])[:, P - 1:-1]
            pg_loss, pg_stats = policy_loss(logprobs, batch["logprobs"][mb], advantages[mb],
                                            response_mask[mb], cfg.cliprange)  # [11]
            vf_loss, vf_clipfrac = value_loss(values, batch["values"][mb], returns[mb],
                                              response_mask[mb], cfg.cliprange_value)  # [12]
            (pg_loss + cfg.vf_coef * vf_loss).backward()  # no entropy bonus [13]
            for model, opt in zip((policy, critic), optimizers):
                all_reduce_gradients(model)  # the mean over the ranks (a no-op in one process)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # [16]
                opt.step()
                opt.zero_grad(set_to_none=True)
            if epoch == 0 and first == 0:  # same weights, no dropout: log pi / pi_old must be 0 [15]
                log_ratio = (logprobs.detach() - batch["logprobs"][mb]) * response_mask[mb]
                stats["ratio0_error"].append(log_ratio.abs().max())
            for k, v in {"pg_loss": pg_loss, "vf_loss": vf_loss, "vf_clipfrac": vf_clipfrac,
                         "entropy": masked_mean(entropy, response_mask[mb]), **pg_stats}.items():
                stats[k].append(v.detach())
    return stats


def iteration_metrics(batch, non_score_rewards, returns, stats, kl, kl_coef, lr, seconds_update):
    """Step 4: the record logged for one iteration. [17]"""
    response_mask, ended = batch["response_mask"], batch["ended"]
    metrics = {"score": batch["scores"].mean(), "score_std": batch["scores"].std(), "gold": batch["gold"].mean(),
               "rm_score": batch["rm_scores"][ended].mean() if ended.any() else math.nan,  # ended ones
               "kl": kl, "non_score_reward": non_score_rewards.sum(1).mean(), "kl_coef": kl_coef,
               "length": response_mask.sum(1).mean(), "ended": ended.float().mean(), "lr": lr,
               "explained_var": 1 - masked_var(returns - batch["values"], response_mask)  # CleanRL
               / masked_var(returns, response_mask),
               # where an iteration's time goes: sampling, scoring (logprobs, values, RM), PPO epochs
               "time/generate_s": batch["seconds"]["generate"], "time/score_s": batch["seconds"]["score"],
               "time/update_s": seconds_update}
    metrics.update({k: torch.stack(v).mean() for k, v in stats.items()})
    metrics["ratio_max"] = torch.stack(stats["ratio_max"]).max()
    return metrics


def evaluate(policy, ref_policy, rm, tok, sets, cfg, sampled=False):
    """evaluate.evaluate_policy on held-out prompts, greedy (and with `sampled` at the rollout temperature),
    with the KL to the reference at the rollout temperature (the penalty's estimator [8]) and the RM score. [18]"""
    results = evaluate_policy(policy, tok, sets, ref_policy, rm, cfg.temperature if sampled else None,
                              cfg.max_new_tokens, cfg.seed, kl_temperature=cfg.temperature)
    return {k: v for k, v in results.items() if "/family/" not in k and "/difficulty/" not in k}


def final_evaluation(policy, ref_policy, rm, tok, sets, cfg, say):
    """Step 5: SFT and PPO on the held-out prompts, greedy and at the rollout temperature. [18]"""
    results = {f"{name}/{k}": v for name, model in (("sft", ref_policy), ("ppo", policy))
               for k, v in evaluate(model, ref_policy, rm, tok, sets, cfg, sampled=True).items()}
    for key in ("greedy/gold", "sampled/gold", "greedy/test/accuracy", "rm_score", "kl_to_ref"):
        say(f"  {key:22} sft {results['sft/' + key]:.3f} -> ppo {results['ppo/' + key]:.3f}")
    return results


# -----------------------------------------------------------------------------
# Training


def train(cfg, reward_model=None):
    """PPO from the SFT model against the reward model. Returns (policy, tokenizer, history).

    reward_model: any module mapping (ids, attention_mask) to scores (B,), read instead of
    <out_dir>/reward/model.pt (the tests pass a rule-based reward; so can a notebook).
    """
    t0 = time.time()
    # under torchrun each rank makes its own rollouts and the gradients are averaged over the ranks
    rank, world_size, device = setup_distributed(cfg.device)
    seed_everything(cfg.seed)  # the same on every rank: the critic's fresh head starts equal everywhere
    say = (lambda *a: None) if cfg.quiet or rank != 0 else functools.partial(print, flush=True)
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    policy, ref_policy, critic, rm = load_models(cfg, device, reward_model, say, tok)
    optimizers = (make_optimizer(policy, cfg.lr, weight_decay=0.0, device=device),
                  make_optimizer(critic, cfg.lr, weight_decay=0.0, device=device))
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    world = tasks.make_world(cfg.world_seed)
    sets = eval_sets(world, cfg.eval_n)
    state = TrainState(os.path.join(cfg.out_dir, cfg.stage, "model.pt"),
                       {"model": policy, "optimizer": optimizers[0], "critic": critic, "critic_optimizer": optimizers[1]},
                       {"stage_config": asdict(cfg), "kl_coef": kl_ctl.value}, rank)
    if cfg.resume:
        kl_ctl.value = state.resume(device).get("kl_coef", kl_ctl.value)
    start = state.step
    progress = Progress(cfg.iterations, os.path.join(cfg.out_dir, cfg.stage, "metrics.jsonl") if rank == 0 else None,
                        "ppo | ", verbose=not cfg.quiet, fresh=start == 0)

    t_loop = time.time()
    with state.saved_on_interrupt():
        for it in range(start, cfg.iterations):
            if cfg.eval_every and it % cfg.eval_every == 0 and rank == 0:
                results = evaluate(policy, ref_policy, rm, tok, sets, cfg)  # greedy [18]
                progress.log(it, {f"eval/{k}": v for k, v in results.items()}, print_line=False)
                say(f"ppo | eval at {it} | " + " | ".join(f"{k} {results[k]:.3f}" for k in (
                    "greedy/test/gold", "greedy/heldout_phrasing/gold", "rm_score", "kl_to_ref")))
            lr = lr_at(it, cfg.iterations, cfg.lr, 0, cfg.min_lr_frac)  # [16]
            for group in optimizers[0].param_groups + optimizers[1].param_groups:
                group["lr"] = lr

            # 1. rollouts: a fresh batch of train-split prompts, one sampled answer each
            rank_seed = 1_000_003 * rank  # each rank its own prompts and samples (0: one process's)
            batch = rollout(policy, ref_policy, critic, rm, tok, rollout_prompts(world, cfg, it, rank), cfg, device,
                            torch.Generator(device=device).manual_seed(cfg.seed + it + rank_seed))
            # 2. rewards and advantages, once per batch
            advantages, returns, non_score_rewards = rewards_and_advantages(batch, kl_ctl.value, cfg)
            # 3-4. the update, its log and the KL controller as one whole (a Ctrl-C waits for its end)
            with state.one_step():
                # 3. ppo_epochs passes over shuffled minibatches [14]
                t_update = time.perf_counter()
                stats = ppo_epochs(policy, critic, optimizers, batch, advantages, returns, cfg, device,
                                   torch.Generator().manual_seed(cfg.seed + it))
                seconds_update = time.perf_counter() - t_update
                # 4. log, and the KL controller [17, 8]
                kl = ((batch["logprobs"] - batch["ref_logprobs"]) * batch["response_mask"]).sum(1).mean()  # nats/answer
                kl = all_reduce_sum(kl.detach().float()).item() / world_size  # one KL coefficient on every rank
                metrics = iteration_metrics(batch, non_score_rewards, returns, stats, kl, kl_ctl.value, lr,
                                            seconds_update)
                if cfg.adaptive_kl:
                    kl_ctl.update(kl, cfg.rollout_batch * world_size)  # the answers of every rank [8]
                progress.log(it + 1, metrics, print_line=False)
                state.step, state.extra["kl_coef"] = it + 1, kl_ctl.value  # the iteration is complete
            seconds = (time.time() - t_loop) / (it + 1 - start)
            say(f"ppo | iter {it + 1}/{cfg.iterations} | " + " | ".join(f"{k} {float(metrics[k]):.3g}" for k in (
                "score", "gold", "kl", "ended", "length", "clipfrac", "approx_kl", "entropy"))
                + f" | {seconds:.1f}s/it | eta {format_seconds(seconds * (cfg.iterations - it - 1))}")
            # 5. checkpoint: the state after this completed iteration
            if cfg.ckpt_every and (it + 1) % cfg.ckpt_every == 0:
                state.save()

    if rank != 0:  # the final evaluation and checkpoint: rank 0's
        return policy, tok, progress.history
    results = final_evaluation(policy, ref_policy, rm, tok, sets, cfg, say)
    results["time_s"] = time.time() - t0
    progress.log(cfg.iterations, results, print_line=False)
    state.save(finished=True, results=results)
    with open(os.path.join(cfg.out_dir, cfg.stage, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    say(f"ppo finished in {results['time_s']:.0f}s")
    return policy, tok, progress.history


if __name__ == "__main__":
    train(cli(PPOConfig))
    cleanup_distributed()
