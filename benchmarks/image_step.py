"""Image-policy training step on robosuite Lift's observation layout (two 84 x 84 cameras, random
76 x 76 crops, To = 2, the low-dim state; chunk 16 x 7; the UNet 32-64-128 of the image study)
per camera encoder, with and without the contraction term (16-sample sub-batch, as the study
runs it), as ratios measured in one run, and the latency of one action chunk for one state.
Then (where robosuite renders) an environment step of Lift without cameras and with its two
cameras rendered each way ``RobosuiteEnv(camera_render=...)`` offers, every step (data
collection) and 2 of 8 steps (an evaluation at To = 2, Ta = 8), interleaved rounds.

    python benchmarks/image_step.py [--quick] [--batch 64] [--device cuda] [--only train|render]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import ms_per_call, parse

from cdp.contraction import ContractionConfig
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
from cdp.il.trainer import PolicyStep

LOW, SIDE, CAMS = 19, 84, ["agentview_image", "robot0_eye_in_hand_image"]


def policy(encoder: str, term: ContractionConfig | None, device: torch.device) -> DiffusionPolicy:
    cfg = DiffusionPolicyConfig(obs_keys=["state", *CAMS], obs_dim=LOW + 2 * 3 * SIDE * SIDE, action_dim=7,
                                backbone="unet", unet_dims=(32, 64, 128), image_keys=CAMS, image_size=SIDE, crop=76,
                                encoder=encoder, contraction=term)
    return DiffusionPolicy(cfg).to(device)


def render_rows(header: str, rounds: int, steps: int) -> None:
    import numpy as np

    from cdp.il import robosuite_tasks as rs

    if not rs.rendering_available():
        print("(no offscreen rendering here: the rendering rows are skipped)")
        return
    envs = {"no cameras": rs.RobosuiteEnv("Lift")}
    envs |= {f"2 cameras, {how}": rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS, camera_render=how)
             for how in reversed(rs.CAMERA_RENDERS)}
    # an evaluation at To = 2, Ta = 8 draws the cameras for the 2 steps before each chunk only
    # (ChunkPolicy.reads_next_observation); steps of robosuite's rendering and of the fast one
    partial = {f"2 cameras, {how}, drawn 2 of 8 steps": rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS, camera_render=how)
               for how in reversed(rs.CAMERA_RENDERS)}
    envs |= partial
    times: dict[str, list[float]] = {k: [] for k in envs}
    for env in envs.values():
        env.reset(seed=0)
    count = {k: 0 for k in envs}

    def step(k: str) -> None:
        if k in partial:
            envs[k].render_cameras = count[k] % 8 >= 6
        count[k] += 1
        envs[k].step(np.zeros(7))

    for _ in range(rounds):
        for k in envs:
            times[k].append(ms_per_call(lambda k=k: step(k), steps, torch.device("cpu")))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["2 cameras, robosuite"]
    print(f"\n{header}; Lift environment step (OSC, 20 Hz), MUJOCO_GL={rs.os.environ.get('MUJOCO_GL')}; median ms over "
          f"{rounds} interleaved rounds of {steps} steps\n")
    print("| environment | ms/step | ratio to robosuite's rendering |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {v / base:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--only", choices=["train", "render"], default=None)
    args, header = parse(ap)
    rounds, inner = (2, 1) if args.quick else (3, 2)
    if args.only != "train":
        render_rows(header, 3 if args.quick else 7, 16 if args.quick else 32)  # whole 8-step cycles
    if args.only == "render":
        return
    dev, B = args.device, args.batch
    print(f"{header}; batch {B}, 2 cameras 84 x 84 (crop 76), To 2, chunk 16 x 7, UNet 32-64-128; "
          f"median ms per training step; chunk latency for one state (DDIM 10 steps)\n")
    print("| encoder | variant | ms/step | ratio to DP with the small CNN | chunk latency (ms) |\n|---|---|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    obs = torch.cat([torch.randn(B, 2, LOW, generator=g), torch.randint(0, 256, (B, 2, 2 * 3 * SIDE * SIDE), generator=g)
                     .float()], -1).to(dev)
    batch = {"obs": obs, "act": (torch.rand(B, 16, 7, generator=g) * 2 - 1).to(dev)}
    base = None
    for encoder in ("cnn", "resnet18"):
        for name, term in (("DP", None),
                           # the earlier studies' estimator (Lanczos 4 through autograd), then the default
                           ("CDP sub-batch 16, Lanczos 4", ContractionConfig(subbatch=16, products="native", exact_max_dim=8)),
                           ("CDP sub-batch 16, exact (default)", ContractionConfig(subbatch=16))):
            torch.manual_seed(0)
            pol = policy(encoder, term, dev)
            step = PolicyStep(pol, copy.deepcopy(pol).requires_grad_(False), torch.optim.AdamW(pol.parameters(), 1e-4))
            step.update(batch)  # warm-up
            med = statistics.median(ms_per_call(lambda: step.update(batch), inner, dev) for _ in range(rounds))
            base = base or med
            lat = ""
            if term is None:
                one = obs[:1]
                with torch.inference_mode():
                    pol.eval().predict_chunk(one)
                    lat = f"{ms_per_call(lambda: pol.predict_chunk(one), 3, dev):.0f}"
            print(f"| {encoder} | {name} | {med:.0f} | {med / base:.2f}x | {lat} |", flush=True)


if __name__ == "__main__":
    main()
