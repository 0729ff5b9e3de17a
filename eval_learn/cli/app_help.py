"""``eval-learn --help``: our commands, the run's config groups and the composed config, in Hydra's help template.

Hydra's own ``--help`` lists every group of Hydra's as well, each through a fresh copy of its config repository (about
100 of them: seconds); this lists the run's groups only, from one Hydra session. ``--hydra-help`` is still Hydra's."""

from __future__ import annotations

import string
from collections.abc import Sequence

from eval_learn.compose import CONFIG_NAME, config_groups, hydra_session


def app_help(overrides: Sequence[str]) -> str:
    """The help text for a command line with these overrides (the config shown is the one they compose)."""
    from hydra import compose
    from omegaconf import OmegaConf, open_dict

    with hydra_session():
        cfg = compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=True)
    template = str(cfg.hydra.help.template)
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "".join(f"{group}: {', '.join(options)}\n" for group, options in config_groups(overrides).items())
    return string.Template(template).safe_substitute(APP_CONFIG_GROUPS=groups, CONFIG=OmegaConf.to_yaml(cfg))
