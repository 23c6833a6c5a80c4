"""How well an analyser does on mock-imager micrographs, against their exact ground truth.

    python -m chimp_worker.mock_imager.measure --images 200          # the figures in docs/demo.md

Drop found: the analyser's drop mask overlaps the true drop with IoU >= 0.5. Crystal recall:
a true crystal counts as found when a crystal target lies on its mask or within half its
equivalent radius (at least 3 pixels) of its centroid; precision is the share of targets that
find some crystal that way. Dispense: the point lies inside the true drop and on no crystal.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from chimp_worker.analysis import CLASS_NAMES, Analyser, DecodedImage, DispenseStatus, ImageAnalysis
from chimp_worker.mock_imager.synthetic import CrystalTruth, GroundTruth, render_micrograph

DROP_IOU_FOUND = 0.5
LARGE_CRYSTAL = 0.04  # equivalent diameter / short side: about 80 pixels on a VMXi image


def crystal_hit(crystal: CrystalTruth, x: float, y: float) -> bool:
    """Whether a target at (x, y) finds this true crystal."""
    if crystal.region.contains(x, y):
        return True
    tolerance = max(3.0, 0.5 * math.sqrt(crystal.area / math.pi))
    return math.hypot(x - crystal.centroid[0], y - crystal.centroid[1]) <= tolerance


def drop_iou(analysis: ImageAnalysis, truth: GroundTruth) -> float:
    """IoU of the analyser's best drop with the true drop (0 when it found none)."""
    drops = [
        (d.score, d.mask) for d in analysis.detections if d.label == "drop" and d.mask is not None
    ]
    if not drops:
        return 0.0
    _, best_mask = max(drops, key=lambda scored: scored[0])
    true = truth.drop_mask
    found = best_mask.full()
    union = int((found | true).sum())
    return float((found & true).sum() / union) if union else 0.0


@dataclass
class Measurement:
    """Counts over a set of images; the ratios are properties."""

    images: int = 0
    drops_found: int = 0
    drop_iou_sum: float = 0.0
    crystals: int = 0
    crystals_found: int = 0
    large_crystals: int = 0  # equivalent diameter at least 4 % of the image's short side
    large_crystals_found: int = 0
    targets: int = 0
    targets_on_crystals: int = 0
    dispense_points: int = 0
    dispense_inside_free_drop: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (true, predicted)
    seconds: float = 0.0

    def add(self, analysis: ImageAnalysis, truth: GroundTruth) -> None:
        self.images += 1
        iou = drop_iou(analysis, truth)
        self.drop_iou_sum += iou
        self.drops_found += iou >= DROP_IOU_FOUND
        targets = [(t.x, t.y) for t in analysis.crystal_targets]
        self.crystals += len(truth.crystals)
        short_side = min(truth.width, truth.height)
        for crystal in truth.crystals:
            found = any(crystal_hit(crystal, x, y) for x, y in targets)
            large = 2 * math.sqrt(crystal.area / math.pi) >= LARGE_CRYSTAL * short_side
            self.crystals_found += found
            self.large_crystals += large
            self.large_crystals_found += found and large
        self.targets += len(targets)
        self.targets_on_crystals += sum(
            any(crystal_hit(crystal, x, y) for crystal in truth.crystals) for x, y in targets
        )
        point = analysis.dispense
        if point is not None and point.status == DispenseStatus.OK:
            self.dispense_points += 1
            assert point.x is not None
            assert point.y is not None
            free = (
                truth.drop_contains(point.x, point.y) and truth.crystal_at(point.x, point.y) is None
            )
            self.dispense_inside_free_drop += free
        self.outcomes[(truth.outcome, analysis.top_class or "none")] += 1

    @property
    def drop_found_rate(self) -> float:
        return self.drops_found / self.images if self.images else 0.0

    @property
    def mean_drop_iou(self) -> float:
        return self.drop_iou_sum / self.images if self.images else 0.0

    @property
    def crystal_recall(self) -> float:
        return self.crystals_found / self.crystals if self.crystals else 0.0

    @property
    def large_crystal_recall(self) -> float:
        return self.large_crystals_found / self.large_crystals if self.large_crystals else 0.0

    @property
    def target_precision(self) -> float:
        return self.targets_on_crystals / self.targets if self.targets else 0.0

    @property
    def outcome_accuracy(self) -> float:
        right = sum(n for (true, predicted), n in self.outcomes.items() if true == predicted)
        return right / self.images if self.images else 0.0

    def report(self) -> str:
        lines = [
            f"images                      {self.images}",
            f"drop found (IoU >= 0.5)     {self.drops_found}/{self.images} "
            f"= {self.drop_found_rate:.1%}   mean IoU {self.mean_drop_iou:.3f}",
            f"crystal recall              {self.crystals_found}/{self.crystals} "
            f"= {self.crystal_recall:.1%}",
            f"  of crystals >= 4 % wide  {self.large_crystals_found}/{self.large_crystals} "
            f"= {self.large_crystal_recall:.1%}",
            f"crystal target precision    {self.targets_on_crystals}/{self.targets} "
            f"= {self.target_precision:.1%}",
            f"dispense point in free drop {self.dispense_inside_free_drop}/{self.dispense_points}",
            f"outcome accuracy            {self.outcome_accuracy:.1%}",
            "confusion (rows true, columns predicted): " + " ".join(CLASS_NAMES),
        ]
        for true in CLASS_NAMES:
            row = " ".join(f"{self.outcomes[(true, predicted)]:>5}" for predicted in CLASS_NAMES)
            lines.append(f"  {true:<12}{row}")
        lines.append(f"seconds per image           {self.seconds / max(1, self.images):.2f}")
        return "\n".join(lines)


def mock_images(
    count: int, *, flavours: Iterable[str] = ("vmxi", "xchem"), size_divisor: int = 1, seed: int = 0
) -> Iterator[tuple[DecodedImage, GroundTruth]]:
    """``count`` decoded micrographs alternating flavours; outcomes drawn as on a real plate."""
    flavour_list = list(flavours)
    for number in range(count):
        flavour = flavour_list[number % len(flavour_list)]
        size = None
        if size_divisor > 1:
            native = {"vmxi": (2532, 2028), "xchem": (1224, 1024)}[flavour]
            size = (native[0] // size_divisor, native[1] // size_divisor)
        pixels, truth = render_micrograph(flavour, seed + number, size=size)
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
        yield DecodedImage(rgb, f"mock:{flavour}:{seed + number}", pixels.ndim == 2), truth


def measure(analyser: Analyser, samples: Iterable[tuple[DecodedImage, GroundTruth]]) -> Measurement:
    result = Measurement()
    for image, truth in samples:
        started = time.perf_counter()
        (analysis,) = analyser.analyse([image])
        result.seconds += time.perf_counter() - started
        result.add(analysis, truth)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--flavour", choices=["vmxi", "xchem", "both"], default="both")
    parser.add_argument("--size-divisor", type=int, default=1, help="render smaller (faster)")
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)
    from chimp_worker.analysis import AnalysisOptions
    from chimp_worker.baseline import BaselineAnalyser
    from chimp_worker.config import load_settings

    flavours = ("vmxi", "xchem") if args.flavour == "both" else (args.flavour,)
    analyser = BaselineAnalyser(AnalysisOptions.from_settings(load_settings()))
    samples = mock_images(
        args.images, flavours=flavours, size_divisor=args.size_divisor, seed=args.seed
    )
    print(f"baseline analyser on {args.images} mock images ({', '.join(flavours)})")
    print(measure(analyser, samples).report())


if __name__ == "__main__":
    main()
