"""The README's configuration table, generated from the schema (``gateway config-docs``; a test compares)."""
from __future__ import annotations

from .schema import (
    AnswerOnSchema,
    AsyncSchema,
    HttpSchema,
    KafkaSchema,
    KeySchema,
    LimitsSchema,
    ReplySchema,
    ServiceSchema,
    StateSchema,
    WebsocketSchema,
)


def schema_docs() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every setting: the README's configuration table is tested against it."""
    rows = []
    for section, schema in (("kafka", KafkaSchema), ("reply", ReplySchema), ("limits", LimitsSchema),
                            ("http", HttpSchema), ("async", AsyncSchema), ("websocket", WebsocketSchema),
                            ("state", StateSchema), ("services.<name>", ServiceSchema),
                            ("services.<name>.key", KeySchema), ("services.<name>.answer_on", AnswerOnSchema)):
        for name, field in schema().fields.items():
            default = "required" if field.required else field.load_default
            rows.append((f"{section}.{name}", type(field).__name__, repr(default() if callable(default) else default),
                         field.metadata.get("doc", "")))
    return rows


def config_table() -> str:
    """The README's configuration table, generated from the schema (``gateway config-docs``)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in schema_docs():
        default = default.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {'`' + default + '`' if default else ''} | {doc} |")
    return "\n".join(lines)
