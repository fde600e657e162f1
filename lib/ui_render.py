"""UI screens rendered from a schema (chapter 08): HTML/CSS, screenshots in headless Chromium.

A schema is shown the way applications show theirs: a create/edit form (labels, input kinds from
the column types, required marks for NOT NULL, a select for each foreign key, defaults filled in),
a data table (headers and rows of plausible values), a detail page with its related records, and
a dashboard (counts and the latest rows). Each screen knows which tables it reveals: the label of
an example is the DDL of exactly those tables. Styles differ in fonts, colours, density and
layout, so that a model cannot learn one stylesheet. Everything is deterministic from the seed.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass
from pathlib import Path

from .schemas import Column, Schema, Table

STYLES = {
    "clean": "body{font-family:Helvetica,Arial,sans-serif;background:#f6f7fb;color:#222;margin:24px}"
             ".card{background:#fff;border-radius:10px;box-shadow:0 1px 4px #0002;padding:18px;margin-bottom:16px}"
             "th{background:#eef1f8;text-align:left}td,th{padding:6px 10px;border-bottom:1px solid #e3e6ee}"
             "label{display:block;font-weight:600;margin-top:10px}input,select,textarea{width:320px;padding:6px}"
             "h1{font-size:22px}.req{color:#c00}.btn{background:#3b6cf6;color:#fff;border:0;padding:8px 16px}",
    "dark": "body{font-family:'DejaVu Sans',sans-serif;background:#1d2129;color:#e6e6e6;margin:20px}"
            ".card{background:#272c36;border:1px solid #3a4150;padding:14px;margin-bottom:12px}"
            "th{color:#9fb3ff;text-align:left;border-bottom:2px solid #3a4150}td,th{padding:5px 9px}"
            "label{display:block;margin-top:8px;color:#aab}input,select,textarea{background:#161a20;color:#eee;"
            "border:1px solid #445;width:300px;padding:5px}.req{color:#ff8080}.btn{background:#8a5cf6;color:#fff;"
            "border:0;padding:7px 14px}h1{font-size:20px;color:#fff}",
    "compact": "body{font-family:'DejaVu Serif',serif;font-size:13px;background:#fff;color:#111;margin:10px}"
               ".card{border:1px solid #999;padding:8px;margin-bottom:8px}table{border-collapse:collapse}"
               "td,th{border:1px solid #bbb;padding:2px 6px}th{background:#ddd}"
               "label{display:inline-block;width:160px;margin-top:4px}input,select,textarea{width:220px}"
               ".req{font-weight:bold}.btn{border:1px solid #333;background:#eee;padding:3px 10px}h1{font-size:17px}",
    "sidebar": "body{font-family:'Liberation Sans',Arial,sans-serif;margin:0;display:flex;background:#fafafa}"
               "nav{width:170px;background:#0f5132;color:#fff;min-height:100vh;padding:16px}nav div{margin:8px 0}"
               "main{padding:20px;flex:1}.card{background:#fff;border-left:4px solid #198754;padding:14px;"
               "margin-bottom:14px}td,th{padding:6px 12px;border-bottom:1px solid #ddd}th{text-align:left;"
               "text-transform:uppercase;font-size:12px;color:#555}label{display:block;margin-top:9px;"
               "font-size:13px;text-transform:uppercase;color:#555}input,select,textarea{width:340px;padding:7px;"
               "border:1px solid #ccc;border-radius:4px}.req{color:#198754}.btn{background:#198754;color:#fff;"
               "border:0;padding:9px 18px;border-radius:4px}",
}

SCREEN_KINDS = ("form", "table", "detail", "dashboard")


@dataclass(frozen=True)
class Screen:
    """One rendered UI: its kind, style, the tables it reveals (the label) and its HTML."""

    kind: str
    style: str
    tables: tuple[str, ...]
    html: str


def humanize(name: str) -> str:
    """customer_id -> "Customer", created_at -> "Created at"."""
    if name.endswith("_id") and name != "id":
        name = name[:-3]
    return name.replace("_", " ").capitalize()


def title(table: str) -> str:
    """A table's name as a screen shows it: "order_items" -> "Order Items"."""
    return table.replace("_", " ").title()


