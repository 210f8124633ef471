"""Training throughput of the LoRA-CLIP step: samples/s of the exact step every trial runs
(``varireal_ray.train.loop.train_step``: forward, mixed real/synthetic loss, backward, AdamW,
cosine schedule), on random inputs so that only the model and the device are measured.

    # the figure issue 5 asks for, on a GPU: ViT-B/16, LoRA r16 on both towers, batch 64, fp16 autocast
    python benchmarks/train_throughput.py
    # proof that it runs, on a CPU (tiny CLIP)
    python benchmarks/train_throughput.py --model tiny:clip --batch 16 --image-size 64 --steps 5

ViT-B-16 is built by open_clip with random weights (no download): the speed of a step does not
depend on the weights' values. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from varireal_ray.config import load_config
from varireal_ray.train.loop import seed_everything, train_step
from varireal_ray.train.model import build_classifier, load_clip
from varireal_ray.train.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="models.clip.id (open_clip architecture, tiny:clip, ...)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=37, help="text-head size (37: Oxford Pets)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--no-amp", action="store_true", help="float32 even on a GPU")
    parser.add_argument("--towers", default="visual,text", help="LoRA towers")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (for tiny:clip)")
    args = parser.parse_args()

    overrides = [
        f"models.clip.id={args.model}",
        f"train.batch_size={args.batch}",
        f"train.image_size={args.image_size}",
        f"train.iterations={args.warmup + args.steps}",
        f"train.lora.towers=[{args.towers}]",
    ]
    if args.cache_dir:
        overrides.append(f"models.cache_dir={args.cache_dir}")
    config = load_config([], overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda" and not args.no_amp

    seed_everything(0)
    loaded = load_clip(config.models.clip, config.models, args.image_size)
    model = build_classifier(loaded, config, [f"class {i}" for i in range(args.classes)]).to(device).train()
    optimizer, scheduler = build_optimizer(model, config.train)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    is_real = torch.arange(args.batch, device=device) % 2 == 0  # half real, half synthetic
    batch = (images, labels, is_real)

    def run(steps: int) -> None:
        for _ in range(steps):
            loss = train_step(model, optimizer, scheduler, scaler, batch, device, amp, config.train.real_weight)
        float(loss.detach())  # one sync at the end, so the timing covers the queued GPU work

    run(args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(args.steps)
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    figures = {
        "benchmark": "train_throughput",
        "model": args.model,
        "lora_towers": args.towers,
        "trainable_params": trainable,
        "batch": args.batch,
        "image_size": args.image_size,
        "amp_fp16": amp,
        "steps": args.steps,
        "samples_per_s": round(args.batch * args.steps / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 1),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
