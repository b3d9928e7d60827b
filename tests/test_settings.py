"""Settings read from the environment: the embedded Redis's memory cap, job retention and the
dashboard's port.
(GENFLEET_MAX_CLUSTER is tested with placement, in test_placement.py.)"""

from __future__ import annotations

import pytest

from jobs.limits import LimitError
from jobs.settings import Settings

MAXMEMORY_ERROR = (
    "GENFLEET_REDIS_MAXMEMORY: must be a size > 0 such as 512mb or 1gb "
    "(units b, k, kb, m, mb, g, gb), got {!r}"
)
RETENTION_ERROR = "GENFLEET_RETENTION_DAYS: must be a number of days > 0, got {!r}"


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENFLEET_REDIS_MAXMEMORY", raising=False)
    monkeypatch.delenv("GENFLEET_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("GENFLEET_DASHBOARD_PORT", raising=False)


def test_unset_redis_gets_one_gigabyte_and_finished_jobs_are_kept_forever() -> None:
    settings = Settings.from_env()
    assert (settings.redis_maxmemory, settings.retention_days) == ("1gb", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64mb", "64mb"), (" 512MB ", "512mb"), ("2G", "2g"), ("1048576", "1048576"), ("08kb", "8kb"),
     ("1b", "1b"), ("", "1gb")],
)  # fmt: skip
def test_redis_maxmemory_is_kept_in_the_notation_redis_accepts(
    text: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_REDIS_MAXMEMORY", text)
    assert Settings.from_env().redis_maxmemory == expected


@pytest.mark.parametrize("text", ["0", "0gb", "-1gb", "1.5gb", "1tb", "gb", "lots", "1 gb"])
def test_a_bad_redis_maxmemory_is_one_error_naming_the_variable(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_REDIS_MAXMEMORY", text)
    with pytest.raises(LimitError) as caught:
        Settings.from_env()
    assert str(caught.value) == MAXMEMORY_ERROR.format(text)


@pytest.mark.parametrize(("text", "days"), [("30", 30.0), ("0.5", 0.5), ("", None)])
def test_retention_days_is_a_number_of_days(
    text: str, days: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_RETENTION_DAYS", text)
    assert Settings.from_env().retention_days == days


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "a week"])
def test_a_bad_retention_days_is_one_error_naming_the_variable(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_RETENTION_DAYS", text)
    with pytest.raises(LimitError) as caught:
        Settings.from_env()
    assert str(caught.value) == RETENTION_ERROR.format(text)


@pytest.mark.parametrize(
    ("text", "port"), [("", 8501), ("8600", 8600), (" 1 ", 1), ("65535", 65535)]
)
def test_dashboard_port_is_a_port_number(
    text: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_DASHBOARD_PORT", text)
    assert Settings.from_env().dashboard_port == port


@pytest.mark.parametrize("text", ["0", "65536", "-1", "http", "85o1", "8501.0"])
def test_a_bad_dashboard_port_is_one_error_naming_the_variable(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_DASHBOARD_PORT", text)
    with pytest.raises(LimitError) as caught:
        Settings.from_env()
    assert str(caught.value) == (
        f"GENFLEET_DASHBOARD_PORT: must be a port from 1 to 65535, got {text!r}"
    )
