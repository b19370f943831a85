"""Every console page, run by Streamlit's AppTest against addresses where nothing listens, shows
its title and says what failed, never a traceback (the browser tests cover a live stack)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

PAGES = ["loop", "models", "lineage", "datasets", "drift", "traces", "playground"]
# The pages that read the services' gRPC APIs first, and so must say that the stack did not answer.
READS_SERVICES = ["loop", "models", "lineage", "datasets", "drift", "playground"]


@pytest.mark.parametrize("page", PAGES)
def test_a_page_says_what_failed_when_the_stack_is_down(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = {name: "127.0.0.1:1" for name in ("ingest", "registry", "trainer", "validator", "monitor")}
    monkeypatch.setenv("CASCADE_CONSOLE_ADDRESSES", json.dumps(nowhere | {"serving": "127.0.0.1:1"}))
    monkeypatch.setenv("CASCADE_CONSOLE_TRACES_DIR", str(tmp_path / "no-traces"))
    st.cache_resource.clear()  # the stack's view and clients of an earlier test
    st.cache_data.clear()
    script = tmp_path / f"{page}.py"
    script.write_text(f"from cascade.console.views import {page}\n\n{page}.render()\n")

    app = AppTest.from_file(str(script), default_timeout=60)
    app.run()

    assert not app.exception, [e.message for e in app.exception]
    assert [title.value for title in app.title] == [page.capitalize()]
    said = " ".join(str(element.value) for element in [*app.error, *app.warning, *app.info])
    if page in READS_SERVICES:
        assert "127.0.0.1:1" in said and "failed to connect" in said
    else:
        assert "No span files" in said


@pytest.mark.parametrize("page", READS_SERVICES)
def test_without_a_token_a_page_of_a_stack_that_requires_one_calls_nothing(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The addresses listen nowhere: had the page called, it would say "failed to connect".
    nowhere = {name: "127.0.0.1:1" for name in ("ingest", "registry", "trainer", "validator", "monitor")}
    monkeypatch.setenv("CASCADE_CONSOLE_ADDRESSES", json.dumps(nowhere | {"serving": "127.0.0.1:1"}))
    monkeypatch.setenv("CASCADE_CONSOLE_AUTH_REQUIRED", "true")
    st.cache_resource.clear()
    st.cache_data.clear()
    script = tmp_path / f"{page}.py"
    script.write_text(f"from cascade.console.views import {page}\n\n{page}.render()\n")

    app = AppTest.from_file(str(script), default_timeout=60)
    app.run()

    assert not app.exception, [e.message for e in app.exception]
    errors = " ".join(str(element.value) for element in app.error)
    assert "sign in with your token" in errors
    assert "127.0.0.1:1" not in errors
