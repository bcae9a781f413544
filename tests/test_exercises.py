"""The exercise runner: the verdicts it prints, `all`, `reset`, and the stubs kept equal to their pristine copies.
The checks themselves, on wrong and correct solutions, are in test_exercises_solutions.py."""
import ast
import shutil

import pytest

from exercises import __main__ as checker
from exercises.checks import CHECKS, project_functions


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_project_passes_every_exercise(name, capsys):
    assert checker.run(name, solution=True)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(CHECKS))
def test_an_untouched_stub_is_reported_as_not_written(name, capsys):
    assert not checker.run(name)
    assert f"edit exercises/{name}.py" in capsys.readouterr().out


def test_cli_exit_status(capsys):
    assert checker.main(["gae", "--solution"]) == 0 and checker.main(["gae"]) == 1
    assert checker.main(["nope"]) == 2 and "unknown exercise" in capsys.readouterr().out
    assert checker.main(["--list"]) == 0 and ", ".join(CHECKS) in capsys.readouterr().out


# ----------------------------------------------------------------------------- the stubs
@pytest.mark.parametrize("name", list(CHECKS))
def test_each_stub_equals_its_pristine_copy(name):
    # `reset` restores exercises/stubs/NAME.py: the two must never drift apart
    assert (checker.HERE / f"{name}.py").read_text() == (checker.STUBS / f"{name}.py").read_text(), name


