"""One answer: what the model says about one image, the one type for it everywhere.

The classifier makes it (:meth:`cxr_orient.modelstore.Classifier.post_process`), the
worker records it (``db.crud.PredictionRecord`` carries one), and it is read back as
it was stored for the results (``db.crud.ResultRow``), the review queue
(``db.crud.ReviewItem``, and the JSON API's ``ReviewItemOut`` flattens that) and the
report back to PACS (``db.crud.OutboxWork`` -> :func:`cxr_orient.dicomnet.sr.build_sr`).
A new field of the answer is added here, then where it is stored
(``db.crud.common.answer_columns`` / ``answer_of``, a column and its migration) and
where it is shown or reported.

A leaf module: the standard library only, so every layer (``db`` too) may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LOW_CONFIDENCE", "SHOWN", "UNUSUAL_IMAGE", "Answer", "flat", "reasons_of"]

#: The review reasons the model gives (``predictions.review_reason``, comma-separated).
LOW_CONFIDENCE = "low_confidence"
UNUSUAL_IMAGE = "unusual_image"


@dataclass(frozen=True)
class Answer:
    """One image's calibrated answer.

    ``rotation`` (0, 90, 180, 270) and ``mirrored`` say how the image is stored relative
    to standard display: ``numpy.rot90(upright, rotation // 90)`` is the stored image
    (after a left-right mirror when ``mirrored``). ``mirrored`` is None for laterals
    (archives display them facing either way) and both are None for a model without an
    orientation head; ``unusual_score`` likewise without an unusual-image head.

    ``header_agrees`` says whether the header's ViewPosition names the same view: None
    where it names none, and on the classifier's answer, which has not seen the header
    (the worker sets it, :func:`worker.outcomes.decide`).

    With a chest-or-not and a PA/AP head (``compact_invariant_64_heads3``):
    ``p_not_chest`` is the probability that the image is not a chest radiograph (its
    threshold is part of ``unusual``), ``p_ap`` the calibrated probability that a frontal
    was taken AP, and ``projection`` "PA" or "AP" for a frontal whose confidence
    max(p_ap, 1 - p_ap) reaches the card's ``projection_threshold`` (None otherwise,
    for laterals, and for models without the head). ``projection_agrees`` says whether
    the header's ViewPosition names the same projection: None where either names none
    (the worker sets it, like ``header_agrees``).
    """

    label: str  # "frontal" or "lateral"
    confidence: float
    p_frontal: float
    p_lateral: float
    needs_review: bool
    review_reasons: tuple[str, ...] = ()
    rotation: int | None = None
    mirrored: bool | None = None
    unusual_score: float | None = None
    header_agrees: bool | None = None
    p_not_chest: float | None = None
    p_ap: float | None = None
    projection: str | None = None
    projection_agrees: bool | None = None

    @property
    def unusual(self) -> bool:
        """Flagged as unlike the chest radiographs the model was trained on."""
        return UNUSUAL_IMAGE in self.review_reasons

    @property
    def review_reason(self) -> str | None:
        """The reasons as stored (``predictions.review_reason``): comma-separated."""
        return ",".join(self.review_reasons) or None


def reasons_of(review_reason: str | None) -> tuple[str, ...]:
    """``predictions.review_reason`` (comma-separated) as a tuple of reasons."""
    return tuple(r for r in (review_reason or "").split(",") if r)


#: The answer's fields as the results table, the review queue and the JSON API show
#: them, flat beside the instance's (``review_reason`` as stored, comma-separated).
SHOWN = (
    "label",
    "confidence",
    "p_frontal",
    "p_lateral",
    "needs_review",
    "review_reason",
    "rotation",
    "mirrored",
    "unusual_score",
    "header_agrees",
    "projection",
    "p_ap",
    "projection_agrees",
    "p_not_chest",
)


def flat(answer: Answer | None) -> dict[str, Any]:
    """:data:`SHOWN` of ``answer`` (all None without one), for a row's ``as_dict``."""
    return {name: None if answer is None else getattr(answer, name) for name in SHOWN}
