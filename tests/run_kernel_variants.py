"""Run the `kernels` tests once more under each CPU kernel set this machine has, other than the one just used.

PyTorch picks its vectorised CPU kernels (`ATEN_CPU_CAPABILITY`: default, avx2, avx512) from the CPU, and their
float sums round differently. A test that asserts the outcome of a training run (marked `kernels` in
tests/conftest.py) must hold on every one, so `make test`, after the whole suite, runs those tests again under
each capability that /proc/cpuinfo says the CPU supports and that the suite did not use:

    python tests/run_kernel_variants.py [pytest arguments, default: the files conftest.KERNELS names]

It runs every variant, prints one line per capability, and exits non-zero naming the ones that failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# What each capability needs from the CPU, as torch's at::cpu::is_cpu_support_avx2 / _avx512 test it
# (aten/src/ATen/cpu/Utils.cpp): kernels a CPU lacks must not be asked for.
NEEDS = {"default": set(), "avx2": {"avx2"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The x86 feature flags of the first CPU in `cpuinfo` (empty where there is no such file or line)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def supported_capabilities(flags: set[str]) -> list[str]:
    """The ATEN_CPU_CAPABILITY values a CPU with `flags` can run, in NEEDS's order."""
    return [name for name, needed in NEEDS.items() if needed <= flags]


def capability_in_use() -> str:
    """The capability this environment gives torch: ATEN_CPU_CAPABILITY if set, else what torch picked."""
    import torch

    return torch.backends.cpu.get_cpu_capability().lower()


def kernel_test_files() -> list[str]:
    """The test files that hold the `kernels` tests (collecting only them saves collecting the whole suite)."""
    tests = Path(__file__).resolve().parent
    sys.path.insert(0, str(tests))
    from conftest import KERNELS

    return sorted({str(tests.parent / key.split("::")[0]) for key in KERNELS})


def main(argv: list[str]) -> int:
    used = capability_in_use()
    variants = [c for c in supported_capabilities(cpu_flags()) if c != used]
    print(f"kernel variants: the suite ran on {used}; `-m kernels` again under {', '.join(variants) or 'none'}",
          flush=True)
    command = [sys.executable, "-m", "pytest", "-q", "-m", "kernels", *(argv or kernel_test_files())]
    failed = []
    for capability in variants:
        started = time.perf_counter()
        code = subprocess.call(command, env={**os.environ, "ATEN_CPU_CAPABILITY": capability})
        seconds = time.perf_counter() - started
        # Exit code 5: nothing selected, so the marker list in conftest.py no longer names a test.
        outcome = "passed" if code == 0 else "no test selected" if code == 5 else f"FAILED (exit code {code})"
        print(f"kernel variant ATEN_CPU_CAPABILITY={capability}: {outcome} in {seconds:.0f} s", flush=True)
        if code != 0:
            failed.append(capability)
    if failed:
        print(f"kernel variants failed: ATEN_CPU_CAPABILITY={', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
