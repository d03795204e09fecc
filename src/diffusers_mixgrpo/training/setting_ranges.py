"""Settings that are allowed but far from where the method works: refuse what cannot work, warn about what is unusual,
and name those settings again when a run goes non-finite (`health.RunHealth`), so the advice points at the setting
that caused it rather than at a guess.

The usual values come from the MixGRPO paper and its released scripts (docs/training.md, "Hyper-parameters and their
paper values") and from this project's shipped configs: `learning_rate` 1e-5 (the paper's full fine-tune) to 3e-4
(the shipped LoRA configs; the toy demo trains at 1e-3); `eta` 0.7 for the Flow-GRPO SDE (MixGRPO, Flow-GRPO), 0.3 for
DanceGRPO's, 0.8 for CPS (flux_mixgrpo_cps.yaml), 1.0 for the DDIM window of SD1.5 / SDXL.
"""

import logging
import math
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["check_setting_ranges", "far_above", "unusual_settings"]

#: Above this the learning rate is unusual (10x the toy demo's 1e-3, 30x the shipped LoRA configs' 3e-4).
LEARNING_RATE_WARN = 1e-2
#: The usual `eta` of each SDE type (a warning above `ETA_WARN`).
USUAL_ETA = {"flow_grpo": "0.7", "dance_grpo": "0.3", "cps": "0.8"}
ETA_WARN = 1.0
#: The Flow-GRPO SDE's first step (from sigma = 1) has the mean `x * (1 - eta^2 / 2) + ...`: above sqrt(2) the noise
#: it adds outweighs the sample and the coefficient turns negative, on any grid.
FLOW_GRPO_ETA_MAX = math.sqrt(2.0)


def unusual_settings(config: Any) -> list[str]:
    """`["learning_rate=0.5 (usual 1e-5 to 1e-3)", ...]`: the settings of `config` above their usual range."""
    found = []
    if config.learning_rate > LEARNING_RATE_WARN:
        found.append(f"learning_rate={config.learning_rate:g} (usual 1e-5 to 1e-3)")
    if config.eta is not None and config.eta > ETA_WARN:
        found.append(f"eta={config.eta:g} (usual {USUAL_ETA[config.sde_type]} for sde_type={config.sde_type!r})")
    return found


def far_above(settings: list[str]) -> str:
    """`"eta=2 (usual 0.7 ...) is far above its usual range"` for one setting or several."""
    verb = "is" if len(settings) == 1 else "are"
    return f"{' and '.join(settings)} {verb} far above the usual range"


_warned: set[str] = set()  # a config is rebuilt by `dataclasses.replace` (presets, recorded inputs): warn once


def check_setting_ranges(config: Any) -> None:
    """Refuse an `eta` for which the window's SDE step is not a noising step (CPS above 1, the Flow-GRPO SDE above
    sqrt(2)); warn once per unusual setting (`unusual_settings`)."""
    eta, sde_type = config.eta, config.sde_type
    if sde_type == "cps" and eta is not None and eta > 1:
        raise ConfigError(
            f"eta={eta:g} is not allowed with sde_type='cps'; CPS adds noise sigma_next * sin(eta * pi / 2), which "
            f"is largest at eta=1 and shrinks again above it, so eta must lie in (0, 1] (usual: 0.8)."
        )
    if sde_type == "flow_grpo" and eta is not None and eta > FLOW_GRPO_ETA_MAX:
        raise ConfigError(
            f"eta={eta:g} is not allowed with sde_type='flow_grpo'; above sqrt(2) = 1.414 the first SDE step's mean "
            f"keeps a negative share (1 - eta^2 / 2) of the sample, so eta must lie in (0, 1.414] (usual: 0.7)."
        )
    for setting in unusual_settings(config):
        if setting not in _warned:
            _warned.add(setting)
            logger.warning("%s; a run that goes non-finite or learns nothing names it again.", far_above([setting]))
