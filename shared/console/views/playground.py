"""The console's Playground page."""

from __future__ import annotations

import streamlit as st


def render() -> None:
    st.title("Playground")
    st.info("Not built yet.")
