"""The CHiMP models: loading the published files, preprocessing, inference.

Importing this package imports torch; the CLI imports it only for commands that need it.
"""

from chimp_worker.models.analyser import (
    AnalysisOptions,
    ChimpAnalyser,
    PreparedImage,
    configure_threads,
    resolve_device,
)
from chimp_worker.models.checkpoints import file_sha256
from chimp_worker.models.classifier import (
    DEFAULT_CLASSIFIER_TYPE,
    LoadedClassifier,
    build_classifier,
    load_classifier,
    save_classifier_checkpoint,
)
from chimp_worker.models.detector import (
    LoadedDetector,
    build_detector,
    load_detector,
    save_detector_state_dict,
)

__all__ = [
    "DEFAULT_CLASSIFIER_TYPE",
    "AnalysisOptions",
    "ChimpAnalyser",
    "LoadedClassifier",
    "LoadedDetector",
    "PreparedImage",
    "build_classifier",
    "build_detector",
    "configure_threads",
    "file_sha256",
    "load_classifier",
    "load_detector",
    "resolve_device",
    "save_classifier_checkpoint",
    "save_detector_state_dict",
]
