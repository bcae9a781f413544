"""
formats.py: reading and writing the usual instruction, preference and text files.

A conversation is a list of {"role", "content"} dicts (roles: data.ROLES). Every problem is reported
as `file:line: problem` (line numbers 1-based). A record that cannot be read is skipped with a warning
and counted, so a few odd records never refuse a whole file; strict=True (`--strict` in the stages)
makes the first one a `DataError` instead. A file that cannot be read at all is always a DataError.

  load_alpaca(path)                   Alpaca JSON: a list of {instruction, input, output}
  load_chat_jsonl(path)               {"messages": [{"role", "content"}, ...]} per line
  load_prompt_completion_jsonl(path)  {"prompt", "completion"} per line
  load_sft_file(path)                 any of the three, by extension and content
  load_preferences_jsonl(path)        {"prompt", "chosen", "rejected"}, or HH-RLHF transcripts
  load_text(paths)                    plain UTF-8 text files, for pretraining
  write_jsonl, write_preferences_jsonl
"""

import json
import os
import re
from pathlib import Path

from data import ROLES


class DataError(ValueError):
    """A problem in a data file. The message reads `file:line: problem`."""


# ----------------------------------------------------------------------------------------------
# Readers


def read_utf8(path) -> str:
    """The file's text; a UTF-8 byte-order mark at its start (some editors write one) is dropped."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x}); "
                        "save the file as UTF-8") from None


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_jsonl(path) -> list[tuple[int, object]]:
    """(line number, record) for each non-blank line of a JSONL file; a line that is not a JSON object
    gives (line number, DataError) for the loader to skip or raise (see `_parse_records`)."""
    records = []
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines splits on
    for line_no, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                record = DataError(f"{where}: expected a JSON object, got a {_json_type(record)}")
        except json.JSONDecodeError as e:
            record = DataError(f"{where}: invalid JSON ({e.msg}, column {e.colno})")
        except RecursionError:  # [[[[...]]]] nested thousands deep: Python's parser gives up
            record = DataError(f"{where}: JSON nested too deeply")
        records.append((line_no, record))
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records


def _parse_records(path, records, parse, strict: bool) -> list:
    """parse(record, "file:line") for each (line, record); a record it refuses (DataError) is skipped
    with a warning, or raised when strict. Warns once with the count; refuses a file with nothing left."""
    parsed, skipped = [], []
    for line_no, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            parsed.append(parse(record, f"{path}:{line_no}"))
        except DataError as e:
            if strict:
                raise DataError(f"{e} (strict: no record is skipped)") from None
            skipped.append(str(e))
    if skipped:
        shown = "\n  ".join(skipped[:5]) + (f"\n  ... and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"warning: {path}: skipped {len(skipped)} of {len(records)} records that cannot be read "
              f"(strict=True / --strict makes this an error):\n  {shown}")
    if not parsed:
        raise DataError(f"{path}: no record could be read; the first problem: {skipped[0]}")
    return parsed


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _read_json_list(path) -> list[tuple[int, object]]:
    """(line where the item starts, item) for each item of a file holding one JSON list.

    json.load would lose the line numbers, so we walk the list: raw_decode parses one item from
    a position and says where it ended.
    """
    text, decoder = read_utf8(path), json.JSONDecoder()
    pos = _JSON_SPACE.match(text, 0).end()
    if pos == len(text):
        raise DataError(f"{path}: empty file")
    if text[pos] != "[":
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON list of examples")
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        raise DataError(f"{path}: empty file (the list has no examples)")
    items, line, counted_to = [], 1, 0  # newlines before `counted_to` are counted in `line`
    while True:
        line, counted_to = line + text.count("\n", counted_to, pos), pos  # linear, not quadratic
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{line}: JSON nested too deeply") from None
        items.append((line, item))
        pos = _JSON_SPACE.match(text, pos).end()
        if text[pos:pos + 1] == ",":
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif text[pos:pos + 1] == "]":
            break
        else:
            line_no = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line_no}: invalid JSON (expected ',' or ']' after an item)")
    if text[pos + 1:].strip():
        raise DataError(f"{path}: invalid JSON (text after the list's closing ']')")
    return items


def _field(record: dict, key: str, expected: type | tuple, where: str):
    """record[key], checked to exist and to have the expected type (str, list, int, float, or a tuple of them)."""
    if key not in record:
        raise DataError(f'{where}: missing field "{key}"')
    value, types = record[key], expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, types):
        wanted = " or ".join(dict.fromkeys({str: "string", list: "list", int: "number", float: "number"}[t] for t in types))
        raise DataError(f'{where}: field "{key}" must be a {wanted}, got a {_json_type(value)}')
    if isinstance(value, str):
        _check_text(value, where, key)
    return value


def _check_text(text: str, where: str, key: str) -> None:
    """Text holds no NUL: a NUL means a binary or corrupt record. Other control characters are
    kept: they are text, and byte-level BPE encodes every byte."""
    if "\x00" in text:
        raise DataError(f'{where}: "{key}" holds a NUL character (\\u0000): a binary or corrupt record')


def _messages(value: list, where: str, key: str) -> list[dict]:
    """Check a message list and return clean {"role", "content"} copies."""
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: {key}[{i}] must be an object, got a {_json_type(message)}")
        role = _field(message, "role", str, f"{where}: {key}[{i}]")
        if role not in ROLES:
            raise DataError(f'{where}: {key}[{i}]: unknown role "{role}" (expected {", ".join(ROLES)})')
        content = _field(message, "content", str, f"{where}: {key}[{i}]")
        messages.append({"role": role, "content": content})
    return messages


def _check_response(text: str, where: str, key: str) -> None:
    if not text.strip():
        raise DataError(f'{where}: empty response in "{key}"')


def _split_answer(messages: list[dict], where: str, key: str) -> tuple[list[dict], str]:
    """(prompt messages, content of the final assistant message)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f'{where}: "{key}" must end with an assistant message')
    return messages[:-1], messages[-1]["content"]


