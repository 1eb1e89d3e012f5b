"""One self-contained HTML report from the blocks of :func:`lsdc.tables.document`.

Everything is inside the one file: CSS inline, figures as base64 PNG data URIs, no script or font
or style from elsewhere, so it opens offline in any browser. A tiny inline script marks each
``<img>`` with ``data-ok="1"`` once it has loaded (``"0"`` if it failed), which the tests read
back from a headless browser's DOM.
"""
from __future__ import annotations

import base64
import html
import re

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:0 auto;
     padding:1rem 2rem;color:#1a1a1a;line-height:1.45}
h1{border-bottom:2px solid #0072B2;padding-bottom:.3rem}
h2{margin-top:2.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.85rem;display:block;overflow-x:auto}
th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#eef3f8}
tr:nth-child(even) td{background:#fafafa}
code{background:#f2f2f2;padding:0 .2rem;border-radius:3px}
p.note{font-size:.85rem;color:#444;font-style:italic;margin:.2rem 0}
figure{margin:1rem 0}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85rem;color:#333}
nav.toc{background:#f7f7f7;border:1px solid #ddd;padding:.5rem 1rem;font-size:.9rem}
nav.toc ol{margin:.3rem 0;padding-left:1.4rem}
"""

SCRIPT = """
(function(){
  function mark(img){ img.setAttribute("data-ok", img.complete && img.naturalWidth > 0 ? "1" : "0"); }
  var imgs = document.getElementsByTagName("img");
  for (var i = 0; i < imgs.length; i++) {
    var img = imgs[i];
    if (img.complete) { mark(img); }
    else {
      img.addEventListener("load", function(e){ mark(e.target); });
      img.addEventListener("error", function(e){ e.target.setAttribute("data-ok", "0"); });
    }
  }
})();
"""


def inline(text: str) -> str:
    """Escape, then the little markdown the blocks use: `code`, **bold**, *italic*."""
    parts = re.split(r"(`[^`]*`)", str(text))
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        e = html.escape(part)
        e = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e)
        e = re.sub(r"(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"<em>\1</em>", e)
        out.append(e)
    return "".join(out)


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def to_html(blocks: list[tuple], title: str) -> str:
    """The report: a table of contents of the h2 sections, then every block."""
    body, toc = [], []
    n_sec = 0
    in_list = False
    for b in blocks:
        kind = b[0]
        if in_list and kind != "li":
            body.append("</ul>")
            in_list = False
        if kind == "h1":
            body.append(f"<h1>{inline(b[1])}</h1>")
            body.append("<!--toc-->")
        elif kind == "h2":
            n_sec += 1
            anchor = f"s{n_sec}"
            toc.append(f'<li><a href="#{anchor}">{inline(b[1])}</a></li>')
            body.append(f'<h2 id="{anchor}">{inline(b[1])}</h2>')
        elif kind == "h3":
            body.append(f"<h3>{inline(b[1])}</h3>")
        elif kind == "p":
            body.append(f"<p>{inline(b[1])}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{inline(b[1])}</p>')
        elif kind == "li":
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(b[1])}</li>")
        elif kind == "table":
            body.append(_table(b[1], b[2]))
        elif kind == "img":
            body.append(f'<figure><img src="{_img(b[1])}" alt="{html.escape(b[2], quote=True)}">'
                        f"<figcaption>{inline(b[3])}</figcaption></figure>")
    if in_list:
        body.append("</ul>")
    nav = '<nav class="toc"><strong>Contents</strong><ol>' + "".join(toc) + "</ol></nav>"
    text = "\n".join(body)
    text = text.replace("<!--toc-->", nav, 1) if "<!--toc-->" in text else nav + text
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{text}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


__all__ = ["inline", "to_html"]
