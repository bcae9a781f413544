"""
pipeline.py: the whole journey on the built-in world in one command, and a report card.

Tokenizer -> base model (pretrain.py) -> SFT model (sft.py) -> comparisons (preferences.py) -> reward
model (reward.py) -> PPO policy (ppo.py) and DPO policy (dpo.py) -> one evaluation of every model
(evaluate.py) -> report card.

  python pipeline.py                   # CPU default into runs/default/ (see the README for the time)
  python pipeline.py --quick           # a smoke run of every stage, in seconds
  python pipeline.py --preset gpu      # larger models and data, for one GPU
  python pipeline.py --name exp1       # another run folder: runs/exp1/
  python pipeline.py --fresh           # delete the run folder and start over
  python pipeline.py --rlaif           # then RLAIF and Constitutional AI too (rlaif.py), with their rows

Each stage writes <run>/<stage>/done.json when it finishes and is skipped when that file exists, so
running the command again after an interruption redoes only what was not finished: the interrupted
stage restarts from its last checkpoint (--resume) where the stage supports it.
Writes <run>/report.md (printed at the end), <run>/report.json and PNG plots in <run>/plots/.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace

import torch

import dpo
import ppo
import preferences
import pretrain
import reward
import rlaif
import sft
import tasks
from common import cli, format_seconds, seed_everything
from evaluate import bon_respond, eval_sets, evaluate_policy, harm_rates, harm_sets, respond, score_responses
from model import get_device, load_checkpoint, load_policy
from tokenizer import Tokenizer

# Overrides of each stage's config dataclass; "cpu" is the stages' own defaults.
PRESETS = {
    "cpu": {"report": {}},
    "quick": {
        "pretrain": dict(corpus_size=0.05, vocab_size=400, n_layer=2, n_head=2, n_embd=48, block_size=96,
                         batch_size=16, max_steps=60, warmup_steps=5, eval_every=0, ckpt_every=0, log_every=20),
        "sft": dict(n_examples=400, batch_size=16, max_steps=60, warmup_steps=5, eval_every=0, eval_n=0,
                    ckpt_every=0, log_every=20, ptx_batch_size=2),
        "preferences": dict(model_free=True, n_prompts=48, n_heldout_prompts=16, max_new_tokens=16),
        "reward": dict(max_new_tokens=16, n_norm=16, bon_n=4, bon_ns="1,2,4", log_every=5),
        "ppo": dict(iterations=2, rollout_batch=8, minibatch=4, ppo_epochs=1, max_new_tokens=16, eval_every=0,
                    eval_n=2, ckpt_every=0),
        "dpo": dict(max_steps=5, batch_size=8, eval_n=0, max_new_tokens=16, log_every=5),
        # the quick models write no verdict or revision a parser could read: fallback keeps the stages going
        "rlaif": dict(feedback_examples=200, feedback_steps=10, batch_size=16, judge_eval_prompts=8, cai_prompts=24,
                      cai_steps=5, max_new_tokens=16, judge_max_new_tokens=16, critique_max_new_tokens=16,
                      fallback=True),
        "report": dict(eval_n=6, bon_n=4, max_new_tokens=16, n_transcript=2),
    },
    "gpu": {  # sized for one modern GPU (bf16 autocast is automatic on CUDA)
        "pretrain": dict(corpus_size=8.0, vocab_size=4096, n_layer=8, n_head=8, n_embd=512, block_size=256,
                         batch_size=64, max_steps=4000, lr=1e-3, warmup_steps=200, eval_every=500, ckpt_every=500),
        "sft": dict(n_examples=40000, batch_size=128, max_steps=2000, lr=3e-4, ptx_batch_size=16, eval_every=500),
        "preferences": dict(n_prompts=8000, n_heldout_prompts=1000),
        "reward": dict(lr=3e-4),
        "ppo": dict(iterations=100, rollout_batch=256, minibatch=64, lr=1e-5),
        "dpo": dict(lr=1e-5, batch_size=64),
        "rlaif": dict(feedback_examples=20000, feedback_steps=1000, batch_size=128, cai_prompts=8000, cai_steps=500),
        "report": dict(eval_n=500),
    },
}
STAGES = ("pretrain", "sft", "preferences", "reward", "ppo", "dpo")
MODELS = ("base", "sft", "bon16", "ppo", "dpo")
# --rlaif: the models of rlaif.py, and the checkpoint of each
RLAIF_MODELS = {"rlaif_ppo": "rlaif/ppo", "rlaif_dpo": "rlaif/dpo", "cai_sl": "cai/sft", "cai_ppo": "cai/ppo"}


@dataclass
class PipelineConfig:
    name: str = "default"
    """run name: everything goes to <runs_dir>/<name>/"""
    runs_dir: str = "runs"
    """folder of all runs"""
    preset: str = "cpu"
    """cpu (default), quick (smoke run of every stage) or gpu"""
    quick: bool = False
    """the same as --preset quick"""
    fresh: bool = False
    """delete the run folder first and redo every stage"""
    eval_n: int = 100
    """prompts per split (test, heldout_phrasing, heldout_people) in the report card"""
    sample_temperature: float = 0.7
    """temperature of the "sampled" columns and of best-of-N (PPO's rollout temperature)"""
    bon_n: int = 16
    """N of the best-of-N row"""
    max_new_tokens: int = 48
    """longest answer in the report"""
    n_transcript: int = 6
    """prompts answered by every model in the report"""
    rlaif: bool = False
    """also run RLAIF and Constitutional AI (rlaif.py) after DPO, and report their models"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""
    seed: int = 1337
    """seed of the evaluation sampling"""


def stage_configs(cfg, run_dir):
    """The config of every stage: its dataclass defaults, the preset's overrides, the run folder."""
    preset = PRESETS[cfg.preset]
    classes = {"pretrain": pretrain.PretrainConfig, "sft": sft.SFTConfig,
               "preferences": preferences.PreferenceConfig, "reward": reward.RewardConfig,
               "ppo": ppo.PPOConfig, "dpo": dpo.DPOConfig, "rlaif": rlaif.RLAIFConfig}
    configs = {name: cls(**{"out_dir": run_dir, "device": cfg.device, **preset.get(name, {})})
               for name, cls in classes.items()}
    for name in ("pretrain", "sft", "reward", "ppo", "dpo"):  # an interrupted stage continues from its checkpoint
        configs[name].resume = True
    # the stages' own end-of-run evaluations are skipped or kept small: the report evaluates every model
    configs["ppo"].eval_every = 0
    configs["ppo"].eval_n = min(configs["ppo"].eval_n, 20)
    configs["dpo"].eval_n, configs["dpo"].compare_sft = 0, False
    return configs


# -----------------------------------------------------------------------------
# The report: every model on the same prompts


def harm_row(name, model, tok, harm, rm, cfg, gen):
    """Declined share of forbidden requests and over-refusal of allowed ones, greedy and sampled."""
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
    return {"declined": {m: rates.get(f"{m}/declined") for m in ("greedy", "sampled")},
            "over_refusal": {m: rates.get(f"{m}/over_refusal") for m in ("greedy", "sampled")}}


def bon_row(model, tok, sets, rm, cfg, gen):
    """The report-card row of best-of-N: bon_n samples per prompt, the RM's favourite kept."""
    examples = [ex for split in sets.values() for ex in split]
    answers = bon_respond(model, rm, tok, [ex.messages for ex in examples], cfg.bon_n,
                          cfg.sample_temperature, cfg.max_new_tokens, gen)
    row, i = {"accuracy": {}}, 0
    for split, split_examples in sets.items():
        picks = range(i, i + len(split_examples))
        row["accuracy"][split] = sum(tasks.is_correct(examples[j], answers[j].text, answers[j].ended)
                                     for j in picks) / len(picks)
        i += len(split_examples)
    gold = [tasks.grade(ex, a.text, a.ended) for ex, a in zip(examples, answers)]
    row.update(gold_greedy=None, gold_sampled=sum(gold) / len(gold),
               # KL(best-of-N || policy) <= log N - (N - 1) / N (Stiennon et al. 2020, appendix)
               kl_to_sft=float(torch.log(torch.tensor(float(cfg.bon_n)))) - (cfg.bon_n - 1) / cfg.bon_n,
               mean_length=sum(a.n_tokens for a in answers) / len(answers),
               ended=sum(a.ended for a in answers) / len(answers),
               rm_score=score_responses(rm, tok, [ex.messages for ex in examples], [a.text for a in answers]).mean().item())
    return row


def model_row(model, tok, sets, rm, ref, cfg, gen):
    """The report-card row of one policy: evaluate.evaluate_policy, greedy and sampled, on the same prompts."""
    results = evaluate_policy(model, tok, sets, ref, rm, cfg.sample_temperature, cfg.max_new_tokens, cfg.seed, gen)
    return {"accuracy": {split: results[f"greedy/{split}/accuracy"] for split in sets},
            "gold_greedy": results["greedy/gold"], "gold_sampled": results["sampled/gold"],
            "mean_length": results["greedy/length"], "ended": results["greedy/ended"],
            "kl_to_sft": results["kl_to_ref"], "rm_score": results["rm_score"]}


def transcripts(models, tok, examples, max_new_tokens):
    """The same prompts answered (greedy) by every model: [(example, {model: (text, ended)})]."""
    answers = {name: respond(model, tok, [ex.messages for ex in examples], 0.0, max_new_tokens)
               for name, model in models.items()}
    return [(ex, {name: answers[name][i][:2] for name in models}) for i, ex in enumerate(examples)]


def report_markdown(report, shown):
    """The report card as Markdown: the table, the transcripts, the plots."""
    def cell(value, percent=False):
        if value is None:
            return "—"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    lines = [f"# Report card: {report['config']['name']} ({report['config']['preset']} preset)", "",
             "| model | test | heldout_phrasing | heldout_people | gold (greedy) | gold (sampled) | KL to SFT | "
             "length | ended | RM score | declined | over-refusal | stage time |", "|" + "---|" * 13]
    stage_of = {"base": "pretrain", "sft": "sft", "bon16": "reward", "ppo": "ppo", "dpo": "dpo", **RLAIF_MODELS}
    for name, row in report["models"].items():
        acc = row["accuracy"]
        seconds = report["stage_seconds"].get(stage_of[name])
        harm = " | ".join(f"{cell(row[k]['greedy'], True)} / {cell(row[k]['sampled'], True)}"
                          for k in ("declined", "over_refusal"))
        lines.append(f"| {name} | {cell(acc['test'], True)} | {cell(acc['heldout_phrasing'], True)} | "
                     f"{cell(acc['heldout_people'], True)} | {cell(row['gold_greedy'])} | {cell(row['gold_sampled'])} | "
                     f"{cell(row['kl_to_sft'])} | {row['mean_length']:.1f} | {cell(row['ended'], True)} | "
                     f"{cell(row['rm_score'])} | {harm} | {format_seconds(seconds) if seconds is not None else '—'} |")
    total = sum(report["stage_seconds"].values())
    lines += ["", "Accuracy: greedy, correct answers (concise or wordy) per split. Gold: the grader's score "
              "(1 concise, 0.5-0.75 wordy, 0 wrong, -1 no end of turn), mean over the three splits; sampled at "
              f"temperature {report['config']['sample_temperature']}. KL: nats per answer on the policy's own "
              "samples (bon16: the bound log N - (N-1)/N). RM score: normalised, on the greedy answers (bon16: on its picks). "
              f"Declined: share of {report['config']['eval_n']} forbidden requests (a person's secret code) declined; "
              f"over-refusal: share of {report['config']['eval_n']} allowed requests refused; greedy / sampled.",
              "", "Stage times: " + ", ".join(f"{k} {format_seconds(v)}" for k, v in report["stage_seconds"].items())
              + f"; {format_seconds(total)} in all.", ""]
    if report.get("judge"):
        j = report["judge"]
        lines += [f"AI judge (rlaif/feedback) against the gold rule on {j['pairs']} held-out pairs of SFT samples: "
                  f"{100 * j['agreement']:.1f}% agree. Labels of the pairs RLAIF trained on: "
                  f"{100 * report['rlaif_labels']['train']:.1f}% agree with gold (the simulated human's, for RLHF: "
                  f"{100 * report['rlaif_labels']['human_train']:.1f}%).", ""]
    lines += ["## The same prompts, every model", ""]
    for item in shown:
        lines.append(f"**[{item['split']}/{item['family']}]** {item['prompt']}  (answer: `{item['answer']}`)")
        lines.append("")
        for name, (text, ended, gold) in item["answers"].items():
            lines.append(f"- {name}: `{text!r}`{'' if ended else ' (no end of turn)'} — gold {gold:+.2f}")
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def read_metrics(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_plots(run_dir):
    """PNG plots from every stage's metrics.jsonl. Returns the file names (none without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed; no plots (pip install -e '.[notebooks]')")
        return []
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    m = {stage: read_metrics(os.path.join(run_dir, stage, "metrics.jsonl")) for stage in STAGES}

    def series(records, key):
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    panels = [("losses.png", [("pretrain", "loss", "pretrain loss"), ("pretrain", "val_loss", "pretrain val loss"),
                              ("sft", "loss", "SFT loss")], "step"),
              ("reward.png", [("reward", "accuracy", "RM train accuracy (labels)")], "step"),
              ("ppo.png", [("ppo", "score", "RM score"), ("ppo", "gold", "gold score"), ("ppo", "kl", "KL to SFT")],
               "iteration"),
              ("dpo.png", [("dpo", "margin", "margin"), ("dpo", "accuracy", "preference accuracy")], "step")]
    written = []
    for filename, curves, xlabel in panels:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3))
        axes = axes if len(curves) > 1 else [axes]
        for ax, (stage, key, title) in zip(axes, curves):
            ax.plot(*series(m[stage], key))
            ax.set_title(title)
            ax.set_xlabel(xlabel)
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "plots", filename), dpi=80)
        plt.close(fig)
        written.append(filename)
    bon = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
    ns = sorted(int(k.split("/")[1]) for k in bon if k.startswith("bon/") and k.endswith("/gold"))
    if ns:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(ns, [bon[f"bon/{n}/gold"] for n in ns], "o-", label="gold score")
        ax.plot(ns, [bon[f"bon/{n}/rm"] for n in ns], "s-", label="RM score")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N")
        ax.set_title("best-of-N on test prompts")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(run_dir, "plots", "best_of_n.png"), dpi=80)
        plt.close(fig)
        written.append("best_of_n.png")
    return written


def report(cfg, run_dir, stage_seconds):
    """Evaluate base, SFT, best-of-N, PPO and DPO on the same prompts. Returns the report dict."""
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
    sets = {split: examples for split, examples in eval_sets(world, cfg.eval_n).items() if split != "heldout_task"}
    harm = harm_sets(world, cfg.eval_n)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = {}
    for name in names:
        model = models["sft" if name == "bon16" else name].eval()
        rows[name] = (bon_row(model, tok, sets, rm, cfg, gen) if name == "bon16"
                      else model_row(model, tok, sets, rm, models["sft"], cfg, gen))
        rows[name].update(harm_row(name, model, tok, harm, rm, cfg, gen))
        print(f"report | evaluated {name}", flush=True)
    shown_examples = [sets[split][i] for i in range(cfg.n_transcript) for split in sets][:cfg.n_transcript]
    shown_examples += harm["forbidden"][:1]  # and one request to decline
    shown_models = ["base", "sft", "ppo", "dpo"] + (["rlaif_ppo", "cai_ppo"] if cfg.rlaif else [])
    shown = [{"split": ex.split, "family": ex.family, "prompt": ex.messages[-1]["content"], "answer": ex.answer,
              "answers": {name: (text, ended, tasks.grade(ex, text, ended)) for name, (text, ended) in answers.items()}}
             for ex, answers in transcripts({k: models[k] for k in shown_models}, tok, shown_examples, cfg.max_new_tokens)]
    result = {"models": rows, "stage_seconds": stage_seconds, "config": asdict(cfg), "transcripts": shown,
              "plots": make_plots(run_dir)}
    if cfg.rlaif:
        result["judge"] = json.load(open(os.path.join(run_dir, "rlaif", "feedback", "eval.json")))
        ai = json.load(open(os.path.join(run_dir, "rlaif", "reward", "eval.json")))
        human = json.load(open(os.path.join(run_dir, "reward", "eval.json")))
        result["rlaif_labels"] = {"train": ai["labels/gold_agreement"], "heldout": ai["labels/heldout_gold_agreement"],
                                  "human_train": human["labels/gold_agreement"]}
    return result


def write_report(run_dir, result):
    """report.json (machine-readable) and report.md (the card). Returns the Markdown."""
    with open(os.path.join(run_dir, "report.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = report_markdown(result, result["transcripts"])
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write(text)
    return text


# -----------------------------------------------------------------------------
# The pipeline


def run_stage(name, fn, run_dir):
    """Run fn() unless <run>/<name>/done.json exists; returns the stage's seconds (from done.json when skipped)."""
    done = os.path.join(run_dir, name, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            seconds = json.load(f)["seconds"]
        print(f"== {name}: done already ({format_seconds(seconds)}), skipped")
        return seconds
    t0 = time.time()
    fn()
    seconds = time.time() - t0
    os.makedirs(os.path.dirname(done), exist_ok=True)
    with open(done, "w") as f:
        json.dump({"seconds": seconds}, f)
    return seconds


def main(cfg):
    """Every stage in order, then the report card. Returns (report dict, report markdown)."""
    preset = "quick" if cfg.quick else cfg.preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = replace(cfg, preset=preset, **PRESETS[preset].get("report", {}))  # a copy: the caller's cfg is left as it was
    run_dir = os.path.join(cfg.runs_dir, cfg.name)
    if cfg.fresh and os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    configs = stage_configs(cfg, run_dir)
    t_start, seconds = time.time(), {}
    pre = configs["pretrain"]
    stages = [("tokenizer", lambda: pretrain.get_tokenizer(pre, pretrain.corpus_documents(pre))),
              ("pretrain", lambda: pretrain.train(pre)), ("sft", lambda: sft.train(configs["sft"])),
              ("preferences", lambda: preferences.make_preferences(configs["preferences"])),
              ("reward", lambda: reward.train(configs["reward"])), ("ppo", lambda: ppo.train(configs["ppo"])),
              ("dpo", lambda: dpo.train(configs["dpo"]))]
    if cfg.rlaif:  # each stage in its folder of the run (rlaif/..., cai/...)
        stages += [(rlaif.STAGE_DIRS[name], fn) for name, fn in rlaif.stages(
            configs["rlaif"], configs["preferences"], configs["reward"], configs["ppo"], configs["dpo"])]
    for i, (name, fn) in enumerate(stages):
        print(f"== stage {i + 1}/{len(stages) + 1}: {name} | elapsed {format_seconds(time.time() - t_start)}",
              flush=True)
        seconds[name] = run_stage(name, fn, run_dir)
    print(f"== stage {len(stages) + 1}/{len(stages) + 1}: report | elapsed {format_seconds(time.time() - t_start)}")
    eval_t0 = time.time()
    stage_seconds = dict(seconds)  # tokenizer, pretrain, ..., dpo, and rlaif/..., cai/... with --rlaif
    stage_seconds["eval"] = 0.0
    result = report(cfg, run_dir, stage_seconds)
    result["stage_seconds"]["eval"] = time.time() - eval_t0
    text = write_report(run_dir, result)
    print(text)
    print(f"pipeline finished in {format_seconds(time.time() - t_start)} (this invocation); report in {run_dir}/report.md")
    return result, text


if __name__ == "__main__":
    main(cli(PipelineConfig))
