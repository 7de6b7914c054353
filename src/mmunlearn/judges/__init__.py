"""Judges of attack success: does a response give the harmful content it was asked for?

Judges are picked by name (`get_judge("refusal_keyword")`); every verdict names the judge and its version.
Checkpoint- and API-backed judges are imported only when first asked for (`known_judges`, `get_judge`).
"""

from mmunlearn.judges.agreement import agreement_markdown, cohen_kappa, harmful_rate, pairwise_agreement
from mmunlearn.judges.base import Judge, JudgeInput, Verdict, check_judge, get_judge, known_judges, register_judge

__all__ = [
    "Judge",
    "JudgeInput",
    "Verdict",
    "agreement_markdown",
    "cohen_kappa",
    "check_judge",
    "get_judge",
    "harmful_rate",
    "known_judges",
    "pairwise_agreement",
    "register_judge",
]