def sample_value(column: Column, rng: random.Random, row: int) -> str:
    """A plausible value of the column's type, as an application would display it."""
    t, name = column.type.upper(), column.name
    if column.primary_key or name.endswith("_id"):
        return str(rng.randint(1, 400) if not column.primary_key else 100 + row)
    if "BOOL" in t:
        return rng.choice(["Yes", "No"])
    if t.startswith(("DECIMAL", "REAL")):
        return f"{rng.uniform(1, 900):.2f}"
    if "INT" in t:
        return str(rng.randint(0, 60))
    if t == "DATE":
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if t == "TIMESTAMP":
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(7, 21):02d}:{rng.choice(['00', '15', '30', '45'])}"
    if column.default and column.default.startswith("'"):
        return column.default.strip("'")
    if "email" in name:
        return f"user{rng.randint(10, 999)}@example.org"
    words = ["alpha", "delta", "north", "river", "amber", "cedar", "lumen", "orbit", "maple", "quartz"]
    return f"{rng.choice(words).title()} {rng.choice(words)}" if "name" in name or "title" in name \
        else f"{rng.choice(words).upper()}-{rng.randint(100, 999)}"


def _input(column: Column, schema: Schema, rng: random.Random) -> str:
    t = column.type.upper()
    required = ' <span class="req">*</span>' if column.not_null else ""
    hint = " <small>(unique)</small>" if column.unique else ""
    label = f"<label>{html.escape(humanize(column.name))}{required}{hint}</label>"
    if column.references:
        options = "".join(f"<option>{html.escape(title(column.references[0]))} #{rng.randint(1, 90)}</option>"
                          for _ in range(3))
        return f"{label}<select><option>Select {html.escape(humanize(column.name).lower())}…</option>{options}</select>"
    if "BOOL" in t:
        checked = " checked" if column.default == "1" else ""
        return f"{label}<input type='checkbox'{checked}>"
    kind = {"DATE": "date", "TIMESTAMP": "datetime-local"}.get(t, "number" if ("INT" in t or "DEC" in t or "REAL" in t)
                                                              else "text")
    if t == "TEXT":
        return f"{label}<textarea rows='3'></textarea>"
    value = column.default.strip("'") if column.default and column.default != "CURRENT_TIMESTAMP" else ""
    maxlength = f" maxlength='{t[8:-1]}'" if t.startswith("VARCHAR(") else ""
    return f"{label}<input type='{kind}' value='{html.escape(value)}'{maxlength}>"


def _data_table(table: Table, rng: random.Random, rows: int, columns=None) -> str:
    columns = columns or table.columns
    head = "".join(f"<th>{html.escape(humanize(c.name) if c.name != 'id' else 'ID')}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(sample_value(c, rng, r))}</td>" for c in columns) + "</tr>"
                   for r in range(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(style: str, heading: str, body: str, schema: Schema) -> str:
    nav = ""
    if style == "sidebar":
        nav = "<nav><b>" + html.escape(schema.domain.title()) + "</b>" + "".join(
            f"<div>{html.escape(title(t.name))}</div>" for t in schema.tables) + "</nav>"
    main = f"<h1>{html.escape(heading)}</h1>{body}"
    main = f"<main>{main}</main>" if nav else main
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLES[style]}</style></head>" \
           f"<body>{nav}{main}</body></html>"


def render_screen(schema: Schema, kind: str, style: str, seed: int) -> Screen:
    """One screen of `schema`. Raises ValueError for an unknown kind or style."""
    if kind not in SCREEN_KINDS:
        raise ValueError(f"unknown screen kind {kind!r}: choose one of {SCREEN_KINDS}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: choose one of {sorted(STYLES)}")
    rng = random.Random(seed)
    tables = list(schema.tables)
    if kind == "form":
        table = rng.choice(tables)
        fields = "".join(_input(c, schema, rng) for c in table.columns if not c.primary_key)
        body = f"<div class='card'><form>{fields}<p><button class='btn'>Save</button></p></form></div>"
        heading, shown = f"{rng.choice(['New', 'Edit'])} {humanize(table.name).rstrip('s').lower()}", [table.name]
    elif kind == "table":
        table = rng.choice(tables)
        body = f"<div class='card'>{_data_table(table, rng, rng.randint(4, 7))}</div>"
        heading, shown = title(table.name), [table.name]
    elif kind == "detail":
        parents = [t for t in tables if any(c.references and c.references[0] == t.name
                                            for other in tables for c in other.columns)]
        table = rng.choice(parents or tables)
        children = [t for t in tables if any(c.references and c.references[0] == table.name for c in t.columns)]
        fields = "".join(f"<div><b>{html.escape(humanize(c.name) if c.name != 'id' else 'ID')}:</b> "
                         f"{html.escape(sample_value(c, rng, 0))}</div>" for c in table.columns)
        related = "".join(f"<div class='card'><h3>{html.escape(title(child.name))}</h3>"
                          f"{_data_table(child, rng, rng.randint(2, 4))}</div>" for child in children)
        body = f"<div class='card'>{fields}</div>{related}"
        heading, shown = f"{title(table.name)} #{rng.randint(100, 999)}", [table.name] + [c.name for c in children]
    else:  # dashboard: every table counted, the two largest shown in full
        counts = "".join(f"<div class='card stat' style='display:inline-block;min-width:140px;margin-right:10px'>"
                         f"<div>{html.escape(title(t.name))}</div><b style='font-size:24px'>{rng.randint(3, 9000)}</b>"
                         f"</div>" for t in tables)
        shown_tables = sorted(tables, key=lambda t: -len(t.columns))[:2]
        latest = "".join(f"<div class='card'><h3>Latest {html.escape(title(t.name).lower())}</h3>"
                         f"{_data_table(t, rng, 3)}</div>" for t in shown_tables)
        body = counts + latest
        heading, shown = f"{schema.domain.title()} dashboard", [t.name for t in shown_tables]
    order = [t.name for t in schema.tables if t.name in shown]  # schema order: references first
    return Screen(kind, style, tuple(order), _page(style, heading, body, schema))


