"""The script Streamlit runs (`cascade ui`): the sign-in box and the pages, one module each."""

from __future__ import annotations

import streamlit as st

from cascade.console.connection import TOKEN_KEY, stack_view
from cascade.console.views import datasets, drift, lineage, loop, models, playground, traces

st.set_page_config(page_title="Cascade", page_icon=":material/water:", layout="wide")


def sign_in() -> None:
    """A token box in the sidebar: with auth on, every read and write is made as its principal."""
    view = stack_view()
    with st.sidebar:
        st.caption("Cascade console")
        token = st.text_input(
            "Token",
            type="password",
            key="token_input",
            help="Your Cascade token, as `cascade auth add NAME` printed it. The stack requires one."
            if view.auth_required
            else "This stack does not require a token; one still names you in the registry's history.",
        )
        st.session_state[TOKEN_KEY] = token.strip()
        if view.auth_required and not token:
            st.warning("Sign in with a token: this stack refuses calls without one.")


sign_in()
navigation = st.navigation(
    [
        # The default page is served at "/" (Streamlit ignores a default page's url_path).
        st.Page(loop.render, title="Loop", icon=":material/sync:", default=True),
        st.Page(models.render, title="Models", icon=":material/model_training:", url_path="models"),
        st.Page(lineage.render, title="Lineage", icon=":material/account_tree:", url_path="lineage"),
        st.Page(datasets.render, title="Datasets", icon=":material/table:", url_path="datasets"),
        st.Page(drift.render, title="Drift", icon=":material/show_chart:", url_path="drift"),
        st.Page(traces.render, title="Traces", icon=":material/timeline:", url_path="traces"),
        st.Page(playground.render, title="Playground", icon=":material/science:", url_path="playground"),
    ]
)
navigation.run()
