"""IOCM corrections (issue 22): where a corrected replacement and the rejection note of
its original go, and which faults the workers correct on their own."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from cxr_orient.dicomnet.addresses import ResultDestination, parse_result_destination
from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["CORRECTION_FAULTS", "CorrectionSettings"]

#: The faults a correction puts right (CXR_CORRECTION_RULES): the film stored turned, or
#: mirrored; the header's view (frontal / lateral) wrong; a frontal's PA / AP wrong.
CORRECTION_FAULTS = ("turned", "mirrored", "header_view", "header_projection")


class CorrectionSettings(SettingsGroup):
    """The corrections' destinations and rules (both empty by default: nothing sent)."""

    correction_destinations: CommaList[
        Annotated[ResultDestination, from_text(parse_result_destination)]
    ] = Field(
        default=[],
        description="CXR_CORRECTION_DESTINATIONS: where corrections go (IHE IOCM: a "
        "corrected replacement and a rejection note of the original), comma-separated, "
        "spelled as CXR_RESULT_DESTINATIONS: dicom://AET@host:port and dicomweb+http(s)://"
        "host:port/path. The archive must implement IOCM to hide what a note rejects "
        "(docs/dicom.md). Default empty: no correction is ever sent, by rule or review.",
    )
    correction_rules: CommaList[str] = Field(
        default=[],
        description="CXR_CORRECTION_RULES: the faults the workers correct on their own, "
        "comma-separated, from turned, mirrored, header_view, header_projection; an answer "
        "is corrected by rule only when every fault found is listed, it needs no review "
        "(above the review threshold, not an unusual image) and its model is in service. "
        "Default empty: corrections only from the review page, confirmed by a reviewer.",
    )

    @field_validator("correction_destinations")
    @classmethod
    def _each_once(cls, value: list[ResultDestination]) -> list[ResultDestination]:
        urls = [d.url for d in value]
        if len(set(urls)) != len(urls):
            raise ValueError("CXR_CORRECTION_DESTINATIONS names a destination twice")
        return value

    @field_validator("correction_rules")
    @classmethod
    def _known_faults(cls, value: list[str]) -> list[str]:
        faults = {f.strip().lower() for f in value}
        unknown = sorted(faults - set(CORRECTION_FAULTS))
        if unknown:
            raise ValueError(
                f"CXR_CORRECTION_RULES: unknown fault {', '.join(unknown)} "
                f"(known: {', '.join(CORRECTION_FAULTS)})"
            )
        return [f for f in CORRECTION_FAULTS if f in faults]

    @property
    def destination_urls(self) -> list[str]:
        """The destinations' canonical URLs, in the order given (what the outbox records)."""
        return [d.url for d in self.correction_destinations]

    @property
    def rule_faults(self) -> frozenset[str]:
        """CXR_CORRECTION_RULES as a set (empty: no correction by rule)."""
        return frozenset(self.correction_rules)
