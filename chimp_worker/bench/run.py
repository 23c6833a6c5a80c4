"""Throughput benchmark (``chimp-worker bench``): the plain reference against the defaults.

A mock plate per imager flavour (native-size JPEGs, SQLite ISPyB), seeded weight files, and
for each configuration a fresh child process (so peak RSS and thread settings are its own)
that measures, on the same images: model-load time, the models' own rate, every stage's
milliseconds, achieved GFLOP/s (``torch.utils.flop_counter``) against a measured fp32 matmul
rate, database writes, the whole pipeline (``Pipeline.process``) and peak RSS. The parent
compares the configurations' outputs and prints the issue's targets with PASS/FAIL
(``bench.report``). A script that prints, never a test.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chimp_worker.analysis import DecodedImage, ImageAnalysis
from chimp_worker.detector_kinds import detector_kind

__all__ = [
    "CONFIGURATIONS",
    "BenchPlate",
    "BenchSetup",
    "peak_rss_bytes",
    "prepare_bench",
    "run_bench",
]

# name -> (what it is, AnalysisOptions overrides)
CONFIGURATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "reference": (
        "as the published tooling runs: score 0.05 inside the model, every mask pasted, "
        "filtered at 0.6 after; batch 1, contiguous tensors, eager timm classifier, "
        "no prefetching",
        {
            "model_score_threshold": 0.05,
            "paste_full_masks": True,
            "fold_batchnorm": False,
            "channels_last": False,
            "fuse_classifier": False,
            "prefetch": False,
            "batch_size": 1,
        },
    ),
    "fast": (
        "the defaults: score 0.6 inside the model, kept masks pasted around their boxes only, "
        "batch norm folded into the convolutions, channels-last classifier with fused MLPs, "
        "prefetching, batches of batch_size",
        {},
    ),
    "bf16": ("opt-in: the defaults under bf16 autocast", {"precision": "bf16"}),
}
PLATE_IMAGES = 288


@dataclass(frozen=True)
class BenchPlate:
    flavour: str
    database: Path  # a template: every measurement works on its own copy
    image_root: Path
    inspection_id: int
    image_ids: tuple[int, ...]
    width: int
    height: int


@dataclass(frozen=True)
class BenchSetup:
    classifier: Path
    detectors: dict[str, Path]
    plates: dict[str, BenchPlate]
    threads: int
    batch_size: int
    classifier_input_size: int
    images: int


def prepare_bench(
    workdir: Path,
    *,
    images: int,
    flavours: Sequence[str] = ("vmxi", "xchem"),
    threads: int = 0,
    batch_size: int = 4,
    classifier_input_size: int = 512,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> BenchSetup:
    """Seeded weight files (kept between runs) and a fresh mock plate per flavour."""
    from chimp_worker.ispyb import schema
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.mock_imager.plate import create_plate
    from chimp_worker.mock_imager.scene import get_flavour
    from chimp_worker.models.seeded import make_classifier_file, make_detector_file

    workdir.mkdir(parents=True, exist_ok=True)
    weights = workdir / "weights"
    classifier = weights / f"classifier-seed{seed}.pt"
    if not classifier.exists():
        echo(f"writing seeded classifier file {classifier}")
        make_classifier_file(classifier, seed=seed)
    detectors = {}
    for flavour in flavours:
        detectors[flavour] = weights / f"{flavour}-detector-seed{seed}.pt"
        if not detectors[flavour].exists():
            echo(f"writing seeded {flavour} detector file {detectors[flavour]} (calibration pass)")
            make_detector_file(detectors[flavour], flavour, seed)
    plates = {}
    for flavour in flavours:
        folder = workdir / f"plate-{flavour}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        database = folder / "ispyb.sqlite"
        schema.create_all(f"sqlite:///{database}")
        engine = make_engine(f"sqlite:///{database}")
        try:
            echo(f"rendering a {flavour} mock plate: {images} native-size images")
            plate = create_plate(
                make_session_factory(engine),
                folder / "images",
                barcode=f"BENCH{flavour.upper()}",
                flavour=flavour,
                wells=math.ceil(images / 2),
                seed=seed,
            )
        finally:
            engine.dispose()
        spec = get_flavour(flavour)
        plates[flavour] = BenchPlate(
            flavour=flavour,
            database=database,
            image_root=folder / "images",
            inspection_id=plate.latest.containerInspectionId,
            image_ids=tuple(image.blSampleImageId for image in plate.latest.images[:images]),
            width=spec.width,
            height=spec.height,
        )
    return BenchSetup(
        classifier=classifier,
        detectors=detectors,
        plates=plates,
        threads=threads or len(os.sched_getaffinity(0)),
        batch_size=batch_size,
        classifier_input_size=classifier_input_size,
        images=images,
    )


def _count_fused_linear_flops() -> None:
    """Teach torch's FLOP counter the fused classifier's oneDNN linear (``classifier_fusion``):
    2 x output elements x input features, as for ``mm``; it ignores unknown ops otherwise."""
    import math as _math

    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    target = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if target is None or target in flop_registry:
        return

    @register_flop_formula(target)
    def _fused_linear_flop(
        x_shape: Sequence[int], *args: object, out_shape: Sequence[int], **kwargs: object
    ) -> int:
        return 2 * _math.prod(out_shape) * x_shape[-1]


def matmul_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """This process's matrix-multiply rate (fp32 or bf16): the yardstick for achieved
    GFLOP/s, and with the FLOP count the floor no configuration can beat."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_bytes() -> int:
    """This process's own peak resident set size.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``exec``, so a spawned child
    reports at least the RSS its parent had when it forked (the bench's parent holds the
    freshly written seeded weights and rendered plates). ``VmHWM`` belongs to the current
    address space alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Recorder:
    """An Analyser that keeps the stage timings of what the wrapped one returned (not the
    results themselves: their masks would inflate the worker's peak RSS)."""

    inner: Any
    timings: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.schema_name = self.inner.schema_name
        self.models = self.inner.models
        self.target_rule = self.inner.target_rule

    def analyse(self, images: Sequence[DecodedImage]) -> list[ImageAnalysis]:
        found = self.inner.analyse(images)
        self.timings.extend(dict(result.timings_ms) for result in found)
        return found


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _stage(timings: Sequence[dict[str, float]], *names: str) -> float:
    """Median over images of the summed milliseconds of the named stages."""
    return _median([sum(timing.get(name, 0.0) for name in names) for timing in timings])


def _summary(result: ImageAnalysis) -> dict[str, Any]:
    """What two configurations must agree on, as plain data."""
    dispense = result.dispense
    return {
        "probabilities": dict(result.probabilities or {}),
        "detections": [
            {"label": d.label, "score": d.score, "box": list(d.box), "centroid": d.centroid}
            for d in result.detections
        ],
        "targets": [(t.x, t.y) for t in result.crystal_targets],
        "dispense": None if dispense is None else [dispense.status.value, dispense.x, dispense.y],
    }


def measure(
    setup: BenchSetup, flavour: str, configuration: str, count_flops: bool
) -> dict[str, Any]:
    """One configuration on one flavour's plate; runs in its own (spawned) process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from chimp_worker.config import Settings
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.log import configure_logging
    from chimp_worker.models.analyser import (
        AnalysisOptions,
        ChimpAnalyser,
        bf16_supported,
        configure_threads,
    )
    from chimp_worker.models.classifier import load_classifier
    from chimp_worker.models.detector import load_detector
    from chimp_worker.pipeline import Pipeline
    from chimp_worker.wiring import make_image_source

    configure_logging("WARNING", "auto")
    _count_fused_linear_flops()
    plate = setup.plates[flavour]
    role = detector_kind(flavour).role
    configure_threads(setup.threads)
    rate = matmul_gflops()
    rate_bf16 = matmul_gflops(dtype="bfloat16") if bf16_supported() else None
    options: dict[str, Any] = {
        "batch_size": setup.batch_size,
        "classifier_input_size": setup.classifier_input_size,
        **CONFIGURATIONS[configuration][1],
    }

    started = time.perf_counter()
    analyser = ChimpAnalyser(
        classifier=load_classifier(setup.classifier),
        detectors={flavour: load_detector(setup.detectors[flavour], kind=flavour)},
        options=AnalysisOptions(**options),
    )
    load_s = time.perf_counter() - started

    settings = Settings(database_url=f"sqlite:///{plate.database}", image_roots=[plate.image_root])
    source = make_image_source(settings)
    paths = _image_paths(plate)
    analyser.analyse([source.fetch(paths[plate.image_ids[0]], plate.image_ids[0])])  # warm-up

    # The worker's own figures first: whole pipeline, then peak RSS (it only ever grows).
    copy = plate.database.with_name(f"pipeline-{configuration}.sqlite")
    shutil.copyfile(plate.database, copy)
    engine = make_engine(f"sqlite:///{copy}")
    recorder = _Recorder(analyser)
    pipeline = Pipeline(
        make_session_factory(engine),
        source,
        recorder,
        batch_size=options["batch_size"],
        engine=engine,
    )
    started = time.perf_counter()
    outcome = pipeline.process(plate.inspection_id, list(plate.image_ids))
    pipeline_s = time.perf_counter() - started
    pipeline.close()
    copy.unlink(missing_ok=True)
    worker_rss = peak_rss_bytes()

    # The models on their own, on inputs decoded and prepared beforehand.
    decoded = [source.fetch(paths[image_id], image_id) for image_id in plate.image_ids]
    prepared = [analyser.prepare(image) for image in decoded]
    started = time.perf_counter()
    with torch.inference_mode():
        results = analyser.analyse_prepared(prepared)
    models_s = time.perf_counter() - started
    timings = [dict(result.timings_ms) for result in results]

    flops: dict[str, float] = {}
    if count_flops:  # per image: the mask head's share depends on the detections kept
        totals = []
        with torch.inference_mode():
            for item in prepared:
                with FlopCounterMode(display=False) as counter:
                    analyser.analyse_prepared([item])
                totals.append(counter.get_total_flops())
            classifier, classifier_input = analyser.classifier, prepared[0].classifier_input
            assert classifier is not None  # the bench always loads the classifier
            assert classifier_input is not None  # so every prepared image has its input
            with FlopCounterMode(display=False) as counter:
                classifier.model(torch.from_numpy(classifier_input[None]))
        classifier_flops = counter.get_total_flops()
        flops = {
            "classifier": classifier_flops,
            "detector": statistics.fmean(totals) - classifier_flops,
        }

    write_ms = _timed_writes(plate, results)
    by_rule = (
        {} if options.get("paste_full_masks") else _postprocess_by_rule(analyser, prepared, role)
    )

    count = len(plate.image_ids)
    return {
        "configuration": configuration,
        "flavour": flavour,
        "images": count,
        "threads": torch.get_num_threads(),
        "matmul_gflops": rate,
        "matmul_gflops_bf16": rate_bf16,
        "load_s": load_s,
        "models_images_per_s": count / models_s,
        "pipeline_images_per_s": count / pipeline_s,
        "pipeline_failed": len(outcome.failed),
        "stages_ms": {
            "fetch": _median([image.fetch_ms for image in decoded]),
            "decode": _median([image.decode_ms for image in decoded]),
            "preprocess": _median([sum(p.timings_ms.values()) for p in prepared]),
            "classifier": _stage(timings, "classifier"),
            "detector": _stage(timings, role),
            "postprocess": _stage(timings, f"{role}_postprocess", "geometry"),
            "database_write": _median(write_ms),
        },
        "pipeline_stages_ms": {
            "fetch": _stage(recorder.timings, "fetch"),
            "decode": _stage(recorder.timings, "decode"),
            "preprocess": _stage(recorder.timings, "classifier_preprocess", "detector_preprocess"),
        },
        "flops": flops,
        "postprocess_by_rule_ms": by_rule,
        "peak_rss_bytes": worker_rss,
        "outputs": [_summary(result) for result in results],
    }


def _postprocess_by_rule(
    analyser: Any, prepared: Sequence[Any], role: str, images: int = 4, repeats: int = 5
) -> dict[str, float]:
    """Milliseconds per image of post-processing and geometry by each target rule, on the same
    detector outputs: the rules alternate, ``repeats`` times per image (median), median over
    the first ``images`` images. Interleaving keeps a shared machine's drift out of the ratio.
    """
    import torch

    from chimp_worker.analysis import TargetRule

    detector = analyser.detectors[role]
    per_rule: dict[str, list[float]] = {str(rule): [] for rule in TargetRule}
    with torch.inference_mode():
        for item in prepared[:images]:
            tensor = torch.from_numpy(item.detector_input).to(analyser.device)
            (output,) = detector([tensor], paste_masks=False)
            times: dict[str, list[float]] = {name: [] for name in per_rule}
            for _ in range(repeats):
                for rule in TargetRule:
                    started = time.perf_counter()
                    found = analyser.postprocess(role, output, item.image, rule)
                    analyser.targets({role: found}, item.image, rule)
                    times[str(rule)].append((time.perf_counter() - started) * 1000)
            for name, values in times.items():
                per_rule[name].append(_median(values))
    return {name: _median(values) for name, values in per_rule.items()}


def _timed_writes(plate: BenchPlate, results: Sequence[ImageAnalysis]) -> list[float]:
    """Milliseconds to write each image's results, into a throwaway copy of the plate's database."""
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.ispyb.writer import write_image_result

    copy = plate.database.with_name("writes.sqlite")
    shutil.copyfile(plate.database, copy)
    engine = make_engine(f"sqlite:///{copy}")
    factory = make_session_factory(engine)
    times = []
    try:
        for image_id, result in zip(plate.image_ids, results, strict=True):
            started = time.perf_counter()
            write_image_result(factory, image_id, result)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        engine.dispose()
        copy.unlink(missing_ok=True)
    return times


def measure_paired(
    setup: BenchSetup, flavour: str, configurations: Sequence[str]
) -> dict[str, Any]:
    """Whole-pipeline seconds of several configurations, interleaved batch by batch.

    On a shared machine the load drifts over minutes; running the configurations' pipelines
    alternately on the same batches puts them under the same conditions, so their ratio is
    far steadier than that of separate runs. Runs in its own process.
    """
    from chimp_worker.config import Settings
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.log import configure_logging
    from chimp_worker.models.analyser import AnalysisOptions, ChimpAnalyser, configure_threads
    from chimp_worker.models.classifier import load_classifier
    from chimp_worker.models.detector import load_detector
    from chimp_worker.pipeline import Pipeline
    from chimp_worker.wiring import make_image_source

    configure_logging("WARNING", "auto")
    configure_threads(setup.threads)
    plate = setup.plates[flavour]
    role = detector_kind(flavour).role
    settings = Settings(database_url=f"sqlite:///{plate.database}", image_roots=[plate.image_root])
    pipelines = {}
    recorders: dict[str, _Recorder] = {}
    for configuration in configurations:
        options = {
            "batch_size": setup.batch_size,
            "classifier_input_size": setup.classifier_input_size,
            **CONFIGURATIONS[configuration][1],
        }
        analyser = ChimpAnalyser(
            classifier=load_classifier(setup.classifier),
            detectors={flavour: load_detector(setup.detectors[flavour], kind=flavour)},
            options=AnalysisOptions(**options),
        )
        copy = plate.database.with_name(f"paired-{configuration}.sqlite")
        shutil.copyfile(plate.database, copy)
        engine = make_engine(f"sqlite:///{copy}")
        recorders[configuration] = _Recorder(analyser)
        pipelines[configuration] = Pipeline(
            make_session_factory(engine),
            make_image_source(settings),
            recorders[configuration],
            batch_size=options["batch_size"],
            engine=engine,
        )
    seconds = dict.fromkeys(configurations, 0.0)
    ids = list(plate.image_ids)
    first = pipelines[configurations[0]].image_source.fetch(_image_paths(plate)[ids[0]], ids[0])
    for recorder in recorders.values():  # warm-up on the first image, not counted
        recorder.inner.analyse([first])
    step = max(1, setup.batch_size)
    for start in range(0, len(ids), step):
        for configuration, pipeline in pipelines.items():
            started = time.perf_counter()
            pipeline.process(plate.inspection_id, ids[start : start + step])
            seconds[configuration] += time.perf_counter() - started
    for configuration, pipeline in pipelines.items():
        pipeline.close()
        plate.database.with_name(f"paired-{configuration}.sqlite").unlink(missing_ok=True)
    decoded = [
        pipelines[configurations[0]].image_source.fetch(_image_paths(plate)[image_id], image_id)
        for image_id in ids
    ]
    classifier_ab = _classifier_ab({name: r.inner for name, r in recorders.items()}, decoded)
    stages = {
        configuration: {
            "classifier": _stage(recorder.timings, "classifier"),
            "detector": _stage(recorder.timings, role),
            "postprocess": _stage(recorder.timings, f"{role}_postprocess", "geometry"),
        }
        for configuration, recorder in recorders.items()
    }
    return {
        "flavour": flavour,
        "images": len(ids),
        "seconds": seconds,
        "stages_ms": stages,
        "classifier_ab": classifier_ab,
    }


def _classifier_ab(
    analysers: dict[str, Any], images: Sequence[DecodedImage], rounds: int = 3
) -> dict[str, Any]:
    """Classifier milliseconds per image of each configuration, calls interleaved: every image,
    ``rounds`` times, each configuration once per turn, the order alternating so neither is
    always first after the other's cache footprint. Same preprocessed inputs for all.

    Per configuration: every call's milliseconds. ``ratios``: reference / other per turn, whose
    spread says how noisy the machine was.
    """
    import torch

    names = list(analysers)
    inputs = [analysers[names[0]].prepare(image).classifier_input for image in images]
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up, not counted
            analysers[name].classify(inputs[:1])
        for turn in range(rounds * len(inputs)):
            array = inputs[turn % len(inputs)]
            for name in names if turn % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                analysers[name].classify([array])
                times[name].append((time.perf_counter() - started) * 1000)
    ratios = {}
    if "reference" in times:
        ratios = {
            name: [a / b for a, b in zip(times["reference"], values, strict=True)]
            for name, values in times.items()
            if name != "reference"
        }
    return {"ms": times, "ratios": ratios}


def _image_paths(plate: BenchPlate) -> dict[int, str]:
    """blSampleImageId -> imageFullPath of the plate's inspection."""
    from chimp_worker.ispyb.database import make_engine, make_session_factory
    from chimp_worker.ispyb.progress import inspection_images

    engine = make_engine(f"sqlite:///{plate.database}")
    try:
        images = inspection_images(make_session_factory(engine), plate.inspection_id)
    finally:
        engine.dispose()
    return {  # the bench plate records every image's path
        image.blSampleImageId: image.imageFullPath
        for image in images
        if image.imageFullPath is not None
    }


def run_bench(
    setup: BenchSetup,
    configurations: Sequence[str] = ("reference", "fast"),
    echo: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs, paired): every configuration on every plate, each in a fresh child process,
    then the configurations' pipelines interleaved in one more child per plate."""
    runs = []
    paired = []
    context = multiprocessing.get_context("spawn")
    for flavour in setup.plates:
        for configuration in configurations:
            echo(f"measuring {configuration} on the {flavour} plate ({setup.images} images)...")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                run = pool.submit(measure, setup, flavour, configuration, True).result()
            runs.append(run)
        echo(f"interleaving {', '.join(configurations)} pipelines on the {flavour} plate...")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            paired.append(pool.submit(measure_paired, setup, flavour, configurations).result())
    return runs, paired
