"""The OpenAI-compatible dialect: one wire module and a client for any server that speaks it."""

from llmstreams.openai.client import KeySource, OpenAICompatibleClient

__all__ = ["KeySource", "OpenAICompatibleClient"]
