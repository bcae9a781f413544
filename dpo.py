"""
dpo.py: Direct Preference Optimization, preferences optimised directly with no reward model.

RLHF fits a reward model to comparisons and then runs PPO against it. DPO (Rafailov et al. 2023,
arXiv 2305.18290) notes that the KL-regularised optimum is pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x),
so r(x,y) = beta log pi(y|x)/pi_ref(y|x) + beta log Z(x): the policy *is* a reward model, and the
Bradley-Terry loss on that implicit reward trains it directly, on the same (prompt, chosen, rejected)
pairs reward.py learns from. No sampling and no critic during training: one supervised-style loop.

  python dpo.py                               # on <out_dir>/preferences/ (made first if missing)
  python dpo.py --loss-type ipo --beta 0.5    # IPO (Azar et al. 2023); --loss-type conservative: cDPO
  python dpo.py --nll-coef 0                  # the paper's DPO, without the NLL term
  python dpo.py --data-file prefs.jsonl       # your preference JSONL (HH-RLHF transcripts too)

Reads <out_dir>/tokenizer/, <out_dir>/sft/model.pt (start of the policy and the frozen reference) and
<out_dir>/preferences/{train,heldout}.jsonl. Writes <out_dir>/dpo/model.pt, metrics.jsonl, eval.json.

References: DPO paper (eq. 7) and its reference code eric-mitchell/direct-preference-optimization
(concatenated_forward, _get_batch_logps); IPO, Azar et al. 2023 (arXiv 2310.12036, eq. 17); cDPO, E. Mitchell
2023, "A note on DPO with noisy preferences and relationship to IPO"; TRL's DPOTrainer (logged metrics).
Departures:
  1. The default adds an NLL term on the chosen answer (RPO, Pang et al. 2024, arXiv 2404.19733): plain
     DPO lowers the logprob of the chosen answers too (DPO #8, TRL #800); --nll-coef 0 is the paper's DPO.
  2. The reference logprobs are computed once before training (the policy starts equal to the reference,
     so step 0 has a DPO loss, logged as dpo_loss, of ln 2 up to rounding, which a test checks); the
     reference model is kept for the KL estimate.
  3. IPO uses summed logprobs like DPO; TRL averages them per token for IPO (TRL PR #1265), which
     changes the scale of its beta.
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

import preferences
import tasks
from common import cleanup_distributed, cli, epoch_batch, fit, rank0_first, seed_everything, setup_distributed
from data import collate, cut_summary, render_responses
from evaluate import eval_sets, evaluate_policy
from model import IGNORE_INDEX, autocast, load_policy, logprobs_from_logits, row_sums
from tokenizer import Tokenizer


@dataclass
class DPOConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/, sft/model.pt and preferences/, writes dpo/"""
    init: str = ""
    """SFT checkpoint: the start of the policy and the frozen reference (default: <out_dir>/sft/model.pt)"""
    data_file: str = ""
    """your preference JSONL instead of <out_dir>/preferences/ (world-based metrics are then skipped)"""
    strict: bool = False
    """refuse the data file at its first bad record (default: skip bad records with a file:line warning)"""
    world_seed: int = 0
    """seed of the built-in world"""
    beta: float = 0.5
    """strength of the implicit KL penalty: small beta lets the policy move far from the reference"""
    loss_type: str = "dpo"
    """dpo (Rafailov et al.), ipo (Azar et al.) or conservative (cDPO: each label wrong with prob. label_smoothing)"""
    label_smoothing: float = 0.1
    """conservative only: the assumed share of wrong labels"""
    nll_coef: float = 1.0
    """weight of an NLL term on the chosen answer, per token (RPO: Pang et al. 2024); 0 is plain DPO"""
    batch_size: int = 32
    """preference pairs per optimizer step"""
    grad_accum: int = 1
    """micro-batches the step's pairs are split into (under torchrun: a multiple of the processes)"""
    epochs: float = 1.0
    """passes over the training pairs"""
    max_steps: int = 0
    """optimizer steps (0: from epochs)"""
    max_len: int = 128
    """longest prompt + response; longer ones lose the start of their prompt"""
    score_batch_size: int = 128
    """rows per forward pass when scoring pairs without gradients (reference, held-out); lower it for a
    large vocabulary: GPT-2's 50k logits at 512 tokens take 13 GB per 128 rows in fp32"""
    lr: float = 5e-5
    """peak learning rate (1e-4 went further from SFT for less gold)"""
    warmup_steps: int = 10
    """linear warmup steps"""
    min_lr_frac: float = 0.1
    """the cosine schedule ends at lr * min_lr_frac"""
    weight_decay: float = 0.0
    """AdamW weight decay on 2-D weights"""
    grad_clip: float = 1.0
    """clip the gradient norm to this (0 = off)"""
    eval_every: int = 0
    """steps between evaluations during training (0: only at the end)"""
    eval_n: int = 200
    """held-out prompts per split for the gold score and the KL to SFT (0: skip)"""
    compare_sft: bool = True
    """also evaluate the SFT model on the same prompts, for the side-by-side table"""
    max_new_tokens: int = 48
    """longest answer in the evaluation"""
    log_every: int = 10
    """steps between progress lines"""
    ckpt_every: int = 0
    """steps between checkpoints (0: only at the end)"""
    seed: int = 1337
    """seed of training and evaluation sampling (and of the preference data, when it is made here)"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    resume: bool = False
    """continue from <out_dir>/dpo/model.pt"""
    quiet: bool = False
    """no progress lines"""
    compile: bool = False
    """torch.compile the model for the training steps (pays off on a GPU; on a CPU the compile takes a minute)"""


# -----------------------------------------------------------------------------
# The loss


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, loss_type="dpo", label_smoothing=0.0):
    r"""Per-pair preference losses and the implicit rewards. All inputs (B,) sequence logprobs.

    With the log-ratio difference h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)):
      dpo           $-\log\sigma(\beta h)$                                          DPO eq. 7
      conservative  $-(1-\epsilon)\log\sigma(\beta h) - \epsilon\log\sigma(-\beta h)$  cDPO, eps = label_smoothing
      ipo           $(h - \frac{1}{2\beta})^2$                                       IPO eq. 17, beta = tau
    label_smoothing is used by "conservative" only. Returns (losses, chosen_rewards, rejected_rewards),
    each (B,); the implicit rewards $\beta \log \pi(y|x)/\pi_{ref}(y|x)$ (DPO eq. 5, without beta log Z(x),
    which cancels between chosen and rejected) are detached: they are for logging.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "dpo":
        losses = -F.logsigmoid(beta * h)  # logsigmoid: stable for large |h|
    elif loss_type == "conservative":  # the label is wrong with probability eps (Mitchell 2023)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":  # regress h to a finite target instead of pushing it to infinity
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be dpo, ipo or conservative, got {loss_type!r}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def sequence_logprobs(logits, targets, loss_mask):
    """log pi(response | prompt): the SUM of token logprobs over response tokens only, in fp32.

    logits (B, T, V); targets (B, T) token ids (any value where loss_mask is 0, e.g. IGNORE_INDEX);
    loss_mask (B, T), 1 on the answer's tokens and its <|end|>. Returns (B,).
    Sum, not mean: log pi(y|x) of the paper is the sum over tokens, and a mean would change the scale
    of beta with the answer's length (DPO repo issue #40, TRL #789; both keep the sum).
    """
    token_logps = logprobs_from_logits(logits, targets.clamp(min=0))  # (B, T), fp32 log-softmax
    return torch.where(loss_mask.bool(), token_logps, 0.0).sum(dim=-1)  # prompt and pads contribute 0


