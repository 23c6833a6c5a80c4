"""How well the worker's first hits match the mock imager's truth, over several demo plates.

    python -m chimp_worker.mock_imager.measure_hits --plates 4 --wells 12 --schedule 4

Each plate is a demo plate (``run_demo``: the daemon's pipeline, an SQLite ISPyB) imaged
``--schedule`` times; the analyser is the one the settings choose (CHiMP models when
``CHIMP_*_PATH`` model files are set, else the weight-free baseline). Per drop, the worker's
first hit is compared with the first inspection whose image shows a crystal; growth steps
count where the true crystal area does not shrink from one inspection to the next and the
worker measured some area before the step. Prints the figures quoted in docs/hits.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chimp_worker.config import load_settings
from chimp_worker.mock_imager.demo import DemoOptions, DemoResult, HitSummary, run_demo


@dataclass
class GrowthSteps:
    steps: int = 0  # steps where the truth does not shrink and the worker saw a crystal before
    followed: int = 0  # of those, steps where the measured area did not shrink either


def growth_steps(result: DemoResult) -> GrowthSteps:
    counted = GrowthSteps()
    plate = result.plate
    for check in result.hit_checks:
        if check.truth_first is None:
            continue
        true = [
            sum(c.area for c in image.truth.crystals)
            for inspection in plate.inspections
            for image in inspection.images
            if image.location == check.location
        ]
        seen = {point.inspectionNumber: point.crystalAreaUm2 or 0.0 for point in check.course}
        for number in range(check.truth_first, len(true)):
            before, after = seen.get(number), seen.get(number + 1)
            if before is None or after is None or before <= 0:
                continue
            if true[number] >= true[number - 1]:
                counted.steps += 1
                counted.followed += after >= before
    return counted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=int, default=4)
    parser.add_argument("--wells", type=int, default=12)
    parser.add_argument("--schedule", type=int, default=4)
    parser.add_argument("--seed", type=int, default=100, help="plate n uses seed + n")
    parser.add_argument("--flavour", default="vmxi")
    parser.add_argument("--size", default="native", help="WIDTHxHEIGHT or native")
    args = parser.parse_args(argv)
    size: tuple[int, int] | None = None
    if args.size != "native":
        width, height = (int(v) for v in args.size.split("x"))
        size = (width, height)
    settings = load_settings()
    totals = HitSummary(0, 0, 0, 0, 0, 0, 0, 0)
    growth = GrowthSteps()
    started = time.perf_counter()
    analyser = "?"
    with tempfile.TemporaryDirectory(prefix="chimp-hits-") as folder:
        for n in range(args.plates):
            result = run_demo(
                settings,
                DemoOptions(
                    output_dir=Path(folder) / f"plate{n}",
                    flavour=args.flavour,
                    wells=args.wells,
                    seed=args.seed + n,
                    inspections=args.schedule,
                    image_size=size,
                    report=False,
                ),
            )
            analyser = result.analyser
            summary = result.hit_summary
            totals = totals + summary
            steps = growth_steps(result)
            growth.steps += steps.steps
            growth.followed += steps.followed
            print(f"plate {n} (seed {args.seed + n}): {summary}", flush=True)
    print(
        f"\nanalyser {analyser}, {args.plates} plates x {args.wells * 2} drops x "
        f"{args.schedule} inspections, {args.flavour} {args.size}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    share = totals.crystal_exact / totals.crystal_drops if totals.crystal_drops else 0.0
    print(
        f"first hit at the truth's first crystal  {totals.crystal_exact}/{totals.crystal_drops} "
        f"drops with crystals ({share:.1%})"
    )
    print(f"  early / late / missed               {totals.early} / {totals.late} / {totals.missed}")
    print(
        f"drops without crystals called a hit     {totals.false_hits}/"
        f"{totals.drops - totals.crystal_drops}"
    )
    print(f"every drop right (incl. never a hit)   {totals.exact}/{totals.drops}")
    print(f"growth steps followed                 {growth.followed}/{growth.steps}")


if __name__ == "__main__":
    main()
