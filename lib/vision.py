"""The vision path of the Ghost Architect: Gemma 3 (image + text -> text) with LoRA on its language
and vision layers, trained on screenshot -> DDL conversations.

On a GPU with the hub, the model is a Gemma 3 vision checkpoint (default `DEFAULT_HUB_MODEL`,
4B) loaded by unsloth's FastVisionModel and batched by its UnslothVisionDataCollator (unsloth's
Gemma 3 vision notebook: docs.unsloth.ai/basics/vision-fine-tuning). Offline there are no vision
weights: `TINY_RANDOM` builds a Gemma3ForConditionalGeneration with random weights from a small
config (2 text layers, 2 SigLIP layers, 224 px images, 16 image tokens), with the real Gemma 3
tokenizer. It runs every line of the path (processor, chat template with an image, response-only
labels, LoRA on both towers, NF4, training, generation) and learns nothing worth measuring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .run_spec import RunSpec

DEFAULT_HUB_MODEL = "unsloth/gemma-3-4b-it"
TINY_RANDOM = "tiny-random"
IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN = "<image_soft_token>", "<start_of_image>", "<end_of_image>"
# Linear layers of both towers: Gemma 3's decoder (q/k/v/o, gate/up/down) and SigLIP's encoder
# (q/k/v, out_proj, fc1/fc2). The projector's weight is a bare Parameter, so it stays frozen.
LANGUAGE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class VisionPreset:
    """A training profile of the source plan (../seeds/000, "Two Training Paths"): a run spec and
    the epochs it trains for (`steps_for` turns them into max_steps for a dataset)."""

    name: str
    epochs: int
    spec: RunSpec

    def to_dict(self) -> dict:
        """One row for a table: name, epochs and the settings the presets differ in or share."""
        a, o, lo = self.spec.adapter, self.spec.optimisation, self.spec.loading
        return {"name": self.name, "epochs": self.epochs, "precision": lo.precision, "rank": a.rank, "alpha": a.alpha,
                "use_rslora": a.use_rslora, "use_dora": a.use_dora, "max_seq_length": o.max_seq_length,
                "batch_size": o.batch_size, "gradient_accumulation_steps": o.gradient_accumulation_steps,
                "learning_rate": o.learning_rate}


# Both presets: batch 1 with 4 accumulation steps, the Trinity's rank and alpha, NF4 base.
_VISION_RUN = RunSpec.of(batch_size=1, gradient_accumulation_steps=4, learning_rate=2e-4)
PRESETS = {
    # Colab T4, 16 GB: QLoRA + rsLoRA only, 1 epoch, 2048 tokens.
    "T4": VisionPreset("T4", 1, _VISION_RUN.replace(use_dora=False, max_seq_length=2048)),
    # A 24 GB GPU (the source's Modal A10G): the full Trinity, 3 epochs, 4096 tokens.
    "24GB": VisionPreset("24GB", 3, _VISION_RUN.replace(use_dora=True, max_seq_length=4096)),
}


def preset(name: str, epochs: int | None = None, **changes) -> VisionPreset:
    """PRESETS[name], with `epochs` and `changes` (any RunSpec field, e.g. model, backend, max_steps).
    Raises ValueError for an unknown name or field."""
    if name not in PRESETS:
        raise ValueError(f"unknown vision preset {name!r}: choose one of {sorted(PRESETS)}")
    chosen = PRESETS[name]
    return VisionPreset(name, chosen.epochs if epochs is None else epochs, chosen.spec.replace(**changes))


def default_vision_model() -> str:
    """The hub's 4B vision checkpoint where a CUDA GPU can train it, else the tiny random model."""
    return DEFAULT_HUB_MODEL if torch.cuda.is_available() else TINY_RANDOM


# ------------------------------------------------------------------ the tiny random model

