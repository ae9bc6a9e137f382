"""Policy library: fitting, image encoders, checkpoints, one-step sampling, crops."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from robolearn.data.dataset import WindowDataset
from robolearn.data.normalizer import KeyStats, Normalizer
from robolearn.errors import ConfigError, UserError
from robolearn.policies import (
    EMA,
    EMAConfig,
    load_policy,
    load_state_into,
    make_policy,
    read_checkpoint_meta,
    save_checkpoint,
    shape_meta_from_dataset,
)
from robolearn.policies.encoders import CropAug, center_crop

SMALL = {
    "encoder": {"lowdim_hidden_dims": [64], "lowdim_feature_dim": 32, "resnet_width": 8, "image_feature_dim": 16},
    "unet": {"down_dims": [32, 64], "time_embed_dim": 32},
    "transformer": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0, "time_embed_dim": 32},
    # A short EMA window: these tests train for hundreds of steps, not hundreds of thousands.
    "ema": {"power": 0.5},
}
LOWDIM_META = {"obs": {"state": {"shape": [3], "kind": "lowdim"}}, "action_dim": 2, "n_obs_steps": 2, "horizon": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(policy_type: str, **kw) -> dict:
    return {"type": policy_type, **copy.deepcopy(SMALL), **kw}


def tiny_dataset() -> tuple[torch.Tensor, torch.Tensor, Normalizer]:
    """4 distinct observation windows, each with its own smooth 8-step 2-D action chunk."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 2, 3, generator=g) * 2 + 1
    t = torch.linspace(0, 1, 8)
    amp = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.3], [1.5, 1.5]])
    base = torch.stack([torch.sin(3 * t), 0.5 * torch.cos(2 * t)], -1)
    act = amp[:, None] * base + torch.tensor([0.2, -0.1]) + torch.arange(4.0)[:, None, None] * 0.1
    norm = Normalizer({"state": KeyStats.compute(obs.reshape(-1, 3).numpy()),
                       "action": KeyStats.compute(act.reshape(-1, 2).numpy())})
    return obs, act, norm


def lowdim_policy(policy_type: str, **kw):
    obs, act, norm = tiny_dataset()
    policy = make_policy(cfg(policy_type, **kw), LOWDIM_META)
    policy.set_normalizer(norm)
    return policy, obs, act


def train(policy, batch: dict, steps: int, lr: float = 3e-3) -> float:
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    policy.train()
    for _ in range(steps):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        policy.update_ema()
    policy.eval()
    return loss.item()


FIT_CASES = {
    "diffusion-unet": ("diffusion", {"backbone": "unet", "prediction_type": "epsilon", "sampler": "ddpm",
                                     "num_inference_steps": 100}),
    "diffusion-transformer": ("diffusion", {"backbone": "transformer", "prediction_type": "sample",
                                            "sampler": "ddim", "num_inference_steps": 16}),
    "flow-unet": ("flow", {"backbone": "unet", "num_inference_steps": 10}),
    "meanflow-transformer": ("meanflow", {"backbone": "transformer"}),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_policy_fits_a_tiny_dataset(case):
    policy_type, kw = FIT_CASES[case]
    torch.manual_seed(0)
    policy, obs, act = lowdim_policy(policy_type, **kw)

    def errors() -> tuple[float, float, torch.Tensor]:
        pred = policy.predict_action({"state": obs}, generator=torch.Generator().manual_seed(1))
        assert pred.shape == act.shape
        err = (pred - act).abs()
        return float(err.mean()), float(err.max()), pred

    before, _, _ = errors()
    assert before > 0.3  # an untrained policy does not pass by accident
    batch = {"obs": {"state": obs.repeat(8, 1, 1)}, "action": act.repeat(8, 1, 1)}
    train(policy, batch, steps=400)
    mean_err, max_err, pred = errors()
    # Actions span about [-2, 2]; over seeds 0-5 these runs reach mean errors of 0.01-0.04.
    assert mean_err < 0.08 and max_err < 0.5, (mean_err, max_err)
    # Each window reproduces its own chunk, not a blend of the four.
    dist = torch.cdist(pred.flatten(1), act.flatten(1))
    assert torch.equal(dist.argmin(1), torch.arange(4))


IMAGE_META = {
    "obs": {
        "state": {"shape": [3], "kind": "lowdim"},
        "front_image": {"shape": [3, 32, 32], "kind": "rgb"},
        "front_depth": {"shape": [1, 32, 32], "kind": "depth"},
        "wrist_image": {"shape": [3, 32, 32], "kind": "rgb"},
    },
    "action_dim": 4,
    "n_obs_steps": 2,
    "horizon": 8,
}


def image_batch(b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": {
            "state": torch.randn(b, 2, 3, generator=g),
            "front_image": torch.rand(b, 2, 3, 32, 32, generator=g),
            "front_depth": torch.rand(b, 2, 1, 32, 32, generator=g) * 1.5,
            "wrist_image": torch.rand(b, 2, 3, 32, 32, generator=g),
        },
        "action": torch.randn(b, 8, 4, generator=g),
    }


