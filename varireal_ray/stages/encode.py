"""The edited image in its stored format (``generate.image_format``): a light CPU step after the
last edit pool, so the compression is not paid in a GPU actor while its GPU waits (at 1024 px a
PNG takes about 190 ms to encode, the uncompressed hand-off 2 ms; BENCHMARKS.md, "What a row costs
the GPU actors"). The edit pools leave ``edited`` in the hand-off format (``job.HANDOFF_FORMAT``);
from here on, the checks, the judge and the writer see the bytes that are stored.
"""

from __future__ import annotations

from varireal_ray.config import Config
from varireal_ray.stages import common

STAGE = "encode"


class EncodeStage:
    """``edited`` re-encoded in ``generate.image_format`` on every row that has one."""

    name = STAGE
    section = None  # model-free: light CPU tasks (Ray Data fuses it with the checks' tasks)
    timing = None
    inputs = ("edited",)
    outputs = ("edited",)

    @staticmethod
    def roles(config: Config) -> list[str]:
        return []

    @staticmethod
    def used(config: Config) -> bool:
        return True

    def __init__(self, config: Config):
        self.image_format = config.generate.image_format

    def __call__(self, batch: common.Batch) -> common.Batch:
        return encode_edits(batch, self.image_format)


def encode_edits(batch: common.Batch, image_format: str) -> common.Batch:
    common.ensure_error_columns(batch)
    edited = common.new_column(batch, "edited")

    def encode(i: int) -> None:
        if edited[i] is not None:
            edited[i] = common.encode_image(common.decode_image(edited[i]), image_format)

    common.for_each_row(batch, STAGE, encode)
    return batch
