"""OCR and layout analysis on freshly rendered screens: what they read back, measured against the
DOM text of the same screens. Thresholds sit below what was measured on 120 screens of 4 kinds x 4
styles (chapter 08: ~99% of the visible words, 96-100% of the lines per kind)."""

from collections import defaultdict

import pytest

from lib.ghost_dataset import build_dataset
from lib.ocr import TextBox, as_rgb_array, on_white, read_text_boxes
from lib.screen_layout import layout, line_recovery, reading_scores, visible_text, word_recall


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screens")
    return folder, build_dataset(folder, examples=16, seed=7, screens_per_schema=4)


def test_ocr_reads_the_words_and_layout_rebuilds_the_lines(screens):
    folder, examples = screens
    recall, lines = [], defaultdict(list)
    for example in examples:
        pixels = as_rgb_array(folder / example.image)
        read = layout(read_text_boxes(pixels), pixels)
        assert example.ocr_text == read  # what the dataset stored is this reading
        recall.append(word_recall(read, example.screen_text))
        lines[example.kind].append(line_recovery(read, visible_text(example.screen_text))["recall"])
    assert sum(recall) / len(recall) >= 0.97, recall
    assert set(lines) == {"form", "table", "detail", "dashboard"}
    for kind, values in lines.items():
        assert sum(values) / len(values) >= 0.85, (kind, values)


def test_what_pixels_cannot_carry_is_left_out_of_the_target():
    dom = ("# New book\nfield: Title * [text max 200]\nfield: Pages [number = 3]\nfield: Due [date]\n"
           "field: Author [select: Select author\u2026 / Authors #3 / Authors #9]\nfield: Paid [checkbox = on]\n"
           "field: Notes [textarea]\nfield: At [datetime-local]\nbutton: Save")
    assert visible_text(dom).splitlines() == [
        "# New book", "field: Title * [input]", "field: Pages [input = 3]", "field: Due [date]",
        "field: Author [select: Select author\u2026]", "field: Paid [checkbox]", "field: Notes [textarea]",
        "field: At [datetime]", "button: Save"]
    assert line_recovery("a\nb", "a\nc") == {"lines": 2, "recovered": 1, "recall": 0.5, "exact": False}
    assert line_recovery("Select x...", "Select x\u2026")["exact"]  # OCR reads an ellipsis as three dots
    scores = reading_scores(visible_text(dom), dom)  # a perfect reading of the pixels
    assert scores["line_recall"] == 1 and scores["page_exact"] and scores["word_recall"] == 1
    assert scores["dom_line_recall"] == 4 / 9  # heading, date, text area and button survive unchanged


def test_a_transparent_screenshot_is_read_on_white():
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (360, 80), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((10, 20), "Customers dashboard", fill=(0, 0, 0, 255), font_size=28)
    assert on_white(image).getpixel((2, 2)) == (255, 255, 255)  # not black
    words = [b.text for b in read_text_boxes(image)]
    assert words == ["Customers", "dashboard"], words


def test_layout_of_synthetic_boxes_on_a_blank_page():
    import numpy as np

    pixels = np.full((200, 400, 3), 255, np.uint8)
    boxes = [TextBox("ID", 10, 10, 30, 30, ink=10), TextBox("Name", 100, 10, 150, 30, ink=10),
             TextBox("1", 10, 40, 20, 60, ink=10), TextBox("Ann", 100, 40, 130, 60, ink=10),
             TextBox("2", 10, 70, 20, 90, ink=10), TextBox("Bo", 100, 70, 125, 90, ink=10)]
    assert layout(boxes, pixels).splitlines() == ["columns: ID | Name", "row: 1 | Ann", "row: 2 | Bo"]
