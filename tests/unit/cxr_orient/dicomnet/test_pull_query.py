"""Which studies a date-bounded pull wants (cxr_orient.dicomnet.pull.PullQuery): a study
with no usable StudyDate is in every window unless undated studies are skipped."""

from __future__ import annotations

from datetime import date

import pytest

from cxr_orient.dicomnet.pull import PullQuery

SINCE, UNTIL = date(2026, 11, 1), date(2026, 11, 30)


@pytest.mark.parametrize(
    ("study_date", "undated", "wanted"),
    [
        ("20261115", True, True),
        ("20261031", True, False),
        ("20261201", True, False),
        ("20261101", False, True),
        (None, True, True),
        ("", True, True),
        ("  ", True, True),
        ("2026-11-15", True, True),  # not a DA value: no date to rule it out
        (None, False, False),
        ("", False, False),
    ],
    ids=[
        "inside",
        "before",
        "after",
        "first-day-skip-undated",
        "absent",
        "empty",
        "blank",
        "not-a-date",
        "absent-skipped",
        "empty-skipped",
    ],
)
def test_wants_study(study_date: str | None, undated: bool, wanted: bool) -> None:
    assert PullQuery(since=SINCE, until=UNTIL, undated=undated).wants_study(study_date) is wanted


def test_the_pacs_matches_dates_only_when_undated_studies_are_skipped() -> None:
    assert PullQuery(since=SINCE, until=UNTIL).study_filters() == {}
    assert PullQuery(since=SINCE, until=UNTIL, undated=False).study_filters() == {
        "StudyDate": "20261101-20261130"
    }
    assert PullQuery(since=SINCE, undated=False).study_filters() == {"StudyDate": "20261101-"}
    assert PullQuery().study_filters() == {}
    assert PullQuery().wants_study(None) and PullQuery(undated=False).wants_study(None)
