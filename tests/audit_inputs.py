"""Feed the command-line tools bad inputs and faulty environments, and count how each one ends.

    python tests/audit_inputs.py [--only SUBSTRING] [--show]

Every case runs as its own process in a fresh folder and is classed as:

- ``clear``: refused with exit status 2 and one ``error:`` line, no traceback, no folder left behind;
- ``warned``: accepted, with the expected warning (inputs that are legal but probably not meant);
- ``works``: accepted and finished (inputs that used to crash and are supported now);
- ``traceback``, ``bare`` (failed without an ``error:`` line), ``junk`` (refused but left files behind) and
  ``silent`` (accepted without a word): the outcomes to fix.

The pytest suite checks many of these cases one by one; this script is the count across all of them, for
release notes and reliability reviews. It exits 1 if any case ends in one of the outcomes to fix.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Environments that misbehave, importable as ``audit_envs`` from the case's folder.
AUDIT_ENVS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces
    from minigrid.wrappers import ImgObsWrapper

    from toy_envs import CueRecall, Faulty, GoesNonFinite


    class NoLimit(CueRecall):
        """An env that never ends an episode by itself."""

        def step(self, action):
            obs, reward, _, _, info = super().step(action)
            return obs, reward, False, False, info


    class Binary(CueRecall):
        def __init__(self):
            super().__init__()
            self.action_space = spaces.MultiBinary(3)

        def step(self, action):
            return super().step(int(np.asarray(action)[0]))


    class TinyImage(gym.Env):
        observation_space = spaces.Box(0, 255, shape=(8, 8, 3), dtype=np.uint8)
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros((8, 8, 3), dtype=np.uint8), {}

        def step(self, action):
            return np.zeros((8, 8, 3), dtype=np.uint8), 0.0, False, True, {}


    class Strict(CueRecall):
        def __init__(self, n_cues: int = 2):
            super().__init__(n_cues=n_cues)


    def image_doorkey(**kwargs):
        return ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0", **kwargs))


    gym.register("AuditImgObs-v0", entry_point=image_doorkey, max_episode_steps=50)
''')

# A tiny CTM and budget for the cases that train.
TINY = ["--timesteps", "64", "--n-envs", "2", "--eval-episodes", "1", "--no-progress-bar", "--hyperparams",
        "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8", "n_synch_out=4"]
TINY_COMPARE = ["--seeds", "1", "--timesteps", "64", "--eval-freq", "32", "--eval-episodes", "1", "--n-envs", "2",
                "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8",
                "n_synch_out=4"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    expect: str = "error"
    """``error`` (refused clearly), ``works``, or ``warn:REGEX`` (accepted with a warning matching REGEX)."""
    setup: str = ""
    """A shell command run in the case's folder first (to make broken files)."""


def train(*argv: str) -> tuple[str, ...]:
    return ("ctm_rl.train", "--log-dir", "runs", *argv)


def compare(*argv: str) -> tuple[str, ...]:
    return ("ctm_rl.compare", "--out", "cmp", *argv)


# A finished tiny run to damage, for the resume and loading cases.
MAKE_RUN = ("python -m ctm_rl.train --log-dir made --timesteps 64 --n-envs 2 --eval-freq 32 --eval-episodes 1 "
            "--no-progress-bar --hyperparams n_steps=16 batch_size=32 n_epochs=1 d_model=16 d_input=8 "
            "n_synch_out=4 > /dev/null 2>&1")
RUN = "made/CartPole-NoVel/ctm-seed0"
PRESET = "python -c \"import shutil, ctm_rl.agents as a, pathlib; shutil.copy(pathlib.Path(a.__file__).parent / 'ctm.yml', 'p.yml')\""

