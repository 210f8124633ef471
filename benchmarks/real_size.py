"""The real-size check: every real architecture of ``configs/real-models.yaml`` at true size, with
random weights, loaded through the project's own stage classes (``models/load.py``), one forward
or denoising step each at a reduced resolution, on whatever device there is.

Per stage actor (each generation pool, the prompts LLM, a training trial) it prints the parameters it holds, the seconds its constructor takes to load them
(from local folders in the hub layout, as a node's cache holds them) and its peak resident memory
(process RSS on a CPU; on a GPU also the peak allocated device memory), after loading and after
the step. Each stage runs in a fresh process, so one's memory never counts against another's.

    python benchmarks/real_size.py                       # every stage, bfloat16, on this machine
    python benchmarks/real_size.py --stage text2image --stage inpaint --stage refine --json real-size-edit.json
    python benchmarks/real_size.py --stage judge --judge-forward   # + one judged row (~3k tokens)

Stages and what they load (each as its pool's actor does; the edit pools' weights are built by
``benchmarks/editors_gpu.py``), each step at ``--resolution`` with ``--batch`` items:
- ``mask``: Grounding DINO base (Swin-B + BERT-base) and SAM 2.1 Hiera-L (a ``sam2_video``
  checkpoint loaded as ``Sam2Model``);
- ``text2image``: SD 2.1 base; background plates, one denoising step;
- ``inpaint``: SDXL inpainting with the fp16-fix VAE in place of its own (``models.inpaint_vae``)
  and VAE slicing, as ``configs/real-models.yaml`` sets them; color items, one denoising step;
- ``refine``: RealVisXL (SDXL) + ControlNet-canny SDXL + the fp16-fix VAE + IP-Adapter Plus SDXL
  with its ViT-H image encoder; color items refined from their source, one denoising step;
- ``judge``: LLaVA-NeXT (LLaVA-1.6) Mistral-7B with anyres; its forward (one image and its four
  questions after one shared prefix, ~3k tokens) is opt-in on a CPU (``--judge-forward``: minutes
  on two cores); on a GPU its ``step_s`` is the seconds per judged row;
- ``llm``: Qwen2.5-7B-Instruct, one generated token for one bank request through ``ValueWriter``;
- ``clip``: open_clip ViT-B-16 (random weights), one LoRA training step at 224 px.

Weights are random and written once into ``--work`` (about 50 GB in all; ``--clean`` deletes each
stage's folder after it ran). Tokenizers are the miniatures' (no real tokenizer ships offline);
the embedding tables have the real vocabulary sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402 - sets HF_HUB_OFFLINE before anything imports huggingface_hub

STAGES = ("mask", "text2image", "inpaint", "refine", "judge", "llm", "clip")
# The edit pools, and the attribute whose rows each is measured on.
EDIT_POOLS = {"text2image": "background", "inpaint": "color", "refine": "color"}


# --------------------------------------------------------------------------- real architectures
def _random_(model, std: float = 0.02):
    """Fill every parameter with N(0, std): far faster than each module's own init at 7B."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def _built(folder: Path, build) -> Path:
    if not (folder / ".done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(folder)
        (folder / ".done").write_text("")
    return folder


def build_grounding(folder: Path) -> None:
    """IDEA-Research/grounding-dino-base: Swin-B at 384 px, BERT-base, 900 queries, 6+6 layers."""
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    from varireal_ray.models import tiny_detection

    tokenizer = tiny_detection._bert_uncased_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                                   window_size=12, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(),  # bert-base-uncased
    )  # fmt: skip
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    # The real processor resizes to 800-1333 px; 400-667 px is the reduced resolution here.
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    images = GroundingDinoImageProcessor(size={"shortest_edge": 400, "longest_edge": 667})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


