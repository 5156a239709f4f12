"""Draws docs/architecture.svg, the README's picture of the two paths: ``python docs/architecture.py``.

Pure Python, no graphviz: boxes at fixed places, arrows between them. tests/test_docs.py checks that the committed
SVG is what this file draws, so change the picture here and run it again.
"""
from __future__ import annotations

from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parent / "architecture.svg"
W, H = 1240, 470
BOX_W, BOX_H = 180, 62

# name -> (x, y, title, module, fill)
BOXES = {
    "client": (20, 60, "HTTP / ws client", "", "#f4f4f4"),
    "web": (275, 60, "web: translate", "gateway/web/ (edge, requests)", "#dceefb"),
    "calls": (530, 60, "core: the call", "gateway/core/calls.py", "#e3f6e3"),
    "request_topic": (785, 60, "request topic", "<service>.requests", "#fff4d6"),
    "service": (1040, 60, "service", "any language / SDK", "#f4f4f4"),
    "reply_topic": (1040, 250, "reply topic", "shared, partitioned", "#fff4d6"),
    "reader": (785, 250, "kafka: reply reader", "gateway/kafka/replies.py", "#fde2e2"),
    "pending": (530, 250, "core: pending table", "gateway/core/pending.py", "#e3f6e3"),
    "waiter": (275, 250, "waiter wakes", "OneShot / Callback", "#dceefb"),
    "variants": (530, 380, "variants: tails", "gateway/variants/", "#efe3f8"),
}

# (from, to, label, path): "request" arrows are drawn solid blue, "reply" dashed red, "other" grey
ARROWS = [
    ("client", "web", "request", "request"),
    ("web", "calls", "validated", "request"),
    ("calls", "request_topic", "produce", "request"),
    ("request_topic", "service", "consume", "request"),
    ("service", "reply_topic", "reply", "reply"),
    ("reply_topic", "reader", "fetch", "reply"),
    ("reader", "pending", "resolve", "reply"),
    ("pending", "waiter", "deliver", "reply"),
    ("waiter", "client", "response", "reply"),
    ("calls", "pending", "register / remove", "other"),
]
COLORS = {"request": "#1f5fa8", "reply": "#b3261e", "other": "#777777"}


def _center(name: str) -> tuple[float, float]:
    x, y, *_ = BOXES[name]
    return x + BOX_W / 2, y + BOX_H / 2


def _edge_point(name: str, towards: tuple[float, float]) -> tuple[float, float]:
    """Where the line from *name*'s center towards a point leaves its box."""
    cx, cy = _center(name)
    dx, dy = towards[0] - cx, towards[1] - cy
    if dx == 0 and dy == 0:
        return cx, cy
    sx = (BOX_W / 2) / abs(dx) if dx else float("inf")
    sy = (BOX_H / 2) / abs(dy) if dy else float("inf")
    s = min(sx, sy)
    return round(cx + dx * s, 1), round(cy + dy * s, 1)


def render() -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="Helvetica, Arial, sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>',
           "<defs>"]
    for kind, color in COLORS.items():
        out.append(f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
                   f'markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{color}"/>'
                   "</marker>")
    out.append("</defs>")
    out.append('<text x="20" y="30" font-size="16" font-weight="bold" fill="#1f5fa8">request path: web → core → '
               'kafka</text>')
    out.append('<text x="20" y="345" font-size="16" font-weight="bold" fill="#b3261e">reply path: kafka → pending → '
               'waiter</text>')
    for name, (x, y, title, module, fill) in BOXES.items():
        out.append(f'<g id="{name}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{x + BOX_W / 2}" y="{y + 26}" font-size="12" font-weight="bold" '
                   f'text-anchor="middle">{escape(title)}</text>')
        if module:
            out.append(f'<text x="{x + BOX_W / 2}" y="{y + 45}" font-size="10" text-anchor="middle" '
                       f'fill="#444">{escape(module)}</text>')
        out.append("</g>")
    for src, dst, label, kind in ARROWS:
        x1, y1 = _edge_point(src, _center(dst))
        x2, y2 = _edge_point(dst, _center(src))
        dash = ' stroke-dasharray="6 4"' if kind == "reply" else ""
        out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{COLORS[kind]}" stroke-width="2"'
                   f'{dash} marker-end="url(#arrow-{kind})"/>')
        lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 - (9 if y1 == y2 else 0)
        anchor = "middle" if y1 == y2 else "start"
        lx += 0 if y1 == y2 else 6
        out.append(f'<text x="{round(lx, 1)}" y="{round(ly, 1)}" font-size="11" text-anchor="{anchor}" '
                   f'fill="{COLORS[kind]}">{escape(label)}</text>')
    x, y, *_ = BOXES["variants"]
    out.append(f'<text x="{x + BOX_W + 12}" y="{y + 24}" font-size="11" fill="#555">results and events topics, '
               'read by every worker:</text>')
    out.append(f'<text x="{x + BOX_W + 12}" y="{y + 40}" font-size="11" fill="#555">async polls and answer-on-state '
               'wait here</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
