"""The recipes (``recipes/``): each runs as ``python -m recipes.<name>`` and tells the
command that made its model; every shipped checkpoint has one; the development data
come from ``CXR_DEV_DATA``, not from a path of one machine."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_orient.settings import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_as_a_module_and_answers_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(f"recipes.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m recipes.{name}")
    assert f"python -m recipes.{name}" in (module.__doc__ or "")


def test_every_shipped_checkpoint_has_its_recipe_and_every_recipe_is_listed() -> None:
    import recipes

    shipped = [p.stem for p in SHIPPED_MODEL.parent.glob("*.keras")]
    assert shipped
    for name in shipped:
        assert name.replace("-", "_") in RECIPES, f"{name}: no recipes/{name}.py"
    for name in RECIPES:
        assert f":mod:`recipes.{name}`" in (recipes.__doc__ or ""), name


def test_the_development_data_come_from_cxr_dev_data(tmp_path: Path) -> None:
    code = (
        "from recipes.common import devdata; from bench import dicom_factory; "
        "print(devdata.COVID_CXR); print(devdata.NONCHEST); print(dicom_factory.COVID_CXR)"
    )
    env = {**os.environ, "CXR_DEV_DATA": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    assert out == [
        str(tmp_path / "covid-cxr"),
        str(tmp_path / "nonchest"),
        str(tmp_path / "covid-cxr"),
    ]
    env.pop("CXR_DEV_DATA")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    beside = ROOT.parent / "shared" / "data"
    assert out == [str(beside / "covid-cxr"), str(beside / "nonchest"), str(beside / "covid-cxr")]


def test_a_film_stored_in_a_pose_has_that_copy_upright() -> None:
    from cxr_orient.layers import ORBIT_SIZE, orbit_copies
    from recipes.common.films import store_as

    upright = np.arange(12 * 12, dtype=np.uint8).reshape(12, 12)
    for copy in range(ORBIT_SIZE):
        assert np.array_equal(orbit_copies(store_as(upright, copy))[copy], upright)


def test_orientation_targets_count_both_upright_copies_of_a_lateral() -> None:
    from cxr_orient.layers import STORED_AS
    from recipes.compact_invariant_64_v2 import orientation_targets

    targets = orientation_targets(np.array([0, 1]), np.array([3, 3]))
    assert targets[0].tolist() == [float(c == 3) for c in range(8)]
    assert targets[1].sum() == 2 and targets[1, 3] == 1
    other = next(c for c in range(8) if targets[1, c] and c != 3)
    k, mirrored = STORED_AS[3]
    assert STORED_AS[other] == (k, not mirrored)
