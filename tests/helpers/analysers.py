"""Analysers for tests of the pipeline and the daemon (the ``Analyser`` protocol is swappable).

``PixelStatsAnalyser`` gives deterministic, image-dependent results without model weights and
counts how often each image was analysed, so tests can prove exactly-once processing; it can
also be slow (simulated inference) or crash on chosen images (a model fault).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from chimp_worker.analysis import (
    BASELINE_SCHEMA,
    CrystalTarget,
    DecodedImage,
    Detection,
    DispensePoint,
    DispenseStatus,
    ImageAnalysis,
    ModelRef,
)

PIXEL_STATS_MODEL = ModelRef(
    "baseline", "pixel-stats-test", hashlib.sha256(b"pixel-stats-test v1").hexdigest()
)


class PixelStatsAnalyser:
    """P(crystals) = mean brightness; one crystal target at (w/3, h/4); dispense at the centre."""

    name = "pixel-stats-test"
    schema_name = BASELINE_SCHEMA
    models = (PIXEL_STATS_MODEL,)
    target_rule: str | None = None  # its targets follow no detector rule

    def __init__(self, *, seconds_per_image: float = 0.0, crash_on: Iterable[str] = ()) -> None:
        self.seconds_per_image = seconds_per_image
        self.crash_on = tuple(crash_on)
        self.calls: Counter[str] = Counter()  # image source -> times analysed
        self._lock = threading.Lock()

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        for image in images:
            if any(marker in image.source for marker in self.crash_on):
                raise RuntimeError(f"simulated model fault on {image.source}")
        results = []
        for image in images:
            time.sleep(self.seconds_per_image)
            with self._lock:
                self.calls[image.source] += 1
            results.append(self.expected(image))
        return results

    @staticmethod
    def expected(image: DecodedImage) -> ImageAnalysis:
        brightness = round(float(image.pixels.mean()) / 255.0, 6)
        x, y = image.width // 3, image.height // 4
        crystal = Detection("crystal", 0.9, (x - 2.0, y - 2.0, x + 2.0, y + 2.0), None, 16, (x, y))
        return ImageAnalysis(
            analyser=PixelStatsAnalyser.name,
            schema_name=BASELINE_SCHEMA,
            models=PixelStatsAnalyser.models,
            width=image.width,
            height=image.height,
            probabilities={
                "crystals": brightness,
                "clear": 1.0 - brightness,
                "other": 0.0,
                "precipitate": 0.0,
            },
            detections=(crystal,),
            crystal_targets=(CrystalTarget(x, y, 0.9, 0),),
            dispense=DispensePoint(
                DispenseStatus.OK, image.width // 2, image.height // 2, 5.0, drops_seen=1
            ),
        )
