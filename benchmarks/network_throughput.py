"""Network throughput: bpUNet train steps/s (forward + backward + Adam), one and M vmapped models.

Usage:
    python benchmarks/network_throughput.py                       # W=1024, M = 1, 8, 32; 1024 samples
    python benchmarks/network_throughput.py --models 1 8 --sample-steps 20   # shorter
    python benchmarks/network_throughput.py --width 256 --dtype bfloat16

Setting (SPEC section 6): v=8, s=2, L=3 (d=8), bpUNet width W, batch 64, Adam lr 1e-4 (optax), on
random tokens. The loss is the uniform process's D3PM loss (T=200). One model: ``jit(step)``; M models:
``jit(vmap(step))``, parameters and optimizer state donated. Sampling: ``process.sample`` of
1024 sequences with 200 ancestral steps for one model (its per-step cost is constant, so
``--sample-steps k`` times the k-step run and scales it to 200; the printout says which).
Reference (SPEC section 6, authors' PyTorch, one model): 152 steps/s and 2.3 s per evaluation on
an H100. Against their code on this CPU, time both in one sitting: ``benchmarks/side_by_side.sh``
(a figure from another day is off by as much as the machine swings, 30% here).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rhm_jax import diffusion, networks

V, S, L = 8, 2, 3
REF_H100_STEPS = 152.0
REF_H100_EVAL_S = 2.3


def make_process():
    """The uniform process with SPEC defaults."""
    return diffusion.make(diffusion.default_config("uniform"), V, S**L)


def make_step(net: networks.Network, process, batch: int, optimizer: optax.GradientTransformation):
    """(params, opt_state, key) -> (params, opt_state, loss): one Adam step on random tokens."""
    d = S**L

    def loss_fn(params, key):
        key_x, key_loss = jax.random.split(key)
        x0_BxD = jax.random.randint(key_x, (batch, d), 0, V, dtype=jnp.int32)
        return process.loss(params, net.apply, key_loss, x0_BxD)[0]

    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def time_training(net, process, models: int, batch: int, steps: int) -> float:
    """Steps/s of all `models` together (each step advances every model once)."""
    optimizer = optax.adam(1e-4)
    step = make_step(net, process, batch, optimizer)
    keys_M = jax.random.split(jax.random.key(0), models)
    if models == 1:
        params = jax.jit(net.init)(keys_M[0])
        opt_state = jax.jit(optimizer.init)(params)
        run = jax.jit(step, donate_argnums=(0, 1))
        key_of = lambda i: jax.random.fold_in(keys_M[0], i)
    else:
        params = jax.jit(jax.vmap(net.init))(keys_M)
        opt_state = jax.jit(jax.vmap(optimizer.init))(params)
        run = jax.jit(jax.vmap(step), donate_argnums=(0, 1))
        key_of = lambda i: jax.vmap(jax.random.fold_in, (0, None))(keys_M, i)
    params, opt_state, loss = run(params, opt_state, key_of(0))  # compile and warm up
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        params, opt_state, loss = run(params, opt_state, key_of(i))
    jax.block_until_ready(loss)
    if not np.all(np.isfinite(np.asarray(loss))):
        raise RuntimeError(f"non-finite loss {loss}")
    return steps / (time.perf_counter() - start)


def time_sampling(net, process, num: int, steps: int) -> float:
    """Seconds for `num` samples with `steps` ancestral steps (one model), after compilation."""
    params = jax.jit(net.init)(jax.random.key(0))
    sample = jax.jit(lambda p, k: process.sample(p, net.apply, k, num, steps=steps))
    jax.block_until_ready(sample(params, jax.random.key(1)))
    start = time.perf_counter()
    jax.block_until_ready(sample(params, jax.random.key(2)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=tuple(networks.DTYPES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model-steps", type=int, default=32, help="timed steps x models, at least 2 steps")
    parser.add_argument("--sample-num", type=int, default=1024)
    parser.add_argument("--sample-steps", type=int, default=200, help="0 skips sampling")
    args = parser.parse_args()

    process = make_process()
    cfg = networks.default_config()
    cfg.update(dict(name="bpunet", width=args.width, dtype=args.dtype))
    net = networks.make(cfg, V, S, L, process)
    num_params = net.num_params(jax.eval_shape(net.init, jax.random.key(0)))
    loss_name = "uniform D3PM loss (rhm_jax.diffusion)"
    print(f"devices: {jax.devices()}; jax {jax.__version__}")
    print(f"bpUNet v={V} s={S} L={L} W={args.width} dtype={args.dtype}: {num_params:,} params; "
          f"batch {args.batch}; Adam 1e-4; loss: {loss_name}")
    for models in args.models:
        steps = max(2, args.model_steps // models)
        rate = time_training(net, process, models, args.batch, steps)
        print(f"M={models:3d}: {rate:8.3f} steps/s = {rate * models:8.2f} model-steps/s over {steps} steps; "
              f"x{rate * models / REF_H100_STEPS:.4f} their H100 ({REF_H100_STEPS:.0f})", flush=True)
    if args.sample_steps == 0:
        print("sampling: skipped (--sample-steps 0)")
    else:
        seconds = time_sampling(net, process, args.sample_num, args.sample_steps)
        full = seconds * 200 / args.sample_steps * 1024 / args.sample_num
        how = "measured" if (args.sample_steps, args.sample_num) == (200, 1024) else (
            f"scaled from {args.sample_num} samples x {args.sample_steps} steps ({seconds:.1f} s)")
        print(f"sampling 1024 x 200 steps: {full:.1f} s ({how}); their H100 evaluation: {REF_H100_EVAL_S} s "
              f"(ratio {REF_H100_EVAL_S / full:.4f})")


if __name__ == "__main__":
    main()
