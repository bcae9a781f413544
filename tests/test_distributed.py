"""torchrun with 2 CPU processes (gloo on loopback) trains the same weights as one process with the same
global batch, and only rank 0 writes files."""

import json
import os
import socket
import subprocess
import sys

import torch

import pretrain
from test_train import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {**TINY_MODEL, "grad_accum": 2, "max_steps": 3, "log_every": 1}  # 2 micro-batches: one per rank


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(config):
    return [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def read_metrics(out):
    with open(os.path.join(out, "pretrain", "metrics.jsonl")) as f:
        return [m for m in map(json.loads, f) if "loss" in m]  # the training lines


def test_two_cpu_ranks_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    pretrain.train(pretrain.PretrainConfig(out_dir=str(single), **RUN))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo" if sys.platform == "linux" else "lo0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "pretrain.py", *flags({**RUN, "out_dir": ddp})]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    a = torch.load(single / "pretrain" / "model.pt", weights_only=True)
    b = torch.load(ddp / "pretrain" / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 and b["finished"]
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    # the logged losses are those of the whole global batch, written once (by rank 0)
    single_losses = [m["loss"] for m in read_metrics(single)]
    ddp_losses = [m["loss"] for m in read_metrics(ddp)]
    assert len(ddp_losses) == len(single_losses) == 3
    assert all(abs(x - y) < 1e-4 for x, y in zip(single_losses, ddp_losses)), (single_losses, ddp_losses)
    # one checkpoint and no stray files from rank 1 (no .tmp, no second metrics file)
    assert files_under(ddp) == files_under(single)
    assert [f for f in files_under(ddp) if f.endswith(".pt")] == [os.path.join("pretrain", "model.pt")]
