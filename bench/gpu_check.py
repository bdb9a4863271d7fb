"""The first GPU session's one command: every device-dependent part of the app, checked and timed on one device,
in stages that each run in their own process under their own time limit (a hang costs one stage, not the run).

    python bench/gpu_check.py                        # CUDA, fp16; fits in 8 minutes on an H100
    python bench/gpu_check.py --device cpu --quick   # the same stages at tiny sizes (proves the script, ~5 min)

Stages, in order (a stage is skipped when what it needs failed, or when the run's --budget is spent):

  env                  nvidia-smi, torch / CUDA / cuDNN / diffusers versions, the device as the app sees it
  engine-tests         pytest on the engine test files with STUDIO_TEST_DEVICE / STUDIO_TEST_PRECISION set
                       (txt2img, hires fix, img2img, inpaint, ControlNet, tiled upscale, memory modes with
                       offload, channels-last / compile, TAESD previews, the fp16 VAE NaN guard); many of them
                       compare against figures first taken in float32 on the CPU, so a tolerance that fails in
                       fp16 on the GPU shows up here as a failure: the report lists each one with its message
  build-sd15           SD 1.5 architecture with random weights, fp16 (bench/common.py: build_model)
  sd15-modes           one txt2img job per memory mode (high, normal, low = model offload, minimal =
                       sequential offload) at 512x512: seconds, peak device memory, pixels against "high"
  sd15-compiled        the app's torch.compile'd UNet (inductor): warm-up reported once, the second job fast,
                       pixels against eager
  previews-nan-guard   TAESD live previews (a random-weight TAESD in models/VAE-approx) on every step, and the
                       fp16 VAE NaN guard (an injected fp16 overflow: decoded again in float32, one warning)
  bench-sd15-eager     bench/bench_speed.py: the app against plain diffusers in the same process, SD 1.5 at
  bench-sd15-compiled  512x512, eager and compiled
  bench-lora           bench/bench_lora.py: LoRA apply / switch / remove (rank 32 over every layer) and generation
                       with a LoRA, the app's patcher against diffusers' load_lora_weights + fuse_lora
  build-sdxl           SDXL architecture with random weights, fp16
  bench-sdxl-eager     bench/bench_speed.py, SDXL at 1024x1024, eager and compiled (few steps: SDXL's compile
  bench-sdxl-compiled  warm-up is the most expensive part of the run)
  sd15-compiled-offload  the compiled UNet under model CPU offload ("low" mode), if time is left

It writes one report, gpu-check-<time>.md with gpu-check-<time>.json beside it (every stage's result, checks
and full output), to $OUT when that is set, else to bench/results/, and prints its path. Nothing is downloaded
(HF_HUB_OFFLINE=1): the models are built from the shipped configs with random weights.

Budget on an H100 (estimates from the CPU runs and the models' FLOPs; the limits are upper bounds, and --budget
caps the sum): env 5 s, engine tests ~60 s (4 pytest workers), SD 1.5 build ~15 s, modes ~30 s, compiled
~60 s (inductor's first compile), previews ~15 s, SD 1.5 benches ~40 + ~50 s, SDXL build ~30 s, SDXL benches
~70 + ~150 s: ~430 s against the default --budget of 470 s.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The engine test files: every generation mode, ControlNet, tiled upscale, memory modes, fast paths, previews.
ENGINE_TESTS = ["tests/test_generate.py", "tests/test_hires.py", "tests/test_img2img.py", "tests/test_controlnet.py",
                "tests/test_upscale.py", "tests/test_workflow.py", "tests/test_memory.py", "tests/test_fastpath.py",
                "tests/test_lora.py", "tests/test_embeddings.py", "tests/test_vae.py"]
# --quick: one or two tests per area (the whole files take ~10 minutes on the 2-core CPU machine).
QUICK_TESTS = [
    "tests/test_lora.py::test_each_format_equals_the_hand_merged_model",
    "tests/test_generate.py::test_same_seed_same_image_and_seed_sequence",
    "tests/test_generate.py::test_sdxl_and_inpainting_checkpoints",
    "tests/test_hires.py::test_resize_to_and_second_pass_settings",
    "tests/test_img2img.py::test_higher_strength_moves_further_from_the_input",
    "tests/test_img2img.py::test_inpaint_keeps_every_pixel_outside_the_blurred_mask",
    "tests/test_controlnet.py::test_weight_zero_is_the_image_without_a_unit_and_weight_one_changes_it",
    "tests/test_upscale.py::test_tiled_sd_upscale_redraws_every_tile",
    "tests/test_memory.py::test_each_mode_applies_and_undoes_everything",
    "tests/test_memory.py::test_minimal_mode_job_matches_high_and_leaks_nothing",
    "tests/test_fastpath.py::test_channels_last_unet_gives_the_same_image",
    "tests/test_fastpath.py::test_auto_previews_use_taesd_when_present_and_the_latent_map_when_absent",
    "tests/test_fastpath.py::test_fp16_vae_overflow_is_decoded_again_in_float32_with_a_warning",
]
PROMPT, NEGATIVE, SEED = "a red cube on a wooden table, studio light", "blurry, low quality", 1


# ==============================================================================================================
# the plan: what each stage runs, at which size
# ==============================================================================================================

@dataclass
class Sizes:
    sd15_arch: str
    sd15_size: int
    sdxl_arch: str
    sdxl_size: int
    job_steps: int  # the check stages' jobs
    sd15_steps: int  # the benchmarks
    sd15_runs: int
    sdxl_steps: int
    sdxl_runs: int


FULL = Sizes("sd15", 512, "sdxl", 1024, job_steps=8, sd15_steps=10, sd15_runs=3, sdxl_steps=8, sdxl_runs=2)
QUICK = Sizes("tiny", 64, "tiny-sdxl", 64, job_steps=3, sd15_steps=3, sd15_runs=1, sdxl_steps=2, sdxl_runs=1)


@dataclass
class Stage:
    name: str
    what: str
    limit: int  # seconds, full run
    quick_limit: int  # seconds, --quick
    command: Callable[["Run"], list[str]]
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    args: argparse.Namespace
    sizes: Sizes
    work: Path
    started: float

    def child(self, stage: str, *extra: str) -> list[str]:
        """This script run as one stage's worker process."""
        return [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--device", self.args.device,
                "--precision", self.args.precision, "--work", str(self.work),
                "--compile-backend", self.args.compile_backend, *(["--quick"] if self.args.quick else []), *extra]

    def result_file(self, stage: str) -> Path:
        return self.work / "results" / f"{stage}.json"

    def bench(self, arch: str, size: int, steps: int, runs: int, model: Path, compiled: bool, stage: str) -> list[str]:
        cmd = [sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--arch", arch, "--size", str(size),
               "--steps", str(steps), "--runs", str(runs), "--device", self.args.device,
               "--precision", self.args.precision, "--model", str(model), "--json", str(self.result_file(stage))]
        return cmd + (["--compile", "--compile-backend", self.args.compile_backend] if compiled else [])


