"""Image observations: uint8 camera streams through the robomimic writer / reader, the crop,
the image policy's conditioning, select_action and the contraction term through the encoder, and
robosuite's offscreen cameras where this machine can render."""

import numpy as np
import pytest
import torch

from cdp.contraction import ContractionConfig
from cdp.contraction.loss import contraction_loss
from cdp.data.robomimic import Demo, DemoDataset, read_robomimic, write_robomimic
from cdp.diffusion import sample
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig, load_policy
from cdp.nets.vision import ResNet18, SmallCNN, crop

S = 12  # image side of the small instance


def test_images_round_trip_through_the_robomimic_layout_as_uint8(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    demo = Demo({"robot0_eef_pos": rng.normal(size=(5, 3)).astype(np.float32), "agentview_image": img},
                rng.normal(size=(5, 7)).astype(np.float32), np.zeros(5, np.float32), np.eye(1, 5, 4, dtype=bool)[0])
    path = write_robomimic(tmp_path / "image.hdf5", DemoDataset({"demo_0": demo}, {"env_name": "Lift"}))
    back = read_robomimic(path).demos["demo_0"]
    assert back.obs["agentview_image"].dtype == np.uint8 and back.obs["agentview_image"].shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(back.obs["agentview_image"], img)
    assert back.obs["robot0_eef_pos"].dtype == np.float32
    only = read_robomimic(path, obs_keys=["agentview_image"]).demos["demo_0"]
    assert list(only.obs) == ["agentview_image"]


def test_random_crop_takes_a_window_of_each_image_and_the_centre_at_inference():
    x = torch.arange(4 * 3 * 10 * 10, dtype=torch.float32).reshape(4, 3, 10, 10)
    out = crop(x, 7, generator=torch.Generator().manual_seed(0))
    windows = {(i, j) for i in range(4) for j in range(4)}
    tops = []
    for n in range(4):  # every output is exactly one 7x7 window of its own image
        hits = [(i, j) for i, j in windows if torch.equal(out[n], x[n, :, i:i + 7, j:j + 7])]
        assert len(hits) == 1
        tops.append(hits[0])
    assert len(set(tops)) > 1  # drawn per image
    assert torch.equal(crop(x, 7, random=False), x[:, :, 1:8, 1:8])
    with pytest.raises(ValueError, match="larger than"):
        crop(x, 11)


def test_encoders_map_images_to_features_and_differ_in_size():
    x = torch.rand(2, 3, 76, 76) * 2 - 1
    small, resnet = SmallCNN(16), ResNet18(16)
    assert small(x).shape == (2, 16) and resnet(x).shape == (2, 16)
    n_small = sum(p.numel() for p in small.parameters())
    n_res = sum(p.numel() for p in resnet.parameters())
    assert 1.1e7 < n_res < 1.2e7 and n_small < 3e5  # ResNet-18's ~11 M against the small CNN's
    assert not torch.allclose(small(x)[0], small(x)[1])


def _policy(gamma: float = 0.0, ta: int = 2) -> DiffusionPolicy:
    torch.manual_seed(0)
    term = ContractionConfig(gamma=gamma, margin=0.1) if gamma else None
    cfg = DiffusionPolicyConfig(obs_keys=["eef", "cam_image"], obs_dim=3 + S * S * 3, action_dim=2, n_obs_steps=2,
                                horizon=4, n_action_steps=ta, backbone="mlp", mlp_hidden=32, sample_steps=3,
                                image_keys=["cam_image"], image_size=S, crop=10, encoder="cnn", image_features=5,
                                contraction=term)
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(1)
    flat = np.concatenate([rng.normal(size=(50, 3)), rng.integers(0, 256, (50, S * S * 3))], 1)
    policy.set_stats(flat, rng.normal(size=(50, 2)))
    return policy


def _obs(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    return {"eef": rng.normal(size=(batch, 3)).astype(np.float32),
            "cam_image": rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)}


def _cond_by_hand(policy: DiffusionPolicy, eef: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """eef [B, To, 3], img [B, To, S, S, 3] -> the conditioning, in eval mode (centre crop)."""
    lo, hi = policy.obs_norm.lo[:3], policy.obs_norm.hi[:3]
    low = 2 * (eef - lo) / (hi - lo) - 1
    b, steps = img.shape[:2]
    x = img.reshape(b * steps, S, S, 3).permute(0, 3, 1, 2) / 127.5 - 1
    feats = policy.encoders["cam_image"](x[:, :, 1:11, 1:11]).reshape(b, steps, 5)
    return torch.cat([low, feats], -1).reshape(b, -1)


def test_image_policy_conditioning_and_select_action_by_hand(tmp_path):
    policy = _policy().eval()
    rng = np.random.default_rng(2)
    obs = _obs(rng, 3)
    eef, img = torch.as_tensor(obs["eef"]), torch.as_tensor(obs["cam_image"], dtype=torch.float32)
    flat = policy.flat_obs(obs)
    assert flat.shape == (3, 3 + S * S * 3)
    hist = torch.stack([flat, flat], 1)  # first step after reset: the observation repeated
    cond = _cond_by_hand(policy, torch.stack([eef, eef], 1), torch.stack([img, img], 1))
    assert torch.allclose(policy.cond(hist), cond, atol=1e-6)
    assert policy.config.cond_dim == cond.shape[1] == 2 * (3 + 5)

    torch.manual_seed(7)
    got = policy.select_action(obs)  # [3, 2]: the chunk's current step
    torch.manual_seed(7)
    x = sample(lambda a, t: policy.net(a, t, cond), torch.randn(3, 4, 2), policy.schedule, "ddim", 3, "eps", clip_x0=1.0)
    want = policy.act_norm.inverse(x.clamp(-1, 1))[:, policy.action_start]
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)
    one = {k: v[0] for k, v in obs.items()}  # one unbatched observation: one action
    policy.reset()
    assert policy.select_action(one).shape == (2,)

    policy.save_pretrained(tmp_path / "p")
    back = load_policy(tmp_path / "p")
    assert back.config.image_keys == ["cam_image"] and torch.allclose(back.cond(hist), cond, atol=1e-6)


def test_a_policy_reads_only_the_observations_its_chunks_condition_on():
    policy = _policy(ta=3).eval()  # To = 2, Ta = 3: a chunk at steps 0, 3, 6, ... reads steps 2-3, 5-6, ...
    rng = np.random.default_rng(3)
    seq = [_obs(rng, 2) for _ in range(12)]
    junk = {k: np.full_like(v, 7) for k, v in seq[0].items()}

    def roll(blank) -> tuple[np.ndarray, list[bool]]:
        policy.reset()
        torch.manual_seed(5)
        acts, reads = [], []
        for i, o in enumerate(seq):
            reads.append(policy.reads_next_observation())
            acts.append(policy.select_action(junk if blank(i, reads[-1]) else o))
        return np.stack(acts), reads

    want, reads = roll(lambda i, read: False)
    assert reads == [True, False, True] * 4  # by hand: the reset step, then the To steps before each chunk
    np.testing.assert_array_equal(roll(lambda i, read: not read)[0], want)  # the unread ones change nothing
    assert not np.allclose(roll(lambda i, read: i == 2)[0], want)  # a read one does


def test_evaluation_tells_camera_environments_which_steps_to_draw():
    from cdp.il.tasks import TaskSpec
    from cdp.il.trainer import evaluate

    class Cameras:  # an environment that records what it was told before each step
        def __init__(self):
            self.render_cameras, self.told, self.rng = True, [], np.random.default_rng(0)

        def reset(self, seed=None):
            self.render_cameras = True
            return {k: v[0] for k, v in _obs(self.rng, 1).items()}, {}

        def step(self, action):
            self.told.append(self.render_cameras)
            return {k: v[0] for k, v in _obs(self.rng, 1).items()}, 0.0, False, len(self.told) >= 9, {}

    envs = [Cameras(), Cameras()]
    task = TaskSpec("cams", Cameras, {"eef": (3,), "cam_image": (S, S, 3)}, 2, 9, None)
    assert evaluate(_policy(ta=3), task, episodes=2, envs=envs)["success_rate"] == 0.0
    # the observation after step i is read by select_action i + 1: steps 1-2 of 3 draw
    assert envs[0].told == envs[1].told == [False, True, True] * 3


def test_the_term_reaches_the_encoder_and_equals_the_exact_value():
    policy = _policy(gamma=0.5).eval()  # eval: the centre crop, so the conditioning is deterministic
    rng = np.random.default_rng(3)
    obs = _obs(rng, 6)
    flat = policy.flat_obs(obs)
    hist = torch.stack([flat, flat], 1)
    actions = torch.as_tensor(rng.normal(size=(6, 4, 2)), dtype=torch.float32)
    t = torch.full((6,), 0.05)
    noise = torch.as_tensor(rng.normal(size=(6, 4, 2)), dtype=torch.float32)
    out = policy.compute_loss(hist, actions, t=t, noise=noise)
    cond = _cond_by_hand(policy, torch.stack([torch.as_tensor(obs["eef"])] * 2, 1),
                         torch.stack([torch.as_tensor(obs["cam_image"], dtype=torch.float32)] * 2, 1))
    a_t = policy.schedule.q_sample(policy.act_norm(actions), t, noise)
    # the action chunk has 8 numbers: the term's exact eigenvalue path (8 <= exact_max_dim)
    exact = contraction_loss(policy.net, a_t, t, policy.schedule, "eps", margin=0.1, method="exact", cond=cond)
    assert torch.allclose(out["contraction"], 0.5 * exact.mean(), atol=1e-6)
    assert out["contraction"].item() > 0  # the hinge is active somewhere on this instance
    grads = torch.autograd.grad(out["contraction"], list(policy.encoders.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the encoder is part of the conditioning


def test_training_mode_crops_at_random():
    policy = _policy().train()
    rng = np.random.default_rng(4)
    flat = policy.flat_obs(_obs(rng, 4))
    hist = torch.stack([flat, flat], 1)
    torch.manual_seed(0)
    a = policy.cond(hist)
    torch.manual_seed(1)
    b = policy.cond(hist)
    assert torch.allclose(a[:, :3], b[:, :3]) and not torch.allclose(a, b)  # low-dim the same, crops not


def test_only_diffusion_policies_take_cameras():
    from cdp.il.trainer import ILTrainConfig

    with pytest.raises(ValueError, match="only the diffusion policies"):
        ILTrainConfig(policy="bc-gmm", task="lift-image", dataset="x.hdf5")
    with pytest.raises(ValueError, match="must be the last obs_keys"):
        DiffusionPolicyConfig(obs_keys=["cam_image", "eef"], obs_dim=3 + 16 * 16 * 3, action_dim=2,
                              image_keys=["cam_image"], image_size=16, crop=12)


def test_robosuite_cameras_render_upright_uint8_images():
    pytest.importorskip("robosuite")
    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        pytest.skip("no offscreen rendering here (apt-get install libosmesa6)")
    env = rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS)
    obs, _ = env.reset(seed=0)
    for cam in rs.CAMERAS:
        img = obs[f"{cam}_image"]
        assert img.dtype == np.uint8 and img.shape == (84, 84, 3) and img.std() > 10
    # the agent view looks down at the table: the robot (dark, grey) at the top, the table (light) below
    view = obs["agentview_image"].astype(float).mean(2)
    assert view[:10].mean() < view[-20:].mean()
    assert env.observation_space["agentview_image"].dtype == np.uint8


def test_a_step_without_drawing_repeats_the_last_images_and_a_drawn_one_is_robosuites():
    pytest.importorskip("robosuite")
    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        pytest.skip("no offscreen rendering here (apt-get install libosmesa6)")
    always, skipping = rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS), rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS)
    always.reset(seed=4)
    last = skipping.reset(seed=4)[0]
    move = np.array([0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0])  # down, gripper closing: the wrist view changes
    for draw in (False, False, True, False, True):
        skipping.render_cameras = draw
        a, b = always.step(move)[0], skipping.step(move)[0]
        np.testing.assert_array_equal(a["robot0_eef_pos"], b["robot0_eef_pos"])  # the state is stepped alike
        for cam in rs.CAMERAS:
            key = f"{cam}_image"
            if draw:
                np.testing.assert_array_equal(b[key], a[key])
            else:
                np.testing.assert_array_equal(b[key], last[key])
        if draw:
            assert not np.array_equal(a["robot0_eye_in_hand_image"], last["robot0_eye_in_hand_image"])
        last = b
    assert skipping.reset(seed=4)[0]["agentview_image"].shape == (84, 84, 3) and skipping.render_cameras


