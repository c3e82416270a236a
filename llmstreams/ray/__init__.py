"""llmstreams on Ray Data: batch generation across the actors of a Ray cluster.

Needs the `ray` extra: `pip install 'llmstreams[ray]'`. `Generate` is the callable class for
`Dataset.map_batches`; `ClusterRateLimiter` holds one rate limit across all of its actors;
`llmstreams batch --ray` runs the batch command through them. See docs/ray.md.
"""

from llmstreams.ray.generate import RESULT_COLUMNS, Generate, Secrets, columns_of
from llmstreams.ray.ratelimit import ClusterRateLimiter, shared_out

__all__ = [
    "RESULT_COLUMNS", "ClusterRateLimiter", "Generate", "Secrets", "columns_of", "shared_out",
]
