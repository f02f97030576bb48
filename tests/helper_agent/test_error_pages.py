"""The detailed spawn error page: what it shows of the app's environment (pure logic)."""

from __future__ import annotations

import pytest

from passenger.helper_agent.error_pages import escape, masked, spawn_error_page


@pytest.mark.parametrize("name", ["SECRET_KEY", "my_secret", "API_TOKEN", "DB_PASSWORD",
                                  "PGPASS", "AWS_CREDENTIALS", "Authorization", "api_key",
                                  "PASSPHRASE"])
def test_secret_looking_names_are_masked(name: str) -> None:
    assert masked(name, "hunter2") == "********"


@pytest.mark.parametrize("name", ["PATH", "HOME", "PASSENGER_APP_ENV", "USER", "LANG"])
def test_other_names_are_shown(name: str) -> None:
    assert masked(name, "/usr/bin") == "/usr/bin"


def test_page_masks_values_and_escapes_html() -> None:
    page = spawn_error_page("/srv/app", "boom", ["<script>x</script>"],
                            {"SECRET_KEY": "hunter2", "HOME": "/home/<app>"}, friendly=True)
    assert "hunter2" not in page and "SECRET_KEY" in page and "********" in page
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert "/home/&lt;app&gt;" in page


def test_undisclosed_page_shows_nothing() -> None:
    page = spawn_error_page("/srv/app", "boom", ["traceback"], {"HOME": "/root"},
                            friendly=False)
    assert "boom" not in page and "traceback" not in page and "/root" not in page


def test_escape_is_html_escape() -> None:
    """Our five replacements stand in for html.escape (not imported, for memory)."""
    import html

    tricky = """<a href="x" title='y'>&amp; & é \x00</a>"""
    assert escape(tricky) == html.escape(tricky)
