"""The Ghost Architect tool: SQL extraction, schema summary, upload checks, and the CLI on a folder
(screenshots through OCR + the text model by default, or through an explicitly chosen vision model)."""

import io

import pytest

from lib.ghost_architect import (GhostArchitect, UploadError, extract_sql, main, read_upload, schema_summary,
                                 screenshots_in)
from lib.ghost_dataset import build_dataset

DDL = """CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER REFERENCES authors(id), title TEXT);
CREATE TABLE tags (label TEXT);"""


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ghost")
    return folder, build_dataset(folder, examples=6, seed=4, screens_per_schema=2, ocr=False)


def png_bytes(size=(40, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_extract_sql_takes_the_fenced_block_or_the_whole_text():
    assert extract_sql("Here:\n```sql\nCREATE TABLE a (x INT);\n```\nDone.") == "CREATE TABLE a (x INT);"
    assert extract_sql("  CREATE TABLE a (x INT);\n") == "CREATE TABLE a (x INT);"


def test_schema_summary_lists_tables_keys_and_relationships():
    tables, relationships = schema_summary(DDL)
    assert tables.to_dict("records") == [
        {"table": "authors", "columns": 2, "primary key": "id", "foreign keys": 0},
        {"table": "books", "columns": 3, "primary key": "id", "foreign keys": 1},
        {"table": "tags", "columns": 1, "primary key": "none", "foreign keys": 0}]
    assert relationships.to_dict("records") == [{"from": "books.author_id", "to": "authors.id"}]


def test_uploads_are_checked_with_messages_naming_the_file():
    image = read_upload("shot.png", png_bytes())
    assert image.size == (40, 30) and image.mode == "RGB"
    with pytest.raises(UploadError, match="empty.png: the file is empty"):
        read_upload("empty.png", b"")
    with pytest.raises(UploadError, match=r"big.png: .* over the 1 MB limit"):
        read_upload("big.png", b"\x89PNG" + bytes(2 * 2**20), max_bytes=2**20)
    with pytest.raises(UploadError, match="notes.png: not an image"):
        read_upload("notes.png", b"CREATE TABLE a (x INT);")
    with pytest.raises(UploadError, match="wide.png: 40000 x 1001 pixels is too large"):
        read_upload("wide.png", png_bytes((40_000, 1001)))  # a few KB compressed, 40M pixels decoded
    with pytest.raises(UploadError, match="cut.png: not an image"):
        read_upload("cut.png", png_bytes()[:60])  # a truncated PNG


def test_a_transparent_upload_is_composited_on_white():
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))  # transparent black, as many screenshot tools save
    ImageDraw.Draw(image).text((5, 10), "Orders", fill=(0, 0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    read = read_upload("clip.png", buffer.getvalue())
    assert read.mode == "RGB" and read.getpixel((1, 1)) == (255, 255, 255) and read.getpixel((1, 1)) != (0, 0, 0)


def test_bad_adapters_and_models_are_refused_before_anything_loads(tiny_source, tmp_path):
    with pytest.raises(FileNotFoundError, match="--text-adapter .*nowhere: does not exist"):
        GhostArchitect(tiny_source.path_or_id, text_adapter=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--vision-adapter .*empty: has no adapter_config.json"):
        GhostArchitect(tiny_source.path_or_id, vision_model="tiny-random", vision_adapter=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--vision-adapter needs --vision-model"):
        GhostArchitect(tiny_source.path_or_id, vision_adapter=str(tmp_path / "empty"))
    architect = GhostArchitect(tiny_source.path_or_id)
    assert architect._loaded == {} and architect.screenshot_path.startswith("OCR + text model")


def test_screenshots_in_expands_folders_and_names_what_is_missing(screens, tmp_path):
    folder, examples = screens
    found = screenshots_in([str(folder / "images")])
    assert [p.name for p in found] == sorted(p.name for p in (folder / "images").glob("*.png"))
    with pytest.raises(FileNotFoundError, match="nowhere: no such file"):
        screenshots_in(["nowhere"])
    with pytest.raises(ValueError, match="no .png"):
        screenshots_in([str(tmp_path)])


def test_cli_reads_screenshots_through_ocr_by_default(screens, tiny_source, tmp_path, capsys):
    import shutil

    folder, examples = screens
    text_file = tmp_path / "screen.txt"
    text_file.write_text(examples[0].screen_text)
    images = tmp_path / ("screenshots-in-a-folder-with-a-long-name-" * 2)  # paths wider than the console
    shutil.copytree(folder / "images", images)
    status = main([str(images), "--text", str(text_file), "--text-model", tiny_source.path_or_id,
                   "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert status == 1  # the random tiny model's 4 tokens are no valid DDL: not every screen passes
    for example in examples:
        assert str(images / example.image.split("/")[-1]) in out  # each path whole, however long
    assert out.count("OCR + text model") == len(examples) and "ocr " in out  # which path answered, timed
    assert str(text_file) in out and out.count("validity checks") == len(examples) + 1
    assert f"0 of {len(examples) + 1} screens gave DDL that passes every check" in out


def test_the_vision_path_is_an_explicit_choice(screens, tiny_source, capsys):
    folder, examples = screens
    assert main([str(folder / examples[0].image), "--vision-model", "tiny-random", "--text-model",
                 tiny_source.path_or_id, "--max-new-tokens", "4"]) == 1
    assert "vision model tiny-random" in capsys.readouterr().out


def test_cli_reports_bad_input_and_exits_2(tmp_path, capsys):
    (tmp_path / "fake.png").write_text("not a picture")
    assert main([str(tmp_path / "fake.png"), "--vision-model", "tiny-random"]) == 2
    assert "fake.png: not an image" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().out
    assert main([str(tmp_path / "fake.png"), "--text-adapter", str(tmp_path / "typo")]) == 2  # before any model
    assert "--text-adapter" in capsys.readouterr().out
