"""Issue 25 experiment (2026-12-08; run from the repository root as `python docs/results/cpu_speed/two_halves_experiment.py SECONDS`): one device, a W=64 grid of 8 as two independent halves (two while loops) in one program."""
import sys, time
import os
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp, numpy as np
import grid_throughput as g
from rhm_jax import settings, train

M, K = 8, 10
runs = {}
base = g.compile_training(g.make_config(64, M, K, 1024, "float32"))
half = [g.compile_training(g.make_config(64, M // 2, K, 1024, "float32")) for _ in range(2)]
config = g.make_config(64, M // 2, K, 1024, "float32")
rules, pool, test, process, network, grid = g.build(config)
typed = settings.TrainSettings.of(config)
chunk = train.make_train_chunk(typed, process, network)
two = jax.jit(lambda s1, s2, gr, p, n: (chunk(s1, gr, p, n), chunk(s2, gr, p, n)), donate_argnums=(0, 1))
s1 = train.init_state(typed, network, grid); s2 = train.init_state(typed, network, grid)
compiled = two.lower(s1, s2, grid, pool, jnp.int32(K)).compile()
def call_two():
    global s1, s2
    t = time.perf_counter()
    (s1, m1), (s2, m2) = compiled(s1, s2, grid, pool, jnp.int32(K))
    jax.block_until_ready((s1, s2))
    return time.perf_counter() - t
call_two()
tb, tt = [], []
t0 = time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[1]):
    tb.append(g.timed_call(base)); tt.append(call_two())
print(f"one vmapped grid of 8: {M*K/np.median(tb):.1f} model-steps/s; two halves of 4 in one program: {M*K/np.median(tt):.1f}; calls {len(tb)}; load {g.load()}")
