"""The experiments (experiments/*.py) on a quick run, and docs/experiments.md written from their results."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import lab  # noqa: E402
import masking  # noqa: E402
import overoptimisation  # noqa: E402
import phrasings  # noqa: E402
import quality_vs_quantity  # noqa: E402
import task_diversity  # noqa: E402
import write_docs  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every experiment, two points each, on a quick pipeline run in a temporary folder."""
    folder = tmp_path_factory.mktemp("experiments")
    cwd = os.getcwd()
    os.chdir(folder)  # the experiments read and write runs/quick/ under the working directory
    try:
        out = {
            "task_diversity": task_diversity.main(task_diversity.TaskDiversityConfig(ks="1,12", quick=True)),
            "phrasings": phrasings.main(phrasings.PhrasingsConfig(n_phrasings="1,8", quick=True)),
            "quality_vs_quantity": quality_vs_quantity.main(
                quality_vs_quantity.QualityConfig(clean="100", noisy="400", quick=True)),
            "masking": masking.main(masking.MaskingConfig(quick=True)),
            "overoptimisation": overoptimisation.main(
                overoptimisation.OveroptimisationConfig(ns="1,4", kl_coefs="0.1,0", quick=True)),
        }
        write_docs.main(write_docs.DocsConfig(run="runs/quick", out="docs"))
    finally:
        os.chdir(cwd)
    return folder, out


def test_a_rerun_reproduces_the_sampled_experiment(results):
    """Again, now loading the PPO models the first run trained: the same sampled answers, the same rows."""
    folder, out = results
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        again = overoptimisation.main(overoptimisation.OveroptimisationConfig(ns="1,4", kl_coefs="0.1,0", quick=True))
    finally:
        os.chdir(cwd)
    assert json.dumps(again["rows"]) == json.dumps(out["overoptimisation"]["rows"])  # NaN (no answer ended) == NaN


def test_every_experiment_writes_its_json_table_and_plot(results):
    folder, out = results
    for name, result in out.items():
        written = folder / "runs" / "quick" / "experiments" / name
        assert json.loads((written / "results.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
        assert (written / "table.md").read_text().startswith("|")
        assert (written / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["k"] for r in out["task_diversity"]["rows"]] == [1, 12]
    assert out["task_diversity"]["rows"][0]["families"] == ["add"]
    assert [r["data"] for r in out["quality_vs_quantity"]["rows"]] == ["clean", "noisy"]
    assert [r["method"] for r in out["overoptimisation"]["rows"]] == ["best-of-N"] * 2 + ["PPO"] * 2


def test_every_point_carries_its_interval(results):
    _, out = results
    for name, result in out.items():
        for row in result["rows"]:
            for key, value in row.items():
                if isinstance(value, dict) and "accuracy" in value:  # a split's grades
                    lo, hi = value["accuracy_interval"]
                    assert lo <= value["accuracy"] <= hi, (name, key)
            if "gold" in row:
                assert row["gold_interval"][0] <= row["gold"] <= row["gold_interval"][1], name


def test_best_of_one_has_no_kl_and_its_bound_grows_with_n(results):
    rows = results[1]["overoptimisation"]["rows"]
    assert rows[0]["setting"] == 1 and rows[0]["kl"] == 0.0
    assert rows[1]["kl"] == pytest.approx(__import__("math").log(4) - 3 / 4)


def test_docs_are_written_from_the_results(results):
    folder, out = results
    text = (folder / "docs" / "experiments.md").read_text()
    for name, result in out.items():
        assert f"## {name}: " in text and (folder / "docs" / "experiments" / f"{name}.png").exists()
        assert (folder / "runs" / "quick" / "experiments" / name / "table.md").read_text().strip() in text
        assert result["command"] in text
    masked = out["masking"]["rows"][0]["test"]
    assert lab.pct(masked["accuracy"], masked["accuracy_interval"]) in text  # the findings quote the JSON's figures


def test_compare_claims_a_difference_only_without_overlap():
    assert "no difference" in lab.compare("a", 0.5, (0.4, 0.6), "b", 0.55, (0.45, 0.65))
    assert "is higher than" in lab.compare("a", 0.2, (0.1, 0.3), "b", 0.6, (0.5, 0.7))
    assert "is lower than" in lab.compare("a", 0.6, (0.5, 0.7), "b", 0.2, (0.1, 0.3))
