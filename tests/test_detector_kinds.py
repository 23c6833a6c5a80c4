"""Detector kinds are data: the settings, the model-file listing, replay's checksums and the
choice of which detector's crystals and drops count all follow ``DETECTOR_KINDS``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chimp_worker.config import (
    detector_path_overrides,
    load_settings,
    load_settings_with_sources,
)
from chimp_worker.detector_kinds import (
    DETECTOR_KINDS,
    DetectorKind,
    configured_model_files,
    crystal_role,
    detector_kind,
    drop_role,
    kind_for_classes,
    kind_of_role,
)
from chimp_worker.errors import ConfigError
from chimp_worker.replay import current_model_checksums

UV = DetectorKind("uv", "UV detector", ("background", "crystal", "salt", "drop"))


@pytest.fixture(autouse=True)
def _no_model_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CHIMP_CONFIG",
        "CHIMP_CLASSIFIER_PATH",
        "CHIMP_DETECTOR_PATHS",
        "CHIMP_VMXI_DETECTOR_PATH",
        "CHIMP_XCHEM_DETECTOR_PATH",
        "CHIMP_ANALYSER",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def uv_kind(monkeypatch: pytest.MonkeyPatch) -> DetectorKind:
    """A third kind, registered the way a new detector would be: one description."""
    monkeypatch.setitem(DETECTOR_KINDS, UV.name, UV)
    return UV


def model_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_the_shipped_kinds_describe_what_each_detector_finds() -> None:
    vmxi, xchem = detector_kind("vmxi"), detector_kind("xchem")
    assert (vmxi.role, vmxi.num_classes, vmxi.supplies_crystals, vmxi.supplies_drops) == (
        "vmxi_detector",
        2,
        True,
        False,
    )
    assert (xchem.role, xchem.labels, xchem.supplies_drops) == (
        "xchem_detector",
        ("background", "drop", "crystal"),
        True,
    )
    assert kind_for_classes(3) is xchem
    assert kind_of_role("vmxi_detector") is vmxi
    assert kind_of_role("baseline") is None
    with pytest.raises(ValueError, match="unknown detector kind 'uv' \\(known: vmxi, xchem\\)"):
        detector_kind("uv")


def test_crystals_come_from_vmxi_first_and_drops_from_xchem() -> None:
    both = ["xchem_detector", "vmxi_detector"]
    assert crystal_role(both) == "vmxi_detector"
    assert crystal_role(["xchem_detector"]) == "xchem_detector"
    assert drop_role(both) == "xchem_detector"
    assert drop_role(["vmxi_detector"]) is None


def test_the_old_setting_names_fill_the_mapping(tmp_path: Path, monkeypatch) -> None:
    vmxi = model_file(tmp_path / "vmxi.pt", b"v")
    xchem = model_file(tmp_path / "xchem.pt", b"x")
    monkeypatch.setenv("CHIMP_VMXI_DETECTOR_PATH", str(vmxi))
    settings = load_settings(xchem_detector_path=xchem)
    assert settings.detector_paths == {"vmxi": vmxi, "xchem": xchem}
    assert settings.has_model_files
    assert settings.effective_analyser == "chimp"


def test_the_mapping_from_a_file_and_the_environment(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "chimp-worker.toml"
    config.write_text('detector_paths = { xchem = "/models/xchem.pt" }\n')
    settings = load_settings(config)
    assert settings.detector_paths == {"xchem": Path("/models/xchem.pt")}
    assert settings.xchem_detector_path == Path("/models/xchem.pt")  # the alias reads the same
    assert settings.vmxi_detector_path is None
    monkeypatch.setenv("CHIMP_DETECTOR_PATHS", '{"vmxi": "/models/vmxi.pt"}')
    assert load_settings().detector_paths == {"vmxi": Path("/models/vmxi.pt")}


def test_config_show_says_an_alias_came_from_the_mapping(monkeypatch) -> None:
    monkeypatch.setenv("CHIMP_DETECTOR_PATHS", '{"xchem": "/m/x.pt"}')
    monkeypatch.setenv("CHIMP_VMXI_DETECTOR_PATH", "/m/v.pt")
    settings, sources = load_settings_with_sources()
    assert list(settings.detector_paths) == ["vmxi", "xchem"]
    assert sources["xchem_detector_path"] == "alias of detector_paths.xchem"
    assert sources["vmxi_detector_path"] == "environment CHIMP_VMXI_DETECTOR_PATH"


def test_an_unknown_kind_or_two_files_for_one_kind_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"detector_paths \[CHIMP_DETECTOR_PATHS\].*'uv'"):
        load_settings(detector_paths={"uv": tmp_path / "uv.pt"})
    with pytest.raises(ConfigError, match=r"vmxi_detector_path and detector_paths\.vmxi"):
        load_settings(detector_paths={"vmxi": tmp_path / "a.pt"}, vmxi_detector_path="b.pt")
    same = load_settings(
        detector_paths={"vmxi": tmp_path / "a.pt"}, vmxi_detector_path=tmp_path / "a.pt"
    )
    assert same.detector_paths == {"vmxi": tmp_path / "a.pt"}


def test_command_line_files_replace_only_their_kinds(tmp_path: Path) -> None:
    settings = load_settings(
        vmxi_detector_path=tmp_path / "v.pt", xchem_detector_path=tmp_path / "x.pt"
    )
    overrides = detector_path_overrides(settings, {"xchem": tmp_path / "new.pt"})
    changed = load_settings(**overrides)
    assert changed.detector_paths == {"vmxi": tmp_path / "v.pt", "xchem": tmp_path / "new.pt"}


def test_one_listing_of_the_model_files_feeds_replay_checksums(tmp_path: Path) -> None:
    classifier = model_file(tmp_path / "c.pt", b"c")
    xchem = model_file(tmp_path / "x.pt", b"x")
    settings = load_settings(classifier_path=classifier, detector_paths={"xchem": xchem})
    files = configured_model_files(settings)
    assert [(f.role, f.kind, f.path) for f in files] == [
        ("classifier", "classifier", classifier),
        ("xchem_detector", "xchem", xchem),
    ]
    assert current_model_checksums(settings) == {
        hashlib.sha256(b"c").hexdigest(),
        hashlib.sha256(b"x").hexdigest(),
    }


def test_a_new_kind_is_one_description(uv_kind: DetectorKind, tmp_path: Path) -> None:
    uv = model_file(tmp_path / "uv.pt", b"u")
    settings = load_settings(detector_paths={"uv": uv}, vmxi_detector_path=tmp_path / "v.pt")
    assert settings.detector_paths == {"vmxi": tmp_path / "v.pt", "uv": uv}
    assert settings.effective_analyser == "chimp"
    listed = [(f.role, f.kind) for f in configured_model_files(settings)]
    assert listed == [("vmxi_detector", "vmxi"), ("uv_detector", "uv")]
    assert kind_for_classes(4) is uv_kind
    # VMXi and XChem are preferred; alone, the new kind supplies crystals and drops.
    assert crystal_role(["uv_detector", "vmxi_detector"]) == "vmxi_detector"
    assert drop_role(["uv_detector", "vmxi_detector"]) == "uv_detector"
    assert drop_role(["uv_detector", "xchem_detector"]) == "xchem_detector"
    assert crystal_role(["uv_detector"]) == "uv_detector"


def test_the_command_line_knows_the_kinds() -> None:
    from click.testing import CliRunner

    from chimp_worker.cli import cli

    result = CliRunner().invoke(cli, ["analyse", "--detector", "uv=uv.pt", "x.png"])
    assert result.exit_code == 2
    assert "KIND one of vmxi, xchem" in result.output
