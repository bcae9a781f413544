"""
bench.py: how fast is this machine, and how close to it do we get?

  python bench.py                 # the default CPU model; prints a table and one JSON line
  python bench.py --device cuda   # the same on a GPU
  python bench.py --matched true  # SFT / RM / DPO steps and PPO iterations at fixed shapes (see matched_shapes),
                                  # to set beside another library's run of the same shapes on this machine

Measures, in one run:
  - the matmul peak (GFLOP/s) of a large fp32 (or bf16 on CUDA) matrix product;
  - the pretraining step through our training loop (common.fit: schedule, clipping, autocast,
    logging, normalisation by supervised tokens) against a bare PyTorch loop on the same model and
    batch: loop_vs_bare = our tokens/s / the bare loop's;
  - model FLOPs utilisation: (6 N + 12 L C T) FLOPs per token (PaLM, Chowdhery et al. 2022,
    appendix B: weights plus attention) times tokens/s, over the measured peak;
  - generation with and without the KV cache, 64 and 256 new tokens;
  - one reward-model step and one DPO step on batches of the default shapes;
  - one PPO iteration, split into generation, scoring (logprobs, values, RM) and the PPO epochs.
Speed is measured here, never in a timed test.
"""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import dpo
import ppo
import reward
import tasks
from common import cli, fit, make_optimizer, seed_everything
from tokenizer import Tokenizer
from generate import generate
from model import GPT, GPTConfig, autocast, get_device, lm_loss, save_checkpoint
from rollout import response_logprobs


@dataclass
class BenchConfig:
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    n_layer: int = 4
    """the default model's shape (pretrain.PretrainConfig)"""
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 2048
    block_size: int = 128
    batch_size: int = 32
    """sequences per training step (pretraining's default)"""
    steps: int = 20
    """timed training steps per measurement (after warm-up)"""
    repeats: int = 3
    """rounds of the training measurement, our loop and the bare one alternating"""
    seed: int = 0
    run: str = ""
    """a run folder (e.g. runs/default) whose SFT and reward models the PPO timing uses (default: random weights)"""
    matched: bool = False
    """only the matched-shape steps (SFT, reward model, DPO at 16 x 128; PPO at 16 x (96 + 32), 4 epochs), whose
    figures can be set beside another library's run of the same shapes on the same machine"""


def timed(fn, repeat, device):
    """Seconds per call of fn, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, n=2048):
    """GFLOP/s of an n x n matrix product: the ceiling MFU is measured against."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 10, device)
    return 2 * n ** 3 / seconds / 1e9


