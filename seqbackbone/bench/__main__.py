"""`python -m seqbackbone.bench kernels|cpu-scan|cpu-decode|models|decode [args]`: runs that benchmark module."""

import importlib
import sys

MODULES = {
    "kernels": "kernels", "cpu-scan": "cpu_scan", "cpu-decode": "cpu_decode", "models": "models", "decode": "decode"
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODULES:
        print(f"usage: python -m seqbackbone.bench {{{'|'.join(MODULES)}}} [args]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"seqbackbone.bench.{MODULES[argv[0]]}")
    sys.argv = [f"python -m seqbackbone.bench {argv[0]}", *argv[1:]]
    result = module.main(argv[1:])
    return result if isinstance(result, int) else 0


raise SystemExit(main(sys.argv[1:]))
