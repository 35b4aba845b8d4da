"""One process of tests/test_multiprocess.py: one step of the RL phase's own code.

    python tests/multiprocess_worker.py WORKDIR OUT INIT

The process group comes from the environment, as `lrjax.main` reads it
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; JAX_NUM_CPU_DEVICES
fake CPU devices per process). `step` builds the `Run` (`Run.create` joins the
group), rolls out 4 prompts x 2 samples on a (data 2, fsdp 2, tensor 2) mesh
with `rl_step.draw_round` (each process feeds, decodes and scores its own rows),
takes one plain-SGD `rl_step.learn` step, writes the metrics line, an Orbax
checkpoint (every process) and the export (process 0) into WORKDIR, and
`OUT/process<i>.npz`: this process's batch rows, the sampled ids and rewards.
The test calls `step` in its own 8-device process too. Every run starts from the
same export INIT (`make_init`): loading it is cheaper than a random init.
"""
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.5  # plain SGD: the update is the gradient, no Adam-style amplification of float noise
PROMPTS, GROUP = 4, 2


def config(init: str = ""):
  from configs import grpo
  c = grpo.get_config()
  c.mode, c.init = "rl", init
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.data.train_size, c.data.eval_size = 64, 16
  c.rl.num_prompts, c.rl.group_size, c.rl.max_new = PROMPTS, GROUP, 8
  c.rl.beta, c.rl.kl_reference = 0.01, "token_inputs"
  return c


SCORED = []  # (text, answer) of every row this process scored, in order


def text_reward(text: str, answer: str) -> float:
  """A reward the untrained model's texts vary on (the task's own would be all 0)."""
  SCORED.append((text, answer))
  return float(sum(map(ord, text)) % 3 == 0)


def make_init(workdir: str) -> str:
  """A random init of the tiny model and its char tokenizer, exported: the INIT folder."""
  from lrjax.phases import workdir as workdir_lib
  from lrjax.phases.run import Run
  run = Run.create(config(), workdir)
  return workdir_lib.export(run, "init", run.params)


def step(workdir: str, out: str, init: str) -> dict:
  """One RL step in `workdir`; returns what it wrote to `out` plus the largest
  parameter change."""
  import jax
  import optax
  from lrjax import parallel
  from lrjax.latent import init_rule_params, prompt_suffix
  from lrjax.phases import rl_context, rl_step, workdir as workdir_lib
  from lrjax.phases.run import Run
  from lrjax.rl import advantages as adv_lib, dynamic
  from lrjax.rl.learner import LossSpec, make_update

  SCORED.clear()
  run = Run.create(config(init), workdir)  # first: joins the process group
  ctx = rl_context.train_context(run)
  start = {"model": run.params, "rule": init_rule_params(ctx, jax.random.key(1)), "heads": {}}
  params = run.place(start)
  start = parallel.fetch(start)  # a host copy: the update donates the placed buffers
  ref = run.place(jax.tree.map(jax.numpy.copy, params))
  sgd = optax.sgd(LR)
  update = make_update(ctx, LossSpec.from_config(run.config.rl), sgd)
  state = run.place({"params": params, "opt_state": sgd.init(params)})
  problems = run.rl_train[:PROMPTS]
  draw = lambda at, attempt: rl_step.draw_round(
      run, ctx, state["params"], problems, group_size=GROUP, suffix=prompt_suffix(ctx),
      reward_fn=text_reward, key=jax.random.key(2))
  batch = dynamic.fill_batch(draw, 0, PROMPTS, GROUP, 0, ctx.pad_id)
  learner = rl_step.Learner(run, ctx, update, adv_lib.AdvantageSpec.from_config(run.config.rl),
                            ref)
  state, line = rl_step.learn(learner, state, batch, 0, time.time())
  run.metrics.write("rl", 1, line)
  with workdir_lib.checkpointer(run, "rl") as ckpt:
    ckpt.save(1, state, {"processes": jax.process_count()})
  workdir_lib.export(run, "rl", state["params"]["model"], state["params"]["rule"])
  run.close()
  new = parallel.fetch(state["params"])
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(new), jax.tree.leaves(start)))
  result = {"rows": parallel.batch_rows(run.mesh, PROMPTS * GROUP),
            "ids": parallel.fetch(batch.traj.ids), "rewards": batch.rewards,
            "scored": np.asarray(SCORED, str).reshape(-1, 2)}
  np.savez(os.path.join(out, f"process{jax.process_index()}.npz"), **result)
  return dict(result, moved=moved, processes=jax.process_count(), state=state)


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  step(*sys.argv[1:])
  print("worker done", flush=True)
