"""Layout analysis of a screenshot: OCR's text boxes and the form controls drawn in the pixels,
rebuilt into the screen-text format the text Ghost Architect reads.

The format (`lib.ui_render.SCREEN_TEXT_JS` writes it from the page's DOM):

    menu: Clinic | Patients | Doctors        a navigation bar
    # Edit invoice                           the page heading; `###` for a section heading
    field: Amount * [input]                  a label and its control
    button: Save
    columns: ID | Name | Rate                a table's header row ...
    row: 100 | Cedar alpha | 268.22          ... and its rows
    count: Patients = 8316                   a dashboard counter
    City: Lyon                               any other line of text

From pixels, with no DOM: controls are the rectangles OpenCV finds (inputs, text areas,
checkboxes, buttons; table-cell borders and cards are told apart by size and by their
neighbours); the text inside a control is its value, placeholder or caption; a label is the text
just above its control or just left of it; table cells go to the column whose header starts at
their x, rows by y; a heading is the tallest text at the top, a menu the stack of text left of it.

**What pixels cannot carry.** An empty text input looks the same whatever its type (text, number,
email), so every one is `[input]`; a maximum length is invisible; a select shows one option, not
the others. `visible_text` maps a DOM screen text to what pixels can show at best, so that the
layout step is measured against what is recoverable, and the chapter measures what the rest costs.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from .ocr import TextBox

# Control sizes in CSS pixels at the screenshots' device scale of 1.
CHECKBOX = (9, 26)             # width and height range of a checkbox's square
FIELD_MIN_WIDTH = 150          # inputs, selects and text areas are wider; buttons narrower
LINE_HEIGHT = (14, 46)         # height range of a one-line input or a button
TEXTAREA_MAX_HEIGHT = 140
DATE_PLACEHOLDER = re.compile(r"^[mdy]{2,4}[/.-][mdy]{2,4}[/.-][mdy]{2,4}", re.IGNORECASE)
INTEGER = re.compile(r"^\d[\d,]*$")
CHECKBOX_GLYPHS = {"□", "☐", "口", "O", "o", "0"}  # what OCR makes of an empty checkbox's square


@dataclass
class Control:
    """A form control found in the pixels; `text` is what is written inside it."""

    kind: str                  # input, textarea, select, checkbox, button, date, datetime
    x0: int
    y0: int
    x1: int
    y1: int
    text: str = ""
    checked: bool = False
    boxes: list = field(default_factory=list)
    glyphs: list = field(default_factory=list)  # OCR's reading of the control's own drawing

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def bracket(self) -> str:
        """The control as the screen-text format writes it between [ ]."""
        if self.kind == "select":
            return f"select: {self.text}" if self.text else "select"
        if self.kind == "checkbox":
            return "checkbox (checked)" if self.checked else "checkbox"
        if self.kind in ("input", "textarea") and self.text:
            return f"{self.kind} = {self.text}"
        return self.kind


# ------------------------------------------------------------------ controls in the pixels

def _rectangles(pixels) -> list[tuple[int, int, int, int]]:
    """Axis-aligned rectangles outlined in the image (x, y, w, h): control borders, filled buttons,
    cards, table cells. A rectangle is a pair of horizontal edge runs with the same ends, joined by
    vertical edges at both ends. Text touching a border does not hide it, as it would a contour."""
    import cv2
    import numpy as np

    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.int16)
    # edges: a step of more than 6 grey levels to the next pixel, down (for horizontal borders)
    # or across (for vertical ones); dark borders on dark cards count too
    horizontal = np.zeros(gray.shape, bool)
    horizontal[:-1] = np.abs(np.diff(gray, axis=0)) > 6
    vertical = np.zeros(gray.shape, bool)
    vertical[:, :-1] = np.abs(np.diff(gray, axis=1)) > 6
    runs = []  # (x0, x1, y) of every horizontal run of edge pixels long enough to be a border
    for y in range(horizontal.shape[0]):
        row = np.concatenate([[0], horizontal[y].astype(np.int8), [0]])
        changes = np.flatnonzero(np.diff(row))
        runs += [(int(a), int(b), y) for a, b in zip(changes[::2], changes[1::2]) if b - a >= CHECKBOX[0]]
    runs.sort()
    found = []
    for i, (x0, x1, top) in enumerate(runs):
        # the bottom edge: a run below starting at the same x; its end may differ by a few pixels
        # where text touches the border and extends the run
        for a, b, bottom in runs[i + 1:]:
            if a > x0 + 2:
                break
            height = bottom - top
            if abs(a - x0) > 2 or abs(b - x1) > 8 or not CHECKBOX[0] - 1 <= height <= TEXTAREA_MAX_HEIGHT:
                continue
            right_end = min(x1, b)
            # the sides, up to 6 px out where the corners are rounded (border-radius), along
            # all but the corners' rows: glyph strokes next to a fill do not make a side
            inset = min(4, height // 4)
            left = vertical[top + inset:bottom - inset, max(0, x0 - 6):x0 + 2].any(axis=1)
            right = vertical[top + inset:bottom - inset, max(0, right_end - 3):right_end + 6].any(axis=1)
            if left.mean() > 0.9 and right.mean() > 0.9:
                found.append((x0, top, right_end - x0, height))
    kept = []
    for rect in sorted(found, key=lambda r: -r[2] * r[3]):
        if not any(abs(rect[0] - k[0]) <= 3 and abs(rect[1] - k[1]) <= 3 and abs(rect[2] - k[2]) <= 6
                   and abs(rect[3] - k[3]) <= 6 for k in kept):
            kept.append(rect)
    return kept


def _grid_cells(rects) -> set:
    """Rectangles that share a vertical edge with a neighbour of the same row: table cells."""
    cells = set()
    for a in rects:
        for b in rects:
            if a is b:
                continue
            same_row = abs(a[1] - b[1]) <= 4 and abs(a[3] - b[3]) <= 4 and min(a[3], b[3]) >= LINE_HEIGHT[0]
            if same_row and abs((a[0] + a[2]) - b[0]) <= 6:
                cells.update((a, b))
    return cells


def _has_chevron(pixels, x0: int, y0: int, x1: int, y1: int) -> bool:
    """A select's drop-down arrow: ink near the right end of the control, where an input is blank."""
    import numpy as np

    inner = pixels[y0 + 3:y1 - 3, x0 + 3:x1 - 3].astype(float).mean(axis=2)
    if inner.size == 0:
        return False
    background = np.median(inner)
    right = inner[:, -22:-2]
    return bool((np.abs(right - background) > 60).mean() > 0.03)