def pytest_command(run: Run) -> list[str]:
    tests = QUICK_TESTS if run.args.quick else ENGINE_TESTS
    cmd = [sys.executable, "-m", "pytest", *tests, "-v", "-rfEs", "--tb=short", "-p", "no:cacheprovider",
           f"--junitxml={run.work / 'results' / 'engine-tests.xml'}"]
    workers = run.args.test_workers
    try:
        import xdist  # noqa: F401
    except ImportError:
        workers = 0
    if workers > 1:  # whole files per worker: the `world` fixture (tiny models on the device) is per module
        cmd += ["-n", str(workers), "--dist", "loadfile"]
    return cmd


def model_dir(run: Run, arch: str) -> Path:
    return run.work / "built" / arch


STAGES: list[Stage] = [
    Stage("env", "versions, nvidia-smi, the device as the app resolves it", 60, 60, lambda r: r.child("env")),
    Stage("engine-tests", "engine test files on the device (pytest)", 150, 420, pytest_command),
    Stage("build-sd15", "SD 1.5 architecture, random weights, fp16", 90, 120,
          lambda r: r.child("build", "--arch", r.sizes.sd15_arch)),
    Stage("sd15-modes", "one job per memory mode, offload included", 120, 120,
          lambda r: r.child("modes", "--arch", r.sizes.sd15_arch), needs=("build-sd15",)),
    Stage("sd15-compiled", "the app's compiled UNet against eager", 150, 240,
          lambda r: r.child("compiled", "--arch", r.sizes.sd15_arch), needs=("build-sd15",)),
    Stage("previews-nan-guard", "TAESD previews on every step; fp16 VAE NaN guard", 60, 180,
          lambda r: r.child("previews", "--arch", r.sizes.sd15_arch), needs=("build-sd15",)),
    Stage("bench-sd15-eager", "app vs plain diffusers, SD 1.5, eager", 90, 150,
          lambda r: r.bench(r.sizes.sd15_arch, r.sizes.sd15_size, r.sizes.sd15_steps, r.sizes.sd15_runs,
                            model_dir(r, r.sizes.sd15_arch), False, "bench-sd15-eager"), needs=("build-sd15",)),
    Stage("bench-sd15-compiled", "app vs plain diffusers, SD 1.5, compiled", 120, 240,
          lambda r: r.bench(r.sizes.sd15_arch, r.sizes.sd15_size, r.sizes.sd15_steps, r.sizes.sd15_runs,
                            model_dir(r, r.sizes.sd15_arch), True, "bench-sd15-compiled"), needs=("build-sd15",)),
    Stage("bench-lora", "LoRA apply / switch / remove and generation, app vs diffusers load+fuse, SD 1.5", 120, 240,
          lambda r: [sys.executable, str(ROOT / "bench" / "bench_lora.py"), "--device", r.args.device,
                     "--dtype", "fp32" if r.args.device == "cpu" else "fp16", "--json", str(r.result_file("bench-lora")),
                     *(["--size", "64", "--steps", "2", "--runs", "1", "--rank", "4"] if r.args.quick else
                       ["--size", str(r.sizes.sd15_size), "--steps", str(r.sizes.sd15_steps), "--runs", "2"])]),
    Stage("build-sdxl", "SDXL architecture, random weights, fp16", 90, 120,
          lambda r: r.child("build", "--arch", r.sizes.sdxl_arch)),
    Stage("bench-sdxl-eager", "app vs plain diffusers, SDXL, eager", 120, 150,
          lambda r: r.bench(r.sizes.sdxl_arch, r.sizes.sdxl_size, r.sizes.sdxl_steps, r.sizes.sdxl_runs,
                            model_dir(r, r.sizes.sdxl_arch), False, "bench-sdxl-eager"), needs=("build-sdxl",)),
    Stage("bench-sdxl-compiled", "app vs plain diffusers, SDXL, compiled", 200, 300,
          lambda r: r.bench(r.sizes.sdxl_arch, r.sizes.sdxl_size, r.sizes.sdxl_steps, r.sizes.sdxl_runs,
                            model_dir(r, r.sizes.sdxl_arch), True, "bench-sdxl-compiled"), needs=("build-sdxl",)),
    Stage("sd15-compiled-offload", "the compiled UNet under model CPU offload (low mode)", 90, 240,
          lambda r: r.child("compiled", "--arch", r.sizes.sd15_arch, "--mode", "low"), needs=("build-sd15",)),
]


