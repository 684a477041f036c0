"""Zero-cost backbone ranking: transferability scores of frozen features, and their use in a study."""

from tlsearch.rank.candidates import Candidate, candidates, narrow_space
from tlsearch.rank.ranking import RankedBackbone, rank_backbones, score_candidate
from tlsearch.rank.scores import SCORES, h_score, logme, logme_evidence, logme_fit, transferability
from tlsearch.rank.study import RANK_ATTR, ranked_space, stored_ranking
from tlsearch.train.features import backbone_identity

__all__ = [
    "RANK_ATTR",
    "SCORES",
    "Candidate",
    "RankedBackbone",
    "backbone_identity",
    "candidates",
    "h_score",
    "logme",
    "logme_evidence",
    "logme_fit",
    "narrow_space",
    "rank_backbones",
    "ranked_space",
    "score_candidate",
    "stored_ranking",
    "transferability",
]
