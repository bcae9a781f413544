"""Tiny end-to-end runs: pretrain -> SFT -> evaluate, the loss falls, resume == uninterrupted, the CLI."""

import dataclasses
import os

import pytest
import torch

import evaluate
import pretrain
import sft
import tasks
from common import cli, fit, lr_at
from model import GPT, GPTConfig, load_checkpoint

TINY_MODEL = dict(corpus_size=0.05, vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=64,
                  batch_size=8, lr=3e-3, warmup_steps=2, log_every=5, eval_every=0, ckpt_every=0,
                  device="cpu", quiet=True)


def tiny_pretrain(out_dir, **overrides):
    return pretrain.train(pretrain.PretrainConfig(out_dir=str(out_dir), **{**TINY_MODEL, "max_steps": 30, **overrides}))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model, tok, history = tiny_pretrain(out)
    return out, tok, history


def test_pretrain_loss_falls_and_checkpoint_is_finished(base_run):
    out, tok, history = base_run
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses
    model, ckpt = load_checkpoint(os.path.join(out, "pretrain", "model.pt"))
    assert ckpt["finished"] and ckpt["step"] == 30
    assert os.path.exists(os.path.join(out, "tokenizer", "tokenizer.json"))
    assert os.path.exists(os.path.join(out, "pretrain", "metrics.jsonl"))


def test_sft_then_evaluate(base_run):
    out, tok, _ = base_run
    cfg = sft.SFTConfig(out_dir=str(out), n_examples=200, batch_size=8, max_steps=25, warmup_steps=2,
                        log_every=5, eval_every=0, eval_n=0, ckpt_every=0, device="", quiet=True)
    before = dataclasses.replace(cfg)
    model, tok, history = sft.train(cfg)
    assert cfg == before  # train(cfg) works on a copy: device "" stays "" (the best available, chosen inside)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert all(h["ptx_loss"] > 0 for h in history if "loss" in h)  # the pretraining mix is on by default
    for h in (h for h in history if "loss" in h):  # "loss" = the answers' own loss + ptx_coef * the mix's
        assert h["loss"] == pytest.approx(h["sft_loss"] + 1.0 * h["ptx_loss"], rel=1e-5)  # ptx_coef -1: 1.0 here
    sets = evaluate.eval_sets(tasks.make_world(0), 4)
    results = evaluate.evaluate(model, tok, sets, max_new_tokens=8)
    for split in evaluate.EVAL_SPLITS:
        assert 0.0 <= results[f"{split}/accuracy"] <= 1.0
        assert 0.0 <= results[f"{split}/ended"] <= 1.0
        assert results[f"{split}/length"] <= 8
    assert any(k.startswith("test/family/") for k in results)
    assert any(k.startswith("test/difficulty/") for k in results)
    sampled = evaluate.evaluate(model, tok, sets, temperature=1.0, max_new_tokens=8)
    assert set(sampled) == set(results)


def test_interrupted_pretrain_resumes_to_the_same_weights(tmp_path, base_run, monkeypatch):
    _, tok, _ = base_run
    for d in ("a", "b"):  # reuse the trained tokenizer so only the model training is compared
        os.makedirs(tmp_path / d / "tokenizer")
        tok.save(str(tmp_path / d / "tokenizer"))
    uninterrupted, _, _ = tiny_pretrain(tmp_path / "a", max_steps=12)

    calls = {"n": 0}
    real_loss = pretrain.lm_loss

    def interrupt_at_step_7(*args, **kwargs):  # the training loss runs once per step
        calls["n"] += 1
        if calls["n"] == 8:  # step 7 never completes
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain, "lm_loss", interrupt_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        tiny_pretrain(tmp_path / "b", max_steps=12)
    _, ckpt = load_checkpoint(str(tmp_path / "b" / "pretrain" / "model.pt"))
    assert ckpt["step"] == 7 and not ckpt["finished"]

    monkeypatch.setattr(pretrain, "lm_loss", real_loss)
    resumed, _, _ = tiny_pretrain(tmp_path / "b", max_steps=12, resume=True)
    for (name, p), q in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_cli_reads_flags_and_booleans():
    cfg = cli(sft.SFTConfig, ["--max-steps", "7", "--mask-prompt", "false", "--lr", "0.01", "--resume"])
    assert cfg.max_steps == 7 and cfg.mask_prompt is False and cfg.lr == 0.01 and cfg.resume is True
    with pytest.raises(SystemExit):
        cli(sft.SFTConfig, ["--mask-prompt", "maybe"])


