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
from lwm_plugin.integration.aot_report import TABLE_HEADER, table_row  # pylint: disable=wrong-import-position


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


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", help="also append each stage's JSON report to this file")
  parser.add_argument("args", nargs="*", metavar="STAGE.yml | key=value",
                      help="stage YAMLs (default: every lwm_*.yml stage) and overrides for all of them")
  args = parser.parse_args()
  chosen = [a for a in args.args if a.endswith(".yml")]
  overrides = [a for a in args.args if not a.endswith(".yml")]
  print("\n".join(TABLE_HEADER))
  ok = True
  for stage in chosen or stages():
    result = check(stage, overrides)
    ok &= bool(result.get("fits"))
    if args.out:
      with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(table_row(result), flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
