"""``aimo-kernel bundle``: targets, dataset metadata, the resolved set's split, pip's errors, and (network) the
kaggle-t4 resolution, conflicts, and the local-pure offline round trip into a fresh venv."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from aimo_kernel import __version__
from aimo_kernel.tools import bundle

ROOT = Path(__file__).resolve().parent.parent


def _wheel(name: str, version: str = "1.0", size: int | None = 1_000_000) -> bundle.Wheel:
    return bundle.Wheel(name, version, f"{name}-{version}-py3-none-any.whl", f"https://x/{name}.whl", size)


def _resolution() -> bundle.Resolution:
    target = bundle.TARGETS["kaggle-t4"]
    return bundle.Resolution(target, (_wheel("vllm", "0.19.1", 433_000_000), _wheel("aimo-kernel", __version__)),
                             (_wheel("torch", "2.10.0"),))


@pytest.fixture(scope="module")
def own_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own")
    bundle.build_own_wheel(ROOT, out)
    return out


# ------------------------------------------------------------------------------------------ offline units


def test_unknown_target_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(bundle.UnknownTargetError, match="kaggle-t4, local-pure"):
        bundle.get_target("kaggle-p100")
    assert bundle.main(["--target", "kaggle-p100", "--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown target 'kaggle-p100'" in err


def test_verify_needs_a_local_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert bundle.main(["--target", "kaggle-t4", "--verify"]) == 1
    assert "another platform" in capsys.readouterr().err


def test_generated_dataset_metadata_is_valid() -> None:
    for meta in (bundle.wheels_dataset_metadata(_resolution()), bundle.model_dataset_metadata()):
        assert bundle.validate_dataset_metadata(meta) == [], meta


@pytest.mark.parametrize(("change", "field"), [
    ({"title": "AIMO"}, "title"),
    ({"title": "x" * 51}, "title"),
    ({"id": "aimo-kernel"}, "id"),
    ({"id": "aimo-kernel/Wheels_Big"}, "id"),
    ({"id": "aimo-kernel/abc"}, "id (slug)"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "other"}]}, "licenses"),
    ({"licenses": [{"name": "beerware"}]}, "licenses"),
    ({"subtitle": "too short"}, "subtitle"),
    ({"keywords": "wheels"}, "keywords"),
])
def test_invalid_dataset_metadata_names_the_field(change: dict[str, Any], field: str) -> None:
    meta = {**bundle.model_dataset_metadata(), **change}
    problems = bundle.validate_dataset_metadata(meta)
    assert len(problems) == 1 and problems[0].startswith(field + ":"), problems


def test_dataset_ids_match_the_kernel_and_the_presets() -> None:
    from aimo_kernel.config.presets import NUMINA_MODEL_DIR

    kernel = json.loads((ROOT / "kaggle-metadata.json").read_text())
    assert {bundle.WHEELS_DATASET, bundle.MODEL_DATASET} <= set(kernel["dataset_sources"])
    assert NUMINA_MODEL_DIR.endswith("/" + bundle.MODEL_DATASET.split("/")[1])
    notebook = (ROOT / "notebooks" / "aimo-kernel-submission.ipynb").read_text()
    assert "/kaggle/input/" + bundle.WHEELS_DATASET.split("/")[1] in notebook


def test_kaggle_pins_follow_the_facts() -> None:
    target = bundle.TARGETS["kaggle-t4"]
    requirements = (ROOT / str(target.requirements)).read_text()
    assert "vllm==0.19.1" in requirements and "protobuf>=5.29.6" in requirements
    assert bundle.read_pinned_names(ROOT / str(target.constraints)) == ["torch", "torchvision", "torchaudio"]
    assert "--python-version" in target.pip_args() and "manylinux_2_31_x86_64" in target.pip_args()


def test_kaggle_folders_and_checklist(tmp_path: Path) -> None:
    written = bundle.write_kaggle_folders(_resolution(), tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "aimo-kernel-wheels/dataset-metadata.json", "numinamath-7b-tir-gptq-8bit/dataset-metadata.json", "UPLOAD.md"]
    checklist = (tmp_path / "UPLOAD.md").read_text()
    assert "kaggle datasets create -p" in checklist and "2 wheels, 434.0 MB" in checklist


def test_build_isolation_only_when_this_environment_cannot_build(tmp_path: Path) -> None:
    assert bundle._build_isolation(ROOT) == "--no-build-isolation"  # the dev environment has setuptools>=68
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=999"]\n')
    assert bundle._build_isolation(tmp_path) == "--use-pep517"
    with pytest.raises(bundle.BundleError, match="no pyproject.toml"):
        bundle.build_own_wheel(tmp_path / "nowhere", tmp_path)


def _item(name: str, requires: list[str], requested: bool = False, pure: bool = True) -> dict[str, Any]:
    tag = "py3-none-any" if pure else "cp312-cp312-manylinux_2_17_x86_64"
    return {"metadata": {"name": name, "version": "1", "requires_dist": requires}, "requested": requested,
            "download_info": {"url": f"https://x/{name}-1-{tag}.whl"}}


def test_split_leaves_out_what_the_image_provides() -> None:
    report = {"install": [
        _item("App", ["lib", "torch==2.10.0", "winonly; sys_platform == 'win32'"], requested=True),
        _item("lib", ["filelock", "cuda[fast]"]),
        _item("torch", ["triton==3.6.0", "filelock", "networkx>=2"]),
        _item("triton", []), _item("filelock", []), _item("networkx", []), _item("winonly", []),
        _item("cuda", ["fastlib; extra == 'fast'"]), _item("fastlib", []),
    ]}
    target = bundle.TARGETS["kaggle-t4"]
    shipped, provided = bundle.split_report(report, target, ["torch"])
    assert shipped == {"app", "lib", "filelock", "cuda", "fastlib"}
    assert provided == {"torch", "triton", "networkx", "winonly"}


def test_local_pure_counts_binary_wheels_as_provided() -> None:
    report = {"install": [_item("aimo-kernel", ["numpy", "sympy"], requested=True),
                          _item("numpy", [], pure=False), _item("sympy", ["mpmath"]), _item("mpmath", [])]}
    shipped, provided = bundle.split_report(report, bundle.TARGETS["local-pure"], [])
    assert (shipped, provided) == ({"aimo-kernel", "sympy", "mpmath"}, {"numpy"})


@pytest.mark.parametrize(("output", "kind", "names"), [
    ("ERROR: Could not find a version that satisfies the requirement vllm==9.9 (from versions: 0.1)\n"
     "ERROR: No matching distribution found for vllm==9.9\n", bundle.ResolutionError, ["vllm==9.9"]),
    ("The conflict is caused by:\n    vllm 0.19.1 depends on torch==2.10.0\n"
     "    The user requested (constraint) torch==2.9.0\n\nTo fix this", bundle.ConstraintConflictError,
     ["vllm 0.19.1 depends on torch==2.10.0", "torch==2.9.0"]),
    ("The conflict is caused by:\n    The user requested tqdm==1\n    a 1 depends on tqdm==2\n",
     bundle.ResolutionError, ["tqdm==1", "tqdm==2"]),
])
def test_pip_failures_name_the_packages(output: str, kind: type, names: list[str]) -> None:
    error = bundle.pip_failure(output, bundle.TARGETS["kaggle-t4"])
    assert type(error) is kind and all(n in str(error) for n in names) and "\n" not in str(error)


# --------------------------------------------------------------------------- network: the package index


@pytest.mark.network
def test_kaggle_t4_check_resolves_the_facts_set(own_wheel: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from packaging.version import Version

    resolution = bundle.resolve(bundle.TARGETS["kaggle-t4"], ROOT, own_wheel)
    shipped = {w.name: w for w in resolution.shipped}
    provided = {w.name for w in resolution.provided}
    assert shipped["vllm"].version == "0.19.1" and shipped["aimo-kernel"].version == __version__
    assert {"torch", "triton", "nvidia-cublas-cu12", "torchvision"} <= provided and not provided & set(shipped)
    assert Version(shipped["numpy"].version) < Version("2.3")
    assert Version("5.29.6") <= Version(shipped["protobuf"].version) < Version("6")
    assert all(w.filename.endswith(".whl") and w.size for w in resolution.shipped)
    assert 300e6 < resolution.total_bytes < 5e9
    text = bundle.format_resolution(resolution)
    assert f"shipped: {len(shipped)} wheels" in text
    print(text.splitlines()[-2])  # visible with -s: the count and the size


@pytest.mark.network
def test_conflict_with_the_image_names_the_packages(own_wheel: Path, tmp_path: Path) -> None:
    # The same mechanism as torch==2.9.0 in kaggle-t4-constraints.txt against vLLM 0.19.1 (30 s to resolve).
    (tmp_path / "pins.txt").write_text("tqdm==4.66.0\n")
    (tmp_path / "image.txt").write_text("tqdm==4.67.1\n")
    target = dataclasses.replace(bundle.TARGETS["local-pure"], requirements=str(tmp_path / "pins.txt"),
                                 constraints=str(tmp_path / "image.txt"))
    conflict = r"requested tqdm==4\.66\.0.*\(constraint\) tqdm==4\.67\.1"
    with pytest.raises(bundle.ConstraintConflictError, match=conflict):
        bundle.resolve(target, ROOT, own_wheel)


@pytest.mark.network
def test_unresolvable_pin_names_the_package(own_wheel: Path, tmp_path: Path) -> None:
    (tmp_path / "pins.txt").write_text("tqdm==0.0.999\n")
    target = dataclasses.replace(bundle.TARGETS["local-pure"], requirements=str(tmp_path / "pins.txt"))
    with pytest.raises(bundle.ResolutionError, match=r"no wheel for tqdm==0\.0\.999"):
        bundle.resolve(target, ROOT, own_wheel)


@pytest.mark.network
def test_local_pure_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bundle.main(["--target", "local-pure", "--out", str(tmp_path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"verified offline install: aimo-kernel {__version__}" in out
    wheelhouse = tmp_path / "aimo-kernel-wheels"
    wheels = sorted(p.name.split("-")[0] for p in wheelhouse.glob("*.whl"))
    assert {"aimo_kernel", "sympy", "mpmath", "tqdm"} <= set(wheels) and "numpy" not in wheels
    assert all(p.name.endswith("-none-any.whl") for p in wheelhouse.glob("*.whl"))
    assert not (tmp_path / "UPLOAD.md").exists()  # a local target has no Kaggle folders