def test_lr_schedule_warmup_then_cosine_to_floor():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, min_lr_frac=0.1) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_at(100, 100, 1.0, 10, min_lr_frac=0.1) == pytest.approx(0.1)


def test_replay_stream_is_the_pretraining_text(base_run):
    out, tok, _ = base_run
    _, ckpt = load_checkpoint(os.path.join(out, "pretrain", "model.pt"))
    stream = sft.replay_stream(tok, ckpt)
    docs = pretrain.corpus_documents(pretrain.PretrainConfig(**ckpt["stage_config"]))
    assert torch.equal(stream, pretrain.tokenize_documents(tok, docs))
    assert sft.replay_stream(tok, {}) is None  # a checkpoint pretrain.py did not write: no replay


def test_length_grouped_batches_pad_less_and_repeat_exactly():
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 90, (1000,), generator=rng).tolist()
    batch = lambda group, i: sft.length_grouped_batch(lengths, 32, group, i, seed=3)  # noqa: E731
    assert batch(8, 5) == batch(8, 5) and len(batch(8, 5)) == 32  # a function of the index: resume-safe
    # the 8 batches of a group cut one sorted draw: together they are that draw, each a contiguous slice
    group = [batch(8, i) for i in range(8)]
    draw = sorted((i for b in group for i in b), key=lambda i: lengths[i])
    assert sorted(lengths[i] for i in draw) == [lengths[i] for i in draw]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in group)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))  # ranges do not overlap
    # padding: a batch costs batch_size * its longest example
    padded = lambda group: sum(max(lengths[i] for i in batch(group, k)) for k in range(64))  # noqa: E731
    assert padded(16) < 0.75 * padded(1)
    # without replacement: 3 groups of 8 batches (768 of the epoch's 1000 examples) repeat no example
    seen = [i for k in range(24) for i in batch(8, k)]
    assert len(set(seen)) == len(seen)


def test_epoch_batches_visit_every_item_once_per_epoch_even_across_the_wrap():
    from common import epoch_batch
    n, b = 10, 4  # batch 2 holds the last 2 items of epoch 0 and the first 2 of epoch 1
    batches = [epoch_batch(n, b, step, seed=5) for step in range(5)]
    flat = [i for batch in batches for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # each epoch its own order
    assert batches[2] == epoch_batch(n, b, 2, seed=5)  # a function of the step


def test_compiled_training_matches_eager_and_saves_plain_keys(tmp_path, monkeypatch):
    # --compile trains through torch.compile's wrapper; the checkpoint must be the model's own
    # state_dict (no "_orig_mod." keys) and the steps must compute what eager steps compute
    compiled_modules, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled_modules.append(module) or
                        real_compile(module, **kw))
    eager, _, _ = tiny_pretrain(tmp_path / "eager", max_steps=3)
    assert compiled_modules == []
    compiled, _, _ = tiny_pretrain(tmp_path / "compiled", max_steps=3, compile=True)
    assert compiled_modules == [compiled]
    saved, _ = load_checkpoint(os.path.join(tmp_path, "compiled", "pretrain", "model.pt"))
    for (name, p_eager), (_, p_compiled), (_, p_saved) in zip(
            eager.named_parameters(), compiled.named_parameters(), saved.named_parameters()):
        assert torch.allclose(p_eager, p_compiled, atol=1e-4), name
        assert torch.equal(p_compiled, p_saved), name


@pytest.mark.parametrize("module_name", ["pretrain", "sft", "preferences", "reward", "ppo", "dpo", "rlaif",
                                         "pipeline", "chat", "bench"])