def find_controls(pixels) -> list[Control]:
    """The form controls of a screenshot (RGB array), without their text (see `layout`)."""
    rects = _rectangles(pixels)
    cells = _grid_cells(rects)
    controls = []
    for x, y, w, h in rects:
        if (x, y, w, h) in cells:
            continue
        if CHECKBOX[0] <= w <= CHECKBOX[1] and CHECKBOX[0] <= h <= CHECKBOX[1] and abs(w - h) <= 3:
            inner = pixels[y + 3:y + h - 3, x + 3:x + w - 3].astype(int)
            if not inner.size:
                continue
            saturated = float((inner.max(axis=2) - inner.min(axis=2)).mean()) > 60  # a checked box is filled
            if saturated or float(inner.mean(axis=2).std()) < 12:  # an unchecked one is empty inside
                controls.append(Control("checkbox", x, y, x + w, y + h, checked=saturated))
        elif w >= FIELD_MIN_WIDTH and LINE_HEIGHT[0] <= h <= LINE_HEIGHT[1]:
            kind = "select" if _has_chevron(pixels, x, y, x + w, y + h) else "input"
            controls.append(Control(kind, x, y, x + w, y + h))
        elif w >= FIELD_MIN_WIDTH and LINE_HEIGHT[1] < h <= TEXTAREA_MAX_HEIGHT:
            controls.append(Control("textarea", x, y, x + w, y + h))
        elif 24 <= w < FIELD_MIN_WIDTH and LINE_HEIGHT[0] <= h <= LINE_HEIGHT[1]:
            controls.append(Control("button", x, y, x + w, y + h))
    # a control drawn twice (the outer and inner edge of its border): keep the outer one
    controls.sort(key=lambda c: (c.x1 - c.x0) * (c.y1 - c.y0), reverse=True)
    kept = []
    for c in controls:
        if not any(0 <= c.x0 - k.x0 <= 4 and 0 <= c.y0 - k.y0 <= 4 and 0 <= k.x1 - c.x1 <= 4 and 0 <= k.y1 - c.y1 <= 4
                   for k in kept):
            kept.append(c)
    return sorted(kept, key=lambda c: (c.y0, c.x0))


