"""GRPOTrainer end to end on a tiny FLUX: exact resume, NaN policy, failing rewards, LoRA export, Hub folder, DDP."""

import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from diffusers import FluxPipeline

from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer, TrainingStopped
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline
from testing_utils import brightness, lora_weights, run_ranks, tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat"]


def make_config(tmp_path, **overrides) -> GRPOConfig:
    """6 steps, 4 images for each of 2 prompts per iteration, the window moving every 2 iterations; 4 iterations."""
    values = dict(
        method="mixgrpo",
        num_inference_steps=6,
        num_generations=4,
        sample_prompts_per_device=2,
        window_shift_interval=2,
        learning_rate=1e-3,
        max_train_steps=4,
        seed=3,
    )
    return tiny_config(tmp_path / "run", **{**values, **overrides})


def make_trainer(config, rewards=None, seed=0) -> GRPOTrainer:
    return tiny_flux_trainer(config, PROMPTS, rewards=rewards, seed=seed)


@pytest.mark.parametrize("cps_log_prob", ["gaussian", "flow_grpo"])
def test_cps_window_trains_with_either_log_prob_convention(tmp_path, cps_log_prob):
    # The paper's current CPS-in-window setting (flux_mixgrpo_cps.yaml) and the Gaussian default: the convention
    # reaches the scheduler, the on-policy ratio is 1 and the loss is finite.
    config = make_config(tmp_path, sde_type="cps", eta=0.8, cps_log_prob=cps_log_prob, max_train_steps=1)
    trainer = make_trainer(config)
    assert trainer.pipeline.scheduler.config.sde_type == "cps"
    assert trainer.pipeline.scheduler.config.cps_log_prob == cps_log_prob
    logs = trainer.train_step()
    assert logs["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # measured |ratio_mean - 1|: 0.0 (both)
    assert all(math.isfinite(v) for v in logs.values() if isinstance(v, float))


def test_training_changes_only_the_lora_weights_and_logs_the_phases(tmp_path):
    trainer = make_trainer(make_config(tmp_path, max_train_steps=1))
    base = {n: p.detach().clone() for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" not in n}
    before = lora_weights(trainer)
    logs = trainer.train_step()
    after = lora_weights(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(p, base[n]) for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" not in n)
    for key in (
        "reward/mean",
        "train/loss",
        "train/clip_fraction",
        "train/ratio_mean",
        "window/start",
        "nfe/rollout_per_image",
        "time/rollout",
        "time/reward",
        "time/update",
    ):
        assert key in logs, key
    # on-policy first update: the ratio of the first micro-batch is exactly 1 -> nothing clipped on average
    assert logs["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # measured |ratio_mean - 1|: 0.0
    assert logs["nfe/rollout_per_image"] == pytest.approx((0 + 4 * 6) / 4)  # window at 0: no shared prefix
    assert logs["nfe/train_per_image"] == 2


def test_window_slides_with_the_schedule(tmp_path):
    trainer = make_trainer(make_config(tmp_path, max_train_steps=4, window_shift_interval=1))
    starts = [trainer.train_step()["window/start"] for _ in range(4)]
    assert starts == [0, 1, 2, 3]


def test_dancegrpo_trains_a_seeded_sixty_percent_of_the_steps_drawn_per_sample(tmp_path):
    config = make_config(tmp_path, method="dancegrpo", window_size=None, num_inference_steps=6)
    trainer = make_trainer(config)
    batch = trainer._rollout(0)
    assert batch.step_indices == [0, 1, 2, 3, 4]  # every trainable step is an SDE step
    chosen = trainer._train_steps(batch, 0)
    assert len(chosen) == batch.batch_size == 8 and all(len(c) == 3 and c == sorted(c) for c in chosen)
    assert chosen == trainer._train_steps(batch, 0)  # deterministic from the seed
    assert len({tuple(c) for c in chosen}) > 1  # each sample its own subset (as the official DanceGRPO code)
    assert trainer._train_steps(batch, 1) != chosen  # and a new draw every iteration


def test_a_sample_draws_the_same_steps_on_whichever_rank_holds_it(tmp_path):
    """The draw depends on the seed, the step and the sample's global index: the second half of a one-process batch
    of 8 gets the steps that rank 1 of two processes (4 samples each) gives its 4 samples."""
    from types import SimpleNamespace

    trainer = make_trainer(make_config(tmp_path, method="dancegrpo", window_size=None, num_inference_steps=6))
    steps = [0, 1, 2, 3, 4]
    one = trainer._train_steps(SimpleNamespace(step_indices=steps, batch_size=8), 3)
    with mock.patch.object(type(trainer.accelerator), "process_index", new_callable=mock.PropertyMock) as rank:
        rank.return_value = 1
        second = trainer._train_steps(SimpleNamespace(step_indices=steps, batch_size=4), 3)
    assert second == one[4:]


def test_per_sample_steps_batch_the_samples_that_share_a_step():
    pieces = GRPOTrainer._step_pieces([[0, 2], [1, 2], [0, 3]], torch.tensor([2, 0, 1]))
    assert [(t, s.tolist()) for t, s in pieces] == [(0, [2, 0]), (1, [1]), (2, [0, 1]), (3, [2])]
    same = GRPOTrainer._step_pieces([[1, 2]] * 3, torch.tensor([0, 1, 2]))
    assert [(t, s.tolist()) for t, s in same] == [(1, [0, 1, 2]), (2, [0, 1, 2])]


@pytest.mark.parametrize("train_batch_size", [None, 2])
def test_dancegrpo_per_sample_steps_train_on_policy(tmp_path, train_batch_size):
    """Micro-batches whose samples train different steps run and move the LoRA, with the ratio at 1 up to the
    optimiser steps taken before a micro-batch: measured |ratio_mean - 1| = 0 with one micro-batch (None) and 3.6e-5
    with micro-batches of 2 (4 optimiser steps per iteration, the later micro-batches slightly off-policy)."""
    config = make_config(
        tmp_path, method="dancegrpo", window_size=None, max_train_steps=1, train_batch_size=train_batch_size
    )
    trainer = make_trainer(config)
    before = lora_weights(trainer)
    logs = trainer.train_step()
    # measured |ratio_mean - 1|: 0.0 with one micro-batch; 3.6e-5 with micro-batches of 2 (off-policy after a step)
    assert logs["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6 if train_batch_size is None else 1e-4)
    assert logs["nfe/train_per_image"] == 3
    assert any(not torch.equal(before[n], v) for n, v in lora_weights(trainer).items())


@pytest.mark.parametrize("allow", [True, False])
def test_allow_tf32_sets_the_cuda_and_cudnn_flags_on_cuda_only(allow):
    from diffusers_mixgrpo.training.trainer import apply_tf32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allow
        apply_tf32(allow, "cpu")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (not allow, not allow)
        apply_tf32(allow, torch.device("cuda", 0))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (allow, allow)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_trainer_applies_allow_tf32_at_start(tmp_path):
    with mock.patch("diffusers_mixgrpo.training.trainer.apply_tf32") as apply:
        make_trainer(make_config(tmp_path, allow_tf32=False))
    apply.assert_called_once_with(False, torch.device("cpu"))


def test_resume_continues_exactly(tmp_path):
    """4 updates straight == 2 updates, checkpoint, a fresh process-like trainer resuming, 2 more (<= 1e-6)."""
    straight = make_trainer(make_config(tmp_path / "a", max_train_steps=4))
    straight.train()
    reference = lora_weights(straight)

    first = make_trainer(make_config(tmp_path / "b", max_train_steps=2, checkpointing_steps=2))
    first.train()
    assert os.path.isdir(tmp_path / "b" / "run" / "checkpoint-2")
    resumed = make_trainer(make_config(tmp_path / "b", max_train_steps=4, resume_from_checkpoint="latest"))
    out = resumed.train()
    assert out.global_step == 4
    assert resumed.window.state_dict() == straight.window.state_dict()
    got = lora_weights(resumed)
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def test_non_finite_rewards_drop_the_group_and_never_reach_the_optimizer(tmp_path):
    def half_nan(images, prompts):
        r = brightness(images, prompts)
        r[: len(r) // 2] = float("nan")  # the first prompt's group
        return r

    trainer = make_trainer(make_config(tmp_path), rewards={half_nan: 1.0})
    logs = trainer.train_step()
    assert logs["data/dropped_samples"] == 4
    assert all(torch.isfinite(p).all() for p in lora_weights(trainer).values())
    assert trainer.bad_group_streak == 1


def test_too_many_non_finite_steps_stop_the_run_with_the_last_checkpoint_intact(tmp_path):
    calls = {"n": 0}

    def breaks_later(images, prompts):
        calls["n"] += 1
        r = brightness(images, prompts)
        return r if calls["n"] <= 2 else torch.full_like(r, float("nan"))

    config = make_config(tmp_path, max_train_steps=10, checkpointing_steps=2, max_consecutive_bad_groups=2)
    trainer = make_trainer(config, rewards={breaks_later: 1.0})
    with pytest.raises(TrainingStopped, match="2 training steps in a row had non-finite rewards"):
        trainer.train()
    latest = trainer.checkpoints.latest()
    assert latest is not None and latest.endswith("checkpoint-2")
    weights = lora_weights(trainer)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_failing_reward_model_stops_the_run_naming_it_and_the_prompts(tmp_path):
    def broken_reward(images, prompts):
        raise RuntimeError("CUDA out of memory")

    trainer = make_trainer(make_config(tmp_path), rewards={broken_reward: 1.0})
    with pytest.raises(TrainingStopped, match=r"Reward model 'broken_reward' failed at step 0 on prompts \["):
        trainer.train_step()


def test_saved_lora_loads_into_a_stock_flux_pipeline(tmp_path):
    # lora_alpha != rank: the file must carry the adapter's scale (alpha / r = 2), or the stock pipeline's LoRA
    # would be the trained one at half strength (it was, max |diff| 6.5e-3 against 1.3e-2 for the LoRA's effect)
    trainer = make_trainer(make_config(tmp_path, max_train_steps=2, lora_alpha=8))
    trainer.train()
    out_dir = Path(trainer.config.output_dir)
    assert (out_dir / "pytorch_lora_weights.safetensors").is_file()
    assert (out_dir / "reward_curve.png").is_file()
    assert "hub_token" not in (out_dir / "training_config.yaml").read_text()

    stock = build_tiny_flux_pipeline(seed=0)
    stock.load_lora_weights(str(out_dir))
    trained = trainer.pipeline.denoiser
    x = torch.randn(1, 64, 16)
    kwargs = dict(
        hidden_states=x,
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        pooled_projections=torch.randn(1, 32),
        encoder_hidden_states=torch.randn(1, 16, 32),
        txt_ids=torch.zeros(16, 3),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32),
        return_dict=False,
    )
    with torch.no_grad():
        torch.testing.assert_close(stock.transformer(**kwargs)[0], trained(**kwargs)[0], rtol=0, atol=1e-5)
        stock.unload_lora_weights()
        assert not torch.allclose(stock.transformer(**kwargs)[0], trained(**kwargs)[0], atol=1e-5)


def test_push_to_hub_uploads_card_weights_and_config_without_the_token_or_local_paths(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI sets it; the upload is mocked below
    config = make_config(
        tmp_path,
        max_train_steps=1,
        push_to_hub=True,
        hub_model_id="me/flux-mixgrpo-lora",
        hub_token="hf_secret_token_123",
    )
    trainer = make_trainer(config)
    uploaded = {}

    def capture(**kwargs):  # the staging folder is deleted after the upload: read it now
        root = Path(kwargs["folder_path"])
        for path in root.rglob("*"):
            if path.is_file():
                uploaded[str(path.relative_to(root))] = path.read_bytes()
        return mock.Mock()

    with (
        mock.patch("huggingface_hub.HfApi.create_repo") as create,
        mock.patch("huggingface_hub.HfApi.upload_folder", side_effect=capture) as upload,
    ):
        create.return_value = mock.Mock(repo_id="me/flux-mixgrpo-lora")
        trainer.train()
    assert create.call_args.args[0] == "me/flux-mixgrpo-lora"
    assert upload.call_args.kwargs["repo_id"] == "me/flux-mixgrpo-lora"
    assert {"README.md", "pytorch_lora_weights.safetensors", "training_config.yaml", "reward_curve.png"} <= set(
        uploaded
    )
    for name, data in uploaded.items():
        assert b"hf_secret_token_123" not in data, name
        assert str(tmp_path).encode() not in data, name  # no local path in the card, the config or the logs
    assert b"load_lora_weights" in uploaded["README.md"]
    assert not (tmp_path / "run" / ".hub-upload").exists()
    assert "/" in (tmp_path / "run" / "training_config.yaml").read_text()  # the local copy keeps its paths


DDP_SCRIPT = Path(__file__).with_name("ddp_equivalence_script.py")


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), 1 prompt per rank, vs 1 process with 2 prompts and 2 accumulation
    micro-batches: same global batch, same LoRA weights after 2 updates (<= 1e-5; gloo all-reduce order). The 2-rank
    run reduces the gradients once per optimiser step, not once per trained window step (K = 2 backwards each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two.pt"
    one = tmp_path / "one.pt"
    run_ranks(DDP_SCRIPT, tmp_path / "two", two, 1, 1, tmp_path / "reductions.pt", port=29533, env=env)
    # 2 iterations x 1 optimiser step (one micro-batch of 4 rollouts, K = 2 backwards); the tiny LoRA is one bucket.
    # Before the fix: 4 (every backward of the last micro-batch reduced).
    assert torch.load(tmp_path / "reductions.pt")["buckets"] == [0, 0]
    subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(tmp_path / "one"), str(one), "2", "2"], check=True, env=env, timeout=600
    )
    a, b = torch.load(two), torch.load(one)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "train_batch_size, accumulation, steps",
    [(None, 1, 1), (2, 2, 2), (1, 3, 3), (3, 1, 3)],  # 8 rollouts: 8 / (2 x 2) = 2, ceil(8 / 3) = 3, ceil(8 / 3) = 3
)
def test_optimizer_steps_per_iteration_follow_train_batch_size_and_accumulation(
    tmp_path, train_batch_size, accumulation, steps
):
    """One process, 2 prompts x 4 images per iteration; None: one micro-batch per rollout chunk (all 8 here)."""
    config = make_config(
        tmp_path, max_train_steps=1, train_batch_size=train_batch_size, gradient_accumulation_steps=accumulation
    )
    assert config.optimizer_steps_per_iteration == steps
    trainer = make_trainer(config)
    with mock.patch.object(trainer.optimizer, "step", wraps=trainer.optimizer.step) as step:
        logs = trainer.train_step()
    assert logs["train/optimizer_steps"] == step.call_count == steps


def test_a_dropped_sample_counts_as_a_sample_with_advantage_zero(tmp_path):
    """Micro-batches of 2 that mix kept and dropped samples: a group with a NaN reward trains as the same group with
    one constant reward (its advantages 0); the kept samples keep their weight (sum over the kept / the full size).
    (One accumulation group: a group of micro-batches with no kept sample at all takes no optimiser step, where
    zero gradients would still move AdamW's weights.)"""

    def first_group(value):
        def reward(images, prompts):
            r = brightness(images, prompts)
            r[torch.tensor([p == prompts[0] for p in prompts])] = value
            return r

        return reward

    weights = []
    for value in (float("nan"), 0.5):
        trainer = make_trainer(
            make_config(tmp_path / str(value), max_train_steps=1, train_batch_size=2, gradient_accumulation_steps=4)
        )
        trainer.reward.rewards = {"r": first_group(value)}
        trainer.reward.weights = {"r": 1.0}
        logs = trainer.train_step()
        assert logs["data/dropped_samples"] == (4 if value != value else 0)
        weights.append(lora_weights(trainer))
    # Not bit for bit: the kept samples run in smaller batches than with the constant reward (float rounding);
    # measured largest difference 1.8e-7, against an update of ~1e-3 (checked below).
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=1e-6)
    initial = lora_weights(make_trainer(make_config(tmp_path / "initial")))
    assert max(float((weights[0][n] - v).abs().max()) for n, v in initial.items()) > 1e-4


def test_registered_rewards_load_with_reward_dtype_and_reward_device(tmp_path):
    """A registered reward's factory gets `reward_dtype` as a torch dtype and `reward_device` as a torch device;
    without `reward_device` it gets the training device."""
    from diffusers_mixgrpo.rewards.registry import register_reward, unregister_reward

    calls = []

    def probe(device=None, dtype=None):
        calls.append((device, dtype))
        return brightness

    register_reward("placement_probe", probe)
    try:
        make_trainer(make_config(tmp_path / "a", reward_dtype="bfloat16", reward_device="cpu"), {"placement_probe": 1})
        make_trainer(make_config(tmp_path / "b"), {"placement_probe": 1})
    finally:
        unregister_reward("placement_probe")
    assert calls == [(torch.device("cpu"), torch.bfloat16), (torch.device("cpu"), torch.float32)]


def test_an_unavailable_reward_device_fails_before_the_model_loads(tmp_path):
    from diffusers_mixgrpo.training.errors import ConfigError

    config = make_config(tmp_path, reward_device="cuda:7")
    with mock.patch("diffusers_mixgrpo.training.trainer.load_training_pipeline") as load:
        with pytest.raises(ConfigError, match="reward_device='cuda:7' is not available"):
            GRPOTrainer(config, rewards={brightness: 1.0}, train_prompts=PROMPTS)
    load.assert_not_called()
