"""
report.py: the report card of a run: every model on the same prompts, each figure with its 95% interval.

  python report.py                      # evaluate every model of runs/default again: report.md, report.json
  python report.py --name exp1          # the models of runs/exp1/
  python report.py --readme README.md   # only rewrite the README's results block from runs/default/report.json

pipeline.py calls `report` and `write_report` after its last stage. The card holds, per model:
  - accuracy per split, greedy, with its Wilson interval; `heldout_task` is zero-shot on unseen tasks
    (families never taught in SFT, whose skills only the pretraining prose shows: tasks.py);
  - the gold score (tasks.grade), greedy and sampled, the mean over the prompts of GOLD_SPLITS, with
    a bootstrap interval over the prompts;
  - the difference to SFT of each, paired over the same prompts (paired bootstrap): its spread is that
    of the per-prompt difference, not of either score; * when its interval excludes 0;
  - KL to SFT at 0.7 (where PPO's penalty is computed) and at 1.0, PPO's estimator (evaluate.kl_to_reference);
  - length, ended, the reward model's score, declined forbidden requests and over-refused allowed ones.
"""

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import reward
import rlaif
import sft
import tasks
from common import cli, format_seconds, seed_everything
from evaluate import (bon_respond, bootstrap_interval, eval_sets, evaluate_policy, grade_answers, harm_rates, harm_sets,
                      kl_to_reference, respond, score_responses, wilson_interval)
from model import get_device, load_checkpoint, load_policy
from tokenizer import Tokenizer

