"""
experiments/task_diversity.py: does instruction tuning on more kinds of task help on tasks never taught?

FLAN (Wei et al. 2021, arXiv 2109.01652, section 4.1) fine-tuned on more and more task clusters and found
zero-shot accuracy on held-out clusters rising with their number; at small model sizes (fig. 7) the
benefit vanished or reversed. Here the same base model is instruction-tuned on k of the 12 taught
families (k = 1, 2, 4, 8, 12; nested: each k adds families to the previous set) with the same number of
demonstrations and steps, then asked
  - zero-shot, the 3 held-out families (`heldout_task`: repeat, last, smaller, never in SFT), and
  - the taught families in the phrasing SFT never shows (`heldout_phrasing`, over the k families trained).

  python experiments/task_diversity.py           # about 5 minutes on 2 CPU cores (needs runs/default: pipeline.py)
  python experiments/task_diversity.py --quick   # a smoke run on runs/quick (seconds; the numbers mean nothing)

Writes runs/default/experiments/task_diversity/{results.json, table.md, plot.png}.
"""

from dataclasses import dataclass

import lab
from common import cli

# The order in which families are added: number, list, word and person tasks take turns, so that every k
# mixes kinds. The secret-code family comes last (it teaches declining, not answering).
ORDER = ["add", "reverse", "person_city", "category", "sort", "upper", "count", "person_job", "compare", "first",
         "person_pet", "secret"]


@dataclass
class TaskDiversityConfig:
    ks: str = "1,2,4,8,12"
    """how many taught families each SFT model sees (the first k of ORDER)"""
    eval_n: int = 600
    """prompts per split before keeping the trained families (heldout_phrasing) or all (heldout_task)"""
    n_boot: int = 2000
    """bootstrap resamples of the intervals"""
    quick: bool = False
    """a smoke run on runs/quick with tiny models"""


def main(cfg):
    cfg = lab.with_quick(cfg)
    run = lab.run_folder(cfg.quick)
    folder, tok = lab.out_folder(run, "task_diversity"), lab.tokenizer(run)
    rows = []
    for k in [int(k) for k in cfg.ks.split(",")]:
        families = ORDER[:k]
        model = lab.sft_point(run, "task_diversity", f"k{k}", cfg.quick, families=",".join(families))
        graded = lab.grade(model, tok, {"heldout_task": None, "heldout_phrasing": families}, cfg.eval_n,
                           n_boot=cfg.n_boot)
        rows.append({"k": k, "families": families, **graded})

    table = ["| families taught (k) | zero-shot, unseen tasks | held-out phrasing (of the k) |", "|---|---|---|"]
    table += [f"| {r['k']} | {lab.pct(r['heldout_task']['accuracy'], r['heldout_task']['accuracy_interval'])} "
              f"| {lab.pct(r['heldout_phrasing']['accuracy'], r['heldout_phrasing']['accuracy_interval'])} |"
              for r in rows]
    table += ["", f"Accuracy, greedy, with 95% Wilson intervals: {rows[0]['heldout_task']['n']} prompts of the held-out "
              f"families; held-out phrasing: {cfg.eval_n} prompts, kept when their family is among the k taught."]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ks = [r["k"] for r in rows]
    for split, label in (("heldout_task", "zero-shot, unseen tasks"), ("heldout_phrasing", "held-out phrasing")):
        lab.errorbar(ax, ks, [r[split]["accuracy"] for r in rows], [r[split]["accuracy_interval"] for r in rows], label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("taught families in SFT (k)")
    ax.set_ylabel("accuracy (greedy)")
    ax.set_title("Task diversity")
    ax.legend()
    return lab.write(folder, "task_diversity", cfg, rows, table, fig,
                     "python experiments/task_diversity.py" + (" --quick" if cfg.quick else ""))


def findings(result):
    """Sentences for docs/experiments.md, from the results."""
    first, last = result["rows"][0], result["rows"][-1]
    lines = []
    for split, what in (("heldout_task", "zero-shot accuracy on the unseen tasks"),
                        ("heldout_phrasing", "accuracy in the held-out phrasing")):
        lines.append(f"{what.capitalize()}: " + lab.compare(
            f"k = {first['k']}", first[split]["accuracy"], first[split]["accuracy_interval"],
            f"k = {last['k']}", last[split]["accuracy"], last[split]["accuracy_interval"]) + ".")
    return lines


if __name__ == "__main__":
    main(cli(TaskDiversityConfig))
