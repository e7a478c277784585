"""Open a stored run: its config.json planned again, its programs built, its sub-grids' checkpoints.

Re-scoring (``rhm_jax.rescore``) and the notebook (``rhm_jax.notebook``) both start here, so a
stored run is read one way. Nothing here writes to the work directory.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

from rhm_jax import diffusion, plan, results
from rhm_jax import config as config_lib
from rhm_jax.program import Built, build
from rhm_jax.subgrids import Part, stored_parts


class Stored(NamedTuple):
    """A work directory's config.json and the plan rebuilt from it."""

    workdir: str  # absolute
    record: dict  # config.json as written (config, grid, points, provenance)
    plan: plan.Plan


def open_run(workdir: str | os.PathLike, num_samples: int | None = None,
             sampler_steps: int | str | None = None) -> Stored:
    """The plan of a stored run, with the evaluation's samples K and sampler S (steps, or 'exact') replaced when given.

    ValueError when the directory holds no run, the replaced settings are invalid (checked before
    anything compiles), or the rebuilt grid differs from the stored one.
    """
    workdir = os.path.abspath(str(workdir))
    record = results.read_config_json(workdir)
    config = config_lib.from_dict(record["config"])
    if num_samples is not None:
        config.eval.num_samples = int(num_samples)
    if sampler_steps is not None:
        config.process.sampler_steps = diffusion.sampler_steps_setting(sampler_steps)
    sweep = plan.make_plan(config, record.get("points", [{}]))
    if results.to_json_value([r for p in sweep.programs for r in p.rows]) != record["grid"]:
        raise ValueError(f"the grid rebuilt from {workdir}/{results.CONFIG_FILE} differs from the stored one")
    return Stored(workdir, record, sweep)


class Subgrid(NamedTuple):
    """One stored sub-grid: its planned program, the program built, its part number and sub-grid."""

    program: plan.Program
    built: Built
    number: int  # checkpoints in subgrids.part_dir(workdir, number)
    part: Part


def subgrids(run: Stored, programs: list[plan.Program] | None = None) -> Iterator[Subgrid]:
    """The started sub-grids of the run's programs (default all), each program built once."""
    offset = 0
    for program in run.plan.programs:
        if programs is None or program in programs:
            built = build(program.settings, program.rows)
            for number, part in stored_parts(built, run.workdir, offset):
                yield Subgrid(program, built, number, part)
        offset += len(program.rows)