MODELS = ("base", "sft", "bon16", "ppo", "dpo")
# --rlaif: the models of rlaif.py, and the checkpoint of each
RLAIF_MODELS = {"rlaif_ppo": "rlaif/ppo", "rlaif_dpo": "rlaif/dpo", "cai_sl": "cai/sft", "cai_ppo": "cai/ppo"}
STAGE_OF = {"base": "pretrain", "sft": "sft", "bon16": "reward", "ppo": "ppo", "dpo": "dpo", **RLAIF_MODELS}
SPLITS = ("test", "heldout_phrasing", "heldout_people", "heldout_task")
GOLD_SPLITS = ("test", "heldout_phrasing", "heldout_people")  # the taught families: heldout_task is reported apart
STAGES = ("tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "dpo")  # pipeline.py's, in order


@dataclass
class ReportConfig:
    name: str = "default"
    """run name: the models of <runs_dir>/<name>/"""
    runs_dir: str = "runs"
    """folder of all runs"""
    eval_n: int = 200
    """prompts per split. On the default run, the paired standard error of PPO's and DPO's gold minus
    SFT's, over the 3 * 200 prompts of the gold score, is 0.013-0.014 greedy and 0.017-0.018 sampled
    (per-prompt sd 0.33, 0.43): a difference's 95% interval is +-0.027 and +-0.036, so a 5-point
    difference in gold excludes 0, greedy and sampled (with 100 per split: +-0.038 and +-0.051)."""
    harm_n: int = 100
    """forbidden requests, and allowed ones, of the declined / over-refusal columns"""
    sample_temperature: float = 0.7
    """temperature of the "sampled" columns and of best-of-N (PPO's rollout temperature)"""
    bon_n: int = 16
    """N of the best-of-N row"""
    max_new_tokens: int = 48
    """longest answer in the report"""
    n_transcript: int = 6
    """prompts answered by every model in the report"""
    n_boot: int = 2000
    """bootstrap resamples of every interval of a mean"""
    rlaif: bool = False
    """also report the models of rlaif.py (RLAIF and Constitutional AI)"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    seed: int = 1337
    """seed of the evaluation sampling"""
    readme: str = ""
    """a Markdown file (README.md) whose results block, between the report:start and report:end
    markers, is rewritten from the run's report.json (report.py: and nothing is evaluated)"""


# -----------------------------------------------------------------------------
# Per-prompt grades, and the figures with their intervals


def grades(sets, answers):
    """{split: {"correct": [0/1], "gold": [float]}} of answers {split: [Answer]} to the examples of sets."""
    return {split: dict(zip(("correct", "gold"), grade_answers(sets[split], answers[split]))) for split in sets}


def gold_values(g):
    """The per-prompt gold scores of the GOLD_SPLITS, in one list: their mean is the card's gold score."""
    return [v for split in GOLD_SPLITS if split in g for v in g[split]["gold"]]


def figures(graded, n_boot):
    """accuracy per split (from the first decoding), gold per decoding, and the 95% interval of each.

    graded: {"greedy"|"sampled": grades(...)}; best-of-N has only "sampled"."""
    first = graded.get("greedy", graded.get("sampled"))
    row = {"accuracy": {}, "interval": {}}
    for split, g in first.items():
        k, n = sum(g["correct"]), len(g["correct"])
        row["accuracy"][split] = k / n
        row["interval"][f"accuracy/{split}"] = list(wilson_interval(k, n))
    for mode in ("greedy", "sampled"):
        values = gold_values(graded[mode]) if mode in graded else None
        row[f"gold_{mode}"] = float(np.mean(values)) if values else None
        row["interval"][f"gold_{mode}"] = list(bootstrap_interval(values, n_boot=n_boot)) if values else None
    return row


def paired_differences(graded, sft_graded, n_boot):
    """{"<mode>/gold" and "<mode>/accuracy/<split>": {"diff", "interval", "significant"}}: the model minus
    SFT on the same prompts and decoding, each with its paired-bootstrap 95% interval; significant when
    the interval excludes 0."""
    out = {}
    for mode, g in graded.items():
        pairs = {f"{mode}/gold": (gold_values(g), gold_values(sft_graded[mode]))}
        pairs.update({f"{mode}/accuracy/{split}": (g[split]["correct"], sft_graded[mode][split]["correct"]) for split in g})
        for key, (a, b) in pairs.items():
            lo, hi = bootstrap_interval(a, paired_with=b, n_boot=n_boot)
            out[key] = {"diff": float(np.mean(a) - np.mean(b)), "interval": [lo, hi], "significant": lo > 0 or hi < 0}
    return out


# -----------------------------------------------------------------------------
# The rows


def model_row(model, tok, sets, rm, ref, cfg, gen):
    """One policy, greedy and sampled: (row, graded). evaluate.evaluate_policy on the same prompts, and
    the KL to SFT at the sampling temperature (PPO's) and at 1.0."""
    answers = {}
    results = evaluate_policy(model, tok, sets, ref, rm, cfg.sample_temperature, cfg.max_new_tokens, cfg.seed, gen,
                              kl_temperature=cfg.sample_temperature, answers_out=answers)
    prompts = [ex.messages for examples in sets.values() for ex in examples]
    kl = {f"T={cfg.sample_temperature}": results["kl_to_ref"],  # PPO's penalty, at its rollout temperature
          "T=1.0": kl_to_reference(model, ref, tok, prompts, cfg.max_new_tokens, generator=gen, temperature=1.0)}
    graded = {mode: grades(sets, answers[mode]) for mode in ("greedy", "sampled")}
    row = figures(graded, cfg.n_boot)
    row.update(kl_to_sft=kl, mean_length=results["greedy/length"], ended=results["greedy/ended"],
               rm_score=results["rm_score"])
    return row, graded


def bon_row(model, tok, sets, rm, cfg, gen):
    """Best-of-N: bon_n samples per prompt, the reward model's favourite kept. (row, graded)."""
    examples = [ex for split in sets.values() for ex in split]
    picks = bon_respond(model, rm, tok, [ex.messages for ex in examples], cfg.bon_n,
                        cfg.sample_temperature, cfg.max_new_tokens, gen)
    answers, i = {}, 0
    for split, split_examples in sets.items():
        answers[split], i = picks[i:i + len(split_examples)], i + len(split_examples)
    graded = {"sampled": grades(sets, answers)}
    row = figures(graded, cfg.n_boot)
    # KL(best-of-N || policy) <= log N - (N - 1) / N (Stiennon et al. 2020, appendix), at the sampling temperature
    bound = float(np.log(cfg.bon_n)) - (cfg.bon_n - 1) / cfg.bon_n
    row.update(kl_to_sft={f"T={cfg.sample_temperature}": bound, "T=1.0": None},
               mean_length=sum(a.n_tokens for a in picks) / len(picks), ended=sum(a.ended for a in picks) / len(picks),
               rm_score=score_responses(rm, tok, [ex.messages for ex in examples], [a.text for a in picks]).mean().item())
    return row, graded


def harm_row(name, model, tok, harm, rm, cfg, gen):
    """Declined share of forbidden requests and over-refusal of allowed ones, greedy and sampled, with intervals."""
    examples = harm["forbidden"] + harm["allowed"]
    prompts = [ex.messages for ex in examples]
    rates = {}
    modes = {"sampled": cfg.sample_temperature} if name == "bon16" else {"greedy": 0.0, "sampled": cfg.sample_temperature}
    for mode, temperature in modes.items():  # best-of-N only samples
        if name == "bon16":
            answers = bon_respond(model, rm, tok, prompts, cfg.bon_n, temperature, cfg.max_new_tokens, gen)
        else:
            answers = respond(model, tok, prompts, temperature, cfg.max_new_tokens, generator=gen)
        rates.update(harm_rates(examples, answers, mode))
    row, sizes = {"interval": {}}, {"declined": len(harm["forbidden"]), "over_refusal": len(harm["allowed"])}
    for key, n in sizes.items():
        row[key] = {m: rates.get(f"{m}/{key}") for m in ("greedy", "sampled")}
        for m, p in row[key].items():
            row["interval"][f"{key}/{m}"] = None if p is None else list(wilson_interval(round(p * n), n))
    return row


def transcripts(models, tok, examples, max_new_tokens):
    """The same prompts answered (greedy) by every model: [(example, {model: (text, ended)})]."""
    answers = {name: respond(model, tok, [ex.messages for ex in examples], 0.0, max_new_tokens)
               for name, model in models.items()}
    return [(ex, {name: answers[name][i][:2] for name in models}) for i, ex in enumerate(examples)]


def commit():
    """The git commit of the code (with -dirty when tracked files changed), or None outside a checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def report(cfg, run_dir, stage_seconds):
    """Evaluate base, SFT, best-of-N, PPO and DPO (and --rlaif's models) on the same prompts. Returns the report dict."""
    seed_everything(cfg.seed)
    device = str(get_device(cfg.device or None))
    tok = Tokenizer.load(os.path.join(run_dir, "tokenizer"))
    models = {"base": load_checkpoint(os.path.join(run_dir, "pretrain", "model.pt"), device)[0]}
    for name in ("sft", "ppo", "dpo"):
        models[name] = load_policy(os.path.join(run_dir, name, "model.pt"), device)
    names = list(MODELS)
    if cfg.rlaif:
        for name, folder in RLAIF_MODELS.items():
            models[name] = load_policy(os.path.join(run_dir, folder, "model.pt"), device)
        names += list(RLAIF_MODELS)
    rm = reward.load_reward_model(os.path.join(run_dir, "reward", "model.pt"), device)
    world = tasks.make_world(sft.SFTConfig.world_seed)
    sets = eval_sets(world, cfg.eval_n)
    harm = harm_sets(world, cfg.harm_n)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rows, graded = {}, {}
    for name in names:
        model = models["sft" if name == "bon16" else name].eval()
        rows[name], graded[name] = (bon_row(model, tok, sets, rm, cfg, gen) if name == "bon16"
                                    else model_row(model, tok, sets, rm, models["sft"], cfg, gen))
        harm_figures = harm_row(name, model, tok, harm, rm, cfg, gen)
        rows[name]["interval"].update(harm_figures.pop("interval"))
        rows[name].update(harm_figures)
        print(f"report | evaluated {name}", flush=True)
    for name in names:
        if name != "sft":
            rows[name]["vs_sft"] = paired_differences(graded[name], graded["sft"], cfg.n_boot)
    shown_examples = [sets[split][i] for i in range(cfg.n_transcript) for split in GOLD_SPLITS][:cfg.n_transcript]
    shown_examples += harm["forbidden"][:1]  # and one request to decline
    shown_models = ["base", "sft", "ppo", "dpo"] + (["rlaif_ppo", "cai_ppo"] if cfg.rlaif else [])
    shown = [{"split": ex.split, "family": ex.family, "prompt": ex.messages[-1]["content"], "answer": ex.answer,
              "answers": {name: (text, ended, tasks.grade(ex, text, ended)) for name, (text, ended) in answers.items()}}
             for ex, answers in transcripts({k: models[k] for k in shown_models}, tok, shown_examples, cfg.max_new_tokens)]
    plots = os.path.join(run_dir, "plots")  # pipeline.make_plots draws them
    result = {"models": rows, "stage_seconds": stage_seconds, "config": asdict(cfg), "commit": commit(),
              "transcripts": shown, "plots": sorted(os.listdir(plots)) if os.path.isdir(plots) else []}
    result["reward"] = {k: v for k, v in json.load(open(os.path.join(run_dir, "reward", "eval.json"))).items()
                        if not k.startswith("time")}  # the reward model's figures; its times are in stage_seconds
    if cfg.rlaif:
        result["judge"] = json.load(open(os.path.join(run_dir, "rlaif", "feedback", "eval.json")))
        ai = json.load(open(os.path.join(run_dir, "rlaif", "reward", "eval.json")))
        human = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
        result["rlaif_labels"] = {"train": ai["labels/gold_agreement"], "heldout": ai["labels/heldout_gold_agreement"],
                                  "human_train": human["labels/gold_agreement"]}
    return result


# -----------------------------------------------------------------------------
# Markdown


def _pct(p, interval=None):  # 84.0% (80.1–87.3)
    return "—" if p is None else f"{100 * p:.1f}%" + (f" ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})" if interval else "")


def _num(x, interval=None):  # 0.764 (0.721–0.805)
    return "—" if x is None else f"{x:.3f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _diff(d, points):
    """A paired difference: +3.0 (-1.5, +7.5) in points of accuracy, or +0.084 (+0.041, +0.127) of gold; * significant."""
    if d is None:
        return "—"
    scale, fmt = (100, "+.1f") if points else (1, "+.3f")
    lo, hi = d["interval"]
    return f"{scale * d['diff']:{fmt}} ({scale * lo:{fmt}}, {scale * hi:{fmt}}){' *' if d['significant'] else ''}"


def tables(report):
    """The card's three tables: accuracy and gold with intervals, the paired differences to SFT, the rest."""
    rows, c = report["models"], report["config"]
    t = f"T={c['sample_temperature']}"
    head = (f"| model | test | heldout_phrasing | heldout_people | heldout_task (zero-shot, unseen tasks) | "
            f"gold (greedy) | gold ({t}) |")
    lines = ["**Accuracy and gold score**, 95% intervals in brackets", "", head, "|" + "---|" * 7]
    for name, row in rows.items():
        cells = [_pct(row["accuracy"][s], row["interval"][f"accuracy/{s}"]) for s in SPLITS]
        cells += [_num(row[f"gold_{m}"], row["interval"][f"gold_{m}"]) for m in ("greedy", "sampled")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "**Difference to SFT on the same prompts** (points of accuracy, gold), paired-bootstrap 95% "
              "intervals; * the interval excludes 0", "", head, "|" + "---|" * 7]
    for name, row in rows.items():
        if name == "sft":
            continue
        vs, mode = row["vs_sft"], "greedy" if "greedy/gold" in row["vs_sft"] else "sampled"
        cells = [_diff(vs[f"{mode}/accuracy/{s}"], True) for s in SPLITS]
        cells += [_diff(vs.get(f"{m}/gold"), False) for m in ("greedy", "sampled")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    kl_keys = list(next(iter(rows.values()))["kl_to_sft"])
    lines += ["", "| model | " + " | ".join(f"KL to SFT ({k})" for k in kl_keys) + " | length | ended | RM score | "
              "declined | over-refusal | stage time |", "|" + "---|" * (7 + len(kl_keys))]
    for name, row in rows.items():
        seconds = report["stage_seconds"].get(STAGE_OF[name])
        harm = [" / ".join(_pct(row[k][m], row["interval"].get(f"{k}/{m}")) for m in ("greedy", "sampled"))
                for k in ("declined", "over_refusal")]
        kl = " | ".join(_num(row["kl_to_sft"].get(k)) for k in kl_keys)
        lines.append(f"| {name} | {kl} | {row['mean_length']:.1f} | {_pct(row['ended'])} | "
                     f"{_num(row['rm_score'])} | {harm[0]} | {harm[1]} | "
                     f"{format_seconds(seconds) if seconds is not None else '—'} |")
    lines += ["", f"Accuracy: greedy, correct answers (concise or wordy), {c['eval_n']} prompts per split, Wilson "
              "intervals; bon16's are its picks, compared with SFT's samples. heldout_task asks for tasks SFT "
              "never taught (`last`, `repeat`, `smaller`), whose skills only the pretraining prose shows. "
              "Gold: the grader's score (1 concise, 0.5-0.75 wordy, 0 wrong, -1 no end of turn), mean over the "
              f"{len(GOLD_SPLITS) * c['eval_n']} prompts of {', '.join(GOLD_SPLITS)}, bootstrap intervals over the "
              f"prompts; sampled at {t}. KL: nats per answer on the policy's own samples, at the temperature "
              "named, PPO's estimator (bon16: the bound log N - (N-1)/N). RM score: normalised, on the greedy "
              f"answers (bon16: on its picks). Declined: share of {c['harm_n']} forbidden requests (a person's "
              f"secret code) declined; over-refusal: share of {c['harm_n']} allowed requests refused; greedy / sampled."]
    return lines


def report_markdown(report):
    """The report card as Markdown: the tables, the stage times, the transcripts, the plots."""
    c = report["config"]
    preset = f" ({c['preset']} preset)" if c.get("preset") else ""
    lines = [f"# Report card: {c['name']}{preset}", ""] + tables(report)
    total = sum(report["stage_seconds"].values())
    lines += ["", "Stage times: " + ", ".join(f"{k} {format_seconds(v)}" for k, v in report["stage_seconds"].items())
              + f"; {format_seconds(total)} in all.", ""]
    if report.get("judge"):
        j = report["judge"]
        lines += [f"AI judge (rlaif/feedback) against the gold rule on {j['pairs']} held-out pairs of SFT samples: "
                  f"{100 * j['agreement']:.1f}% agree. Labels of the pairs RLAIF trained on: "
                  f"{100 * report['rlaif_labels']['train']:.1f}% agree with gold (the simulated human's, for RLHF: "
                  f"{100 * report['rlaif_labels']['human_train']:.1f}%).", ""]
    if report.get("reward"):  # the reward model against the gold rule, on its held-out pairs
        lines += ["## The reward model: held-out pairs ordered as the gold rule orders them", ""]
        lines += reward.agreement_table(report["reward"]) + [""]
    lines += ["## The same prompts, every model", ""]
    for item in report["transcripts"]:
        lines.append(f"**[{item['split']}/{item['family']}]** {item['prompt']}  (answer: `{item['answer']}`)")
        lines.append("")
        for name, (text, ended, gold) in item["answers"].items():
            lines.append(f"- {name}: `{text!r}`{'' if ended else ' (no end of turn)'} — gold {gold:+.2f}")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _versus(d, scale=1.0, fmt="+.3f"):  # "+0.089 (+0.062, +0.117), an interval that excludes 0"
    lo, hi = d["interval"]
    verdict = "its interval excludes 0" if d["significant"] else "no difference its interval can show"
    return f"{scale * d['diff']:{fmt}} ({scale * lo:{fmt}}, {scale * hi:{fmt}}), {verdict}"


def findings(report):
    """What the run shows, as sentences made from its numbers (the README's "What this run shows")."""
    rows, t = report["models"], f"T={report['config']['sample_temperature']}"
    sft = rows["sft"]
    base = (f"The base model ends {_pct(rows['base']['ended'])} of its answers (gold {rows['base']['gold_greedy']:.2f}); "
            if "base" in rows else "")
    lines = [f"**Instruction tuning makes an assistant.** {base}SFT ends {_pct(sft['ended'])} and answers "
             f"{_pct(sft['accuracy']['test'], sft['interval']['accuracy/test'])} of test prompts correctly, "
             f"{_pct(sft['accuracy']['heldout_people'], sft['interval']['accuracy/heldout_people'])} about people "
             "whose facts only the pretraining corpus states."]
    for name, label in (("ppo", "PPO"), ("dpo", "DPO")):
        if name in rows:
            vs = rows[name]["vs_sft"]
            lines.append(f"**{label} against SFT**, greedy gold: {_versus(vs['greedy/gold'])}; sampled: "
                         f"{_versus(vs['sampled/gold'])}; KL to SFT {rows[name]['kl_to_sft'][t]:.2f} nats ({t}); "
                         f"forbidden requests declined (greedy) {_pct(rows[name]['declined']['greedy'])}, "
                         f"SFT {_pct(sft['declined']['greedy'])}.")
    if "bon16" in rows:
        n = report["config"]["bon_n"]
        lines.append(f"**Best-of-{n}** (the reward model picks among {n} samples of SFT, no training), sampled gold "
                     f"against SFT's samples: {_versus(rows['bon16']['vs_sft']['sampled/gold'])}.")
    zero_shot = {name: row["accuracy"]["heldout_task"] for name, row in rows.items()}
    moved = []
    for name, row in rows.items():
        if name not in ("sft", "base"):
            mode = "greedy" if "greedy/gold" in row["vs_sft"] else "sampled"
            moved.append(f"{name} {_versus(row['vs_sft'][f'{mode}/accuracy/heldout_task'], 100, '+.1f')}")
    lines.append(f"**Zero-shot on unseen tasks** (heldout_task): every model at most {_pct(max(zero_shot.values()))}; "
                 "points against SFT: " + "; ".join(moved) + ".")
    r = report.get("reward") or {}
    baselines = {k.split("/")[2]: v for k, v in r.items() if k.startswith("heldout/baseline/") and k.endswith("/gold_accuracy")}
    if "heldout/gold_accuracy" in r and baselines:
        best = max(baselines, key=baselines.get)
        lines.append(f"**The reward model** orders {_pct(r['heldout/gold_accuracy'])} of its held-out pairs as the gold "
                     f"rule does; the best score that needs no comparisons ({best}) orders {_pct(baselines[best])}.")
    return ["- " + line for line in lines]


README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"


def readme_block(report):
    """The README's results block, written from a report.json: its tables and where they come from."""
    c, total = report["config"], sum(report["stage_seconds"].values())
    source = (f"Written by `python report.py --readme README.md` from `{c['runs_dir']}/{c['name']}/report.json`: "
              f"`python pipeline.py` with the {c.get('preset')} preset (every stage at its default seed, evaluation "
              f"seed {c['seed']}), code at commit `{report.get('commit')}`, {format_seconds(total)} for every stage and the report.")
    times = ", ".join(f"{k} {format_seconds(v)}" for k, v in report["stage_seconds"].items())
    return "\n".join([README_START, source, ""] + tables(report)
                     + ["", f"Stage times: {times}; {format_seconds(total)} in all.", "",
                        "**What this run shows** (sentences made from the numbers above):", ""]
                     + findings(report) + [README_END])


def update_readme(path, report):
    """Replace the block between README_START and README_END in the file at path. Returns the block."""
    text = open(path, encoding="utf-8").read()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path}: no results block; put the lines {README_START} and {README_END} where it goes")
    before, rest = text.split(README_START, 1)
    block = readme_block(report)
    with open(path, "w", encoding="utf-8") as f:
        f.write(before + block + rest.split(README_END, 1)[1])
    return block


def write_report(run_dir, result):
    """report.json (machine-readable) and report.md (the card). Returns the Markdown."""
    with open(os.path.join(run_dir, "report.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = report_markdown(result)
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def main(cfg):
    """Re-make the report card of a finished run (or, with --readme, only the README block). Returns the text."""
    run_dir = os.path.join(cfg.runs_dir, cfg.name)
    if cfg.readme:
        with open(os.path.join(run_dir, "report.json")) as f:
            block = update_readme(cfg.readme, json.load(f))
        print(block)
        return block
    done = {stage: os.path.join(run_dir, stage, "done.json") for stage in STAGES + tuple(rlaif.STAGE_DIRS.values())}
    stage_seconds = {stage: json.load(open(path))["seconds"] for stage, path in done.items() if os.path.exists(path)}
    t0 = time.time()
    result = report(cfg, run_dir, stage_seconds)
    result["stage_seconds"]["eval"] = time.time() - t0
    text = write_report(run_dir, result)
    print(text)
    return text


if __name__ == "__main__":
    main(cli(ReportConfig))
