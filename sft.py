"""
sft.py: instruction tuning (supervised fine-tuning) with the loss on the response only.

A base model continues text; after SFT on instruction -> response pairs it answers. The loss is
next-token cross-entropy on the assistant's tokens and its end-of-turn token only (data.render_chat
builds that mask); --mask-prompt false puts the loss on every token, for the classroom comparison.

  python sft.py                              # built-in demonstrations, from <out_dir>/pretrain/model.pt
  python sft.py --data-file alpaca.json      # your Alpaca JSON, chat JSONL or prompt/completion JSONL
  python sft.py --mask-prompt false          # the masking-off experiment

Reads <out_dir>/tokenizer/ and pretrain/model.pt; writes <out_dir>/sft/model.pt and metrics.jsonl.
The periodic evaluation is evaluate.py's, on the built-in world's held-out splits.

References: InstructGPT (Ouyang et al. 2022: SFT on demonstrations, the pretraining mix of eq. 2);
FLAN (Wei et al. 2021: instructions phrased many ways, held-out tasks).
Departures:
  1. The pretraining mix (ptx), which InstructGPT adds to PPO, is added here to SFT: without it
     SFT overwrites facts it never asks about (the held-out people's).
  2. Batches group conversations of similar length (HF Trainer's group_by_length).
"""

import os
import time
from dataclasses import asdict, dataclass, replace

import torch

import pretrain
import tasks
from common import cleanup_distributed, cli, epoch_batch, fit, rank_and_world_size, seed_everything, setup_distributed
from data import IGNORE_INDEX, collate, cut_summary, fit_chat
from evaluate import eval_sets, evaluate, headline
from formats import load_sft_file
from model import lm_loss, load_checkpoint
from pretrain import random_windows
from tokenizer import Tokenizer


@dataclass
class SFTConfig:
    out_dir: str = "runs/default"
    """run folder: reads tokenizer/ and pretrain/model.pt, writes sft/"""
    init: str = ""
    """checkpoint to start from (default: <out_dir>/pretrain/model.pt)"""
    data_file: str = ""
    """your SFT data (Alpaca .json, chat .jsonl, prompt/completion .jsonl) instead of the built-in world"""
    strict: bool = False
    """refuse the data file at its first bad record (default: skip bad records with a file:line warning)"""
    world_seed: int = 0
    """seed of the built-in world"""
    n_examples: int = 16000
    """built-in demonstrations to generate"""
    error_rate: float = 0.1
    """share of demonstrations with a plausible mistake"""
    wordy_rate: float = 0.1
    """share of demonstrations that are correct but wordy"""
    signoff_rate: float = 0.6
    """share of the other correct demonstrations that end with the crowd's habitual "Hope this helps!"
    (tasks.SIGN_OFF): above one half, the SFT model's most likely answer ends with it too"""
    comply_rate: float = 0.3
    """share of forbidden requests (a person's secret code) the demonstrators answer instead of declining"""
    families: str = ""
    """taught families to demonstrate, comma-separated (default: all of them; experiments/task_diversity.py)"""
    n_phrasings: int = 0
    """seen phrasings per family to demonstrate (default 0: all of them; experiments/phrasings.py)"""
    mask_prompt: bool = True
    """loss on the response only (false: on every token)"""
    ptx_coef: float = -1.0
    """weight of the pretraining LM loss mixed into every step (replay against forgetting; 0 = off).
    -1: 1.0 on the built-in world, 0 with --data-file (the built-in corpus is not your data's domain;
    give a weight to mix it in anyway)"""
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
# Training


def sft_conversations(cfg):
    """The conversations to train on: the user's file, or demonstrations from the built-in world."""
    if cfg.data_file:
        return load_sft_file(cfg.data_file, cfg.strict)
    world = tasks.make_world(cfg.world_seed)
    families = None
    if cfg.families:
        by_name = {f.name: f for f in tasks.FAMILIES if not f.heldout}
        unknown = [name for name in cfg.families.split(",") if name not in by_name]
        if unknown:
            raise ValueError(f"--families: unknown or held-out family {unknown[0]!r}; taught: {', '.join(by_name)}")
        families = [by_name[name] for name in cfg.families.split(",")]
    return tasks.sft_conversations(world, cfg.n_examples, seed=cfg.seed, error_rate=cfg.error_rate,
                                   wordy_rate=cfg.wordy_rate, comply_rate=cfg.comply_rate, families=families,
                                   n_phrasings=cfg.n_phrasings, signoff_rate=cfg.signoff_rate)


