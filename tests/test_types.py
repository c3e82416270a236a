"""`make_chunk`, the parsers' fast way to make a `Chunk`, makes the same value as `Chunk(...)` and
takes its fields by name only, so that two fields of one type cannot be swapped unseen."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from llmstreams.types import Chunk, ToolCallDelta, Usage, make_chunk

EVERY_FIELD: dict[str, Any] = {
    "text": "hi", "sentence_id": 3, "is_end": True, "need_clear_history": True, "ban_round": -1,
    "is_truncated": True, "is_safe": False, "finish_reason": "stop", "usage": Usage(1, 2, 3),
    "id": "as-1", "created": 17, "request_id": "req-1", "reasoning": "hmm",
    "tool_calls": (ToolCallDelta(0, "c1", "function", "f", "{}"),), "model": "m",
    "raw": {"result": "hi"},
}


def test_every_field_lands_in_its_own_slot() -> None:
    assert set(EVERY_FIELD) == {field.name for field in attrs.fields(Chunk)}
    chunk = make_chunk(**EVERY_FIELD)
    assert chunk == Chunk(**EVERY_FIELD)
    assert attrs.asdict(chunk, recurse=False) == EVERY_FIELD


def test_left_out_fields_take_the_defaults_of_chunk() -> None:
    chunk = make_chunk(text="a", sentence_id=0, is_end=False, raw={})
    assert chunk == Chunk("a", 0, False)


def test_fields_are_taken_by_name_only() -> None:
    with pytest.raises(TypeError):
        make_chunk("a", 0, False, raw={})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="raw"):
        make_chunk(text="a", sentence_id=0, is_end=False)  # type: ignore[call-arg]
