"""Argument parsing and the one function that turns exceptions into exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from edgekit import faults
from edgekit.console import Console, route_library_logs, unroute_library_logs
from edgekit.errors import EdgekitError

DESCRIPTION = """\
edgekit turns a trained PyTorch model into verified deployment artifacts, one per target profile
(ONNX Runtime FP32/INT8, torch.ao INT8, TensorRT), and measures each on its own backend: error against
the FP32 reference, latency, size, with pass/fail gates.

Exit codes: 0 all done and every gate passed; 1 a gate failed or a target errored (artifacts written,
marked failed); 2 bad input or usage (one message, nothing written); 3 a target cannot run here and
--strict was given.
"""


# Commands that live in their own module under edgekit/cli/: each defines `add_parser(sub)`, which adds
# its subparser and sets `run=<function(args, console) -> int>` as the parser's default.
COMMAND_MODULES: tuple[str, ...] = ("edgekit.cli.bundle", "edgekit.cli.debug", "edgekit.cli.fleet")

# torch's OpenMP workers sleep when idle instead of spin-waiting, as ONNX Runtime's do (backends/onnx/session.py):
# the validator times runners in turns in one process, and on a busy host a spinning worker stalls the next runner
# by milliseconds (docs/gates.md, "How latency is timed"). Read once, when torch is first imported, which the command
# line does only after this; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are exit 2 with one line, like every bad input
        raise EdgekitError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    # --debug and -q work before or after the subcommand (`edgekit build cfg.toml -q`).
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress or notes, only results and errors")
    p = _Parser(prog="edgekit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    d = sub.add_parser("demo", help="build and validate every target for the bundled digits CNN",
                       description="Run the whole pipeline on the bundled example (a small CNN trained on the 8x8 "
                       "digits data, weights in the package) for every built-in target, and print the target table.")
    d.add_argument("-o", "--out", type=Path, default=Path("edgekit-demo"), help="output directory (default: ./edgekit-demo)")
    d.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")

    b = sub.add_parser("build", help="build and validate the targets a config file names",
                       description="Load the model a CONFIG.toml describes, compress it, export and simplify it to "
                       "ONNX, build every target in [targets] use, validate each artifact on its own backend, and "
                       "write artifacts, manifest.json, report.md and report.html to the output directory.")
    b.add_argument("config", type=Path, metavar="CONFIG.toml")
    b.add_argument("-o", "--out", type=Path, default=Path("dist"), help="output directory (default: ./dist)")
    b.add_argument("--target", action="append", default=[], metavar="NAME", help="build only this target of the config (repeatable)")
    b.add_argument("--jobs", type=int, default=1, metavar="N", help="build targets in N worker processes (artifacts byte-identical to --jobs 1; a build with [[compress]] builds one at a time)")
    b.add_argument("--no-validate", action="store_true", help="build artifacts without measuring them")
    b.add_argument("--strict", action="store_true", help="exit 3 before any work if a target cannot run on this host")
    b.add_argument("--calibration-cache", metavar="DIR", help="keep the INT8 calibration statistics in DIR, keyed by "
                   "the graph, the calibration data and settings: the INT8 targets of one build and later builds of "
                   "the same inputs reuse them, verified by sha256 (artifacts byte-identical); 'none' disables "
                   "(default: [calibration] cache, else $EDGEKIT_CALIBRATION_CACHE, else "
                   "$XDG_CACHE_HOME/edgekit/calibration or ~/.cache/edgekit/calibration; docs/data.md)")
    b.add_argument("--weights-key", metavar="KEY", help="the key of the training checkpoint dict ([model] weights) that "
                   "holds the state_dict, e.g. model or ema (overrides [model] weights_key)")

    v = sub.add_parser("validate", help="re-check an output directory: sha256 first, then re-measure",
                       description="Check that every artifact in DIR still has the sha256 its manifest vouches for "
                       "(a tampered file is an error), then re-run the validator against the ONNX reference in DIR and rewrite manifest "
                       "and reports (report.md, report.html). Code named by the manifest is run only with --against-torch.")
    v.add_argument("dir", type=Path, metavar="DIR")
    v.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    v.add_argument("--data", type=Path, metavar="PATH", help="validate on this data instead of the config's [validation] "
                   "data; recorded in DIR/validations/<name>-<hash>/, beside the build's own record")
    v.add_argument("--against-torch", action="store_true", help="also re-run the torch model the manifest's config names "
                   "(imports and runs that Python file; by default only the ONNX reference inside DIR is used)")
    v.add_argument("--device-report", type=Path, metavar="FILE", help="merge a device-report.json (from verify.py on the device) into the manifest and report, instead of re-measuring")

    t = sub.add_parser("targets", help="list the built-in target profiles; `targets show NAME` prints one",
                       description="List built-in target profiles, or print one resolved profile and whether it runs "
                       "here. `targets show NAME --write FILE.toml` writes it as a profile file to edit and pass back "
                       "with [targets.NAME] profile = \"FILE.toml\".")
    t.add_argument("action", nargs="?", choices=["show"], help="show one profile")
    t.add_argument("name", nargs="?", help="the profile to show")
    t.add_argument("--json", action="store_true", help="print only JSON: the resolved profile and 'available_here'")
    t.add_argument("-o", "--write", type=Path, metavar="FILE.toml", help="write the resolved profile as an editable TOML profile file")

    i = sub.add_parser("inspect", help="describe a model: inputs, outputs, ops, params, size, opset",
                       description="Describe an ONNX file, or a torch model given as file.py:factory / module:factory / "
                       "example:NAME: its inputs, outputs, operator counts, parameter count, size and opset.")
    i.add_argument("model", metavar="MODEL")

    c = sub.add_parser("compare", help="run the same inputs through two ONNX models; print their error table",
                       description="Feed MODEL_A and MODEL_B (e.g. reference/model.onnx and an INT8 artifact) the same "
                       "inputs — the samples in --data, or seeded random inputs — and print MSE, max abs error, cosine "
                       "and SQNR of B against A for every output they share.")
    c.add_argument("model_a", type=Path, metavar="MODEL_A")
    c.add_argument("model_b", type=Path, metavar="MODEL_B")
    c.add_argument("--data", type=Path, metavar="PATH", help=".npz or folder of .npy/.npz inputs keyed by input name")

    r = sub.add_parser("report", help="re-render report.md and report.html of an output directory",
                       description="Re-render report.md and report.html from DIR/manifest.json (build and validate write "
                       "both already) and print the target table. report.html is one offline page: the tables, the gate "
                       "verdicts and plots of accuracy against latency, per-sample error, per-layer sensitivity "
                       "(DIR/<target>/debug.json) and recovery attempts.")
    r.add_argument("dir", type=Path, metavar="DIR")
    r.add_argument("--html", action="store_true", help="accepted for older scripts: report.html is always written")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. User errors print one line; --debug adds the traceback."""
    entry = argv is None  # the process's own command line: the process ends when main returns
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    console = Console(quiet="-q" in argv or "--quiet" in argv)
    library = route_library_logs(debug)  # library warnings counted, not printed mid-table
    handlers = faults.install()  # SIGINT/SIGTERM raise, so the build cleans up; restored when main returns
    try:
        code = _run(argv, console, debug)
    finally:
        faults.restore(handlers, exiting=entry)
        unroute_library_logs(library)
    if library is not None and library.summary():
        console.note(library.summary())
    if entry and code in (130, 143):
        faults.exit_now(code)  # CPython may still die by SIGINT at exit after a caught Ctrl-C: end with our code
    return code