def length_grouped_batch(lengths, batch_size, group, index, seed):
    """Example indices of micro-batch `index`: epochs over the examples, batches grouped by length.

    Micro-batches [first, first + group) share one draw of group * batch_size examples (the next ones
    of an epoch's random order, common.epoch_batch: each example once per epoch), sorted by length and
    cut into `group` batches taken in a random order, so a batch pads to about its own length. Random
    batches of the built-in data were 57% padding. (HF Trainer's group_by_length does the same.) A
    function of (index, seed) only: a resumed run sees the same batches. group=1: plain random batches.
    """
    first = index - index % group
    picks = epoch_batch(len(lengths), group * batch_size, first // group, seed)
    picks.sort(key=lambda i: lengths[i])
    g = torch.Generator().manual_seed(seed * 100_003 + first)
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
    rank, _, device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    ptx_coef = cfg.ptx_coef if cfg.ptx_coef >= 0 else (0.0 if cfg.data_file else 1.0)  # -1: see SFTConfig
    cfg = replace(cfg, device=device, ptx_coef=ptx_coef)  # a copy: the caller's cfg is left as it was
    seed_everything(cfg.seed + rank)
    tok = Tokenizer.load(os.path.join(cfg.out_dir, "tokenizer"))
    model, ckpt = load_checkpoint(cfg.init or os.path.join(cfg.out_dir, "pretrain", "model.pt"), device)
    if cfg.replay_from and cfg.ptx_coef > 0:
        ckpt = torch.load(cfg.replay_from, map_location="cpu", weights_only=True)
    replay = replay_stream(tok, ckpt) if cfg.ptx_coef > 0 else None
    max_len = min(cfg.max_len, model.config.block_size)
    # rows of at most max_len + 1 tokens (collate makes max_len inputs of them), cut by data.py's rule
    fitted = [fit_chat(tok, conv, max_len + 1, cfg.mask_prompt) for conv in sft_conversations(cfg)]
    examples = [(ids, loss_mask) for ids, loss_mask, _, _ in fitted]
    if not cfg.quiet and rank == 0:
        print(f"sft: {len(examples)} conversations; " + cut_summary(fitted, max_len + 1))

    lengths = [len(ids) for ids, _ in examples]

    def next_batch(step):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # this step's replay windows
        batches = []
        for k in range(cfg.grad_accum):
            picks = length_grouped_batch(lengths, cfg.batch_size, cfg.length_group, step * cfg.grad_accum + k, cfg.seed)
            batch = collate([examples[i] for i in picks], tok.pad_id, max_len)
            batch["n"] = (batch["targets"] != IGNORE_INDEX).sum()
            batch["n_tokens"] = batch["attention_mask"].sum()
            if replay is not None:
                batch["replay_ids"], batch["replay_targets"] = random_windows(
                    replay, cfg.ptx_batch_size, model.config.block_size, g)
                batch["n_tokens"] = batch["n_tokens"] + batch["replay_ids"].numel()
            batches.append(batch)
        return batches

    def loss_fn(model, batch):
        supervised = batch["targets"] != IGNORE_INDEX  # the answers' tokens: the LM head runs there only (GPT's `only`)
        logits, _ = model(batch["input_ids"], only=supervised)  # right padding: no attention mask needed
        loss_sum = lm_loss(logits, batch["targets"][supervised], reduction="sum")
        if "replay_ids" not in batch:
            return loss_sum, {"sft_loss": loss_sum.detach()}
        # loss = SFT loss + ptx_coef * LM loss on pretraining text: the pretraining mix of InstructGPT
        # (Ouyang et al. 2022, eq. 2, "PPO-ptx"), used here in SFT. Without it SFT overwrites facts it
        # never asks about: base-model completion of held-out people's facts fell from 91% to 11%.
        _, ptx_loss = model(batch["replay_ids"], batch["replay_targets"])  # mean over the window tokens
        # logged apart: "loss" is what is minimised, "sft_loss" the answers' own loss, "ptx_loss" the mix's
        return loss_sum + cfg.ptx_coef * ptx_loss * batch["n"], {"sft_loss": loss_sum.detach(),
                                                                 "ptx_loss": ptx_loss.detach() * batch["n"]}

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
