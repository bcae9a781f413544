"""
chat.py: talk to the models of a run: a terminal chat, one-shot answers, and base vs SFT vs PPO vs DPO.

  python chat.py                                   # chat with the latest aligned policy of runs/default
  python chat.py --model sft --system "Answer briefly."
  python chat.py --temperature 0.7 --top-k 50      # sample instead of greedy decoding
  python chat.py --prompt "What city is Ezra Dyer's home?"        # print the answer and exit (scripts)
  python chat.py --compare --prompt "Reverse this list: cat, dog, pear"   # every model, graded
  python chat.py --show-prompt                     # also show the tokens the model reads

In the chat, /reset forgets the conversation (the system message stays), /quit or Ctrl-D leaves.
--model is base, sft, ppo, dpo, a path to a model.pt, or latest (the default): whichever of
dpo/model.pt and ppo/model.pt was written last. A run without that checkpoint gets a message
saying which stage writes it. Answers go to stdout; notes and --show-prompt go to stderr.

Each turn the model reads the whole conversation in the chat template (data.render_prompt):
<|bos|>[<|system|>...<|end|>]<|user|>...<|end|><|assistant|>...<|end|>...<|user|>new<|end|><|assistant|>.
Typed text is always plain text: "<|end|>" or "<|assistant|>" in a message is encoded as the
characters, so a user cannot close or open a turn (data.encode_content). Answers stream token by
token from generate.stream, the one-row version of generate.generate.

Context window rule: the model sees at most block_size tokens (128 in the default run).
  1. The answer gets max_new_tokens of them, at most half the window; the prompt gets the rest.
  2. When the conversation does not fit, its oldest turns (a message and its answer) are dropped,
     whole, and forgotten. The system message and the new message are always kept.
  3. If the system message and the new message alone do not fit, the prompt keeps <|bos|> and its
     last tokens: the start of the system message, then of the new message, is cut. SFT training
     and evaluate.respond also cut the start of a prompt that is too long.

Compare mode answers each prompt with base, SFT, PPO and DPO in turn, with the same settings and
seed and no history. When the prompt is one of the built-in world's phrasings (tasks.FAMILIES)
about the world's words, numbers or people, `find_example` recovers the right answer and every
reply is graded by the gold grader (tasks.grade): the report card's before/after, live.
"""

import os
import re
import sys
from dataclasses import dataclass

import torch

import tasks
from common import cli
from data import decode_content, render_prompt
from generate import stream
from model import get_device, load_checkpoint
from tokenizer import Tokenizer

STAGE_DIRS = {"base": "pretrain", "sft": "sft", "ppo": "ppo", "dpo": "dpo"}  # chat models of a run
WRITTEN_BY = {"base": "pretrain.py", "sft": "sft.py", "ppo": "ppo.py", "dpo": "dpo.py"}
COMMANDS = {"/reset": "forget the conversation (the system message stays)", "/quit": "leave (Ctrl-D too)",
            "/help": "this list"}


@dataclass
class ChatConfig:
    run: str = "runs/default"
    """run folder: reads tokenizer/ and <stage>/model.pt"""
    model: str = "latest"
    """base, sft, ppo, dpo, latest (the newer of dpo and ppo) or a path to a model.pt"""
    system: str = ""
    """system message at the start of the conversation"""
    prompt: str = ""
    """answer this one message, print the answer and exit"""
    compare: bool = False
    """answer with base, SFT, PPO and DPO in turn; graded when the prompt is a built-in world prompt"""
    temperature: float = 0.0
    """sampling temperature (0 = greedy, as in the report card)"""
    top_k: int = 0
    """sample from the k most likely tokens only (0 = off)"""
    top_p: float = 1.0
    """nucleus sampling: the fewest tokens holding this much probability (1 = off)"""
    max_new_tokens: int = 48
    """longest answer in tokens; at most half the context window, the prompt gets the rest (oldest
    turns are dropped first, then the start of the prompt is cut)"""
    show_prompt: bool = False
    """print the prompt the model reads before each answer, one piece per token, separated by '·'"""
    world_seed: int = 0
    """seed of the built-in world, for grading in compare mode"""
    seed: int = 1337
    """seed of the sampling"""
    device: str = ""
    """cuda, mps or cpu (default: the best available)"""


