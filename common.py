"""
common.py: the training plumbing every stage shares, written once.

  cli(Config)        a command line generated from a config dataclass (field docstrings = --help)
  seed_everything    python, numpy and torch seeds
  make_optimizer     AdamW with weight decay on 2-D weights only
  lr_at              linear warmup, then cosine decay to a floor
  TrainState         what --resume restores and Ctrl-C saves: the model, its optimizers, the step
  fit                the training loop of pretrain, SFT, reward model and DPO: schedule, gradient
                     accumulation, clipping, progress line, metrics file, periodic evaluation,
                     checkpoints, Ctrl-C saves a checkpoint, --resume continues
  setup_distributed  rank, world size and device of a `torchrun` launch (rank 0 of 1 otherwise)
  masked_mean ...    mean, variance and whitening over the real tokens of a padded batch;
                     masked_mean_var: the same over every process's batch

A stage file keeps its algorithm (data, loss) and hands the loop to `fit`. PPO has a loop of its
own (rollouts, then several epochs over them) and uses TrainState, Progress and lr_at.
"""

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import autocast, get_device, load_state, save_checkpoint


def cli(config_cls, argv=None):
    """Parse --field value flags for every field of a config dataclass; return an instance.

    The string literal under each field is its help text (as in CleanRL's Args).
    """
    docs = {name: text.replace("%", "%%") for name, text in _field_docs(config_cls).items()}  # argparse formats help with %
    parser = argparse.ArgumentParser(description=inspect.getdoc(inspect.getmodule(config_cls)).split("\n")[0])
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=default,
                                help=f"{docs.get(f.name, '')} (default: {default})")
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default,
                                help=f"{docs.get(f.name, '')} (default: {default})")
    return config_cls(**vars(parser.parse_args(argv)))