# ==============================================================================================================
# the parent: runs the stages, writes the report
# ==============================================================================================================

def run_stage(stage: Stage, run: Run, limit: float) -> dict[str, Any]:
    """One stage in its own process group, killed whole at its time limit."""
    cmd = stage.command(run)
    log_path = run.work / "logs" / f"{stage.name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "STUDIO_TEST_DEVICE": run.args.device, "STUDIO_TEST_PRECISION": run.args.precision, **stage.env}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)  # the stage's own process group (pytest workers, compile workers)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    seconds = time.perf_counter() - t0
    output = log_path.read_text(encoding="utf-8", errors="replace")
    result = None
    path = run.result_file(stage.name)
    if path.exists():
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            result = None
    if stage.name == "engine-tests":
        result = test_results(run.work / "results" / "engine-tests.xml", output)
    failed_checks = [c for c in (result or {}).get("checks", []) if not c["ok"]] if isinstance(result, dict) else []
    if timed_out:
        status = "timeout"
    elif rc != 0 or failed_checks:
        status = "fail"
    else:
        status = "pass"
    return {"name": stage.name, "what": stage.what, "status": status, "rc": rc, "seconds": round(seconds, 1),
            "limit_s": round(limit), "command": " ".join(cmd), "result": result, "output": output[-200_000:]}


