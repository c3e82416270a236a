"""Alibaba DashScope text generation (`DashScopeClient`)."""

from llmstreams.dashscope.client import DashScopeClient

__all__ = ["DashScopeClient"]
