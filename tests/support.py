"""A minimal vendor-free `Exchange` for testing the core: one JSON object per line.

Each line is `{"text": str, "end": bool}` or `{"error": code, "retryable": bool}`.
"""

from __future__ import annotations

import json

from llmstreams.errors import APIError, StreamInterruptedError
from llmstreams.transport import HttpRequest, ResponseHead
from llmstreams.types import Chunk


class LinesParser:
    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.buffer = b""
        self.count = 0
        self.end_seen = False
        self.deferred: APIError | None = None

    @property
    def finished(self) -> bool:
        return self.end_seen or self.deferred is not None

    def feed(self, data: bytes) -> list[Chunk]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        chunks: list[Chunk] = []
        for line in lines:
            if not line:
                continue
            item = json.loads(line)
            if "error" in item:
                error = APIError(
                    "test error", code=item["error"], http_status=self.head.status,
                    provider="lines", retryable=item.get("retryable", False),
                    retry_after=self.head.retry_after,
                )
                if not chunks:
                    raise error
                self.deferred = error
                return chunks
            chunks.append(Chunk(text=item["text"], sentence_id=self.count, is_end=item["end"]))
            self.count += 1
            self.end_seen = item["end"]
        return chunks

    def close(self) -> list[Chunk]:
        if self.deferred is not None:
            raise self.deferred
        chunks = self.feed(b"\n")
        if self.deferred is not None:
            raise self.deferred
        if not self.end_seen:
            raise StreamInterruptedError("ended before the end line", provider="lines")
        return chunks


class LinesExchange:
    provider = "lines"

    def __init__(self, url: str, body: bytes = b"{}") -> None:
        self.url = url
        self.body = body
        self.requests_built = 0
        self.recoveries = 0
        self.recover_code: object = None

    async def build_request(self) -> HttpRequest:
        self.requests_built += 1
        return HttpRequest(
            method="POST", url=self.url, body=self.body,
            headers={"Content-Type": "application/json", "Authorization": "secret-header-value"},
            params={"access_token": "secret-token-value"},
        )

    def parser(self, head: ResponseHead) -> LinesParser:
        return LinesParser(head)

    async def recover(self, error: APIError) -> bool:
        if error.code == self.recover_code:
            self.recoveries += 1
            return True
        return False
