"""Durations and sizes as policies take them (expires_after=, gc(max_age=, max_size=))."""
import datetime as dt

import pytest

from pipelite import PipeliteError
from pipelite._units import age_text, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("1d", 86400), ("36h", 129600), ("90 min", 5400), ("30s", 30), ("2w", 1209600),
    ("1.5h", 5400), (45, 45), (dt.timedelta(hours=2), 7200), ("10", 10),
])
def test_durations(text, seconds):
    assert parse_duration(text, "expires_after") == seconds


@pytest.mark.parametrize("bad", ["", "soon", "1 fortnight", -5, 0, True, "1d2h", None, "nan"])
def test_bad_durations_say_what_to_give(bad):
    with pytest.raises(PipeliteError, match=r"expires_after=.*is not a duration.*'1d'"):
        parse_duration(bad, "expires_after")


@pytest.mark.parametrize("text, size", [
    ("20 GiB", 20 * 2**30), ("500MB", 500 * 10**6), ("2G", 2 * 2**30), (1024, 1024),
    ("1.5 KiB", 1536), ("0", 0), ("7b", 7),
])
def test_sizes(text, size):
    assert parse_size(text, "max_size") == size


@pytest.mark.parametrize("bad", ["big", "-1GB", -1, 1.5, "20 GiBs", False])
def test_bad_sizes_say_what_to_give(bad):
    with pytest.raises(PipeliteError, match=r"max_size=.*is not a size.*'20 GiB'"):
        parse_size(bad, "max_size")


@pytest.mark.parametrize("seconds, text", [
    (3, "3 s"), (600, "10 min"), (26 * 3600, "26 h"), (5 * 86400, "5 d"), (-2, "0 s"),
])
def test_ages(seconds, text):
    assert age_text(seconds) == text