def image_normalizer() -> Normalizer:
    rng = np.random.default_rng(0)
    return Normalizer({"state": KeyStats.compute(rng.normal(size=(50, 3))),
                       "action": KeyStats.compute(rng.normal(size=(50, 4)))})


@pytest.mark.parametrize("policy_type,backbone", [("diffusion", "transformer"), ("flow", "unet")])
def test_image_policy_two_cameras_with_depth(policy_type, backbone):
    torch.manual_seed(0)
    policy = make_policy(cfg(policy_type, backbone=backbone), IMAGE_META)
    policy.set_normalizer(image_normalizer())
    enc = policy.net.obs_encoder
    assert enc.cameras == [("front_image", "front_depth"), ("wrist_image", None)]
    assert set(policy.obs_keys) == set(IMAGE_META["obs"])
    front, wrist = enc.cams["front_image"], enc.cams["wrist_image"]
    assert front.backbone.stem[0].in_channels == 4 and wrist.backbone.stem[0].in_channels == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in policy.modules())

    batch = image_batch()
    # A couple of steps first: adaLN-Zero gates start at zero, so the transformer's first backward
    # pass sends no gradient to the observation encoder.
    train(policy, batch, steps=2)
    policy.train()
    policy.zero_grad()
    loss = policy.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    w = front.backbone.stem[0].weight.grad
    assert w is not None and w[:, 3].abs().sum() > 0  # the depth channel gets gradient
    assert wrist.backbone.stem[0].weight.grad.abs().sum() > 0

    policy.eval()
    chunk = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 8, 4) and torch.isfinite(chunk).all()
    assert policy.executable_actions(chunk).shape == (3, policy.n_action_steps, 4)
    # Depth reaches the conditioning; older observation steps are ignored by predict_action.
    o = {k: v.clone() for k, v in batch["obs"].items()}
    cond = enc(policy._prepare_obs(o, exact=True))
    o["front_depth"] = o["front_depth"] + 0.3
    assert not torch.allclose(cond, enc(policy._prepare_obs(o, exact=True)))
    longer = {k: torch.cat([torch.zeros_like(v[:, :1]), v], dim=1) for k, v in batch["obs"].items()}
    g = torch.Generator().manual_seed(0)
    assert torch.equal(policy.predict_action(longer, generator=g), chunk)


def test_crop_is_random_in_train_and_centred_in_eval():
    crop = CropAug((28, 28))
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    crop.train()
    torch.manual_seed(0)
    outs = [crop(x) for _ in range(8)]
    assert all(o.shape == (2, 3, 28, 28) for o in outs)
    assert len({tuple(o[:, 0, 0, 0].tolist()) for o in outs}) > 1  # different windows
    for o in outs:  # a crop is a contiguous window: rows and columns step by 32 and 1
        assert torch.equal(o[:, :, 1:, :] - o[:, :, :-1, :], torch.full_like(o[:, :, 1:, :], 32.0))
        assert torch.equal(o[:, :, :, 1:] - o[:, :, :, :-1], torch.ones_like(o[:, :, :, 1:]))
    crop.eval()
    assert torch.equal(crop(x), crop(x))
    assert torch.equal(crop(x), x[:, :, 2:30, 2:30])
    assert torch.equal(center_crop(x, (28, 28)), x[:, :, 2:30, 2:30])

    # Through the policy's encoder: train mode varies between calls, eval mode does not.
    torch.manual_seed(0)
    policy = make_policy(cfg("flow", encoder={**SMALL["encoder"], "crop_ratio": 0.8}), IMAGE_META)
    policy.set_normalizer(image_normalizer())
    obs = policy._prepare_obs(image_batch()["obs"], exact=True)
    enc = policy.net.obs_encoder
    enc.train()
    assert not torch.allclose(enc(obs), enc(obs))
    enc.eval()
    assert torch.equal(enc(obs), enc(obs))