def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_docs(config_cls):
    """{field name: the docstring written under it} read from the source of the class and its bases."""
    docs = {}
    for cls in reversed(config_cls.__mro__):  # a subclass's docstring wins
        try:
            body = ast.parse(inspect.getsource(cls)).body[0].body
        except (OSError, TypeError):
            continue
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_distributed(device=""):
    """(rank, world_size, device) of this process: its place in a `torchrun` launch, else (0, 1, device).

    torchrun starts one process per GPU (or CPU slot) and sets RANK, WORLD_SIZE and LOCAL_RANK in each;
    here they join one process group: NCCL between GPUs, gloo between CPU processes. A plain
    `python stage.py` sets none of them and stays a single process with no process group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, str(get_device(device or None))
    cuda = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"
    if cuda:  # one GPU per process: the LOCAL_RANK-th of this node
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device if cuda else "cpu"


def rank_and_world_size():
    """(rank, world_size): (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier():
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def rank0_first(fn):
    """fn() on rank 0, then, after a barrier, on the other ranks: rank 0 may write files that the
    others then read (a single process just calls fn)."""
    rank, _ = rank_and_world_size()
    result = fn() if rank == 0 else None
    barrier()
    return result if rank == 0 else fn()


def all_reduce_sum(tensor):
    """Sum a tensor over the ranks, in place, and return it (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(model):
    """Average the gradients over the ranks: what DDP does inside backward(), for PPO's own loop."""
    if dist.is_initialized():
        for p in model.parameters():
            if p.grad is not None:
                all_reduce_sum(p.grad).div_(dist.get_world_size())


# Statistics over the real tokens of a padded batch (B, T), mask 1 on real tokens: PPO's.


def masked_mean(values, mask):
    """Mean of values (B, T) over the positions where mask (B, T) is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values, mask):
    """Variance of values (B, T) over the positions where mask (B, T) is 1."""
    return masked_mean((values - masked_mean(values, mask)) ** 2, mask)


def masked_whiten(values, mask, shift_mean=True, moments=None):
    """(values - mean) / std over the valid tokens, pads set to 0. (B, T) -> (B, T). PPO's whitening.

    shift_mean=False adds the mean back: a new scale, the same mean (N+ reward whitening).
    moments: (mean, var) to use instead of this batch's own (PPO passes masked_mean_var's: every process's).
    """
    mean, var = moments if moments is not None else (masked_mean(values, mask), masked_var(values, mask))
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def masked_mean_var(values, mask):
    """(mean, variance) of values over the entries where mask is 1, over the batches of EVERY process
    (sums and counts all-reduced, no gradient): what one process holding all the rollouts would see.
    In a single process: the plain masked mean and variance."""
    values, mask = values.detach(), mask.to(values.dtype)
    total = all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]))  # (sum, count)
    mean = total[0] / total[1].clamp(min=1)
    squares = all_reduce_sum((((values - mean) ** 2) * mask).sum())
    return mean, squares / total[1].clamp(min=1)


def cleanup_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


def make_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95), device="cpu"):
    """AdamW; decay only 2-D weights (matmuls, embeddings), not biases and LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"  # the fused kernel exists only on CUDA
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_at(step, max_steps, lr, warmup_steps, min_lr_frac=0.1):
    """Learning rate at `step`: linear warmup over warmup_steps, then cosine down to min_lr_frac * lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def epoch_batch(n, batch_size, step, seed):
    """Indices of batch `step` when every epoch visits each of n items once, in its own random order
    (seeded by seed + epoch). A batch that crosses an epoch's end takes the rest from the next epoch's
    order, so no item comes twice before every item has come once. A function of (step, seed): a resumed
    run sees the same batches."""
    picks, orders = [], {}
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, j = divmod(i, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        picks.append(orders[epoch][j])
    return picks


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One readable line per interval, a history list for notebooks, and a metrics.jsonl for plots."""

    def __init__(self, total_steps, metrics_path=None, name="", verbose=True, fresh=True):
        """fresh: a run that starts at step 0 replaces the metrics file; a resumed one appends to it."""
        self.total, self.name, self.verbose = total_steps, name, verbose
        self.history = []
        self.metrics_path = metrics_path
        self.start = time.time()
        if metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
            if fresh and os.path.exists(metrics_path):
                os.remove(metrics_path)

    def log(self, step, metrics, tokens_per_s=None, steps_done_this_run=None, print_line=True):
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        if self.metrics_path:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.verbose and print_line:
            parts = [f"{self.name}step {step}/{self.total}"]
            parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
            if tokens_per_s is not None:
                parts.append(f"{tokens_per_s / 1000:.1f}k tok/s")
            elapsed = time.time() - self.start
            if steps_done_this_run:
                parts.append(f"eta {format_seconds(elapsed / steps_done_this_run * (self.total - step))}")
            print(" | ".join(parts), flush=True)


class TrainState:
    """What --resume restores and Ctrl-C saves, for `fit` and for PPO's own loop.

    parts: {"model": the trained module (written with its config by model.save_checkpoint),
    other names: optimizers and modules, each saved as its state_dict under that name}. `step`
    counts COMPLETED optimizer steps (PPO: iterations): the loop updates the weights and sets `step`
    inside `one_step()`, which holds a Ctrl-C back until both are done, so a checkpoint never holds
    weights a step ahead of its `step` (in PPO an iteration's epochs update the weights many times).
    --resume starts at the step after it. `extra` (configs, PPO's kl_coef) is written into every
    checkpoint; the loop may update it. Only rank 0 writes.
    """

    def __init__(self, path, parts, extra=None, rank=0):
        self.path, self.parts, self.extra, self.rank = path, parts, dict(extra or {}), rank
        self.step = 0

    def resume(self, device):
        """Load the checkpoint at `path` into the parts, if it exists. Returns the checkpoint dict ({} if none)."""
        if not os.path.exists(self.path):
            return {}
        ckpt = torch.load(self.path, map_location=device, weights_only=True)
        for name, part in self.parts.items():
            if isinstance(part, torch.nn.Module):
                load_state(part, ckpt[name], self.path)
            else:
                part.load_state_dict(ckpt[name])
        self.step = ckpt["step"]
        print(f"resuming {self.path} from step {self.step}")
        return ckpt

    def save(self, finished=False, **more):
        if self.rank != 0:  # the ranks hold the same weights: one writes
            return
        states = {name: part.state_dict() for name, part in self.parts.items() if name != "model"}
        save_checkpoint(self.path, self.parts["model"],
                        {"step": self.step, "finished": finished, **states, **self.extra, **more})

    @contextmanager
    def one_step(self):
        """Run the block (a step's updates and `self.step = ...`) whole: a Ctrl-C (SIGINT) that arrives
        inside it is raised when it ends. Only the main thread can install a signal handler; elsewhere
        (a notebook's worker thread) the block runs unguarded."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        pending = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt

    @contextmanager
    def saved_on_interrupt(self):
        """Ctrl-C inside the block writes the state after the last completed step, then re-raises."""
        try:
            yield
        except KeyboardInterrupt:
            self.save()
            if self.rank == 0:
                print(f"\ninterrupted: checkpoint saved to {self.path} at step {self.step}; --resume continues")
            raise


def fit(model, cfg, next_batch, loss_fn, ckpt_path, evaluate=None, extra=None, name=""):
    """The training loop shared by pretrain, SFT, the reward model and DPO.

    cfg needs: max_steps, lr, warmup_steps, min_lr_frac, weight_decay, grad_clip, log_every,
    eval_every, ckpt_every, device, resume (and optionally quiet, compile).
    next_batch(step) -> list of micro-batches (gradient accumulation), each a dict of tensors with
        "n" (how many items its loss sums over: tokens, pairs) and "n_tokens" (input tokens, for
        the throughput figure). Being a function of the step makes a resumed run see the same data.
    loss_fn(model, micro_batch) -> (loss_sum, metrics dict of sums over its items).
    The loss of a step is the sum over all micro-batches divided by the total "n": normalised
    by the number of supervised items of the whole step, not averaged per micro-batch.
    Writes ckpt_path (with "step", "optimizer", "finished" and `extra`) every ckpt_every steps,
    at the end, and on Ctrl-C. Returns the history: a list of metric dicts.

    Under torchrun (see setup_distributed) the model is wrapped in DistributedDataParallel and
    rank r trains on micro-batches r, r + W, r + 2W, ... of each step (W ranks): the global batch
    is the same as one process's, so W must divide the number of micro-batches. Only rank 0
    evaluates, logs and writes checkpoints.
    """
    device = cfg.device
    rank, world_size = rank_and_world_size()
    if cfg.warmup_steps > cfg.max_steps and rank == 0:
        print(f"{name}warning: warmup_steps {cfg.warmup_steps} > max_steps {cfg.max_steps}: the learning rate "
              f"never reaches lr {cfg.lr:g} (it peaks at {cfg.lr * cfg.max_steps / cfg.warmup_steps:.3g})")
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device=device)
    state = TrainState(ckpt_path, {"model": model, "optimizer": optimizer}, extra, rank)
    if cfg.resume:
        state.resume(device)
    start_step = state.step
    # DDP: rank 0's parameters are copied to every rank, and backward() averages the gradients over
    # the ranks (an all-reduce overlapped with the backward pass)
    ddp = DDP(model, device_ids=[torch.device(device)] if "cuda" in device else None) if world_size > 1 else None
    # --compile: the training steps run a compiled wrapper that shares the model's parameters;
    # evaluation and checkpoints use the model itself (the wrapper's state_dict keys gain "_orig_mod.")
    step_model = torch.compile(ddp or model) if getattr(cfg, "compile", False) else (ddp or model)
    metrics_path = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "metrics.jsonl")
    progress = Progress(cfg.max_steps, metrics_path if rank == 0 else None, name,
                        verbose=rank == 0 and not getattr(cfg, "quiet", False), fresh=start_step == 0)

    tokens_seen, t_last = 0, time.time()
    with state.saved_on_interrupt():
        for step in range(start_step, cfg.max_steps):
            lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # only rank 0 evaluates; the other ranks wait for it at the next gradient all-reduce
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step > start_step \
                    and rank == 0:
                model.eval()
                progress.log(step, evaluate(model))
            model.train()
            micro_batches = next_batch(step)
            n_total = sum(float(mb["n"]) for mb in micro_batches)  # of the whole step, all ranks together
            if len(micro_batches) % world_size:
                raise ValueError(f"{len(micro_batches)} micro-batches per step do not split over {world_size} "
                                 "ranks: set --grad-accum to a multiple of the number of processes")
            my_micro_batches = micro_batches[rank::world_size]  # this rank's shard of the step
            sums = {}
            for i, mb in enumerate(my_micro_batches):
                mb = {k: v.to(device) if torch.is_tensor(v) else v for k, v in mb.items()}
                last = i == len(my_micro_batches) - 1
                # DDP all-reduces the gradients in the last micro-batch's backward only (no_sync before)
                with ddp.no_sync() if ddp is not None and not last else nullcontext():
                    with autocast(device):
                        loss_sum, metrics = loss_fn(step_model, mb)
                    # x world_size: DDP averages over the ranks, and the step's loss is a SUM over them
                    (loss_sum * world_size / max(n_total, 1.0)).backward()
                for k, v in {"loss": loss_sum, **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)  # no sync here
                tokens_seen += int(mb["n_tokens"])
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            with state.one_step():  # a Ctrl-C here waits: the weights and the step count move together
                optimizer.step()
                state.step = step + 1
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                now = time.time()
                if world_size > 1:  # the sums and the token count of every rank
                    sums = {k: all_reduce_sum(torch.as_tensor(v, dtype=torch.float64, device=device))
                            for k, v in sums.items()}
                    tokens_seen = int(all_reduce_sum(torch.tensor(tokens_seen, device=device)))
                line = {k: float(v) / max(n_total, 1.0) for k, v in sums.items()}
                line.update(lr=lr, grad_norm=float(grad_norm) if cfg.grad_clip > 0 else 0.0)
                progress.log(step + 1, line, tokens_seen / (now - t_last), step + 1 - start_step)
                tokens_seen, t_last = 0, now
            if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
                state.save()
    if evaluate is not None and rank == 0:
        model.eval()
        progress.log(cfg.max_steps, evaluate(model))
    state.save(finished=True)
    barrier()  # the finished checkpoint exists for every rank
    return progress.history