def test_every_exercise_has_a_stub_names_a_solution_and_a_readme_entry():
    assert set(checker.NAMES) == set(CHECKS)
    assert {p.stem for p in checker.STUBS.glob("*.py")} == set(CHECKS)
    readme = (checker.HERE / "README.md").read_text()
    for name in CHECKS:
        source = (checker.STUBS / f"{name}.py").read_text()
        doc = ast.get_docstring(ast.parse(source))
        assert f"Check it: python -m exercises {name}" in doc and "Solution" in doc, name
        for fn in project_functions(name):  # the docstring names the solution as module.function
            assert f"{fn.__module__}.{fn.__name__}" in doc, (name, fn)
        assert f"`{name}`" in readme, name
        defined = {node.name for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert set(checker.NAMES[name]) <= defined, name


def test_stub_signatures_are_the_solutions():
    import inspect

    def parameters(f):
        return [p.name for p in inspect.signature(f).parameters.values()]

    for name in CHECKS:
        for stub, solution in zip(checker.load(name), project_functions(name)):
            assert parameters(stub) == parameters(solution), (name, stub)
            if inspect.isclass(stub):  # and the methods the check calls
                assert parameters(stub.update) == parameters(solution.update), (name, stub)


# ----------------------------------------------------------------------------- exceptions from a student's code
@pytest.fixture
def classroom(tmp_path):
    """A copy of the exercise files, as a student's checkout: tests edit these, never the real ones."""
    for name in CHECKS:
        shutil.copyfile(checker.STUBS / f"{name}.py", tmp_path / f"{name}.py")
    return tmp_path


def write(folder, name, source):
    (folder / f"{name}.py").write_text(source)


def test_an_exception_in_the_students_code_is_reported_with_its_case_not_a_traceback(classroom, capsys):
    write(classroom, "gae", "def gae(rewards, values, response_mask, gamma=1.0, lam=0.95):\n"
                            "    return rewards / 0 if False else rewards[5]\n")
    assert checker.main(["gae"], directory=classroom) == 1
    out = capsys.readouterr().out
    assert "your function gae raised IndexError on case 'gamma=1, lam=0.95, a padded batch'" in out
    assert "gae.py, line 2" in out and "Traceback" not in out


def test_an_exception_in_the_backward_pass_is_the_students_too(classroom):
    write(classroom, "sft_loss", "import torch.nn.functional as F\n"
                                 "def lm_loss(logits, targets, reduction='mean'):\n"
                                 "    logp = F.log_softmax(logits.float(), dim=-1)\n"
                                 "    loss = F.nll_loss(logp.flatten(0, 1), targets.flatten(), reduction='sum')\n"
                                 "    logp.mul_(2)  # in place, on a tensor its gradient needs\n"
                                 "    count = (targets != -100).sum().clamp(min=1)\n"
                                 "    return loss if reduction == 'sum' else loss / count\n")
    status, message = checker.check("sft_loss", directory=classroom)
    assert status == "failing" and "Traceback" not in message, message
    assert "your function lm_loss (in the backward pass) raised RuntimeError on case 'the first case's gradient'" \
        in message, message


def test_a_result_of_the_wrong_kind_is_reported_with_its_case(classroom):
    write(classroom, "kl_penalty", "def kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask, kl_coef):\n"
                                   "    return 'rewards', 'non-score'\n")
    status, message = checker.check("kl_penalty", directory=classroom)
    assert status == "failing" and "three rows of 3, 1 and 4 tokens" in message and "Traceback" not in message


def test_when_the_checker_itself_cannot_use_a_result_the_case_is_named(monkeypatch):
    from exercises.checks.harness import call

    def check_that_adds_a_string(gae):
        return call("a case", gae, 1) + "x"  # a TypeError in the checker, not in the student's function

    monkeypatch.setitem(checker.CHECKS, "gae", check_that_adds_a_string)
    status, message = checker.verdict("gae", [lambda x: 2])
    assert status == "failing" and "on case 'a case', checking what your function returned raised TypeError" in message


def test_a_file_python_cannot_read_is_reported(classroom):
    write(classroom, "gae", "def gae(rewards, values\n")
    status, message = checker.check("gae", directory=classroom)
    assert status == "failing" and "is not valid Python" in message, message
    write(classroom, "gae", "import no_such_module\n")
    status, message = checker.check("gae", directory=classroom)
    assert "raised ModuleNotFoundError when Python read it" in message, message
    write(classroom, "gae", "def advantages(rewards, values, response_mask):\n    pass\n")
    status, message = checker.check("gae", directory=classroom)
    assert "has no gae: keep the stub's names" in message, message


def test_a_half_written_exercise_is_still_not_written(classroom, capsys):
    # sequence_logprobs written, dpo_loss still the stub's NotImplementedError
    source = (checker.STUBS / "dpo_loss.py").read_text().replace(
        'raise NotImplementedError("exercise: write sequence_logprobs")',
        "from dpo import sequence_logprobs as solution\n    return solution(logits, targets, loss_mask)")
    write(classroom, "dpo_loss", source)
    assert checker.check("dpo_loss", directory=classroom)[0] == "not written"


# ----------------------------------------------------------------------------- all and reset
def solved(folder, name):
    """Write an exercise file that re-exports the project's solution: it passes."""
    write(folder, name, "".join(f"from {fn.__module__} import {fn.__name__}\n" for fn in project_functions(name)))


def test_all_prints_one_line_per_exercise_and_the_counts(classroom, capsys):
    solved(classroom, "gae")
    write(classroom, "kl_penalty", "import ppo\n"
                                   "def kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask, kl_coef):\n"
                                   "    return ppo.kl_penalty_rewards(logprobs, ref_logprobs, scores, response_mask,\n"
                                   "                                  -kl_coef)  # the sign flipped\n")
    assert checker.main(["all"], directory=classroom) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in lines if line[:5].strip().endswith(".")}  # "   1. render_chat ..."
    assert list(rows) == list(CHECKS)  # in the suggested order
    assert rows["gae"].endswith("passed") and "failing: " in rows["kl_penalty"]
    assert rows["masking"].endswith("not written")
    assert lines[-1].startswith(f"1 of {len(CHECKS)} passed, 1 failing, {len(CHECKS) - 2} not written")


def test_all_exits_0_only_when_every_exercise_passes(classroom, capsys):
    for name in CHECKS:
        solved(classroom, name)
    assert checker.main(["all"], directory=classroom) == 0
    assert f"{len(CHECKS)} of {len(CHECKS)} passed" in capsys.readouterr().out
    assert checker.main(["all", "--solution"]) == 0  # the instructor's check, on the project's functions


def test_reset_restores_the_stub_and_keeps_the_students_version(classroom, capsys):
    solved(classroom, "gae")
    mine = (classroom / "gae.py").read_text()
    assert checker.main(["reset", "gae"], directory=classroom) == 0
    assert (classroom / "gae.py").read_text() == (checker.STUBS / "gae.py").read_text()
    assert (classroom / "gae.py.bak").read_text() == mine
    assert "is the stub again; your version is in" in capsys.readouterr().out
    assert checker.check("gae", directory=classroom)[0] == "not written"
    (classroom / "masking.py").unlink()  # a deleted file comes back too
    assert checker.check("masking", directory=classroom)[0] == "failing"
    assert checker.main(["reset", "masking"], directory=classroom) == 0
    assert (classroom / "masking.py").read_text() == (checker.STUBS / "masking.py").read_text()
    assert checker.main(["reset"], directory=classroom) == 2
    assert checker.main(["reset", "nope"], directory=classroom) == 2