def test_evaluation_environments_render_as_the_dataset_says():
    from cdp.il.tasks import get_task

    image, state = get_task("lift-image"), get_task("lift")
    assert image.image_keys == ["agentview_image", "robot0_eye_in_hand_image"] and state.image_keys == []
    made_here = {"env_name": "Lift", "env_kwargs": {"seed": 0, "camera_render": "fast"}}
    assert image.env_kwargs(made_here) == {"camera_render": "fast"}
    # robomimic's own files, and this project's made before the option: robosuite's rendering
    assert image.env_kwargs({"env_name": "Lift", "env_kwargs": {"seed": 0}}) == {"camera_render": "robosuite"}
    assert image.env_kwargs({}) == {"camera_render": "robosuite"}
    assert state.env_kwargs(made_here) == {}  # no cameras, nothing to follow


def test_fast_camera_rendering_draws_once_without_multisampling_and_stays_close_to_robosuites():
    pytest.importorskip("robosuite")
    import mujoco

    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        pytest.skip("no offscreen rendering here (apt-get install libosmesa6)")
    with pytest.raises(ValueError, match="camera_render must be one of"):
        rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS, camera_render="quick")
    envs = {how: rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS, camera_render=how) for how in rs.CAMERA_RENDERS}
    obs, ctx = {}, {}
    for how, env in envs.items():  # both made first: each must still draw in its own GL context
        env.reset(seed=3)
        obs[how] = env.step(np.zeros(7))[0]  # after a reset and a step: the settings hold
        c = env.env.sim._render_context_offscreen
        ctx[how] = (c.con.offSamples, c.con.offWidth, int(c.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION]))
        assert env.env_args()["env_kwargs"]["camera_render"] == how
    assert ctx["robosuite"] == (4, 640, 1) and ctx["fast"] == (0, 84, 0)
    for cam in rs.CAMERAS:
        fast, full = (obs[h][f"{cam}_image"].astype(float) for h in ("fast", "robosuite"))
        diff = np.abs(fast - full)
        # the same scene: anti-aliased edges and the floor's faint reflection differ, nothing else
        assert 0 < diff.mean() < 4 and np.mean(diff > 30) < 0.02


