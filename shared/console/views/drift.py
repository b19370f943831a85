"""The console's Drift page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Drift")
    st.info("Not built yet.")
