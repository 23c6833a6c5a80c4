"""The one plate layout: the fallback for a ContainerType row without drop columns is explicit."""

from __future__ import annotations

from chimp_worker.plate_layout import MOCK_DEFAULT_DROPS_X, PlateLayout


def test_a_plate_read_back_falls_back_to_two_drops_and_the_mock_to_one() -> None:
    columns = {
        "capacity": None,
        "well_per_row": None,
        "drop_per_well_x": None,
        "drop_per_well_y": None,
    }
    assert PlateLayout.from_container_type(**columns).drops_per_well == 2
    mock = PlateLayout.from_container_type(**columns, default_drops_x=MOCK_DEFAULT_DROPS_X)
    assert (mock.drops_per_well, mock.wells, mock.well_name(95)) == (1, 96, "H12")


def test_given_drop_columns_win_over_either_fallback() -> None:
    for fallback in (1, 2):
        layout = PlateLayout.from_container_type(
            capacity=288,
            well_per_row=12,
            drop_per_well_x=2,
            drop_per_well_y=2,
            well_drop=1,
            default_drops_x=fallback,
        )
        assert (layout.wells, layout.drops_per_well) == (96, 3)
