"""The entry points as a user meets them: quiet output, clear refusals, and an installed wheel that
runs the smoke job and its report from outside the clone."""
import importlib
import os
import shutil
import subprocess
import sys
import types
import venv

import pytest

import launch
from launch import report as launch_report
from rhm_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")
NOISE = ("absl", "tpu", "proxy", "traceback")  # lowercased


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    return env


@pytest.mark.heavy
def test_a_run_and_a_rescore_show_only_this_package_and_plain_progress_lines(tmp_path):
    workdir = str(tmp_path / "run")
    env = _env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=ROOT)
    env.pop("JAX_PLATFORMS")  # let jax probe its backends, as on a user's machine: the probe must stay quiet
    ran = subprocess.run([sys.executable, "-m", "launch.local", "--config", SMOKE, "--workdir", workdir], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored = subprocess.run([sys.executable, "-m", "launch.score", "--workdir", workdir, "--step", "16"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert scored.returncode == 0, scored.stderr[-3000:]
    output = ran.stdout + ran.stderr + scored.stdout + scored.stderr
    assert not [word for word in NOISE if word in output.lower()], output[-3000:]
    for line in (ran.stderr + scored.stderr).splitlines():  # every log line is ours, progress lines plain
        assert " INFO rhm_jax." in line or line.startswith("training "), line
    assert "\r" not in ran.stderr and "100.0%  256/256 model-steps" in ran.stderr
    assert ran.stdout.startswith("each model at its best evaluation")  # the summary says its reading


def test_launch_report_refuses_a_missing_or_empty_directory(tmp_path, capsys):
    missing, empty, fresh = tmp_path / "missing", tmp_path / "empty", tmp_path / "fresh"
    empty.mkdir()
    fresh.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "test_launch.py"), fresh / "notes.txt")
    results.write_json_atomic(str(fresh / results.CONFIG_FILE), {"config": {}, "provenance": {}, "grid": []})
    for workdir, message in ((missing, "no such directory"), (empty, "holds no config.json"),
                             (fresh, "no evaluations yet")):
        before = sorted(os.listdir(tmp_path)), sorted(os.listdir(workdir)) if workdir.exists() else None
        assert launch_report.main(["--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
        after = sorted(os.listdir(tmp_path)), sorted(os.listdir(workdir)) if workdir.exists() else None
        assert after == before  # nothing created


def _source_copy(destination: str) -> str:
    """The tracked files of the clone (no build/ or egg-info left over from earlier builds)."""
    listed = subprocess.run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(destination, name))
    return destination


def _caller(cwd, env):
    """``call(*args)``: run a command in ``cwd`` with ``env``, assert it succeeded, return it."""

    def call(*args):
        done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
        return done

    return call


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_smoke_job_and_report_elsewhere(tmp_path):
    source = _source_copy(str(tmp_path / "src"))
    env = _env()
    env.pop("PYTHONPATH", None)  # nothing of the clone on the path
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), source],
                   env=env, check=True, capture_output=True, timeout=600)
    wheel = [f for f in os.listdir(tmp_path / "dist") if f.endswith(".whl")]
    assert len(wheel) == 1
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(tmp_path / "venv")
    bin_dir = tmp_path / "venv" / "bin"
    installed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
                                str(tmp_path / "dist" / wheel[0])], env=env, capture_output=True, text=True,
                               timeout=1800)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    call = _caller(elsewhere, env)

    probe = call(bin_dir / "python", "-c", "import rhm_jax, rhm_jax.report, rhm_jax.notebook, launch.local, sweeps.smoke;"
                 " import importlib.util as u; print(rhm_jax.__file__, u.find_spec('chex'), u.find_spec('pytest'))")
    assert str(tmp_path / "venv") in probe.stdout and probe.stdout.split()[1:] == ["None", "None"]  # test-only
    run = call(bin_dir / "rhm-run", "--config", "sweeps/smoke.py", "--workdir", "runs/smoke", "--no_progress")
    assert run.stdout.startswith("each model at its best evaluation")
    call(bin_dir / "python", "-m", "launch.score", "--workdir", "runs/smoke", "--step", "64")
    assert call(bin_dir / "rhm-score", "--help").stdout.startswith("usage: rhm-score ")  # the script's own name
    report = call(bin_dir / "rhm-report", "--workdir", "runs/smoke")
    assert "report.md" in report.stdout and (elsewhere / "runs" / "smoke" / "report" / "report.md").exists()


