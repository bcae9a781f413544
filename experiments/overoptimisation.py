"""
experiments/overoptimisation.py: optimise a learned reward harder and harder: does the true score follow?

Gao, Schulman and Hilton (2022, arXiv 2210.10760) measured it against a "gold" reward model: as best-of-N
and RL push the proxy reward up, the gold score first rises, then falls, and the KL to the starting
policy measures how hard the proxy was pushed. Here the gold rule of the built-in world is the truth
and the run's reward model the proxy, both optimisers start from the run's SFT model:
  - best-of-N, N = 1 ... 64: N answers at T = 0.7, the reward model's favourite kept; its KL to the SFT
    model is at most log N - (N - 1) / N (Stiennon et al. 2020, appendix);
  - PPO (ppo.py) with KL coefficients from 0.5 down to 0 (no leash), the other settings the pipeline's;
    its KL is estimated on its own samples at T = 0.7 (evaluate.kl_to_reference, PPO's estimator).
Every point: proxy (RM score) and gold score of answers sampled at T = 0.7 on the same test prompts.

  python experiments/overoptimisation.py           # about 7 minutes on 2 CPU cores (needs runs/default)
  python experiments/overoptimisation.py --quick   # a smoke run on runs/quick (seconds; the numbers mean nothing)

Writes runs/default/experiments/overoptimisation/{results.json, table.md, plot.png}.
"""

import math
import os
from dataclasses import dataclass

import lab
import pipeline
import ppo
import reward
import tasks
from common import cli, seed_everything
from evaluate import bootstrap_interval, eval_sets, kl_to_reference, respond, sample_and_score, score_responses
from model import load_checkpoint, load_policy

TEMPERATURE = 0.7  # PPO's rollout temperature, and the report card's sampling temperature


@dataclass
class OveroptimisationConfig:
    ns: str = "1,2,4,8,16,32,64"
    """the N of best-of-N"""
    kl_coefs: str = "0.5,0.1,0.02,0"
    """PPO's KL coefficients (0.1: the pipeline's)"""
    eval_n: int = 200
    """test prompts"""
    n_boot: int = 2000
    """bootstrap resamples of the intervals"""
    seed: int = 0
    """seed of the sampling; set again before each model's answers, so a rerun that loads the trained PPO
    models draws the same answers as the run that trained them"""
    quick: bool = False
    """a smoke run on runs/quick with tiny models"""


def interval_row(golds, proxies):
    """Gold and proxy means with bootstrap 95% intervals over the prompts (proxies: answers that ended)."""
    return {"gold": sum(golds) / len(golds), "gold_interval": list(bootstrap_interval(golds)),
            "proxy": sum(proxies) / len(proxies) if proxies else float("nan"),  # no answer ended
            "proxy_interval": list(bootstrap_interval(proxies))}


def best_of_n_rows(sft_model, rm, tok, examples, ns):
    answers, scores = sample_and_score(sft_model, rm, tok, [ex.messages for ex in examples], max(ns), TEMPERATURE)
    rows = []
    for n in ns:
        picks = scores[:, :n].argmax(dim=1).tolist()  # all -inf (no answer ended): the first sample
        chosen = [row[j] for row, j in zip(answers, picks)]
        golds = [tasks.grade(ex, a.text, a.ended) for ex, a in zip(examples, chosen)]
        best = scores[:, :n].max(dim=1).values
        rows.append({"method": "best-of-N", "setting": n, "kl": math.log(n) - (n - 1) / n, "kl_is_bound": True,
                     **interval_row(golds, best[best.isfinite()].tolist())})
    return rows


def ppo_row(run, cfg, kl_coef, sft_model, rm, tok, examples):
    stage = os.path.join("experiments", "overoptimisation", f"ppo_kl{kl_coef:g}")
    path = os.path.join(run, stage, "model.pt")
    if not (os.path.exists(path) and load_checkpoint(path)[1].get("finished")):
        print(f"experiments | overoptimisation | PPO with kl_coef {kl_coef:g}", flush=True)
        quick = pipeline.PRESETS["quick"]["ppo"] if cfg.quick else {}
        ppo.train(ppo.PPOConfig(**{**quick, "out_dir": run, "stage": stage, "kl_coef": kl_coef, "eval_every": 0,
                                   "eval_n": 1, "ckpt_every": 0, "quiet": True, "resume": True}))
    policy = load_policy(path, "cpu")
    seed_everything(cfg.seed)
    prompts = [ex.messages for ex in examples]
    answers = respond(policy, tok, prompts, TEMPERATURE)
    golds = [tasks.grade(ex, a.text, a.ended) for ex, a in zip(examples, answers)]
    ended = [(p, a.text) for p, a in zip(prompts, answers) if a.ended]
    proxies = score_responses(rm, tok, [p for p, _ in ended], [t for _, t in ended]).tolist() if ended else []
    kl = kl_to_reference(policy, sft_model, tok, prompts, temperature=TEMPERATURE)
    return {"method": "PPO", "setting": kl_coef, "kl": kl, "kl_is_bound": False, **interval_row(golds, proxies)}


