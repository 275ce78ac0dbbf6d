"""AOT-compile every paper stage for its TPU pod and print the fit table (`make check-configs`).

    python tools/check_stages.py [--out results.jsonl] [STAGE.yml ...] [key=value ...]

Runs `lwm-train STAGE.yml --check --json` for each stage (default: the 14 `lwm_*.yml` stages) in its
own process, one after another, and prints a Markdown table: per-chip memory (arguments +
temporaries) against v4 HBM, whether it fits, FLOPs per step, the ring hop compiled (`lwm_ring_impl`:
kernels), the HLO collective-permute / tpu_custom_call counts (of which ring hop kernels) and the
compile time. Each stage takes from under a minute to several minutes on a 2-core host; the whole
table takes about an hour there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import maxtext_configs  # pylint: disable=wrong-import-position

GIB = 2**30


def stages() -> list[str]:
  return sorted(p.name for p in maxtext_configs.CONFIG_DIR.glob("lwm_*.yml") if p.name != "lwm_base.yml")


def check(stage: str, overrides: list[str]) -> dict:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "lwm_plugin.train", stage, *overrides, "--check", "--json"],
                        capture_output=True, text=True, check=False, cwd=REPO)
  wall = time.perf_counter() - start
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode not in (0, 1) or not lines:
    return {"config_file": stage, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?",
            "wall_seconds": wall}
  return {**json.loads(lines[-1]), "wall_seconds": wall}


def row(r: dict) -> str:
  name = Path(r["config_file"]).name
  if "stage" not in r:
    return f"| {name} | | | | | | | failed: {r['error']} | |"
  mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
  attention = f"ring ({r['ring_impl']}: {r['ring_hop']} hop)" if r["ring_hop"] else r["attention"]
  if r["compiled"]:
    memory = f"{r['argument_bytes'] / GIB:.2f} + {r['temp_bytes'] / GIB:.2f} = {r['per_chip_bytes'] / GIB:.2f}"
    ring = f" ({r['ring_kernels']} ring)" if r["ring_hop"] else ""
    hlo = f"{r['collective_permutes']} / {r['tpu_custom_calls']}{ring}"
  else:
    memory = f"needs {r['required_bytes'] / GIB:.1f} (compiler: {r['available_bytes'] / GIB:.2f} available)"
    hlo = "-"
  return (f"| {name} | {r['topology']} | {mesh} | {attention} | {r['sequences_per_step']} x {r['seq_len']} | "
          f"{memory} | {'yes' if r['fits'] else '**no**'} | {r['model_flops_per_step']:.3e} | {hlo} | "
          f"{r['compile_seconds']:.0f} s |")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", help="also append each stage's JSON report to this file")
  parser.add_argument("args", nargs="*", metavar="STAGE.yml | key=value",
                      help="stage YAMLs (default: every lwm_*.yml stage) and overrides for all of them")
  args = parser.parse_args()
  chosen = [a for a in args.args if a.endswith(".yml")]
  overrides = [a for a in args.args if not a.endswith(".yml")]
  print("| stage | pod | mesh | attention | sequences x tokens | per chip GiB (args + temps) | fits 32 GiB | "
        "FLOPs / step | HLO permutes / tpu_custom_call | compile |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  ok = True
  for stage in chosen or stages():
    result = check(stage, overrides)
    ok &= bool(result.get("fits"))
    if args.out:
      with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(row(result), flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
