"""The console's Datasets page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Datasets")
    st.info("Not built yet.")
