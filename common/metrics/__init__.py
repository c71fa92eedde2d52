"""Text-to-image retrieval metrics (IRRA's protocol).

`rank` is the pure reference on a full similarity matrix; `evaluate_embeddings`
is the fast, memory-bounded evaluator that gives the same numbers from
embeddings.
"""

from common.metrics.fast_eval import evaluate_embeddings, similarity_chunks
from common.metrics.rank import rank

__all__ = ["evaluate_embeddings", "rank", "similarity_chunks"]
