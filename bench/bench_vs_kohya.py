"""SD-Train against kohya sd-scripts: the same LoRA config, checkpoint and images through both trainers.

    .venv/bin/python bench/bench_vs_kohya.py --kohya_dir /tmp/kohya/sd-scripts \
        --kohya_python /tmp/kohya/venv/bin/python --resolution 64 128 --batch_size 2 --precision fp32 \
        --steps 12 --repeats 2 --out /tmp/vs-kohya [--compare_outputs]

What runs: one TOML config (kohya's keys; SD-Train reads the same file) per setting, given to kohya's
`train_network.py --config_file` and to `python -m lib_sdtrain train --config_file`; the two alternate ABAB for
`--repeats` rounds, each run a fresh process. Settings: SD1.5 LoRA dim 8 / alpha 8 on UNet and text encoder,
AdamW, lr 1e-4 constant, seed 42, cached latents, SDPA attention, no buckets, no sampling, 0 data-loader workers,
saved once at the end; 8 coloured PNGs with .txt captions in an `N_sks` folder, N chosen so that all steps fall in
one epoch. Without `--checkpoint` a random-weight SD1.5 checkpoint is written with bench_model_io.py's code, and a
small CLIP tokenizer (its ids fit the 49408-row embedding) is saved for both tools.

How it measures (all from outside the processes, the same way for both):
  * time to first step: from starting the process to the moment its training progress bar first shows step 1
    (imports, model load, latent caching and set-up included);
  * s/step: both print a tqdm bar (kohya "steps: ... n/N", SD-Train "training: ... n/N") and flush it on each
    update; the output is read as it streams and each new step count is stamped with time.monotonic() on arrival.
    mean s/step = (t[N] - t[w]) / (N - w), w = `--warmup` steps (3) left out, and the median of the steady steps
    (the one to trust on a shared machine);
  * peak RSS: ru_maxrss of the trainer from os.wait4, the largest resident set of it and its reaped children;
  * peak VRAM (CUDA only): `nvidia-smi --query-gpu=memory.used` sampled every 0.2 s, minus its value before the
    run, so it includes the CUDA context and the caching allocator's reserve (the same for both tools; it assumes
    nothing else uses the GPU meanwhile).
Ratios are kohya / SD-Train: above 1 means SD-Train is faster or smaller. Each result is the median over rounds.
On a CPU shared with other jobs give `--threads` (OMP_NUM_THREADS for both): torch's threads spin-wait for a busy
core, which made steps up to ten times slower here.

`--compare_outputs` runs each tool once more with sampling (one prompt, euler_a, every epoch, 2 epochs, saving
every epoch) and prints what a kohya user would compare: steps per epoch and total steps each reports, the ss_*
metadata keys of each LoRA file (and those only one writes), and the file names each writes.

kohya's environment (this script never installs anything). Its source: sd-scripts at tag v0.8.7
(github.com/kohya-ss/sd-scripts; in this project's sandbox, the search tool's fetch of github:kohya-ss/sd-scripts
and `git archive v0.8.7`). Then:
    python -m venv /tmp/kohya/venv
    /tmp/kohya/venv/bin/pip install torch==2.13.0        # the same torch build as SD-Train's, CPU or CUDA
    /tmp/kohya/venv/bin/pip install -r requirements.txt  # kohya's, minus bitsandbytes, pytorch-lightning, altair,
        # easygui and `-e .`, with opencv-python-headless for opencv-python, plus "numpy<2" "pandas<3"
torchvision is not needed: a stand-in with the few functions kohya uses goes on kohya's PYTHONPATH
(bench/kohya_env.py), and kohya finds the tokenizer through `--tokenizer_cache_dir`. For the sampling run only, a
sitecustomize.py lets kohya v0.8.7 save samples on a CPU-only torch (it calls torch.cuda.current_device()
unconditionally). Both tools run with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.kohya_env import (  # noqa: E402
    write_cpu_sampling_patch,
    write_kohya_tokenizer_cache,
    write_torchvision_shim,
)

TOOLS = ("kohya", "sdtrain")
BAR_DESC = {"kohya": "steps", "sdtrain": "training"}  # the desc of each tool's training progress bar
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Case:
    """One setting both tools train with."""

    resolution: int
    batch_size: int
    precision: str
    steps: int
    gradient_checkpointing: bool

    @property
    def name(self) -> str:
        gc = "-gc" if self.gradient_checkpointing else ""
        return f"{self.resolution}px-b{self.batch_size}-{self.precision}{gc}"


@dataclass
class Run:
    """What one trainer process did, measured from outside."""

    tool: str
    returncode: int
    wall_s: float
    first_step_s: float | None
    s_per_step: float | None
    median_s_per_step: float | None
    peak_rss_gib: float
    peak_vram_gib: float | None
    load_before: float
    step_stamps: list[tuple[int, float]] = field(default_factory=list)
    log: str = ""


# --- inputs ---------------------------------------------------------------------------------------------------


def make_images(folder: Path, side: int, repeats: int) -> Path:
    """8 flat-coloured PNGs with .txt captions in kohya's `N_name` folder; returns the parent (train_data_dir)."""
    from PIL import Image

    subset = folder / f"{repeats}_sks"
    subset.mkdir(parents=True, exist_ok=True)
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (side, side), rgb).save(subset / f"img{i}.png")
        (subset / f"img{i}.txt").write_text(f"sks, {colour} square")
    return folder