def training_step(cfg, model_cfg, device):
    """tokens/s of our loop (common.fit) and of a bare loop, same model, same batch.

    Each is timed step by step (our loop: the time between two calls of its next_batch, i.e. one
    whole step of fit), in rounds that alternate the two, and the MEDIAN step counts: on a shared
    machine a noisy step is slower, never faster, and the median ignores it.
    """
    x = torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, cfg.block_size))
    y = torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, cfg.block_size))
    tokens = x.numel()
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xd, yd = x.to(device), y.to(device)

    def bare_steps(n):  # forward, loss, backward, step; nothing else
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            logits, _ = model(xd)
            F.cross_entropy(logits.flatten(0, 1), yd.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        return times

    def our_steps(n):  # common.fit with pretraining's batch and loss
        torch.manual_seed(cfg.seed)
        stamps, batch = [], {"input_ids": x, "targets": y, "n": y.numel(), "n_tokens": tokens}

        def next_batch(step):
            sync(device)
            stamps.append(time.perf_counter())
            return [batch]
        loss_fn = lambda m, b: (lm_loss(m(b["input_ids"])[0], b["targets"], reduction="sum"), {})  # noqa: E731
        with tempfile.TemporaryDirectory() as out:
            fit(GPT(model_cfg).to(device), _FitConfig(max_steps=n + 1, device=device), next_batch, loss_fn,
                os.path.join(out, "model.pt"))
        return [b - a for a, b in zip(stamps, stamps[1:])]  # n whole steps

    bare_steps(2), our_steps(2)  # warm-up
    bare, ours = [], []
    for _ in range(cfg.repeats):
        bare += bare_steps(cfg.steps)
        ours += our_steps(cfg.steps)
    median = lambda times: sorted(times)[len(times) // 2]  # noqa: E731
    return tokens / median(ours), tokens / median(bare)


@dataclass
class _FitConfig:  # what common.fit reads, with pretraining's defaults
    max_steps: int
    device: str
    lr: float = 3e-3
    warmup_steps: int = 1
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 50
    eval_every: int = 0
    ckpt_every: int = 0
    resume: bool = False
    quiet: bool = True


def generation(model_cfg, device, n_new, batch=8, prompt_len=16):
    """Seconds to generate n_new tokens for `batch` rows, without and with the KV cache."""
    model = GPT(GPTConfig(**{**model_cfg.__dict__, "block_size": prompt_len + n_new})).to(device).eval()
    prompts = [list(range(1, prompt_len + 1))] * batch
    run = lambda use_cache: generate(model, prompts, n_new, temperature=0.0, use_cache=use_cache)  # noqa: E731
    return timed(lambda: run(False), 1, device), timed(lambda: run(True), 1, device)


def reward_step(model_cfg, device, prompts=16, k=6, length=30):
    """Seconds of one reward-model step: 16 prompts x 6 answers scored in one pass, BT loss, update."""
    rm = reward.RewardModel(GPT(model_cfg)).to(device)
    optimizer = make_optimizer(rm, 3e-4, 0.0, device=device)
    ids = torch.randint(0, model_cfg.vocab_size, (prompts * k, length), device=device)
    mask = torch.ones_like(ids)
    chosen = torch.arange(0, prompts * k, 2, device=device)

    def step():
        with autocast(device):
            scores = rm(ids, mask)
        reward.bradley_terry_loss(scores[chosen], scores[chosen + 1]).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return timed(step, 5, device)


def dpo_step(model_cfg, device, pairs=32, length=30):
    """Seconds of one DPO step: 32 pairs in one concatenated forward pass, loss, update."""
    policy = GPT(model_cfg).to(device)
    optimizer = make_optimizer(policy, 5e-5, 0.0, device=device)
    ids = torch.randint(0, model_cfg.vocab_size, (2 * pairs, length), device=device)
    targets = ids.roll(-1, dims=1)
    targets[:, : length // 2] = -100  # the prompt half carries no loss
    batch = {"input_ids": ids, "targets": targets}
    ref = torch.zeros(pairs, device=device)

    def step():
        with autocast(device):
            chosen, rejected = dpo.concatenated_logprobs(policy, batch)
        dpo.dpo_loss(chosen, rejected, ref, ref, beta=0.5)[0].mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return timed(step, 5, device)


def ppo_iteration(cfg, model_cfg, device):
    """Seconds of one PPO iteration (64 rollouts of 48 tokens, 4 epochs), split into generate, score, update.

    With --run, the run's tokenizer, SFT model and reward model; without, random weights (then
    every answer runs to max_new_tokens, the slowest case) and a tokenizer trained on a slice of
    the built-in corpus.
    """
    with tempfile.TemporaryDirectory() as out:
        if cfg.run:
            tok_dir, sft_path, rm_path = (os.path.join(cfg.run, p) for p in ("tokenizer", "sft/model.pt", "reward/model.pt"))
        else:
            world = tasks.make_world(0)
            text = "\n".join(tasks.pretrain_corpus(world, size=0.2))
            tok = Tokenizer.train(text, model_cfg.vocab_size)
            tok_dir, sft_path, rm_path = os.path.join(out, "tok"), os.path.join(out, "sft.pt"), os.path.join(out, "rm.pt")
            tok.save(tok_dir)
            save_checkpoint(sft_path, GPT(GPTConfig(**{**model_cfg.__dict__, "vocab_size": tok.vocab_size})))
            save_checkpoint(rm_path, reward.RewardModel(GPT(GPTConfig(**{**model_cfg.__dict__, "vocab_size": tok.vocab_size}))))
        shutil.copytree(tok_dir, os.path.join(out, "tokenizer"))
        ppo_cfg = ppo.PPOConfig(out_dir=out, sft_path=sft_path, reward_path=rm_path, iterations=3, eval_every=0,
                                eval_n=2, ckpt_every=0, device=device, quiet=True)
        _, _, history = ppo.train(ppo_cfg)
    rows = [h for h in history if "time/update_s" in h][1:]  # the first iteration warms up
    return {k: sum(h[f"time/{k}_s"] for h in rows) / len(rows) for k in ("generate", "score", "update")}


def matched_shapes(cfg, model_cfg, device, batch=16, length=128, prompt=96, response=32):
    """Seconds per step at fixed shapes, and tokens/s and steps/s: the median of cfg.steps steps of each
    kind, timed one by one, the kinds alternating over cfg.repeats rounds (so a slow spell of a shared
    machine hits them all). Random weights and tokens; nothing here depends on the data.
      sft   16 rows x 128 tokens, loss on the second half of each row (the answer)
      rm    16 pairs x 128 tokens, chosen and rejected concatenated in one pass of 32 rows, BT loss
      dpo   16 pairs x 128 tokens, concatenated likewise; the reference's logprobs precomputed (as dpo.py
            does, once before training), so a step is the policy's forward and backward only
      ppo   one iteration: 16 rollouts of 96 prompt + 32 sampled tokens (no stop), the policy's,
            the reference's and the critic's passes, the reward model's score, then 4 epochs of
            minibatches of 4 (ppo.rewards_and_advantages, ppo.ppo_epochs)
    Tokens per step: rows x length (rm and dpo: both answers, 2 x 16 x 128); ppo: 16 x 128 per iteration."""
    mc = GPTConfig(**{**model_cfg.__dict__, "block_size": max(model_cfg.block_size, length, prompt + response)})
    torch.manual_seed(cfg.seed)
    rand = lambda *shape: torch.randint(4, mc.vocab_size, shape, device=device)  # noqa: E731
    steps = {}

    sft_model = GPT(mc).to(device)
    sft_opt = make_optimizer(sft_model, 3e-4, 0.0, device=device)
    sft_ids = rand(batch, length)
    sft_targets = sft_ids.roll(-1, dims=1)
    sft_targets[:, : length // 2] = -100

    def sft_step():
        with autocast(device):
            loss = lm_loss(sft_model(sft_ids)[0], sft_targets)
        loss.backward()
        sft_opt.step()
        sft_opt.zero_grad(set_to_none=True)
    steps["sft"] = (sft_step, batch * length)

    rm = reward.RewardModel(GPT(mc)).to(device)
    rm_opt = make_optimizer(rm, 3e-4, 0.0, device=device)
    rm_ids, rm_mask = rand(2 * batch, length), torch.ones(2 * batch, length, dtype=torch.long, device=device)

    def rm_step():
        with autocast(device):
            chosen, rejected = rm(rm_ids, rm_mask).chunk(2)
        reward.bradley_terry_loss(chosen, rejected).mean().backward()
        rm_opt.step()
        rm_opt.zero_grad(set_to_none=True)
    steps["rm"] = (rm_step, 2 * batch * length)

    policy = GPT(mc).to(device)
    dpo_opt = make_optimizer(policy, 5e-5, 0.0, device=device)
    dpo_ids = rand(2 * batch, length)
    dpo_targets = dpo_ids.roll(-1, dims=1)
    dpo_targets[:, : length // 2] = -100
    ref_logps = torch.zeros(batch, device=device)  # precomputed once, as in dpo.py

    def dpo_step():
        with autocast(device):
            chosen, rejected = dpo.concatenated_logprobs(policy, {"input_ids": dpo_ids, "targets": dpo_targets})
        dpo.dpo_loss(chosen, rejected, ref_logps, ref_logps, beta=0.5)[0].mean().backward()
        dpo_opt.step()
        dpo_opt.zero_grad(set_to_none=True)
    steps["dpo"] = (dpo_step, 2 * batch * length)

    actor, ref_policy = GPT(mc).to(device), GPT(mc).to(device).requires_grad_(False)
    critic, scorer = reward.RewardModel(GPT(mc)).to(device), reward.RewardModel(GPT(mc)).to(device).eval()
    ppo_cfg = ppo.PPOConfig(rollout_batch=batch, minibatch=4, ppo_epochs=4, max_new_tokens=response, device=device)
    ppo_opts = (make_optimizer(actor, 1e-5, 0.0, device=device), make_optimizer(critic, 1e-5, 0.0, device=device))
    prompts = rand(batch, prompt).tolist()

    def ppo_step():
        with torch.no_grad(), autocast(device):
            gen = generate(actor, prompts, response, temperature=ppo_cfg.temperature)  # no stop id: 32 tokens
            P, ids, mask = gen.prompt_width, gen.tokens, gen.attention_mask
            logprobs, _ = response_logprobs(actor, ids, mask, P, ppo_cfg.temperature)
            ref_logprobs, _ = response_logprobs(ref_policy, ids, mask, P, ppo_cfg.temperature)
            values = critic.token_values(ids, mask)[:, P - 1:-1]
            scores = scorer(ids, mask).float()
        rollout = {"ids": ids, "attention_mask": mask, "prompt_width": P, "response_mask": mask[:, P:].float(),
                   "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "scores": scores}
        advantages, returns, _ = ppo.rewards_and_advantages(rollout, ppo_cfg.kl_coef, ppo_cfg)
        ppo.ppo_epochs(actor, critic, ppo_opts, rollout, advantages, returns, ppo_cfg, device,
                       torch.Generator().manual_seed(cfg.seed))
    steps["ppo"] = (ppo_step, batch * (prompt + response))

    times = {name: [] for name in steps}
    for fn, _ in steps.values():  # warm-up
        fn()
    for _ in range(cfg.repeats):
        for name, (fn, _) in steps.items():
            for _ in range(cfg.steps if name != "ppo" else max(1, cfg.steps // 10)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    result = {}
    for name, (_, tokens) in steps.items():
        median = sorted(times[name])[len(times[name]) // 2]
        result.update({f"matched_{name}_step_seconds": round(median, 6), f"matched_{name}_tokens_per_s": round(tokens / median),
                       f"matched_{name}_steps_per_s": round(1 / median, 3)})
    return result


def main(cfg):
    seed_everything(cfg.seed)
    device = str(get_device(cfg.device or None))
    model_cfg = GPTConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, rope=True)
    n_params = GPT(model_cfg).num_params()
    if cfg.matched:
        result = {"device": device, "threads": torch.get_num_threads(), "params": n_params,
                  **matched_shapes(cfg, model_cfg, device)}
        for name, what in (("sft", "SFT step, 16 x 128"), ("rm", "reward-model step, 16 pairs x 128 (32 rows)"),
                           ("dpo", "DPO step, 16 pairs x 128 (reference precomputed)"),
                           ("ppo", "PPO iteration, 16 x (96 + 32), 4 epochs")):
            print(f"{what:50} {result[f'matched_{name}_tokens_per_s']:>9,} tokens/s "
                  f"{result[f'matched_{name}_steps_per_s']:>8.3f} steps/s")
        print(json.dumps(result))
        return result
    peak = matmul_peak(device)
    ours, bare = training_step(cfg, model_cfg, device)
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    mfu = ours * flops_per_token / (peak * 1e9)
    kv = {n: generation(model_cfg, device, n) for n in (64, 256)}
    result = {"device": device, "threads": torch.get_num_threads(), "params": n_params,
              "matmul_peak_gflops": round(peak, 1), "pretrain_tokens_per_s": round(ours),
              "bare_tokens_per_s": round(bare), "loop_vs_bare": round(ours / bare, 3), "mfu_pretrain": round(mfu, 3),
              "kv_speedup_64": round(kv[64][0] / kv[64][1], 2), "kv_speedup_256": round(kv[256][0] / kv[256][1], 2),
              "rm_step_seconds": round(reward_step(model_cfg, device), 4),
              "dpo_step_seconds": round(dpo_step(model_cfg, device), 4)}
    phases = ppo_iteration(cfg, model_cfg, device)
    result.update({"ppo_iter_seconds": round(sum(phases.values()), 3),
                   **{f"ppo_{k}_seconds": round(v, 3) for k, v in phases.items()}})
    rows = [("device", f"{device}, {result['threads']} threads"), ("model", f"{n_params / 1e6:.2f}M parameters"),
            ("matmul peak", f"{peak:.1f} GFLOP/s"),
            ("pretraining step, our loop", f"{ours:,.0f} tokens/s"), ("pretraining step, bare loop", f"{bare:,.0f} tokens/s"),
            ("our loop / bare loop", f"{ours / bare:.3f}"), ("MFU, pretraining", f"{mfu:.1%}"),
            ("generate 64 tokens, no cache / cache", f"{kv[64][0]:.2f}s / {kv[64][1]:.2f}s"),
            ("generate 256 tokens, no cache / cache", f"{kv[256][0]:.2f}s / {kv[256][1]:.2f}s"),
            ("reward-model step", f"{result['rm_step_seconds'] * 1000:.0f} ms"),
            ("DPO step", f"{result['dpo_step_seconds'] * 1000:.0f} ms"),
            ("PPO iteration: generate / score / update", " / ".join(f"{phases[k]:.2f}s" for k in phases)
             + f" = {sum(phases.values()):.2f}s" + ("" if cfg.run else " (random weights: 48-token answers)"))]
    for name, value in rows:
        print(f"{name:40} {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(cli(BenchConfig))
