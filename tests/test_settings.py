"""Settings read from the environment: the embedded Redis's memory cap, job retention, the
dashboard's port, the Redis URL, key prefix and storage; and that jobs/settings.py is the one
place that reads and documents them.
(GENFLEET_MAX_CLUSTER is tested with placement, in test_placement.py; GENFLEET_MAX_* in
test_security.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jobs.limits import LimitError
from jobs.run_storage import RunStorage
from jobs.settings import ENVIRONMENT, Settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "cluster", "dashboard", "trainers", "genfleet")

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
    monkeypatch.delenv("GENFLEET_REDIS_URL", raising=False)
    monkeypatch.delenv("GENFLEET_PREFIX", raising=False)


def settings_error(monkeypatch: pytest.MonkeyPatch, variable: str, text: str) -> str:
    """The one error Settings.from_env raises with `variable` set to `text`."""
    monkeypatch.setenv(variable, text)
    with pytest.raises(LimitError) as caught:
        Settings.from_env()
    return str(caught.value)


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
    error = settings_error(monkeypatch, "GENFLEET_REDIS_MAXMEMORY", text)
    assert error == MAXMEMORY_ERROR.format(text)


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
    error = settings_error(monkeypatch, "GENFLEET_RETENTION_DAYS", text)
    assert error == RETENTION_ERROR.format(text)


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
    assert settings_error(monkeypatch, "GENFLEET_DASHBOARD_PORT", text) == (
        f"GENFLEET_DASHBOARD_PORT: must be a port from 1 to 65535, got {text!r}"
    )


SCHEME_ERROR = "GENFLEET_REDIS_URL: must start with one of redis://, rediss://, unix://"
PORT_ERROR = "GENFLEET_REDIS_URL: its port must be a number from 0 to 65535"


@pytest.mark.parametrize(
    ("url", "expected"),
    [("http://127.0.0.1:6379", SCHEME_ERROR), ("127.0.0.1:6379", SCHEME_ERROR),
     ("redis://:s3cret@127.0.0.1:63o9/0", PORT_ERROR), ("rediss://:s3cret@h:70000", PORT_ERROR)],
)  # fmt: skip
def test_a_bad_redis_url_is_one_error_naming_the_variable_but_not_the_password(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_error(monkeypatch, "GENFLEET_REDIS_URL", url) == expected


@pytest.mark.parametrize("prefix", ["", "a b", "genfleet:queue"])
def test_a_bad_prefix_is_one_error_naming_the_variable(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_error(monkeypatch, "GENFLEET_PREFIX", prefix) == (
        f"GENFLEET_PREFIX: must match ^[A-Za-z0-9_.-]{{1,64}}$, got {prefix!r}"
    )


def test_a_storage_no_file_system_opens_is_one_error_naming_the_variable() -> None:
    with pytest.raises(LimitError) as caught:
        RunStorage("nope://bucket/runs")
    assert str(caught.value).startswith(
        "GENFLEET_STORAGE: must be a folder or a URI pyarrow opens;"
    )
    assert "\n" not in str(caught.value)


def python_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def environment_reads(path: Path) -> list[str]:
    """Where `path` reads os.environ or os.getenv, but for `os.environ.setdefault(...)`, which
    gives a library a default that the operator's own value overrides."""
    tree = ast.parse(path.read_text(), filename=str(path))
    defaults = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "setdefault"
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node not in defaults
    ]


def test_only_jobs_settings_reads_the_environment() -> None:
    reads = [read for path in python_files() for read in environment_reads(path)]
    # The dashboard's launcher hands its environment on to the Streamlit process it starts,
    # where jobs/settings.py reads it.
    assert [read for read in reads if not read.startswith("jobs/settings.py:")] == [
        read for read in reads if read.startswith("dashboard/launch.py:")
    ]


def test_every_genfleet_variable_the_code_names_is_documented_in_settings_and_the_readme() -> None:
    # A name, not a family: `GENFLEET_MAX_*` in a comment is no variable.
    name = re.compile(r"GENFLEET_[A-Z_]*[A-Z](?![A-Z_*])")
    named = {found for path in python_files() for found in name.findall(path.read_text())}
    assert named - set(ENVIRONMENT) == set()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n\n", 2)[1]
    documented = {
        f"GENFLEET{variable.removeprefix('GENFLEET')}"  # the table shortens a family: `_MAX_EPOCHS`
        for row in table.splitlines()[2:]
        for variable in re.findall(r"`((?:GENFLEET)?_[A-Z_]+)`", row.split("|")[1])
    }
    assert documented == set(ENVIRONMENT)


@pytest.mark.parametrize("address", ["ray//head", "head:port", "head:0", ":10001", "a b:1"])
def test_a_bad_ray_address_is_one_error_naming_the_variable(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_error(monkeypatch, "GENFLEET_RAY_ADDRESS", address) == (
        f"GENFLEET_RAY_ADDRESS: expected host:port, ray://host:port, auto or local, got {address!r}"
    )


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379", "ray://head:10001"])
def test_a_ray_address_ray_init_takes_is_kept(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_RAY_ADDRESS", address)
    assert Settings.from_env().ray_address == address


def test_a_bad_dashboard_address_is_one_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings_error(monkeypatch, "GENFLEET_DASHBOARD_ADDRESS", "0.0.0.0 --evil") == (
        "GENFLEET_DASHBOARD_ADDRESS: expected a host name or an IP address, got '0.0.0.0 --evil'"
    )


def test_a_redis_url_whose_database_is_not_a_number_is_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings_error(monkeypatch, "GENFLEET_REDIS_URL", "redis://:secret@host:6379/abc") == (
        "GENFLEET_REDIS_URL: its path must be a database number such as /0"
    )


@pytest.mark.parametrize(
    ("variable", "text", "error"),
    [
        ("GENFLEET_WARM_RUNNERS", "two", "must be a whole number from 0 to 64, got 'two'"),
        ("GENFLEET_WARM_RUNNERS", "65", "must be a whole number from 0 to 64, got '65'"),
        ("GENFLEET_DIRECT_RUNS", "yes", "must be 1 or 0, got 'yes'"),
    ],
)
def test_a_bad_warm_start_setting_is_one_error_naming_the_variable(
    variable: str, text: str, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_error(monkeypatch, variable, text) == f"{variable}: {error}"


def test_direct_runs_are_on_for_genfleet_up_and_off_elsewhere_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [Settings.from_env(direct_runs=up).direct_runs for up in (True, False)] == [True, False]
    assert Settings.from_env().warm_runners == 1
    monkeypatch.setenv("GENFLEET_DIRECT_RUNS", "0")
    assert Settings.from_env(direct_runs=True).direct_runs is False
    monkeypatch.setenv("GENFLEET_DIRECT_RUNS", "1")
    assert Settings.from_env().direct_runs is True
