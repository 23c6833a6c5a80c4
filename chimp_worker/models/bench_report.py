"""Turning benchmark runs into the printed report: tables, agreement and PASS/FAIL targets."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from collections.abc import Sequence
from typing import Any

__all__ = ["agreement", "machine_description", "report_lines"]

GIB = 1024**3
PLATE_IMAGES = 288


def machine_description() -> str:
    """CPU model, usable cores, native bf16, torch version: where the figures were taken."""
    import torch

    from chimp_worker.models.analyser import bf16_supported

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    bf16 = "native bf16" if bf16_supported() else "no native bf16 (AVX512-BF16/AMX)"
    return (
        f"{model}, {cores} cores, {torch.backends.cpu.get_cpu_capability()}, {bf16}; "
        f"torch {torch.__version__}"
    )


def _max_abs(pairs: Sequence[tuple[float, float]]) -> float:
    return max((abs(a - b) for a, b in pairs), default=0.0)


def agreement(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far two configurations' outputs on the same images are apart (0 = identical)."""
    probabilities, scores, boxes, centroids = [], [], [], []
    same_detections = True
    for a, b in zip(first, second, strict=True):
        probabilities += [
            (a["probabilities"][k], b["probabilities"][k]) for k in a["probabilities"]
        ]
        if [d["label"] for d in a["detections"]] != [d["label"] for d in b["detections"]]:
            same_detections = False
            continue
        for da, db in zip(a["detections"], b["detections"], strict=True):
            scores.append((da["score"], db["score"]))
            boxes += list(zip(da["box"], db["box"], strict=True))
            if (da["centroid"] is None) != (db["centroid"] is None):
                same_detections = False
            elif da["centroid"] is not None:
                centroids += list(zip(da["centroid"], db["centroid"], strict=True))
    dispense_pairs = [(a["dispense"], b["dispense"]) for a, b in zip(first, second, strict=True)]
    return {
        "probability": _max_abs(probabilities),
        "same_detections": same_detections,
        "score": _max_abs(scores),
        "box_px": _max_abs(boxes),
        "centroid_px": _max_abs(centroids),
        "targets_identical": all(
            a["targets"] == b["targets"] for a, b in zip(first, second, strict=True)
        ),
        "dispense_identical": all(a == b for a, b in dispense_pairs),
    }


def _runs_by(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(run["flavour"], run["configuration"]): run for run in runs}


def _gflops(run: dict[str, Any], model: str) -> float:
    flops = run["flops"].get(model)
    milliseconds = run["stages_ms"][model]
    return flops / (milliseconds / 1000) / 1e9 if flops and milliseconds else math.nan


def _status(passed: bool | None) -> str:
    return "SKIP" if passed is None else ("PASS" if passed else "FAIL")


def report_lines(
    runs: Sequence[dict[str, Any]],
    paired: Sequence[dict[str, Any]],
    configurations: Sequence[str],
    machine: str,
) -> list[str]:
    """The benchmark's printed report. ``paired``: interleaved pipeline seconds per plate."""
    by = _runs_by(runs)
    interleaved = {entry["flavour"]: entry for entry in paired}
    flavours = list(dict.fromkeys(run["flavour"] for run in runs))
    lines = [
        f"chimp-worker bench, {dt.date.today().isoformat()}",
        f"machine: {machine}",
        "",
    ]
    rows = [
        ("threads", lambda r: f"{r['threads']}"),
        ("fp32 matmul GFLOP/s (measured)", lambda r: f"{r['matmul_gflops']:.0f}"),
        ("model load s", lambda r: f"{r['load_s']:.1f}"),
        ("fetch ms/image", lambda r: f"{r['stages_ms']['fetch']:.1f}"),
        ("decode ms/image", lambda r: f"{r['stages_ms']['decode']:.0f}"),
        ("preprocess ms/image", lambda r: f"{r['stages_ms']['preprocess']:.0f}"),
        ("classifier ms/image", lambda r: f"{r['stages_ms']['classifier']:.0f}"),
        ("detector ms/image", lambda r: f"{r['stages_ms']['detector']:.0f}"),
        ("post-process ms/image", lambda r: f"{r['stages_ms']['postprocess']:.0f}"),
        ("database write ms/image", lambda r: f"{r['stages_ms']['database_write']:.0f}"),
        ("classifier GFLOP/s", lambda r: f"{_gflops(r, 'classifier'):.0f}"),
        ("detector GFLOP/s", lambda r: f"{_gflops(r, 'detector'):.0f}"),
        ("kept detections/image (mean)", lambda r: f"{_mean_detections(r):.1f}"),
        ("models images/s", lambda r: f"{r['models_images_per_s']:.3f}"),
        ("pipeline images/s", lambda r: f"{r['pipeline_images_per_s']:.3f}"),
        (f"{PLATE_IMAGES}-image plate, minutes", lambda r: f"{_plate_minutes(r):.1f}"),
        ("peak RSS GiB", lambda r: f"{r['peak_rss_bytes'] / GIB:.2f}"),
    ]
    for flavour in flavours:
        present = [c for c in configurations if (flavour, c) in by]
        first = by[(flavour, present[0])]
        lines.append(
            f"== {flavour} plate: classifier + {flavour} detector, {first['images']} images =="
        )
        lines.append(f"{'':34}" + "".join(f"{name:>14}" for name in present))
        for label, cell in rows:
            lines.append(f"{label:34}" + "".join(f"{cell(by[(flavour, c)]):>14}" for c in present))
        fast = by.get((flavour, "fast"))
        if fast and fast["flops"]:
            lines.append(
                f"FLOPs per image: classifier {fast['flops']['classifier'] / 1e9:.1f} GFLOP, "
                f"detector {fast['flops']['detector'] / 1e9:.1f} GFLOP (fast configuration)"
            )
        reference = by.get((flavour, "reference"))
        for name in present:
            if name == "reference" or reference is None:
                continue
            run = by[(flavour, name)]
            agree = agreement(reference["outputs"], run["outputs"])
            lines.append(
                f"{name} vs reference: pipeline {_ratio(run, reference):.2f}x, classifier "
                f"{_stage_ratio(reference, run, 'classifier'):.2f}x, detector "
                f"{_stage_ratio(reference, run, 'detector'):.2f}x; max |probability diff| "
                f"{agree['probability']:.1e}, same detections {_yes(agree['same_detections'])}, "
                f"max |score diff| {agree['score']:.1e}, max |box diff| {agree['box_px']:.1e} px, "
                f"max |centroid diff| {agree['centroid_px']:.0f} px, crystal targets identical "
                f"{_yes(agree['targets_identical'])}, dispense points identical "
                f"{_yes(agree['dispense_identical'])}"
            )
        entry = interleaved.get(flavour)
        if entry is not None:
            seconds = entry["seconds"]
            parts = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
            lines.append(
                f"interleaved pipelines, same {entry['images']} images batch by batch: {parts}"
                + _paired_ratios(seconds)
            )
        lines.append("")
    lines += _targets(by, interleaved, flavours)
    return lines


