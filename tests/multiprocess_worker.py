"""One process of tests/test_multiprocess.py: an RL update over a (data 2, fsdp 2, tensor 2) mesh.

    python tests/multiprocess_worker.py OUT CKPT [RESTORE]

The multi-process set-up comes from the environment, as `lrjax.main` reads it
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; JAX_NUM_CPU_DEVICES
fake CPU devices per process). Each process feeds its own rows of the prompt
batch (`parallel.feed`), rolls out, scores only its own rows (`local_rows`),
shares the rewards (`gather_rows`) and takes one plain-SGD policy step; process
0 writes the result to OUT/result.npz, every process takes part in the Orbax
save to CKPT, and with RESTORE the checkpoint found there is restored onto
this run's mesh (OUT/restored.npz).
"""
import os
import sys

import numpy as np


def main(out: str, ckpt_dir: str, restore: str | None = None) -> None:
  from lrjax import parallel
  parallel.maybe_initialize_distributed()  # before JAX touches a backend
  import jax
  import optax
  from jax import numpy as jnp
  from lrjax.checkpoint import Checkpointer, abstract_state
  from lrjax.latent import RuleContext, init_rule_params
  from lrjax.model import init, preset
  from lrjax.rl.learner import LossSpec, make_update
  from lrjax.rollout import Sampling, pad_prompts, rollout

  class Mesh:
    data, fsdp, tensor = 2, 2, 2
  mesh = parallel.make_mesh(Mesh())
  cfg = preset("tiny").replace(num_layers=2)
  ctx = RuleContext(model_cfg=cfg, rule="token", rule_cfg={}, sampling=Sampling(1.0), eos_id=1,
                    pad_id=0, max_new=8)
  host = jax.device_get({"model": init(cfg, jax.random.key(0)),
                         "rule": init_rule_params(ctx, jax.random.key(1)), "heads": {}})
  params = jax.device_put(host, parallel.param_shardings(host, mesh))
  ref = jax.device_put(host, parallel.param_shardings(host, mesh))
  g, prompts = 2, [list(np.random.default_rng(i).integers(3, 40, size=3 + i % 4)) for i in range(4)]
  ids, mask = pad_prompts([p for p in prompts for _ in range(g)], 16, 0)
  traj = rollout(ctx, params, *parallel.feed((ids, mask), mesh), jax.random.key(2))
  n = ids.shape[0]
  mine = parallel.local_rows({"ids": traj.ids, "span": traj.span}, mesh)
  local_r = (mine["ids"] % 3 == 0).mean(-1).astype(np.float32)  # a reward from this host's rows
  r = parallel.gather_rows(local_r, mesh, n)
  grouped = r.reshape(-1, g)
  adv = ((grouped - grouped.mean(-1, keepdims=True)) / (grouped.std(-1, keepdims=True) + 1e-4))
  sgd = optax.sgd(0.5)  # plain SGD: the update is the gradient, no float-noise amplification
  update = make_update(ctx, LossSpec(loss="ppo_clip", aggregation="seq_mean", beta=0.01,
                                     kl_reference="token_inputs"), sgd)
  new, opt_state, m = update(params, sgd.init(params), ref, traj,
                             parallel.feed(adv.reshape(-1).astype(np.float32), mesh), None)
  flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in
                       jax.tree_util.tree_leaves_with_path(parallel.fetch(tree))}
  result = {"ids": parallel.fetch(traj.ids), "rewards": r, "loss": parallel.fetch(m["loss"]),
            "rows": np.asarray([parallel.batch_rows(mesh, n).start, parallel.batch_rows(mesh, n).stop]),
            **{"param" + k: v for k, v in flat(new).items()},
            **{"start" + k: v for k, v in flat(host).items()}}
  if jax.process_index() == 0:
    np.savez(os.path.join(out, "result.npz"), **result)
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, {"params": new, "opt_state": opt_state}, {"processes": jax.process_count()})
  if restore:
    with Checkpointer(restore) as ckpt:
      state, meta = ckpt.restore(abstract_state({"params": new, "opt_state": opt_state}))
    assert len(state["params"]["model"]["layers"]["mlp"]["up"]["kernel"].sharding.device_set) == 8
    np.savez(os.path.join(out, "restored.npz"), processes=meta["processes"],
             **{"param" + k: v for k, v in flat(state["params"]).items()})
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"devices, rows {result['rows'].tolist()}", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
