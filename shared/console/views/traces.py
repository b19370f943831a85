"""The console's Traces page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Traces")
    st.info("Not built yet.")
