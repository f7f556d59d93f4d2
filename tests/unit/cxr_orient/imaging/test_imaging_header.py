"""view_to_label and the decoder table of cxr_orient.imaging."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from cxr_orient.imaging import (
    FRONTAL_VIEWS,
    LATERAL_VIEWS,
    SUPPORTED_TRANSFER_SYNTAXES,
    view_to_label,
)
from cxr_orient.imaging.decoders import DECODERS, decoder_for


@pytest.mark.parametrize(
    ("view", "label"),
    [
        ("PA", "frontal"),
        ("AP", "frontal"),
        ("ap", "frontal"),
        (" ap supine ", "frontal"),
        ("LL", "lateral"),
        ("RL", "lateral"),
        ("LATERAL", "lateral"),
        (" lateral\n", "lateral"),
        ("RLD", None),
        ("LLD", None),
        ("LLO", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
    ids=lambda v: repr(v),
)
def test_view_to_label(view: str | None, label: str | None) -> None:
    assert view_to_label(view) == label


def test_view_sets_are_disjoint_and_upper_case() -> None:
    assert not FRONTAL_VIEWS & LATERAL_VIEWS
    assert all(v == v.upper().strip() for v in FRONTAL_VIEWS | LATERAL_VIEWS)


def test_every_supported_syntax_has_one_decoder() -> None:
    assert len(SUPPORTED_TRANSFER_SYNTAXES) == 16  # 13 + HTJ2K lossless, RPCL, lossy
    for syntax in SUPPORTED_TRANSFER_SYNTAXES:
        decoder = decoder_for(syntax)
        assert decoder is not None and syntax in decoder.transfer_syntaxes
        assert decoder.is_available(), decoder.name
    # One decoder a syntax, except JPEG lossless: libjpeg-turbo first, pylibjpeg behind it.
    shared = {
        s
        for s in SUPPORTED_TRANSFER_SYNTAXES
        if sum(s in d.transfer_syntaxes for d in DECODERS) > 1
    }
    assert shared == {JPEGLossless, JPEGLosslessSV1}
    assert next(d.name for d in DECODERS if JPEGLosslessSV1 in d.transfer_syntaxes) == (
        "libjpeg-turbo"
    )
    names = {
        s: d.name
        for s in (JPEG2000Lossless, JPEGBaseline8Bit, RLELossless)
        if (d := decoder_for(s)) is not None
    }
    assert names == {JPEG2000Lossless: "jpeg2000", JPEGBaseline8Bit: "jpeg", RLELossless: "rle"}
    assert decoder_for(UID("1.2.840.10008.1.2.4.100")) is None  # MPEG-2