def _paired_ratios(seconds: dict[str, float]) -> str:
    reference = seconds.get("reference")
    if not reference:
        return ""
    ratios = [
        f"{name} {reference / value:.2f}x"
        for name, value in seconds.items()
        if name != "reference" and value
    ]
    return f" -> speed-up {', '.join(ratios)}" if ratios else ""


def _mean_detections(run: dict[str, Any]) -> float:
    """The fast path's gain depends on it: the mask head runs once per kept detection."""
    counts = [len(output["detections"]) for output in run["outputs"]]
    return sum(counts) / len(counts) if counts else 0.0


def _plate_minutes(run: dict[str, Any]) -> float:
    return PLATE_IMAGES / run["pipeline_images_per_s"] / 60


def _ratio(run: dict[str, Any], reference: dict[str, Any]) -> float:
    return run["pipeline_images_per_s"] / reference["pipeline_images_per_s"]


def _stage_ratio(reference: dict[str, Any], run: dict[str, Any], stage: str) -> float:
    value = run["stages_ms"][stage]
    return reference["stages_ms"][stage] / value if value else math.nan


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _targets(
    by: dict[tuple[str, str], dict[str, Any]],
    interleaved: dict[str, dict[str, Any]],
    flavours: list[str],
) -> list[str]:
    from chimp_worker.models.analyser import bf16_supported

    lines = ["Targets (issue 8):"]

    def target(passed: bool | None, text: str) -> None:
        lines.append(f"  {_status(passed):4}  {text}")

    for flavour in flavours:
        fast, reference = by.get((flavour, "fast")), by.get((flavour, "reference"))
        if fast is None:
            continue
        seconds = interleaved.get(flavour, {}).get("seconds", {})
        if seconds.get("reference") and seconds.get("fast"):
            ratio = seconds["reference"] / seconds["fast"]
            target(
                ratio >= 2.0,
                f"{flavour}: fp32 pipeline {ratio:.2f}x the plain reference, interleaved (>= 2.0x)",
            )
        elif reference is not None:
            ratio = _ratio(fast, reference)
            target(
                ratio >= 2.0, f"{flavour}: fp32 pipeline {ratio:.2f}x the plain reference (>= 2.0x)"
            )
        minutes = _plate_minutes(fast)
        target(minutes <= 8.0, f"{flavour}: 288-image plate {minutes:.1f} min, one worker (<= 8)")
        share = _gflops(fast, "classifier") / fast["matmul_gflops"]
        target(
            share >= 0.65 if not math.isnan(share) else None,
            f"{flavour}: classifier at {share:.0%} of the measured fp32 matmul rate (>= 65%)",
        )
        hidden = fast["pipeline_images_per_s"] / fast["models_images_per_s"]
        target(
            hidden >= 0.9,
            f"{flavour}: pipeline at {hidden:.0%} of the models' own rate: fetch, decode and "
            "preprocessing hidden (>= 90%)",
        )
        bf16 = by.get((flavour, "bf16"))
        if bf16 is not None and reference is not None and bf16_supported():
            ratio = _ratio(bf16, reference)
            target(ratio >= 4.0, f"{flavour}: bf16 {ratio:.2f}x the plain reference (>= 4x)")
        else:
            reason = "not run (--bf16)" if bf16 is None else "measured but emulated"
            if not bf16_supported():
                reason = "this CPU has no native bf16 (AVX512-BF16/AMX)"
            target(None, f"{flavour}: bf16 >= 4x the plain reference: {reason}")
        rss = fast["peak_rss_bytes"] / GIB
        target(rss <= 2.5, f"{flavour}: peak RSS {rss:.2f} GiB per worker (<= 2.5)")
        target(fast["load_s"] < 10, f"{flavour}: model load {fast['load_s']:.1f} s (< 10)")
    return lines