CASES = [
    # Names.
    Case("unknown env", train("--env", "CartPol-v1")),
    Case("unknown agent", train("--agent", "gru")),
    Case("missing preset file", train("--agent", "nowhere.yml")),
    Case("unknown hyperparameter", train("--hyperparams", "d_modle=3")),
    Case("hyperparameter without =", train("--hyperparams", "d_model")),
    Case("env-kwargs without =", train("--env-kwargs", "colour")),
    Case("missing env module", train("--env", "X-v0", "--env-module", "no_such_module")),
    Case("missing class in module:Class", train("--env", "audit_envs:Nope")),
    # Values.
    Case("learning_rate=lin_x", train("--hyperparams", "learning_rate=lin_x")),
    Case("batch_size=0", train("--hyperparams", "batch_size=0")),
    Case("gamma=abc", train("--hyperparams", "gamma=abc")),
    Case("n_epochs=2.5", train("--hyperparams", "n_epochs=2.5")),
    Case("learning_rate=-1", train("--hyperparams", "learning_rate=-1")),
    Case("batch_size over the rollout", train("--hyperparams", "batch_size=100000")),
    Case("n_synch_out over d_model", train("--hyperparams", "n_synch_out=300")),
    Case("memory_length=0", train("--hyperparams", "memory_length=0")),
    Case("initial_decay out of range", train("--hyperparams", "initial_decay=9")),
    Case("initial_decay range reversed", train("--hyperparams", "initial_decay=[2, 1]")),
    Case("neuron_select unknown", train("--hyperparams", "neuron_select=all")),
    Case("--ticks 0", train("--ticks", "0")),
    Case("--ticks with lstm", train("--agent", "lstm", "--ticks", "2")),
    Case("--max-steps 0", train("--max-steps", "0")),
    Case("--max-steps -1", train("--max-steps", "-1")),
    Case("--seed -1", train("--seed", "-1")),
    Case("--eval-freq -1", train("--eval-freq", "-1")),
    Case("--checkpoint-freq -5", train("--checkpoint-freq", "-5")),
    Case("--keep-checkpoints -1", train("--keep-checkpoints", "-1")),
    Case("standardize_momentum=2", train("--hyperparams", "standardize_output=true", "standardize_momentum=2")),
    Case("detach_critic with a separate critic CTM", train("--hyperparams", "share_ctm=false", "detach_critic=true")),
    Case("activation_fn misspelt", train("--hyperparams", "activation_fn=Relu")),
    Case("compile_rollout not an option", train("--hyperparams", "compile_rollout=3")),
    Case("lstm detach_critic=false unshared", train("--agent", "lstm", "--hyperparams", "shared_lstm=false",
                                                   "detach_critic=false")),
    Case("--timesteps 0", train("--timesteps", "0")),
    Case("--n-envs 0", train("--n-envs", "0")),
    Case("n_envs=0 next to --n-envs 2", train("--n-envs", "2", "--hyperparams", "n_envs=0")),
    Case("--n-envs and n_envs disagree", train("--n-envs", "2", "--hyperparams", "n_envs=4")),
    Case("--eval-episodes 0", train("--eval-episodes", "0")),
    # Environment arguments.
    Case("CartPole unknown env kwarg", train("--env-kwargs", "colour=red")),
    Case("MiniGrid unknown env kwarg", train("--env", "MiniGrid-DoorKey-5x5", "--env-kwargs", "colour=red")),
    Case("custom class unknown env kwarg", train("--env", "audit_envs:Strict", "--env-kwargs", "colour=red")),
    # Folders.
    Case("--log-dir is a file", ("ctm_rl.train", "--log-dir", "afile"), setup="touch afile"),
    Case("--log-dir unwritable", ("ctm_rl.train", "--log-dir", "/proc/ctm-rl-runs")),
    # Preset files.
    Case("preset YAML syntax error", train("--agent", "p.yml"), setup=PRESET + " && sed -i 's/  n_envs: 8/  n_envs: [8/' p.yml"),
    Case("preset unknown algo key", train("--agent", "p.yml"), setup=PRESET + " && sed -i 's/n_epochs: 10/n_epoch: 10/' p.yml"),
    Case("preset wrong type", train("--agent", "p.yml"), setup=PRESET + " && sed -i 's/gamma: 0.98/gamma: high/' p.yml"),
    Case("preset unknown policy kind", train("--agent", "p.yml"), setup=PRESET + " && sed -i 's/policy: ctm/policy: gru/' p.yml"),
    Case("preset not a mapping", train("--agent", "p.yml"), setup="echo '- 1' > p.yml"),
    # Resume.
    Case("resume a missing folder", train("--resume", "nowhere")),
    Case("resume with corrupt policy.pth", train("--resume", RUN),
         setup=MAKE_RUN + f" && cd {RUN} && python -c \"import zipfile, sys; z = zipfile.ZipFile('model.zip'); "
               "d = {n: z.read(n) for n in z.namelist()}; z.close(); d['policy.pth'] = d['policy.pth'][:100]; "
               "z = zipfile.ZipFile('model.zip', 'w'); [z.writestr(n, b) for n, b in d.items()]\" && rm -rf checkpoints"),
    Case("resume with corrupt evaluations.npz", train("--resume", RUN, "--timesteps", "128"),
         setup=MAKE_RUN + f" && head -c 50 {RUN}/eval/evaluations.npz > x && mv x {RUN}/eval/evaluations.npz"),
    Case("resume with corrupt config.yaml", train("--resume", RUN), setup=MAKE_RUN + f" && echo '{{: [' > {RUN}/config.yaml"),
    Case("resume changing --env", train("--resume", RUN, "--env", "Acrobot-v1"), setup=MAKE_RUN),
    Case("resume changing --agent", train("--resume", RUN, "--agent", "lstm"), setup=MAKE_RUN),
    Case("resume with unknown hyperparameter", train("--resume", RUN, "--hyperparams", "d_modle=3"), setup=MAKE_RUN),
    Case("resume with truncated model.zip and no checkpoint", train("--resume", RUN),
         setup=MAKE_RUN + f" && head -c 300 {RUN}/model.zip > x && mv x {RUN}/model.zip && rm -rf {RUN}/checkpoints"),
    # Faulty environments.
    Case("env raises in step", train("--env", "audit_envs:Faulty", *TINY)),
    Case("env returns a misshaped observation", train("--env", "audit_envs:Faulty", "--env-kwargs", "fault=shape", *TINY)),
    Case("env returns NaN", train("--env", "audit_envs:GoesNonFinite", *TINY)),
    Case("env returns inf", train("--env", "audit_envs:GoesNonFinite", "--env-kwargs", "value=.inf", *TINY)),
    Case("image too small for the CNN", train("--env", "audit_envs:TinyImage", *TINY)),
    Case("MiniGrid behind ImgObsWrapper", train("--env", "AuditImgObs-v0", *TINY)),
    Case("MultiBinary actions", train("--env", "audit_envs:Binary", *TINY), expect="works"),
    Case("custom env without a step limit", train("--env", "audit_envs:NoLimit", "--max-steps", "20", *TINY[:-8]),
         expect="works"),
    # Warned, and without evaluations: an episode that never ends would make an evaluation run forever.
    Case("custom env, no step limit, no --max-steps", train("--env", "audit_envs:NoLimit", "--eval-freq", "0",
                                                            *TINY[:-8]), expect="warn:--max-steps"),
    # Defaults that must work together.
    Case("FourRooms with --n-envs 2", train("--env", "MiniGrid-FourRooms", "--timesteps", "300", "--n-envs", "2",
                                            "--eval-freq", "0", "--no-progress-bar"), expect="works"),
    Case("lstm on a custom env with --n-envs 4", train("--env", "audit_envs:CueRecall", "--agent", "lstm",
                                                       "--timesteps", "300", "--n-envs", "4", "--eval-freq", "0",
                                                       "--no-progress-bar"), expect="works"),
    Case("--eval-freq above --timesteps", train("--eval-freq", "1000", *TINY), expect="warn:evaluated once, at the end"),
    # compare.
    Case("compare: ctm:ticks=0", compare("--agents", "lstm", "ctm:ticks=0")),
    Case("compare: ctm:d_model=abc", compare("--agents", "lstm", "ctm:d_model=abc")),
    Case("compare: ctm:learning_rate=lin_x", compare("--agents", "ctm:learning_rate=lin_x")),
    Case("compare: ctm:gamma=abc", compare("--agents", "ctm:gamma=abc")),
    Case("compare: ctm:standardize_momentum=2", compare("--agents", "lstm", "ctm:standardize_momentum=2")),
    Case("compare: unknown agent", compare("--agents", "gru")),
    Case("compare: spec without preset", compare("--agents", ":d_model=3")),
    Case("compare: unknown env", compare("--env", "CartPol-v1")),
    Case("compare: --seeds 0", compare("--seeds", "0")),
    Case("compare: --workers 0", compare("--workers", "0")),
    Case("compare: --eval-freq above --timesteps", compare("--timesteps", "100", "--eval-freq", "1000")),
    Case("compare: --report of a missing folder", ("ctm_rl.compare", "--report", "nowhere")),
    Case("compare: custom env kwargs", compare("--env", "audit_envs:Strict", "--env-kwargs", "colour=red")),
    Case("compare: tiny run works", compare("--env", "audit_envs:CueRecall", "--agents", "ctm", *TINY_COMPARE),
         expect="works"),
    # Loading.
    Case("visualize a missing folder", ("ctm_rl.visualize", "nowhere")),
    Case("probe a missing folder", ("ctm_rl.probe", "nowhere")),
    Case("evaluate a missing folder", ("ctm_rl.evaluate", "nowhere")),
    Case("evaluate a folder that holds no run", ("ctm_rl.evaluate", ".")),
    Case("evaluate: --episodes 0", ("ctm_rl.evaluate", RUN, "--episodes", "0"), setup=MAKE_RUN),
    Case("evaluate a run whose saves are damaged", ("ctm_rl.evaluate", RUN),
         setup=MAKE_RUN + f" && rm -rf {RUN}/checkpoints && echo broken > {RUN}/model.zip"),
    Case("visualize a zip without config, no --trust-pickle", ("ctm_rl.visualize", f"{RUN}/model.zip"),
         setup=MAKE_RUN + f" && rm {RUN}/config.yaml"),
]