def gemma3_vision_tokenizer(tokenizer_folder: str | Path | None = None):
    """A Gemma 3 tokenizer (from `tokenizer_folder`, default the embedded 270M's) with the image
    placeholder `<image_soft_token>` added (id 262144, as in the 4B/12B/27B checkpoints, whose
    vocabulary the 270M's lacks)."""
    from transformers import AutoTokenizer

    from .model import gemma3_chat_template, resolve_model

    # Named like the hub checkpoints' tokenizer_config.json, which Gemma3Processor reads; saved with it.
    named = {"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN}
    folder = tokenizer_folder or resolve_model("gemma-3-270m").path_or_id
    tokenizer = AutoTokenizer.from_pretrained(str(folder), extra_special_tokens=named)
    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = gemma3_chat_template()
    return tokenizer


def build_tiny_random(folder: str | Path, seed: int = 0, image_size: int = 224, tokens_per_image: int = 16,
                      tokenizer_folder: str | Path | None = None) -> Path:
    """Write a random-initialised Gemma3ForConditionalGeneration and its processor to `folder`.

    Same classes, chat template, tokenizer and image pipeline as the hub checkpoints; small sizes:
    text 2 layers x 64 wide, vision 2 layers x 32 wide, `image_size` px images in 14 px patches,
    average-pooled to `tokens_per_image` tokens (the 4B: 896 px, 256 tokens). About 17M
    parameters, nearly all in the 262,145 x 64 embedding. Deterministic in `seed`. Returns `folder`.
    `tokenizer_folder`: see `gemma3_vision_tokenizer`.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    from .model import gemma3_chat_template

    side = math.isqrt(tokens_per_image)
    if side * side != tokens_per_image or (image_size // 14) % side:
        raise ValueError(f"tokens_per_image={tokens_per_image} must be a square whose side divides "
                         f"image_size/14 = {image_size // 14}")
    tokenizer = gemma3_vision_tokenizer(tokenizer_folder)
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=128,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=tokens_per_image, image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.convert_tokens_to_ids(EOI_TOKEN))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projector's weight to zeros (checkpoints overwrite it): left so,
    # the image would not reach the language model and no gradient would reach the vision tower.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, config.vision_config.hidden_size ** -0.5)
    processor = Gemma3Processor(Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}),
                                tokenizer, chat_template=gemma3_chat_template(), image_seq_length=tokens_per_image)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def resolve_vision_model(name: str, cache_dir: str | Path | None = None) -> str:
    """A folder or hub id to load: `TINY_RANDOM` is built once under the course cache
    (GEMMA_COURSE_CACHE), anything else is returned as given."""
    from .model import DEFAULT_CACHE

    if name != TINY_RANDOM:
        return name
    from .artifacts import build_once

    folder = Path(cache_dir or DEFAULT_CACHE) / "tiny-random-gemma3-vision"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return str(build_once(folder, build_tiny_random))  # under a lock, in a staging folder of its own


# ------------------------------------------------------------------ loading with LoRA

def language_and_vision_targets() -> str:
    """peft `target_modules` as a regex: the Trinity's 7 projections of the language model and
    the 6 Linear layers of the SigLIP vision tower (what unsloth's `finetune_vision_layers=True,
    finetune_language_layers=True` selects)."""
    return (rf".*language_model.*\.({'|'.join(LANGUAGE_MODULES)})"
            rf"|.*vision_tower.*\.({'|'.join(VISION_MODULES)})")


def load_vision_model(spec: RunSpec):
    """(peft model, processor): the Gemma 3 vision checkpoint `spec.model` (hub id, folder or
    `TINY_RANDOM`), NF4 if `spec.loading` says so, with LoRA (rank, alpha, rsLoRA, DoRA from
    `spec.adapter`) on the language and vision layers, ready to train with the spec's gradient
    checkpointing (unsloth's offloaded by default, standard under peft). Raises ValueError as
    `lib.training.compute_dtype_of` does.

    backend "unsloth" (CUDA only: unsloth's CPU fallback raises NotImplementedError for vision
    models) uses FastVisionModel; "peft" uses transformers + bitsandbytes + peft. DoRA layers get
    `lib.fast_dora` unless spec.loading.dora_implementation is "peft", as in the text path.
    """
    from .fast_dora import use_fast_dora
    from .training import compute_dtype_of

    path = resolve_vision_model(spec.model)
    trinity, loading, mode = spec.adapter, spec.loading, spec.loading.checkpointing
    compute_dtype = compute_dtype_of(spec)
    if loading.backend == "unsloth":
        from unsloth import FastVisionModel

        model, processor = FastVisionModel.from_pretrained(path, load_in_4bit=loading.load_in_4bit,
                                                           max_seq_length=spec.optimisation.max_seq_length)
        model = FastVisionModel.get_peft_model(
            model, finetune_vision_layers=True, finetune_language_layers=True, finetune_attention_modules=True,
            finetune_mlp_modules=True, r=trinity.rank, lora_alpha=trinity.alpha, use_rslora=trinity.use_rslora,
            use_dora=trinity.use_dora, lora_dropout=trinity.dropout, bias="none",
            use_gradient_checkpointing={"off": False, "standard": True, "offloaded": "unsloth"}[mode])
        FastVisionModel.for_training(model)
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from .model import keep_4bit_layout_on_cpu, nf4_config

        quantization = nf4_config(compute_dtype, loading.precision == "nf4-dq") if loading.load_in_4bit else None
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=compute_dtype, quantization_config=quantization)
        if loading.load_in_4bit and not torch.cuda.is_available():
            keep_4bit_layout_on_cpu(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=mode != "off",
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        config = LoraConfig(r=trinity.rank, lora_alpha=trinity.alpha, use_rslora=trinity.use_rslora,
                            use_dora=trinity.use_dora, target_modules=language_and_vision_targets(),
                            lora_dropout=trinity.dropout, bias="none")
        model = get_peft_model(model, config)
        processor = AutoProcessor.from_pretrained(path)
    if trinity.use_dora and loading.dora_implementation == "fast":
        use_fast_dora(model)
    return model, processor


def adapted_towers(model) -> dict[str, int]:
    """How many LoRA-adapted Linear layers sit in each tower: {'language': n, 'vision': m}."""
    names = [name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    return {"language": sum("language_model" in n for n in names), "vision": sum("vision_tower" in n for n in names)}


def load_vision_for_inference(name: str, adapter_dir: str | Path | None, compute_dtype: torch.dtype,
                              load_in_4bit: bool = True):
    """(model in eval mode, processor) for generation: the checkpoint (NF4 unless `load_in_4bit` is
    False: the adapter was trained on the NF4 base) with the peft adapter in `adapter_dir` on top,
    if given. Plain transformers + peft on any backend. Raises FileNotFoundError if `adapter_dir`
    holds no adapter_config.json."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .model import keep_4bit_layout_on_cpu, nf4_config

    path = resolve_vision_model(name)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=compute_dtype, quantization_config=nf4_config(compute_dtype) if load_in_4bit else None,
        device_map="auto" if torch.cuda.is_available() else None)
    if load_in_4bit and not torch.cuda.is_available():
        keep_4bit_layout_on_cpu(model)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train it first (chapter 08)")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), AutoProcessor.from_pretrained(path)


# ------------------------------------------------------------------ data

class Conversations(torch.utils.data.Dataset):
    """The vision conversations of a list of GhostExamples, images opened on access (a few MB each
    decoded, so not all held at once). Items: {"messages": [...]} with PIL images in the user turn,
    the layout both collators read."""

    def __init__(self, examples, folder: str | Path):
        self.examples, self.folder = list(examples), Path(folder)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        from .ghost_dataset import vision_messages

        messages = vision_messages(self.examples[index], self.folder)
        for item in messages[0]["content"]:
            if item["type"] == "image":
                with Image.open(item["image"]) as image:
                    item["image"] = image.convert("RGB")
        return {"messages": messages}


def conversation_images(messages: list[dict]) -> list:
    """The images of a conversation, in order (the `image` value of every image item)."""
    return [item["image"] for message in messages if isinstance(message["content"], list)
            for item in message["content"] if item["type"] == "image"]


class VisionCollator:
    """The transformers-only equivalent of UnslothVisionDataCollator with responses-only training:
    chat template + processor (images expanded to their soft tokens, `token_type_ids` marking
    them), right padding, labels = input ids on the assistant's answer and -100 elsewhere (prompt,
    image tokens, padding).

    Raises ValueError when a conversation is longer than `max_seq_length` tokens: truncating would
    cut the answer (or an image's tokens) and train on a broken example.
    """

    def __init__(self, processor, max_seq_length: int):
        self.processor, self.max_seq_length = processor, max_seq_length
        tokenizer = processor.tokenizer
        self.response_start = tokenizer.encode("<start_of_turn>model\n", add_special_tokens=False)

    def __call__(self, items: list[dict]) -> dict:
        conversations = [item["messages"] for item in items]
        texts = [self.processor.apply_chat_template(c, tokenize=False) for c in conversations]
        self.processor.tokenizer.padding_side = "right"
        batch = self.processor(text=texts, images=[conversation_images(c) for c in conversations],
                               padding=True, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > self.max_seq_length:
            raise ValueError(f"a conversation has {int(lengths.max())} tokens, over max_seq_length="
                             f"{self.max_seq_length}: raise max_seq_length (images alone take "
                             f"{self.processor.image_seq_length} tokens each)")
        labels = torch.full_like(batch["input_ids"], -100)
        for row, ids in enumerate(batch["input_ids"].tolist()):
            start = self.answer_start(ids)
            labels[row, start:lengths[row]] = batch["input_ids"][row, start:lengths[row]]
        batch["labels"] = labels
        return batch

    def answer_start(self, ids: list[int]) -> int:
        """Index of the first answer token: just after the last `<start_of_turn>model\\n`."""
        width = len(self.response_start)
        for start in range(len(ids) - width, -1, -1):
            if ids[start:start + width] == self.response_start:
                return start + width
        raise ValueError("no '<start_of_turn>model' in the conversation: the assistant turn is missing")


def collator_for(backend: str, model, processor, max_seq_length: int):
    """UnslothVisionDataCollator (responses only) under unsloth, `VisionCollator` under peft."""
    if backend == "unsloth":
        from unsloth.trainer import UnslothVisionDataCollator

        return UnslothVisionDataCollator(model, processor, max_seq_length=max_seq_length,
                                         train_on_responses_only=True, instruction_part="<start_of_turn>user\n",
                                         response_part="<start_of_turn>model\n")
    return VisionCollator(processor, max_seq_length)


def steps_for(chosen: VisionPreset, train_examples: int) -> int:
    """Optimizer steps for `chosen.epochs` epochs of `train_examples` conversations."""
    o = chosen.spec.optimisation
    return chosen.epochs * math.ceil(train_examples / (o.batch_size * o.gradient_accumulation_steps))


# ------------------------------------------------------------------ generation

@torch.no_grad()
def generate_ddl(model, processor, images: list, instruction: str, max_new_tokens: int,
                 batch_size: int = 2) -> list[str]:
    """Greedy answers to `instruction` about each image (PIL images or paths), decoded without
    special tokens; stops at <end_of_turn>."""
    from PIL import Image

    tokenizer = processor.tokenizer
    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    device = next(model.parameters()).device
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues every row from its last token
    answers = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = [Image.open(i).convert("RGB") if isinstance(i, (str, Path)) else i.convert("RGB")
                     for i in images[start:start + batch_size]]
            batch = processor(text=[text] * len(chunk), images=[[image] for image in chunk], padding=True,
                              return_tensors="pt").to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
            answers.extend(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return answers
