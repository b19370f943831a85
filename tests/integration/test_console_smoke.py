"""Every console page opens in a real Chromium against the real stack and shows its title."""

from __future__ import annotations

import pytest

from tests.integration.browser import Console

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# (title, path): the Loop page is the console's front page, at "/".
PAGES = [
    ("Loop", ""),
    ("Models", "models"),
    ("Lineage", "lineage"),
    ("Datasets", "datasets"),
    ("Drift", "drift"),
    ("Traces", "traces"),
    ("Playground", "playground"),
]


@pytest.mark.parametrize(("title", "path"), PAGES, ids=[title.lower() for title, _ in PAGES])
def test_page_opens(console: Console, page: object, title: str, path: str) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(console.url(path))
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    # Each page is listed in the sidebar's navigation.
    for other, _path in PAGES:
        expect(page.get_by_test_id("stSidebarNav").get_by_text(other, exact=True)).to_be_visible()
    # A page that raised shows Streamlit's exception box instead of its content; an unknown path
    # shows "Page not found".
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
    expect(page.get_by_text("Page not found")).to_have_count(0)
