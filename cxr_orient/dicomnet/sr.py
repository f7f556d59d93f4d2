"""The answer as a DICOM Structured Report: one Comprehensive SR per answered instance.

Built from highdicom's TID 1500 *Measurement Report* (never by hand): one measurement
group (TID 1501) whose source image is exactly the answered instance, with

- the view as a qualitative evaluation *Image View* (DCM 111031) coded from CID 4010
  "DX View" (SNOMED CT): postero-anterior 272479007, antero-posterior 399348003,
  lateral 399067008 (left lateral 399173006, right lateral 399198007). The model says
  frontal or lateral; a frontal answer is PA or AP as the model's PA/AP head states it
  (models with the head, above its threshold), else as the header's ViewPosition says
  when it says which, else the local code ``(99CXR, frontal)``; a lateral answer takes
  left/right lateral from a ViewPosition of LL/RL, else plain lateral;
- for a frontal answered by a model with a PA/AP head: ``(99CXR, p-ap)`` (UCUM
  ``{ratio}``), the calibrated probability that it was taken AP, and, when the model
  states a projection and the header names one, ``(99CXR, projection-disagrees)`` yes/no;
- *Certainty of Finding* (DCM 111012, UCUM ``{ratio}``): the answer's calibrated confidence;
- *Rotation Angle* (DCM 130523, UCUM ``deg``) and ``(99CXR, mirrored)`` yes/no: how the
  film is stored relative to standard display (models with the orientation head);
- ``(99CXR, needs-review)`` yes/no, one ``(99CXR, review-reason)`` per reason, and
  ``(99CXR, header-disagrees)`` yes/no when the header names a view;
- ``(99CXR, unusual-image-score)`` (UCUM ``1``) for models with the unusual-image head;
- the model as TID 4019 *Algorithm Identification* (name = the model version's name,
  version = its architecture) and the device observer (cxr-orient, its version).

The SR lies in the source's study (patient and study modules copied from the source
header by highdicom), in a series of cxr-orient's own per study (UID derived from the
StudyInstanceUID, so every SR of a study lands in one series), with the source in its
evidence. Its SOPInstanceUID is the caller's (fixed when the outbox row is made) and
its content date and time are the answer's, so a re-send is the same object.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_orient import __version__
from cxr_orient.answer import Answer
from cxr_orient.imaging import view_to_projection

__all__ = [
    "LOCAL_SCHEME",
    "MANUFACTURER",
    "build_sr",
    "derived_uid",
    "new_sr_uid",
    "sr_series_uid",
    "view_code",
    "with_type2_attributes",
]

MANUFACTURER = "cxr-orient"
#: Private coding scheme for the concepts no standard codes (PS3.16 8.2: "99" prefix).
LOCAL_SCHEME = "99CXR"
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "cxr-orient view classification"

PA = CodedConcept("272479007", "SCT", "postero-anterior")
AP = CodedConcept("399348003", "SCT", "antero-posterior")
LATERAL = CodedConcept("399067008", "SCT", "lateral")
LEFT_LATERAL = CodedConcept("399173006", "SCT", "left lateral")
RIGHT_LATERAL = CodedConcept("399198007", "SCT", "right lateral")
FRONTAL = CodedConcept("frontal", LOCAL_SCHEME, "frontal (PA or AP not known)")

IMAGE_VIEW = CodedConcept("111031", "DCM", "Image View")
CERTAINTY = CodedConcept("111012", "DCM", "Certainty of Finding")
ROTATION_ANGLE = CodedConcept("130523", "DCM", "Rotation Angle")
NEEDS_REVIEW = CodedConcept("needs-review", LOCAL_SCHEME, "Needs review")
REVIEW_REASON = CodedConcept("review-reason", LOCAL_SCHEME, "Review reason")
HEADER_DISAGREES = CodedConcept("header-disagrees", LOCAL_SCHEME, "Header view disagrees")
MIRRORED = CodedConcept("mirrored", LOCAL_SCHEME, "Stored mirrored")
P_AP = CodedConcept("p-ap", LOCAL_SCHEME, "Probability of AP projection")
PROJECTION_DISAGREES = CodedConcept(
    "projection-disagrees", LOCAL_SCHEME, "Header projection disagrees"
)
UNUSUAL_SCORE = CodedConcept("unusual-image-score", LOCAL_SCHEME, "Unusual image score")
PROCEDURE = CodedConcept("399208008", "SCT", "Plain chest X-ray")
RATIO = CodedConcept("{ratio}", "UCUM", "ratio")
DEGREE = CodedConcept("deg", "UCUM", "degree")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
REASONS = {
    "low_confidence": CodedConcept("low_confidence", LOCAL_SCHEME, "Low confidence"),
    "unusual_image": CodedConcept("unusual_image", LOCAL_SCHEME, "Unusual image"),
}


def derived_uid(*parts: str) -> str:
    """A UID that is a function of ``parts`` (PS3.5 B.2: 2.25 and a name-based UUID),
    the same on every machine and every run."""
    name = "\x1f".join(("cxr-orient", *parts))
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def new_sr_uid() -> str:
    """A fresh UID for a Structured Report (PS3.5 B.2: 2.25 and a random UUID): one per
    answer, made when the answer and its outbox rows are recorded, the same for every
    destination and every retry of that report."""
    return f"2.25.{uuid.uuid4().int}"


#: The device that makes every report (a fixed UID, so the observer is one device).
DEVICE_UID = derived_uid("device observer")


def view_code(label: str, header_view: str | None, projection: str | None = None) -> CodedConcept:
    """The CID 4010 code for the model's answer: for a frontal, the ``projection`` the
    model states, else the header's PA or AP; for a lateral, left or right as the header
    says."""
    view = (header_view or "").strip().upper()
    if label == "frontal":
        said = projection or view_to_projection(view)
        return {"PA": PA, "AP": AP}.get(said or "", FRONTAL)
    if label == "lateral":
        return {"LL": LEFT_LATERAL, "RL": RIGHT_LATERAL}.get(view, LATERAL)
    raise ValueError(f"unknown label {label!r}")


def sr_series_uid(study_instance_uid: str) -> str:
    """cxr-orient's SR series in a study: one per study, the same on every machine."""
    return derived_uid("SR series", study_instance_uid)


