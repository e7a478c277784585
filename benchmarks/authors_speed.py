"""Training steps/s of the authors' PyTorch code (minimal_diffusion_rhm) on this CPU, one model.

Run with a Python that has torch, pointing at a checkout of the authors' repository:
    python benchmarks/authors_speed.py --repo PATH/minimal_diffusion_rhm --widths 256,1024 --seconds 20
``benchmarks/side_by_side.sh`` alternates it with rhm_jax's one-model run (issue 12's comparison).

The setting is benchmarks/grid_throughput.py's (SPEC section 6): RHM v=n=8, m=3, s=2, L=3,
P=1024, batch 64, discrete (uniform) process with T=200, their bpUNet of width W, Adam lr 1e-4.
It is built with their own ``init_data``, ``init_model`` and ``init_optimizer`` and each step is
the body of their training loop: zero_grad, forward on the next DataLoader batch, backward,
``loss.item()``, optimizer and scheduler steps. Three warm-up steps, then steps are counted for
``--seconds``.
"""
from __future__ import annotations

import argparse
import sys
import time


def their_args(width: int) -> argparse.Namespace:
    """Their command-line namespace for the setting (values of their example_train.sh and defaults)."""
    return argparse.Namespace(
        device="cpu", process="discrete", nT=200, beta1=0.001, beta2=0.1, dataset="rhm",
        num_features=8, num_classes=8, num_synonyms=3, tuple_size=2, num_layers=3,
        seed_rules=42, train_size=1024, test_size=1024, batch_size=64, seed_sample=None,
        replacement=False, input_format="onehot", whitening=0, model="bpUnet",
        model_type="start", model_output="logits", depth=3, width=width, filter_size=2,
        bias=False, seed_model=2, optim="adam", lr=1e-4, momentum=0.9, warmup_steps=0,
        n_trajectories=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="checkout of the authors' minimal_diffusion_rhm")
    parser.add_argument("--widths", default="256,1024", help="comma-separated bpUNet widths")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per width")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the CPU's cores)")
    cli = parser.parse_args()
    sys.path.insert(0, cli.repo)
    import init  # noqa: E402  (the authors' init.py)
    import torch  # noqa: E402

    torch.set_num_threads(cli.threads)
    print(f"authors' code: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for width in (int(w) for w in cli.widths.split(",")):
        args = their_args(width)
        loader, _, _, _ = init.init_data(args)
        model = init.init_model(args)
        optimizer, scheduler = init.init_optimizer(model, args)
        model.train()

        def batches():
            while True:
                yield from (x for x, _ in loader)

        stream = batches()

        def step() -> None:
            optimizer.zero_grad()
            loss = model(next(stream), args.n_trajectories)
            loss.backward()
            loss.item()
            optimizer.step()
            scheduler.step()

        for _ in range(3):
            step()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < cli.seconds:
            step()
            steps += 1
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        print(f"authors W={width}: {params} params, {steps / seconds:.4g} steps/s ({steps} steps in {seconds:.1f} s)",
              flush=True)


if __name__ == "__main__":
    main()
