"""``mdsens plot``: the figures' content (matplotlib Figure objects from ``cli._figures``)
and the files written.

* the non-affine part of dR/dp against hand-made fields ``R G + b + W`` (W orthogonal
  to the affine fields), with G from a least-squares fit, from the cell derivative and
  from an applied strain; the arrows drawn are W;
* one quantity per panel, each with its unit; a slab's z response in view;
* a study's constant series drawn flat, without offset or scientific notation;
* the format from the suffix (PNG, PDF, SVG) or exit 2 before anything is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")

from test_cli_inspect import (  # noqa: E402
    SIGMA,
    crystal_file,
    fcc,
    study_file,
    write_relaxation,
    write_sensitivity,
)

from mdsens.cli import _figures as F  # noqa: E402
from mdsens.cli import main  # noqa: E402
from mdsens.cli.inspect import derivative_units  # noqa: E402


def _nonaffine_field(R: np.ndarray, seed: int) -> np.ndarray:
    """A random field with no component along the affine fields R G + b (least squares:
    orthogonal to the columns of [R 1])."""
    W = np.random.default_rng(seed).normal(size=R.shape)
    A = np.hstack([R, np.ones((len(R), 1))])
    return W - A @ np.linalg.lstsq(A, W, rcond=None)[0]


def _draw(fig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()


def _arrow_axes(fig):
    return next(ax for ax in fig.axes if "d positions / d" in ax.get_title())


def _quiver(ax):
    return next(c for c in ax.collections if type(c).__name__ == "Quiver")


# ----------------------------------------------------------------------------- affine split
def test_split_affine_recovers_hand_made_field():
    rng = np.random.default_rng(0)
    R = rng.uniform(0, 10, size=(40, 3))
    G = rng.normal(size=(3, 3))
    b = rng.normal(size=3)
    W = _nonaffine_field(R, 1)
    split = F.split_affine(R, R @ G + b + W)
    np.testing.assert_allclose(split.G, G, atol=1e-12)
    np.testing.assert_allclose(split.b, b, atol=1e-12)
    np.testing.assert_allclose(split.nonaffine, W, atol=1e-12)
    # G known (the cell's): only the translation is fitted
    known = F.split_affine(R, R @ G + b + W, G, "cell")
    np.testing.assert_allclose(known.nonaffine, W - W.mean(axis=0), atol=1e-12)


def test_voigt_strain_matches_the_library():
    from mdsens.md.strain import strain_from_voigt

    for k in range(6):
        e = np.zeros(6)
        e[k] = 1.0
        np.testing.assert_array_equal(F.voigt_strain(k, 3),
                                      np.asarray(strain_from_voigt(e, 3)))


# ----------------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def cell_result(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A periodic result whose dR/dsigma = R G + W with G = h⁻¹ dh/dsigma (the file holds
    d cell / d sigma), W non-affine; scalar and matrix derivatives as in crystal_file."""
    d = tmp_path_factory.mktemp("plots")
    R, cell = fcc(2)
    G = np.diag([1.0, 1.0, 1.0]) / SIGMA + np.array([[0, 0.01, 0], [0.01, 0, 0], [0, 0, 0]])
    W = 0.05 * _nonaffine_field(R, 2)
    W -= W.mean(axis=0)
    values = {"energy": np.float64(-2.6), "volume": np.float64(np.linalg.det(cell)),
              "positions": R, "cell": cell}
    derivatives = {"positions": {"sigma": R @ G + W}, "cell": {"sigma": cell @ G},
                   "energy": {"sigma": np.float64(0.5)},
                   "volume": {"sigma": np.float64(3 * np.linalg.det(cell) / SIGMA)}}
    units = {"energy": "eV", "volume": "Å^3", "positions": "Å", "cell": "Å"}
    path = write_sensitivity(d / "cell.h5", R, cell, values, derivatives, units, ["sigma"])
    return path, W, G


def _figure(path: Path, **options):
    from mdsens.io.hdf5 import read_result

    return F.result_figure(read_result(path), derivative_units(path),
                           F.ArrowOptions(**options))