def build_segmenter(folder: Path) -> None:
    """facebook/sam2.1-hiera-large: Hiera-L (144 wide, stages 2-6-36-4) at 1024 px, saved as the
    hub repo is (``sam2_video``)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    from varireal_ray.models import tiny_detection

    hiera = Sam2HieraDetConfig(
        hidden_size=144, blocks_per_stage=[2, 6, 36, 4], embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16], window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43], window_positional_embedding_background_size=[7, 7],
    )  # fmt: skip
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144])
    Sam2VideoModel(Sam2VideoConfig(vision_config=vision)).save_pretrained(folder)
    tiny_detection._sam2_processor(1024).save_pretrained(folder)


JUDGE_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def judge_config():
    """llava-hf/llava-v1.6-mistral-7b-hf's config: CLIP ViT-L/14-336 + Mistral-7B, anyres pinpoints
    (the miniature's tokenizer, the real vocabulary size)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    from varireal_ray.models import tiny_judge

    tokenizer = tiny_judge._tokenizer()
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                                       num_hidden_layers=24, num_attention_heads=16, projection_dim=768),
        text_config=MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                                  sliding_window=None, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids(tiny_judge.IMAGE), image_grid_pinpoints=JUDGE_PINPOINTS,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
    )  # fmt: skip


def judge_processor():
    """The real judge's processor (336 px views, its pinpoints) around the miniature's tokenizer."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    from varireal_ray.models import tiny_judge

    images = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=JUDGE_PINPOINTS)
    return LlavaNextProcessor(image_processor=images, tokenizer=tiny_judge._tokenizer(), patch_size=14, vision_feature_select_strategy="default",
                              chat_template=tiny_judge.CHAT_TEMPLATE, num_additional_image_tokens=1)  # fmt: skip


def build_judge(folder: Path) -> None:
    """llava-hf/llava-v1.6-mistral-7b-hf at true size, random weights."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(judge_config())
    model = _random_(model.to_empty(device="cpu").to(torch.bfloat16))
    model.save_pretrained(folder)
    judge_processor().save_pretrained(folder)