def test_results(xml_path: Path, output: str) -> dict[str, Any]:
    """Per-test outcomes from pytest's JUnit XML, or from the -v lines when pytest was killed before writing it."""
    tests: list[dict[str, Any]] = []
    if xml_path.exists():
        try:
            for case in ET.parse(xml_path).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for kind in ("failure", "error", "skipped"):
                    el = case.find(kind)
                    if el is not None:
                        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                        message = (el.get("message") or el.text or "").strip()
                        break
                file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
                tests.append({"test": f"{file}::{case.get('name')}", "outcome": outcome,
                              "seconds": round(float(case.get("time") or 0), 2), "message": message[:2000]})
        except ET.ParseError:
            tests = []
    if not tests:  # pytest -v lines: "tests/x.py::name PASSED" or, under xdist, "[gw0] PASSED tests/x.py::name"
        seen = {}
        for m in re.finditer(r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)|"
                             r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(tests/\S+::\S+)", output):
            name, outcome = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            seen[name] = {"test": name, "outcome": outcome.lower(), "seconds": None,
                          "message": ""}
        tests = list(seen.values())
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    summary = re.findall(r"^=+ (.*(?:passed|failed|error).*) =+$", output, flags=re.M)
    return {"counts": counts, "tests": tests, "pytest_summary": summary[-1] if summary else None}


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi: not found"
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cpu, mps")
    ap.add_argument("--precision", default=None, help="fp16 (default on cuda/mps), fp32 (default on cpu), bf16")
    ap.add_argument("--quick", action="store_true", help="every stage at tiny sizes (tiny models, 64 px, 2-3 steps)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default 470, --quick 900); a stage gets at most what is left")
    ap.add_argument("--only", default="", help="comma-separated stage names to run (their builds are added)")
    ap.add_argument("--skip", default="", help="comma-separated stage names to leave out")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; --quick on the CPU: eager, since inductor's C++ "
                         "code generation takes minutes on a 2-core machine)")
    ap.add_argument("--test-workers", type=int, default=None, help="pytest-xdist workers (default 4 on cuda, 2 else)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default $OUT, else bench/results)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (models, logs)")
    # a stage's worker process (run by the parent)
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="high", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.precision is None:
        args.precision = "fp32" if args.device == "cpu" else "fp16"
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.quick and args.device == "cpu" else "inductor"
    if args.stage:
        worker(args)
        return

    budget = args.budget or (900.0 if args.quick else 470.0)
    args.test_workers = args.test_workers if args.test_workers is not None else (4 if args.device == "cuda" else 2)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    (work / "logs").mkdir()
    (work / "results").mkdir()
    run = Run(args, QUICK if args.quick else FULL, work, time.perf_counter())

    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    names = [s.name for s in STAGES]
    for s in only | skip:
        if s not in names:
            ap.error(f"unknown stage '{s}': {', '.join(names)}")
    if only:  # a stage's builds come with it
        only |= {n for s in STAGES if s.name in only for n in s.needs} | {"env"}

    smi = nvidia_smi()
    import importlib.util

    missing = [m for m in ("torch", "diffusers", "transformers", "accelerate", "pytest", "xdist")
               if importlib.util.find_spec(m) is None]
    if missing:  # the stages will fail on these; say it first (install: requirements.txt + tests/requirements.txt)
        smi += ("\n\nMISSING PYTHON PACKAGES: " + ", ".join(missing) +
                " (pip install -r requirements.txt -r tests/requirements.txt)")
    print(f"== bench/gpu_check.py: device {args.device}, precision {args.precision}, quick {args.quick}, "
          f"budget {budget:.0f} s, compile backend {args.compile_backend}", flush=True)
    print(smi, flush=True)

    stages: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    report_md, report_json = out / f"gpu-check-{stamp}.md", out / f"gpu-check-{stamp}.json"
    for stage in STAGES:
        if (only and stage.name not in only) or stage.name in skip:
            continue
        left = budget - (time.perf_counter() - run.started) - 5  # 5 s for the report
        limit = min(stage.quick_limit if args.quick else stage.limit, left)
        missing = [n for n in stage.needs if status.get(n) != "pass"]
        if missing or limit < 15:
            why = (f"needs {', '.join(missing)} ({', '.join(status.get(n, 'not run') for n in missing)})" if missing
                   else f"run budget spent ({left:.0f} s left of {budget:.0f} s)")
            entry = {"name": stage.name, "what": stage.what, "status": "skipped", "why": why, "seconds": 0,
                     "limit_s": 0, "result": None, "output": ""}
        else:
            print(f"-- {stage.name}: {stage.what} (limit {limit:.0f} s) ...", flush=True)
            entry = run_stage(stage, run, limit)
        status[stage.name] = entry["status"]
        stages.append(entry)
        line = f"   {stage.name}: {entry['status'].upper()} in {entry['seconds']} s"
        print(line + (f" ({entry['why']})" if entry.get("why") else ""), flush=True)
        if stage.name == "env" and entry["result"]:
            print(json.dumps(entry["result"], indent=1), flush=True)
        write_report(report_md, report_json, run, stages, smi, budget)  # after every stage: a cut run keeps it
    total = time.perf_counter() - run.started
    write_report(report_md, report_json, run, stages, smi, budget, total)
    print()
    print(summary_table(stages))
    print(f"\ntotal {total:.0f} s of a {budget:.0f} s budget")
    print(f"report: {report_md}")
    print(f"json:   {report_json}")
    if args.keep_work:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- the report ------------------------------------------------------------------------------------------------

def summary_table(stages: list[dict[str, Any]]) -> str:
    rows = ["| stage | status | seconds (limit) | key figures |", "|---|---|---|---|"]
    for s in stages:
        rows.append(f"| {s['name']} | **{s['status']}** | {s['seconds']} ({s['limit_s']}) | "
                    f"{key_figures(s)} |")
    return "\n".join(rows)


def key_figures(s: dict[str, Any]) -> str:
    r = s.get("result")
    if s["status"] == "skipped":
        return s.get("why", "")
    if not isinstance(r, dict):
        return "no result written" if s["name"] != "env" else ""
    name = s["name"]
    if name == "env":
        return f"{r.get('hardware', '')}; torch {r.get('torch')}, CUDA {r.get('cuda')}"
    if name == "engine-tests":
        counts = ", ".join(f"{v} {k}" for k, v in sorted(r["counts"].items()))
        return counts or "no test outcome found"
    if name.startswith("bench-"):
        ratio = r.get("ratio_app_over_plain", {})
        return (f"app/plain e2e {ratio.get('e2e')}, per step {ratio.get('step')}; step s plain "
                f"{r['plain']['step_s']} / app {r['app']['step_s']}; first call s {r['plain']['first_call_s']} / "
                f"{r['app']['first_call_s']}")
    checks = r.get("checks", [])
    bad = [c["name"] for c in checks if not c["ok"]]
    return f"{len(checks) - len(bad)}/{len(checks)} checks ok" + (f"; failed: {', '.join(bad)}" if bad else "")


def write_report(md: Path, js: Path, run: Run, stages: list[dict[str, Any]], smi: str, budget: float,
                 total: float | None = None) -> None:
    args = run.args
    env = next((s["result"] for s in stages if s["name"] == "env" and isinstance(s.get("result"), dict)), {})
    cmd = "python bench/gpu_check.py " + " ".join(a for a in sys.argv[1:])
    lines = [f"# GPU check: {env.get('device_name') or args.device} ({args.precision}), "
             f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
             f"`{cmd.strip()}`: quick {args.quick}, compile backend {args.compile_backend}, budget {budget:.0f} s" +
             (f", total {total:.0f} s" if total is not None else " (run still going or cut)"), "",
             "## Summary", "", summary_table(stages), "", "## Environment", "", "```", smi, "```", ""]
    if env:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items() if k not in ("checks", "rows")] + [""]
    for s in stages:
        if s["name"] == "env":
            continue
        lines += [f"## {s['name']}: {s['status']}", "", f"{s['what']}. " +
                  (f"Skipped: {s.get('why')}." if s["status"] == "skipped" else
                   f"{s['seconds']} s (limit {s['limit_s']} s), exit code {s['rc']}."), ""]
        if s["status"] != "skipped":
            lines += [f"`{s['command']}`", ""]
        lines += stage_details(s)
    lines.append("")
    md.write_text("\n".join(lines), encoding="utf-8")
    js.write_text(json.dumps({"command": cmd, "device": args.device, "precision": args.precision,
                              "quick": args.quick, "budget_s": budget, "total_s": total, "nvidia_smi": smi,
                              "stages": stages}, indent=1, default=str) + "\n", encoding="utf-8")


