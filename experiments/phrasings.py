"""
experiments/phrasings.py: do varied phrasings let a model follow an instruction worded anew?

Instruction-tuning collections write each task in many templates (FLAN: ten per dataset, Wei et al.
2021; Super-NaturalInstructions, Wang et al. 2022), on the view that varied phrasings teach the model
to read the instruction rather than to match one template. Here the same base model is tuned on the 12
taught families with 1, 2, 4 or all 8 seen phrasings per family (the same number of demonstrations and
steps), then asked in the ninth phrasing, which SFT never shows (`heldout_phrasing`), and in the seen
ones on new items (`test`).

  python experiments/phrasings.py           # about 4 minutes on 2 CPU cores (needs runs/default: pipeline.py)
  python experiments/phrasings.py --quick   # a smoke run on runs/quick (seconds; the numbers mean nothing)

Writes runs/default/experiments/phrasings/{results.json, table.md, plot.png}.
"""

from dataclasses import dataclass

import lab
from common import cli


@dataclass
class PhrasingsConfig:
    n_phrasings: str = "1,2,4,8"
    """seen phrasings per family in each SFT model's demonstrations (8: all)"""
    eval_n: int = 200
    """prompts per split"""
    n_boot: int = 2000
    """bootstrap resamples of the intervals"""
    quick: bool = False
    """a smoke run on runs/quick with tiny models"""


def main(cfg):
    cfg = lab.with_quick(cfg)
    run = lab.run_folder(cfg.quick)
    folder, tok = lab.out_folder(run, "phrasings"), lab.tokenizer(run)
    rows = []
    for p in [int(p) for p in cfg.n_phrasings.split(",")]:
        model = lab.sft_point(run, "phrasings", f"p{p}", cfg.quick, n_phrasings=p)
        rows.append({"n_phrasings": p, **lab.grade(model, tok, {"test": None, "heldout_phrasing": None}, cfg.eval_n,
                                                   n_boot=cfg.n_boot)})

    table = ["| phrasings per family | held-out phrasing | test (seen phrasings, new items) |", "|---|---|---|"]
    table += [f"| {r['n_phrasings']} | {lab.pct(r['heldout_phrasing']['accuracy'], r['heldout_phrasing']['accuracy_interval'])} "
              f"| {lab.pct(r['test']['accuracy'], r['test']['accuracy_interval'])} |" for r in rows]
    table += ["", f"Accuracy, greedy, {cfg.eval_n} prompts per split, 95% Wilson intervals."]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    xs = [r["n_phrasings"] for r in rows]
    for split, label in (("heldout_phrasing", "held-out phrasing"), ("test", "test (seen phrasings)")):
        lab.errorbar(ax, xs, [r[split]["accuracy"] for r in rows], [r[split]["accuracy_interval"] for r in rows], label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("seen phrasings per family in SFT")
    ax.set_ylabel("accuracy (greedy)")
    ax.set_title("Phrasing diversity")
    ax.legend()
    return lab.write(folder, "phrasings", cfg, rows, table, fig,
                     "python experiments/phrasings.py" + (" --quick" if cfg.quick else ""))


def findings(result):
    """Sentences for docs/experiments.md, from the results."""
    first, last = result["rows"][0], result["rows"][-1]
    return [f"{split_name.capitalize()}: " + lab.compare(
        f"{first['n_phrasings']} phrasing(s)", first[split]["accuracy"], first[split]["accuracy_interval"],
        f"{last['n_phrasings']} phrasings", last[split]["accuracy"], last[split]["accuracy_interval"]) + "."
        for split, split_name in (("heldout_phrasing", "held-out phrasing"), ("test", "test"))]


if __name__ == "__main__":
    main(cli(PhrasingsConfig))
