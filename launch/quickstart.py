"""The README's main job. Until the sweep engine lands: a short grammar demo."""
import jax

from rhm_jax import grammar


def main() -> None:
    g = grammar.sample_rules(0, v=8, n=8, m=3, s=2, L=3)
    print(f"RHM v=8 n=8 m=3 s=2 L=3: P_max = {g.p_max}")
    print(grammar.sample(jax.random.key(0), g, 4))


if __name__ == "__main__":
    main()
