"""The vision path under unsloth on a CUDA GPU (chapter 08's GPU branch), on the tiny random model:
for each preset, FastVisionModel + LoRA on both towers, a few steps with UnslothVisionDataCollator,
generation, the adapter reloaded with plain transformers + peft. Prints a table, writes JSON.

    python -m tools.vision_gpu_check --data DIR [--tokenizer DIR] [--steps 3] [--out FILE]

--data: a folder from `lib.ghost_dataset.build_dataset` (no Chromium on the GPU machine, so carry
one); --tokenizer: a folder with a Gemma 3 tokenizer where the embedded package is not installed.
This checks the path runs on unsloth's GPU code; the tiny model's losses and SQL mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def progress(what: str, since: float) -> None:
    print(f"[{time.monotonic() - since:7.1f} s] {what}", flush=True)


def check(preset_name: str, data: Path, tiny: Path, steps: int, work: Path) -> dict:
    import torch

    from lib.fast_dora import fast_dora_layers
    from lib.ghost_dataset import INSTRUCTION, load_examples
    from lib.training import train_dataset
    from lib.vision import (Conversations, adapted_towers, collator_for, generate_ddl, load_vision_for_inference,
                            load_vision_model, preset)

    spec = preset(preset_name, model=str(tiny), backend="unsloth", compute_dtype="bfloat16", max_steps=steps,
                  warmup_steps=0, save_steps=steps, optim="adamw_8bit").spec
    started = time.monotonic()
    model, processor = load_vision_model(spec)
    progress(f"{preset_name}: loaded", started)
    examples = load_examples(data)
    train = Conversations([e for e in examples if e.split == "train"], data)
    collator = collator_for("unsloth", model, processor, spec.optimisation.max_seq_length)
    batch = collator([train[0]])
    labels = batch["labels"][0]
    answer = processor.tokenizer.decode(labels[labels != -100])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    result = train_dataset(model, processor, train, collator, spec, work / preset_name, "cuda")
    progress(f"{preset_name}: trained {steps} steps", started)
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    images = [data / e.image for e in examples[:2]]
    generated = generate_ddl(model, processor, images, INSTRUCTION, max_new_tokens=8)
    reloaded, reloaded_processor = load_vision_for_inference(str(tiny), work / preset_name / "adapter", torch.bfloat16)
    again = generate_ddl(reloaded, reloaded_processor, images, INSTRUCTION, max_new_tokens=8)
    return {"preset": preset_name, "model class": type(model.base_model.model).__name__,
            "adapted layers": adapted_towers(model), "fast DoRA layers": len(fast_dora_layers(model)),
            "labels decode to the answer": answer.startswith(train.examples[0].ddl),
            "LoRA B moved (language, vision)": (sum("language_model" in n for n in moved),
                                                 sum("vision_tower" in n for n in moved)),
            "steps": result.stats["steps"], "resumed from": result.stats["resumed_from"],
            "train seconds": result.stats["train_seconds_this_session"], "losses": (result.stats["first_loss"], result.stats["final_loss"]),
            "peak GiB": result.stats["peak_memory_gib"], "generated": generated,
            "reloaded generates": [bool(a) for a in again], "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("vision-gpu-check.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/vision-gpu-check"))
    args = parser.parse_args(argv)

    import unsloth  # noqa: F401  (before transformers, so it patches it)
    import torch

    from lib.vision import build_tiny_random

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)  # a run left there would be resumed, not trained
    tiny = build_tiny_random(args.work / "tiny", tokenizer_folder=args.tokenizer)
    rows = [check(name, args.data, tiny, args.steps, args.work) for name in ("T4", "24GB")]
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "unsloth": unsloth.__version__,
              "date": time.strftime("%Y-%m-%d"), "results": rows}
    args.out.write_text(json.dumps(report, indent=2, default=str))
    for row in rows:
        print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
