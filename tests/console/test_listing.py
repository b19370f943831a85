"""A page's cached list of models is read afresh once when it lacks the model the page was asked
for: a model made since the list was cached (a notification's link to it) shows, rather than the
first model under "no model named ...". The browser test that met it: test_console_models.py."""

from __future__ import annotations

from cascade.console.connection import listing_with


class CachedListing:
    """Like a st.cache_data function: answers from its cache until cleared."""

    def __init__(self, source: list[str]) -> None:
        self.source = source
        self.cache: list[str] | None = None
        self.reads = 0

    def __call__(self, token: str) -> list[str]:
        if self.cache is None:
            self.reads += 1
            self.cache = list(self.source)
        return self.cache

    def clear(self) -> None:
        self.cache = None


def test_a_model_made_since_the_list_was_cached_is_read_afresh() -> None:
    models = ["a", "b"]
    cached = CachedListing(models)
    assert listing_with(cached, "", str, "a") == ["a", "b"]
    models.append("new")
    assert listing_with(cached, "", str, "new") == ["a", "b", "new"]
    assert cached.reads == 2


def test_a_listed_or_unasked_model_keeps_the_cache_and_an_unknown_one_costs_one_read() -> None:
    cached = CachedListing(["a", "b"])
    for wanted in ("a", "", "b"):
        listing_with(cached, "", str, wanted)
    assert cached.reads == 1
    assert listing_with(cached, "", str, "never") == ["a", "b"]
    assert cached.reads == 2
