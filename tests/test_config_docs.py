"""docs/configuration.md is generated from the config schema by scripts/config_docs.py: it must be what the
script writes now (so the reference cannot drift from the schema), and it must have a row for every key."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def schema_keys() -> set[str]:
    """Every key of the schema's defaults, walked here independently of the script's source parsing."""
    from omegaconf import DictConfig

    config_docs = load_script()
    defaults = importlib.import_module(config_docs.SCHEMA_MODULE).base_config()

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, DictConfig) and len(v):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    return set(walk(defaults, ""))


def test_configuration_reference_is_current():
    config_docs = load_script()
    assert config_docs.OUTPUT.read_text() == config_docs.render(), (
        "docs/configuration.md is stale: run `python scripts/config_docs.py` and commit the result")


def test_every_schema_key_has_one_row_and_no_row_is_stale():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \|", doc, flags=re.MULTILINE)
    keys = schema_keys()
    assert len(rows) == len(set(rows)), "a key has two rows"
    assert keys - set(rows) == set(), f"keys without a row: {sorted(keys - set(rows))}"
    assert set(rows) - keys == set(), f"rows for keys the schema does not have: {sorted(set(rows) - keys)}"
    assert {"learner.packing", "rollout.async", "reward.weights", "model.lora.r"} <= set(rows)


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    config_docs = load_script()
    out = tmp_path / "configuration.md"
    monkeypatch.setattr(config_docs, "OUTPUT", out)
    monkeypatch.setattr(config_docs, "ROOT", tmp_path)
    out.write_text("# Configuration reference\n\nedited by hand\n")
    assert config_docs.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert config_docs.main([]) == 0
    assert config_docs.main(["--check"]) == 0
    assert out.read_text() == config_docs.render()
