"""Every kind of mdsens file (relaxation, sensitivity, study) against the H5MD 1.1
specification's required groups and attributes, its ``units`` module, and the unit
grammar."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from test_h5md_readers import files  # noqa: F401  (the module-scoped fixture)

from mdsens import units

TIME_DEPENDENT = ("step", "value")


def _fixed_string(obj, name: str) -> bool:
    """The attribute exists and is a fixed-length string (array)."""
    if name not in obj.attrs:
        return False
    t = obj.attrs.get_id(name).get_type()
    return isinstance(t, h5py.h5t.TypeStringID) and not t.is_variable_str()


def _check_header(f: h5py.File, errors: list[str]) -> None:
    h5 = f.get("h5md")
    if h5 is None:
        errors.append("/h5md missing")
        return
    if list(h5.attrs.get("version", [])) != [1, 1]:
        errors.append("/h5md version is not [1, 1]")
    for group, attrs in (("author", ("name",)), ("creator", ("name", "version"))):
        for a in attrs:
            if group not in h5 or not _fixed_string(h5[group], a):
                errors.append(f"/h5md/{group} attr {a}: missing or not fixed-length")
    modules = h5.get("modules", {})
    for name, mod in modules.items():
        if "version" not in mod.attrs:
            errors.append(f"module {name} without version")
    if "units" not in modules or not _fixed_string(modules["units"], "system"):
        errors.append("/h5md/modules/units (with a fixed-length system) missing")


def _check_element(path: str, node, errors: list[str]) -> None:
    """A time-dependent element: step and value, same length; time, if any, too."""
    if isinstance(node, h5py.Dataset):
        return  # time-independent
    for key in TIME_DEPENDENT:
        if key not in node:
            errors.append(f"{path}: time-dependent element without {key}")
            return
    n = node["value"].shape[0]
    if node["step"].shape != (n,) or ("time" in node and node["time"].shape != (n,)):
        errors.append(f"{path}: step/time/value lengths differ")
    if not np.issubdtype(node["step"].dtype, np.integer):
        errors.append(f"{path}/step is not integer")


def _check_particles(f: h5py.File, errors: list[str]) -> None:
    if "particles" not in f or not len(f["particles"]):
        errors.append("/particles missing or empty")
        return
    for name, group in f["particles"].items():
        path = f"/particles/{name}"
        box = group.get("box")
        if box is None:
            errors.append(f"{path}/box missing")
            continue
        d = int(box.attrs.get("dimension", 0))
        if d not in (1, 2, 3):
            errors.append(f"{path}/box dimension {d}")
        if not _fixed_string(box, "boundary") or len(box.attrs["boundary"]) != d:
            errors.append(f"{path}/box boundary: not d fixed-length strings")
        elif not all(b in (b"periodic", b"none") for b in box.attrs["boundary"]):
            errors.append(f"{path}/box boundary values")
        for el in ("position", "box/edges"):
            if el not in group:
                errors.append(f"{path}/{el} missing")
                continue
            _check_element(f"{path}/{el}", group[el], errors)
        if all(isinstance(group.get(el), h5py.Group) for el in ("position", "box/edges")):
            if not np.array_equal(group["position/step"][()], group["box/edges/step"][()]):
                errors.append(f"{path}: box and position sampled at different steps")


def _check_observables(f: h5py.File, errors: list[str]) -> None:
    for name, node in f.get("observables", {}).items():
        _check_element(f"/observables/{name}", node, errors)


def _check_units(f: h5py.File, errors: list[str]) -> None:
    def visit(name, obj):
        for key in ("unit", "observable_unit", "parameter_unit", "unit_components"):
            if key not in obj.attrs:
                continue
            for text in np.atleast_1d(obj.attrs[key]):
                text = text.decode() if isinstance(text, bytes) else str(text)
                if not units.is_h5md(text):
                    errors.append(f"/{name} {key}={text!r} not in the H5MD unit grammar")
                else:
                    units.parse(text)  # and pint reads it

    f.visititems(visit)


def validate(path: Path) -> list[str]:
    """Everything in ``path`` that breaks the checked rules (empty: valid)."""
    errors: list[str] = []
    with h5py.File(path, "r") as f:
        _check_header(f, errors)
        _check_particles(f, errors)
        _check_observables(f, errors)
        _check_units(f, errors)
    return errors


@pytest.mark.parametrize("kind", ["relax", "sens", "study"])
def test_file_follows_h5md(files, kind):  # noqa: F811
    entry = files[kind]
    path = entry if isinstance(entry, Path) else entry[0]
    assert validate(path) == []


def test_validator_catches_old_layout(tmp_path):
    """The checks fail on the layout mdsens wrote before (time-independent elements,
    UTF-8 units, variable-length strings, no units module)."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.create_group("h5md").attrs["version"] = np.array([1, 1], np.int32)
        f["h5md"].create_group("author").attrs["name"] = "me"
        f["h5md"].create_group("creator").attrs["name"] = "mdsens"
        part = f.create_group("particles/all")
        part.create_dataset("position", data=np.zeros((2, 3))).attrs["unit"] = "Å"
        box = part.create_group("box")
        box.attrs["dimension"] = 3
        box.attrs["boundary"] = ["periodic"] * 3
        box.create_dataset("edges", data=np.eye(3)).attrs["unit"] = "(eV)/(Å)"
    errors = validate(path)
    assert any("creator attr version" in e for e in errors)
    assert any("modules/units" in e for e in errors)
    assert any("boundary" in e for e in errors)
    assert any("'Å' not in the H5MD unit grammar" in e for e in errors)
