"""The prompt template of generate tasks (data.prompt_template, e.g. "Review: {text}"): which columns it names.

Torch-free, so the config can check a template before any data or model loads.
"""

from __future__ import annotations

import re
import string

from tunebench.errors import UserError


def template_columns(template: str) -> list[str]:
    """The columns a template names, in order; a stray brace or an unnamed field is a UserError."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise UserError(
            f"data.prompt_template {template!r} has a stray brace ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    columns = [re.split(r"[.\[]", field)[0] for field in fields]  # {text[0]} and {text.x} name the column text
    unnamed = [field for field, column in zip(fields, columns, strict=True) if not column or column.isdigit()]
    if unnamed:
        raise UserError(
            f"data.prompt_template {template!r} has a field without a column name ({{{unnamed[0]}}}); "
            f"name the column, as in {{text}}"
        )
    return list(dict.fromkeys(columns))
