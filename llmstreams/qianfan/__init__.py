"""Baidu Qianfan: the API v1 (wenxinworkshop) client, and API v2's bearer tokens from an IAM
access key pair."""

from llmstreams.qianfan.client import QianfanClient
from llmstreams.qianfan.iam import BearerToken
from llmstreams.qianfan.models import MODELS, ModelInfo

__all__ = ["MODELS", "BearerToken", "ModelInfo", "QianfanClient"]