def prepare_model(workdir: Path, checkpoint: Path | None, tokenizer: Path | None) -> tuple[Path, Path]:
    """The checkpoint and tokenizer folder both tools load (a random SD1.5 one when none is given)."""
    from lib_sdtrain.demo.tiny_models import write_tiny_tokenizer

    if tokenizer is None:
        tokenizer = workdir / "tokenizer"
        write_tiny_tokenizer(tokenizer)
    if checkpoint is None:
        from bench.bench_model_io import prepare

        checkpoint, _ = prepare(workdir, "fp16")
    return checkpoint, tokenizer


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, settings: dict[str, object]) -> Path:
    """A flat TOML file of kohya keys (kohya and SD-Train both flatten tables, so none are needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items()))
    return path


def base_settings(case: Case, checkpoint: Path, data: Path, output_dir: Path) -> dict[str, object]:
    """The settings both tools get; every key is written out so that neither tool's defaults decide."""
    return {
        "pretrained_model_name_or_path": str(checkpoint),
        "train_data_dir": str(data),
        "caption_extension": ".txt",
        "resolution": f"{case.resolution},{case.resolution}",
        "enable_bucket": False,
        "network_module": "networks.lora",
        "network_dim": 8,
        "network_alpha": 8,
        "optimizer_type": "AdamW",
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "train_batch_size": case.batch_size,
        "mixed_precision": PRECISION[case.precision],
        "gradient_checkpointing": case.gradient_checkpointing,
        "cache_latents": True,
        "max_data_loader_n_workers": 0,
        "sdpa": True,
        "seed": 42,
        "save_precision": "fp16",
        "save_model_as": "safetensors",
        "output_dir": str(output_dir),
        "output_name": "bench-lora",
    }


# --- running and measuring ------------------------------------------------------------------------------------


class VramSampler:
    """Peak GPU memory in use during a run, by polling nvidia-smi (a trainer's own allocator is out of reach)."""

    def __init__(self) -> None:
        self.baseline = self._used()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _used() -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return float(out.splitlines()[0]) / 1024  # MiB -> GiB

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            used = self._used()
            if used is not None and self.peak is not None:
                self.peak = max(self.peak, used)

    def __enter__(self) -> VramSampler:
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        return None if self.baseline is None or self.peak is None else self.peak - self.baseline


