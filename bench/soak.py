"""``python -m bench.soak``: does resident memory keep growing over LoRA cycles and model switches?

Each scenario runs in a fresh interpreter on a random-weight demo model (``--model-size``,
the tiny one by default, as in the unit tests), 64×64, 1 step:

- ``lora``: a LoRA cache of one adapter and two LoRAs in turn, so every request reads an
  adapter from disk, loads it into the UNet and both text encoders, uses it and evicts
  the other one;
- ``switch``: the default model budget (0) and two checkpoints in turn, so every request
  frees one model and loads the other.

The baseline is measured in the same process: as many plain generations (no LoRA; the
default model only). After a warm-up, ``--repeats`` rounds each run one block of
``--cycles`` soak cycles and one block of as many baseline generations, in alternating
order; a block's drift is RSS after minus RSS before (both after ``gc.collect()``). A leak
shows as soak blocks that grow by about the same amount every time, well above the
baseline's; allocator warm-up shows as drift that shrinks from block to block.

The unit tests check the same mechanisms exactly and fast (adapters and parameters left
in the model, models and parameters still alive: ``tests/unit/engine/test_loras.py``,
``test_model_cache.py``); RSS depends on the allocator and the machine, so it is measured
here, not asserted there. Prints a table and appends it to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no benchmark ever downloads weights
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import machine as host  # noqa: E402
from bench.memory import rss_mib  # noqa: E402
from bench.stats import median  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SCENARIOS = ("lora", "switch")
LORAS = ("demo-style", "demo-style-b")
MODELS = ("second", None)  # None: the default model; a block ends on it (even cycle counts)


# --- one scenario, in a fresh interpreter -----------------------------------------------


def write_models(root: Path, model_size: str) -> Path:
    """The demo models, a second LoRA and a second checkpoint (a copy of the demo)."""
    from bench.inprocess import write_second_lora
    from pixelmill.engine.demo import write_demo_models

    models = root / "models"
    write_demo_models(models, model_size)
    loras = models / "loras"
    write_second_lora(loras / f"{LORAS[0]}.safetensors", loras / f"{LORAS[1]}.safetensors")
    shutil.copytree(models / "checkpoints" / "demo", models / "checkpoints" / MODELS[0])
    return models


def _block(call, count: int, first: int) -> tuple[float, list[float]]:
    """Run ``call(first) … call(first + count - 1)``: (RSS drift in MiB, seconds per call)."""
    gc.collect()
    before, seconds = rss_mib(), []
    for i in range(first, first + count):
        started = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - started)
    gc.collect()
    return rss_mib() - before, seconds


def run_scenario(kind: str, models: Path, *, cycles: int, repeats: int, warmup: int) -> dict:
    """Measure one scenario in this process; returns what the parent prints and records."""
    from bench.inprocess import load_engine
    from pixelmill.core.types import GenerationRequest, LoraSpec

    engine = load_engine(models)
    model = engine._models.get(engine.model_for(None))

    def generate(i: int, **fields) -> None:
        engine.generate(GenerationRequest(prompt=f"soak {i}", width=64, height=64, steps=1, seed=i, **fields))

    if kind == "lora":
        model.loras.max_count = 1  # every cycle: read from disk, load, use, evict the other

        def soak(i: int) -> None:
            generate(i, loras=(LoraSpec(name=LORAS[i % 2], weight=1.0),))

        unit, unit_bytes = "one LoRA file", (models / "loras" / f"{LORAS[0]}.safetensors").stat().st_size
    else:
        def soak(i: int) -> None:
            generate(i, model=MODELS[i % 2])

        unit, unit_bytes = "one model's weights", model.nbytes
    del model

    for i in range(warmup):  # allocator pools, lazily built pipeline pieces
        soak(i)
        generate(i)
    rss_warm = rss_mib()
    blocks = []
    for r in range(repeats):
        order = (("soak", soak), ("baseline", generate))
        for name, call in order if r % 2 == 0 else order[::-1]:
            drift, seconds = _block(call, cycles, first=1000 * (r + 1))
            blocks.append({"kind": name, "round": r, "drift_mib": drift, "seconds": seconds})
            print(f"  {kind}: round {r + 1}/{repeats}, {name}: {drift:+.2f} MiB over {cycles} "
                  f"in {sum(seconds):.0f} s", file=sys.stderr, flush=True)
    if kind == "lora":
        loras = engine._models.get(engine.model_for(None)).loras
        assert loras.loads >= repeats * cycles and len(loras.resident) == 1, "the LoRA cache did not cycle"
    else:
        assert engine.loaded_models == ["demo"], engine.loaded_models
    return {"scenario": kind, "cycles": cycles, "repeats": repeats, "warmup": warmup, "unit": unit,
            "unit_bytes": unit_bytes, "rss_warm_mib": rss_warm, "rss_end_mib": rss_mib(), "blocks": blocks}


# --- the parent: runs the scenarios, prints, records ----------------------------------------


@dataclass(frozen=True)
class Summary:
    """One scenario's blocks, reduced to what the table shows."""

    raw: dict

    def drifts(self, kind: str) -> list[float]:
        return [b["drift_mib"] for b in self.raw["blocks"] if b["kind"] == kind]

    def seconds(self, kind: str) -> list[float]:
        return [s for b in self.raw["blocks"] if b["kind"] == kind for s in b["seconds"]]

    def per_cycle_kib(self) -> float:
        """Median soak block drift minus median baseline block drift, per cycle, in KiB."""
        return (median(self.drifts("soak")) - median(self.drifts("baseline"))) * 1024 / self.raw["cycles"]

    def row(self) -> str:
        r, n = self.raw, self.raw["cycles"]

        def spread(kind: str) -> str:
            values = self.drifts(kind)
            return (f"{median(values):+.2f} MiB ({min(values):+.2f} … {max(values):+.2f}); "
                    f"blocks: {', '.join(f'{v:+.1f}' for v in values)}")

        unit_kib = r["unit_bytes"] / 1024
        return " | ".join([
            f"{r['scenario']}", f"{r['repeats']} × {n}", spread("soak"), spread("baseline"),
            f"{self.per_cycle_kib():+.1f} KiB ({self.per_cycle_kib() / unit_kib:+.1%} of {r['unit']}, "
            f"{unit_kib:.0f} KiB)",
            f"{r['rss_warm_mib']:.0f} → {r['rss_end_mib']:.0f} MiB",
            f"{median(self.seconds('soak')) * 1000:.0f} / {median(self.seconds('baseline')) * 1000:.0f} ms",
        ])