def test_every_command_line_prints_its_help(module_name, capsys):
    import dataclasses
    import importlib

    module = importlib.import_module(module_name)
    configs = [v for v in vars(module).values()
               if dataclasses.is_dataclass(v) and v.__module__ == module_name and v.__name__[0] != "_"
               and v.__name__.endswith("Config")]
    assert len(configs) == 1, configs
    with pytest.raises(SystemExit) as exit_info:
        cli(configs[0], ["--help"])  # a "%" in a field's docstring once broke argparse here
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage:")
    assert all(f"--{f.name.replace('_', '-')}" in out for f in dataclasses.fields(configs[0]))


def test_gradient_accumulation_over_uneven_micro_batches_equals_one_batch(tmp_path, monkeypatch):
    """Two micro-batches with 3 and 9 supervised tokens make the same update as one batch of all 12:
    the loss of a step is normalised by ALL its supervised tokens, not averaged per micro-batch
    (a per-micro-batch mean would weigh each of the 3 tokens three times as much). With plain SGD,
    lr 1, the update IS the gradient (AdamW's first step would hide a wrong scale)."""
    import common
    from model import GPT, GPTConfig, IGNORE_INDEX, lm_loss

    monkeypatch.setattr(common, "make_optimizer", lambda model, lr, *a, **k: torch.optim.SGD(model.parameters(), lr=lr))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    targets = torch.randint(0, 50, (2, 9), generator=g)
    targets[0, :6] = IGNORE_INDEX  # row 0: 3 supervised tokens; row 1: 9
    rows = [{"input_ids": ids[i:i + 1], "targets": targets[i:i + 1], "n": (targets[i] != IGNORE_INDEX).sum(),
             "n_tokens": 9} for i in range(2)]
    whole = [{"input_ids": ids, "targets": targets, "n": (targets != IGNORE_INDEX).sum(), "n_tokens": 18}]

    def loss_fn(model, batch):
        logits, _ = model(batch["input_ids"])
        return lm_loss(logits, batch["targets"], reduction="sum"), {}

    cfg = dataclasses.replace(pretrain.PretrainConfig(), max_steps=1, lr=1.0, warmup_steps=0, min_lr_frac=1.0,
                              grad_clip=0.0, log_every=1, eval_every=0, ckpt_every=0, device="cpu", quiet=True)
    params, losses = [], []
    for name, batches in (("accumulated", rows), ("whole", whole)):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
        start = [p.detach().clone() for p in model.parameters()]
        history = common.fit(model, cfg, lambda step: batches, loss_fn, str(tmp_path / name / "model.pt"))
        params.append([p.detach() - s for p, s in zip(model.parameters(), start)])
        losses.append(history[0]["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the logged loss: per supervised token of the step
    for accumulated, whole_batch in zip(*params):
        assert torch.allclose(accumulated, whole_batch, atol=1e-6)
    assert any(d.abs().max() > 1e-4 for d in params[0])  # the step did move the weights


def test_a_warmup_longer_than_the_run_warns(tmp_path, capsys):
    model = GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4))
    cfg = dataclasses.make_dataclass("C", [])()
    for k, v in dict(max_steps=2, lr=1e-2, warmup_steps=10, min_lr_frac=0.1, weight_decay=0.0, grad_clip=0.0,
                     log_every=100, eval_every=0, ckpt_every=0, device="cpu", resume=False, quiet=True).items():
        setattr(cfg, k, v)
    batch = [{"x": torch.ones(4, 2), "n": 4, "n_tokens": 4}]
    fit(model, cfg, lambda step: batch, lambda m, mb: (m.wte.weight.pow(2).sum(), {}), str(tmp_path / "m.pt"))
    assert "warmup_steps 10 > max_steps 2" in capsys.readouterr().out


def test_a_users_data_file_trains_without_the_built_in_mix_unless_asked(base_run, tmp_path):
    out, tok, _ = base_run
    data = tmp_path / "mine.jsonl"
    data.write_text("".join('{"prompt": "Say %d.", "completion": "%d"}\n' % (i, i) for i in range(20)))
    common = dict(out_dir=str(out), data_file=str(data), batch_size=4, max_steps=2, warmup_steps=1, log_every=1,
                  eval_n=0, ckpt_every=0, device="cpu", quiet=True)
    _, _, history = sft.train(sft.SFTConfig(stage="mine", **common))
    assert not any("ptx_loss" in h for h in history)  # off by default with --data-file
    _, _, history = sft.train(sft.SFTConfig(stage="mine_mixed", ptx_coef=0.5, **common))
    assert all(h["ptx_loss"] > 0 for h in history if "loss" in h)  # on when asked for


