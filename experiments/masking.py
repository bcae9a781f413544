"""
experiments/masking.py: does masking the prompt out of the SFT loss help?

SFT's loss is usually on the answer tokens only (InstructGPT; Alpaca's training code); some find that a
loss on the prompt too does no harm or even helps small data (Shi et al. 2024, "Instruction tuning with
loss over instructions", arXiv 2405.14394). Here the same base model is tuned twice with the pipeline's
SFT settings, `--mask-prompt true` and `false`, and graded on every split.

  python experiments/masking.py           # about 5 minutes on 2 CPU cores (needs runs/default: pipeline.py)
  python experiments/masking.py --quick   # a smoke run on runs/quick (seconds; the numbers mean nothing)

Writes runs/default/experiments/masking/{results.json, table.md, plot.png}.
"""

from dataclasses import dataclass

import lab
from common import cli
from evaluate import EVAL_SPLITS

SPLIT_NAMES = {"test": "test", "heldout_phrasing": "held-out phrasing", "heldout_people": "held-out people",
               "heldout_task": "zero-shot, unseen tasks"}


@dataclass
class MaskingConfig:
    max_steps: int = 600
    """SFT steps of each model (the pipeline's SFT has 600)"""
    eval_n: int = 200
    """prompts per split"""
    n_boot: int = 2000
    """bootstrap resamples of the intervals"""
    quick: bool = False
    """a smoke run on runs/quick with tiny models"""


def main(cfg):
    cfg = lab.with_quick(cfg)
    run = lab.run_folder(cfg.quick)
    folder, tok = lab.out_folder(run, "masking"), lab.tokenizer(run)
    rows = []
    for mask in (True, False):
        options = dict(mask_prompt=mask) if cfg.quick else dict(mask_prompt=mask, max_steps=cfg.max_steps)
        model = lab.sft_point(run, "masking", "masked" if mask else "unmasked", cfg.quick, **options)
        rows.append({"mask_prompt": mask, **lab.grade(model, tok, {s: None for s in EVAL_SPLITS}, cfg.eval_n,
                                                      n_boot=cfg.n_boot)})

    table = ["| loss on | " + " | ".join(SPLIT_NAMES[s] for s in EVAL_SPLITS) + " |", "|---|" + "---|" * len(EVAL_SPLITS)]
    table += [f"| {'answers only (masked)' if r['mask_prompt'] else 'every token'} | "
              + " | ".join(lab.pct(r[s]["accuracy"], r[s]["accuracy_interval"]) for s in EVAL_SPLITS) + " |" for r in rows]
    table += ["", f"Accuracy, greedy, {cfg.eval_n} prompts per split, 95% Wilson intervals; the same base model and steps."]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    xs = list(range(len(EVAL_SPLITS)))
    for offset, r in zip((-0.1, 0.1), rows):
        lab.errorbar(ax, [x + offset for x in xs], [r[s]["accuracy"] for s in EVAL_SPLITS],
                     [r[s]["accuracy_interval"] for s in EVAL_SPLITS],
                     "answers only" if r["mask_prompt"] else "every token", "o")
    ax.set_xticks(xs, [SPLIT_NAMES[s].replace(", ", ",\n") for s in EVAL_SPLITS], fontsize=8)
    ax.set_ylabel("accuracy (greedy)")
    ax.set_title("SFT loss with and without the prompt mask")
    ax.legend()
    return lab.write(folder, "masking", cfg, rows, table, fig, "python experiments/masking.py" + (" --quick" if cfg.quick else ""))


def findings(result):
    """Sentences for docs/experiments.md, from the results."""
    masked, unmasked = result["rows"]
    return [f"{SPLIT_NAMES[s].capitalize()}: " + lab.compare(
        "answers only", masked[s]["accuracy"], masked[s]["accuracy_interval"],
        "every token", unmasked[s]["accuracy"], unmasked[s]["accuracy_interval"]) + "." for s in EVAL_SPLITS]


if __name__ == "__main__":
    main(cli(MaskingConfig))
