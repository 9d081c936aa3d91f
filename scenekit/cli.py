"""The `scenekit` command: one verb per task, each with `--help` that explains every option and its default.

Conventions (DESIGN.md): `scenekit <verb> [options]`, `--device auto|cpu|cuda`, `--seed`, `--out DIR`,
`--json` for machine-readable output, one-line errors and a non-zero exit code on bad input.
Each verb's parser is built by an `add_<verb>_parser(subparsers)` function below and run by `run_<verb>(args)`;
the work itself lives in the library, the CLI only parses, calls and prints.
"""

from __future__ import annotations

import argparse
import sys

from scenekit.errors import ScenekitError


def _formatter(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


# ---------------------------------------------------------------------------------------------------- demo
def add_demo_parser(sub):
    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded world", formatter_class=_formatter)
    p.add_argument("--out", default="demo_out", help="folder for the demo's tables and pictures")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_demo)


def run_demo(args):
    from scenekit.demo import run_demo as demo

    demo(out=args.out, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------------------- main
PARSERS = [add_demo_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenekit", description="Visual scene understanding: detection, segmentation, captioning, VQA.",
        formatter_class=_formatter)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ScenekitError, FileNotFoundError, PermissionError) as error:
        print(f"scenekit {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scenekit {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
