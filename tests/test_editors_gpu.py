"""Each editor at 1024 px with real-size architectures (random weights) on a GPU: the edit stage
runs the reference's step counts end to end, in batches and in the reference's structure, and its
images/s are recorded (``record_property`` + printed). Figures, not limits: nothing here asserts a
speed. Skipped without CUDA (conftest); run with ``pytest -m gpu -s tests/test_editors_gpu.py``.
The measuring code is ``benchmarks/editors_gpu.py``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import editors_gpu  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def real_config(tmp_path_factory):
    cache = Path.home() / ".cache" / "varireal-bench"
    editors_gpu.build_real_models(cache / "real-random", "cuda")
    return editors_gpu.bench_config("real", cache, 1024, "auto", speed=editors_gpu.speed_overrides("off"))


@pytest.mark.parametrize("editor", editors_gpu.EDITORS)
def test_editor_at_1024_real_size(real_config, editor, record_property):
    figures = editors_gpu.measure_editor(real_config, editor, batch=2, count=2, reference_items=1, peak_tflops=None)
    for key in ("images_per_s", "reference_images_per_s", "gflops_per_image", "speedup_vs_reference"):
        record_property(key, figures[key])
    print(f"\n{editor}: {figures}")
    assert figures["edited_size"] == [451, 300]  # composited back at the source's size
    assert figures["images_per_s"] > 0 and figures["reference_images_per_s"] > 0
    assert figures["reference_cpu_offload"] is True
    # The real-size UNets cost hundreds of GFLOPs per step at 1024 px: proof the real sizes ran.
    assert figures["gflops_per_image"] > 1000
