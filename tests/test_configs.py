"""Every config under configs/ runs: one fast_dev_run fit each, so no config can rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from litzoo.cli import main

CONFIGS = sorted(str(p) for p in Path("configs").glob("*/*.yaml"))


def test_configs_are_found():
    assert "configs/repvgg/digits.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_fast_dev_run(config, tmp_path):
    main(["fit", "-c", config, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])
