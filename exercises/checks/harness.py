"""
exercises/checks/harness.py: what every check uses: calling the student's function (an exception becomes a
StudentError naming the case), comparing results, naming the mistake, and the gradient check.
"""

import os
import traceback

import torch

IGNORE_INDEX = -100  # the target value that carries no loss (model.IGNORE_INDEX)


class ExerciseFailure(AssertionError):
    """A check failed: the message says the case, what was expected, what came back and the cause."""


class StudentError(ExerciseFailure):
    """The function under test raised an exception on a case. Reported as such, without a traceback."""

    def __init__(self, name, case, error, hint=""):
        message = f"your function {name} raised {type(error).__name__} on case '{case}': {error}"
        where = _where(error)
        message += f"\n  raised at {where}" if where else ""
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


def _where(error):
    """'file, line n: code' of the innermost frame outside torch and this file: where the error came from."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(frame.filename) != os.path.abspath(__file__)
              and f"{os.sep}torch{os.sep}" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    try:
        path = os.path.relpath(frame.filename)
    except ValueError:  # another drive on Windows
        path = frame.filename
    return f"{path}, line {frame.lineno}: {frame.line}"


# The case being checked, for the runner's message when the checker itself cannot use a result.
last_case = {"name": ""}


def call(case, fn, *args, _name=None, _hint="", **kwargs):
    """fn(*args, **kwargs) on one case. An exception it raises becomes a StudentError naming the case;
    _hint says what usually causes an exception there. NotImplementedError (an untouched stub) passes."""
    last_case["name"] = case
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, ExerciseFailure):
        raise
    except Exception as error:
        raise StudentError(_name or getattr(fn, "__qualname__", repr(fn)), case, error, _hint) from error


def expect(ok, case, got, want, hint=""):
    if not ok:
        show = lambda x: round(x, 6) if isinstance(x, float) else x  # 0.34, not 0.33999999999999997
        message = f"{case}\n  expected: {show(want)}\n  got:      {show(got)}"
        raise ExerciseFailure(message + (f"\n  hint: {hint}" if hint else ""))


def close(got, want, tol=1e-4):
    """got has want's shape and values (within tol). Anything that is not a tensor of numbers: False."""
    try:
        want = torch.as_tensor(want, dtype=torch.float32)
        got = torch.as_tensor(got.detach() if torch.is_tensor(got) else got, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return False
    return got.shape == want.shape and torch.allclose(got, want, atol=tol, rtol=0)


def diagnose(got, mistakes, otherwise):
    """The hint for a wrong result `got`: the cause of every known mistake whose numbers it matches,
    or the general rule `otherwise`. mistakes: [(what that mistake returns, its cause)]."""
    causes = [cause for value, cause in mistakes if close(got, value)]
    if len(causes) > 1:  # this case cannot tell them apart: say every cause that fits
        return "this result fits more than one mistake: " + " OR ".join(causes)
    return causes[0] if causes else otherwise


def num(t):  # a Python float of a 0-d tensor (or number), detached
    return float(torch.as_tensor(t.detach() if torch.is_tensor(t) else t))


def fmt(t):
    """A tensor as (nested) lists for messages: integers as they are, other numbers rounded to 4 places."""
    try:
        t = torch.as_tensor(t.detach() if torch.is_tensor(t) else t)
        if not t.is_floating_point():
            return t.tolist()
        return (t.double().round(decimals=4) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
    except (TypeError, ValueError, RuntimeError):
        return repr(t)


def shape_of(t):
    return tuple(t.shape) if torch.is_tensor(t) else type(t).__name__


def tensor(case, got, shape, hint=""):
    """got itself, checked to be a tensor of the given shape; else a failure that says what came back."""
    expect(torch.is_tensor(got) and tuple(got.shape) == tuple(shape), case + ": the result's shape",
           shape_of(got), tuple(shape), hint or "see the exercise's docstring for the shapes")
    return got


def scalar(case, got):
    """got as a Python float: a single number (a 0-d tensor, or a float for a loss with no gradient check)."""
    ok = isinstance(got, (int, float)) or (torch.is_tensor(got) and got.numel() == 1)
    expect(ok, case + ": one number", shape_of(got), "a 0-d tensor",
           "a mean is one number for the whole batch, not one per row or token")
    return num(got)


def pair(case, got, what="a tuple of two"):
    expect(isinstance(got, (tuple, list)) and len(got) == 2, case + ": what comes back",
           type(got).__name__, what, "see the exercise's docstring for what to return")
    return got


# ----------------------------------------------------------------------------- gradients
NAN_GRADIENT = ("NaN or inf in your gradient: a form that overflows on one side (log(sigmoid(x)), torch.where of "
                "an overflowing branch: the branch not taken still gets a gradient, and inf * 0 = NaN). Use a "
                "form that is finite everywhere: F.logsigmoid, F.softplus, F.log_softmax")
CUT = ("your result carries no gradient: it was cut from the autograd graph (.item(), float(), a new "
       "torch.tensor(...) built from a result, .detach(), .numpy(), or a torch.no_grad() block), so "
       "training could not learn from it")


def weights_like(out):
    """Fixed weights 1, 1.5, 2, ... in out's shape: the gradient of sum(w * out) sees every element."""
    return (1 + 0.5 * torch.arange(out.numel(), dtype=out.dtype)).view(out.shape)


def gradients(case, out, leaves, names, who, weighted=True):
    """d sum(w * out) / d leaf for each leaf (w = 1 unless weighted); a failure if out has no gradient.
    who: the name of the function under test, for an exception in the backward pass through it."""
    expect(torch.is_tensor(out) and out.requires_grad, case, "a result without a gradient (no grad_fn)",
           "a result that autograd can differentiate", CUT)
    total = (out * weights_like(out)).sum() if weighted else out.sum()
    grads = call(case, torch.autograd.grad, total, leaves, allow_unused=True,
                 _name=f"{who} (in the backward pass)")
    return {name: torch.zeros_like(leaf) if g is None else g for name, leaf, g in zip(names, leaves, grads)}


def check_gradient(case, fn, solution, inputs, run):
    """Compare the gradient of fn's result with the solution's on the same inputs.

    inputs: {name: float tensor}, the inputs to differentiate by; run(f, **leaves) calls f on fresh leaf
    copies of them (plus whatever else the case needs) and returns the tensor to differentiate. Both
    sides differentiate sum(w * result) with the same fixed weights w = 1, 1.5, 2, ..., so every
    element's gradient counts. The inputs are chosen away from ties and kinks: there, correct forms may
    differ (autograd takes relu'(0) = 0 and d|x|/dx = 0 at 0, so relu(-x) + log1p(exp(-|x|)) has
    gradient 0 at x = 0 where the derivative of -log sigmoid(x) is -0.5).
    """
    where = f"{solution.__module__}.{solution.__qualname__}"
    results = []
    for f in (solution, fn):
        leaves = {name: x.detach().clone().requires_grad_(True) for name, x in inputs.items()}
        out = run(f, **leaves) if f is solution else call(case, run, f, _name=fn.__qualname__, **leaves)
        results.append(gradients(case, out, list(leaves.values()), list(leaves), fn.__qualname__))
    want, got = results
    for name in inputs:
        title = (f"{case}: the gradient with respect to {name}, yours against {where}'s on the same inputs "
                 f"(the gradient of sum(w * result), w = 1, 1.5, 2, ...)")
        g, w = got[name], want[name]
        if not torch.isfinite(g).all():
            hint = NAN_GRADIENT
        elif not g.any() and w.any():
            hint = (f"no gradient reaches {name}: the part of your computation that reads it was cut from "
                    "the graph (.detach(), .item(), torch.no_grad(), or a new tensor built from its values)")
        else:
            hint = ("the values passed, but the gradient differs: part of the computation is cut from the "
                    "graph, or a step replaces values without a gradient (.data, in-place writes into a "
                    "tensor that has none), or the formula is not the same function of the inputs")
        expect(w.shape == g.shape and torch.allclose(g, w, rtol=1e-3, atol=1e-5), title, fmt(g), fmt(w), hint)
