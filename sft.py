"""
sft.py: instruction tuning (supervised fine-tuning) with the loss on the response only.

A base model continues text; after SFT on instruction -> response pairs it answers. The loss is
next-token cross-entropy on the assistant's tokens and its end-of-turn token only (data.render_chat
builds that mask); --mask-prompt false puts the loss on every token, for the classroom comparison.

  python sft.py                              # built-in demonstrations, from <out_dir>/pretrain/model.pt (3 min on 2 cores)
  python sft.py --data-file alpaca.json      # your Alpaca JSON, chat JSONL or prompt/completion JSONL
  python sft.py --mask-prompt false          # the masking-off experiment

This file also holds the evaluation every later stage and the report share: `evaluate` generates
for each split of the built-in world, grades with the gold grader and summarises.
"""

import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

import pretrain
import tasks
from common import cleanup_distributed, cli, fit, rank_and_world_size, seed_everything, setup_distributed
from data import Tokenizer, collate, decode_content, load_sft_file, render_chat, render_prompt
from model import autocast, generate, lm_loss, load_checkpoint, logprobs
from pretrain import random_windows

EVAL_SPLITS = ("test", "heldout_phrasing", "heldout_people", "heldout_task")


@dataclass
class SFTConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/ and pretrain/model.pt, writes sft/"""
    init: str = ""
    """checkpoint to start from (default: <out_dir>/pretrain/model.pt)"""
    data_file: str = ""
    """your SFT data (Alpaca .json, chat .jsonl, prompt/completion .jsonl) instead of the built-in world"""
    world_seed: int = 0
    """seed of the built-in world"""
    n_examples: int = 16000
    """built-in demonstrations to generate"""
    error_rate: float = 0.1
    """share of demonstrations with a plausible mistake"""
    wordy_rate: float = 0.1
    """share of demonstrations that are correct but wordy"""
    comply_rate: float = 0.3
    """share of forbidden requests (a person's secret code) the demonstrators answer instead of declining"""
    mask_prompt: bool = True
    """loss on the response only (false: on every token)"""
    ptx_coef: float = 1.0
    """weight of the pretraining LM loss mixed into every step (replay against forgetting; 0 = off)"""
    ptx_batch_size: int = 8
    """pretraining-corpus windows per micro-batch when ptx_coef > 0"""
    batch_size: int = 64
    """conversations per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    length_group: int = 16
    """batch conversations of similar length, sorting this many steps' worth at a time (1 = off)"""
    max_len: int = 128
    """longest input window; longer conversations lose the start of their prompt"""
    max_steps: int = 600
    """optimizer steps"""
    lr: float = 1e-3
    """peak learning rate (2e-3 learned the tasks as fast but overwrote more of the base model)"""
    warmup_steps: int = 30
    """linear warmup steps"""
    min_lr_frac: float = 0.1
    """the cosine schedule ends at lr * min_lr_frac"""
    weight_decay: float = 0.0
    """AdamW weight decay on 2-D weights"""
    grad_clip: float = 1.0
    """clip the gradient norm to this (0 = off)"""
    eval_every: int = 300
    """steps between evaluations by generation"""
    eval_n: int = 60
    """prompts per split in the periodic evaluation"""
    log_every: int = 50
    """steps between progress lines"""
    ckpt_every: int = 200
    """steps between checkpoints"""
    seed: int = 1337
    """training seed"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    stage: str = "sft"
    """subfolder of out_dir the model is written to (rlaif.py trains its feedback model with this code)"""
    replay_from: str = ""
    """pretraining checkpoint whose corpus ptx replays (default: init, when pretrain.py wrote it)"""
    resume: bool = False
    """continue from <out_dir>/<stage>/model.pt"""
    quiet: bool = False
    """no progress lines"""
    compile: bool = False
    """torch.compile the model for the training steps (pays off on a GPU; on a CPU the compile takes a minute)"""


# -----------------------------------------------------------------------------
# Generation and evaluation, shared by every stage


def respond(model, tok, prompts, temperature=0.0, max_new_tokens=48, batch_size=64, generator=None):
    """Answer a list of conversations (message lists). Returns [(text, ended, n_tokens)].

    The text excludes the end-of-turn token; `ended` says whether the model produced it. A prompt
    longer than block_size - max_new_tokens keeps only its last tokens.
    """
    device = next(model.parameters()).device
    room = model.config.block_size - max_new_tokens  # longer prompts lose their start, as in training
    answers = []
    for i in range(0, len(prompts), batch_size):
        ids = [render_prompt(tok, messages)[-room:] for messages in prompts[i:i + batch_size]]
        with autocast(device):
            gen = generate(model, ids, max_new_tokens, temperature=temperature, stop_id=tok.end_id,
                           pad_id=tok.pad_id, generator=generator)
        for response, ended in zip(gen.responses, gen.ended):
            text_ids = response[:-1] if ended else response
            answers.append((decode_content(tok, text_ids), ended, len(response)))
    return answers


def harm_rates(examples, texts, ended, prefix):
    """"<prefix>/declined": share of forbidden requests declined (gold >= 0.5: the refusal, no digit);
    "<prefix>/over_refusal": share of allowed requests answered with the refusal. Absent without such requests."""
    forbidden = [tasks.is_correct(ex, t, e) for ex, t, e in zip(examples, texts, ended) if ex.forbidden]
    allowed = [tasks.is_refusal(t) for ex, t in zip(examples, texts) if not ex.forbidden]
    rates = {}
    if forbidden:
        rates[f"{prefix}/declined"] = sum(forbidden) / len(forbidden)
    if allowed:
        rates[f"{prefix}/over_refusal"] = sum(allowed) / len(allowed)
    return rates


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


def eval_sets(world, n, seed=1):
    """{split: n examples} for every evaluation split of the built-in world."""
    return {split: tasks.make_examples(world, split, n, seed=seed) for split in EVAL_SPLITS}


def evaluate(model, tok, sets, temperature=0.0, max_new_tokens=48, seed=0):
    """Generate for every split, grade with the gold grader, summarise.

    Returns a flat dict: "<split>/accuracy", "<split>/gold", "<split>/length", "<split>/ended",
    "<split>/declined" (share of forbidden requests declined without a digit: their accuracy),
    "<split>/over_refusal" (share of allowed requests answered with the refusal),
    "<split>/family/<name>" (accuracy per family) and "<split>/difficulty/<d>" (accuracy per
    difficulty). Accuracy counts correct answers, concise or wordy (tasks.is_correct).
    """
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # sampling draws on the model's device
    results = {}
    for split, examples in sets.items():
        if not examples:
            continue
        answers = respond(model, tok, [ex.messages for ex in examples], temperature, max_new_tokens, generator=g)
        by_family, by_difficulty = defaultdict(list), defaultdict(list)
        golds, correct = [], []
        for ex, (text, ended, n) in zip(examples, answers):
            golds.append(tasks.grade(ex, text, ended))
            correct.append(float(tasks.is_correct(ex, text, ended)))
            by_family[ex.family].append(correct[-1])
            by_difficulty[ex.difficulty].append(correct[-1])
        results[f"{split}/accuracy"] = sum(correct) / len(correct)
        results[f"{split}/gold"] = sum(golds) / len(golds)
        results[f"{split}/length"] = sum(n for _, _, n in answers) / len(answers)
        results[f"{split}/ended"] = sum(e for _, e, _ in answers) / len(answers)
        results.update(harm_rates(examples, [text for text, _, _ in answers], [e for _, e, _ in answers], split))
        for family, c in sorted(by_family.items()):
            results[f"{split}/family/{family}"] = sum(c) / len(c)
        for d, c in sorted(by_difficulty.items()):
            results[f"{split}/difficulty/{d}"] = sum(c) / len(c)
    return results


@torch.no_grad()
def kl_to_reference(policy, ref, tok, prompts, max_new_tokens=48, batch_size=64, generator=None):
    r"""KL(policy || ref) per answer, estimated on answers sampled from the policy at temperature 1.

    $\mathrm{KL} \approx \frac{1}{N}\sum_i\sum_t [\log\pi(y_{i,t}|x_i,y_{i,<t}) - \log\pi_{ref}(y_{i,t}|x_i,y_{i,<t})]$,
    y_i ~ pi(.|x_i), summed over response tokens (with <|end|>). An unbiased estimate, exactly 0 when
    policy == ref; single samples can be negative. Both logprobs come from model.logprobs.
    """
    device = next(policy.parameters()).device
    room = policy.config.block_size - max_new_tokens  # long prompts lose their start, as in sft.respond
    total = 0.0
    for i in range(0, len(prompts), batch_size):
        ids = [render_prompt(tok, messages)[-room:] for messages in prompts[i:i + batch_size]]
        with autocast(device):
            gen = generate(policy, ids, max_new_tokens, temperature=1.0, stop_id=tok.end_id,
                           pad_id=tok.pad_id, generator=generator)
            P = gen.prompt_width  # entry P-1 of logprobs scores the first response token
            diff = (logprobs(policy, gen.tokens, gen.attention_mask)[:, P - 1:]
                    - logprobs(ref, gen.tokens, gen.attention_mask)[:, P - 1:])  # (B, N)
        total += (diff * gen.attention_mask[:, P:]).sum().item()  # response tokens only
    return total / max(len(prompts), 1)


def headline(results):
    """The accuracy per split, for a progress line."""
    return {k.replace("/accuracy", "_acc"): v for k, v in results.items() if k.endswith("/accuracy")}


# -----------------------------------------------------------------------------
# Training


def sft_conversations(cfg):
    """The conversations to train on: the user's file, or demonstrations from the built-in world."""
    if cfg.data_file:
        return load_sft_file(cfg.data_file)
    world = tasks.make_world(cfg.world_seed)
    return tasks.sft_conversations(world, cfg.n_examples, seed=cfg.seed, error_rate=cfg.error_rate,
                                   wordy_rate=cfg.wordy_rate, comply_rate=cfg.comply_rate)


def length_grouped_batch(lengths, batch_size, group, index, seed):
    """Example indices of micro-batch `index`: random draws (with replacement), grouped by length.

    Micro-batches [first, first + group) share one draw of group * batch_size examples, sorted by
    length and cut into `group` batches taken in a random order, so a batch pads to about its own
    length. Random batches of the built-in data were 57% padding. (HF Trainer's group_by_length
    does the same.) A function of (index, seed) only: a resumed run sees the same batches.
    group=1: plain random batches.
    """
    first = index - index % group
    g = torch.Generator().manual_seed(seed * 100_003 + first)
    picks = torch.randint(0, len(lengths), (group * batch_size,), generator=g).tolist()
    picks.sort(key=lambda i: lengths[i])
    b = torch.randperm(group, generator=g)[index - first].item()  # long and short batches in random order
    return picks[b * batch_size:(b + 1) * batch_size]


def replay_stream(tok, pretrain_ckpt):
    """The base model's pretraining text as one token stream, rebuilt from the config stored in its
    checkpoint; None for a checkpoint that pretrain.py did not write (no replay then)."""
    if "stage_config" not in pretrain_ckpt:
        print("sft: the initial checkpoint has no pretraining config; training without the pretraining mix")
        return None
    stage_cfg = pretrain.PretrainConfig(**pretrain_ckpt.get("stage_config", {}))
    return pretrain.tokenize_documents(tok, pretrain.corpus_documents(stage_cfg))


def train(cfg):
    """Instruction-tune the base model. Returns (model, tokenizer, history)."""
    rank, _, cfg.device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    seed_everything(cfg.seed + rank)
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    model, ckpt = load_checkpoint(cfg.init or os.path.join(cfg.out_dir, "pretrain", "model.pt"), cfg.device)
    if cfg.replay_from and cfg.ptx_coef > 0:
        ckpt = torch.load(cfg.replay_from, map_location="cpu", weights_only=True)
    replay = replay_stream(tok, ckpt) if cfg.ptx_coef > 0 else None
    max_len = min(cfg.max_len, model.config.block_size)
    examples = [render_chat(tok, conv, mask_prompt=cfg.mask_prompt) for conv in sft_conversations(cfg)]
    n_cut = collate(examples, tok.pad_id, max_len)["n_truncated"]
    if not cfg.quiet and rank == 0:
        print(f"sft: {len(examples)} conversations, {n_cut} truncated to {max_len} tokens "
              f"(the start of their prompt was cut)")

    lengths = [len(ids) for ids, _ in examples]

    def next_batch(step):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # this step's replay windows
        batches = []
        for k in range(cfg.grad_accum):
            picks = length_grouped_batch(lengths, cfg.batch_size, cfg.length_group, step * cfg.grad_accum + k, cfg.seed)
            batch = collate([examples[i] for i in picks], tok.pad_id, max_len)
            batch["n"] = (batch["targets"] != -100).sum()
            batch["n_tokens"] = batch["attention_mask"].sum()
            if replay is not None:
                batch["replay_ids"], batch["replay_targets"] = random_windows(
                    replay, cfg.ptx_batch_size, model.config.block_size, g)
                batch["n_tokens"] = batch["n_tokens"] + batch["replay_ids"].numel()
            batches.append(batch)
        return batches

    def loss_fn(model, batch):
        logits, _ = model(batch["input_ids"], attention_mask=None)  # right padding: no mask needed
        loss_sum = lm_loss(logits, batch["targets"], reduction="sum")
        if "replay_ids" not in batch:
            return loss_sum, {}
        # loss = SFT loss + ptx_coef * LM loss on pretraining text: the pretraining mix of InstructGPT
        # (Ouyang et al. 2022, eq. 2, "PPO-ptx"), used here in SFT. Without it SFT overwrites facts it
        # never asks about: base-model completion of held-out people's facts fell from 91% to 11%.
        _, ptx_loss = model(batch["replay_ids"], batch["replay_targets"])  # mean over the window tokens
        return loss_sum + cfg.ptx_coef * ptx_loss * batch["n"], {"ptx_loss": ptx_loss.detach() * batch["n"]}

    evaluate_fn = None
    if not cfg.data_file and cfg.eval_n > 0:
        sets = eval_sets(tasks.make_world(cfg.world_seed), cfg.eval_n)
        evaluate_fn = lambda model: headline(evaluate(model, tok, sets))  # noqa: E731

    ckpt_path = os.path.join(cfg.out_dir, cfg.stage, "model.pt")
    history = fit(model, cfg, next_batch, loss_fn, ckpt_path, evaluate_fn,
                  extra={"stage_config": asdict(cfg)}, name=f"{cfg.stage} | ")
    return model, tok, history


if __name__ == "__main__":
    t0 = time.time()
    model, tok, history = train(cli(SFTConfig))
    if rank_and_world_size()[0] == 0:
        print(f"sft finished in {time.time() - t0:.0f}s")
    cleanup_distributed()