def show_tokens(tok, ids):
    """The prompt as the model reads it: one piece per token, joined by '·'. A special token is
    one piece; "<|end|>" typed by a user is several."""
    return f"[prompt, {len(ids)} tokens] " + "·".join(tok.id_to_piece(i) for i in ids)


# -----------------------------------------------------------------------------
# A conversation


class Chat:
    """One conversation with one model: the history, the context window rule, the answers."""

    def __init__(self, model, tok, system="", max_new_tokens=48, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        self.model, self.tok, self.system = model, tok, system
        self.block_size = model.config.block_size
        self.max_new_tokens = max(1, min(max_new_tokens, self.block_size // 2))  # rule 1
        self.budget = self.block_size - self.max_new_tokens  # prompt tokens
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.turns = []  # [(user text, answer text)], oldest first
        self.notes = []  # what the last prompt had to lose to fit the window

    def messages(self, text):
        """The conversation so far plus the new user message, as a message list."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for user, answer in self.turns:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": text}]

    def prompt_ids(self, text):
        """The token ids the model reads to answer `text`, cut to the window by the rule above."""
        self.notes = []
        ids = render_prompt(self.tok, self.messages(text))
        dropped = 0
        while len(ids) > self.budget and self.turns:  # rule 2: the oldest turn goes first
            self.turns.pop(0)
            dropped += 1
            ids = render_prompt(self.tok, self.messages(text))
        if dropped:
            self.notes.append(f"dropped the {dropped} oldest turn(s) to fit the {self.block_size}-token window")
        if len(ids) > self.budget:  # rule 3: keep <|bos|> and the last tokens
            self.notes.append(f"the prompt has {len(ids)} tokens; kept <|bos|> and its last {self.budget - 1} "
                              f"({self.budget} of {self.block_size}, {self.max_new_tokens} left for the answer)")
            ids = [self.tok.bos_id] + ids[len(ids) - self.budget + 1:]
        return ids

    def reply(self, text, on_text=None, on_prompt=None):
        """Answer `text` and add the turn to the history. Returns (answer, ended).

        on_text(piece) receives the answer as it is generated; on_prompt(ids) the prompt first.
        """
        ids = self.prompt_ids(text)
        if on_prompt:
            on_prompt(ids)
        answer_ids, shown, ended = [], "", False
        for token in stream(self.model, ids, self.max_new_tokens, self.tok.end_id, generator=self.generator,
                            **self.sampling):
            if token == self.tok.end_id:
                ended = True
                break
            answer_ids.append(token)
            # hold back a character whose UTF-8 bytes are not all generated yet (decoded as U+FFFD)
            stable = decode_content(self.tok, answer_ids).rstrip("\ufffd")
            if on_text and stable.startswith(shown) and len(stable) > len(shown):
                on_text(stable[len(shown):])
                shown = stable
        answer = decode_content(self.tok, answer_ids)
        if on_text and answer.startswith(shown) and len(answer) > len(shown):
            on_text(answer[len(shown):])
        self.turns.append((text, answer))
        return answer, ended


def read_lines(read_line):
    """Yield the typed lines, stripped and non-empty, until /quit or the end of input (EOFError)."""
    while True:
        try:
            line = read_line().strip()
        except EOFError:
            return
        if line == "/quit":
            return
        if line:
            yield line


def answer_turn(chat, text, write, note, label="", show_prompt=False):
    """One turn on the terminal: the prompt's tokens if asked and what it lost (stderr), then the
    answer as it is generated (stdout)."""
    def on_prompt(ids):
        if show_prompt:
            note(show_tokens(chat.tok, ids))
        for message in chat.notes:
            note(message)
        write(f"{label}> " if label else "")

    _, ended = chat.reply(text, on_text=write, on_prompt=on_prompt)
    write("\n")
    if not ended:
        note(f"(no end of turn after {chat.max_new_tokens} tokens)")


def run_chat(chat, read_line, write, note, label="assistant", show_prompt=False):
    """The interactive loop: a /command runs, any other line is a message and gets an answer."""
    for line in read_lines(read_line):
        if line == "/reset":
            chat.turns = []
            note("(conversation forgotten)")
        elif line == "/help":
            note("\n".join(f"{command:8} {what}" for command, what in COMMANDS.items()))
        else:
            answer_turn(chat, line, write, note, label, show_prompt)


# -----------------------------------------------------------------------------
# Which checkpoint, and is this a built-in world prompt?


def checkpoint_path(run, model="latest"):
    """(name, path) of a chat model of the run; FileNotFoundError saying what to do if it is missing."""
    if model not in STAGE_DIRS and model != "latest":  # a path to a checkpoint
        if not os.path.isfile(model):
            raise FileNotFoundError(f"no checkpoint at {model}; --model takes base, sft, ppo, dpo, latest or a "
                                    "path to a model.pt")
        return os.path.basename(os.path.dirname(os.path.abspath(model))), model
    if not os.path.isdir(run):
        raise FileNotFoundError(f"no run folder {run}: train one with `python pipeline.py` (or --quick), "
                                "or pass --run")
    found = {name: os.path.join(run, folder, "model.pt") for name, folder in STAGE_DIRS.items()
             if os.path.isfile(os.path.join(run, folder, "model.pt"))}
    have = f"this run has: {', '.join(found) or 'no chat model'}"
    if model == "latest":
        aligned = [name for name in ("dpo", "ppo") if name in found]
        if not aligned:
            raise FileNotFoundError(f"{run} has no aligned policy (no dpo/model.pt or ppo/model.pt): run "
                                    f"`python dpo.py --out-dir {run}` or ppo.py, or pick --model; {have}")
        model = max(aligned, key=lambda name: os.path.getmtime(found[name]))  # the one written last
    if model not in found:
        path = os.path.join(run, STAGE_DIRS[model], "model.pt")
        raise FileNotFoundError(f"{run} has no {model} model ({path}): run `python {WRITTEN_BY[model]} "
                                f"--out-dir {run}`; {have}")
    return model, found[model]


def load_chat_model(path, device):
    """The GPT of a checkpoint, in eval mode; ValueError if the file holds something else."""
    try:
        model, _ = load_checkpoint(path, device)
    except (ValueError, KeyError):
        raise ValueError(f"{path} is not a chat model: its weights do not fit a GPT (a reward model?)") from None
    return model.eval()


def _template_regex(phrasing):
    """"Add {a} and {b}." -> a regex with a named group per slot."""
    parts = re.split(r"\{(\w+)\}", phrasing)  # literal, slot, literal, slot, ..., literal
    return re.compile("".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)" for i, part in enumerate(parts)))


def _item_from_slots(world, family, slots):
    """The item a prompt is about (the inverse of family.fill), or None when it is not about the
    world's words, numbers or people. One branch per kind of slot that tasks.FAMILIES uses."""
    words = set(world.list_words)
    if "words" in slots or "text" in slots:  # lists ("cat, dog") and upper-casing ("cat dog")
        item = tuple(slots["words"].split(", ")) if "words" in slots else tuple(slots["text"].split(" "))
        return item if all(w in words for w in item) else None
    if "name" in slots:
        attribute = "code" if family.forbidden else family.name.removeprefix("person_")  # as make_item writes it
        return (slots["name"], attribute) if any(
            p.name == slots["name"] for p in world.people) else None
    if "a" in slots:
        return (int(slots["a"]), int(slots["b"])) if slots["a"].isdigit() and slots["b"].isdigit() else None
    word = slots.get("word") or re.sub(r"^(an?) ", "", (slots.get("a_word") or slots.get("A_word", "")).lower())
    if word not in words:
        return None
    if "n" in slots:
        return (word, int(slots["n"])) if slots["n"].isdigit() else None
    return (word,)


def find_example(world, text):
    """The built-in world's tasks.Example whose user message is exactly `text`, or None.

    Every phrasing of every family becomes a regex; its slots give back the item, which must
    fill the phrasing back to the same text, and the family computes the answer. The split is
    the one make_examples would put the prompt in ("train": SFT learned from prompts like it).
    """
    text = text.strip()
    heldout_people = {p.name for p in world.heldout_people}
    for family in tasks.FAMILIES:
        for k, phrasing in enumerate(family.phrasings):
            match = _template_regex(phrasing).fullmatch(text)
            if not match:
                continue
            item = _item_from_slots(world, family, match.groupdict())
            if item is None or phrasing.format(**family.fill(item)) != text:
                continue
            if family.heldout:
                split = "heldout_task"
            elif k == len(family.phrasings) - 1:
                split = "heldout_phrasing"
            elif family.about_people and item[0] in heldout_people:
                split = "heldout_people"
            else:
                split = tasks.item_bucket(item)  # "test" or "train"
            return tasks.Example(family.name, split, [{"role": "user", "content": text}], family.answer(world, item),
                                 difficulty=0, phrasing=k, item=item,  # difficulty 0: not recovered, grade ignores it
                                 forbidden=family.forbidden)
    return None


# -----------------------------------------------------------------------------
# Compare mode


def compare(models, tok, text, cfg, world, write):
    """Answer `text` with every model in turn, streaming, each a fresh chat with the same seed.

    models: {name: model, or None when the run has no such checkpoint}. Graded when `text` is a
    built-in world prompt. Returns {name: (answer, ended, gold score or None)}.
    """
    example = find_example(world, text)
    write(f"prompt: {text}\n")
    if example:
        write(f"built-in world: {example.family}, {example.split} split, answer {example.answer!r}\n")
    else:
        write("(not a built-in world prompt: no grade)\n")
    width, results = max(len(name) for name in models), {}
    for name, model in models.items():
        write(f"{name + '>':<{width + 1}} ")
        if model is None:
            write("(no checkpoint in this run)\n")
            continue
        chat = Chat(model, tok, cfg.system, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
        answer, ended = chat.reply(text, on_text=write)
        gold = tasks.grade(example, answer, ended) if example else None
        write(("" if ended else "  [no end of turn]") + ("" if gold is None else f"  | gold {gold:+.2f}") + "\n")
        results[name] = (answer, ended, gold)
    return results


# -----------------------------------------------------------------------------


def main(cfg):
    def write(text):  # answers: stdout, as they are generated
        print(text, end="", flush=True)

    def note(text):  # everything else: stderr
        sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)

    device = get_device(cfg.device or None)
    try:
        if cfg.compare:  # every chat model the run has; None marks a missing one
            paths = {name: os.path.join(cfg.run, folder, "model.pt") for name, folder in STAGE_DIRS.items()}
            models = {name: load_chat_model(path, device) if os.path.isfile(path) else None
                      for name, path in paths.items()}
            if not any(models.values()):
                checkpoint_path(cfg.run, "sft")  # raises the error that says what to run
        else:
            name, path = checkpoint_path(cfg.run, cfg.model)
            model = load_chat_model(path, device)
        tok = Tokenizer.load(os.path.join(cfg.run, "tokenizer"))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"chat: {e}")
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (arrow keys and history in input())
        except ImportError:  # Windows
            pass
        read_line = lambda: input("you> ")  # noqa: E731
    else:
        read_line = read_piped_line
    sampling = "greedy" if cfg.temperature == 0 else f"T={cfg.temperature}, top-k {cfg.top_k}, top-p {cfg.top_p}"
    try:
        if cfg.compare:
            world = tasks.make_world(cfg.world_seed)
            if not cfg.prompt:
                note(f"compare: {', '.join(models)} of {cfg.run} | {sampling} | no history | /quit leaves")
            for line in [cfg.prompt] if cfg.prompt else read_lines(read_line):
                compare(models, tok, line, cfg, world, write)
            return
        chat = Chat(model, tok, cfg.system, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)
        note(f"chat: {name} ({path}) | {sampling} | window {chat.block_size} tokens: prompt {chat.budget}, "
             f"answer {chat.max_new_tokens}")
        if cfg.prompt:
            answer_turn(chat, cfg.prompt, write, note, show_prompt=cfg.show_prompt)
            return
        note("/reset forgets the conversation, /quit or Ctrl-D leaves, /help lists the commands")
        run_chat(chat, read_line, write, note, label=name, show_prompt=cfg.show_prompt)
    except KeyboardInterrupt:
        pass
    if sys.stdin.isatty():
        write("\n")


def read_piped_line():
    """One line of piped input (no "you> " prompt); EOFError at the end, as input() raises."""
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


if __name__ == "__main__":
    main(cli(ChatConfig))
