# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Instruction tuning and the loss mask
#
# SFT is next-token prediction on instruction -> answer conversations, with the loss on the
# answer only: the model should learn to *answer*, not to write user questions. This notebook
# shows which tokens carry the loss, then trains the same base model with the mask on and off.

# %%
import os
import shutil

import torch
from IPython.display import HTML, display

import data
import evaluate
import pipeline
import sft
import tasks
from tokenizer import Tokenizer

os.chdir(os.path.dirname(os.path.abspath(pipeline.__file__)))
SMOKE = os.environ.get("NANOINSTRUCT_SMOKE") == "1"

# %% [markdown]
# ## Which tokens carry the loss
# A base model and its tokenizer: from `python pipeline.py` when it has run, otherwise a quick run
# with tiny models (then the accuracies below mean nothing).

# %%
runs = os.environ.get("NANOINSTRUCT_RUNS", "runs")
if os.path.exists("runs/default/pretrain/model.pt") and not SMOKE:
    source = "runs/default"
else:
    pipeline.main(pipeline.PipelineConfig(name="notebook_sft", preset="quick", runs_dir=runs))
    source = os.path.join(runs, "notebook_sft")
tok = Tokenizer.load(os.path.join(source, "tokenizer"))

conversation = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Where does Ezra Dyer live?"},
                {"role": "assistant", "content": "Rome"}]
ids, mask = data.render_chat(tok, conversation)
spans = "".join(f'<span style="background:{"#9f9" if m else "#eee"};margin:1px;padding:2px">'
                f'{tok.decode([i]).replace("<", "&lt;")}</span>' for i, m in zip(ids, mask))
display(HTML(f"<div style='font-family:monospace'>{spans}</div><p>green: loss on this token</p>"))

# %% [markdown]
# `collate` shifts by one for next-token prediction: the target at position t is token t + 1, and
# it carries loss when token t + 1 is part of the answer. The mask moves with the targets.

# %%
batch = data.collate([(ids, mask)], tok.pad_id)
for t in range(len(ids) - 1):
    target = batch["targets"][0, t].item()
    print(f"input {tok.decode([ids[t]])!r:16} -> target {tok.decode([ids[t + 1]])!r:16}",
          "loss" if target != data.IGNORE_INDEX else "")

# %% [markdown]
# ## Masking on vs off, same base model, same budget
# Two short SFT runs from the same base model: the loss on the answers only (the default), and on
# every token (`mask_prompt=False`). Then both answer the same held-out prompts.

# %%
world = tasks.make_world(0)
sets = {k: v for k, v in evaluate.eval_sets(world, 6 if SMOKE else 60).items() if k != "heldout_task"}
results = {}
for mask_prompt in (True, False):
    out = os.path.join(runs, f"notebook_sft_mask_{mask_prompt}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(out, "tokenizer"))
    cfg = sft.SFTConfig(out_dir=out, init=os.path.join(source, "pretrain", "model.pt"), mask_prompt=mask_prompt,
                        max_steps=10 if SMOKE else 150, n_examples=200 if SMOKE else 4000, batch_size=16 if SMOKE else 64,
                        ptx_batch_size=2 if SMOKE else 8, warmup_steps=2 if SMOKE else 15, eval_n=0, quiet=True)
    model, _, _ = sft.train(cfg)
    results[mask_prompt] = evaluate.evaluate(model.eval(), tok, sets)
for split in sets:
    print(f"{split:17} accuracy: masking on {results[True][f'{split}/accuracy']:.0%}, "
          f"off {results[False][f'{split}/accuracy']:.0%}")

# %% [markdown]
# These are this notebook's own numbers, on its budget. How large the difference is on the default
# budget, and whether it exceeds the noise, takes the full SFT run and enough prompts per split.