# ------------------------------------------------------------------ text into lines and phrases

def text_lines(boxes: list[TextBox]) -> list[list[TextBox]]:
    """Boxes grouped into lines (vertical centres within 0.4 box heights of the line's), top to
    bottom, each line left to right."""
    lines: list[list[TextBox]] = []
    for box in sorted(boxes, key=lambda b: b.cy):
        if lines and abs(box.cy - statistics.mean(b.cy for b in lines[-1])) < 0.4 * box.height:
            lines[-1].append(box)
        else:
            lines.append([box])
    return [sorted(line, key=lambda b: b.x0) for line in lines]


def _vertical_rule(pixels, x0: float, x1: float, y0: float, y1: float) -> bool:
    """A vertical line drawn somewhere in the x range (x0, x1), over the rows y0..y1: one column
    that differs from the region's median colour in 90% of the rows (a table's cell border)."""
    import numpy as np

    left, right, top, bottom = int(x0) + 1, int(x1), int(y0), int(y1)
    if pixels is None or right - left < 1 or bottom - top < 3:
        return False
    region = pixels[top:bottom, left:right].astype(float).mean(axis=2)
    return bool(((np.abs(region - np.median(region)) > 30).mean(axis=0) > 0.9).any())


def _rule_between(pixels, a: TextBox, b: TextBox) -> bool:
    """A vertical line drawn in the gap between two words of a line, over the whole height of their
    (padded) boxes: a cell border spans its row, a letter's stem only the glyphs' height."""
    return _vertical_rule(pixels, a.x1 + 1, b.x0 - 1, min(a.y0, b.y0), max(a.y1, b.y1))


def phrases(line: list[TextBox], pixels=None) -> list[TextBox]:
    """The words of one line joined into phrases. A gap wider than 1.1x the line's median glyph
    height, or one crossed by a drawn vertical line, separates two phrases (table cells, a label
    and its input, menu entries); anything narrower is a space between words (0-9 px measured,
    against 10-30 px between cells)."""
    inks = [b.ink for b in line if b.ink and len(b.text) > 1] or [b.ink for b in line if b.ink]  # not "*"
    limit = 1.1 * statistics.median(inks) if inks else 0.45 * statistics.median(b.height for b in line)
    merged: list[TextBox] = []
    for box in line:
        if merged and box.x0 - merged[-1].x1 < limit and not _rule_between(pixels, merged[-1], box):
            last = merged[-1]
            merged[-1] = TextBox(f"{last.text} {box.text}", last.x0, min(last.y0, box.y0), box.x1,
                                 max(last.y1, box.y1), min(last.score, box.score), max(last.ink, box.ink),
                                 (last.words or (last,)) + (box.words or (box,)))
        else:
            merged.append(box)
    return merged


def words_of(phrase: TextBox) -> tuple:
    """The word boxes of an OCR phrase box, or the phrase itself where OCR gave no words."""
    return phrase.words or (phrase,)


# ------------------------------------------------------------------ the layout

@dataclass
class _Item:
    y: float
    x: float
    text: str


