"""
experiments/write_docs.py: docs/experiments.md from the experiments' results.

Reads <run>/experiments/<name>/{results.json, table.md, plot.png} of every experiment that has run,
copies each plot and results.json to docs/experiments/<name>.png and <name>.json (notebook 03 reads
one) and writes docs/experiments.md: per experiment, what the literature found (the script's
docstring), the command, the table, the plot and what this world shows (sentences made from the
numbers by the script's `findings`). Nothing in it is typed by hand.

  python experiments/write_docs.py                 # from runs/default
  python experiments/write_docs.py --run runs/quick --out /tmp/docs   # anywhere else
"""

import importlib
import json
import os
import shutil
from dataclasses import dataclass

import lab  # noqa: F401  (puts the project's modules on the path)
from common import cli

EXPERIMENTS = ["task_diversity", "phrasings", "quality_vs_quantity", "masking", "overoptimisation"]


@dataclass
class DocsConfig:
    run: str = "runs/default"
    """the run folder whose experiments/ results are written up"""
    out: str = "docs"
    """where experiments.md and experiments/<name>.png go"""


def literature(module):
    """The script's docstring from its second line up to the commands: the question and the literature,
    as markdown (its "- " lines stay a list)."""
    out = []
    for line in module.__doc__.strip().splitlines()[1:]:
        line = line.strip()
        if line.startswith("python experiments/"):
            break
        if line.startswith("- ") and out and out[-1] and not out[-1].startswith("- "):
            out += ["", line]  # markdown needs a blank line before a list
        elif line.startswith("- ") or not out or not out[-1]:
            out.append(line)  # a list item or a new paragraph
        elif line:
            out[-1] += " " + line
        else:
            out.append("")
    return "\n".join(out).strip()


def section(name, run, out):
    folder = os.path.join(run, "experiments", name)
    if not os.path.exists(os.path.join(folder, "results.json")):
        return None
    module = importlib.import_module(name)
    with open(os.path.join(folder, "results.json")) as f:
        result = json.load(f)
    with open(os.path.join(folder, "table.md")) as f:
        table = f.read().strip()
    os.makedirs(os.path.join(out, "experiments"), exist_ok=True)
    shutil.copy(os.path.join(folder, "plot.png"), os.path.join(out, "experiments", f"{name}.png"))
    shutil.copy(os.path.join(folder, "results.json"), os.path.join(out, "experiments", f"{name}.json"))
    title = module.__doc__.strip().splitlines()[0].split(": ", 1)[1]
    return "\n".join([
        f"## {name}: {title}", "",
        literature(module), "",
        f"`{result['command']}` (commit {result['commit']})", "",
        table, "",
        f"![{name}](experiments/{name}.png)", "",
        "**What this world shows.** " + " ".join(module.findings(result)), ""])


def main(cfg):
    sections = [s for s in (section(name, cfg.run, cfg.out) for name in EXPERIMENTS) if s]
    missing = [name for name in EXPERIMENTS if not os.path.exists(os.path.join(cfg.run, "experiments", name, "results.json"))]
    text = ["# Experiments: the claims of instruction tuning, measured", "",
            "Each experiment is one script in `experiments/` that trains with the stage modules and grades "
            "against the built-in world's gold rule, on the base, SFT and reward models of a pipeline run. Every "
            "figure carries its 95% interval; a difference is claimed only where the intervals do not overlap. "
            "This page is written by `python experiments/write_docs.py` from the experiments' results.json; "
            "rerun an experiment and this command to refresh it.", ""]
    if missing:
        text += [f"Not run yet: {', '.join(missing)}.", ""]
    with open(os.path.join(cfg.out, "experiments.md"), "w") as f:
        f.write("\n".join(text + sections))
    print(f"wrote {os.path.join(cfg.out, 'experiments.md')} ({len(sections)} experiments)")


if __name__ == "__main__":
    main(cli(DocsConfig))
