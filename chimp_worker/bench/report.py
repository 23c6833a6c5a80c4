"""Turning benchmark runs into the printed report: tables, agreement and PASS/FAIL targets."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
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


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matched(
    first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of detections that are the same object: same label, box IoU >= 0.5, greedily by
    the first list's order (highest score first, as the detector sorts them)."""
    pairs = []
    free = list(second)
    for detection in first:
        candidates = [
            (_iou(detection["box"], other["box"]), index)
            for index, other in enumerate(free)
            if other["label"] == detection["label"]
        ]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= 0.5:
            pairs.append((detection, free.pop(best[1])))
    return pairs


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _target_px(first: Sequence[Sequence[int]], second: Sequence[Sequence[int]]) -> float:
    """Farthest any target of either list is from the nearest target of the other."""
    if not first and not second:
        return 0.0
    if not first or not second:
        return math.inf
    one = max(min(_distance(a, b) for b in second) for a in first)
    other = max(min(_distance(b, a) for a in first) for b in second)
    return max(one, other)


def _top_class(probabilities: dict[str, float]) -> str | None:
    return max(probabilities, key=probabilities.__getitem__) if probabilities else None


def agreement(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How far two configurations' outputs on the same images are apart (0 = identical).

    Detections are paired as the same object (same label, IoU >= 0.5) before their scores,
    boxes and centroids are compared, so a detection that one configuration adds or drops
    shows as unmatched rather than shifting every later pair.
    """
    probabilities, scores, boxes, centroids = [], [], [], []
    same_detections = True
    total = matched = top_agree = 0
    targets_px = dispense_px = 0.0
    for a, b in zip(first, second, strict=True):
        probabilities += [
            (a["probabilities"][k], b["probabilities"][k]) for k in a["probabilities"]
        ]
        top_agree += _top_class(a["probabilities"]) == _top_class(b["probabilities"])
        pairs = _matched(a["detections"], b["detections"])
        total += len(a["detections"])
        matched += len(pairs)
        if len(pairs) != len(a["detections"]) or len(pairs) != len(b["detections"]):
            same_detections = False
        for da, db in pairs:
            scores.append((da["score"], db["score"]))
            boxes += list(zip(da["box"], db["box"], strict=True))
            if (da["centroid"] is None) != (db["centroid"] is None):
                same_detections = False
            elif da["centroid"] is not None:
                centroids += list(zip(da["centroid"], db["centroid"], strict=True))
        targets_px = max(targets_px, _target_px(a["targets"], b["targets"]))
        if a["dispense"] != b["dispense"]:
            ok = a["dispense"] and b["dispense"] and a["dispense"][0] == b["dispense"][0] == "ok"
            distance = _distance(a["dispense"][1:], b["dispense"][1:]) if ok else math.inf
            dispense_px = max(dispense_px, distance)
    images = len(first)
    return {
        "probability": _max_abs(probabilities),
        "top_class_agreement": top_agree / images if images else 1.0,
        "same_detections": same_detections,
        "matched_detections": matched / total if total else 1.0,
        "score": _max_abs(scores),
        "box_px": _max_abs(boxes),
        "centroid_px": _max_abs(centroids),
        "targets_identical": all(
            a["targets"] == b["targets"] for a, b in zip(first, second, strict=True)
        ),
        "targets_px": targets_px,
        "dispense_identical": all(
            a["dispense"] == b["dispense"] for a, b in zip(first, second, strict=True)
        ),
        "dispense_px": dispense_px,
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
        ("bf16 matmul GFLOP/s (measured)", lambda r: _number(r.get("matmul_gflops_bf16"))),
        ("model load s", lambda r: f"{r['load_s']:.1f}"),
        ("fetch ms/image", lambda r: f"{r['stages_ms']['fetch']:.1f}"),
        ("decode ms/image", lambda r: f"{r['stages_ms']['decode']:.0f}"),
        ("preprocess ms/image", lambda r: f"{r['stages_ms']['preprocess']:.0f}"),
        ("classifier ms/image", lambda r: f"{r['stages_ms']['classifier']:.0f}"),
        ("detector ms/image", lambda r: f"{r['stages_ms']['detector']:.0f}"),
        ("post-process ms/image", lambda r: f"{r['stages_ms']['postprocess']:.0f}"),
        ("database write ms/image", lambda r: f"{r['stages_ms']['database_write']:.0f}"),
        ("classifier GFLOP/s", lambda r: _number(_gflops(r, "classifier"))),
        ("detector GFLOP/s", lambda r: _number(_gflops(r, "detector"))),
        ("kept detections/image (mean)", lambda r: f"{_mean_detections(r):.1f}"),
        ("models floor s/image (FLOPs/rate)", lambda r: _number(_floor_s(r), 2)),
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
        counted = [name for name in present if by[(flavour, name)]["flops"]]
        if counted:
            parts = ", ".join(
                f"{name} {by[(flavour, name)]['flops']['classifier'] / 1e9:.1f} + "
                f"{by[(flavour, name)]['flops']['detector'] / 1e9:.1f}"
                for name in counted
            )
            lines.append(f"GFLOP per image (classifier + detector, mean): {parts}")
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
                f"{agree['probability']:.1e}, top class agrees on "
                f"{agree['top_class_agreement']:.0%} of images, same detections "
                f"{_yes(agree['same_detections'])} ({agree['matched_detections']:.0%} of the "
                f"reference's matched: same label, IoU >= 0.5), over matched: max |score diff| "
                f"{agree['score']:.1e}, max |box diff| {agree['box_px']:.1e} px, max |centroid "
                f"diff| {agree['centroid_px']:.0f} px; crystal targets identical "
                f"{_yes(agree['targets_identical'])} (within {agree['targets_px']:.0f} px), "
                f"dispense points identical {_yes(agree['dispense_identical'])} (within "
                f"{agree['dispense_px']:.0f} px)"
            )
        entry = interleaved.get(flavour)
        if entry is not None:
            seconds = entry["seconds"]
            parts = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
            lines.append(
                f"interleaved pipelines, same {entry['images']} images batch by batch: {parts}"
                + _paired_ratios(seconds)
            )
            lines += _interleaved_stages(entry.get("stages_ms", {}))
            lines += _classifier_ab_lines(entry.get("classifier_ab"))
        for name in present:
            by_rule = by[(flavour, name)].get("postprocess_by_rule_ms")
            if by_rule:
                parts = ", ".join(f"{rule} rule {ms:.0f} ms" for rule, ms in by_rule.items())
                lines.append(
                    f"{name}: post-processing and geometry per image by target rule, on the same "
                    f"detector outputs, rules alternated: {parts}"
                )
        lines.append("")
    lines += _targets(by, interleaved, flavours)
    return lines


def _interleaved_stages(stages: dict[str, dict[str, float]]) -> list[str]:
    """Per-image medians of the interleaved pipelines' stages: the steadiest classifier and
    detector comparison a shared machine gives."""
    reference = stages.get("reference")
    lines = []
    for stage in ("classifier", "detector", "postprocess"):
        parts = [f"{name} {values[stage]:.0f} ms" for name, values in stages.items()]
        if not parts:
            continue
        text = f"  interleaved {stage} ms/image: {', '.join(parts)}"
        if reference and reference.get(stage):
            ratios = [
                f"{name} {reference[stage] / values[stage]:.2f}x"
                for name, values in stages.items()
                if name != "reference" and values.get(stage)
            ]
            text += f" -> {', '.join(ratios)}" if ratios else ""
        lines.append(text)
    return lines


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(10th percentile, median, 90th percentile)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    return deciles[0], statistics.median(ordered), deciles[-1]


def _classifier_ab_lines(ab: dict[str, Any] | None) -> list[str]:
    """The classifier A/B: each configuration's calls and the per-turn speed-up, with their
    10-90 % ranges (the machine's noise)."""
    if not ab or not ab.get("ms"):
        return []
    parts = []
    for name, values in ab["ms"].items():
        low, middle, high = _spread(values)
        parts.append(f"{name} {middle:.0f} ms ({low:.0f}-{high:.0f})")
    calls = len(next(iter(ab["ms"].values())))
    lines = [f"  classifier A/B, {calls} calls each interleaved: {', '.join(parts)}"]
    for name, ratios in ab.get("ratios", {}).items():
        low, middle, high = _spread(ratios)
        lines.append(
            f"  classifier A/B speed-up of {name} per turn: median {middle:.2f}x "
            f"(10-90 %: {low:.2f}x-{high:.2f}x)"
        )
    return lines


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _floor_s(run: dict[str, Any]) -> float:
    """Seconds per image the models' FLOPs need at 100% of this process's matmul rate (bf16
    rate for the bf16 configuration): no configuration on this machine can beat it."""
    flops = run["flops"]
    if not flops:
        return math.nan
    rate = run["matmul_gflops"]
    if run["configuration"] == "bf16":
        rate = run.get("matmul_gflops_bf16") or math.nan
    return (flops.get("classifier", 0.0) + flops.get("detector", 0.0)) / (rate * 1e9)


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


def _ceiling(reference_s: float, run: dict[str, Any]) -> str:
    """The most any configuration with these FLOPs could gain here, for a missed target."""
    best = reference_s / _floor_s(run)
    if math.isnan(best):
        return ""
    return f"; at 100% of the measured matmul rate its FLOPs allow at most {best:.2f}x here"


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _targets(
    by: dict[tuple[str, str], dict[str, Any]],
    interleaved: dict[str, dict[str, Any]],
    flavours: list[str],
) -> list[str]:
    from chimp_worker.models.analyser import bf16_supported

    lines = ["Targets:"]

    def target(passed: bool | None, text: str) -> None:
        lines.append(f"  {_status(passed):4}  {text}")

    for flavour in flavours:
        fast, reference = by.get((flavour, "fast")), by.get((flavour, "reference"))
        if fast is None:
            continue
        seconds = interleaved.get(flavour, {}).get("seconds", {})
        images = interleaved.get(flavour, {}).get("images", fast["images"])
        reference_s = math.nan  # the reference pipeline's seconds per image
        if seconds.get("reference") and seconds.get("fast"):
            ratio = seconds["reference"] / seconds["fast"]
            reference_s = seconds["reference"] / images
            text = f"{flavour}: fp32 pipeline {ratio:.2f}x the plain reference, interleaved"
            target(ratio >= 2.0, f"{text} (>= 2.0x){_ceiling(reference_s, fast)}")
        elif reference is not None:
            ratio = _ratio(fast, reference)
            reference_s = 1 / reference["pipeline_images_per_s"]
            text = f"{flavour}: fp32 pipeline {ratio:.2f}x the plain reference"
            target(ratio >= 2.0, f"{text} (>= 2.0x){_ceiling(reference_s, fast)}")
        minutes = _plate_minutes(fast)
        floor = _floor_s(fast) * PLATE_IMAGES / 60
        target(
            minutes <= 8.0,
            f"{flavour}: 288-image plate {minutes:.1f} min, one worker (<= 8)"
            + ("" if math.isnan(floor) else f"; the FLOPs alone need {floor:.1f} min here"),
        )
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
            if seconds.get("reference") and seconds.get("bf16"):
                ratio = seconds["reference"] / seconds["bf16"]
                text = f"{flavour}: bf16 pipeline {ratio:.2f}x the plain reference, interleaved"
            else:
                ratio = _ratio(bf16, reference)
                reference_s = 1 / reference["pipeline_images_per_s"]
                text = f"{flavour}: bf16 pipeline {ratio:.2f}x the plain reference"
            target(ratio >= 4.0, f"{text} (>= 4x){_ceiling(reference_s, bf16)}")
        else:
            reason = "not run (--bf16)" if bf16 is None else "measured but emulated"
            if not bf16_supported():
                reason = "this CPU has no native bf16 (AVX512-BF16/AMX)"
            target(None, f"{flavour}: bf16 >= 4x the plain reference: {reason}")
        rss = fast["peak_rss_bytes"] / GIB
        target(rss <= 2.5, f"{flavour}: peak RSS {rss:.2f} GiB per worker (<= 2.5)")
        target(fast["load_s"] < 10, f"{flavour}: model load {fast['load_s']:.1f} s (< 10)")
    return lines
