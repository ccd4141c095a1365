"""The command line: `python -m gradxform demo [--out DIR] [--quick]`, `--version`; installed,
also the `gradxform` command."""

from __future__ import annotations

import argparse
import os
import sys

import gradxform


def _program_name() -> str:
    """How the user called it: `python -m gradxform`, or the name of the installed command."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name == "gradxform.__main__":
        return "python -m gradxform"
    name = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    return name if name.startswith("gradxform") else "python -m gradxform"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="gradxform: composable gradient transformations for JAX.",
    )
    parser.add_argument("--version", action="version", version=f"gradxform {gradxform.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the classic optimizer experiments (Rosenbrock, XOR MLP, Adam + L2 vs "
             "AdamW, warmup), print the tables, write the figures",
        description="Runs compact versions of the notebooks in notebooks/: SGD, momentum, "
                    "RMSprop and Adam on the Rosenbrock function from (-0.5, 0.5), 500 steps "
                    "(a numpy comparison's numbers reproduced) with the other classics beside "
                    "them, the XOR MLP trained with each optimizer, Adam + L2 vs AdamW on noisy "
                    "features, and every learning-rate schedule with a run showing what warmup "
                    "does. Prints a comparison table for each and writes the figures as PNG "
                    "files.",
    )
    demo.add_argument("--out", metavar="DIR", default=None,
                      help="directory for the PNG figures (default: demo_output)")
    demo.add_argument("--quick", action="store_true",
                      help="shorter XOR, noisy-features and warmup runs")
    demo.add_argument("--no-plots", action="store_true", help="print the tables only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # The experiments are small: the CPU answers faster than starting an accelerator.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gradxform.demo import cli

    cli.run(cli.DEFAULT_OUT if args.out is None else args.out, quick=args.quick,
             plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
