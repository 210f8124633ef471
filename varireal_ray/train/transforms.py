"""Image transforms of the fine-tune, in the reference's order (``Finetune/classify/data.py:40-107``).

They draw from torch's global RNG; ``data.ImageDataset`` seeds it per sample, so a sample's
augmentation depends on its seed alone (not on loader workers, or on where a run resumed).
"""

from __future__ import annotations

from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC


def train_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    blur_kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, ~10% of the side (23 px at 224)
    return T.Compose(
        [
            T.RandAugment(),
            T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.2),
            T.RandomSolarize(threshold=128, p=0.2),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    return T.Compose(
        [T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)]
    )