def classify(case: Case, completed: subprocess.CompletedProcess, leftovers: list[str]) -> str:
    output = completed.stdout + completed.stderr
    if "Traceback" in output:
        return "traceback"
    if case.expect == "works":
        return "works" if completed.returncode == 0 else ("clear" if "error:" in completed.stderr else "bare")
    if case.expect.startswith("warn:"):
        if completed.returncode != 0:
            return "clear" if "error:" in completed.stderr else "bare"
        return "warned" if re.search(case.expect[5:], output) else "silent"
    if completed.returncode == 0:
        return "silent"
    if "error:" not in completed.stderr:
        return "bare"
    return "junk" if leftovers else "clear"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--show", action="store_true", help="print each case's last output lines")
    args = parser.parse_args(argv)
    cases = [case for case in CASES if not args.only or args.only in case.name]
    counts: Counter[str] = Counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for case in cases:
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "audit_envs.py").write_text(AUDIT_ENVS)
            if case.setup:
                subprocess.run(case.setup, shell=True, cwd=folder, env=env, check=True)
            before = set(os.listdir(folder))
            completed = subprocess.run([sys.executable, "-m", *case.argv], cwd=folder, env=env, capture_output=True,
                                       text=True, timeout=600)
            leftovers = sorted(set(os.listdir(folder)) - before - {"__pycache__"})
            outcome = classify(case, completed, leftovers)
        counts[outcome] += 1
        print(f"{outcome:9s} {case.name}", flush=True)
        if args.show or outcome in ("traceback", "bare", "junk", "silent"):
            tail = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-3:]
            print("          " + "\n          ".join(tail))
    print(f"\n{len(cases)} inputs: " + ", ".join(f"{counts[key]} {key}" for key in
          ("clear", "warned", "works", "traceback", "bare", "junk", "silent") if counts[key]))
    return int(any(counts[key] for key in ("traceback", "bare", "junk", "silent")))


if __name__ == "__main__":
    sys.exit(main())