# The screen as text and structure, no pixels: headings, form fields with their input kind and
# marks, table headers and rows, detail lines. What the "text Ghost Architect" reads.
SCREEN_TEXT_JS = """() => {
  const lines = [];
  const walk = (el) => {
    for (const node of el.children) {
      const tag = node.tagName.toLowerCase();
      if (/^h[1-3]$/.test(tag)) lines.push('#'.repeat(+tag[1]) + ' ' + node.innerText.trim());
      else if (tag === 'label') {
        const field = node.nextElementSibling;
        let kind = field ? field.tagName.toLowerCase() : '';
        if (kind === 'input') kind = field.type + (field.value ? ' = ' + field.value : '')
                                    + (field.checked ? ' (checked)' : '') + (field.maxLength > 0 ? ' max ' + field.maxLength : '');
        if (kind === 'select') kind = 'select: ' + [...field.options].map(o => o.text).join(' / ');
        lines.push('field: ' + node.innerText.trim() + ' [' + kind + ']');
      }
      else if (tag === 'table') {
        for (const row of node.rows) lines.push((row.parentElement.tagName === 'THEAD' ? 'columns: ' : 'row: ')
                                                + [...row.cells].map(c => c.innerText.trim()).join(' | '));
      }
      else if (tag === 'button') lines.push('button: ' + node.innerText.trim());
      else if (tag === 'div' && node.children.length && node.children[0].tagName === 'B' && !node.querySelector('div'))
        lines.push(node.innerText.trim());
      else if (node.classList.contains('stat')) lines.push('count: ' + node.innerText.trim().replace(/\\s*\\n\\s*/g, ' = '));
      else if (tag === 'nav') lines.push('menu: ' + [...node.children].map(c => c.innerText.trim()).join(' | '));
      else if (tag === 'div' && !node.querySelector('div, table, form, label, h3') && node.innerText.trim())
        lines.push(node.innerText.trim().replace(/\\s*\\n\\s*/g, ': '));
      else walk(node);
    }
  };
  walk(document.body);
  return lines.join('\\n');
}"""


@dataclass(frozen=True)
class Capture:
    """A screenshot and the same screen as text (`SCREEN_TEXT_JS`)."""

    image: Path
    text: str


def screenshot(screens: list[Screen], folder: str | Path, chromium: str | None = None,
               width: int = 1024, names: list[str] | None = None) -> list[Capture]:
    """PNG screenshots (full page, `width` px wide) of `screens` into `folder` via headless
    Chromium, with each screen's text. Files are written under a temporary name and renamed, so
    the folder never holds a half-written image. `names`: file stems (default index-kind-style).
    `chromium`: the browser's executable; default the system's `chromium` (Debian's package), else
    the one `python -m playwright install chromium` downloads (Colab).
    """
    import shutil

    chromium = chromium or shutil.which("chromium")
    from concurrent.futures import ThreadPoolExecutor

    # Playwright's sync API refuses to run in a thread with a running asyncio loop, and a Jupyter
    # kernel has one: a worker thread drives the browser.
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(_screenshot, screens, Path(folder), chromium, width, names).result()


def _screenshot(screens, folder, chromium, width, names) -> list[Capture]:
    from playwright.sync_api import sync_playwright

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:04d}-{s.kind}-{s.style}" for i, s in enumerate(screens)]
    captures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": 700})
        for name, screen in zip(names, screens, strict=True):
            page.set_content(screen.html)
            target = folder / f"{name}.png"
            partial = folder / f"{name}.partial.png"
            page.screenshot(path=str(partial), full_page=True)
            partial.rename(target)
            captures.append(Capture(target, page.evaluate(SCREEN_TEXT_JS)))
        browser.close()
    return captures
