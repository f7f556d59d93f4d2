"""The review page's work: the images of an instance awaiting review, and recording a
reviewer's decision as a label.

Images come from the stored file through the same checked read as the worker
(:func:`cxr_orient.intake.read_checked`: confined to the ingest root, bounded, unchanged
since it was recorded) and the same decoder, so the 256 px picture *is* the model's
input; beside it a larger one through the same windowing (the file's VOI window, else
min-max; MONOCHROME1 inverted), with the stored aspect ratio. A file that is gone
(purged from the spool, deleted, changed) gives a placeholder saying why, never an
error page: the decision can still be recorded from the other views of the study.

A decision is an append-only ``labels`` row (source ``review``, annotator the user), so
the latest label of an instance is what the next retrain learns from
(:func:`training.lifecycle.labelled_images_from_db`); "not a chest radiograph" is kept as
``not_chest``: never learnt as a view, it teaches the chest-or-not head
(:mod:`training.scope_refit`). A frontal may carry the
reviewer's projection (PA or AP, ``labels.projection``), the PA/AP head's training
target.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy.orm import Session

from cxr_orient.dicomnet.retention import ensure_not_purged
from cxr_orient.errors import CxrError, FileChangedError, FilePurgedError
from cxr_orient.imaging import MODEL_INPUT_SIZE, PROJECTIONS, load_dicom_image, read_header
from cxr_orient.intake import read_checked
from cxr_orient.settings import Settings
from db import crud
from db.models import GroundTruthLabel, Instance, LabelValue

__all__ = [
    "DECISIONS",
    "KINDS",
    "LARGE_SIZE",
    "REVIEW_SOURCE",
    "RenderCache",
    "Rendered",
    "ReviewError",
    "next_for_review",
    "placeholder_png",
    "record_review",
    "render_instance",
]

logger = logging.getLogger(__name__)

#: The ``labels.source`` of a decision made on the review page.
REVIEW_SOURCE = "review"
#: What a reviewer may answer (the page's buttons, keys f / l / n).
DECISIONS = {
    "frontal": LabelValue.frontal,
    "lateral": LabelValue.lateral,
    "not_chest": LabelValue.not_chest,
}
#: The longer side of the larger image, in pixels.
LARGE_SIZE = 768


class ReviewError(CxrError):
    code = "review"


#: The two pictures of an instance: the model's input, the larger windowed one.
KINDS = ("model", "large")


@dataclass(frozen=True)
class Rendered:
    """One picture of an instance as PNG, or a placeholder with ``unavailable`` saying
    why."""

    png: bytes
    unavailable: str | None = None


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def placeholder_png(size: int, reason: str) -> bytes:
    """A grey square saying why there is no image (no identifiers in it)."""
    image = Image.new("L", (size, size), 64)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(["no image:", *reason.split("\n")]):
        draw.text((12, 12 + 16 * row), line, fill=230)
    return _png(np.asarray(image))


def _unavailable(exc: CxrError) -> str:
    if isinstance(exc, FilePurgedError):
        return "file purged from the spool\n(CXR_SPOOL_KEEP_DAYS)"
    if isinstance(exc, FileChangedError):
        return "file changed since it\nwas recorded"
    return f"{exc.code}"


def render_instance(instance: Instance, *, kind: str, settings: Settings) -> Rendered:
    """``kind`` "model": the model's 256 px input; "large": the windowed image, its
    longer side :data:`LARGE_SIZE`, in the stored aspect ratio."""
    if kind not in KINDS:
        raise ValueError(f"unknown picture {kind!r}; choose from {KINDS}")
    size = MODEL_INPUT_SIZE if kind == "model" else LARGE_SIZE
    try:
        ensure_not_purged(instance)
        checked = read_checked(
            instance.file_path, expected_sha256=instance.file_sha256, intake=settings.intake
        )
        square = load_dicom_image(
            checked.real, size=size, max_pixels=settings.intake.max_pixels, data=checked.data
        )
        if kind == "model":
            return Rendered(_png(square))
        header = read_header(checked.real, data=checked.data)
    except CxrError as exc:
        reason = _unavailable(exc)
        logger.info("review: instance %d has no image (%s)", instance.id, exc.code)
        return Rendered(placeholder_png(size, reason), reason)
    rows, columns = header.rows or LARGE_SIZE, header.columns or LARGE_SIZE
    scale = LARGE_SIZE / max(rows, columns)
    shape = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return Rendered(
        _png(np.asarray(Image.fromarray(square).resize(shape, Image.Resampling.BILINEAR)))
    )


class RenderCache:
    """The last ``capacity`` pictures, by (instance id, file version, kind): the item
    page prefetches its successor's, so a reviewer's next picture is ready when the
    decision is made; each is decoded once."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, str, str], Rendered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, instance: Instance, *, kind: str, settings: Settings) -> Rendered:
        key = (instance.id, instance.file_sha256 + str(instance.file_purged_at), kind)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        rendered = render_instance(instance, kind=kind, settings=settings)
        with self._lock:
            self._items[key] = rendered
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return rendered


def record_review(
    session: Session,
    *,
    instance_id: int,
    decision: str,
    annotator: str,
    projection: str | None = None,
) -> GroundTruthLabel:
    """Append the reviewer's ``decision`` (a key of :data:`DECISIONS`) for the instance;
    for a frontal, optionally its ``projection`` ("PA" or "AP")."""
    value = DECISIONS.get(decision)
    if value is None:
        raise ReviewError(f"decision {decision!r}: choose from {', '.join(DECISIONS)}")
    projection = projection or None
    if projection is not None and projection not in PROJECTIONS:
        raise ReviewError(f"projection {projection!r}: choose from {', '.join(PROJECTIONS)}")
    if projection is not None and value is not LabelValue.frontal:
        raise ReviewError(
            f"projection {projection!r} given for a {value.value}: only a frontal has one"
        )
    if crud.get_instance(session, instance_id=instance_id) is None:
        raise ReviewError(f"no instance {instance_id}")
    row = crud.add_label(
        session,
        instance_id=instance_id,
        label=value,
        source=REVIEW_SOURCE,
        annotator=annotator,
        projection=projection,
    )
    session.flush()
    logger.info(
        "review: %s labelled instance %d %s%s (label %d)",
        annotator,
        instance_id,
        value.value,
        f" {projection}" if projection else "",
        row.id,
    )
    return row


def next_for_review(session: Session, *, kind: str, after: int) -> int | None:
    """The instance to show after instance ``after`` in the ``kind`` queue: the next one
    awaiting review in instance order, else the first (the queue wraps; None: empty)."""
    for start in (after, 0):
        items = crud.review_queue(session, kind=kind, after=start, limit=2)
        found = [i.instance_id for i in items if i.instance_id != after]
        if found:
            return found[0]
    return None
