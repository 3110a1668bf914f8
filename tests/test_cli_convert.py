"""`vlmfo1 convert`: an upstream checkpoint folder -> our layout, loadable and numerically the same."""
from __future__ import annotations

import json
import shutil

import torch
from typer.testing import CliRunner

from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
from vlmfo1.cli.main import build_app


def test_convert_writes_a_checkpoint_that_loads_with_the_same_weights(upstream_fixture_dir, tmp_path):
    source = upstream_fixture_dir / "nofpn" / "model"
    davit = json.loads((upstream_fixture_dir / "manifest.json").read_text())["model_construction"]["davit_config"]
    aux_config = tmp_path / "davit.json"
    aux_config.write_text(json.dumps(davit))
    out = tmp_path / "converted"
    result = CliRunner().invoke(
        build_app(),
        ["convert", str(source), str(out), "--tokenizer", str(upstream_fixture_dir / "tokenizer"),
         "--aux-config", str(aux_config)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model_type"] == "vlmfo1"

    converted = FO1ForConditionalGeneration.from_pretrained(out)
    direct = FO1ForConditionalGeneration.from_pretrained(
        source, tokenizer_path=upstream_fixture_dir / "tokenizer", aux_encoder_config=davit
    )
    for key, value in direct.state_dict().items():
        assert torch.equal(value, converted.state_dict()[key]), key
    processor = FO1Processor.from_pretrained(out)
    assert processor.image_processor.aux_image_size == 256
    assert processor.region_token_id == converted.config.region_token_id


def test_convert_refuses_a_folder_that_is_not_upstream(tmp_path, upstream_fixture_dir):
    folder = tmp_path / "ours"
    shutil.copytree(upstream_fixture_dir / "nofpn" / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qwen2_5_vl"
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(build_app(), ["convert", str(folder), str(tmp_path / "out")])
    assert result.exit_code != 0
    words = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert "not an upstream VLM-FO1 checkpoint" in words