def _alpaca(item, where: str) -> list[dict]:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got a {_json_type(item)}")
    instruction = _field(item, "instruction", str, where)
    extra_input = item.get("input", "")
    extra_input = "" if extra_input is None else extra_input  # null: no input, as an empty string is
    if not isinstance(extra_input, str):
        raise DataError(f'{where}: field "input" must be a string, got a {_json_type(extra_input)}')
    _check_text(extra_input, where, "input")
    output = _field(item, "output", str, where)
    _check_response(output, where, "output")
    user = instruction + "\n\n" + extra_input if extra_input.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _chat(record: dict, where: str) -> list[dict]:
    messages = _messages(_field(record, "messages", list, where), where, "messages")
    if not any(message["role"] == "user" for message in messages):
        raise DataError(f'{where}: "messages" has no user message')
    _check_response(_split_answer(messages, where, "messages")[1], where, "messages")
    return messages


def _prompt_completion(record: dict, where: str) -> list[dict]:
    prompt = _field(record, "prompt", str, where)
    completion = _field(record, "completion", str, where)
    _check_response(completion, where, "completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def load_alpaca(path, strict: bool = False) -> list[list[dict]]:
    """Alpaca JSON: a list of {"instruction", "input" (optional, may be empty), "output"}."""
    return _parse_records(path, _read_json_list(path), _alpaca, strict)


def load_chat_jsonl(path, strict: bool = False) -> list[list[dict]]:
    """Chat JSONL: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}."""
    return _parse_records(path, _read_jsonl(path), _chat, strict)


def load_prompt_completion_jsonl(path, strict: bool = False) -> list[list[dict]]:
    """Prompt/completion JSONL: {"prompt": str, "completion": str} -> [user, assistant]."""
    return _parse_records(path, _read_jsonl(path), _prompt_completion, strict)


def load_sft_file(path, strict: bool = False) -> list[list[dict]]:
    """Any SFT file: .json is Alpaca; for .jsonl the first record that is a JSON object tells the format."""
    if Path(path).suffix.lower() == ".json":
        return load_alpaca(path, strict)
    if Path(path).suffix.lower() != ".jsonl":
        raise DataError(f"{path}: unknown file type; expected .json (Alpaca) "
                        "or .jsonl (chat or prompt/completion)")
    records = _read_jsonl(path)
    readable = [(line_no, record) for line_no, record in records if isinstance(record, dict)]
    if not readable:
        return _parse_records(path, records, _chat, strict)  # every line is a problem: say which
    line_no, first = readable[0]
    if "messages" in first:
        return _parse_records(path, records, _chat, strict)
    if "prompt" in first and "completion" in first:
        return _parse_records(path, records, _prompt_completion, strict)
    raise DataError(f'{path}:{line_no}: unknown format: expected a "messages" field (chat) '
                    f'or "prompt" and "completion" fields, got {sorted(first)}')


def _parse_hh(transcript: str, where: str, key: str) -> list[dict]:
    """Anthropic HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages."""
    parts = re.split(r"\n\n(Human|Assistant): ?", transcript)  # [before, role, text, role, text, ...]
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f'{where}: "{key}" is not a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[role], "content": text} for role, text in zip(parts[1::2], parts[2::2])]


def _preference(record: dict, where: str) -> dict:
    if "prompt" in record:  # explicit prompt; chosen/rejected are strings or message lists
        prompt = _field(record, "prompt", (str, list), where)
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        else:
            prompt = _messages(prompt, where, "prompt")
        answers = []
        for key in ("chosen", "rejected"):
            answer = _field(record, key, (str, list), where)
            if isinstance(answer, list):  # may repeat the prompt; only the final answer counts
                before, answer = _split_answer(_messages(answer, where, key), where, key)
                if before and before != prompt:
                    raise DataError(f'{where}: the messages before the answer in "{key}" differ from "prompt"')
            answers.append(answer)
    else:  # implicit prompt: the shared prefix of two message lists or two HH transcripts
        values = [_field(record, key, (str, list), where) for key in ("chosen", "rejected")]
        if all(isinstance(value, str) for value in values):
            return _with_world_fields(record, where, *_split_hh_pair(*values, where))
        splits = []
        for key, value in zip(("chosen", "rejected"), values):
            messages = _parse_hh(value, where, key) if isinstance(value, str) else _messages(value, where, key)
            splits.append(_split_answer(messages, where, key))
        (prompt, chosen), (rejected_prompt, rejected) = splits
        if prompt != rejected_prompt:
            raise DataError(f'{where}: "chosen" and "rejected" have different prompts '
                            "(all messages before the final assistant answer must be the same)")
        answers = [chosen, rejected]
    return _with_world_fields(record, where, prompt, *answers)


def _split_hh_pair(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str]:
    """(prompt, chosen answer, rejected answer) of two HH-RLHF transcripts. The prompt is the text the two
    share, up to its last "\n\nAssistant:" marker: an answer that itself holds "\n\nHuman:" stays whole."""
    marker = "\n\nAssistant:"
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(marker)
    if cut < 0:
        raise DataError(f'{where}: "chosen" and "rejected" are not "\\n\\nHuman: ...\\n\\nAssistant: ..." '
                        "transcripts with a shared prompt")
    cut += len(marker)
    prompt = _parse_hh(chosen[:cut], where, "chosen")[:-1]  # the last message: the empty answer to come
    return prompt, chosen[cut:].removeprefix(" "), rejected[cut:].removeprefix(" ")


def _with_world_fields(record: dict, where: str, prompt: list[dict], chosen: str, rejected: str) -> dict:
    """The checked pair {"prompt", "chosen", "rejected"} and the record's WORLD_FIELDS."""
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(f'{where}: the prompt must end with a user message')
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        _check_response(answer, where, key)
        _check_text(answer, where, key)
    if chosen == rejected:
        raise DataError(f'{where}: "chosen" and "rejected" are the same answer: the pair says nothing')
    pref = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key, kind in WORLD_FIELDS.items():  # the built-in world's pairs carry their gold scores
        if key in record:
            pref[key] = _field(record, key, kind, where)
    return pref


# Optional fields of the built-in world's preference pairs (preferences.py writes them): the family of
# the prompt and the gold score of each answer, so that a reward model can be measured against the gold rule.
WORLD_FIELDS = {"family": str, "gold_chosen": (int, float), "gold_rejected": (int, float)}


def load_preferences_jsonl(path, strict: bool = False) -> list[dict]:
    """Preference JSONL -> [{"prompt": messages, "chosen": str, "rejected": str}, ...].

    Accepted per line: {"prompt", "chosen", "rejected"} with a string or message-list prompt and
    string or message-list answers; or {"chosen", "rejected"} alone, as message lists or as
    HH-RLHF transcripts, whose prompt is the text the two share up to the last "Assistant:". The optional
    WORLD_FIELDS are kept when present.
    """
    return _parse_records(path, _read_jsonl(path), _preference, strict)


def write_jsonl(path, records: list[dict]) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept readable."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_preferences_jsonl(path, prefs: list[dict]) -> None:
    """Write {"prompt": messages, "chosen": str, "rejected": str} lines (load_preferences_jsonl's form),
    with the built-in world's WORLD_FIELDS when a pair has them."""
    records = []
    for pref in prefs:
        prompt = pref["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        record = {"prompt": prompt, "chosen": pref["chosen"], "rejected": pref["rejected"]}
        record.update({key: pref[key] for key in WORLD_FIELDS if key in pref})
        records.append(record)
    write_jsonl(path, records)


def load_text(paths) -> str:
    """Read plain UTF-8 text files (a directory: its *.txt files, sorted), joined by a blank line."""
    files = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
            if not found:
                raise DataError(f"{path}: no .txt files in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return "\n\n".join(read_utf8(file) for file in files)
