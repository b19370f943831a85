"""What every page's tables share: cells shown as they are, and one mark for an empty cell."""

from __future__ import annotations

import re

# An empty cell: st.table renders cells as Markdown, where a lone "-" would become a list bullet.
NONE = "—"
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_{}\[\]()<>#+\-.!|~$:]")  # $ is maths, :x: an emoji


def markdown_literal(text: object) -> str:
    """A table cell shown as it is: st.table renders cells as Markdown (Streamlit's, with maths
    and emoji), where a lone "-" would be a bullet and a stored value emphasis or a link."""
    return _MARKDOWN_SPECIAL.sub(r"\\\g<0>", str(text))