def stage_details(s: dict[str, Any]) -> list[str]:
    r, out = s.get("result"), []
    if isinstance(r, dict) and s["name"] == "engine-tests":
        out += [f"pytest: {r.get('pytest_summary')}; outcomes: {r['counts']}", ""]
        bad = [t for t in r["tests"] if t["outcome"] not in ("passed", "skipped")]
        skipped = [t for t in r["tests"] if t["outcome"] == "skipped"]
        if bad:
            out += ["| test | outcome | message (first lines) |", "|---|---|---|"]
            for t in bad:
                msg = " ".join(t["message"].splitlines()[:3]).replace("|", "\\|")[:400]
                out.append(f"| `{t['test']}` | {t['outcome']} | {msg} |")
            out.append("")
        if skipped:
            out += ["Skipped: " + "; ".join(f"`{t['test']}` ({t['message'][:120]})" for t in skipped), ""]
        slow = sorted((t for t in r["tests"] if t.get("seconds")), key=lambda t: -t["seconds"])[:5]
        if slow:
            out += ["Slowest: " + ", ".join(f"`{t['test'].split('::')[-1]}` {t['seconds']} s" for t in slow), ""]
    elif isinstance(r, dict) and s["name"].startswith("bench-"):
        try:
            from bench.bench_speed import table

            out += ["```", table(r), "```", ""]
        except Exception as e:  # the table is a nicety: the figures are in the JSON either way
            out += [f"(table failed: {e})", "", "```", json.dumps(r, indent=1)[:6000], "```", ""]
    elif isinstance(r, dict):
        for c in r.get("checks", []):
            out.append(f"- {'ok' if c['ok'] else '**FAILED**'}: {c['name']}" + (f" ({c['detail']})" if c.get("detail")
                                                                                    else ""))
        if r.get("checks"):
            out.append("")
        groups: dict[tuple, list[dict]] = {}  # one table per set of columns
        for row in r.get("rows") or []:
            groups.setdefault(tuple(row), []).append(row)
        for keys, rows in groups.items():
            out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            out += ["| " + " | ".join(str(row.get(k, "")).replace("|", "\\|") for k in keys) + " |" for row in rows]
            out.append("")
        extra = {k: v for k, v in r.items() if k not in ("checks", "rows")}
        if extra:
            out += ["```", json.dumps(extra, indent=1, default=str)[:6000], "```", ""]
    if s["status"] in ("fail", "timeout"):  # the whole output is in the JSON
        tail = s.get("output", "").splitlines()[-150:]
        out += ["<details><summary>output (last lines)</summary>", "", "```", *tail, "```", "", "</details>", ""]
    return out


# ==============================================================================================================
# the stage workers (run in their own processes)
# ==============================================================================================================

