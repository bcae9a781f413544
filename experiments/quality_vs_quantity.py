"""
experiments/quality_vs_quantity.py: can a few hundred clean demonstrations do what 16,000 noisy ones do?

LIMA (Zhou et al. 2023, arXiv 2305.11206) tuned a 65B model on 1,000 carefully written examples and
found it competitive with models tuned on far more; InstructGPT's SFT set was 13k demonstrations
(Ouyang et al. 2022). The built-in world's default demonstrations are noisy on purpose: 10% hold a
plausible mistake, 10% are wordy, 48% end with the crowd's habitual "Hope this helps!", and 30% of the
forbidden requests are answered instead of declined.
Here the same base model is tuned, with the same number of steps, on
  - clean demonstrations (no mistake, never wordy, no sign-off, every forbidden request declined): 250
    to 16,000, and
  - the default noisy mix: 1,000 and 16,000,
then graded on the test split (accuracy and gold score) and on forbidden requests (share declined).

  python experiments/quality_vs_quantity.py           # about 7 minutes on 2 CPU cores (needs runs/default)
  python experiments/quality_vs_quantity.py --quick   # a smoke run on runs/quick (seconds; the numbers mean nothing)

Writes runs/default/experiments/quality_vs_quantity/{results.json, table.md, plot.png}.
"""

from dataclasses import dataclass

import lab
from common import cli

CLEAN = dict(error_rate=0.0, wordy_rate=0.0, comply_rate=0.0, signoff_rate=0.0)
NOISY = {}  # sft.SFTConfig's defaults


@dataclass
class QualityConfig:
    clean: str = "250,1000,4000,16000"
    """sizes of the clean demonstration sets"""
    noisy: str = "1000,16000"
    """sizes of the default (noisy) demonstration sets"""
    eval_n: int = 200
    """test prompts"""
    harm_n: int = 100
    """forbidden requests for the declined share"""
    n_boot: int = 2000
    """bootstrap resamples of the intervals"""
    quick: bool = False
    """a smoke run on runs/quick with tiny models"""


def main(cfg):
    cfg = lab.with_quick(cfg)
    run = lab.run_folder(cfg.quick)
    folder, tok = lab.out_folder(run, "quality_vs_quantity"), lab.tokenizer(run)
    rows = []
    for kind, sizes, options in (("clean", cfg.clean, CLEAN), ("noisy", cfg.noisy, NOISY)):
        for n in [int(n) for n in sizes.split(",")]:
            model = lab.sft_point(run, "quality_vs_quantity", f"{kind}{n}", cfg.quick, n_examples=n, **options)
            graded = lab.grade(model, tok, {"test": None}, cfg.eval_n, n_boot=cfg.n_boot)["test"]
            rows.append({"data": kind, "n_examples": n, **graded,
                         **lab.declines(model, tok, cfg.harm_n if not cfg.quick else 6)})

    table = ["| demonstrations | n | test accuracy | gold score | forbidden requests declined |", "|---|---|---|---|---|"]
    table += [f"| {r['data']} | {r['n_examples']} | {lab.pct(r['accuracy'], r['accuracy_interval'])} "
              f"| {r['gold']:.3f} ({r['gold_interval'][0]:.3f}–{r['gold_interval'][1]:.3f}) "
              f"| {lab.pct(r['declined'], r['declined_interval'])} |" for r in rows]
    table += ["", f"Greedy, {cfg.eval_n} test prompts, {rows[0]['n']} forbidden requests; 95% intervals (Wilson; "
              "bootstrap for the gold score). Every model: the same base model, the same steps."]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    for kind, marker in (("clean", "o-"), ("noisy", "s--")):
        mine = [r for r in rows if r["data"] == kind]
        xs = [r["n_examples"] for r in mine]
        lab.errorbar(axes[0], xs, [r["gold"] for r in mine], [r["gold_interval"] for r in mine], kind, marker)
        lab.errorbar(axes[1], xs, [r["declined"] for r in mine], [r["declined_interval"] for r in mine], kind, marker)
    for ax, ylabel, title in ((axes[0], "gold score (test, greedy)", "Quality vs quantity: answers"),
                              (axes[1], "share declined", "Forbidden requests declined")):
        ax.set_xscale("log")
        ax.set_xlabel("SFT demonstrations")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    return lab.write(folder, "quality_vs_quantity", cfg, rows, table, fig,
                     "python experiments/quality_vs_quantity.py" + (" --quick" if cfg.quick else ""))


def findings(result):
    """Sentences for docs/experiments.md, from the results."""
    rows = result["rows"]
    fewest_clean = min((r for r in rows if r["data"] == "clean"), key=lambda r: r["n_examples"])
    most_noisy = max((r for r in rows if r["data"] == "noisy"), key=lambda r: r["n_examples"])
    a, b = f"{fewest_clean['n_examples']} clean", f"{most_noisy['n_examples']} noisy"
    return [
        "Gold score: " + lab.compare(a, fewest_clean["gold"], fewest_clean["gold_interval"], b, most_noisy["gold"],
                                     most_noisy["gold_interval"], as_pct=False) + ".",
        "Test accuracy: " + lab.compare(a, fewest_clean["accuracy"], fewest_clean["accuracy_interval"], b,
                                        most_noisy["accuracy"], most_noisy["accuracy_interval"]) + ".",
        "Forbidden requests declined: " + lab.compare(a, fewest_clean["declined"], fewest_clean["declined_interval"], b,
                                                      most_noisy["declined"], most_noisy["declined_interval"]) + "."]


if __name__ == "__main__":
    main(cli(QualityConfig))
