"""What the learning benchmark runs and how its report labels it: shared by `learning.py` and `learning_report.py`."""

#: The trained reward's field of the evaluation: every run trains on the demo's reward, `toy_preference`.
METRIC = "preference"
LABELS = {
    "dancegrpo": "DanceGRPO-style",
    "mixgrpo": "MixGRPO",
    "flash": "MixGRPO-Flash",
    "flash_star": "MixGRPO-Flash*",
}
# The paper's figures beside ours (MixGRPO paper, FLUX.1-dev): training NFE per rollout and the training time
# relative to DanceGRPO as the paper states it ("about half"; "up to 71% less" for the fastest Flash variant).
PAPER_TABLE = {
    "dancegrpo": {"nfe_train": 14, "time_ratio": "1"},
    "mixgrpo": {"nfe_train": 4, "time_ratio": "~0.5"},
    "flash": {"nfe_train": 4, "time_ratio": "< 0.5"},
    "flash_star": {"nfe_train": 4, "time_ratio": "~0.29"},
}
PARTS = {
    "table": ["dancegrpo", "mixgrpo", "flash", "flash_star"],
    "steps": ["dance_T4", "dance_T8", "dancegrpo", "dance_T24", "mix_K2", "mixgrpo", "mix_K8"],
    "window": ["window_start", "window_middle", "window_end", "mixgrpo"],
}
STEPS_DANCE = {"dance_T4": 4, "dance_T8": 8, "dancegrpo": 14, "dance_T24": 24}
STEPS_MIX = {"mix_K2": 2, "mixgrpo": 4, "mix_K8": 8}
