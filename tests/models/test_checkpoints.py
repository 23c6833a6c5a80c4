"""Loading model files in the published formats, and refusing every other file clearly."""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.weights import make_classifier_file

from chimp_worker.analysis import CLASS_NAMES
from chimp_worker.errors import ModelFileError
from chimp_worker.models import (
    build_detector,
    load_classifier,
    load_detector,
    save_detector_state_dict,
)
from chimp_worker.models.checkpoints import read_model_file
from chimp_worker.models.preprocessing import classifier_input

SHUFFLED = ("precipitate", "clear", "crystals", "other")


@pytest.fixture(scope="module")
def loaded_classifier(classifier_file: Path):  # type: ignore[no-untyped-def]
    return load_classifier(classifier_file)


@pytest.fixture(scope="module")
def sample_batch() -> torch.Tensor:
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(2)]
    return torch.from_numpy(np.stack([classifier_input(image, 64) for image in images]))


# --- the classifier file ---------------------------------------------------------------------


def test_the_classifier_file_has_the_published_layout(classifier_file: Path) -> None:
    contents = read_model_file(classifier_file, "classifier")
    assert set(contents) == {
        "model_state_dict",
        "model_struc_dict",
        "optimizer_state_dict",
        "loss_val",
        "class_names",
    }
    assert type(contents["loss_val"]) is np.float64
    assert contents["class_names"] == list(CLASS_NAMES)
    assert contents["model_struc_dict"]["type"] == "convnext_tiny_384_in22ft1k"
    assert contents["model_struc_dict"]["num_classes"] == 4
    head = {key: tuple(v.shape) for key, v in contents["model_state_dict"].items() if "head" in key}
    assert head["head.fc.1.weight"] == (512, 768)
    assert head["head.fc.5.weight"] == (4, 512)
    assert "head.fc.0.running_mean" in head
    assert "head.fc.3.running_var" in head


def test_plain_weights_only_loading_refuses_the_numpy_scalar(classifier_file: Path) -> None:
    """Why the allow-list exists: the published layout needs it."""
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(classifier_file, weights_only=True)


def test_the_classifier_loads_with_its_class_order_and_checksum(
    loaded_classifier, classifier_file: Path
) -> None:  # type: ignore[no-untyped-def]
    assert loaded_classifier.class_names == CLASS_NAMES
    assert loaded_classifier.model_type == "convnext_tiny_384_in22ft1k"
    assert loaded_classifier.sha256 == hashlib.sha256(classifier_file.read_bytes()).hexdigest()
    saved = read_model_file(classifier_file, "classifier")["model_state_dict"]
    for key, value in loaded_classifier.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_classifier_outputs_are_deterministic(loaded_classifier, sample_batch) -> None:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        first = loaded_classifier.probabilities(sample_batch)
        second = loaded_classifier.probabilities(sample_batch)
    assert torch.equal(first, second)
    assert torch.allclose(first.sum(dim=1), torch.ones(2))
    assert not torch.allclose(first[0], first[1])  # the images differ, so do the outputs


def test_data_parallel_prefixes_are_stripped(
    tmp_path: Path, loaded_classifier, sample_batch
) -> None:  # type: ignore[no-untyped-def]
    prefixed = make_classifier_file(tmp_path / "dp.pt", seed=0, data_parallel=True)
    keys = read_model_file(prefixed, "classifier")["model_state_dict"]
    assert all(key.startswith("module.") for key in keys)
    reloaded = load_classifier(prefixed)
    with torch.inference_mode():
        assert torch.equal(
            reloaded.probabilities(sample_batch), loaded_classifier.probabilities(sample_batch)
        )


def test_shuffled_class_names_still_give_each_class_its_own_probability(
    tmp_path: Path, classifier_file: Path, loaded_classifier, sample_batch
) -> None:  # type: ignore[no-untyped-def]
    """The same network with its output rows and class_names permuted together must give
    identical probabilities per class name; mapping by position would swap them."""
    checkpoint = read_model_file(classifier_file, "classifier")
    order = [CLASS_NAMES.index(name) for name in SHUFFLED]
    state = checkpoint["model_state_dict"]
    state["head.fc.5.weight"] = state["head.fc.5.weight"][order].clone()
    checkpoint["class_names"] = list(SHUFFLED)
    checkpoint["model_struc_dict"]["classes"] = list(SHUFFLED)
    shuffled_path = tmp_path / "shuffled.pt"
    torch.save(checkpoint, shuffled_path)

    shuffled = load_classifier(shuffled_path)
    assert shuffled.class_names == SHUFFLED
    with torch.inference_mode():
        original_rows = loaded_classifier.probabilities(sample_batch)
        shuffled_rows = shuffled.probabilities(sample_batch)
    assert not torch.allclose(original_rows, shuffled_rows)  # positions really moved
    for original_row, shuffled_row in zip(original_rows, shuffled_rows, strict=True):
        expected = loaded_classifier.as_mapping(original_row)
        got = shuffled.as_mapping(shuffled_row)
        assert set(got) == set(CLASS_NAMES)
        for name in CLASS_NAMES:
            assert got[name] == pytest.approx(expected[name], abs=1e-6)


