from pathlib import Path

import pytest

from gatekeeper.errors import SettingsError
from gatekeeper.settings import Settings, resolve


def test_defaults() -> None:
    s = resolve(None, {}, {})
    assert s == Settings()
    assert s.listen == "0.0.0.0:8080"
    assert s.admin_listen == "127.0.0.1:9108"


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "gk.yaml"
    config.write_text("upstream: http://file:1\nlisten: 127.0.0.1:1000\nmax_body_size: 10\n"
                      "trusted_proxies: [10.0.0.0/8]\n")
    env = {"GATEKEEPER_LISTEN": "127.0.0.1:2000", "GATEKEEPER_MAX_BODY_SIZE": "20",
           "GATEKEEPER_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16", "OTHER": "x"}
    s = resolve(str(config), {"listen": "127.0.0.1:3000", "policy": None}, env)
    assert s.upstream == "http://file:1"
    assert s.max_body_size == 20
    assert s.listen == "127.0.0.1:3000"
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")


@pytest.mark.parametrize(
    ("values", "message"),
    [({"colour": "red"}, "unknown setting 'colour'"),
     ({"max_body_size": "lots"}, "max_body_size: cannot use 'lots'"),
     ({"trusted_proxies": ["10.0.0.0/33"]}, "not an IP network"),
     ({"listen": "8080"}, "must be HOST:PORT"),
     ({"upstream": "ftp://x"}, "must start with http:// or https://"),
     ({"path_case": "lower"}, "path_case: 'lower' is not one of sensitive, insensitive")],
)
def test_bad_settings_are_clear_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings().with_overrides(values, "test")


def test_settings_file_must_be_a_mapping(tmp_path: Path) -> None:
    config = tmp_path / "gk.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        resolve(str(config), {}, {})


def test_path_case_is_sensitive_unless_set() -> None:
    assert Settings().path_case == "sensitive"
    env = {"GATEKEEPER_PATH_CASE": "insensitive"}
    assert resolve(None, {}, env).path_case == "insensitive"


def test_every_setting_is_in_the_settings_reference_and_the_reference_names_no_other() -> None:
    import dataclasses
    import re

    table = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name for cell in rows for name in re.findall(r"`([a-z_]+)`", cell)}
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - documented == set(), "settings missing from docs/settings.md"
    assert documented - fields == set(), "docs/settings.md names settings that do not exist"
