"""Tests of the report card's numbers: the intervals by hand, the figures and paired differences of fixed
answers, the README block it writes, and splits that share no prompt with any training set."""

import numpy as np
import pytest

import evaluate
import ppo
import preferences
import report
import sft
import tasks
from evaluate import Answer


def test_wilson_interval_by_hand():
    # 5 / 10: centre (0.5 + z^2/20) / (1 + z^2/10) = 0.5, half 1.96 * sqrt(0.025 + z^2/400) / (1 + z^2/10)
    lo, hi = evaluate.wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = evaluate.wilson_interval(0, 10)  # not empty at 0 successes: [0, z^2 / (n + z^2)]
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2))
    lo, hi = evaluate.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / (10 + 1.96 ** 2))
    # n = 6 and n = 11: the formula's rounding lands a hair inside the bound, so p fell outside its interval
    assert evaluate.wilson_interval(6, 6)[1] == 1.0 and evaluate.wilson_interval(0, 11)[0] == 0.0


def test_bootstrap_interval_of_a_mean_and_of_a_paired_difference():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, 400)
    lo, hi = evaluate.bootstrap_interval(x, n_boot=4000)
    half = 1.96 * x.std() / np.sqrt(len(x))  # the normal approximation, which the bootstrap matches here
    assert lo == pytest.approx(x.mean() - half, abs=0.02) and hi == pytest.approx(x.mean() + half, abs=0.02)
    assert evaluate.bootstrap_interval([0.5] * 20) == (0.5, 0.5)
    # paired: b is a plus exactly 0.1 on every prompt, so the difference is 0.1 with no spread at all,
    # although a alone varies a lot (an unpaired comparison would see an interval of about +-0.14)
    a = rng.normal(0.0, 1.0, 400)
    assert evaluate.bootstrap_interval(a + 0.1, paired_with=a) == pytest.approx((0.1, 0.1))
    assert evaluate.bootstrap_interval(x, seed=3) == evaluate.bootstrap_interval(x, seed=3)  # seeded


def ex(split, family, answer):
    return tasks.Example(family=family, split=split, messages=[{"role": "user", "content": f"{split} {family}?"}],
                         answer=answer, difficulty=1, phrasing=0, item=(answer,))


# two splits; per prompt (correct, gold): "5" concise right (1, 1), "6" wrong (0, 0), unended (0, -1)
SETS = {"test": [ex("test", "add", "5"), ex("test", "add", "6")], "heldout_task": [ex("heldout_task", "last", "cat")]}
SFT = {"test": [Answer("5", True, 2), Answer("7", True, 2)], "heldout_task": [Answer("cat", False, 48)]}
POLICY = {"test": [Answer("5", True, 2), Answer("6", True, 2)], "heldout_task": [Answer("dog", True, 2)]}


