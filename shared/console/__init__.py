"""Cascade's web console: a Streamlit app over the services' gRPC APIs, like any other client.

    cascade ui                 # the console of the local stack, on http://127.0.0.1:8501

It reads through `cascade.client` (the SDK's typed clients) and writes only through them, as the
principal signed in with a token when the stack requires one. One module per page in `views/`;
`app.py` is the script Streamlit runs; `connection.py` is the one way a page reaches the stack.
"""
