"""
Check an exercise:   python -m exercises gae          (your exercises/gae.py)
Every exercise:      python -m exercises all          (passed, not written or failing, one line each)
Start one again:     python -m exercises reset gae    (the stub back; your version kept in exercises/gae.py.bak)
The list:            python -m exercises --list       (in the suggested order)
Exit status 0 when every check passes, 1 otherwise. A failure says which case, what was expected, what
came back and the cause; an exception in your code is reported with the case it happened on.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from exercises import checks
from exercises.checks import CHECKS, ExerciseFailure, StudentError, project_functions

HERE = Path(__file__).resolve().parent  # the exercise files students edit
STUBS = HERE / "stubs"  # their pristine copies, for `reset` (tests/test_exercises.py keeps them equal)

# the names each exercise file defines, in the order its check takes them
NAMES = {"render_chat": ["render_chat"], "masking": ["collate"], "sft_loss": ["lm_loss"],
         "causal_mask": ["causal_mask"], "kv_cache_step": ["KVCache"], "bradley_terry": ["bradley_terry_loss"],
         "response_logprobs": ["response_logprobs"], "kl_penalty": ["kl_penalty_rewards"], "gae": ["gae"],
         "rollout_advantages": ["rewards_and_advantages"], "ppo_losses": ["policy_loss", "value_loss"],
         "adaptive_kl": ["AdaptiveKLController"], "dpo_loss": ["dpo_loss", "sequence_logprobs"]}


def shown(path):
    """A path as a student would type it: relative to the current folder when it is inside it."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


class CannotLoad(Exception):
    pass


def load(name, directory=HERE):
    """The functions of exercise `name` from directory/name.py, read afresh (so an edit counts at once)."""
    path = Path(directory) / f"{name}.py"
    if not path.exists():
        raise CannotLoad(f"there is no {shown(path)}: `python -m exercises reset {name}` puts the stub back")
    spec = importlib.util.spec_from_file_location(f"exercises_student_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise CannotLoad(f"{shown(path)} is not valid Python: {e.msg}, line {e.lineno}: {(e.text or '').strip()}")
    except Exception as e:  # an import that fails, code at the top level that raises
        raise CannotLoad(f"{shown(path)} raised {type(e).__name__} when Python read it: {e}")
    missing = [fn for fn in NAMES[name] if not hasattr(module, fn)]
    if missing:
        raise CannotLoad(f"{shown(path)} has no {', '.join(missing)}: keep the stub's names and signatures")
    return [getattr(module, fn) for fn in NAMES[name]]


def verdict(name, functions, where="exercises"):
    """Run exercise `name`'s checks on `functions`. Returns (status, message), status 'passed', 'not written'
    or 'failing'; the message is what the student sees: the failing case, or the exception and its case."""
    try:
        CHECKS[name](*functions)
    except NotImplementedError as e:
        return "not written", f"{name}: not written yet ({e}); edit {where}/{name}.py"
    except StudentError as e:
        return "failing", f"{name}: FAILED\n  {e}"
    except ExerciseFailure as e:
        return "failing", f"{name}: FAILED\n{e}"
    except Exception as e:  # the checker could not use a result: a wrong type or shape, most likely
        return "failing", (f"{name}: FAILED\n  on case '{checks.last_case['name']}', checking what your function "
                           f"returned raised {type(e).__name__}: {e}\n  hint: return what the docstring of "
                           f"{where}/{name}.py asks for: the types, the shapes, a tuple where it asks for one")
    return "passed", f"{name}: all checks passed"


def check(name, solution=False, directory=HERE):
    """Check directory/name.py (or, with solution, the project's own functions). Returns (status, message)."""
    if solution:
        return verdict(name, project_functions(name))
    try:
        functions = load(name, directory)
    except CannotLoad as e:
        return "failing", f"{name}: FAILED\n  {e}"
    return verdict(name, functions, shown(directory))


def run(name, solution=False, directory=HERE):
    """Check one exercise and print the verdict; True when every check passes."""
    status, message = check(name, solution, directory)
    print(message)
    return status == "passed"


def run_all(solution=False, directory=HERE):
    """Check every exercise and print one line each, then the counts; True when all pass."""
    print("exercises, in the suggested order (exercises/README.md):")
    counts = {"passed": 0, "not written": 0, "failing": 0}
    for i, name in enumerate(CHECKS, 1):
        status, message = check(name, solution, directory)
        counts[status] += 1
        detail = ""
        if status == "failing":  # the failing case, in a few words
            first = message.split("\n")[1].strip()
            detail = ": " + (first if len(first) <= 70 else first[:67] + "...")
        print(f"  {i:2}. {name:20} {status}{detail}")
    print(f"{counts['passed']} of {len(CHECKS)} passed, {counts['failing']} failing, "
          f"{counts['not written']} not written. Details: python -m exercises NAME")
    return counts["passed"] == len(CHECKS)


def reset(name, directory=HERE):
    """Put the stub of `name` back in directory; a changed file is first kept as NAME.py.bak. Returns a message."""
    target, stub = Path(directory) / f"{name}.py", (STUBS / f"{name}.py").read_text()
    kept = ""
    if target.exists() and target.read_text() != stub:
        backup = target.with_name(f"{name}.py.bak")
        shutil.copyfile(target, backup)
        kept = f"; your version is in {shown(backup)}"
    target.write_text(stub)
    return f"{shown(target)} is the stub again{kept}"


def main(argv, directory=HERE):
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__.strip() + "\n\nexercises: " + ", ".join(CHECKS))
        return 0
    command, rest = argv[0], argv[1:]
    solution = "--solution" in rest  # the instructor's check: the same cases on the project's own functions
    if command == "all":
        return 0 if run_all(solution, directory) else 1
    if command == "reset":
        if len(rest) != 1 or rest[0] not in CHECKS:
            print(f"usage: python -m exercises reset NAME, NAME one of: {', '.join(CHECKS)}")
            return 2
        print(reset(rest[0], directory))
        return 0
    if command not in CHECKS:
        print(f"unknown exercise {command!r}; choose one of: {', '.join(CHECKS)}")
        return 2
    return 0 if run(command, solution, directory) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
