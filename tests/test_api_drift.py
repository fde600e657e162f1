"""API drift: every keyword `lib` passes to the training stack's entry points is one the installed
version accepts by name, so an upstream rename fails here even where a branch cannot run (the GPU
branch of unsloth, the vision path on a real checkpoint). The calls are found in lib's source, not
listed by hand: a new call is checked as soon as it is written.

unsloth has two implementations: on a machine without a GPU, `import unsloth` installs its CPU
fallback (unsloth_zoo.cpu), whose signatures are read at run time; the GPU classes are read from
the installed source without importing them (they need CUDA). A keyword must be accepted by both.
unsloth's get_peft_model hands keywords it does not name to peft's LoraConfig, so those count as
accepted when LoraConfig names them."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The called name (last two dotted parts, or one) -> "module:attribute" of what it calls.
ENTRY_POINTS = {
    "FastModel.from_pretrained": "unsloth:FastModel.from_pretrained",
    "FastModel.get_peft_model": "unsloth:FastModel.get_peft_model",
    "FastVisionModel.from_pretrained": "unsloth:FastVisionModel.from_pretrained",
    "FastVisionModel.get_peft_model": "unsloth:FastVisionModel.get_peft_model",
    "get_peft_model": "peft:get_peft_model",
    "prepare_model_for_kbit_training": "peft:prepare_model_for_kbit_training",
    "LoraConfig": "peft:LoraConfig",
    "TrainingArguments": "transformers:TrainingArguments",
    "BitsAndBytesConfig": "transformers:BitsAndBytesConfig",
}

# Prints {"module:attribute": [accepted keyword names] or null (accepts any)} for what argv names.
# It runs in a fresh interpreter: importing unsloth patches transformers for the whole process.
SIGNATURES = r'''
import importlib, inspect, json, sys
import unsloth  # noqa: F401  (first, as the course imports it)
out = {}
for target in sys.argv[1:]:
    module, attribute = target.split(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    parameters = inspect.signature(obj).parameters.values()
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out[target] = {"named": named, "var_keyword": any(p.kind == p.VAR_KEYWORD for p in parameters)}
print(json.dumps(out))
'''


def calls_in_lib() -> list[tuple[str, str, int, list[str]]]:
    """(entry point, file, line, keyword names) of every call in lib/ to an ENTRY_POINTS name."""
    found = []
    for path in sorted((ROOT / "lib").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func, parts = node.func, []
            while isinstance(func, ast.Attribute):
                parts.insert(0, func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.insert(0, func.id)
            name = ".".join(parts[-2:]) if ".".join(parts[-2:]) in ENTRY_POINTS else parts[-1] if parts else ""
            if name in ENTRY_POINTS:
                keywords = [k.arg for k in node.keywords if k.arg is not None]
                found.append((name, path.name, node.lineno, keywords))
    return found


# unsloth's GPU implementations: entry point -> (file in the unsloth package, class, method). FastModel
# and FastVisionModel (a FastModel subclass) delegate get_peft_model to FastBaseModel's.
UNSLOTH_GPU = {
    "FastModel.from_pretrained": ("models/loader.py", "FastModel", "from_pretrained"),
    "FastVisionModel.from_pretrained": ("models/loader.py", "FastModel", "from_pretrained"),
    "FastModel.get_peft_model": ("models/vision.py", "FastBaseModel", "get_peft_model"),
    "FastVisionModel.get_peft_model": ("models/vision.py", "FastBaseModel", "get_peft_model"),
}


def static_signature(file: str, cls: str, method: str) -> dict:
    """{"named", "var_keyword"} of a method, read from unsloth's installed source (not imported)."""
    package = Path(importlib.util.find_spec("unsloth").submodule_search_locations[0])
    tree = ast.parse((package / file).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    return {"named": [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs],
                            "var_keyword": args.kwarg is not None}
    raise LookupError(f"unsloth/{file}: no {cls}.{method} (moved upstream?)")


def accepted(name: str, keyword: str, signatures: dict) -> bool:
    """Whether every implementation of entry point `name` takes `keyword`."""
    # The CPU fallback refuses vision models at from_pretrained, so its FastVisionModel is never
    # used there (lib.vision loads them with peft on a CPU): only the GPU class counts.
    implementations = [] if name.startswith("FastVisionModel.") else [signatures[ENTRY_POINTS[name]]]
    if name in UNSLOTH_GPU:
        implementations.append(static_signature(*UNSLOTH_GPU[name]))
    for signature in implementations:
        forwarded = name.endswith("get_peft_model") and signature["var_keyword"] and \
            keyword in signatures["peft:LoraConfig"]["named"]
        if keyword not in signature["named"] and not forwarded:
            return False
    return True


@pytest.fixture(scope="module")
def signatures():
    targets = sorted(set(ENTRY_POINTS.values()))
    result = subprocess.run([sys.executable, "-c", SIGNATURES, *targets], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lib_calls_every_entry_point_it_is_checked_for():
    called = {name for name, *_ in calls_in_lib()}
    assert called == set(ENTRY_POINTS), f"not called any more: {set(ENTRY_POINTS) - called}"


def test_every_keyword_is_accepted_by_name(signatures):
    unknown = []
    for name, file, line, keywords in calls_in_lib():
        unknown += [f"lib/{file}:{line}: {name}({k}=...)" for k in keywords if not accepted(name, k, signatures)]
    assert not unknown, "keywords the installed stack does not name:\n" + "\n".join(unknown)


def test_the_scan_finds_a_misspelled_keyword(tmp_path, monkeypatch, signatures):
    fake = tmp_path / "lib"
    fake.mkdir()
    (fake / "x.py").write_text("from peft import LoraConfig\nLoraConfig(r=8, lora_alfa=16)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    [(name, file, line, keywords)] = calls_in_lib()
    assert (name, line, keywords) == ("LoraConfig", 2, ["r", "lora_alfa"])
    assert accepted(name, "r", signatures) and not accepted(name, "lora_alfa", signatures)
    assert not accepted("FastModel.get_peft_model", "lora_alfa", signatures)
    assert not accepted("FastModel.from_pretrained", "use_dora", signatures)