def main(cfg):
    cfg = lab.with_quick(cfg)
    run = lab.run_folder(cfg.quick, needs=("sft", "reward"))
    folder, tok = lab.out_folder(run, "overoptimisation"), lab.tokenizer(run)
    sft_model = load_policy(os.path.join(run, "sft", "model.pt"), "cpu")
    rm = reward.load_reward_model(os.path.join(run, "reward", "model.pt"), "cpu")
    examples = eval_sets(tasks.make_world(0), cfg.eval_n)["test"]
    seed_everything(cfg.seed)
    rows = best_of_n_rows(sft_model, rm, tok, examples, [int(n) for n in cfg.ns.split(",")])
    rows += [ppo_row(run, cfg, float(c), sft_model, rm, tok, examples) for c in cfg.kl_coefs.split(",")]

    table = ["| optimiser | N / KL coef | KL to SFT (nats) | proxy: RM score | gold score |", "|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['setting']:g} | {'≤ ' if r['kl_is_bound'] else ''}{r['kl']:.2f} "
              f"| {r['proxy']:.2f} ({r['proxy_interval'][0]:.2f}–{r['proxy_interval'][1]:.2f}) "
              f"| {r['gold']:.3f} ({r['gold_interval'][0]:.3f}–{r['gold_interval'][1]:.3f}) |" for r in rows]
    table += ["", f"{len(examples)} test prompts, answers sampled at T = {TEMPERATURE}; 95% bootstrap intervals over "
              "the prompts. Proxy: the reward model's normalised score (answers that ended). Best-of-N's KL is "
              "the bound log N - (N-1)/N; PPO's is estimated on its samples."]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for method, marker in (("best-of-N", "o-"), ("PPO", "s--")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["kl"])
        xs = [r["kl"] for r in mine]
        lab.errorbar(axes[0], xs, [r["gold"] for r in mine], [r["gold_interval"] for r in mine], method, marker)
        lab.errorbar(axes[1], xs, [r["proxy"] for r in mine], [r["proxy_interval"] for r in mine], method, marker)
    for ax, ylabel, title in ((axes[0], "gold score (the truth)", "Gold score vs KL"),
                              (axes[1], "RM score (the proxy)", "Proxy reward vs KL")):
        ax.set_xlabel("KL to the SFT model (nats per answer)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    return lab.write(folder, "overoptimisation", cfg, rows, table, fig,
                     "python experiments/overoptimisation.py" + (" --quick" if cfg.quick else ""))


def findings(result):
    """Sentences for docs/experiments.md, from the results."""
    lines = []
    for method in ("best-of-N", "PPO"):
        mine = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["kl"])
        least, most = mine[0], mine[-1]
        peak = max(mine, key=lambda r: r["gold"])
        lines.append(f"{method}, from the least to the most KL ({least['kl']:.2f} to {most['kl']:.2f} nats): proxy "
                     + lab.compare("at the least", least["proxy"], least["proxy_interval"], "at the most", most["proxy"],
                                   most["proxy_interval"], as_pct=False)
                     + "; gold " + lab.compare("at the least", least["gold"], least["gold_interval"], "at the most",
                                               most["gold"], most["gold_interval"], as_pct=False)
                     + f"; the highest gold, {peak['gold']:.3f}, at {method} setting {peak['setting']:g}.")
        if peak is not most:
            lines.append(f"{method} past its best gold: " + lab.compare(
                f"setting {peak['setting']:g}", peak["gold"], peak["gold_interval"], f"setting {most['setting']:g}",
                most["gold"], most["gold_interval"], as_pct=False) + ".")
    return lines


if __name__ == "__main__":
    main(cli(OveroptimisationConfig))