def step_counts(text: str, desc: str) -> list[tuple[int, int]]:
    """(n, total) of every update of the progress bar named `desc` in a chunk of tqdm output."""
    pattern = re.compile(rf"{re.escape(desc)}:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
    return [(int(n), int(total)) for n, total in pattern.findall(ANSI.sub("", text))]


def steady_seconds_per_step(stamps: list[tuple[int, float]], warmup: int) -> tuple[float | None, float | None]:
    """Mean and median step time after the warm-up steps, from the arrival times of the bar's step counts. The
    median is the one to trust on a shared machine: another job's burst lengthens a few steps, not the middle one."""
    steady = [(n, t) for n, t in stamps if n >= warmup]
    if len(steady) < 2:
        return None, None
    (n0, t0), (n1, t1) = steady[0], steady[-1]
    each = [(b - a) / (m - n) for (n, a), (m, b) in itertools.pairwise(steady)]
    return (t1 - t0) / (n1 - n0), statistics.median(each)


def load_average() -> float:
    """The 1-minute load average: above ~0.5 before a run, something else is using the CPU."""
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else 0.0


def run_trainer(tool: str, command: list[str], cwd: Path, env: dict[str, str], log_path: Path, warmup: int) -> Run:
    """Start one trainer, stamp its step updates as they stream in, and reap it with wait4 for its peak RSS."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    desc, stamps, chunks, tail = BAR_DESC[tool], [], [], ""
    load_before = load_average()
    with VramSampler() as vram, log_path.open("w", buffering=1) as log:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        fd = proc.stdout.fileno()
        while data := os.read(fd, 65536):
            now = time.monotonic() - started
            text = data.decode("utf-8", "replace")
            log.write(text)
            chunks.append(text)
            # tqdm writes "\r<bar>" and flushes per update, so the newest bar is the unterminated last line: parse
            # it now (a count is complete once its "/" arrived) and again with the next chunk (duplicates skipped).
            *_, tail = lines = re.split(r"[\r\n]", tail + text)
            for n, _total in step_counts("\n".join(lines), desc):
                if not stamps or n > stamps[-1][0]:
                    stamps.append((n, now))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        wall = time.monotonic() - started
    mean, middle = steady_seconds_per_step(stamps, warmup)
    return Run(
        tool=tool,
        returncode=proc.returncode,
        wall_s=wall,
        first_step_s=next((t for n, t in stamps if n >= 1), None),
        s_per_step=mean,
        median_s_per_step=middle,
        peak_rss_gib=usage.ru_maxrss / 2**20,  # KiB on Linux
        peak_vram_gib=vram.peak_gib,
        load_before=load_before,
        step_stamps=stamps,
        log="".join(chunks),
    )


@dataclass
class Tools:
    """How to start each trainer: interpreters, folders and environments."""

    kohya_dir: Path
    kohya_python: str
    sdtrain_python: str
    shim_dir: Path
    tokenizer: Path
    tokenizer_cache: Path
    threads: int | None = None

    def command(self, tool: str, config: Path, sampling: bool = False) -> tuple[list[str], Path, dict[str, str]]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if self.threads:  # torch reads these at start-up; both tools get the same
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if tool == "kohya":
            patch = [str(write_cpu_sampling_patch(self.shim_dir.parent / "kohya-cpu-sampling"))] if sampling else []
            env["PYTHONPATH"] = os.pathsep.join([*patch, str(self.shim_dir), str(self.kohya_dir)])
            args = [
                "train_network.py",
                "--config_file",
                str(config),
                "--tokenizer_cache_dir",
                str(self.tokenizer_cache),
            ]
            return [self.kohya_python, *args], self.kohya_dir, env
        args = ["-m", "lib_sdtrain", "train", "--config_file", str(config), "--tokenizer", str(self.tokenizer)]
        return [self.sdtrain_python, *args], ROOT, env


def run_case(case: Case, tools: Tools, checkpoint: Path, out: Path, repeats: int, warmup: int) -> dict[str, list[Run]]:
    """Train `case` with both tools, ABAB, `repeats` rounds; every run writes its log under out/logs."""
    images = len(COLOURS)
    data = make_images(out / "data" / case.name, case.resolution, math.ceil(case.steps * case.batch_size / images))
    runs: dict[str, list[Run]] = {tool: [] for tool in TOOLS}
    for round_ in range(1, repeats + 1):
        for tool in TOOLS:
            output_dir = out / "runs" / case.name / f"{tool}-{round_}"
            shutil.rmtree(output_dir, ignore_errors=True)
            settings = {**base_settings(case, checkpoint, data, output_dir), "max_train_steps": case.steps}
            config = write_config(out / "configs" / f"{case.name}.toml", settings)
            command, cwd, env = tools.command(tool, config)
            run = run_trainer(tool, command, cwd, env, out / "logs" / f"{case.name}-{tool}-{round_}.log", warmup)
            if run.returncode != 0:
                raise SystemExit(f"{tool} failed ({run.returncode}), log {out / 'logs'}:\n{run.log[-4000:]}")
            print(f"  {case.name} round {round_} {tool}: {describe(run)}", flush=True)
            runs[tool].append(run)
    return runs


def describe(run: Run) -> str:
    vram = "" if run.peak_vram_gib is None else f", peak VRAM {run.peak_vram_gib:.2f} GiB"
    return (
        f"first step {fmt(run.first_step_s, ' s', 1)}, {fmt(run.s_per_step, '')} s/step mean,"
        f" {fmt(run.median_s_per_step, '')} median, peak RSS {run.peak_rss_gib:.2f} GiB{vram}"
        f" (wall {run.wall_s:.0f} s, load average before {run.load_before:.2f})"
    )


# --- summary --------------------------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


MEASURES = ("first_step_s", "s_per_step", "median_s_per_step", "peak_rss_gib", "peak_vram_gib")


def summarise(runs: dict[str, list[Run]]) -> dict[str, dict[str, float | None]]:
    """Median over the rounds of each measure, per tool, and the kohya/SD-Train ratios."""
    summary = {tool: {key: median([getattr(r, key) for r in rs]) for key in MEASURES} for tool, rs in runs.items()}
    summary["ratio"] = {
        key: None
        if not summary["kohya"][key] or not summary["sdtrain"][key]
        else summary["kohya"][key] / summary["sdtrain"][key]
        for key in MEASURES
    }
    return summary


def fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def markdown_table(results: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """One row per setting and tool, and one for the ratio kohya / SD-Train."""
    rows = [
        "| setting | tool | time to first step | s/step, mean | s/step, median | peak RSS | peak VRAM |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"kohya": "kohya sd-scripts", "sdtrain": "SD-Train", "ratio": "ratio kohya / SD-Train"}
    units = (" s", " s", " s", " GiB", " GiB")
    for case, summary in results.items():
        for tool in (*TOOLS, "ratio"):
            if tool == "ratio":
                cells = ["n/a" if summary[tool][k] is None else f"x{summary[tool][k]:.2f}" for k in MEASURES]
            else:
                cells = [fmt(summary[tool][k], unit) for k, unit in zip(MEASURES, units, strict=True)]
            rows.append(f"| {case} | {names[tool]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --- output comparison ----------------------------------------------------------------------------------------

REPORTED = {
    "kohya": re.compile(
        r"num batches per epoch / [^:]*: (\d+).*?num epochs / [^:]*: (\d+).*?total optimization steps / [^:]*: (\d+)",
        re.S,
    ),
    "sdtrain": re.compile(r"(\d+) batches per epoch \([^)]*\), (\d+) epochs, (\d+) steps"),
}


def reported_steps(tool: str, log: str) -> dict[str, int | None]:
    """Steps per epoch, epochs and total steps as the tool's own start-of-training summary states them."""
    match = REPORTED[tool].search(ANSI.sub("", log))
    values = [int(v) for v in match.groups()] if match else [None, None, None]
    return dict(zip(("steps_per_epoch", "epochs", "total_steps"), values, strict=True))


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The __metadata__ of a .safetensors header (read directly: the header is 8 bytes of length, then JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)).get("__metadata__", {})


