"""llmstreams: async streaming text generation from Baidu Qianfan and Alibaba DashScope."""

from llmstreams.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ContentFilterError,
    InvalidParameterError,
    InvalidRequestError,
    LLMStreamsError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    StreamTimeoutError,
)
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool, PoolStats
from llmstreams.ratelimit import RateLimit, RateLimiter
from llmstreams.streams import ChunkStream
from llmstreams.types import Chunk, Completion, Usage

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "Chunk",
    "ChunkStream",
    "Completion",
    "ContentFilterError",
    "InvalidParameterError",
    "InvalidRequestError",
    "LLMStreamsError",
    "NotFoundError",
    "PermissionDeniedError",
    "Pool",
    "PoolStats",
    "ProtocolError",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RetryPolicy",
    "ServerError",
    "StreamInterruptedError",
    "StreamTimeoutError",
    "Timeout",
    "Usage",
]