def _attach_text(controls: list[Control], words: list[TextBox], pixels) -> tuple[list[Control], list[TextBox]]:
    """Give each control the words inside it; drop rectangles that are not controls after all (a
    text area or checkbox with text in it is a card or a cell; an input holds one line of text
    from its left edge; a button one centred caption). Returns (controls, words in none)."""
    for control in controls:
        control.boxes = [w for w in words if w.inside(control.x0, control.y0, control.x1, control.y1)]
        if control.kind == "checkbox":
            touching = [w for w in words if w.x0 < control.x1 and control.x0 < w.x1 and w.y0 < control.y1
                        and control.y0 < w.y1]
            if all(w.text in CHECKBOX_GLYPHS for w in touching):
                control.boxes, control.glyphs = [], touching  # the square itself, read as a character
            else:
                control.boxes = touching  # a glyph or a table cell's border, not a checkbox: dropped below
    kept = []
    for control in controls:
        inner = control.boxes
        within = any(o is not control and o.x0 <= control.x0 and control.x1 <= o.x1 and o.y0 <= control.y0
                     and control.y1 <= o.y1 for o in controls)
        if control.kind == "checkbox" and within:
            continue  # an icon drawn inside an input (a number input's spinner, a date's calendar)
        nested = any(o is not control and o.kind != "checkbox" and o.x0 >= control.x0 and o.x1 <= control.x1 and o.y0 >= control.y0
                     and o.y1 <= control.y1 for o in controls)
        if nested or (control.kind in ("textarea", "checkbox") and inner):
            continue  # a card, or two controls sharing a border, or a cell: not one control
        if control.kind in ("input", "select"):
            icons = [w for w in inner if len(w.text) == 1 and not w.text.isascii()]  # a date input's calendar
            inner = control.boxes = [w for w in inner if w not in icons]
            control.glyphs = icons
            shown = " ".join(w.text for w in sorted(inner, key=lambda w: w.x0))
            if DATE_PLACEHOLDER.match(shown):
                control.kind, control.text = ("datetime" if "--" in shown else "date"), ""
                kept.append(control)
                continue
        lines = text_lines(inner)
        if control.kind in ("input", "select") and (len(lines) > 1 or (inner and (
                min(w.x0 for w in inner) - control.x0 > 24 or len(phrases(lines[0], pixels)) > 1))):
            continue  # not one value from the left edge: a table row outlined by its borders
        if control.kind == "button":
            if len(lines) != 1:
                continue
            centre = (min(w.x0 for w in inner) + max(w.x1 for w in inner)) / 2
            if abs(centre - (control.x0 + control.x1) / 2) > 0.2 * (control.x1 - control.x0):
                continue
        control.text = " ".join(w.text for line in lines for w in line)
        kept.append(control)
    claimed = {id(w) for c in kept for w in c.boxes + c.glyphs}
    return kept, [w for w in words if id(w) not in claimed]


def _join_wrapped_labels(free: list[TextBox]) -> list[TextBox]:
    """A label too long for its box wraps, and its second line is often smaller text ("(unique)"):
    a phrase in a smaller font right under another, starting where it starts, continues it."""
    joined, used = [], set()
    for upper in sorted(free, key=lambda b: b.cy):
        if id(upper) in used:
            continue
        below = [b for b in free if id(b) not in used and b is not upper and abs(b.x0 - upper.x0) <= 3
                 and 0 < b.cy - upper.cy < 1.4 * font_size(upper) and font_size(b) < 0.9 * font_size(upper)]
        if below:
            lower = min(below, key=lambda b: b.cy)
            used.add(id(lower))
            upper = TextBox(f"{upper.text} {lower.text}", upper.x0, upper.y0, max(upper.x1, lower.x1), upper.y1,
                            min(upper.score, lower.score), upper.ink, words_of(upper) + words_of(lower))
        joined.append(upper)
    return joined


def _label_for(control: Control, free: list[TextBox]) -> TextBox | None:
    """The label of a control: the nearest free phrase on its line to its left; else the one just
    above it; else, where a row of inline fields wrapped, the last phrase of the line above when
    nothing follows it there."""
    height = control.y1 - control.y0
    left = [b for b in free if abs(b.cy - control.cy) < height / 2 + 2 and b.x1 <= control.x0 + 4
            and control.x0 - b.x1 < 200]
    if left:
        return max(left, key=lambda b: b.x1)
    above = [b for b in free if b.y1 <= control.y0 + 6 and control.y0 - b.y1 < b.height + 10
             and b.x0 <= control.x0 + 20 and control.x0 - b.x0 < 220]
    if above:
        return max(above, key=lambda b: b.y1)
    previous = [b for b in free if b.cy < control.y0 and control.cy - b.cy < 2.5 * height and b.x0 > control.x1]
    return max(previous, key=lambda b: b.x1) if previous else None


