"""FLOPs per judged row: the judge's four questions sharing one image (``stages/judge.py``, one
shared prefix per row) against each question with its own copy of the image (the judge before it),
counted with ``torch.utils.flop_counter.FlopCounterMode``.

- ``miniature``: the demo's tiny LLaVA-NeXT (the real class, processor and chat template, only
  smaller), a batch of ``--rows`` rows (the three attributes, both feasibilities, photos with the
  demo's 128 px short side) through ``JudgeStage._p_yes``, and through the four-copies path as the
  judge ran it before: every prompt with its image, left-padded together, in forwards of at most
  ``generate.judge.max_tokens_per_forward`` tokens. Both paths' answers are compared.
- ``real``: llava-hf/llava-v1.6-mistral-7b-hf's architecture (CLIP ViT-L/14-336 + Mistral-7B) on
  the meta device, where FLOPs come from shapes with no weights and no arithmetic, component by
  component: the vision tower over the anyres views of each image, the projector, the language
  model over the token layout the real processor gives a 1024 px image (the questions through the
  miniature's tokenizer: no Mistral tokenizer ships offline), and the head at the positions read.
  Each question alone and unpadded, so the four-copies figure is a lower bound of what it cost.

    python benchmarks/judge_flops.py [--rows 8] [--max-tokens 16384] [--json judge-flops.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402 - sets HF_HUB_OFFLINE before anything imports huggingface_hub

ROWS = (  # attribute, feasibility, value
    ("background", "feasible", "snowy mountain road"),
    ("color", "infeasible", "neon green"),
    ("texture", "feasible", "short fur"),
    ("background", "infeasible", "surface of Mars"),
    ("color", "feasible", "tan"),
    ("texture", "infeasible", "elephant skin"),
)
CLASSES = ("Abyssinian", "Yorkshire Terrier", "Bengal")


def photos(short_side: int) -> list:
    """Three photo shapes (landscape, portrait, square) with the given short side."""
    import skimage.data
    from PIL import Image

    out = []
    for array in (skimage.data.chelsea(), skimage.data.astronaut()[:, 100:400], skimage.data.coffee()[:, 100:500]):
        image = Image.fromarray(array)
        scale = short_side / min(image.size)
        out.append(image.resize((round(image.width * scale), round(image.height * scale))))
    return out


def questions(count: int, short_side: int, prefix: str = "pet "):
    from varireal_ray.stages.judge import Questions, questions_for

    images = photos(short_side)
    return [
        Questions(images[i % len(images)], questions_for(a, f, f"{prefix}{CLASSES[i % len(CLASSES)]}", v))
        for i, (a, f, v) in ((i, ROWS[i % len(ROWS)]) for i in range(count))
    ]


def four_copies(stage, rows) -> list[list[float]]:
    """p(yes) as the judge computed it before: a prompt per question, each with its own copy of
    the row's image, all left-padded together, in forwards within the token budget."""
    import torch

    texts = [stage._chat(q) for row in rows for q, _ in row.pairs]
    inputs = stage.processor(images=[row.image for row in rows for _ in row.pairs], text=texts, padding=True, return_tensors="pt")
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    per_forward = max(1, stage.judge.max_tokens_per_forward // inputs["input_ids"].shape[1])
    p: list[float] = []
    for start in range(0, len(texts), per_forward):
        chunk = {k: v[start : start + per_forward] for k, v in inputs.items()}
        with torch.inference_mode():
            logits = stage.model(**chunk, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        p += stage.answers.p_yes(logits).tolist()
    return [p[4 * r : 4 * r + 4] for r in range(len(rows))]


def counted(fn) -> tuple[object, int]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


def miniature(count: int, max_tokens: int, cache_dir: str | None) -> dict:
    import numpy as np

    from varireal_ray.stages.judge import JudgeStage

    with tempfile.TemporaryDirectory() as out:
        config = harness.workload_config(out, 4, 1, cache_dir, f"generate.judge.max_tokens_per_forward={max_tokens}")
        stage = JudgeStage(config)
    rows = questions(count, config.generate.resolution, config.dataset.prefix)
    before, flops_before = counted(lambda: four_copies(stage, rows))
    after, flops_after = counted(lambda: stage._p_yes(rows))
    return {
        "rows": count,
        "flops_per_row_four_copies": round(flops_before / count),
        "flops_per_row_shared": round(flops_after / count),
        "ratio": round(flops_after / flops_before, 3),
        "max_abs_p_yes_difference": float(np.abs(np.array(before) - np.array(after)).max()),
    }


def real(count: int) -> dict:
    """FLOPs per judged row of the real judge, counted on the meta device (see the docstring)."""
    import torch
    from transformers import LlavaNextForConditionalGeneration
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    import real_size
    from varireal_ray.models import shared_prefix
    from varireal_ray.stages.judge import ANSWER_FORMAT

    config = real_size.judge_config()
    processor = real_size.judge_processor()
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config).to(torch.bfloat16).eval()
    hidden, dtype = config.text_config.hidden_size, torch.bfloat16

    def chat(question: str) -> str:
        content = [{"type": "image"}, {"type": "text", "text": f"{question} {ANSWER_FORMAT}"}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def meta(*shape, kind=dtype):
        return torch.empty(shape, dtype=kind, device="meta")

    def image_flops(image) -> int:
        views = image_size_to_num_patches((image.height, image.width), config.image_grid_pinpoints, 336)
        with torch.inference_mode():
            _, vision = counted(lambda: model.model.vision_tower(meta(views, 3, 336, 336), output_hidden_states=True))
            _, projector = counted(lambda: model.model.multi_modal_projector(meta(views, 576, config.vision_config.hidden_size)))
        return vision + projector

    def language_flops(length: int, read: int, mask=None, positions=None) -> int:
        def forward():
            with torch.inference_mode():
                states = model.model.language_model(inputs_embeds=meta(1, length, hidden), attention_mask=mask, position_ids=positions)[0]
                return model.lm_head(states[:, :read])

        return counted(forward)[1]

    before = after = 0
    layouts = []
    for row in questions(count, 1024):
        prompts = [processor(images=[row.image], text=[chat(q)])["input_ids"][0] for q, _ in row.pairs]
        packed = shared_prefix.split([list(p) for p in prompts])
        image = image_flops(row.image)
        before += len(prompts) * image + sum(language_flops(len(p), 1) for p in prompts)
        inputs = shared_prefix.batch([packed], 0, dtype)
        mask, positions = inputs["attention_mask"].to("meta"), inputs["position_ids"].to("meta")
        after += image + language_flops(packed.length, len(prompts), mask, positions)
        layouts.append({"image": f"{row.image.width}x{row.image.height}", "prefix_tokens": len(packed.prefix),
                        "suffix_tokens": [len(s) for s in packed.suffixes]})  # fmt: skip
    return {
        "rows": count,
        "layouts": layouts,
        "tflops_per_row_four_copies": round(before / count / 1e12, 2),
        "tflops_per_row_shared": round(after / count / 1e12, 2),
        "ratio": round(after / before, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="judged rows (a batch of the demo's judge pool)")
    parser.add_argument("--max-tokens", type=int, default=16384, help="generate.judge.max_tokens_per_forward")
    parser.add_argument("--real-rows", type=int, default=3, help="rows counted at real size (one per image shape)")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (the tiny models' cache)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    harness.quiet_logs()
    figures = {"machine": harness.machine(), "miniature": miniature(args.rows, args.max_tokens, args.cache_dir), "real": real(args.real_rows)}
    harness.emit(figures, args.json)


if __name__ == "__main__":
    main()