@pytest.mark.parametrize("policy_type,kw,image", [
    ("diffusion", {"backbone": "unet", "sampler": "ddpm", "num_inference_steps": 20}, False),
    ("meanflow", {"backbone": "transformer"}, True),
])
def test_checkpoint_round_trip_gives_identical_actions(tmp_path, policy_type, kw, image):
    torch.manual_seed(0)
    if image:
        policy = make_policy(cfg(policy_type, **kw), IMAGE_META)
        policy.set_normalizer(image_normalizer())
        batch = image_batch()
    else:
        policy, obs, act = lowdim_policy(policy_type, **kw)
        batch = {"obs": {"state": obs}, "action": act}
    train(policy, batch, steps=3)
    assert policy.ema is not None and policy.ema.step == 3
    # EMA and live weights differ, so the check below also shows the EMA copy was restored.
    live = dict(policy.net.named_parameters())
    assert any(not torch.equal(p, live[n]) for n, p in policy.ema.shadow.named_parameters())

    path = save_checkpoint(policy, tmp_path / "ckpt", extra={"epoch": 7})
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "ema.safetensors",
                                                "normalizer.json", "extra.json"}
    meta = read_checkpoint_meta(path)
    assert meta["policy_type"] == policy_type and meta["extra"] == {"epoch": 7}
    assert meta["config"]["horizon"] == 8 and meta["config"]["n_action_steps"] == policy.n_action_steps

    loaded = load_policy(path)
    assert type(loaded) is type(policy) and not loaded.training
    assert loaded.config == policy.config and loaded.ema.step == 3
    assert loaded.normalizer.json == json.loads((path / "normalizer.json").read_text())
    for use_ema in (True, False):
        a = policy.predict_action(batch["obs"], generator=torch.Generator().manual_seed(3), use_ema=use_ema)
        b = loaded.predict_action(batch["obs"], generator=torch.Generator().manual_seed(3), use_ema=use_ema)
        assert torch.equal(a, b)


