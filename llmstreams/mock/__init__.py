"""A local mock of the Baidu Qianfan and Alibaba DashScope text generation APIs.

It speaks both wire protocols faithfully (clients cannot tell it from the real services apart
from the base URL), answers deterministically, and has knobs for every way a stream can go
wrong. See docs/mock.md.
"""

from llmstreams.mock.behaviour import BEHAVIOUR_HEADER, Behaviour, BehaviourError
from llmstreams.mock.credentials import MockCredentials
from llmstreams.mock.server import MockServer
from llmstreams.mock.stats import MockStats
from llmstreams.mock.workers import spawn_mock_workers

__all__ = [
    "BEHAVIOUR_HEADER",
    "Behaviour",
    "BehaviourError",
    "MockCredentials",
    "MockServer",
    "MockStats",
    "spawn_mock_workers",
]
