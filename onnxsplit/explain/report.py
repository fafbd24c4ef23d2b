"""`explain --report`: one static HTML page, a gallery of inputs x methods.

Every picture is embedded as a data URI and the page declares a Content-Security-Policy that
allows nothing else (no network, no other file): it works offline, from any folder, by e-mail.
Per input: the photo with the top-5 classes, then per method its map over the photo (the same
colour scheme and robust scale as the figures: onnxsplit.explain.schemes) with the class
explained, its score and a colour bar, and for the split methods the "for" and "against" maps.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from onnxsplit.explain.render import (
    Explained,
    draw,
    jpeg_bytes,
    panel_names,
    png_bytes,
    short_label,
    shown_photo,
)
from onnxsplit.explain.schemes import (
    DIVERGING,
    SEQUENTIAL,
    Scheme,
    display_name,
    gradient_stops,
    scheme_for,
)

PANEL_SIDE = 360  # longest side of a picture in the page, pixels
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _picture(rgb) -> str:
    """`src="..."` and the class of an <img>: JPEG for photos and overlays, PNG (drawn with
    sharp pixels) for small pictures."""
    if max(rgb.shape[:2]) < 200:
        return f'class="small" src="{data_uri(png_bytes(rgb), "image/png")}"'
    return f'src="{data_uri(jpeg_bytes(rgb), "image/jpeg")}"'


def _number(value: float) -> str:
    return f"{value:.2g}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.1e}"


def colour_bar(scheme: Scheme, scale: float | None = None) -> str:
    """A colour bar as a CSS gradient with its tick values (no picture needed)."""
    stops = ", ".join(gradient_stops(scheme))
    if scale is None:
        ticks = ["against", "0", "for"] if scheme.signed else ["0", "high"]
    else:
        ticks = [_number(-scale), "0", _number(scale)] if scheme.signed else ["0", _number(scale)]
    spans = "".join(f"<span>{html.escape(t)}</span>" for t in ticks)
    return (
        f'<div class="cbar" style="background: linear-gradient(to right, {stops})"></div>'
        f'<div class="ticks">{spans}</div>'
    )


@dataclass
class Row:
    """One input's row of the gallery (pictures already encoded, so photos can be freed)."""

    name: str
    source: str
    photo: str
    caption: str
    top: list[tuple[int, str, float | None, float]]
    cells: list[list[tuple[str, str, str]]]  # per method: (map name, data URI, caption html)


def row_of(result: Explained) -> Row:
    """Encode one input's pictures for the page."""
    scales = result.scales()
    photo = _picture(shown_photo(result.photo, PANEL_SIDE)) if result.photo is not None else ""
    predicted = result.predicted
    caption = (
        f"predicted <b>{html.escape(short_label(result.label(predicted), 40))}</b> "
        f"({html.escape(result.score(predicted))})"
    )
    if result.target != predicted:
        caption += (
            f"<br>explained <b>{html.escape(short_label(result.label(result.target), 40))}</b>"
        )
    explained = short_label(result.label(result.target), 40)
    cells = []
    for names in panel_names(result):
        cell = []
        for index, name in enumerate(names):
            scheme = scheme_for(name)
            picture = draw(
                result.maps[name], name, scales[name], result.photo, result.view, PANEL_SIDE
            )
            text = f"<b>{html.escape(display_name(name))}</b>"
            if index == 0:
                text += f"<br>{html.escape(explained)} ({html.escape(result.score(result.target))})"
            elif result.share(name):
                text += f"<br>{html.escape(result.share(name))}"
            text += colour_bar(scheme, scales[name])
            cell.append((name, _picture(picture), text))
        cells.append(cell)
    return Row(result.name, result.source, photo, caption, result.top(5), cells)


STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #555; margin: 0 0 12px; }
.legend { display: flex; gap: 32px; margin: 8px 0 16px; flex-wrap: wrap; }
.legend div.item { width: 260px; }
.notes { background: #fff7e0; border: 1px solid #e6cf8a; padding: 8px 12px; margin: 0 0 16px; }
table.gallery { border-collapse: collapse; }
table.gallery th { text-align: left; font-weight: 600; padding: 4px 8px; position: sticky;
                   top: 0; background: #fafafa; }
table.gallery td { vertical-align: top; padding: 8px; border-top: 1px solid #ddd; }
figure { margin: 0 0 8px; }
figure img { display: block; width: 260px; height: auto; border-radius: 2px; }
figure.part img { width: 125px; }
img.small { image-rendering: pixelated; }
.parts { display: flex; gap: 10px; }
figcaption { font-size: 12px; max-width: 260px; }
figure.part figcaption { max-width: 125px; font-size: 11px; }
.cbar { height: 8px; margin-top: 4px; border: 1px solid #bbb; }
.ticks { display: flex; justify-content: space-between; font-size: 10px; color: #555; }
ol.top5 { margin: 6px 0 0; padding-left: 20px; font-size: 12px; width: 240px; }
ol.top5 li { position: relative; }
ol.top5 .p { float: right; color: #555; }
ol.top5 .bar { height: 3px; background: #c33; opacity: .6; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) ok++;
  }
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-loaded', ok);
});
"""


def page(
    title: str,
    rows: list[Row],
    methods: list[str],
    meta: list[str],
    notes: list[str],
) -> str:
    """The whole page as one string."""
    e = html.escape
    legend = (
        '<div class="legend">'
        f'<div class="item"><b>signed maps</b> (gradients, LRP, the split maps)'
        f"{colour_bar(Scheme(DIVERGING, True))}</div>"
        f'<div class="item"><b>CAMs</b> (≥ 0){colour_bar(Scheme(SEQUENTIAL, False))}</div>'
        '<div class="item"><b>for / against</b> (split components; the "against" caption '
        "compares its sum with the for side's)"
        f"{colour_bar(scheme_for('splitcam_pos'))}{colour_bar(scheme_for('splitcam_neg'))}</div>"
        "</div>"
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{"<br>".join(e(m) for m in meta)}</p>',
        legend,
        '<p class="meta">Each map is drawn over the photo at the photo\'s own size; its colour '
        "is clipped at the 99.5th percentile of |map| (the value at the end of its bar). The "
        "part of a photo outside the preprocessing's centre crop was not seen by the model; "
        "it is dimmed on the maps.</p>",
    ]
    if notes:
        items = "".join(f"<li>{e(n)}</li>" for n in notes)
        parts.append(f'<div class="notes"><b>Note</b><ul>{items}</ul></div>')
    heads = "".join(f"<th>{e(display_name(m))}</th>" for m in methods)
    parts.append(f'<table class="gallery"><thead><tr><th>input</th>{heads}</tr></thead><tbody>')
    for index, row in enumerate(rows):
        top = "".join(
            f"<li><span>{e(short_label(name, 30))}</span>"
            f'<span class="p">{(f"{p:.2f}" if p is not None else f"{z:.2f}")}</span>'
            f'<div class="bar" style="width: {100 * (p if p is not None else 0):.0f}%"></div></li>'
            for _, name, p, z in row.top
        )
        photo = f'<img {row.photo} alt="{e(row.name)}">' if row.photo else ""
        parts.append(
            f'<tr class="input" id="input-{index}" data-input="{e(row.name)}">'
            f'<td class="photo"><figure>{photo}<figcaption><b>{e(row.name)}</b><br>'
            f"{row.caption}</figcaption></figure>"
            f'<ol class="top5" title="top 5">{top}</ol></td>'
        )
        for method, cell in zip(methods, row.cells, strict=True):
            (name, uri, text), *sides = cell
            body = (
                f'<figure class="panel" data-map="{e(name)}"><img {uri} '
                f'alt="{e(display_name(name))} of {e(row.name)}"><figcaption>{text}</figcaption>'
                "</figure>"
            )
            if sides:
                body += (
                    '<div class="parts">'
                    + "".join(
                        f'<figure class="panel part" data-map="{e(n)}"><img {u} '
                        f'alt="{e(display_name(n))} of {e(row.name)}"><figcaption>{t}</figcaption>'
                        "</figure>"
                        for n, u, t in sides
                    )
                    + "</div>"
                )
            parts.append(f'<td class="method" data-method="{e(method)}">{body}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)
