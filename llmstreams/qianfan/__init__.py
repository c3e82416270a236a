"""Baidu Qianfan (wenxinworkshop) client."""

from llmstreams.qianfan.client import QianfanClient
from llmstreams.qianfan.models import MODELS, ModelInfo

__all__ = ["MODELS", "ModelInfo", "QianfanClient"]
