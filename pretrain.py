"""
pretrain.py: train the tokenizer and the base model on plain text.

The base model only learns to continue text. It reads the built-in world's corpus
(tasks.pretrain_corpus: biographies, category facts, skills written as prose, filler stories),
or your own UTF-8 text files with --text-files. Later stages start from its checkpoint.

  python pretrain.py                          # built-in corpus, CPU-sized defaults
  python pretrain.py --text-files my_texts/   # your own .txt files
  python pretrain.py --resume                 # continue an interrupted run (Ctrl-C saves a checkpoint)
  torchrun --nproc_per_node=4 pretrain.py --grad-accum 4   # 4 GPUs, each a quarter of every step's batch

Writes <out_dir>/tokenizer/ (trained first if absent), <out_dir>/pretrain/model.pt and
<out_dir>/pretrain/metrics.jsonl. Documents are joined into one token stream, each starting with
<|bos|>, and the model trains on random windows of it (as nanoGPT does).
"""

import os
from dataclasses import asdict, dataclass, replace

import torch

import tasks
from common import barrier, cleanup_distributed, cli, fit, seed_everything, setup_distributed
from data import encode_content
from formats import load_text
from tokenizer import Tokenizer
from model import GPT, GPTConfig, autocast, lm_loss


@dataclass
class PretrainConfig:
    out_dir: str = "runs/default"
    """run folder: tokenizer/ and pretrain/ are written inside it"""
    text_files: str = ""
    """comma-separated .txt files or folders to train on instead of the built-in corpus"""
    corpus_size: float = 1.0
    """size knob of the built-in corpus (1.0 is about 1.9 million characters of text)"""
    world_seed: int = 0
    """seed of the built-in world"""
    vocab_size: int = 2048
    """BPE vocabulary size, before the special tokens"""
    n_layer: int = 4
    """transformer blocks"""
    n_head: int = 4
    """attention heads"""
    n_embd: int = 128
    """model width"""
    block_size: int = 128
    """context length in tokens"""
    rope: bool = True
    """rotary position embeddings (false: GPT-2's learned positions)"""
    batch_size: int = 32
    """sequences per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    max_steps: int = 650
    """optimizer steps (650 x 32 x 128 = 2.7M tokens, five passes over the corpus)"""
    lr: float = 5e-3
    """peak learning rate (650 steps at 5e-3 reach validation loss 0.927; 850 steps at 3e-3 reach 0.905, 30% slower)"""
    warmup_steps: int = 100
    """linear warmup steps"""
    min_lr_frac: float = 0.1
    """the cosine schedule ends at lr * min_lr_frac"""
    weight_decay: float = 0.1
    """AdamW weight decay on 2-D weights"""
    grad_clip: float = 1.0
    """clip the gradient norm to this (0 = off)"""
    eval_every: int = 300
    """steps between validation-loss measurements"""
    log_every: int = 100
    """steps between progress lines"""
    ckpt_every: int = 300
    """steps between checkpoints"""
    seed: int = 1337
    """training seed (initialisation and batches)"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    resume: bool = False
    """continue from <out_dir>/pretrain/model.pt"""
    quiet: bool = False
    """no progress lines"""
    compile: bool = False
    """torch.compile the model for the training steps (pays off on a GPU; on a CPU the compile takes a minute)"""


def corpus_documents(cfg):
    """The training text as a list of documents: the user's files, or the built-in corpus."""
    if cfg.text_files:
        return [load_text([p.strip() for p in cfg.text_files.split(",") if p.strip()])]
    return tasks.pretrain_corpus(tasks.make_world(cfg.world_seed), size=cfg.corpus_size, seed=cfg.world_seed)


def get_tokenizer(cfg, documents):
    """Load <out_dir>/tokenizer, or train a BPE on the documents and save it there."""
    path = os.path.join(cfg.out_dir, "tokenizer")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return Tokenizer.load(path)
    tok = Tokenizer.train("\n\n".join(documents), cfg.vocab_size)
    tok.save(path)
    return tok


def tokenize_documents(tok, documents):
    """One long stream of token ids, each document preceded by <|bos|>. Returns a LongTensor.

    Each document gets one leading space, like chat messages (data.encode_content).
    """
    ids = []
    for doc in documents:
        ids.append(tok.bos_id)
        ids.extend(encode_content(tok, doc))
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream, batch_size, block_size, generator):
    """batch_size random windows of block_size + 1 tokens -> (inputs, targets), each (B, T)."""
    starts = torch.randint(0, len(stream) - block_size - 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s:s + block_size + 1] for s in starts.tolist()])  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def train(cfg):
    """Tokenizer (if absent) + base model. Returns (model, tokenizer, history)."""
    rank, _, device = setup_distributed(cfg.device)  # (0, 1, device) unless run by torchrun
    cfg = replace(cfg, device=device)  # a copy: the caller's cfg is left as it was
    seed_everything(cfg.seed + rank)  # DDP copies rank 0's initial weights to the other ranks
    documents = corpus_documents(cfg)
    tok = get_tokenizer(cfg, documents) if rank == 0 else None
    barrier()  # under torchrun the other ranks load the tokenizer rank 0 trained and saved
    tok = tok or get_tokenizer(cfg, documents)
    # hold out every 20th document for the validation loss
    train_stream = tokenize_documents(tok, [d for i, d in enumerate(documents) if i % 20 != 19])
    val_stream = tokenize_documents(tok, [d for i, d in enumerate(documents) if i % 20 == 19] or documents[-1:])
    model_cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.block_size,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, rope=cfg.rope)
    model = GPT(model_cfg).to(cfg.device)
    if not cfg.quiet and rank == 0:
        print(f"corpus: {len(documents)} documents, {len(train_stream):,} train tokens, "
              f"{len(val_stream):,} val tokens | model: {model.num_params() / 1e6:.2f}M parameters")

    def next_batch(step):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # same batches on resume
        batches = []
        for _ in range(cfg.grad_accum):
            x, y = random_windows(train_stream, cfg.batch_size, cfg.block_size, g)
            batches.append({"input_ids": x, "targets": y, "n": y.numel(), "n_tokens": x.numel()})
        return batches

    def loss_fn(model, batch):
        logits, _ = model(batch["input_ids"])
        return lm_loss(logits, batch["targets"], reduction="sum"), {}

    val_g = torch.Generator().manual_seed(0)
    val_batches = [random_windows(val_stream, cfg.batch_size, cfg.block_size, val_g) for _ in range(4)]

    @torch.no_grad()
    def evaluate(model):
        with autocast(cfg.device):
            losses = [model(x.to(cfg.device), y.to(cfg.device))[1].item() for x, y in val_batches]
        return {"val_loss": sum(losses) / len(losses)}

    ckpt_path = os.path.join(cfg.out_dir, "pretrain", "model.pt")
    history = fit(model, cfg, next_batch, loss_fn, ckpt_path, evaluate,
                  extra={"stage_config": asdict(cfg)}, name="pretrain | ")
    return model, tok, history


if __name__ == "__main__":
    train(cli(PretrainConfig))
    cleanup_distributed()