def test_checkpoints_with_the_older_tensor_layout_shape_meta_still_load(tmp_path):
    """Checkpoints written before the shared Feature type stored obs as {"shape": [C, H, W], "kind": ...}."""
    torch.manual_seed(0)
    policy = make_policy(cfg("flow"), IMAGE_META)  # IMAGE_META is in that older form
    policy.set_normalizer(image_normalizer())
    assert policy.shape_meta.obs["front_image"].shape == (32, 32, 3)
    assert policy.shape_meta.obs["front_image"].tensor_shape == (3, 32, 32)
    assert policy.shape_meta.obs["front_depth"].shape == (32, 32)
    path = save_checkpoint(policy, tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    assert meta["shape_meta"]["obs"]["front_image"]["dtype"] == "uint8"  # written in the new form
    meta["shape_meta"]["obs"] = copy.deepcopy(IMAGE_META["obs"])  # as the older code wrote it
    (path / "config.json").write_text(json.dumps(meta))
    loaded = load_policy(path)  # no false "shape_meta differs"
    assert loaded.shape_meta == policy.shape_meta
    obs = image_batch()["obs"]
    g = torch.Generator
    assert torch.equal(loaded.predict_action(obs, generator=g().manual_seed(1)),
                       policy.eval().predict_action(obs, generator=g().manual_seed(1)))
    meta["shape_meta"]["obs"]["wrist_image"] = {"shape": [3, 16, 16], "kind": "rgb"}  # a real difference
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shape_meta obs\.wrist_image\.shape: checkpoint \[16, 16, 3\]"):
        load_state_into(make_policy(cfg("flow"), IMAGE_META), path)


def test_load_policy_with_inference_overrides(tmp_path):
    torch.manual_seed(0)
    policy, obs, _ = lowdim_policy("flow", backbone="unet")
    save_checkpoint(policy, tmp_path / "ckpt")
    fast = load_policy(tmp_path / "ckpt", overrides={"num_inference_steps": 2})
    assert fast.config.num_inference_steps == 2
    with pytest.raises(ValueError, match=r"shape mismatch.*\n.*overridden at load: unet\.down_dims"):
        load_policy(tmp_path / "ckpt", overrides={"unet": {"down_dims": [16, 32]}})


def test_mismatched_checkpoints_are_refused(tmp_path):
    torch.manual_seed(0)
    policy, _, _ = lowdim_policy("diffusion", backbone="transformer")
    path = save_checkpoint(policy, tmp_path / "ckpt")

    other_h = make_policy(cfg("diffusion", backbone="transformer"), {**LOWDIM_META, "horizon": 16})
    with pytest.raises(ValueError) as e:
        load_state_into(other_h, path)
    msg = str(e.value)
    assert "config horizon: checkpoint 8, model 16" in msg
    assert "net.denoiser.pos (1, 10, 64) vs (1, 18, 64)" in msg

    wide = cfg("diffusion", backbone="transformer")
    wide["transformer"]["d_model"] = 32
    with pytest.raises(ValueError) as e:
        load_state_into(make_policy(wide, LOWDIM_META), path)
    assert "config transformer.d_model: checkpoint 64, model 32" in str(e.value)
    assert "shape mismatch" in str(e.value)

    with pytest.raises(ValueError) as e:
        load_state_into(make_policy(cfg("diffusion", backbone="unet"), LOWDIM_META), path)
    msg = str(e.value)
    assert "config backbone: checkpoint 'transformer', model 'unet'" in msg
    assert "tensors missing from the checkpoint: net.denoiser.down" in msg
    assert "unexpected tensors in the checkpoint: net.denoiser.blocks.0" in msg

    with pytest.raises(ValueError, match="policy type: checkpoint 'diffusion', model 'flow'"):
        load_state_into(make_policy(cfg("flow", backbone="transformer"), LOWDIM_META), path)

    more_actions = make_policy(cfg("diffusion", backbone="transformer"), {**LOWDIM_META, "action_dim": 3})
    with pytest.raises(ValueError, match="shape_meta action_dim: checkpoint 2, model 3"):
        load_state_into(more_actions, path)

    # A refused load leaves the target untouched.
    before = {k: v.clone() for k, v in other_h.state_dict().items()}
    with pytest.raises(ValueError):
        load_state_into(other_h, path)
    assert all(torch.equal(v, other_h.state_dict()[k]) for k, v in before.items())


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_meanflow_samples_with_exactly_one_network_evaluation():
    torch.manual_seed(0)
    policy, obs, _ = lowdim_policy("meanflow", backbone="unet")
    policy.eval()
    ema_calls = _count_calls(policy.inference_net.denoiser)
    live_calls = _count_calls(policy.net.denoiser)
    policy.predict_action({"state": obs})
    assert (ema_calls[0], live_calls[0]) == (1, 0)
    # The counter is not blind: rectified flow calls its network once per Euler step.
    flow, _, _ = lowdim_policy("flow", backbone="unet", num_inference_steps=3)
    flow_calls = _count_calls(flow.inference_net.denoiser)
    flow.predict_action({"state": obs})
    assert flow_calls[0] == 3


class _ExactMeanVelocity(nn.Module):
    """The true average velocity toward one data point x: u(z, r, t) = (z - x) / t (or a wrong one)."""

    def __init__(self, x: torch.Tensor, time_scale: float, wrong: bool = False) -> None:
        super().__init__()
        self.x, self.time_scale, self.wrong = x, time_scale, wrong
        self.scale = nn.Parameter(torch.ones(()))  # so the loss has something to backpropagate into

    def forward(self, z, times, cond):
        t = times[:, 0, None, None] / self.time_scale
        return self.scale * ((z - self.x) if self.wrong else (z - self.x) / t)


def test_meanflow_target_follows_the_meanflow_identity():
    torch.manual_seed(0)
    policy, _, _ = lowdim_policy("meanflow", backbone="unet", ratio_r_neq_t=1.0, adaptive_weight_power=0.0)
    x = torch.randn(1, 8, 2).expand(64, 8, 2)
    cond = torch.zeros(64, policy.net.obs_encoder.out_dim)
    policy.net.denoiser = _ExactMeanVelocity(x[:1], policy.config.time_scale)
    assert policy._loss(policy.net, cond, x).item() < 1e-8  # the exact solution is a fixed point
    policy.net.denoiser = _ExactMeanVelocity(x[:1], policy.config.time_scale, wrong=True)
    assert policy._loss(policy.net, cond, x).item() > 1e-2


class _Quadratic(nn.Module):
    """u(z, r, t) = a * (z * t**2 + r), read back from the denoiser's (t, t - r) time inputs."""

    def __init__(self, time_scale: float) -> None:
        super().__init__()
        self.time_scale = time_scale
        self.a = nn.Parameter(torch.ones(()))

    def forward(self, z, times, cond):
        t, h = (times / self.time_scale).unbind(-1)
        return self.a * (z * t[:, None, None] ** 2 + (t - h)[:, None, None])


def test_meanflow_target_matches_the_analytic_one():
    torch.manual_seed(0)
    policy, _, _ = lowdim_policy("meanflow", backbone="unet")
    policy.net.denoiser = _Quadratic(policy.config.time_scale)
    z, v = torch.randn(5, 8, 2), torch.randn(5, 8, 2)
    t = torch.rand(5)
    r = t * torch.rand(5)
    u, target = policy.mean_velocity_and_target(policy.net, torch.zeros(5, 1), z, r, t, v)
    tt, rr = t[:, None, None], r[:, None, None]
    torch.testing.assert_close(u, z * tt**2 + rr)
    # du/dt along the flow = v * du/dz + du/dt = v t^2 + 2 t z (r held fixed)
    torch.testing.assert_close(target, v - (tt - rr) * (v * tt**2 + 2 * tt * z))
    assert u.requires_grad and not target.requires_grad


def test_ema_schedule_and_placement():
    model = nn.Linear(3, 3)
    ema = EMA(model, EMAConfig(power=0.75, update_after_step=2))
    assert [ema.decay(s) for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert 0.0 < ema.decay(4) < ema.decay(100) < ema.decay(10_000) <= 0.9999
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.shadow.weight, model.weight)  # warmup: copy
    assert not ema.shadow.weight.requires_grad

    torch.manual_seed(0)
    policy, obs, _ = lowdim_policy("flow")
    shadow_ids = {id(p) for p in policy.ema.shadow.parameters()}
    assert shadow_ids.isdisjoint(id(p) for p in policy.parameters())  # the optimiser never sees them
    assert not any(k.startswith("ema") for k in policy.state_dict())
    policy.double()
    assert next(policy.ema.shadow.parameters()).dtype == torch.float64  # .to()/.double() reach the copy


def test_dataset_to_policy(synth_store):
    path, _ = synth_store
    ds = WindowDataset(path, ["state", "cam_image", "cam_depth"], "action", n_obs_steps=2, horizon=6,
                       n_action_steps=3, split="all")
    meta = shape_meta_from_dataset(ds)
    # The store's features (stored layout); the policy reads them as the loader yields them.
    assert meta.obs["cam_image"].shape == (16, 16, 3) and meta.obs["cam_depth"].shape == (16, 16)
    assert meta.obs["cam_image"].tensor_shape == (3, 16, 16) and meta.obs["cam_depth"].tensor_shape == (1, 16, 16)
    assert (meta.action_dim, meta.n_obs_steps, meta.horizon) == (4, 2, 6)
    torch.manual_seed(0)
    policy = make_policy(cfg("diffusion", n_action_steps=3), meta)
    assert policy.net.obs_encoder.cameras == [("cam_image", "cam_depth")]
    with pytest.raises(RuntimeError, match="set_normalizer"):
        policy.compute_loss(ds.__getitems__([0, 1]))
    policy.set_normalizer(ds.normalizer())
    batch = ds.__getitems__(list(range(4)))
    assert torch.isfinite(policy.compute_loss(batch))
    policy.eval()
    chunk = policy.predict_action(batch["obs"])
    assert chunk.shape == (4, 6, 4)
    assert torch.equal(policy.executable_actions(chunk), chunk[:, 1:4])


def test_unet_pads_horizons_that_do_not_halve_evenly_and_ema_can_be_off(tmp_path):
    torch.manual_seed(0)
    meta = {**LOWDIM_META, "horizon": 6}
    policy = make_policy(cfg("flow", unet={"down_dims": [16, 32, 64], "time_embed_dim": 32}, ema={"enabled": False},
                             num_inference_steps=2), meta)
    obs, _, norm = tiny_dataset()
    policy.set_normalizer(norm)
    loss = policy.compute_loss({"obs": {"state": obs}, "action": torch.randn(4, 6, 2)})
    loss.backward()
    assert policy.ema is None and policy.inference_net is policy.net
    policy.eval()
    chunk = policy.predict_action({"state": obs}, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (4, 6, 2)
    path = save_checkpoint(policy, tmp_path / "ckpt")
    assert not (path / "ema.safetensors").exists()
    again = load_policy(path).predict_action({"state": obs}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, chunk)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'num_steps'"):
        make_policy({"type": "flow", "num_steps": 3}, LOWDIM_META)
    with pytest.raises(ConfigError, match=r"^encoder: unknown key 'crop' \(did you mean 'crop_ratio'\?\)"):
        make_policy({"type": "flow", "encoder": {"crop": 0.9}}, LOWDIM_META)
    with pytest.raises(ValueError, match="unknown policy type"):
        make_policy({"type": "vae"}, LOWDIM_META)
    with pytest.raises(ValueError, match="n_action_steps"):
        make_policy({"type": "flow", "n_action_steps": 8}, LOWDIM_META)
    with pytest.raises(ValueError, match="disagrees"):
        make_policy({"type": "flow", "horizon": 16}, LOWDIM_META)
    with pytest.raises(ValueError, match="backbone"):
        make_policy({"type": "flow", "backbone": "mlp"}, LOWDIM_META)
    policy = make_policy({"type": "flow", **SMALL}, LOWDIM_META)
    assert policy.n_action_steps == 4  # default: horizon // 2
    gaussian = Normalizer(tiny_dataset()[2].stats, "gaussian")
    with pytest.warns(UserWarning, match="clip_sample"):
        make_policy(cfg("diffusion"), LOWDIM_META).set_normalizer(gaussian)


@pytest.mark.parametrize("policy_type", ["diffusion", "flow", "meanflow"])
def test_loss_under_cpu_bf16_autocast(policy_type):
    # `train.mixed_precision=bf16` runs the loss under autocast; MeanFlow's forward-mode JVP must still work.
    policy, obs, act = lowdim_policy(policy_type, backbone="unet")
    policy.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = policy.compute_loss({"obs": {"state": obs}, "action": act})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_flow_with_prefix_actions_continues_the_given_actions():
    """Training-time real-time chunking: one observation, two equally likely chunks that part from the first
    action on. Given the first actions of either, every sample continues that one; the given actions come
    back unchanged. A policy that ignored them would follow the other chunk for about half the noise draws."""
    torch.manual_seed(0)
    obs = torch.ones(1, 2, 3)
    t = torch.linspace(0, 1, 8)[:, None]
    up = torch.cat([2 * t - 0.5, 0.3 + 0 * t], -1)
    down = torch.cat([-2 * t - 0.5, -0.3 + 0 * t], -1)
    chunks = torch.stack([up, down])
    norm = Normalizer({"state": KeyStats.compute(np.concatenate([obs.reshape(-1, 3).numpy(), np.zeros((1, 3))])),
                       "action": KeyStats.compute(chunks.reshape(-1, 2).numpy())})
    policy = make_policy(cfg("flow", num_inference_steps=10, prefix_actions=4), LOWDIM_META)
    policy.set_normalizer(norm)
    batch = {"obs": {"state": obs.repeat(32, 1, 1)}, "action": chunks.repeat(16, 1, 1)}
    train(policy, batch, steps=300)
    for k, want in ((0, up), (1, down)):
        for seed in range(6):
            pred = policy.predict_action({"state": obs}, generator=torch.Generator().manual_seed(seed),
                                         prefix=chunks[k][None], n_prefix=3)[0]
            assert torch.equal(pred[:3], chunks[k][:3])
            err, err_other = (float((pred[3:] - c[3:]).abs().mean()) for c in (want, chunks[1 - k]))
            assert err < 0.5 and err < err_other / 2, (k, seed, err, err_other)
    with pytest.raises(ValueError, match="prefix_actions"):
        policy.predict_action({"state": obs}, prefix=chunks[0][None], n_prefix=5)


@pytest.mark.parametrize("policy_type,kw,key", [("meanflow", {"prefix_actions": 2}, "prefix_actions"),
                                                ("flow", {"prefix_actions": 8}, "prefix_actions")])
def test_prefix_actions_config_is_checked(policy_type, kw, key):
    with pytest.raises(ConfigError) as e:
        make_policy(cfg(policy_type, **kw), LOWDIM_META)
    assert e.value.key.endswith(key)


def test_a_checkpoint_without_a_newer_config_field_loads_as_its_default(tmp_path):
    """Checkpoints written before a config field existed (here prefix_actions) load with its default, and
    still refuse a model that sets it otherwise."""
    policy, _, _ = lowdim_policy("flow")
    save_checkpoint(policy, tmp_path / "ck")
    cfg_file = tmp_path / "ck" / "config.json"
    data = json.loads(cfg_file.read_text())
    del data["config"]["prefix_actions"]
    cfg_file.write_text(json.dumps(data))
    assert load_policy(tmp_path / "ck").prefix_actions == 0
    other = make_policy(cfg("flow", prefix_actions=2), LOWDIM_META)
    with pytest.raises(UserError, match="prefix_actions"):
        load_state_into(other, tmp_path / "ck")
