"""The console's Loop page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Loop")
    st.info("Not built yet.")