def test_sft_cuts_a_long_multi_turn_row_by_the_rule_and_says_so(base_run, tmp_path, capsys):
    out, tok, _ = base_run
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "the cat sat. " * 4}
               for i in range(8)]
    rows = [{"messages": history + [{"role": "user", "content": "Say 1."}, {"role": "assistant", "content": "1"}]},
            {"messages": [{"role": "user", "content": "Say 2."}, {"role": "assistant", "content": "2"}]}]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    sft.train(sft.SFTConfig(out_dir=str(out), data_file=str(data), max_len=32, batch_size=2, max_steps=1,
                            warmup_steps=0, eval_n=0, ckpt_every=0, device="cpu", stage="chats"))
    log = capsys.readouterr().out
    # one row is longer than 33 tokens: its oldest turns go, and with them their supervised answers
    assert "sft: 2 conversations; 1 longer than 33 tokens were cut by the truncation rule" in log, log
    assert "1 of them lost" in log


INTERRUPT_POINTS = ["next_batch", "forward", "backward", "optimizer_step", "progress_log", "periodic_save"]


@pytest.mark.parametrize("point", INTERRUPT_POINTS)
def test_a_ctrl_c_anywhere_in_a_step_resumes_to_the_same_weights(tmp_path, monkeypatch, point):
    """A real SIGINT at each point of step 3 (whose end logs and saves), then --resume: bit for bit the
    weights of a run that was never interrupted."""
    import signal
    from types import SimpleNamespace

    import common
    from model import lm_loss
    armed = {"on": False}

    def ctrl_c(at, step):
        if armed["on"] and at == point and step == 3:
            armed["on"] = False  # once
            os.kill(os.getpid(), signal.SIGINT)

    def run(path, resume=False):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
        cfg = SimpleNamespace(max_steps=6, lr=1e-2, warmup_steps=1, min_lr_frac=0.1, weight_decay=0.0, grad_clip=1.0,
                              log_every=2, eval_every=0, ckpt_every=2, device="cpu", resume=resume, quiet=True)

        def next_batch(step):
            ctrl_c("next_batch", step)
            ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(step))
            return [{"ids": ids, "step": step, "n": 14, "n_tokens": 16}]

        def loss_fn(model, mb):
            ctrl_c("forward", mb["step"])
            logits, _ = model(mb["ids"][:, :-1])
            loss = lm_loss(logits, mb["ids"][:, 1:], reduction="sum")
            loss.register_hook(lambda grad: ctrl_c("backward", mb["step"]))  # runs inside backward()
            return loss, {}

        fit(model, cfg, next_batch, loss_fn, str(path))
        return model

    expected = run(tmp_path / "straight.pt").state_dict()
    real_make_optimizer, real_log, real_save = common.make_optimizer, common.Progress.log, common.TrainState.save

    def make_optimizer(*args, **kwargs):
        optimizer = real_make_optimizer(*args, **kwargs)
        real_step = optimizer.step
        optimizer.step = lambda: (real_step(), ctrl_c("optimizer_step", steps.pop(0)))
        return optimizer

    steps = list(range(6))
    monkeypatch.setattr(common, "make_optimizer", make_optimizer)
    monkeypatch.setattr(common.Progress, "log", lambda self, step, *a, **k: (ctrl_c("progress_log", step - 1),
                                                                          real_log(self, step, *a, **k))[1])
    monkeypatch.setattr(common.TrainState, "save", lambda self, *a, **k: (ctrl_c("periodic_save", self.step - 1),
                                                                       real_save(self, *a, **k))[1])
    armed["on"] = True
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted.pt")
    assert not armed["on"]  # the Ctrl-C was sent
    saved = torch.load(tmp_path / "interrupted.pt", weights_only=True)
    assert saved["step"] == (4 if point in ("optimizer_step", "progress_log", "periodic_save") else 3)
    resumed = run(tmp_path / "interrupted.pt", resume=True).state_dict()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
