"""
Reading and writing data files. Every record read from disk remembers its file and line, so a
bad record produces an error that names both; nothing is dropped without being counted.

    records = read_jsonl("sft.jsonl")            # [(lineno, dict), ...]
    examples, report = load_sft("sft.jsonl", tok, max_len=257)
"""
import json
import os
import tempfile
from collections import Counter

from nanopost.tokenizer import ConversationError, render_conversation


class DataError(ValueError):
    """A bad record: the message starts with 'file:line:'."""


def write_jsonl(path, records):
    """Atomic write (temp file + rename): a crash never leaves half a file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_jsonl(path):
    """[(lineno, record)] for every non-blank line; a line that is not a JSON object -> DataError."""
    out = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                out.append((lineno, record))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text near line {len(out) + 1} ({e.reason})") from None
    return out


def load_records(path, convert, skip_bad=False):
    """Apply convert(record) to every record of a JSONL file.
    convert raises ValueError (ConversationError, ...) for a bad record. By default the first bad
    record stops with 'file:line: reason'; with skip_bad the bad ones are skipped and counted by
    reason in the report, so nothing disappears silently."""
    items, skipped, first_errors = [], Counter(), []
    records = read_jsonl(path)
    for lineno, record in records:
        try:
            items.append(convert(record))
        except (ValueError, KeyError, TypeError) as e:
            message = f"{path}:{lineno}: {e}"
            if not skip_bad:
                raise DataError(message) from None
            skipped[type(e).__name__ + ": " + str(e).split(":")[0]] += 1
            first_errors.append(message)
    report = {"file": path, "records": len(records), "used": len(items), "skipped": sum(skipped.values()),
              "skipped_by_reason": dict(skipped), "first_errors": first_errors[:5]}
    if not items:
        raise DataError(f"{path}: no usable records ({len(records)} read, {report['skipped']} skipped)")
    return items, report


def messages_of(record):
    """The §3 record shape: {"messages": [{"role": ..., "content": ...}, ...]}."""
    if "messages" not in record:
        raise ConversationError(f"record has no 'messages' key (keys: {sorted(record)})")
    if not isinstance(record["messages"], list) or not record["messages"]:
        raise ConversationError("'messages' must be a non-empty list")
    return record["messages"]


def load_sft(path, tok, max_len, skip_bad=False):
    """SFT JSONL -> examples [(ids, loss_mask)] and a report. A conversation longer than max_len
    tokens is an error (ConversationTooLong), never cut."""
    return load_records(path, lambda r: render_conversation(tok, messages_of(r), max_len), skip_bad)