# -----------------------------------------------------------------------------
# Data and the concatenated forward pass


def fit_pairs(tok, pairs, max_len=None):
    """Each pair -> ([chosen (ids, loss mask), rejected (ids, loss mask)], cut, lost supervised tokens):
    rows of at most max_len tokens that share ONE cut prompt (data.render_responses), so that chosen and
    rejected are always compared after the same context."""
    return [render_responses(tok, p["prompt"], [p["chosen"], p["rejected"]], max_len) for p in pairs]


def tokenize_pairs(tok, pairs, max_len=None):
    """Each pair -> ((chosen ids, loss mask), (rejected ids, loss mask)), cut as fit_pairs does."""
    return [tuple(rows) for rows, _, _ in fit_pairs(tok, pairs, max_len)]


def collate_pairs(examples, pad_id, max_len):
    """B tokenized pairs -> one right-padded batch of 2B rows: the B chosen rows, then the B rejected rows."""
    return collate([chosen for chosen, _ in examples] + [rejected for _, rejected in examples], pad_id, max_len)


def row_logprobs(model, batch):
    """Sequence logprobs (R,) of every row of a collated batch (input_ids, targets: (R, T), right-padded):
    sequence_logprobs, with the LM head run on the answers' tokens only (GPT's `only`)."""
    answer = batch["targets"] != IGNORE_INDEX  # (R, T); right padding: no real token ever sees a pad
    logits, _ = model(batch["input_ids"], only=answer)  # (n, V), the answer tokens of every row in turn
    return row_sums(logprobs_from_logits(logits, batch["targets"][answer]), answer)  # fp32 log-softmax, summed per row


def concatenated_logprobs(model, batch):
    """Sequence logprobs (chosen (B,), rejected (B,)) from ONE forward pass over the 2B rows of collate_pairs.

    One pass of 2B rows instead of two of B (the reference code's concatenated_forward): chosen and
    rejected get the same padding and the same numerics, and larger matmuls run faster.
    """
    return row_logprobs(model, batch).chunk(2)