def build_llm(folder: Path) -> None:
    """Qwen/Qwen2.5-7B-Instruct: 28 layers of 3584, 28 query / 4 key-value heads, 152k vocabulary."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from varireal_ray.models import tiny_llm

    tokenizer = tiny_llm._tokenizer()
    pad, eos = tokenizer.convert_tokens_to_ids(tiny_llm.PAD), tokenizer.convert_tokens_to_ids(tiny_llm.IM_END)
    config = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=False, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = _random_(model.to_empty(device="cpu").to(torch.bfloat16))
    model.generation_config.eos_token_id = [eos, pad]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------- one stage actor
def _config(work: Path, stage: str, dtype: str, resolution: int):
    from editors_gpu import real_model_overrides

    overrides = [f"run.output={work / 'run'}", f"generate.resolution={resolution}", "generate.bank=builtin:demo"]
    diffusion = ("inpaint", "text2image", "refine_base", "refine_vae", "controlnet", "image_encoder")
    if stage == "mask":
        overrides += [f"models.grounding.id={work / 'grounding'}", f"models.segmenter.id={work / 'segmenter'}"]
    elif stage in EDIT_POOLS:
        overrides.append(f"generate.attributes=[{EDIT_POOLS[stage]}]")
        overrides += real_model_overrides(work / "edit") + [f"models.{r}.dtype={dtype}" for r in diffusion]
        if dtype == "bfloat16" and not _cuda():
            # bfloat16 convolutions at full resolution take minutes per image on a CPU without bf16
            # units: the VAEs decode in float32 here (SD 2.1's is inside its pipeline: all of it).
            overrides += ["models.text2image.dtype=float32", "models.refine_vae.dtype=float32"]
        vae_dtype = dtype if _cuda() or dtype != "bfloat16" else "float32"
        overrides += [f"models.inpaint_vae={{id: {work / 'edit' / 'refine_vae'}, dtype: {vae_dtype}}}", "generate.inpaint_stage.vae_slicing=true",
                      "generate.refine_stage.vae_slicing=true", "generate.text2image_stage.vae_slicing=true"]
        overrides += [f"generate.{a}.{part}.steps=1" for a, part in
                      (("background", "plate"), ("color", "refine"), ("texture", "swatch"), ("texture", "refine"))]  # fmt: skip
        # One denoising step each: inpainting runs int(steps * strength) of its steps.
        overrides += [f"generate.{a}.inpaint={{steps: 1, strength: 1.0}}" for a in ("background", "color", "texture")]
    elif stage == "judge":
        overrides += [f"models.judge.id={work / 'judge'}", f"models.judge.dtype={dtype}", "generate.judge.enabled=true"]
    elif stage == "llm":
        overrides += [f"models.llm.id={work / 'llm'}", f"models.llm.dtype={dtype}", "prompts.max_new_tokens=8"]
    elif stage == "clip":
        overrides += ["models.clip.id=ViT-B-16", "train.image_size=224"]
    return harness.workload_config(work / "run", 5, 1, None, *overrides)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _device_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _params(*modules) -> int:
    import torch

    seen, total = set(), 0
    for module in modules:
        for m in [module] if isinstance(module, torch.nn.Module) else [c for c in getattr(module, "components", {}).values() if isinstance(c, torch.nn.Module)]:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


def run_one(stage: str, work: Path, dtype: str, resolution: int, judge_forward: bool, batch: int = 1, load_only: bool = False) -> dict:
    """Load the stage actor, take one step; returns its figures."""
    import torch

    config = _config(work, stage, dtype, resolution)
    started = time.perf_counter()
    if stage == "mask":
        from varireal_ray.stages.mask import MaskStage

        actor = MaskStage(config)
        held = (actor.detector, actor.segmenter)
    elif stage in EDIT_POOLS:
        from varireal_ray.stages.edit import POOLS

        actor = next(pool for pool in POOLS if pool.name == stage)(config)
        held = (actor.pool.pipe,)
    elif stage == "judge":
        from varireal_ray.stages.judge import JudgeStage

        actor = JudgeStage(config)
        held = (actor.model,)
    elif stage == "llm":
        from varireal_ray.prompts.llm import ValueWriter

        actor = ValueWriter(config)
        held = (actor.model,)
    else:
        from varireal_ray.train.model import load_clip

        actor = load_clip(config.models.clip, config.models, config.train.image_size).model
        held = (actor,)
    load_s = time.perf_counter() - started
    figures = {"stage": stage, "params_b": round(_params(*[h for h in held if h is not None]) / 1e9, 3),
               "load_s": round(load_s, 1), "rss_after_load_gb": round(_rss_gb(), 2), "device_after_load_gb": _device_gb()}  # fmt: skip

    if load_only:
        figures["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return figures
    started = time.perf_counter()
    step = _step(stage, actor, config, judge_forward, batch)
    figures |= {"step": step, "step_s": round(time.perf_counter() - started, 1), "rss_peak_gb": round(_rss_gb(), 2), "device_peak_gb": _device_gb()}
    figures["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return figures


def _step(stage: str, actor, config, judge_forward: bool, batch: int = 1) -> str:
    import skimage.data

    from varireal_ray.images import encode_image

    photo = encode_image(skimage.data.chelsea())
    if stage == "mask":
        batch = harness.to_batch([{"source_id": "cat", "image": photo, "class_name": "Bengal", "label": 0, "box": None,
                                   "error": "", "error_stage": ""}])  # fmt: skip
        out = actor(batch)
        return f"1 image (451x300): detection at 400-667 px, SAM 2.1 at 1024 px; error={out['error'][0]!r}"
    if stage in EDIT_POOLS:
        from editors_gpu import items

        from varireal_ray.images import decode_image
        from varireal_ray.stages import common

        rows = items(EDIT_POOLS[stage], batch)
        if stage == "refine":  # what the inpainting pool hands on: here the padded source itself
            padded = common.pad_to_square(decode_image(rows[0]["image"]), config.generate.resolution)
            rows = [{**row, "inpainted": encode_image(padded)} for row in rows]
        out = actor(harness.to_batch(rows))
        errors = [e for e in out["error"] if e]
        return f"{len(rows)} {EDIT_POOLS[stage]} items, 1 denoising step at {config.generate.resolution} px; errors={errors}"
    if stage == "judge":
        if not judge_forward:
            return "load only (the forward is --judge-forward: ~2.9k tokens)"
        batch = harness.to_batch([{"edited": photo, "class_name": "Bengal", "attribute": "color", "feasibility": "feasible",
                                   "value": "red", "error": "", "error_stage": ""}])  # fmt: skip
        out = actor(batch)
        return f"1 image x 4 questions; error={out['error'][0]!r}"
    if stage == "llm":
        from varireal_ray.prompts import templates

        instruction = templates.chat_instruction("color", "feasible", "Bengal", ["Bengal", "Sphynx"], 10, "pet ")
        batch = harness.to_batch([{"request_id": "r0", "class_name": "Bengal", "attribute": "color", "feasibility": "feasible",
                                   "round": 0, "prompt": "", "instruction": instruction, "error": "", "error_stage": ""}])  # fmt: skip
        out = actor(batch)
        return f"1 request, {config.prompts.max_new_tokens} new tokens; error={out['error'][0]!r}"
    import torch

    from varireal_ray.train.lora import apply_lora  # the trial's own adapter

    model = apply_lora(actor, config.train.lora)
    loss = model.encode_image(torch.randn(2, 3, 224, 224)).float().pow(2).mean()
    loss.backward()
    return "LoRA forward + backward, batch 2 at 224 px"


# ---------------------------------------------------------------------------------------- main
def build(stage: str, work: Path) -> float:
    started = time.perf_counter()
    if stage == "mask":
        _built(work / "grounding", build_grounding)
        _built(work / "segmenter", build_segmenter)
    elif stage in EDIT_POOLS:
        from editors_gpu import build_real_models

        import torch

        build_real_models(work / "edit", "cuda" if torch.cuda.is_available() else "cpu")
    elif stage == "judge":
        _built(work / "judge", build_judge)
    elif stage == "llm":
        _built(work / "llm", build_llm)
    return round(time.perf_counter() - started, 1)


def _failure(proc: subprocess.CompletedProcess) -> str:
    """Why a stage's process gave no figures: a kill by signal (SIGKILL is most often the kernel's
    out-of-memory killer), else the last line of its stderr."""
    if proc.returncode < 0:
        why = " (most likely the kernel's OOM killer: the stage does not fit in this machine's memory)" if proc.returncode == -9 else ""
        return f"killed by signal {-proc.returncode}{why}"
    text = proc.stderr.strip()
    return text.splitlines()[-1] if text else f"exit {proc.returncode}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", action="append", choices=STAGES, help="repeat; default: all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/varireal-real-size"))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--resolution", type=int, default=256, help="the edit pools' working resolution (1024 in real runs)")
    parser.add_argument("--batch", type=int, default=1, help="items per edit pool call")
    parser.add_argument("--judge-forward", action="store_true")
    parser.add_argument("--load-only", action="store_true", help="load each stage, take no step (parameters and memory after load)")
    parser.add_argument("--clean", action="store_true", help="delete each stage's weights after it ran")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print("FIGURES " + json.dumps(run_one(args.one, args.work, args.dtype, args.resolution, args.judge_forward, args.batch, args.load_only)), flush=True)
        return
    results = []
    for stage in args.stage or STAGES:
        build_s = build(stage, args.work)
        cmd = [sys.executable, __file__, "--one", stage, "--work", str(args.work), "--dtype", args.dtype,
               "--resolution", str(args.resolution), "--batch", str(args.batch)] + (["--judge-forward"] if args.judge_forward else []) \
            + (["--load-only"] if args.load_only else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("FIGURES ")]
        if proc.returncode or not lines:
            figures = {"stage": stage, "error": _failure(proc)}
        else:
            figures = json.loads(lines[-1].removeprefix("FIGURES "))
        figures["build_s"] = build_s
        print(json.dumps(figures), flush=True)
        results.append(figures)
        if args.clean:
            for name in {"mask": ("grounding", "segmenter"), "refine": ("edit",), "judge": ("judge",), "llm": ("llm",)}.get(stage, ()):
                shutil.rmtree(args.work / name, ignore_errors=True)
    summary = {"machine": harness.machine(), "dtype": args.dtype, "stages": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