def compare_outputs(case: Case, tools: Tools, checkpoint: Path, out: Path) -> dict[str, object]:
    """One run per tool with sampling and per-epoch saves; what each reports and writes, side by side."""
    data = make_images(out / "data" / f"{case.name}-compare", case.resolution, repeats=1)
    side = case.resolution
    prompts = out / "configs" / "prompts.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text(f"sks, red square --w {side} --h {side} --s 3 --d 1 --l 7\n")
    result: dict[str, dict[str, object]] = {}
    for tool in TOOLS:
        output_dir = out / "compare" / tool
        shutil.rmtree(output_dir, ignore_errors=True)
        settings = {
            **base_settings(case, checkpoint, data, output_dir),
            "max_train_epochs": 2,
            "save_every_n_epochs": 1,
            "sample_every_n_epochs": 1,
            "sample_prompts": str(prompts),
            "sample_sampler": "euler_a",
        }
        config = write_config(out / "configs" / f"{case.name}-compare.toml", settings)
        command, cwd, env = tools.command(tool, config, sampling=True)
        run = run_trainer(tool, command, cwd, env, out / "logs" / f"{case.name}-compare-{tool}.log", warmup=0)
        if run.returncode != 0:
            raise SystemExit(f"{tool} failed ({run.returncode}):\n{run.log[-4000:]}")
        lora = output_dir / "bench-lora.safetensors"
        result[tool] = {
            **reported_steps(tool, run.log),
            "ss_keys": sorted(k for k in safetensors_metadata(lora) if k.startswith("ss_")) if lora.exists() else [],
            "files": sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file()),
        }
    kohya_keys, our_keys = set(result["kohya"]["ss_keys"]), set(result["sdtrain"]["ss_keys"])
    return {
        **result,
        "ss_keys_only_kohya": sorted(kohya_keys - our_keys),
        "ss_keys_only_sdtrain": sorted(our_keys - kohya_keys),
    }


