"""kaggle-metadata.json against the Kaggle CLI's field rules (shared/facts/competitions.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aimo_kernel.config.presets import NUMINA_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
META = json.loads((ROOT / "kaggle-metadata.json").read_text())
SLUG = r"[a-z0-9][a-z0-9-]*[a-z0-9]"


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def test_id_and_title_agree():
    owner, _, slug = META["id"].partition("/")
    assert re.fullmatch(SLUG, owner) and re.fullmatch(SLUG, slug)
    assert len(META["title"]) >= 5 and slugify(META["title"]) == slug


def test_code_file_is_the_notebook_and_exists():
    code = ROOT / META["code_file"]
    assert code.is_file() and code.suffix == ".ipynb" and code.parent.name == "notebooks"
    assert (META["language"], META["kernel_type"]) == ("python", "notebook")


def test_competition_settings():
    assert META["enable_internet"] is False and META["enable_gpu"] is True and META["enable_tpu"] is False
    assert META["machine_shape"] == "NvidiaTeslaT4"
    assert META["competition_sources"] == ["ai-mathematical-olympiad-prize"]  # AIMO1: the 2xT4 preset's target
    assert META["docker_image_pinning_type"] in ("original", "latest")
    assert isinstance(META["is_private"], bool)


def test_source_id_forms():
    for ref in META["dataset_sources"]:
        assert re.fullmatch(rf"{SLUG}/{SLUG}(/\d+)?", ref), ref
    for ref in META["competition_sources"]:
        assert re.fullmatch(SLUG, ref), ref
    for ref in META["model_sources"]:
        assert re.fullmatch(rf"{SLUG}/{SLUG}/[a-z0-9]+/{SLUG}/\d+", ref), ref
    for ref in META["kernel_sources"]:
        assert re.fullmatch(rf"{SLUG}/{SLUG}", ref), ref


def test_datasets_mount_where_the_package_looks():
    # a dataset "owner/slug" is mounted at /kaggle/input/slug
    mounted = {ref.split("/")[1] for ref in META["dataset_sources"]}
    assert Path(NUMINA_MODEL_DIR).name in mounted  # the GPU presets' model folder
    notebook = (ROOT / META["code_file"]).read_text()
    assert "/kaggle/input/aimo-kernel-wheels" in notebook and "aimo-kernel-wheels" in mounted
