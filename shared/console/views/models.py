"""The console's Models page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Models")
    st.info("Not built yet.")