def _wrapped(line: list[TextBox], previous: list[TextBox], em: float) -> bool:
    """A line that continues the row above (a cell's text wrapped): closer than 1.3 font sizes,
    where the next row of a table is further down by its cells' padding."""
    return statistics.mean(b.cy for b in line) - statistics.mean(b.cy for b in previous) < 1.3 * em


def _em(lines: list[list[TextBox]]) -> float:
    sizes = [font_size(b) for line in lines for b in line if b.ink]
    return statistics.median(sizes) if sizes else 16.0


def _table_rows(lines: list[list[TextBox]]) -> int:
    """How many lines from the first one read as a table: a header and at least two rows whose
    phrases start where the header's do (a cell that wraps onto a second line, closer than the
    next padded row, counts with its row). 0 when they do not."""
    header = lines[0]
    if len(header) < 2:
        return 0
    starts = [b.x0 for b in header]
    tolerance = 0.6 * statistics.median(b.height for b in header)
    em = _em(lines[:4])
    rows, used, previous = 1, 1, header
    for line in lines[1:]:
        wrapped = _wrapped(line, previous, em)
        if (len(line) < 2 and not wrapped) or line[0].x0 < starts[0] - tolerance:
            break
        # under its header: starting where a header cell starts, or under exactly one (a centred header)
        aligned = sum(any(abs(b.x0 - s) <= tolerance for s in starts)
                      or sum(b.x0 < h.x1 and h.x0 < b.x1 for h in header) == 1 for b in line)
        if not wrapped and aligned < 0.6 * len(line):
            break
        rows += not wrapped
        used, previous = used + 1, line
    return used if rows >= 3 else 0


def _table_cells(lines: list[list[TextBox]], pixels) -> list[list[str]]:
    """The cells of a table's lines (header first), columns found from the whitespace: an x range
    that no word of any line covers, wider than a space (0.95x the glyph height) or crossed by a
    drawn cell border, separates two columns. Words go to the column their centre falls in; a
    wrapped line's words join the row above."""
    words = [w for line in lines for phrase in line for w in words_of(phrase)]
    ink = statistics.median(w.ink for w in words if w.ink) if any(w.ink for w in words) else 10.0
    top, bottom = min(w.cy for w in words), max(w.cy for w in words)
    spans = sorted((w.x0, w.x1) for w in words)
    boundaries, reach = [], spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 - reach >= 0.95 * ink or (x0 > reach and _vertical_rule(pixels, reach, x0, top, bottom)):
            boundaries.append((reach + x0) / 2)
        reach = max(reach, x1)
    em = _em(lines[:4])
    rows, previous = [], None
    for line in lines:
        wrapped = previous is not None and _wrapped(line, previous, em)
        cells = rows[-1] if wrapped else [""] * (len(boundaries) + 1)
        for word in sorted((w for p in line for w in words_of(p)), key=lambda w: w.x0):
            column = sum((word.x0 + word.x1) / 2 > b for b in boundaries)
            cells[column] = f"{cells[column]} {word.text}".strip()
        if not wrapped:
            rows.append(cells)
        previous = line
    return rows


def _counts(lines: list[list[TextBox]]) -> tuple[int, list[str]] | None:
    """Dashboard counters from the first line on: a line of labels over a line of integers, each
    number under its label; several such pairs when the cards wrap."""
    used, found = 0, []
    while used + 1 < len(lines):
        labels, numbers = lines[used], lines[used + 1]
        if len(labels) != len(numbers) or not all(INTEGER.match(b.text) for b in numbers) \
                or any(INTEGER.match(b.text) for b in labels):
            break
        if any(abs(label.x0 - number.x0) > 20 for label, number in zip(labels, numbers)):
            break
        found += [f"count: {label.text} = {number.text}" for label, number in zip(labels, numbers)]
        used += 2
    return (used, found) if found else None