def comparison_markdown(comparison: dict[str, object]) -> str:
    kohya, ours = comparison["kohya"], comparison["sdtrain"]
    lines = [
        "| | kohya sd-scripts | SD-Train |",
        "| --- | --- | --- |",
        *(
            f"| {key.replace('_', ' ')} | {kohya[key]} | {ours[key]} |"
            for key in ("steps_per_epoch", "epochs", "total_steps")
        ),
        f"| ss_* keys | {len(kohya['ss_keys'])} | {len(ours['ss_keys'])} |",
        "",
        f"ss_* keys only kohya writes: {', '.join(comparison['ss_keys_only_kohya']) or 'none'}",
        f"ss_* keys only SD-Train writes: {', '.join(comparison['ss_keys_only_sdtrain']) or 'none'}",
        f"ss_* keys both write: {', '.join(sorted(set(kohya['ss_keys']) & set(ours['ss_keys'])))}",
        "",
        f"kohya's files: {', '.join(kohya['files'])}",
        f"SD-Train's files: {', '.join(ours['files'])}",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kohya_dir", type=Path, required=True, help="a kohya sd-scripts checkout (v0.8.7)")
    parser.add_argument("--kohya_python", required=True, help="the python of kohya's own venv")
    parser.add_argument("--sdtrain_python", default=sys.executable, help="the python of SD-Train's venv")
    parser.add_argument("--checkpoint", type=Path, help="SD1.5 .safetensors; default: a random-weight one")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="CLIP tokenizer folder (give the real one with a real checkpoint); default: a small one",
    )
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch_size", type=int, nargs="+", default=[2])
    parser.add_argument("--precision", choices=sorted(PRECISION), default="fp32", help="fp32 or mixed fp16/bf16")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of s/step")
    parser.add_argument("--repeats", type=int, default=2, help="ABAB rounds (0: only --compare_outputs)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads per trainer (OMP_NUM_THREADS); set it below the core count when other jobs share the CPU,"
        " as torch's threads spin-wait for a busy core and steps slow down many times over",
    )
    parser.add_argument("--compare_outputs", action="store_true", help="also compare reported steps, ss_* keys, files")
    parser.add_argument("--out", type=Path, required=True, help="folder for data, logs, bench_vs_kohya.json/.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, tokenizer = prepare_model(out / "model", args.checkpoint, args.tokenizer)
    tools = Tools(
        kohya_dir=args.kohya_dir.resolve(),
        kohya_python=args.kohya_python,
        sdtrain_python=args.sdtrain_python,
        shim_dir=write_torchvision_shim(out / "kohya-shim"),
        tokenizer=tokenizer,
        tokenizer_cache=write_kohya_tokenizer_cache(tokenizer, out / "kohya-tokenizer-cache"),
        threads=args.threads,
    )
    cases = [
        Case(resolution, batch, args.precision, args.steps, args.gradient_checkpointing)
        for resolution in args.resolution
        for batch in args.batch_size
    ]
    report: dict[str, object] = {
        "checkpoint": str(checkpoint),
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
    }
    results = {}
    for case in cases if args.repeats > 0 else []:
        runs = run_case(case, tools, checkpoint, out, args.repeats, args.warmup)
        results[case.name] = summarise(runs)
        report[case.name] = {tool: [{**asdict(r), "log": None} for r in tool_runs] for tool, tool_runs in runs.items()}
    markdown = markdown_table(results) if results else ""
    if args.compare_outputs:
        comparison = compare_outputs(cases[0], tools, checkpoint, out)
        report["comparison"] = comparison
        markdown += f"\n\nOutputs for {cases[0].name}, 2 epochs, sampling every epoch:\n\n"
        markdown += comparison_markdown(comparison)
    report["summary"] = results
    (out / "bench_vs_kohya.json").write_text(json.dumps(report, indent=1))
    (out / "bench_vs_kohya.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
