import html
import itertools

import pytest

from lib.schemas import generate_schema
from lib.ui_render import SCREEN_KINDS, STYLES, humanize, render_screen, screenshot


@pytest.mark.parametrize("kind", SCREEN_KINDS)
def test_every_column_of_the_labelled_tables_is_on_the_screen(kind):
    """The label is exact: each table a screen is labelled with shows every column but its
    primary key (forms never show ids), under its human name."""
    for seed, style in zip(range(12), itertools.cycle(sorted(STYLES))):
        schema = generate_schema(seed)
        screen = render_screen(schema, kind, style, seed)
        assert screen.tables and set(screen.tables) <= {t.name for t in schema.tables}
        page = html.unescape(screen.html)
        for name in screen.tables:
            for column in schema.table(name).columns:
                if not column.primary_key:
                    assert humanize(column.name) in page, (kind, name, column.name)


def test_same_seed_same_page_styles_differ():
    schema = generate_schema(3)
    assert render_screen(schema, "table", "dark", 1) == render_screen(schema, "table", "dark", 1)
    pages = {render_screen(schema, "table", style, 1).html for style in STYLES}
    assert len(pages) == len(STYLES)
    with pytest.raises(ValueError, match="unknown screen kind 'modal'"):
        render_screen(schema, "modal", "dark", 1)
    with pytest.raises(ValueError, match="unknown style 'neon'"):
        render_screen(schema, "form", "neon", 1)


def test_screenshots_are_full_page_pngs(tmp_path):
    from PIL import Image

    schema = generate_schema(5)
    screens = [render_screen(schema, kind, style, 0) for kind, style in zip(SCREEN_KINDS, sorted(STYLES))]
    captures = screenshot(screens, tmp_path, width=800)
    paths = [c.image for c in captures]
    assert [p.name.split("-")[1] for p in paths] == list(SCREEN_KINDS)
    assert not list(tmp_path.glob("*.partial.png"))
    for path in paths:
        image = Image.open(path)
        assert image.width == 800 and image.height >= 100
        assert len(set(image.convert("L").getdata())) > 10  # something was drawn, not a blank page


def test_screen_text_carries_what_the_screen_shows(tmp_path):
    schema = generate_schema(8)
    form, table = render_screen(schema, "form", "clean", 2), render_screen(schema, "table", "compact", 2)
    form_text, table_text = (c.text for c in screenshot([form, table], tmp_path))
    shown = schema.table(form.tables[0])
    fields = [line for line in form_text.splitlines() if line.startswith("field: ")]
    assert len(fields) == len([c for c in shown.columns if not c.primary_key])
    for column, line in zip([c for c in shown.columns if not c.primary_key], fields):
        assert humanize(column.name) in line and ("*" in line) == column.not_null
    header = next(line for line in table_text.splitlines() if line.startswith("columns: "))
    assert header.count("|") == len(schema.table(table.tables[0]).columns) - 1
    assert sum(line.startswith("row: ") for line in table_text.splitlines()) >= 4