def font_size(box: TextBox) -> float:
    """The font size (em, pixels) of a phrase from its ink height and its letters: glyphs with
    descenders and ascenders span about 0.93 em, capitals, digits and ascenders about 0.73 em,
    x-height letters about 0.53 em (typical sans-serif metrics)."""
    letters = set(box.text)
    tall = bool(letters & set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789bdfhklt#@()[]/|"))
    low = bool(letters & set("gjpqy,;()[]|"))
    factor = 0.93 if tall and low else 0.73 if tall else 0.72 if low else 0.53
    return box.ink / factor


def _heading(free: list[TextBox]) -> TextBox | None:
    """The page heading: the topmost phrase whose font is clearly (1.15x) larger than the median
    phrase's, among the first lines of the page."""
    if len(free) < 2:
        return None
    median = statistics.median(font_size(b) for b in free)
    first = min(b.y0 for b in free)
    large = [b for b in free if b.y0 < first + 120 and font_size(b) >= 1.15 * median]
    return min(large, key=lambda b: (b.y0, b.x0)) if large else None


def layout(boxes: list[TextBox], pixels) -> str:
    """The screen text of a screenshot from its OCR words (`lib.ocr.read_text_boxes`) and its
    pixels (RGB array, for the controls and ink heights). Lines in reading order, in the format
    of the module docstring."""
    controls, words = _attach_text(find_controls(pixels), boxes, pixels)
    free = [p for line in text_lines(words) for p in phrases(line, pixels)]
    items: list[_Item] = []
    heading = _heading(free)
    if heading is not None:
        items.append(_Item(heading.y0, heading.x0, f"# {heading.text}"))
        menu = [b for b in free if b.x1 < heading.x0 - 8]
        if len(menu) >= 2 and max(b.x0 for b in menu) - min(b.x0 for b in menu) > 30:
            menu = []  # a navigation bar is one left-aligned column
        if len(menu) >= 2:
            items.append(_Item(-1, 0, "menu: " + " | ".join(b.text for b in sorted(menu, key=lambda b: b.y0))))
        free = [b for b in free if b is not heading and b not in menu]
    if any(c.kind != "button" for c in controls):
        free = _join_wrapped_labels(free)
    for control in sorted(controls, key=lambda c: (c.y0, c.x0)):
        if control.kind == "button":  # a button is alone on its line (header cells with a fill are not)
            half = (control.y1 - control.y0) / 2
            if not any(abs(b.cy - control.cy) < half for b in free) and \
                    not any(o is not control and abs(o.cy - control.cy) < half for o in controls):
                items.append(_Item(control.y0, control.x0, f"button: {control.text}"))
            else:
                free += phrases(sorted(control.boxes, key=lambda b: b.x0), pixels)
            continue
        label = _label_for(control, free)
        if label is not None:
            free.remove(label)
        items.append(_Item(label.y0 if label else control.y0, label.x0 if label else control.x0,
                           f"field: {label.text if label else ''} [{control.bracket()}]"))
    lines = text_lines(free)
    i, plain = 0, {}  # plain: line index -> its item, for lines that stayed plain text
    while i < len(lines):
        table, counts = _table_rows(lines[i:]), _counts(lines[i:])
        if table:
            used, rows = table, _table_cells(lines[i:i + table], pixels)
            above = plain.get(i - 1)
            if above is not None and len(lines[i - 1]) == 1:  # a lone line over a table: its heading
                above.text = f"### {above.text}"
            y = lines[i][0].y0
            items += [_Item(y + k * 1e-3, 0, ("columns: " if k == 0 else "row: ") + " | ".join(r))
                      for k, r in enumerate(rows)]
        elif counts:
            used, found = counts
            items += [_Item(lines[i][0].y0 + k * 1e-3, 0, text) for k, text in enumerate(found)]
        else:
            used = 1
            plain[i] = _Item(lines[i][0].y0, lines[i][0].x0, " ".join(b.text for b in lines[i]))
            items.append(plain[i])
        i += used
    return "\n".join(item.text for item in _reading_order(items))


def _reading_order(items: list[_Item]) -> list[_Item]:
    """Top to bottom; items within 8 px of a line's first item are on that line, left to right
    (inline labels differ by a few pixels in where their text starts)."""
    ordered, line = [], []
    for item in sorted(items, key=lambda item: item.y):
        if line and item.y - line[0].y > 8:
            ordered += sorted(line, key=lambda i: i.x)
            line = []
        line.append(item)
    return ordered + sorted(line, key=lambda i: i.x)


def read_screen(image, threads: int = 1) -> str:
    """OCR + layout of one screenshot (path, PIL image or RGB array): its screen text."""
    from .ocr import as_rgb_array, read_text_boxes

    pixels = as_rgb_array(image)
    return layout(read_text_boxes(pixels, threads), pixels)


# ------------------------------------------------------------------ what pixels can carry

_KIND = re.compile(r"^field: (?P<label>.*) \[(?P<kind>.*)\]$")


def _visible_kind(kind: str) -> str:
    if kind.startswith("select"):
        options = kind.partition(":")[2].split(" / ")
        return f"select: {options[0].strip()}" if options[0].strip() else "select"
    if kind.startswith("checkbox"):
        return "checkbox (checked)" if "(checked)" in kind else "checkbox"
    if kind == "textarea":
        return "textarea"
    base, _, rest = kind.partition(" ")
    if base == "date":
        return "date"
    if base == "datetime-local":
        return "datetime"
    value = re.match(r"= (.*?)(?: max \d+)?$", rest)
    return f"input = {value.group(1)}" if value else "input"


def visible_text(screen_text: str) -> str:
    """A DOM screen text reduced to what a screenshot shows: every text-like input is `[input]`
    (its type and maximum length are invisible), a select shows its first option only."""
    out = []
    for line in screen_text.splitlines():
        match = _KIND.match(line)
        out.append(f"field: {match['label']} [{_visible_kind(match['kind'])}]" if match else line)
    return "\n".join(out)


def visible_words(screen_text: str) -> list[str]:
    """The words a screenshot shows, from a screen text: labels, headings and cells, an input's
    value and a select's shown option, without the format's keywords (`field:`, `[input]`, ...)."""
    words = []
    for line in visible_text(screen_text).replace("\u2026", "...").splitlines():
        match = _KIND.match(line)
        if match:
            kind = match["kind"]
            shown = kind.partition(":")[2] if kind.startswith("select:") else kind.partition("=")[2]
            line = f"{match['label']} {shown}"
        else:
            line = re.sub(r"^(columns|row|count|menu):|^#+", " ", line)
        words += line.replace(" | ", " ").replace(" = ", " ").split()
    return words


def word_recall(recovered: str, truth: str) -> float:
    """The share of `visible_words(truth)` found in `visible_words(recovered)` (each matched at most
    once): how many of the words a screen shows its reading kept, exactly."""
    from collections import Counter

    words, read = Counter(visible_words(truth)), Counter(visible_words(recovered))
    return sum((words & read).values()) / sum(words.values()) if words else 1.0


def reading_scores(recovered: str, dom_text: str) -> dict:
    """How well a reading of the pixels (`read_screen`) recovers a screen, against its DOM text:
    visible words recalled, lines recovered of what pixels can show (`visible_text`), pages exactly
    right, and lines recovered of the full DOM text (the rest is what pixels cannot carry)."""
    visible = line_recovery(recovered, visible_text(dom_text))
    return {"word_recall": word_recall(recovered, dom_text), "line_recall": visible["recall"],
            "page_exact": visible["exact"], "dom_line_recall": line_recovery(recovered, dom_text)["recall"]}


def line_recovery(recovered: str, truth: str) -> dict:
    """How much of `truth`'s lines `recovered` has: {"lines", "recovered", "recall", "exact"}.

    Lines are compared as a multiset (each truth line matched at most once), after collapsing
    runs of spaces; `exact` is True when both have the same lines in the same order.
    """
    from collections import Counter

    def norm(text):  # OCR reads an ellipsis as three dots
        return [" ".join(line.replace("\u2026", "...").split()) for line in text.splitlines() if line.strip()]

    got, want = norm(recovered), norm(truth)
    hits = sum((Counter(got) & Counter(want)).values())
    return {"lines": len(want), "recovered": hits, "recall": hits / len(want) if want else 1.0, "exact": got == want}