@torch.no_grad()
def pair_logprobs(model, examples, pad_id, max_len, batch_size=128):
    """(chosen (N,), rejected (N,)) sequence logprobs of every pair, without gradients, on the CPU.

    A prompt's answers appear in several pairs (all K-choose-2), so each distinct row is scored once,
    and rows of similar length share a batch (less padding). On the default data: 13 s instead of 56 s.
    """
    model.eval()
    device = next(model.parameters()).device
    distinct = {tuple(ids): (ids, mask) for pair in examples for ids, mask in pair}
    rows = sorted(distinct.values(), key=lambda row: len(row[0]))
    index = {tuple(ids): i for i, (ids, _) in enumerate(rows)}
    logps = torch.zeros(len(rows))
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i:i + batch_size], pad_id, max_len)
        batch = {key: batch[key].to(device) for key in ("input_ids", "targets")}
        with autocast(device):
            logps[i:i + batch_size] = row_logprobs(model, batch).float().cpu()
    return tuple(logps[[index[tuple(pair[j][0])] for pair in examples]] for j in (0, 1))


def pair_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps):
    """SUMS over the pairs of what DPO logs (fit divides by the number of pairs); TRL logs the same."""
    return {"loss": losses.sum(), "reward_chosen": chosen_rewards.sum(), "reward_rejected": rejected_rewards.sum(),
            "margin": (chosen_rewards - rejected_rewards).sum(),
            "accuracy": (chosen_rewards > rejected_rewards).float().sum(),  # step 0: 0 vs 0 up to rounding
            # expect the policy's logprob of the chosen answers to fall too (DPO #8, TRL #800)
            "logp_chosen": policy_chosen_logps.detach().sum(), "logp_rejected": policy_rejected_logps.detach().sum()}


def print_comparison(results, splits):
    """Gold score per split, SFT vs DPO, greedy and sampled; then the KL to SFT."""
    print(f"  {'gold score':18} {'SFT greedy':>10} {'DPO greedy':>10} {'SFT T=1':>8} {'DPO T=1':>8}")
    for split in list(splits) + [None]:
        key = f"{split}/gold" if split else "gold"
        row = [results.get(f"{model}/{mode}/{key}", float("nan"))
               for mode in ("greedy", "sampled") for model in ("sft", "dpo")]
        print(f"  {split or 'mean':18} {row[0]:10.3f} {row[1]:10.3f} {row[2]:8.3f} {row[3]:8.3f}")
    print(f"  KL(DPO || SFT) per answer: {results['dpo/kl_to_ref']:.3f} nats")


# -----------------------------------------------------------------------------
# Training


def check_config(cfg):
    """A ValueError naming the setting, for values the loss cannot use."""
    if cfg.loss_type not in ("dpo", "ipo", "conservative"):
        raise ValueError(f"--loss-type must be dpo, ipo or conservative, got {cfg.loss_type!r}")
    if not cfg.beta > 0:
        raise ValueError(f"--beta must be positive, got {cfg.beta}")
    if cfg.loss_type == "conservative" and not 0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"--label-smoothing must be in [0, 0.5) (the share of flipped labels), got {cfg.label_smoothing}")


