"""`make demo`: train the tiny LWM config on this CPU machine and print its losses.

This is the foundation-stage demo: one `lwm-train` run of `maxtext_configs/tiny_cpu.yml` for a few
steps (synthetic data), with the per-step losses printed as a table. Output: `demo_output/`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("demo_output")


def main() -> int:
  OUT.mkdir(exist_ok=True)
  metrics = OUT / "tiny_cpu_metrics.jsonl"
  metrics.unlink(missing_ok=True)
  cmd = [sys.executable, "-m", "lwm_plugin.train", "tiny_cpu.yml", "steps=20", f"base_output_directory={OUT.resolve()}",
         "run_name=tiny_cpu", f"metrics_file={metrics.resolve()}"]
  print("demo: training the tiny LWM model on CPU:", " ".join(cmd[2:]), flush=True)
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    print(proc.stderr[-8000:], file=sys.stderr)
    print(f"demo: lwm-train failed with exit code {proc.returncode}", file=sys.stderr)
    return proc.returncode
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  print(f"{'step':>5} {'loss':>8} {'tokens/s':>10}")
  for row in rows:
    print(f"{int(row['step']):>5} {row['learning/loss']:>8.4f} {row['perf/per_device_tokens_per_sec']:>10.0f}")
  print(f"demo: {len(rows)} steps, loss {rows[0]['learning/loss']:.3f} -> {rows[-1]['learning/loss']:.3f}, "
        f"{time.time() - start:.1f} s wall; metrics in {metrics}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
