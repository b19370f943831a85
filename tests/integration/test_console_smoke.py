"""Every console page opens in a real Chromium against the real stack and shows its title."""

from __future__ import annotations

import pytest

from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAGES = ["loop", "models", "lineage", "datasets", "drift", "traces", "playground"]


@pytest.mark.parametrize("path", PAGES)
def test_page_opens(console: Console, page: object, path: str) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url(path))
    expect(page.get_by_role("heading", name=path.capitalize(), exact=True)).to_be_visible()
    # A page that raised shows Streamlit's exception box instead of its content.
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
