"""The Triton signal kernels compiled to GPU machine code without a GPU: registers, spills and what one loop iteration
of the forward kernel executes (from the SASS that Triton's bundled ptxas and cuobjdump produce).

    python bench/triton_sass.py                          # rlif's kernels at FORWARD_LAUNCH and nearby launch shapes
    python bench/triton_sass.py --kernels OLD.py         # another version, e.g. git show REV:src/rlif/triton_signals.py > OLD.py
    python bench/triton_sass.py --json                   # machine-readable (tests/test_triton_signals.py reads it)

Arguments are specialized as Triton's launcher does for the Qwen2.5 vocabulary (aligned pointers, row stride and
vocabulary size divisible by 16, so loads can be vectorized). A loop iteration reduces BLOCK logits per row program; "per logit" divides the iteration's instructions by the logits
each thread handles (BLOCK / (32 x warps)). Barriers (BAR) and warp shuffles (SHFL) inside the loop are reductions
across the program's threads, which stall every iteration. Needs `pip install triton` (its NVIDIA toolchain), not a GPU.
Run without TRITON_INTERPRET set.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CAPABILITIES = (80, 90)  # A100, H100/H200


def load_kernels(path: Path | None):
    """(module, forward kernel, backward kernel) of rlif.signals.triton_kernels or of a file holding another version of it."""
    if path is None:
        from rlif import triton_signals as module
    else:
        spec = importlib.util.spec_from_file_location("triton_signals_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    forward, backward = module._kernels()
    return module, forward, backward


def compile_kernel(kernel, constants: dict, capability: int, warps: int) -> bytes:
    """The cubin of `kernel` for sm_`capability`, its pointer arguments typed for bf16 logits."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = {"row_stride": "i64", "vocab": "i32", "inv_t": "fp32", "log_vocab": "fp32", "targets_ptr": "*i64", "logits_ptr": "*bf16"}
    signature, aligned = {}, {}
    for index, name in enumerate(inspect.signature(kernel.fn).parameters):
        signature[name] = "constexpr" if name in constants else types.get(name, "*fp32" if name.endswith("_ptr") else "fp32")
        if name.endswith("_ptr") or name in ("row_stride", "vocab"):
            # What Triton's launcher assumes at V = 151,936: 16-byte aligned pointers, strides and sizes divisible by 16.
            aligned[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned),
                              target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})
    return compiled.asm["cubin"]


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as file:
        file.write(cubin)
    try:
        return subprocess.run([str(tool), *flags, file.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(file.name)


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and local memory (spills) in bytes."""
    line = next(line for line in _cuobjdump(cubin, "--dump-resource-usage").splitlines() if "REG:" in line)
    return {"registers": int(re.search(r"REG:(\d+)", line).group(1)), "local_bytes": int(re.search(r"LOCAL:(\d+)", line).group(1))}


def loop_stats(cubin: bytes) -> dict | None:
    """Instructions, barriers, shuffles, global loads and exp2s in the body of the kernel's loop (its backward branch)."""
    instructions = []
    for line in _cuobjdump(cubin, "-sass").splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if match:
            instructions.append((int(match.group(1), 16), match.group(2)))
    for address, text in instructions:
        target = re.search(r"BRA.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            body = [t for a, t in instructions if int(target.group(1), 16) <= a <= address]
            count = lambda op: sum(op in t for t in body)  # noqa: E731
            return {"instructions": len(body), "barriers": count("BAR"), "shuffles": count("SHFL"), "loads": count("LDG"), "exp2": count("EX2")}
    return None


def report(path: Path | None, launches: list[tuple[int, int]]) -> list[dict]:
    module, forward, backward = load_kernels(path)
    parameters = inspect.signature(forward.fn).parameters
    rows = []
    for capability in CAPABILITIES:
        for block, warps in launches:
            for with_signals, tempered in [(True, False), (True, True), (False, True), (False, False)]:
                constants = {"WITH_SIGNALS": with_signals, "TEMPERED": tempered, "BLOCK": block}
                if "NEED_REST" in parameters:
                    constants["NEED_REST"] = with_signals or not tempered
                cubin = compile_kernel(forward, constants, capability, warps)
                loop = loop_stats(cubin)
                per_thread = block // (32 * warps)
                rows.append({"kernel": "forward", "sm": capability, "block": block, "warps": warps, "signals": with_signals,
                             "tempered": tempered, **resource_usage(cubin), "loop": loop,
                             "instructions_per_logit": None if loop is None or per_thread == 0 else round(loop["instructions"] / per_thread, 1)})
        cubin = compile_kernel(backward, {"BLOCK": 4096}, capability, 4)
        rows.append({"kernel": "backward", "sm": capability, "block": 4096, "warps": 4, **resource_usage(cubin)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=Path, default=None, help="a file with another version of rlif/triton_signals.py")
    parser.add_argument("--launch", default=None, help="BLOCKxWARPS[,BLOCKxWARPS...] (default: FORWARD_LAUNCH and nearby shapes)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):
        parser.error("unset TRITON_INTERPRET: this compiles the kernels")
    if args.launch:
        launches = [tuple(int(x) for x in item.split("x")) for item in args.launch.split(",")]
    else:
        module = load_kernels(args.kernels)[0]
        default = getattr(module, "FORWARD_LAUNCH", (4096, 4))
        launches = list(dict.fromkeys([tuple(default), (1024, 4), (4096, 8)]))
    rows = report(args.kernels, launches)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'kernel':8} {'sm':>3} {'launch':>9} {'signals':>7} {'T!=1':>5} {'regs':>4} {'spill B':>7} "
          f"{'loop instrs':>11} {'per logit':>9} {'BAR':>3} {'SHFL':>4} {'LDG':>3} {'EX2':>3}")
    for row in rows:
        loop = row.get("loop") or {}
        print(f"{row['kernel']:8} {row['sm']:>3} {row['block']:>5}x{row['warps']:<3} {str(row.get('signals', '')):>7} "
              f"{str(row.get('tempered', '')):>5} {row['registers']:>4} {row['local_bytes']:>7} {loop.get('instructions', ''):>11} "
              f"{row.get('instructions_per_logit') or '':>9} {loop.get('barriers', ''):>3} {loop.get('shuffles', ''):>4} "
              f"{loop.get('loads', ''):>3} {loop.get('exp2', ''):>3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
