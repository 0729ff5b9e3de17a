"""Where the package finds its files: ``conf/`` (the Hydra configs) and the shipped MiniWorld weights.

Also registers the ``technique_name`` resolver every composition of ``conf/`` needs, so importing the location of
``conf/`` is enough to compose it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

MINIWORLD_DIR = Path(__file__).resolve().parents[1] / "assets" / "miniworld"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
if not CONF_DIR.is_dir():  # source checkout / editable install: conf/ sits beside the package
    CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# conf/config.yaml keys the per-model presets by the technique, not the option: technique=esd/esd_sd on model=tiny
# still takes conf/preset/tiny_esd.yaml (eval_learn.recipes). Registered here, beside CONF_DIR, which every
# composition of conf/ imports.
OmegaConf.register_new_resolver("technique_name", lambda option: str(option).partition("/")[0], replace=True)
