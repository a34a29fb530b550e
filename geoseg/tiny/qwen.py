"""A tiny, randomly initialised Qwen3-VL grounder built offline, saved with ``save_pretrained`` and loaded back by the
real transformers backend through ``from_pretrained`` (the same path the paper's Qwen3-VL-32B-Instruct takes).

Nothing is downloaded: the tokenizer is a ``tokenizers`` WordLevel model over a small vocabulary plus Qwen's special
tokens (``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>`` ...), wrapped in ``PreTrainedTokenizerFast``; the
image processor is Qwen's (patch 16, merge 2) capped at 128x128 pixels so an image costs at most 16 vision tokens;
the video processor is ``Qwen3VLVideoProcessor()`` with defaults (the processor requires one); the chat template is
written here in Qwen's ``<|im_start|>role ... <|im_end|>`` format.

The weights are random: free decoding gives random tokens in which the parser normally finds no box; with
constrained decoding (``geoseg.grounding.constrained``, the transformers grounder's default) the answer is a
well-formed box of random place. Either way the tiny model exercises loading, the chat template, image processing,
generation and parsing, and its boxes and masks mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from geoseg.tiny.cache import build_atomically
from geoseg.types import TINY_MODEL_WARNING

TINY_GROUNDER_SUBDIR = "qwen3vl"
TINY_QWEN25VL_SUBDIR = "qwen2_5vl"

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)

# A small vocabulary: JSON punctuation, digits, the prompt's own words and some remote-sensing nouns.
_WORDS: tuple[str, ...] = (
    "{", "}", "[", "]", '"', ",", ":", ".", "-", "(", ")", "?", "!", "'", "/", "=", "<", ">", "_", "%",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    "bbox", "bbox_2d", "prompt", "label", "positive_points", "null", "true", "false",
    "system", "user", "assistant", "you", "are", "a", "an", "the", "of", "in", "on", "at", "to", "and", "or", "is",
    "with", "that", "which", "this", "image", "question", "find", "locate", "target", "region", "object", "reply",
    "json", "only", "no", "other", "text", "box", "corner", "top", "left", "bottom", "right", "tight", "around",
    "coordinates", "grid", "relative", "width", "height", "pixel", "pixels", "x", "y", "if", "nothing", "matches",
    "empty", "list", "point", "points", "inside", "every", "entry", "one", "two", "short", "entity", "phrase", "e",
    "g", "red", "roofed", "remote", "sensing", "visual", "grounding", "assistant", "aerial", "satellite", "read",
    "may", "need", "reasoning", "refers", "building", "buildings", "roof", "house", "road", "roads", "bridge",
    "river", "lake", "pond", "water", "tree", "trees", "forest", "field", "farmland", "car", "cars", "vehicle",
    "truck", "parking", "lot", "ship", "harbor", "airport", "runway", "plane", "stadium", "court", "tennis",
    "pool", "swimming", "largest", "smallest", "nearest", "north", "south", "east", "west", "between", "next",
    "near", "green", "white", "dark", "round", "square", "shadow", "crop", "grass", "bare", "soil", "urban",
    "rural", "traffic", "nature",
)


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {"[UNK]": 0}
    for w in (*_WORDS, *SPECIAL_TOKENS):
        vocab.setdefault(w, len(vocab))
    return vocab


def build_tiny_tokenizer():
    """An offline WordLevel tokenizer with Qwen's special tokens, wrapped in ``PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
    )


#: Qwen's chat format (system/user/assistant turns between <|im_start|> and <|im_end|>, an image as
#: <|vision_start|><|image_pad|><|vision_end|>), written for this project.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def build_tiny_processor():
    """Qwen3-VL processor: the offline tokenizer, Qwen's image processor (<= 128x128 px) and a default video one."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=64 * 64,
        max_pixels=128 * 128,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_config(vocab: dict[str, int]):
    """A random-weight Qwen3-VL config: 2 text layers of width 32, 2 vision blocks of width 32 (~0.15 M params)."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [1, 1, 2],
                "mrope_interleaved": True,
            },
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 32,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )


def build_tiny_qwen25vl_processor():
    """Qwen2.5-VL processor: the same offline tokenizer, Qwen's image processor at patch 14 (<= 112x112 px)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=112 * 112,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen25vl_config(vocab: dict[str, int]):
    """A random-weight Qwen2.5-VL config (windowed vision attention, 2 + 2 layers of width 32)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "pad_token_id": vocab["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": vocab["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )


def _build_vlm(root: Path, subdir: str, kind: str, make_processor, make_config, model_class: str, seed: int) -> Path:
    """Build one tiny VLM into ``root / subdir`` through :func:`geoseg.tiny.cache.build_atomically`."""

    def build(tmp: Path) -> dict:
        import torch
        import transformers

        processor = make_processor()
        vocab = processor.tokenizer.get_vocab()
        config = make_config(vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(transformers, model_class)(config).eval()
        model.generation_config.eos_token_id = vocab["<|im_end|>"]
        model.generation_config.pad_token_id = vocab["<|endoftext|>"]
        model.generation_config.do_sample = False
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# tiny random {model_class} (geolabel)\n\n"
            f"Randomly initialised (seed {seed}); built offline by geoseg.tiny.qwen. {TINY_MODEL_WARNING}.\n"
        )
        return {"seed": seed}

    return build_atomically(Path(root) / subdir, kind, build)


def build_tiny_grounder_model(root: Path, seed: int = 0) -> Path:
    """Build the tiny Qwen3-VL + processor into ``root / "qwen3vl"`` (idempotent) and return that directory.

    The build happens in a temporary sibling directory that is renamed into place, so concurrent builders and
    interrupted builds never leave a half-written model behind.
    """
    return _build_vlm(
        root,
        TINY_GROUNDER_SUBDIR,
        "tiny-qwen3vl",
        build_tiny_processor,
        build_tiny_config,
        "Qwen3VLForConditionalGeneration",
        seed,
    )


def build_tiny_qwen25vl_model(root: Path, seed: int = 0) -> Path:
    """Build a tiny Qwen2.5-VL into ``root / "qwen2_5vl"`` (idempotent): the second model family the transformers
    backend supports; it answers in pixels of its resized input (``convention="pixel"``,
    ``pixel_frame="model_input"``)."""
    return _build_vlm(
        root,
        TINY_QWEN25VL_SUBDIR,
        "tiny-qwen2_5vl",
        build_tiny_qwen25vl_processor,
        build_tiny_qwen25vl_config,
        "Qwen2_5_VLForConditionalGeneration",
        seed,
    )
