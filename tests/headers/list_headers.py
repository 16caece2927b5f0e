#!/usr/bin/env python3
"""List the public headers of fleetdl for the header self-containment check.

    list_headers.py INCLUDE_DIR
        Print every *.hpp under INCLUDE_DIR/fleetdl, relative to INCLUDE_DIR,
        one per line, sorted (run by Meson at configure time).

    list_headers.py INCLUDE_DIR --check EXPECTED_FILE --stamp STAMP
        Build-time guard: fail when the headers on disk differ from the list
        Meson configured with (a header was added or removed without a
        reconfigure, so it would silently go unchecked). Writes STAMP on success.

This directory walk is the one deliberate glob of the build: new headers must be
checked without anyone editing a build file.
"""
import argparse
import pathlib
import sys


def public_headers(include_dir: pathlib.Path) -> list[str]:
    root = include_dir / "fleetdl"
    return sorted(p.relative_to(include_dir).as_posix()
                  for p in root.rglob("*.hpp") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("include_dir", type=pathlib.Path)
    ap.add_argument("--check", type=pathlib.Path, metavar="EXPECTED_FILE")
    ap.add_argument("--stamp", type=pathlib.Path)
    args = ap.parse_args()

    found = public_headers(args.include_dir)
    if args.check is None:
        sys.stdout.write("".join(h + "\n" for h in found))
        return 0

    expected = [l for l in args.check.read_text().splitlines() if l]
    if found != expected:
        added = sorted(set(found) - set(expected))
        removed = sorted(set(expected) - set(found))
        print("fleetdl: the public headers changed since this build directory was configured",
              file=sys.stderr)
        for h in added:
            print(f"  added:   include/{h}", file=sys.stderr)
        for h in removed:
            print(f"  removed: include/{h}", file=sys.stderr)
        print("so the header self-containment check is out of date. Run:\n"
              "  meson setup --reconfigure <builddir>\n"
              "(tools/run-tests.sh does this for you).", file=sys.stderr)
        return 1
    if args.stamp is not None:
        args.stamp.write_text("".join(h + "\n" for h in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
