"""``fastgen compile-gate``: the command line of the gate (see the package docstring)."""
import argparse
import os
import subprocess
import sys

from fastgen.compile_gate.compiling import ARCHS, RESULTS, run
from fastgen.compile_gate.configurations import FAMILIES
from fastgen.compile_gate.results import KNOWN, identity, load_known, mark_known, summary, write, write_known


def _interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def main(argv=None):
    import fastgen.compile_gate as package
    parser = argparse.ArgumentParser(prog="fastgen compile-gate", description=package.__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    parser.add_argument("--out", default=RESULTS, help=f"where the table goes (default {RESULTS}); '' for none")
    parser.add_argument("--quick", action="store_true", help="one small configuration per kernel, first config only")
    parser.add_argument("--full", action="store_true", help="every conv shape too (~2800 compiles; default: what CI runs)")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count)")
    parser.add_argument("--family", default="", help=f"comma-separated subset of {', '.join(FAMILIES)}")
    parser.add_argument("--known", default=KNOWN, help="the known failures (default: benchmarks/results/compile/"
                        "known_failures.json): only failures not listed there fail the gate; '' for none (strict)")
    parser.add_argument("--update-known", action="store_true", help="add this run's failures to the known list")


def cmd(args):
    try:
        archs = [int(a) for a in args.arch.split(",") if a]
        families = [f for f in args.family.split(",") if f] or None
        if any(a not in ARCHS for a in archs) or (families and any(f not in FAMILIES for f in families)):
            raise ValueError
    except ValueError:
        print(f"--arch takes {', '.join(map(str, ARCHS))}; --family takes {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    if _interpreted():        # the kernels would be interpreter objects: compile in a clean process
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = ["--arch", args.arch, "--out", args.out, "--family", args.family] + (["--quick"] if args.quick else [])
        argv += ["--full"] if args.full else []
        argv += ["--known", args.known] + (["--update-known"] if args.update_known else [])
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        return subprocess.run([sys.executable, "-m", "fastgen.compile_gate", *argv], env=env).returncode
    command = "fastgen compile-gate " + " ".join(
        [f"--arch {args.arch}"] + (["--quick"] if args.quick else []) + (["--full"] if args.full else [])
        + ([f"--family {args.family}"] if args.family else []))
    rows, seconds = run(archs, args.quick, args.jobs, families, args.full)
    known = load_known(args.known)
    if args.update_known:
        write_known(mark_known(rows, known), args.known or KNOWN, known)
        print(f"wrote {args.known or KNOWN}")
        known = load_known(args.known or KNOWN)
    new = mark_known(rows, known)
    failed = [r for r in rows if r["failures"]]
    if args.out:
        print(f"wrote {write(rows, seconds, args.out, command)}.md / .json")
    for s in summary(rows):
        print(f"  {s['kernel']:<28} {s['arch']}  {s['compiles']:>3} compiles  max {s['max_registers']} regs  "
              f"spills {s['max_spill_bytes']} B  stack {s['max_stack']} B  shared {s['max_shared']} B  "
              f"min {s['min_warps_per_sm']} warps/SM" + (f"  failing: {s['failures']}" if s["failures"] else ""))
    for r in new:
        print(f"NEW FAILURE: {identity(r)}: {', '.join(r['failures'])}" + (f"\n{r['error']}" if r["error"] else ""))
    print(f"compile gate: {len(rows)} compiles in {seconds:.0f} s, {len(failed)} failing, "
          f"{len(failed) - len(new)} of them known ({args.known or 'no list'}), {len(new)} new")
    return 1 if new else 0