def train(cfg):
    """DPO from the SFT model on preference pairs. Returns (policy, tokenizer, history)."""
    t0 = time.time()
    check_config(cfg)  # before the reference pass, not after it
    rank, _, device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    cfg = replace(cfg, device=device)  # a copy: the caller's cfg is left as it was
    seed_everything(cfg.seed + rank)
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    init = cfg.init or os.path.join(cfg.out_dir, "sft", "model.pt")
    ref = load_policy(init, device)  # frozen: never trained, dropout off
    ref.requires_grad_(False)
    policy = load_policy(init, device)  # the policy starts equal to the reference
    max_len = min(cfg.max_len, policy.config.block_size)

    train_pairs, heldout_pairs = rank0_first(  # the user's file, else <out_dir>/preferences/ (made if missing)
        lambda: preferences.load_pairs(cfg.out_dir, cfg.data_file, cfg.seed, cfg.init, cfg.world_seed, device,
                                         cfg.strict))
    fitted = fit_pairs(tok, train_pairs, max_len + 1)  # max_len + 1 tokens make max_len inputs (collate)
    train_examples, heldout_examples = [tuple(rows) for rows, _, _ in fitted], tokenize_pairs(tok, heldout_pairs, max_len + 1)
    # computed once: (chosen, rejected) sequence logprobs of the frozen reference
    ref_train = pair_logprobs(ref, train_examples, tok.pad_id, max_len, cfg.score_batch_size)
    ref_heldout = pair_logprobs(ref, heldout_examples, tok.pad_id, max_len, cfg.score_batch_size)
    if not cfg.quiet and rank == 0:
        print(f"dpo: {len(train_pairs)} train pairs ({cut_summary(fitted, max_len + 1)}), {len(heldout_pairs)} "
              f"held out; reference logprobs computed ({time.time() - t0:.0f}s)")
    cfg = replace(cfg, max_steps=cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_examples) / cfg.batch_size)))

    def next_batch(step):  # a function of the step: a resumed run sees the same batches
        step_picks = epoch_batch(len(train_examples), cfg.batch_size, step, cfg.seed)
        batches = []
        for k in range(cfg.grad_accum):  # the step's pairs in grad_accum micro-batches
            picks = step_picks[k::cfg.grad_accum]
            batch = collate_pairs([train_examples[i] for i in picks], tok.pad_id, max_len)
            batches.append({"input_ids": batch["input_ids"], "targets": batch["targets"],
                            "ref_chosen": ref_train[0][picks], "ref_rejected": ref_train[1][picks],
                            "n": len(picks), "n_tokens": batch["attention_mask"].sum()})
        return batches

    def loss_fn(model, batch):
        policy_chosen, policy_rejected = concatenated_logprobs(model, batch)  # (B,) each
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, batch["ref_chosen"], batch["ref_rejected"],
            cfg.beta, cfg.loss_type, cfg.label_smoothing)
        metrics = pair_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)
        metrics["dpo_loss"] = metrics.pop("loss").detach()  # ln 2 at step 0, whatever nll_coef is
        loss = losses.sum()
        if cfg.nll_coef > 0:  # RPO (Pang et al. 2024, arXiv 2404.19733): + alpha * NLL(chosen) / |chosen|
            n_chosen = (batch["targets"] != IGNORE_INDEX).sum(dim=-1).chunk(2)[0].clamp(min=1)  # (B,)
            nll = -policy_chosen / n_chosen  # per-token NLL of each chosen answer
            loss = loss + cfg.nll_coef * nll.sum()
            metrics["nll"] = nll.detach().sum()
        return loss, metrics

    def heldout_metrics(model):  # the same numbers on pairs never trained on
        policy_logps = pair_logprobs(model, heldout_examples, tok.pad_id, max_len, cfg.score_batch_size)
        losses, *rewards = dpo_loss(*policy_logps, *ref_heldout, cfg.beta, cfg.loss_type, cfg.label_smoothing)
        sums = pair_metrics(losses, *rewards, *policy_logps)
        return {f"heldout/{k}": v.item() / len(losses) for k, v in sums.items()}

    sets = None
    if not cfg.data_file and cfg.eval_n > 0:
        sets = eval_sets(tasks.make_world(cfg.world_seed), cfg.eval_n)

    def generation_metrics(model, ref=None):  # greedy and sampled at T=1, the KL to SFT when ref is given
        return evaluate_policy(model, tok, sets, ref, sample_temperature=1.0, max_new_tokens=cfg.max_new_tokens,
                               seed=cfg.seed)

    def evaluate(model):  # periodic: the headline numbers only
        results = heldout_metrics(model)
        if sets:
            full = generation_metrics(model, ref)
            results.update({k: v for k, v in full.items() if k.count("/") <= 1})
        return results

    ckpt_path = os.path.join(cfg.out_dir, "dpo", "model.pt")
    history = fit(policy, cfg, next_batch, loss_fn, ckpt_path, evaluate if cfg.eval_every else None,
                  extra={"stage_config": asdict(cfg)}, name="dpo | ")
    if rank != 0:  # the final evaluation and eval.json: rank 0's
        return policy, tok, history

    results = heldout_metrics(policy)  # next to the reference's logprobs: did the chosen ones fall too?
    results.update({"heldout/ref_logp_chosen": ref_heldout[0].mean().item(),
                    "heldout/ref_logp_rejected": ref_heldout[1].mean().item()})
    if sets:
        results.update({f"dpo/{k}": v for k, v in generation_metrics(policy, ref).items()})
        if cfg.compare_sft:  # the same prompts, seeds and grader for the starting point
            results.update({f"sft/{k}": v for k, v in generation_metrics(ref).items()})
    results["time_s"] = time.time() - t0
    history.append({"step": cfg.max_steps, **results})
    with open(os.path.join(cfg.out_dir, "dpo", "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    if not cfg.quiet:
        for key in ("loss", "accuracy", "margin", "reward_chosen", "reward_rejected", "logp_chosen",
                    "ref_logp_chosen", "logp_rejected", "ref_logp_rejected"):
            print(f"  heldout {key:18} {results[f'heldout/{key}']:.4g}")
        if sets:
            print_comparison(results, sets)
        print(f"dpo finished in {results['time_s']:.0f}s")
    return policy, tok, history


if __name__ == "__main__":
    train(cli(DPOConfig))
    cleanup_distributed()