def _run(argv: list[str], console: Console, debug: bool) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            _parser().print_help()
            return 2
        if hasattr(args, "run"):
            return args.run(args, console)
        from edgekit.cli import commands

        return getattr(commands, f"cmd_{args.command}")(args, console)
    except KeyboardInterrupt as exc:  # Ctrl-C (130) or SIGTERM (faults.Terminated, 143)
        return _interrupted(exc, console)
    except EdgekitError as exc:
        if (interrupt := faults.interrupted_by(exc)) is not None:  # a library turned Ctrl-C into an error we wrapped
            return _interrupted(interrupt, console)
        if debug:
            traceback.print_exc()
        console.error(str(exc))
        return exc.exit_code
    except Exception as exc:  # a bug in edgekit: still one line, with the way to see more
        if (interrupt := faults.interrupted_by(exc)) is not None:  # a library turned Ctrl-C into its own error
            return _interrupted(interrupt, console)
        fault = faults.write_fault(exc, Path(getattr(exc, "filename", None) or Path.cwd()))
        if fault is not None:  # a full disk or read-only folder met outside a build (report, targets --write)
            console.error(str(fault))
            return fault.exit_code
        if debug:
            traceback.print_exc()
        console.error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback, and report it)")
        return 70


def _interrupted(exc: KeyboardInterrupt, console: Console) -> int:
    console.error(f"{'terminated' if isinstance(exc, faults.Terminated) else 'interrupted'}; nothing half-written was kept")
    return getattr(exc, "exit_code", 130)
