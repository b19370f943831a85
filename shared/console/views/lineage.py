"""The console's Lineage page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Lineage")
    st.info("Not built yet.")
