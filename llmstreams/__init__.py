"""llmstreams: async streaming text generation from Baidu Qianfan, Alibaba DashScope and any
OpenAI-compatible server."""

import logging

from llmstreams.calls import Call
from llmstreams.dashscope import DashScopeClient
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
    TLSCertificateError,
    UsageError,
)
from llmstreams.fanout import FanOut, FanOutStats, Outcome, fan_out, fan_out_as_completed
from llmstreams.openai import KeySource, OpenAICompatibleClient
from llmstreams.openai.vendor import Vendor
from llmstreams.options import RetryPolicy, Timeout
from llmstreams.pool import Pool, PoolStats
from llmstreams.providers import PROVIDERS, Provider, client_for
from llmstreams.qianfan import BearerToken, QianfanClient
from llmstreams.ratelimit import RateLimit, RateLimiter
from llmstreams.streams import ChunkStream
from llmstreams.sync import SyncClient, SyncStream
from llmstreams.types import Chunk, Completion, ToolCall, ToolCallDelta, Usage

__version__ = "0.1.0"

# A library leaves log output to the application: without this, retry warnings would reach
# stderr through logging's last-resort handler in programs that never configured logging.
logging.getLogger("llmstreams").addHandler(logging.NullHandler())

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BearerToken",
    "Call",
    "Chunk",
    "ChunkStream",
    "Completion",
    "ContentFilterError",
    "DashScopeClient",
    "FanOut",
    "FanOutStats",
    "InvalidParameterError",
    "InvalidRequestError",
    "KeySource",
    "LLMStreamsError",
    "NotFoundError",
    "OpenAICompatibleClient",
    "Outcome",
    "PROVIDERS",
    "PermissionDeniedError",
    "Pool",
    "PoolStats",
    "ProtocolError",
    "Provider",
    "QianfanClient",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RetryPolicy",
    "ServerError",
    "StreamInterruptedError",
    "StreamTimeoutError",
    "SyncClient",
    "SyncStream",
    "TLSCertificateError",
    "Timeout",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageError",
    "Vendor",
    "client_for",
    "fan_out",
    "fan_out_as_completed",
]
