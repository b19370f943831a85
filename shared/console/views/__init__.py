"""One module per console page, each with a `render()` that Streamlit runs as the page."""