def _yes_no(value: bool) -> CodedConcept:
    return CodedConcept.from_code(codes.SCT.Yes if value else codes.SCT.No)


def _evaluations(answer: Answer, header_view: str | None) -> list[hd.sr.QualitativeEvaluation]:
    items = [
        hd.sr.QualitativeEvaluation(
            IMAGE_VIEW, view_code(answer.label, header_view, answer.projection)
        ),
        hd.sr.QualitativeEvaluation(NEEDS_REVIEW, _yes_no(answer.needs_review)),
    ]
    for reason in answer.review_reasons:
        value = REASONS.get(reason) or CodedConcept(reason[:16], LOCAL_SCHEME, reason)
        items.append(hd.sr.QualitativeEvaluation(REVIEW_REASON, value))
    if answer.header_agrees is not None:
        items.append(
            hd.sr.QualitativeEvaluation(HEADER_DISAGREES, _yes_no(not answer.header_agrees))
        )
    if answer.projection_agrees is not None:
        items.append(
            hd.sr.QualitativeEvaluation(PROJECTION_DISAGREES, _yes_no(not answer.projection_agrees))
        )
    if answer.mirrored is not None:
        items.append(hd.sr.QualitativeEvaluation(MIRRORED, _yes_no(answer.mirrored)))
    return items


def _measurements(
    answer: Answer, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    items = [
        hd.sr.Measurement(CERTAINTY, round(answer.confidence, 6), RATIO, algorithm_id=algorithm)
    ]
    if answer.rotation is not None:
        items.append(
            hd.sr.Measurement(
                ROTATION_ANGLE, float(answer.rotation), DEGREE, algorithm_id=algorithm
            )
        )
    if answer.unusual_score is not None:
        items.append(
            hd.sr.Measurement(
                UNUSUAL_SCORE, round(answer.unusual_score, 6), NO_UNITS, algorithm_id=algorithm
            )
        )
    if answer.p_ap is not None and answer.label == "frontal":
        items.append(hd.sr.Measurement(P_AP, round(answer.p_ap, 6), RATIO, algorithm_id=algorithm))
    return items


def build_sr(
    source: Dataset,
    answer: Answer,
    *,
    model_name: str,
    model_architecture: str,
    answered_at: datetime,
    sop_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """The Comprehensive SR reporting ``answer`` on ``source`` (the answered instance's
    header, pixels not needed), made by the model version ``model_name`` (of
    ``model_architecture``) at ``answered_at``."""
    source = with_type2_attributes(source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name, version=model_architecture, manufacturer=MANUFACTURER
    )
    observer = hd.sr.ObserverContext(
        observer_type=CodedConcept.from_code(codes.cid270.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=model_name[:64],
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", sop_instance_uid), identifier="view classification"
        ),
        algorithm_id=algorithm,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            )
        ],
        measurements=_measurements(answer, algorithm),
        qualitative_evaluations=_evaluations(answer, source.get("ViewPosition")),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=sr_series_uid(source.StudyInstanceUID),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    _stamp(sr, answered_at)
    return sr


#: Type 2 attributes of the patient and general study modules: the SR copies them from
#: the source, and must carry them (empty when the source has none).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def with_type2_attributes(source: Dataset) -> Dataset:
    """A copy of ``source`` (the caller's is left alone) with every attribute of
    :data:`_TYPE2` present, empty where the source lacks it."""
    header = Dataset()
    header.update(source)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _stamp(sr: Dataset, when: datetime) -> None:
    """Fixed content time (the answer's), the software, and the local coding scheme."""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    sr.ContentDate, sr.ContentTime = date, time
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.SoftwareVersions = __version__
    sr.ManufacturerModelName = MANUFACTURER
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "cxr-orient local codes"
    scheme.CodingSchemeResponsibleOrganization = "cxr-orient"
    sr.CodingSchemeIdentificationSequence = [scheme]
