"""The accept policy: which instances are in scope (Modality, SOP Class, body part,
ImageType). One setting for every way in; ``cxr_orient.dicomnet.policy`` applies it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["CHEST_RADIOGRAPH_SOP_CLASSES", "AcceptSettings", "parse_image_type_pattern"]

#: CR Image Storage; Digital X-Ray Image Storage for presentation, for processing.
CHEST_RADIOGRAPH_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
)


def _upper(text: str) -> str:
    return text.upper()


def _uid(text: str) -> str:
    if len(text) > 64 or not all(part.isdigit() for part in text.split(".")):
        raise ValueError(f"CXR_ACCEPT_SOP_CLASSES: {text!r} is not a DICOM UID")
    return text


def parse_image_type_pattern(text: str) -> tuple[str, ...]:
    """``DERIVED\\SECONDARY`` as ``("DERIVED", "SECONDARY")``, upper case; ValueError on an
    empty value."""
    values = tuple(v.strip().upper() for v in text.split("\\"))
    if not all(values):
        raise ValueError(f"CXR_REFUSE_IMAGE_TYPES: empty value in {text!r}")
    return values


Upper = Annotated[str, from_text(_upper)]
Uid = Annotated[str, from_text(_uid)]
ImageTypePattern = Annotated[tuple[str, ...], from_text(parse_image_type_pattern)]


class AcceptSettings(SettingsGroup):
    """The accept policy's rules; an empty list switches its rule off."""

    accept_modalities: CommaList[Upper] = Field(
        default=["CR", "DX"],
        description="CXR_ACCEPT_MODALITIES: the accept policy's Modality rule, a "
        "comma-separated list (case-insensitive); an instance of another Modality, or "
        "without one, is recorded out_of_scope and never labelled. Empty: any Modality. "
        "Default CR,DX.",
    )
    accept_sop_classes: CommaList[Uid] = Field(
        default=list(CHEST_RADIOGRAPH_SOP_CLASSES),
        description="CXR_ACCEPT_SOP_CLASSES: the accept policy's SOP Class rule, a "
        "comma-separated list of SOP Class UIDs (SOPClassUID, else the file meta's "
        "MediaStorageSOPClassUID); others are out_of_scope. `cxr-orient listen` offers "
        "presentation contexts for these classes only (others are refused at association); "
        "empty: any class, and listen offers every storage SOP class. Default: CR Image "
        "Storage and Digital X-Ray Image Storage for presentation and for processing "
        "(1.2.840.10008.5.1.4.1.1.1, .1.1.1.1, .1.1.1.1.1).",
    )
    accept_body_parts: CommaList[Upper] = Field(
        default=["CHEST", "THORAX"],
        description="CXR_ACCEPT_BODY_PARTS: the accept policy's BodyPartExamined rule, a "
        "comma-separated list (case-insensitive); another body part is out_of_scope; an "
        "absent one is governed by CXR_ACCEPT_MISSING_BODY_PART. Empty: any. "
        "Default CHEST,THORAX.",
    )
    accept_missing_body_part: bool = Field(
        default=True,
        description="CXR_ACCEPT_MISSING_BODY_PART: whether an instance without "
        "BodyPartExamined passes the body-part rule (it is Type 3 in CR and DX, often "
        "absent on chest films). Default true.",
    )
    refuse_image_types: CommaList[ImageTypePattern] = Field(
        default=[("DERIVED", "SECONDARY")],
        description="CXR_REFUSE_IMAGE_TYPES: the accept policy's ImageType rule, a "
        "comma-separated list of patterns, each backslash-separated values that must all "
        "be in ImageType (case-insensitive) for the instance to be out_of_scope. Empty: no "
        "ImageType rule. Default DERIVED\\SECONDARY (screenshots, secondary captures and "
        "re-saved annotated copies; an acquired film, also a processed DERIVED\\PRIMARY "
        "one, passes).",
    )