class Result:
    """A stage's result file, rewritten after every step, so a stage killed at its limit still shows how far it
    got and what it measured."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"checks": [], "rows": []}
        self.save()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"[{'ok' if ok else 'FAILED'}] {name}" + (f": {detail}" if detail else ""), flush=True)
        self.save()
        return bool(ok)

    def row(self, **row: Any) -> None:
        self.data["rows"].append(row)
        print("row:", row, flush=True)
        self.save()

    def set(self, **kw: Any) -> None:
        self.data.update(kw)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.path)


def worker(args: argparse.Namespace) -> None:
    work: Path = args.work
    res = Result(work / "results" / f"{stage_name(args)}.json")
    {"env": stage_env, "build": stage_build, "modes": stage_modes, "compiled": stage_compiled,
     "previews": stage_previews}[args.stage](args, res)


def stage_name(args: argparse.Namespace) -> str:
    if args.stage == "build":
        return "build-sdxl" if "sdxl" in args.arch else "build-sd15"
    if args.stage == "compiled":
        return "sd15-compiled" if args.mode == "high" else "sd15-compiled-offload"
    return {"env": "env", "modes": "sd15-modes", "previews": "previews-nan-guard"}[args.stage]


def stage_env(args: argparse.Namespace, res: Result) -> None:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                            "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count()}
    for mod in ("diffusers", "transformers", "accelerate", "safetensors", "triton", "xformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # missing or broken: say which
            info[mod] = f"not usable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", total_memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                    bf16_supported=torch.cuda.is_bf16_supported())
    from pipelines.engine import devices, memory

    hw = devices.resolve(args.device, args.precision)
    info["hardware"] = hw.describe()
    info["auto_memory_mode"] = " ".join(memory.pick_mode("auto", hw))
    info["cpu_threads"] = torch.get_num_threads()
    res.set(**info)
    res.check("device resolves", True, hw.describe())
    print(json.dumps(info, indent=1))


def stage_build(args: argparse.Namespace, res: Result) -> None:
    from bench.common import build_model

    dest = args.work / "built" / args.arch
    t0 = time.perf_counter()
    build_model(args.arch, dest, device="cuda" if args.device == "cuda" else "cpu")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    res.set(arch=args.arch, folder=str(dest), seconds=round(time.perf_counter() - t0, 1), gib=round(size / 2**30, 3))
    res.check("model built and saved", (dest / "model_index.json").exists(), f"{size / 2**30:.2f} GiB")


# -- shared by the engine stages ---------------------------------------------------------------------------

class Studio:
    """An engine, its model manager and a job runner over a models folder holding the built model (hard links),
    as app.py wires them; one per process."""

    def __init__(self, args: argparse.Namespace, tag: str, *, precision: str | None = None, **engine_kw: Any):
        from pipelines import discovery
        from pipelines.engine import devices
        from pipelines.engine.generate import Engine
        from pipelines.engine.manager import ModelManager
        from pipelines.jobs import JobRunner
        from pipelines.outputs import OutputWriter

        self.args = args
        self.hw = devices.resolve(args.device, precision or args.precision)
        self.root = args.work / f"studio-{tag}"
        self.models = self.root / "models"
        folder = self.models / "Stable-diffusion" / args.arch
        if not folder.exists():
            from bench.bench_speed import link_or_copy

            shutil.copytree(args.work / "built" / args.arch, folder, copy_function=link_or_copy)
        self.info = next(i for i in discovery.scan(self.models) if i.name == args.arch)
        self.size = QUICK.sd15_size if args.quick else FULL.sd15_size
        self.steps = QUICK.job_steps if args.quick else FULL.job_steps
        cuda = self.hw.device.type == "cuda"
        self.manager = ModelManager(device=self.hw.device, device_budget=int(0.7 * self.hw.total_memory),
                                    cpu_budget=32 * 2**30)  # app.py: device and RAM budgets (one tier on the CPU)
        engine_kw.setdefault("channels_last", cuda)  # app.py's default: on for CUDA
        engine_kw.setdefault("preview_every", 0)
        self.engine = Engine(self.hw, self.manager, OutputWriter(self.root / "outputs"),
                             config_root=self.models / ".cache" / "configs", hash_cache=self.models / ".cache" / "h.json",
                             models_dir=self.models, compile_backend=args.compile_backend, **engine_kw)
        self.runner = JobRunner().start()

    def params(self, **kw: Any) -> Any:
        from pipelines.params.specs import Txt2ImgParams

        return Txt2ImgParams(**{"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": self.steps, "cfg_scale": 7,
                                "width": self.size, "height": self.size, "seed": SEED, "sampler_name": "Euler", **kw})

    def job(self, params: Any | None = None, timeout: float = 600) -> tuple[Any, list[Any], float, float | None]:
        """(result, events, seconds, peak device GiB during the job) of one txt2img job."""
        import torch

        from pipelines.engine import devices

        devices.free_memory()
        cuda = self.hw.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        job = self.runner.submit(lambda ctx: self.engine.txt2img(ctx, params or self.params(), self.info))
        events = list(job.events(timeout=timeout))
        result = job.wait(timeout)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return result, events, seconds, peak

    def device_gib(self) -> float | None:
        import torch

        return round(torch.cuda.memory_allocated() / 2**30, 3) if self.hw.device.type == "cuda" else None

    def stop(self) -> None:
        self.runner.stop()


def px(img: Any) -> Any:
    import numpy as np

    return np.asarray(img, dtype=np.int16)


def compare(a: Any, b: Any) -> tuple[int, float]:
    """(max, mean) absolute pixel difference, 0-255."""
    import numpy as np

    d = np.abs(px(a) - px(b))
    return int(d.max()), round(float(d.mean()), 3)


def ended_in(result: Any, engine: Any) -> str | None:
    """The memory mode a job ended in (lower than set after an out-of-memory retry)."""
    return result.memory_mode


def picture_ok(img: Any) -> tuple[bool, str]:
    """Not black, not one flat colour (what NaNs or a broken decode give)."""
    a = px(img)
    return bool(a.std() > 1.0 and a.max() > 10), f"mean {a.mean():.1f}, std {a.std():.1f}"


def stage_modes(args: argparse.Namespace, res: Result) -> None:
    """Each memory mode on one engine, as a user switching --memory would see it: the first job in a mode
    (which moves the models between RAM and the device) and a second one, peak device memory, and the pixels
    against "high" (same seed: offload moves weights, it must not change the picture)."""
    from pipelines.engine import memory
    from pipelines.engine.devices import module_device

    st = Studio(args, "modes")
    try:
        t0 = time.perf_counter()
        st.runner.submit(lambda ctx: st.engine.warm(ctx, st.info)).wait(600)
        res.set(cold_load_s=round(time.perf_counter() - t0, 2), hardware=st.hw.describe(), size=st.size,
                steps=st.steps, device_gib_after_load=st.device_gib())
        if st.hw.device.type == "cpu":
            res.set(note="CPU device: low and minimal do not offload (RAM is the device): only slicing and tiling")
        images: dict[str, Any] = {}
        peaks: dict[str, float | None] = {}
        for mode in memory.MODES:
            st.engine.memory_mode = mode
            try:
                first, _, s1, _ = st.job()
                second, _, s2, peak = st.job()
            except Exception as e:
                res.check(f"{mode}: job runs", False, f"{type(e).__name__}: {e}")
                continue
            with st.engine.components(st.info) as comps:
                unet_at = str(module_device(comps.unet))
            images[mode], peaks[mode] = second.images[0], peak
            ok, stats = picture_ok(second.images[0])
            diff = compare(second.images[0], images["high"]) if "high" in images else (None, None)
            res.row(mode=mode, first_job_s=round(s1, 2), second_job_s=round(s2, 2),
                    peak_device_gib=None if peak is None else round(peak, 3), device_gib_after=st.device_gib(),
                    unet_between_jobs=unet_at, max_diff_vs_high=diff[0], mean_diff_vs_high=diff[1],
                    ended_in=ended_in(second, st.engine), warnings=" | ".join(second.warnings))
            res.check(f"{mode}: a picture ({stats})", ok)
            if mode != "high" and diff[0] is not None:
                res.check(f"{mode}: same picture as high (mean abs diff <= 1.0)", diff[1] <= 1.0,
                          f"max {diff[0]}, mean {diff[1]}")
            res.check(f"{mode}: ran in {mode} mode (no OOM retry)", ended_in(second, st.engine) == mode,
                      str(ended_in(second, st.engine)))
        if st.hw.device.type == "cuda" and all(peaks.get(m) for m in memory.MODES):
            res.check("peak device memory: low < normal", peaks["low"] < peaks["normal"],
                      f"{peaks['low']:.2f} vs {peaks['normal']:.2f} GiB")
            res.check("peak device memory: minimal < low", peaks["minimal"] < peaks["low"],
                      f"{peaks['minimal']:.2f} vs {peaks['low']:.2f} GiB")
        res.check("no component left pinned", st.manager.pinned() == {}, str(st.manager.pinned()))
    finally:
        st.stop()


def stage_compiled(args: argparse.Namespace, res: Result) -> None:
    """Eager reference, then the app's compiled UNet (Engine(compile_unet=True): nn.Module.compile with
    channels-last on CUDA) in --mode: the first job pays the compile and says so once, the second does not."""
    from pipelines.engine import devices, fastpath
    from pipelines.jobs import EventKind

    eager = Studio(args, "eager")
    try:
        ref, _, eager_s, _ = eager.job()
        ref2, _, eager_s2, _ = eager.job()
    finally:
        eager.stop()
    eager.manager.free(drop=True)
    del eager
    devices.free_memory()
    res.set(eager_first_s=round(eager_s, 2), eager_second_s=round(eager_s2, 2), backend=args.compile_backend,
            mode=args.mode)
    st = Studio(args, "compiled", compile_unet=True, memory_mode=args.mode)
    if st.hw.device.type == "cpu" and args.mode in ("low", "minimal"):
        res.set(note="CPU device: the engine does not offload (RAM is the device), so this ran without offload")
    try:
        first, events, s1, peak1 = st.job(timeout=900)
        labels = [e.label for e in events if e.kind is EventKind.PROGRESS]
        warm = [w for w in first.warnings if w.startswith("torch.compile warm-up:")]
        res.row(job="first (compiles)", seconds=round(s1, 2), peak_device_gib=peak1 and round(peak1, 3),
                warnings=" | ".join(first.warnings))
        res.check("the first job says it compiles", "compiling UNet (first step)…" in labels)
        res.check("the warm-up is reported once", len(warm) == 1, warm[0] if warm else "no warm-up warning")
        second, events2, s2, peak2 = st.job(timeout=600)
        third, _, s3, _ = st.job(timeout=600)
        res.row(job="second", seconds=round(s2, 2), peak_device_gib=peak2 and round(peak2, 3),
                warnings=" | ".join(second.warnings))
        res.row(job="third", seconds=round(s3, 2), peak_device_gib=None, warnings=" | ".join(third.warnings))
        res.check("no warm-up on the second job", not [w for w in second.warnings if "warm-up" in w])
        with st.engine.components(st.info) as comps:
            res.check("the cached UNet is compiled", fastpath.is_compiled(comps.unet))
        ok, stats = picture_ok(second.images[0])
        res.check(f"a picture ({stats})", ok)
        diff = compare(second.images[0], ref2.images[0])
        res.set(max_diff_vs_eager=diff[0], mean_diff_vs_eager=diff[1], compiled_vs_eager_job_s=round(min(s2, s3), 3),
                eager_job_s=round(eager_s2, 3))
        res.check("same picture as eager (mean abs diff <= 1.0)", diff[1] <= 1.0, f"max {diff[0]}, mean {diff[1]}")
        res.check(f"ran in {args.mode} mode", ended_in(second, st.engine) == args.mode, str(ended_in(second, st.engine)))
        if st.hw.device.type == "cuda" and args.compile_backend == "inductor":
            res.check("compiled job not slower than eager", min(s2, s3) <= eager_s2 * 1.05,
                      f"{min(s2, s3):.3f} s vs eager {eager_s2:.3f} s")
    finally:
        st.stop()


def stage_previews(args: argparse.Namespace, res: Result) -> None:
    """TAESD previews: a random-weight TAESD (diffusers' AutoencoderTiny default config, the published taesd's
    architecture) in models/VAE-approx/taesd, a preview on every step, its cost per step. NaN guard: the fp16
    VAE made to overflow (as tests/test_fastpath.py does), decoded again in float32 with one warning per job."""
    import torch
    from diffusers import AutoencoderTiny

    from pipelines.engine.devices import module_device
    from pipelines.engine.generate import vae_decode
    from pipelines.jobs import EventKind

    st = Studio(args, "previews", preview_every=1, preview_decoder="taesd")
    try:
        taesd_dir = st.models / "VAE-approx" / "taesd"
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(str(taesd_dir))
        st.job()  # load and warm up
        with_prev, events, s_prev, _ = st.job()
        previews_seen = [e for e in events if e.kind is EventKind.PREVIEW]
        st.engine.preview_every = 0
        _, _, s_none, _ = st.job()
        st.engine.preview_every = 1
        keys = st.manager.cached("taesd::")
        where = None
        if keys:
            with st.manager.use(keys[:1], lambda: {}) as objs:
                where = str(module_device(objs[keys[0]]))
        per_step = (s_prev - s_none) / max(st.steps, 1)
        res.row(part="previews", job_with_previews_s=round(s_prev, 3), job_without_s=round(s_none, 3),
                per_preview_ms=round(per_step * 1000, 1), previews=len(previews_seen), taesd_on=where)
        res.check("a preview on every step", len(previews_seen) == st.steps, f"{len(previews_seen)} of {st.steps}")
        res.check("previews at the image size", all(e.image.size == (st.size, st.size) for e in previews_seen))
        res.check("TAESD loaded once through the component cache, on the device",
                  len(keys) == 1 and where is not None and torch.device(where).type == st.hw.device.type,
                  f"{keys} on {where}")
        if previews_seen:
            ok, stats = picture_ok(previews_seen[-1].image)
            res.check(f"the last preview is a picture ({stats})", ok)
    finally:
        st.stop()

    # -- the fp16 VAE NaN guard (fp16 whatever --precision says: it is the fp16 guard) ---------------------
    st = Studio(args, "nan", precision="fp16")
    try:
        engine = st.engine
        latents = torch.randn(1, 4, st.size // 8, st.size // 8, generator=torch.Generator().manual_seed(0))
        latents = latents.to(st.hw.device, torch.float16)
        with engine.components(st.info) as comps:
            natural = vae_decode(comps.vae, latents, torch.float16, sdxl=False)
            res.set(natural_fp16_nan=bool(not torch.isfinite(natural).all()))
            block = comps.vae.decoder.up_blocks[-1].resnets[-1]
            saved = block.output_scale_factor
            block.output_scale_factor = 2.0 ** -20  # x 2^20: past float16's 65504; the norm after it rescales
            raw = vae_decode(comps.vae, latents, torch.float16, sdxl=False)
            res.check("the injected overflow gives NaN/inf in float16", not torch.isfinite(raw).all())
            reference = copy.deepcopy(comps.vae).float()
            want = vae_decode(reference, latents, torch.float32, sdxl=False)
            del reference
            notes: list[str] = []
            t0 = time.perf_counter()
            images = engine.decode(comps, latents, notes)
            st_dec = time.perf_counter() - t0
            t0 = time.perf_counter()
            vae_decode(comps.vae, latents, torch.float16, sdxl=False)
            plain_dec = time.perf_counter() - t0
            res.check("decode keeps the VAE in float16", comps.vae.dtype == torch.float16, str(comps.vae.dtype))
        want_px = ((want.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy()
        import numpy as np

        diff = int(np.abs(px(images[0]) - want_px[0]).max())
        res.row(part="nan guard", guarded_decode_s=round(st_dec, 3), fp16_decode_s=round(plain_dec, 3),
                max_diff_vs_fp32=diff, note=notes[0] if notes else "")
        res.check("one float32 re-decode warning", len(notes) == 1, notes[0] if notes else "none")
        ok, stats = picture_ok(images[0])
        res.check(f"the re-decoded image is a picture ({stats}), within 1 of a float32 decode", ok and diff <= 1,
                  f"max diff {diff}")
        result, _, _, _ = st.job(st.params(batch_size=2))  # the job path, once per job
        nan_notes = [w for w in result.warnings if w.startswith("VAE produced NaNs")]
        res.check("a job with the overflowing VAE: one warning, no black image",
                  len(nan_notes) == 1 and all(picture_ok(i)[0] for i in result.images), " | ".join(result.warnings))
        with engine.components(st.info) as comps:
            comps.vae.decoder.up_blocks[-1].resnets[-1].output_scale_factor = saved
    finally:
        st.stop()


if __name__ == "__main__":
    main()
