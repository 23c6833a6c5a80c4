"""One vocabulary for people: ISPyB's class names wherever a user reads them, and the schema
(so it is plain when the weight-free baseline, not CHiMP, made a result)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from chimp_worker.analysis import CLASS_NAMES, ispyb_class
from chimp_worker.cli import cli

MODEL_ONLY_NAMES = re.compile(r"\b(crystals|precipitate)\b")


def test_every_model_class_has_an_ispyb_name() -> None:
    assert [ispyb_class(name) for name in CLASS_NAMES] == [
        "clear",
        "crystal",
        "other",
        "precipitant",
    ]


def test_demo_and_results_speak_ispyb_and_name_the_baselines_schema(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = runner.invoke(
        cli, ["demo", "--wells", "2", "--no-report", "--out", str(tmp_path / "demo")]
    )
    assert demo.exit_code == 0, demo.output
    assert "X crystal, . clear, p precipitant, o other" in demo.output
    assert "schema BASELINE_CV" in demo.output
    table = demo.output.split("latest inspection", 1)[1].split("checked against")[0]
    assert not MODEL_ONLY_NAMES.search(table), table  # truth and top class alike

    database = f"sqlite:///{tmp_path / 'demo' / 'chimp-demo.sqlite'}"
    results = runner.invoke(cli, ["results", "--barcode", "DEMO-0001", "--database-url", database])
    assert results.exit_code == 0, results.output
    header = next(line for line in results.output.splitlines() if "topClass" in line)
    assert header.split()[:7] == [
        "well",
        "drop",
        "location",
        "blSampleImageId",
        "state",
        "schema",
        "topClass",
    ]
    rows = [line for line in results.output.splitlines() if re.match(r"\s*A\d+\s", line)]
    assert len(rows) == 4
    assert all(" BASELINE_CV " in row for row in rows)
    assert "schema BASELINE_CV: made by the weight-free baseline analyser" in results.output
    as_json = runner.invoke(
        cli, ["results", "--barcode", "DEMO-0001", "--format", "json", "--database-url", database]
    )
    assert "weight-free" not in as_json.output, "JSON carries the schema per row instead"
