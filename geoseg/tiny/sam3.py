"""The tiny random SAM3 pair (detector for text prompts, tracker for point prompts) and their processors.

The tracker's ViT backbone holds the detector's weights, as in facebook/sam3 where one Perception Encoder backbone
feeds both heads. The tokenizer is an offline word-level vocabulary (unknown words map to [UNK]).
"""

from __future__ import annotations

from pathlib import Path

from geoseg.tiny.cache import build_atomically

SAM3_DIRNAME = "sam3_tiny"

#: The tiny SAM3 input side (pixels); 112 = 8 patches of 14.
SAM3_TINY_IMAGE_SIZE = 112

#: Word list of the offline SAM3 tokenizer (a word-level vocabulary; unknown words map to [UNK]).
_SAM3_WORD_TEXT = (
    "a an the of on in at with near and or to by from left right top bottom center middle north south east west "
    "large small big long white red green blue dark light gray grey black brown yellow "
    "building buildings house houses roof road roads street car cars vehicle vehicles truck bus parking lot "
    "tree trees forest field farmland crop river water lake pond sea bridge ship boat harbor airport plane "
    "runway stadium court pool tank tower railway train soil grass park area region object target"
)
_SAM3_WORDS = tuple(_SAM3_WORD_TEXT.split())
_SAM3_SPECIALS = ("[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>")


def _sam3_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SAM3_SPECIALS + tuple(dict.fromkeys(_SAM3_WORDS)))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=32,
    ), vocab


def _sam3_vision_config(size: int, hidden: int = 32, layers: int = 2) -> dict:
    grid = size // 14
    vit = {
        "model_type": "sam3_vit_model",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": size,
        "patch_size": 14,
        "window_size": 4,
        "global_attn_indexes": list(range(layers - 1, layers)),
        "pretrain_image_size": size,
    }
    return {
        "backbone_config": vit,
        "fpn_hidden_size": 32,
        "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
    }


def build_tiny_sam3(
    root: Path, *, image_size: int = SAM3_TINY_IMAGE_SIZE, vit_width: int = 32, vit_layers: int = 2
) -> Path:
    """Build the tiny SAM3 pair (detector for text prompts, tracker for point prompts) and their processors.

    Returns the directory holding ``detector/`` and ``tracker/``. Idempotent. The keyword arguments size the ViT
    backbone (the benchmark uses a larger random one to show where the time goes); non-default sizes get their own
    directory. ``image_size`` must be a multiple of 56 (patch 14, FPN down to 1/2 of the patch grid).
    """
    if image_size % 56 or image_size < 56 or vit_width % 2 or vit_width < 8 or vit_layers < 1:
        raise ValueError(f"bad tiny SAM3 size: image_size={image_size}, vit_width={vit_width}, vit_layers={vit_layers}")
    default = (image_size, vit_width, vit_layers) == (SAM3_TINY_IMAGE_SIZE, 32, 2)
    dirname = SAM3_DIRNAME if default else f"{SAM3_DIRNAME}_{image_size}px_w{vit_width}_l{vit_layers}"

    def build(tmp: Path) -> None:
        import torch
        from transformers import (
            Sam3Config,
            Sam3ImageProcessor,
            Sam3Model,
            Sam3Processor,
            Sam3TrackerConfig,
            Sam3TrackerModel,
            Sam3TrackerProcessor,
        )

        size = image_size
        tokenizer, vocab = _sam3_tokenizer()
        vision = _sam3_vision_config(size, vit_width, vit_layers)
        small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
        det_cfg = Sam3Config(
            vision_config=vision,
            text_config={
                "model_type": "clip_text_model",
                "vocab_size": len(vocab),
                "hidden_size": 32,
                "intermediate_size": 64,
                "projection_dim": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 32,
                "bos_token_id": vocab["<|startoftext|>"],
                "eos_token_id": vocab["<|endoftext|>"],
                "pad_token_id": vocab["[PAD]"],
            },
            geometry_encoder_config={**small, "num_layers": 1},
            detr_encoder_config={**small, "num_layers": 1},
            detr_decoder_config={**small, "num_layers": 1, "num_queries": 8},
            mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
        )
        trk_cfg = Sam3TrackerConfig(
            vision_config={"model_type": "sam3_vision_model", **vision},
            prompt_encoder_config={"hidden_size": 32, "image_size": size, "patch_size": 14, "mask_input_channels": 4},
            mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            detector = Sam3Model(det_cfg)
            tracker = Sam3TrackerModel(trk_cfg)
        # One backbone for both heads, as in the released checkpoint (the tracker only has its own FPN neck).
        tracker.vision_encoder.backbone.load_state_dict(detector.vision_encoder.backbone.state_dict())

        image_processor = Sam3ImageProcessor(
            size={"height": size, "width": size}, mask_size={"height": size // 14 * 4, "width": size // 14 * 4}
        )
        detector.save_pretrained(tmp / "detector")
        Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp / "detector")
        tracker.save_pretrained(tmp / "tracker")
        Sam3TrackerProcessor(image_processor=image_processor).save_pretrained(tmp / "tracker")
        return {"seed": 0, "image_size": image_size, "vit_width": vit_width, "vit_layers": vit_layers}

    return build_atomically(Path(root) / dirname, "tiny-sam3", build)