@pytest.mark.slow
def test_a_wheel_built_from_a_git_checkout_names_its_commit_and_packages_when_run_elsewhere(tmp_path):
    source = _source_copy(str(tmp_path / "src"))
    env = _env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("PYTHONPATH", None)  # nothing of the clone on the path
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", source, *args], env=env, check=True, capture_output=True, timeout=60)
    head = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), source],
                   env=env, check=True, capture_output=True, timeout=600)
    wheel = [f for f in os.listdir(tmp_path / "dist") if f.endswith(".whl")]
    assert len(wheel) == 1
    assert not os.path.exists(os.path.join(source, "rhm_jax", "_build_info.py"))  # the source tree is untouched
    # A fresh venv that sees this interpreter's packages (no network needed) but not the clone.
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(tmp_path / "venv")
    bin_dir = tmp_path / "venv" / "bin"
    ours = subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig
    with open(os.path.join(ours, "parent_packages.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
                                str(tmp_path / "dist" / wheel[0])], env=env, capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    call = _caller(elsewhere, env)

    probe = call(bin_dir / "python", "-c", "import rhm_jax; print(rhm_jax.__file__)")
    assert probe.stdout.startswith(ours)
    call(bin_dir / "rhm-run", "--config", "sweeps/smoke.py", "--workdir", "runs/smoke", "--no_progress")
    prov = results.read_config_json(str(elsewhere / "runs" / "smoke"))["provenance"]
    assert prov["git"] == {"revision": head, "dirty": False, "from": "build"}
    for name in ("rhm_jax", "scipy", "matplotlib", "jax", "orbax-checkpoint"):
        assert prov["packages"][name], (name, prov["packages"])
    call(bin_dir / "rhm-report", "--workdir", "runs/smoke")
    text = (elsewhere / "runs" / "smoke" / "report" / "report.md").read_text()
    assert f"- commit: {head} (recorded when the installed package was built)" in text
    assert "rhm_jax 0.1.0" in text and "scipy " in text and "matplotlib " in text


@pytest.mark.slow
@pytest.mark.parametrize("gpu, chosen, installs", [
    (False, None, ".[test]"), (True, None, ".[test,cuda12]"), (True, "cpu", ".[test]"),
    (False, "tpu", ".[test,tpu]"), (False, "cuda13", ".[test,cuda13]")])
def test_setup_sh_installs_the_cuda_extra_where_nvidia_smi_lists_a_gpu_unless_told(tmp_path, gpu, chosen, installs):
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch", "setup.sh"), tmp_path / "launch" / "setup.sh")
    log = tmp_path / "calls.txt"
    listing = 'echo "GPU 0: NVIDIA H100 (UUID: GPU-1)"' if gpu else "exit 9"  # a driver without a GPU fails
    for path, body in ((tmp_path / ".venv" / "bin" / "python", f'echo "$*" >> {log}'),  # pip and the job, recorded
                       (tmp_path / "fake" / "nvidia-smi", listing)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    env = _env(PATH=f"{tmp_path / 'fake'}:{os.environ['PATH']}")
    env.pop("RHM_EXTRA", None)
    if chosen:
        env["RHM_EXTRA"] = chosen
    done = subprocess.run(["bash", str(tmp_path / "launch" / "setup.sh"), "quick", "--x"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[-2:] == [f"-m pip install -q -e {installs}", "-m launch.quickstart --x"]


@pytest.mark.slow
def test_setup_sh_refuses_an_unknown_extra_in_one_line(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch", "setup.sh"), tmp_path / "launch" / "setup.sh")
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / "launch" / "setup.sh"), "test"], env=_env(RHM_EXTRA="rocm"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "RHM_EXTRA=rocm" in done.stderr, done.stderr


def test_the_citation_file_cites_this_software_and_the_paper_under_the_license_of_the_repository():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        cff = yaml.safe_load(f)
    assert {"cff-version", "message", "title", "authors"} <= set(cff) and cff["type"] == "software"
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().split()[0] == cff["license"] == "MIT"
    import rhm_jax
    assert str(cff["version"]) == rhm_jax.__version__
    (paper,) = [r for r in cff["references"] if "Diffusion Models are Trained" in r["title"]]
    assert paper["year"] == 2025 and "ICML 2025" in paper["collection-title"]
    assert [a["family-names"] for a in paper["authors"]] == ["Favero", "Sclocchi", "Cagnetta", "Frossard", "Wyart"]


# ----------------------------------------------------------------------------- the command line

def _scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: console script -> 'module:function'."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


# imported here, not under capsys: submitit's import keeps a handle on the stderr of its time
MAINS = {script: getattr(importlib.import_module(target.partition(":")[0]), target.partition(":")[2])
         for script, target in _scripts().items()}


@pytest.mark.parametrize("script", sorted(MAINS))
def test_each_console_script_names_itself_in_its_help(script, monkeypatch, capsys):
    module, main = _scripts()[script].partition(":")[0], MAINS[script]
    monkeypatch.setattr(sys, "argv", [f"/somewhere/venv/bin/{script}", "--help"])
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: {script} "), out[:200]
    assert "python -m launch" not in out
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, *module.split(".")) + ".py", "--help"])  # python -m
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_the_space_form_of_an_override_is_the_equals_form():
    from launch import argument_parser
    parser = argument_parser("local", "doc", overrides=True)
    parser.add_argument("--config")
    args, overrides = parser.parse(["--config.train.num_steps", "100", "--config", "x.py", "--config.train.lr=1e-3",
                                    "--config.process.name", "masked", "--config.train.seeds", "(3,)"])
    assert args.config == "x.py"
    assert overrides == ["--config.train.num_steps=100", "--config.train.lr=1e-3", "--config.process.name=masked",
                         "--config.train.seeds=(3,)"]


@pytest.mark.parametrize("argv, message", [
    (["--no-progress"], "unknown option --no-progress; did you mean --no_progress?"),
    (["--forse"], "unknown option --forse; did you mean --force?"),
    (["--config.train.num_steps"], "override --config.train.num_steps has no value"),
    (["--config.train.num_steps", "--force"], "override --config.train.num_steps has no value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_an_unknown_option_is_named_with_a_suggestion(argv, message, tmp_path, capsys):
    from launch import local
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        local.main(["--config", SMOKE, "--workdir", str(workdir), *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err.splitlines()[-1], err
    assert not workdir.exists()


def test_entry_points_without_overrides_say_so_and_score_reads_best_last_or_a_step(tmp_path, capsys):
    from launch import score
    with pytest.raises(SystemExit) as done:
        score.main(["--workdir", str(tmp_path), "--config.train.num_steps=4"])
    assert done.value.code == 2 and "takes no config overrides" in capsys.readouterr().err
    assert [score.step_argument(t) for t in ("best", "last", "0", "4096")] == ["best", "last", 0, 4096]
    for bad in ("first", "-1", "1.5"):
        with pytest.raises(SystemExit):
            score.main(["--workdir", str(tmp_path), "--step", bad])
        assert f"{bad!r} is neither a checkpoint step" in capsys.readouterr().err


def test_a_missing_optional_dependency_is_one_line_naming_the_extra():
    code = ("import sys, runpy; sys.modules['submitit'] = None; sys.argv = ['rhm-slurm', '--help'];"
            " runpy.run_module('launch.slurm', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and "pip install 'rhm_jax[cluster]'" in done.stderr, done.stderr
    assert "launch.slurm needs submitit" in done.stderr


def test_every_entry_point_drops_tensorstores_closed_loop_tracebacks(monkeypatch, capsys):
    """After orbax gives up on a failed checkpoint write or a damaged checkpoint is read,
    tensorstore's threads raise 'Event loop is closed' through sys.excepthook or, as unraisable
    exceptions, sys.unraisablehook (issue 26's fault campaign: 10 attacks printed them beside their
    one line); every entry point (all call setup_logging) drops them, not only launch.local."""
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(str(value)))
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append("unraisable " + str(info.exc_value)))
    launch.setup_logging()
    launch.setup_logging()  # idempotent: one filter, not a chain of them
    sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
    sys.excepthook(RuntimeError, RuntimeError("something else"), None)
    for value in (RuntimeError("Event loop is closed"), ValueError("other")):
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(value), exc_value=value, exc_traceback=None,
                                                 err_msg=None, object=None))
    assert seen == ["something else", "unraisable other"]


def test_entry_points_drop_the_never_awaited_warning_of_an_abandoned_read():
    """Issue 26's campaign (every checkpoint flipped, after the asyncio filter): at exit the one
    error line was followed by "sys:1: RuntimeWarning: coroutine 'Store._get_array_metadatas' was
    never awaited" and a tracemalloc hint, from orbax's reads abandoned on the damaged files."""
    code = ("import launch; launch.setup_logging()\n"
            "async def _get_array_metadatas(): pass\n"
            "_get_array_metadatas()\n"
            "import warnings; warnings.warn('kept', RuntimeWarning)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "never awaited" not in done.stderr and "tracemalloc" not in done.stderr, done.stderr
    assert "RuntimeWarning: kept" in done.stderr  # other warnings still show
