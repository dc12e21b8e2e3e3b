"""Names and defaults the command line shows in its help, kept free of heavy imports so that
``cdp --help`` answers without loading torch. The modules that act on them import them from here."""

from typing import Literal, get_args

#: the term's forms (:func:`cdp.contraction.loss.contraction_loss`)
Form = Literal["eig", "frobenius", "literal", "literal_frobenius", "official_frobenius"]
FORMS: tuple[str, ...] = get_args(Form)
#: how the t-window picks the term's rows (:func:`cdp.contraction.loss.in_window`)
Window = Literal["official", "batch"]
WINDOWS: tuple[str, ...] = get_args(Window)
#: ``ContractionConfig``'s default: the exact eigenvalue for actions of up to this many numbers
#: (robomimic's 16 x 7 chunks are 112, Transport's 16 x 14 are 224). Lanczos with 4 steps, the
#: estimator above it, is within 2% of the exact value on 2% of a trained UNet's samples at 112
#: (benchmarks/results_estimator_accuracy.md); the official code takes the full Jacobian.
EXACT_MAX_DIM = 256
#: how ``Transitions.fraction`` cuts the data
DATA_CUTS: tuple[str, ...] = ("transitions", "trajectories")
#: what an imitation run's ``fraction`` keeps: whole "demos" (this project's studies), or
#: "windows", a share of every training window (observation history + action chunk) of all the
#: demonstrations, as the official imitation runs' ``available_data_rate`` does (a random split of
#: the dataset's samples)
IL_DATA_CUTS: tuple[str, ...] = ("demos", "windows")
#: offline-RL algorithms (:mod:`cdp.rl.trainer`)
ALGOS: tuple[str, ...] = ("bc", "dql", "edp", "idql", "cdp")
#: the algorithms whose actor loss has a Q term weighted by ``eta``
Q_ALGOS: tuple[str, ...] = ("dql", "edp", "cdp")
#: "official": the official CDP offline-RL runs' settings (docs/offline_rl.md): observations
#: normalised by the dataset's mean / std, rewards scaled by 1000 / (spread of episode returns),
#: and EDP as :meth:`EDPConfig.official` (cosine lr decay over the run, random twin Q term, the
#: critic target and EMA schedules, action selection from noise x 0.5 and softmax(300 min Q))
PRESETS: tuple[str, ...] = ("cdp", "official")
#: imitation policies (:mod:`cdp.il.trainer`)
POLICIES: tuple[str, ...] = ("bc-gmm", "dbc-dit", "dp-unet", "dp-dit", "dp-mlp", "cdp-unet", "cdp-dit", "cdp-mlp")
#: How cameras render (``RobosuiteEnv(camera_render=...)``). "fast": each camera's view drawn once,
#: without multisample anti-aliasing or the floor's reflection; "robosuite": robosuite's own (4x
#: multisampled into a 640 x 480 buffer, the scene drawn twice for the reflection). In software
#: GL (OSMesa) "fast" renders Lift's two 84 x 84 cameras several times faster
#: (benchmarks/image_step.py); its images differ from robosuite's by about 1-2 of 255 per pixel
#: on average, at edges and on the floor. A dataset's ``env_args`` names the one it was made with.
CAMERA_RENDERS: tuple[str, ...] = ("fast", "robosuite")
