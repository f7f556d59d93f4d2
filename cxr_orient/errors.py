"""Errors with stable codes, recorded against the image at fault.

Every failure an image can meet derives from :class:`CxrError`; its ``code``
is what lands in ``instances.error_code`` and what auditors group by.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base of every error cxr-orient records or raises on purpose."""

    code = "error"
    #: Whether trying the same image again could succeed (e.g. a database outage).
    transient = False


class InputError(CxrError):
    """The image itself is unusable; retrying will not help."""

    code = "bad_input"


class PathNotAllowedError(InputError):
    code = "path_not_allowed"


class FileMissingError(InputError):
    code = "file_missing"


class FileChangedError(InputError):
    code = "file_changed"


class NotDicomError(InputError):
    code = "not_dicom"


class TruncatedFileError(InputError):
    code = "truncated"


class FilePurgedError(InputError):
    """The instance's received file was deleted by the spool purge (CXR_SPOOL_KEEP_DAYS):
    its answers stay, its pixels are gone; have it sent again to classify it again."""

    code = "file_purged"


class MissingAttributeError(InputError):
    code = "missing_attribute"


class InvalidUidError(InputError):
    """A Study, Series or SOP Instance UID that is not a DICOM UID (PS3.5 9.1): the
    instance is refused whatever the way in (``cxr_orient.dicomnet.policy.check_uids``)."""

    code = "invalid_uid"


class NoPixelDataError(InputError):
    code = "no_pixel_data"


class UnsupportedTransferSyntaxError(InputError):
    code = "unsupported_transfer_syntax"


class UnsupportedImageError(InputError):
    """Not a single-frame greyscale radiograph (colour, multi-frame, 1-bit...)."""

    code = "unsupported_image"


class InvalidAttributeError(InputError):
    """An attribute has an absurd or inconsistent value (Rows, BitsStored...)."""

    code = "invalid_attribute"


class ImageTooLargeError(InputError):
    code = "image_too_large"


class DecodeError(InputError):
    code = "decode_failed"


class UnusualImageError(InputError):
    """The model finds the image unlike any chest radiograph it was trained on and
    ``CXR_UNUSUAL_IMAGE_ACTION=refuse``."""

    code = "unusual_image"


class ModelError(CxrError):
    """A checkpoint is missing, altered, or not in the registry."""

    code = "model_error"


class ModelIntegrityError(ModelError):
    code = "model_integrity"


class LabelImportError(CxrError):
    code = "label_import"


class InterruptedProcessingError(CxrError):
    """Processing was interrupted too many times (worker killed, poison input)."""

    code = "too_many_attempts"


class TaskTimeoutError(CxrError):
    """The batch holding the image ran past CXR_TASK_SOFT_TIME_LIMIT_S (a read that hung,
    a stalled NFS mount): the image is sent again, and failed with this code once it used
    CXR_MAX_ATTEMPTS."""

    code = "timeout"
    transient = True


class NotRegularFileError(InputError):
    """The path names a FIFO, a device or a socket: opening or reading it could block for
    ever, so it is refused before any byte is read."""

    code = "not_regular_file"


class ReclassifyError(CxrError):
    """A reclassify run that cannot start or go on (unknown run, no such model...)."""

    code = "reclassify"


class DeliveryError(CxrError):
    """A Structured Report could not be delivered to a result destination."""

    code = "delivery"


class DestinationUnavailableError(DeliveryError):
    """The destination is down, busy or did not answer: the same report is sent again
    later (the outbox backs off)."""

    code = "destination_unavailable"
    transient = True


class DeliveryRefusedError(DeliveryError):
    """The destination refused the report with a status that sending the same object
    again cannot change (a bad request, an unsupported SOP class): failed for good until
    an operator retries it (``cxr-orient outbox retry``)."""

    code = "delivery_refused"


class CorrectionError(CxrError):
    """A corrected replacement cannot be built from an original (its pixels do not
    decode, an unknown view; cxr_orient.dicomnet.corrections)."""

    code = "correction"