HEADER = ("| scenario | rounds × cycles per block | soak: RSS drift per block, median (min … max) "
          "| baseline (plain generations): drift per block | soak − baseline, per cycle "
          "| RSS after warm-up → end | per call, soak / baseline (median) |\n|---|---|---|---|---|---|---|")


def table(summaries: list[Summary]) -> str:
    return "\n".join([HEADER, *(f"| {s.row()} |" for s in summaries)])


def _child(kind: str, models: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.soak", "--child", kind, "--models", str(models),
               "--cycles", str(args.cycles), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, text=True, timeout=args.timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"soak scenario {kind} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def append_results(path: Path, *, command: str, load_start: str, load_end: str, args: argparse.Namespace,
                   summaries: list[Summary], notes: list[str]) -> None:
    """Append this run as a new section of ``RESULTS.md`` (never rewrites earlier runs)."""
    import peft
    import transformers

    info = host.machine()

    lines = [
        "", f"## {info.date} — memory soak (`bench.soak`), {args.model_size} demo model, 64×64, 1 step", "",
        f"Command: `{command}`", "",
        *(f"- {line}" for line in info.lines()),
        f"- peft {peft.__version__}, transformers {transformers.__version__}",
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}",
        f"- warm-up: {args.warmup} soak cycles and {args.warmup} plain generations per scenario, "
        "each scenario in a fresh interpreter; blocks alternate soak/baseline order from round to round",
        *(f"- note: {note}" for note in notes),
        "", table(summaries), "",
    ]
    with path.open("a") as out:
        out.write("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIOS, action="append",
                        help="run only these (default: all)")
    parser.add_argument("--cycles", type=int, default=30,
                        help="soak cycles per block, made even (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of soak + baseline blocks (default 3)")
    parser.add_argument("--warmup", type=int, default=6,
                        help="warm-up soak cycles and plain generations (default 6)")
    parser.add_argument("--model-size", choices=("tiny", "bench"), default="tiny",
                        help="demo model size (default tiny, as in the unit tests)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append to bench/RESULTS.md (default: yes)")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="results file to append to")
    parser.add_argument("--wait-load", type=float, default=0.0,
                        help="first wait until the 1-minute load average is at most this "
                             "(default 0: do not wait)")
    parser.add_argument("--max-wait-s", type=float, default=900,
                        help="give up waiting for a quiet machine after this")
    parser.add_argument("--timeout-s", type=float, default=1800, help="limit for one scenario's process")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cycles += args.cycles % 2  # a switch block ends on the default model
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = run_scenario(args.child, args.models, cycles=args.cycles, repeats=args.repeats,
                              warmup=args.warmup)
        print(json.dumps(result))
        return 0
    command = ("python -m bench.soak " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    if args.wait_load > 0 and not host.wait_until_quiet(args.wait_load, args.max_wait_s):
        print(f"machine still busy (load {host.loadavg()}): measuring anyway, noted in the results",
              flush=True)
    load_start, started, notes = host.loadavg(), time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="pixelmill-soak-") as tmp:
        models = write_models(Path(tmp), args.model_size)
        summaries = [Summary(_child(kind, models, args)) for kind in args.scenario or SCENARIOS]
    load_end = host.loadavg()
    if max(float(load_start.split()[0]), host.one_minute_load()) > 0.8:
        notes.append("the machine was shared with other workloads during this run (see load averages): "
                     "per-call times are slow and noisy; RSS drift is less affected")
    notes.append(f"run took {time.monotonic() - started:.0f} s")
    print("\n" + table(summaries))
    print(f"\nload average at start {load_start}, at end {load_end}; {notes[-1]}")
    if args.record:
        append_results(args.results, command=command, load_start=load_start, load_end=load_end, args=args,
                       summaries=summaries, notes=notes)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
