"""Which model, which layer: transferability scores and rankings computed before training a head.

Scores (:mod:`xfer.transferability.scores`): :func:`logme`, :func:`h_score` (features of any
layer), :func:`leep` and :func:`nce` (the source model's output distribution). Rankings
(:mod:`xfer.transferability.ranking`): :func:`rank_layers` scores candidate layers of one model
from one pass over the labelled examples; :func:`rank_models` scores several models.
"""

from xfer.transferability.ranking import (
    ModelCandidate,
    Ranking,
    candidate_layers,
    rank_layers,
    rank_models,
)
from xfer.transferability.scores import (
    FEATURE_SCORES,
    OUTPUT_SCORES,
    SCORES,
    feature_scores,
    h_score,
    leep,
    logme,
    nce,
)

__all__ = [
    "logme",
    "h_score",
    "leep",
    "nce",
    "feature_scores",
    "SCORES",
    "FEATURE_SCORES",
    "OUTPUT_SCORES",
    "rank_layers",
    "rank_models",
    "candidate_layers",
    "ModelCandidate",
    "Ranking",
]