def test_figures_and_paired_differences_of_fixed_answers():
    sft_g = {"greedy": report.grades(SETS, SFT)}
    pol_g = {"greedy": report.grades(SETS, POLICY)}
    assert sft_g["greedy"]["test"] == {"correct": [1.0, 0.0], "gold": [1.0, 0.0]}
    assert sft_g["greedy"]["heldout_task"] == {"correct": [0.0], "gold": [-1.0]}
    row = report.figures(pol_g, n_boot=200)
    assert row["accuracy"] == {"test": 1.0, "heldout_task": 0.0}
    assert row["interval"]["accuracy/test"] == pytest.approx(list(evaluate.wilson_interval(2, 2)))
    assert row["gold_greedy"] == 1.0  # the mean over GOLD_SPLITS only: heldout_task's 0 is reported apart
    assert row["gold_sampled"] is None and row["interval"]["gold_sampled"] is None
    vs = report.paired_differences(pol_g, sft_g, n_boot=200)
    assert vs["greedy/gold"]["diff"] == pytest.approx(0.5)  # (1 + 1) / 2 - (1 + 0) / 2
    assert vs["greedy/accuracy/test"]["diff"] == pytest.approx(0.5)
    assert vs["greedy/accuracy/heldout_task"]["diff"] == 0.0
    lo, hi = vs["greedy/gold"]["interval"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert vs["greedy/accuracy/heldout_task"]["significant"] is False


def quick_report(**changes):
    rows = {}
    for name, graded in (("sft", {"greedy": report.grades(SETS, SFT), "sampled": report.grades(SETS, SFT)}),
                         ("ppo", {"greedy": report.grades(SETS, POLICY), "sampled": report.grades(SETS, SFT)})):
        rows[name] = report.figures(graded, n_boot=100)
        rows[name]["graded"] = graded
    rows["ppo"]["vs_sft"] = report.paired_differences(rows["ppo"].pop("graded"), rows["sft"].pop("graded"), 100)
    for row in rows.values():
        row["accuracy"].update(heldout_phrasing=0.5, heldout_people=0.5)
        row["interval"].update({"accuracy/heldout_phrasing": [0.1, 0.9], "accuracy/heldout_people": [0.1, 0.9]})
        row.update(kl_to_sft={"T=0.7": 0.25, "T=1.0": 0.5}, mean_length=2.0, ended=1.0, rm_score=0.1,
                   declined={"greedy": 1.0, "sampled": 0.5}, over_refusal={"greedy": 0.0, "sampled": 0.0})
    for key in ("heldout_phrasing", "heldout_people"):
        rows["ppo"]["vs_sft"][f"greedy/accuracy/{key}"] = {"diff": 0.0, "interval": [-0.1, 0.1], "significant": False}
    out = {"models": rows, "stage_seconds": {"sft": 60.0, "ppo": 30.0}, "commit": "abc1234", "transcripts": [],
           "config": {"name": "default", "preset": "cpu", "runs_dir": "runs", "seed": 1337, "eval_n": 2,
                      "harm_n": 4, "sample_temperature": 0.7}}
    out.update(changes)
    return out


def test_the_card_shows_intervals_and_marks_significant_differences():
    card = quick_report()
    card["models"]["ppo"]["vs_sft"]["greedy/gold"] = {"diff": 0.2, "interval": [0.1, 0.3], "significant": True}
    text = report.report_markdown(card)
    assert "| sft | 50.0% (" in text  # an accuracy with its interval
    assert "heldout_task (zero-shot, unseen tasks)" in text
    ppo_diff = next(line for line in text.splitlines() if line.startswith("| ppo | +"))
    assert "| +0.200 (+0.100, +0.300) * |" in ppo_diff  # significant: marked
    assert "| +0.0 (-10.0, +10.0) |" in ppo_diff  # heldout_phrasing: its interval holds 0, no mark
    assert "KL to SFT (T=0.7) | KL to SFT (T=1.0)" in text and "| 0.250 | 0.500 |" in text


def test_the_findings_are_made_from_the_numbers():
    card = quick_report()
    card["models"]["ppo"]["vs_sft"]["greedy/gold"] = {"diff": 0.2, "interval": [0.1, 0.3], "significant": True}
    text = "\n".join(report.findings(card))
    assert "**PPO against SFT**, greedy gold: +0.200 (+0.100, +0.300), its interval excludes 0" in text
    assert "ppo +0.0 (" in text and "no difference its interval can show" in text  # heldout_task: no claim
    assert "SFT ends 100.0%" in text and "DPO" not in text  # only the models the card has


def test_readme_block_is_replaced_and_only_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    block = report.update_readme(readme, quick_report())
    text = readme.read_text()
    assert text.startswith("intro\n" + report.README_START) and text.endswith(report.README_END + "\nafter\n")
    assert "old table" not in text and block in text and "commit `abc1234`" in text and "cpu preset" in text
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no results block"):
        report.update_readme(tmp_path / "plain.md", quick_report())


def test_the_readme_has_a_results_block():
    text = (report.__file__.rsplit("/", 1)[0] + "/README.md")
    body = open(text, encoding="utf-8").read()
    assert body.count(report.README_START) == 1 and body.count(report.README_END) == 1


def user_text(example):
    return example.messages[-1]["content"]


def test_no_evaluation_prompt_is_in_any_training_set_at_the_default_sizes():
    world = tasks.make_world(sft.SFTConfig.world_seed)
    cfg, pcfg, ppo_cfg = report.ReportConfig(), preferences.PreferenceConfig(), ppo.PPOConfig()
    evaluation = [e for examples in evaluate.eval_sets(world, cfg.eval_n).values() for e in examples]
    harm = evaluate.harm_sets(world, cfg.harm_n)
    evaluation += harm["forbidden"] + harm["allowed"]
    demos = sft.sft_conversations(sft.SFTConfig())
    trained = {next(m["content"] for m in conv if m["role"] == "user") for conv in demos}
    assert len(demos) == sft.SFTConfig.n_examples
    for examples in preferences.prompt_sets(pcfg, world).values():  # the reward model's and DPO's prompts
        trained |= {user_text(e) for e in examples}
    for it in range(ppo_cfg.iterations):  # every rollout batch of a single-process run
        trained |= {user_text(e) for e in ppo.rollout_prompts(world, ppo_cfg, it)}
    assert len(trained) > 5000
    leaked = [user_text(e) for e in evaluation if user_text(e) in trained]
    assert not leaked, leaked[:5]