def test_arrows_are_the_nonaffine_part(cell_result):
    path, W, _ = cell_result
    fig = _figure(path, projection="xy", layer="all")
    ax = _arrow_axes(fig)
    q = _quiver(ax)
    np.testing.assert_allclose(np.column_stack([q.U, q.V]),
                               W[np.linalg.norm(W[:, :2], axis=1) >
                                 0.01 * np.linalg.norm(W[:, :2], axis=1).max()][:, :2],
                               atol=1e-12)
    assert ax.get_xlabel() == "x (Å)" and ax.get_ylabel() == "y (Å)"
    assert "cell deformation removed" in ax.get_title()
    key = next(c for c in ax.get_children() if type(c).__name__ == "QuiverKey")
    assert key.text.get_text().endswith("Å/Å")  # dR/dsigma: Å per Å
    # the out-of-plane component colours the atoms, with a labelled colour bar
    bar = next(a for a in fig.axes if a.get_ylabel().startswith("out of plane: dz/d sigma"))
    assert "(Å/Å)" in bar.get_ylabel()
    # total response on request: the arrows are dR/dsigma itself
    total = _quiver(_arrow_axes(_figure(path, projection="xy", layer="all",
                                        arrows="total")))
    assert np.abs(total.U).max() > 5 * np.abs(q.U).max()


def test_one_quantity_per_panel_with_units(cell_result):
    path, _, _ = cell_result
    fig = _figure(path)
    _draw(fig)
    arrow = _arrow_axes(fig)
    panels = [ax for ax in fig.axes if ax is not arrow and ax.get_title()]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["relative sensitivity d ln O / d ln p", "d cell / d sigma (Å/Å)"]
    rel = panels[0]
    assert rel.get_xlabel() == "(p / O) dO/dp  (dimensionless)"
    labels = [t.get_text() for t in rel.get_yticklabels()]
    assert "d volume / d sigma\n= 1030.65 Å²" in labels[1] or any(
        "d volume / d sigma" in s and "Å²" in s for s in labels)
    assert any("d energy / d sigma" in s and "eV/Å" in s for s in labels)
    bars = sorted(round(p.get_width(), 12) for p in rel.patches)
    assert bars == sorted([round(0.5 * SIGMA / -2.6, 12), 3.0])  # (p/O) dO/dp
    assert rel.xaxis.get_offset_text().get_text() == ""


