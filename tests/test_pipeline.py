"""The quick pipeline end to end: every stage, the report files, skipping finished stages, restarts."""

import json
import os
import shutil

import pytest

import dpo
import pipeline
import report
import ppo
import pretrain
import reward
import rlaif
import sft

SPLITS = {"test", "heldout_phrasing", "heldout_people", "heldout_task"}
ROW_KEYS = {"accuracy", "gold_greedy", "gold_sampled", "kl_to_sft", "mean_length", "ended", "rm_score",
            "declined", "over_refusal", "interval"}
MODELS = {"base", "sft", "bon16", "ppo", "dpo", "rlaif_ppo", "rlaif_dpo", "cai_sl", "cai_ppo"}
RLAIF_STAGES = {"rlaif/feedback", "rlaif/preferences", "rlaif/reward", "rlaif/ppo", "rlaif/dpo", "cai/sft", "cai/ppo"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = pipeline.PipelineConfig(quick=True, runs_dir=str(runs), name="q", device="cpu", rlaif=True)
    result, text = pipeline.main(cfg)
    assert cfg.preset == "cpu" and cfg.eval_n == pipeline.PipelineConfig.eval_n  # main works on a copy
    return runs, result, text


def test_report_json_has_the_documented_shape(quick_run):
    runs, result, text = quick_run
    with open(runs / "q" / "report.json") as f:
        report = json.load(f)
    assert set(report["models"]) == MODELS
    for name, row in report["models"].items():
        assert ROW_KEYS <= set(row), name
        assert set(row["accuracy"]) == SPLITS
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values())
        for split, p in row["accuracy"].items():  # every accuracy inside its interval
            lo, hi = row["interval"][f"accuracy/{split}"]
            assert 0.0 <= lo <= p <= hi <= 1.0, (name, split)
        if row["gold_greedy"] is not None:
            lo, hi = row["interval"]["gold_greedy"]
            assert -1.0 <= lo <= row["gold_greedy"] <= hi <= 1.0, name
        assert set(row["kl_to_sft"]) == {"T=0.7", "T=1.0"}
        assert ("vs_sft" in row) == (name != "sft")  # every model's paired difference to SFT
        assert 0.0 <= row["ended"] <= 1.0
        assert all(0.0 <= row[k]["sampled"] <= 1.0 for k in ("declined", "over_refusal"))
    assert report["models"]["bon16"]["gold_greedy"] is None  # best-of-N only samples
    assert set(report["models"]["bon16"]["vs_sft"]) == {"sampled/gold"} | {f"sampled/accuracy/{s}" for s in SPLITS}
    ppo_vs = report["models"]["ppo"]["vs_sft"]["greedy/gold"]
    assert ppo_vs["diff"] == pytest.approx(report["models"]["ppo"]["gold_greedy"] - report["models"]["sft"]["gold_greedy"])
    assert set(report["stage_seconds"]) == {"tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "dpo",
                                            "eval"} | RLAIF_STAGES
    for folder in ("rlaif/feedback", "rlaif/reward", "rlaif/ppo", "rlaif/dpo", "cai/sft", "cai/ppo"):
        assert (runs / "q" / folder / "model.pt").exists(), folder
    assert (runs / "q" / "rlaif" / "preferences" / "train.jsonl").exists()  # the AI-labelled pairs
    assert (runs / "q" / "cai" / "revisions.jsonl").exists()
    assert all(s >= 0 for s in report["stage_seconds"].values())
    assert report["config"]["preset"] == "quick"
    assert (runs / "q" / "report.md").read_text() == text
    assert "| sft |" in text and "| dpo |" in text
    for plot in report["plots"]:
        assert (runs / "q" / "plots" / plot).stat().st_size > 0


def test_two_fresh_runs_write_the_same_report(quick_run, tmp_path):
    """Same preset, same seeds: the same report.json, times apart (the figures a reader sees reproduce)."""
    runs, _, _ = quick_run
    pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu", rlaif=True))
    first, second = (json.loads((folder / "q" / "report.json").read_text()) for folder in (runs, tmp_path))
    for report in (first, second):
        report.pop("stage_seconds")
        report["config"].pop("runs_dir")
    assert first == second


def test_a_second_run_skips_finished_stages(quick_run, monkeypatch, tmp_path):
    runs, _, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "q")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for module in (pretrain, sft, reward, ppo, dpo):
        monkeypatch.setattr(module, "train", must_not_run)
    monkeypatch.setattr(pretrain, "get_tokenizer", must_not_run)
    for name in ("train_feedback", "train_rlaif_reward", "train_cai_sft"):
        monkeypatch.setattr(rlaif, name, must_not_run)
    result, _ = pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu",
                                                      rlaif=True))
    assert set(result["models"]) == MODELS


def test_an_interrupted_stage_restarts_cleanly(quick_run, monkeypatch, tmp_path):
    runs, _, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "q")
    os.remove(tmp_path / "q" / "dpo" / "done.json")  # DPO never finished...
    real_train = dpo.train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):  # ...and is interrupted again
        pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu"))
    assert not (tmp_path / "q" / "dpo" / "done.json").exists()

    calls = []
    monkeypatch.setattr(dpo, "train", lambda cfg: calls.append(cfg) or real_train(cfg))
    monkeypatch.setattr(ppo, "train", lambda *a, **k: pytest.fail("PPO had finished"))
    pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), name="q", device="cpu"))
    assert len(calls) == 1 and calls[0].resume  # only the unfinished stage ran, from its checkpoint if any
    assert (tmp_path / "q" / "dpo" / "done.json").exists()


def test_fresh_and_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline.main(pipeline.PipelineConfig(preset="huge", runs_dir=str(tmp_path)))


def test_quick_goes_to_its_own_folder_and_a_folder_of_another_preset_is_refused(quick_run, tmp_path, monkeypatch):
    runs, _, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "quick")  # a finished quick run where --quick puts one by default
    monkeypatch.setattr(pretrain, "train", lambda cfg: pytest.fail("the quick run had finished"))
    result, _ = pipeline.main(pipeline.PipelineConfig(quick=True, runs_dir=str(tmp_path), device="cpu", rlaif=True))
    assert result["config"]["name"] == "quick" and not (tmp_path / "default").exists()
    with pytest.raises(ValueError, match="'quick' preset, not 'cpu'.*--fresh"):  # its stages would be skipped
        pipeline.main(pipeline.PipelineConfig(name="quick", runs_dir=str(tmp_path), device="cpu"))


def test_report_py_remakes_the_card_of_a_finished_run_and_writes_the_readme_block(quick_run, tmp_path):
    runs, result, _ = quick_run
    shutil.copytree(runs / "q", tmp_path / "q")
    cfg = report.ReportConfig(runs_dir=str(tmp_path), name="q", device="cpu", rlaif=True,
                              **pipeline.PRESETS["quick"]["report"])
    report.main(cfg)  # evaluates every model again, from the run folder alone
    again = json.loads((tmp_path / "q" / "report.json").read_text())
    assert again["models"] == result["models"]  # the same figures as the pipeline's own card
    assert set(again["stage_seconds"]) == set(result["stage_seconds"])  # read back from the stages' done.json
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.README_START}\n{report.README_END}\n")
    report.main(report.ReportConfig(runs_dir=str(tmp_path), name="q", readme=str(readme)))
    assert "| sft |" in readme.read_text() and readme.read_text().startswith("top\n")