def test_capitalised_class_names_map_to_canonical_names(tmp_path: Path) -> None:
    path = make_classifier_file(tmp_path / "caps.pt", ("Clear", "Crystals", "Other", "Precipitate"))
    assert load_classifier(path).class_names == CLASS_NAMES


def test_a_checkpoint_saved_with_numpy_1_module_names_loads(tmp_path: Path) -> None:
    """Files written before numpy 2 name the scalar numpy.core.multiarray.scalar."""
    path = tmp_path / "old-numpy.pt"
    torch.save({"loss_val": np.float64(0.25), "w": torch.ones(2)}, path)
    _rename_pickle_globals(path, b"numpy._core.multiarray", b"numpy.core.multiarray")
    contents = read_model_file(path, "classifier")
    assert contents["loss_val"] == 0.25
    assert type(contents["loss_val"]) is np.float64


def _rename_pickle_globals(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite a module name inside a torch zip file's pickle (protocol 2 GLOBAL opcodes)."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            target.writestr(info, data)
    path.write_bytes(buffer.getvalue())


# --- refusing the wrong files ----------------------------------------------------------------


def test_a_detector_file_given_as_the_classifier_is_refused(vmxi_detector_file: Path) -> None:
    with pytest.raises(ModelFileError, match="detector state_dict, not a classifier"):
        load_classifier(vmxi_detector_file)


def test_a_classifier_given_as_a_detector_is_refused(classifier_file: Path) -> None:
    with pytest.raises(ModelFileError, match="is a classifier checkpoint, not a Mask R-CNN"):
        load_detector(classifier_file, 2)


def test_a_truncated_file_is_refused(tmp_path: Path, classifier_file: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    with classifier_file.open("rb") as stream:
        truncated.write_bytes(stream.read(5_000_000))
    with pytest.raises(ModelFileError, match="truncated or not a torch file"):
        load_classifier(truncated)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"this is a text file, not a model\n", "truncated or not a torch file"),
    ],
)
def test_files_that_are_not_torch_files_are_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_detector(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_classifier(tmp_path / "nowhere.pt")


def test_a_file_with_arbitrary_python_objects_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "code.pt"
    # argparse.Namespace stands in for any class: unpickling one means importing and
    # calling whatever the file names.
    torch.save({"class_names": list(CLASS_NAMES), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelFileError, match="refusing to unpickle"):
        load_classifier(path)


def test_a_vmxi_detector_given_where_the_xchem_one_belongs_is_refused(
    vmxi_detector_file: Path,
) -> None:
    with pytest.raises(ModelFileError, match="has 2 classes, expected 3"):
        load_detector(vmxi_detector_file, 3)


def test_class_names_that_do_not_match_the_outputs_are_refused(
    tmp_path: Path, classifier_file: Path
) -> None:
    checkpoint = read_model_file(classifier_file, "classifier")
    checkpoint["class_names"] = ["clear", "crystals", "precipitate"]
    path = tmp_path / "three.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ModelFileError, match="has 4 outputs but 3 class_names"):
        load_classifier(path)


def test_unknown_class_names_are_refused(tmp_path: Path, classifier_file: Path) -> None:
    checkpoint = read_model_file(classifier_file, "classifier")
    checkpoint["class_names"] = ["clear", "crystals", "other", "skin"]
    path = tmp_path / "skin.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ModelFileError, match=r"\['skin'\] that are not CHiMP classes"):
        load_classifier(path)


def test_a_state_dict_from_another_architecture_is_refused(tmp_path: Path) -> None:
    state = build_detector(2).state_dict()
    state.pop("roi_heads.mask_predictor.mask_fcn_logits.weight")
    state["roi_heads.extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=r"1 missing keys.*1 unexpected keys"):
        load_detector(path)


# --- detector file variants ------------------------------------------------------------------


def test_raw_wrapped_and_prefixed_detector_files_load_the_same_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_detector(3)
    raw = save_detector_state_dict(model, tmp_path / "raw.pt")
    wrapped = save_detector_state_dict(model, tmp_path / "wrapped.pt", wrapped=True)
    prefixed = save_detector_state_dict(model, tmp_path / "dp.pt", data_parallel=True)
    assert isinstance(read_model_file(raw, "detector"), dict)
    assert set(read_model_file(wrapped, "detector")) == {"model_state_dict"}
    expected = model.state_dict()
    for path in (raw, wrapped, prefixed):
        loaded = load_detector(path, 3)
        assert loaded.num_classes == 3
        assert loaded.labels == ("background", "drop", "crystal")
        for key, value in loaded.model.state_dict().items():
            assert torch.equal(value, expected[key]), (path.name, key)


def test_a_detector_trained_with_plain_batch_norm_loads(tmp_path: Path) -> None:
    """maskrcnn_resnet50_fpn(weights_backbone=None) uses BatchNorm2d, whose state_dict adds
    num_batches_tracked counters; such a file must load into the frozen-BN architecture."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(4)
    plain = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    path = tmp_path / "plain-bn.pt"
    torch.save(plain.state_dict(), path)
    assert any(key.endswith("num_batches_tracked") for key in plain.state_dict())
    loaded = load_detector(path, 2)
    assert torch.equal(
        loaded.model.state_dict()["backbone.body.conv1.weight"],
        plain.state_dict()["backbone.body.conv1.weight"],
    )
