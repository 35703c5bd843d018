"""A fetched batch read into what the stream worker scores and writes: dead letters,
and rounds of messages with distinct ids, each with its frame.

The usual batch — first deliveries, each a record the typed decoder reads, no id
twice — is read in one go, into columns. Any other is read message by message, which
names what is wrong with each message that cannot be read; there the same id twice in
one batch (a producer's retry, say) goes into a later round, so that each round upserts
one row per id and the batch ends as the messages would have one after the other.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelport.errors import InvalidInput
from modelport.pipeline import Frame, Key, Scored
from modelport.signature import Signature, missing_field
from modelport.streams.base import DeadLetter, Message
from modelport.streams.codec import Codec, Format, Typed, decode


@dataclass
class Round:
    """Messages with distinct ids, scored together and then written together: the
    frame's keys are their ids, in message order."""

    messages: list[Message]
    frame: Frame
    scored: Scored | None = None
    error: Exception | None = None
    """Scoring failed for good: narrowed down to its messages when written."""


def read(messages: Sequence[Message], signature: Signature | None,
         typed: Typed | None, codec: Codec | Format, max_deliveries: int
         ) -> tuple[list[DeadLetter], list[Round], int]:
    """The batch's dead letters, its rounds, and how many of its messages were
    redeliveries. Messages delivered more than `max_deliveries` times are dead
    letters, and so are those that cannot be read as the model's inputs."""
    if typed is not None:
        whole = _read_typed(messages, typed)
        if whole is not None:
            return [], [whole], 0
    return _read_each(messages, signature, typed, codec, max_deliveries)


def _read_typed(messages: Sequence[Message], typed: Typed) -> Round | None:
    """The usual batch in one go; None sends it the message-by-message way."""
    if max(map(_deliveries, messages), default=1) > 1:
        return None
    decoded = typed.decode_all(messages)
    if decoded is None:
        return None
    ids, keys, table = decoded
    if len(set(ids)) != len(ids):
        return None
    frame = Frame(list(ids), {n: table[:, i] for i, n in enumerate(typed.names)})
    if keys is not None:
        frame.columns["key"] = keys
    return Round(list(messages), frame)


def _read_each(messages: Sequence[Message], signature: Signature | None,
               typed: Typed | None, codec: Codec | Format, max_deliveries: int
               ) -> tuple[list[DeadLetter], list[Round], int]:
    letters: list[DeadLetter] = []
    rounds: list[list[_Row]] = []
    seen: dict[str, int] = {}
    redeliveries = 0
    for message in messages:
        if message.deliveries > 1:
            redeliveries += 1
        if message.deliveries > max_deliveries:
            letters.append(DeadLetter(message, (
                f"delivered {message.deliveries} times without success "
                f"(max_deliveries={max_deliveries})")))
            continue
        fast = typed.decode(message) if typed is not None else None
        if fast is not None:
            row = _Row(fast[0], fast[1], message, values=fast[2], typed=typed)
        else:
            try:
                decoded = decode(message, codec)
                record = as_record(decoded.data, signature)
            except InvalidInput as exc:
                letters.append(DeadLetter(message, exc.message))
                continue
            row = _Row(decoded.id, decoded.key, message, record=record)
        turn = seen.get(row.id, 0)
        seen[row.id] = turn + 1
        if turn == len(rounds):
            rounds.append([])
        rounds[turn].append(row)
    return letters, [Round([row.message for row in rows], _frame(rows)) for rows in rounds], \
        redeliveries


@dataclass(slots=True)
class _Row:
    """A message read one at a time (the general path): its inputs as a record, or as
    values in the order of `typed.names` when the typed decoder read it."""

    id: str
    key: Any
    message: Message
    record: dict[str, Any] | None = None
    values: tuple[Any, ...] | None = None
    typed: Typed | None = None


def _frame(rows: list[_Row]) -> Frame:
    """Rows read one by one as a frame: one array for the inputs when the typed decoder
    read them all; a `key` column when a message had one."""
    keys: list[Key] = [row.id for row in rows]
    typed = rows[0].typed if rows else None
    values = [row.values for row in rows if row.values is not None and row.typed is typed]
    table = typed.table(values) if typed is not None and len(values) == len(rows) else None
    if typed is not None and table is not None:
        frame = Frame(keys, {n: table[:, i] for i, n in enumerate(typed.names)})
    else:
        frame = Frame.from_records(keys, [_record(row) for row in rows])
    if any(row.key is not None for row in rows):
        frame.columns["key"] = [row.key for row in rows]
    return frame


def _record(row: _Row) -> dict[str, Any]:
    if row.record is not None:
        return row.record
    if row.typed is None or row.values is None:
        raise AssertionError("a row holds a record or typed values")
    return dict(zip(row.typed.names, row.values, strict=True))


_deliveries = operator.attrgetter("deliveries")


def as_record(data: Any, signature: Signature | None) -> dict[str, Any]:
    """A message's data as one record of the model's inputs (a record lacking one is
    refused here, as HTTP refuses it: a missing field, not a null one)."""
    if isinstance(data, dict):
        missing = missing_field(signature.input_names, data) if signature else None
        if missing:
            raise InvalidInput(missing)
        return data
    if signature is None:
        raise InvalidInput("expected a record (a JSON object) of named values")
    names = [s.name for s in signature.inputs]
    if signature.layout == "tensor" and len(names) == 1:
        return {names[0]: data}
    if not isinstance(data, list) or len(data) != len(names):
        raise InvalidInput(
            f"expected a record or a row of {len(names)} values ({', '.join(names)})")
    return dict(zip(names, data, strict=True))
