"""The ``ferroquant`` command line. Each subcommand lives in its own module and registers
itself through :data:`COMMANDS`; this module only parses and dispatches."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from . import __version__

# name -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ferroquant.commands.inspect", "show a GGUF file's metadata and tensors"),
    "run": ("ferroquant.commands.run", "generate text from a GGUF model on the CPU"),
    "bench": ("ferroquant.commands.bench", "prompt and generation tokens/s of a GGUF model"),
    "eval": ("ferroquant.commands.eval", "perplexity, KL divergence and top-1 agreement"),
    "convert": ("ferroquant.commands.convert", "convert a Hugging Face checkpoint to GGUF"),
    "export-hf": (
        "ferroquant.commands.export_hf",
        "convert a GGUF model to a Hugging Face checkpoint",
    ),
    "quantize": ("ferroquant.commands.quantize", "quantize a model (requantize a GGUF file)"),
    "imatrix": ("ferroquant.commands.imatrix", "compute an importance matrix (llama.cpp format)"),
    "compare": (
        "ferroquant.commands.compare",
        "quantize with several methods/types, evaluate all, report size vs KL divergence",
    ),
}


class CliError(Exception):
    """An error to report to the user in one line, without a traceback."""


def _load(module_name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]:
    import importlib

    module = importlib.import_module(module_name)
    return module.add_arguments, module.run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferroquant", description="Post-training quantization of LLMs to GGUF and friends."
    )
    parser.add_argument("--version", action="version", version=f"ferroquant {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        add_arguments, _ = _load(module_name)
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    _, run = _load(COMMANDS[args.command][0])
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError) as err:
        print(f"ferroquant {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