def test_crystal_panels_in_gpa(tmp_path):
    path = crystal_file(tmp_path / "c.h5")
    fig = _figure(path)
    _draw(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert "elastic constants C (GPa)" in titles
    assert "d elastic_constants / d epsilon (GPa/eV)" in titles
    heat = next(ax for ax in fig.axes if ax.get_title() == "elastic constants C (GPa)")
    texts = [t.get_text() for t in heat.texts]
    assert texts[0] == "3.813" and texts[5] == "0"  # 0.0238 eV/Å³, 4 digits; noise: 0
    rel = next(ax for ax in fig.axes if ax.get_title().startswith("relative"))
    labels = [t.get_text() for t in rel.get_yticklabels()]
    assert any("d energy / d sigma" in s and "≈0 (round-off)" in s for s in labels)
    assert any("d volume / d epsilon" in s and "≈0 (within tolerance)" in s for s in labels)
    # the response of a perfect crystal to sigma is affine: said, not drawn as noise
    arrow = _arrow_axes(fig)
    assert "d positions / d sigma" in arrow.get_title()
    assert any("non-affine response ≈ 0" in t.get_text() for t in arrow.texts)


def test_slab_z_response_is_in_view(tmp_path):
    """A fixed-cell slab whose layers move along z only: auto projection keeps z."""
    R, _ = fcc(2)
    cell = np.diag([2 * 5.26, 2 * 5.26, 30.0])
    z0 = R[:, 2].mean()
    D = np.zeros_like(R)
    D[:, 2] = np.tanh(R[:, 2] - z0)  # outer layers move out, no affine part in a fixed cell
    path = write_sensitivity(tmp_path / "slab.h5", R, cell,
                             {"energy": np.float64(-2.0), "positions": R},
                             {"positions": {"sigma": D}, "energy": {"sigma": np.float64(0.1)}},
                             {"energy": "eV", "positions": "Å"}, ["sigma"],
                             config={"relax_cell": False})
    fig = _figure(path)
    ax = _arrow_axes(fig)
    assert ax.get_ylabel() == "z (Å)" and "fixed cell" in ax.get_title()
    q = _quiver(ax)
    np.testing.assert_allclose(np.sort(np.abs(q.V)), np.sort(np.abs(D[np.abs(D[:, 2]) >
                                                                     0.01][:, 2]))[
        -len(q.V):], atol=1e-12)


def test_strain_component_and_layers(tmp_path):
    """wrt strain: the applied strain is the affine part; --component picks a Voigt
    component by label; a big crystal is thinned to one layer."""
    R, cell = fcc(4)  # 256 atoms: columns overlap in projection
    D = np.zeros((len(R), 3, 6))
    W = 0.1 * _nonaffine_field(R, 3)
    W -= W.mean(axis=0)
    for k in range(6):
        D[:, :, k] = R @ F.voigt_strain(k, 3)
    D[:, :, 3] += W
    path = write_sensitivity(tmp_path / "strain.h5", R, cell,
                             {"energy": np.float64(-20.0), "positions": R},
                             {"positions": {"strain": D}}, {"energy": "eV", "positions": "Å"},
                             ["strain"], config={"relax_cell": False})
    ax = _arrow_axes(_figure(path, projection="xy"))
    assert "d positions / d strain[yz]" in ax.get_title()  # largest non-affine part
    assert "applied strain removed" in ax.get_title() and "layer" in ax.get_title()
    q = _quiver(ax)
    n_layer = int(ax.get_title().split(", ")[-1].split(" of ")[0])
    assert 0 < n_layer < len(R) and len(q.U) <= n_layer
    ax = _arrow_axes(_figure(path, projection="xy", component="xx", layer="all"))
    assert "strain[xx]" in ax.get_title()
    assert any("non-affine response ≈ 0" in t.get_text() for t in ax.texts)
    with pytest.raises(F.FigureError, match="components xx, yy, zz, yz, xz, xy"):
        _figure(path, component="zx")


# ----------------------------------------------------------------------------- studies
def test_study_flat_series_is_flat(tmp_path):
    from mdsens.cli.inspect import _study_scales
    from mdsens.studies import read

    path = study_file(tmp_path / "study.h5")
    study = read(path)
    fig = F.study_figure(study, derivative_units(path), None, _study_scales(path, study))
    _draw(fig)
    energy, volume = fig.axes[:2]
    assert energy.get_ylabel() == "energy (eV)" and volume.get_ylabel() == "volume (Å³)"
    assert energy.get_xlabel() == "sigma (Å)"
    lo, hi = energy.get_ylim()  # -0.32 ± 5 %
    assert lo == pytest.approx(-0.32 * 1.05) and hi == pytest.approx(-0.32 * 0.95)
    for ax in (energy, volume):
        assert ax.yaxis.get_offset_text().get_text() == ""
    assert any("constant" in t.get_text() for t in energy.texts)
    assert not any("constant" in t.get_text() for t in volume.texts)
    with pytest.raises(F.FigureError, match="not swept"):
        F.study_figure(study, {}, "epsilon")


# ----------------------------------------------------------------------------- the command
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_plot_writes_the_format_of_the_suffix(cell_result, tmp_path, suffix, magic):
    out = tmp_path / f"fig{suffix}"
    res = CliRunner().invoke(main, ["plot", str(cell_result[0]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left


@pytest.mark.parametrize("make_args, message", [
    (lambda f, t: [f["sens"], "-o", t / "fig.pdfx"], "*.png, *.pdf or *.svg"),
    (lambda f, t: [f["sens"], "-o", t / "fig"], "*.png"),
    (lambda f, t: [f["relax"], "-o", t / "fig.png"], "holds no derivatives"),
    (lambda f, t: [f["sens"], "--wrt", "alpha", "-o", t / "fig.png"], "'alpha'"),
    (lambda f, t: [f["sens"], "--component", "7", "-o", t / "fig.png"], "--component"),
    (lambda f, t: [f["sens"], "--layer", "x", "-o", t / "fig.png"], "--layer"),
    (lambda f, t: [f["sens"], "--scale", "-1", "-o", t / "fig.png"], "--scale"),
    (lambda f, t: [t / "none.h5", "-o", t / "fig.png"], "no such file"),
])
def test_plot_bad_input(cell_result, tmp_path, make_args, message):
    d = tmp_path / "in"
    d.mkdir()
    files = {"sens": cell_result[0], "relax": write_relaxation(d / "relax.h5")}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = CliRunner().invoke(main, ["plot", *map(str, make_args(files, out_dir))])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert list(out_dir.iterdir()) == []


def test_inspect_json_and_plot_agree_on_units(cell_result):
    """The figure's units are the file's (via inspect's reader)."""
    info = json.loads(CliRunner().invoke(main, ["inspect", str(cell_result[0]),
                                                "--json"]).stdout)
    assert info["derivatives"]["volume"]["sigma"]["unit_text"] == "Å²"
    assert info["derivatives"]["positions"]["sigma"]["unit_text"] == "Å/Å"