@pytest.mark.parametrize("end", ["collected", "closed"])
def test_a_camera_environment_that_goes_away_leaves_anothers_drawing_alone(end):
    # GL numbers each context's objects from 1: robosuite freed a dead renderer's framebuffer and
    # textures in whichever context was current, so a collection while another environment drew
    # deleted that one's, and its images came back as whatever memory held
    pytest.importorskip("robosuite")
    import gc

    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        pytest.skip("no offscreen rendering here (apt-get install libosmesa6)")
    keep, other = (rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS) for _ in range(2))
    other.reset(seed=3)
    keep.reset(seed=3)  # keep's context is current from here on

    def draw():  # straight from the simulator: no environment method makes a context current
        return keep.env.sim.render(camera_name="agentview", width=84, height=84)

    before = draw()
    assert before.std() > 10  # a scene, not a blank buffer
    if end == "closed":
        other.close()
    del other
    gc.collect()
    assert np.array_equal(draw(), before)  # its objects intact, and its context current again
    assert keep.step(np.zeros(7))[0]["agentview_image"].std() > 10


def test_make_data_records_the_rendering_and_the_evaluation_takes_it(tmp_path):
    from cdp.data.robomimic import read_env_args
    from cdp.il.tasks import get_task, write_demos

    with pytest.raises(ValueError, match="reach has none"):  # checked before anything is made
        write_demos("reach", "ph", tmp_path / "r.hdf5", n=1, camera_render="fast")
    assert not (tmp_path / "r.hdf5").exists()
    pytest.importorskip("robosuite")
    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        pytest.skip("no offscreen rendering here (apt-get install libosmesa6)")
    path = write_demos("lift-image", "ph", tmp_path / "li.hdf5", n=1, camera_render="robosuite")
    args = read_env_args(path)
    assert args["env_kwargs"]["camera_render"] == "robosuite" and args["env_kwargs"]["seed"] == rs.MODEL_SEED
    assert get_task("lift-image").env_kwargs(args) == {"camera_render": "robosuite"}
