#!/usr/bin/env python3
"""The order the linker lays out wasmgate's functions in: the ones a running
gateway executes first, together, so that they share pages.

Why: the kernel maps a binary's code 64 KiB at a time around each page a
process touches (fault-around). Left to itself the linker scatters the ~1.3 MB
of code that start-up, a message and idling execute over the whole 5 MB of
text, so nearly all of it ends up resident: 5.5-5.6 MiB of the 9.0-9.1 MiB
idle RSS (BENCHMARKS.md section 10). Laid out together, 2.9-3.1 MiB.

Two steps, because symbol names carry hashes that change with the target,
the profile, the toolchain and Cargo.lock:

  from-callgrind OUT... --binary BIN   the functions of BIN that callgrind
      saw run, with their hashes taken out: the committed list
      (gateway/link-order.txt, made by bench/link-order.sh).
  resolve LIST BIN [--nm NM] [--min-match F]
      the symbols of BIN (built unstripped) whose names, hashes taken out,
      are in LIST: an lld --symbol-ordering-file. Fails if fewer than F of
      the list's names are found (the list is stale: regenerate it).

Stdlib only.
"""

import argparse
import re
import subprocess
import sys

# Legacy Rust mangling ends in a 16-hex-digit hash; v0 names each crate with
# a disambiguator (Cs<base62>_); LTO gives locals a .<n> or .llvm.<n> suffix;
# callgrind marks recursion levels with '<n>.
LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E")
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]+_")
LLVM_SUFFIX = re.compile(r"\.(llvm\.)?\d+$")
RECURSION = re.compile(r"'\d+$")
COMPRESSED = re.compile(r"^\((\d+)\)(?: (.*))?$")


def key(symbol):
    """A symbol's name without what changes from build to build."""
    symbol = RECURSION.sub("", symbol)
    symbol = LLVM_SUFFIX.sub("", symbol)
    symbol = LEGACY_HASH.sub("E", symbol)
    return V0_CRATE.sub("Cs_", symbol)


def text_symbols(binary, nm):
    """(name, size) of the functions defined in BINARY, in address order."""
    out = subprocess.run(
        [nm, "--defined-only", "--numeric-sort", "--print-size", binary],
        check=True, capture_output=True, text=True,
    ).stdout
    symbols = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            symbols.append((parts[3], int(parts[1], 16)))
    return symbols


def functions_run(lines, obj_suffix):
    """Names of the functions of the object whose path ends in OBJ_SUFFIX
    that a callgrind output (LINES) saw run."""
    ran, names, obj = set(), {}, None
    for line in lines:
        # Callgrind names an object or function in full once, as "(id) name"
        # (in an ob=/fn= line or a callee's cob=/cfn= line), and by "(id)"
        # after that; --compress-strings=no writes names only.
        field, _, rest = line.partition("=")
        if field not in ("ob", "cob", "fn", "cfn"):
            continue
        kind, rest = field[-2:], rest.strip()
        m = COMPRESSED.match(rest)
        if m and m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        name = names.get((kind, m.group(1)), "") if m else rest
        if field == "ob":
            obj = name
        elif field == "fn" and obj and obj.endswith(obj_suffix):
            ran.add(RECURSION.sub("", name))
    return ran


def hash_free_list(ran, symbols):
    """{key: sizes} of the functions in RAN, from SYMBOLS [(name, size)]."""
    listed = {}
    for name, size in symbols:
        if name in ran:
            listed.setdefault(key(name), set()).add(size)
    return listed


def ordering(wanted, symbols):
    """The symbols (names) of one build to lay out first, and how many of the
    WANTED [(key, sizes)] were found, from its SYMBOLS [(name, size)]."""
    by_key = {}
    for name, size in symbols:
        by_key.setdefault(key(name), []).append((name, size))
    found = [(by_key[k], sizes) for k, sizes in wanted if k in by_key]
    # Generic instances differ only in their hash. In a build like the one
    # the list came from (same target and profile: nearly every function
    # has a size from the list), the sizes pick out the instances that ran.
    # In another build sizes match only by chance, and a chance match would
    # leave out the instance that runs: lay out every instance.
    sized = sum(1 for candidates, sizes in found if any(c[1] in sizes for c in candidates))
    by_size = bool(found) and sized >= 0.9 * len(found)
    names = []
    for candidates, sizes in found:
        same_size = [c for c in candidates if c[1] in sizes] if by_size else []
        names += [name for name, _ in same_size or candidates]
    return names, len(found)


def from_callgrind(args):
    symbols = text_symbols(args.binary, args.nm)
    if not symbols:
        sys.exit(f"link-order: {args.binary} has no symbols (build it with strip = false)")
    ran = set()
    for path in args.callgrind:
        with open(path) as f:
            ran |= functions_run(f, "/" + args.object)
    listed = hash_free_list(ran, symbols)
    if not listed:
        sys.exit("link-order: callgrind saw none of the binary's functions run "
                 "(was it run with --demangle=no, on this binary?)")
    for k in sorted(listed):
        print(k, *sorted(listed[k]))
    print(f"link-order: {len(listed)} functions ran", file=sys.stderr)


def resolve(args):
    wanted = []
    with open(args.list) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                k, *sizes = line.split()
                wanted.append((k, {int(s) for s in sizes}))
    symbols = text_symbols(args.binary, args.nm)
    if not symbols:
        sys.exit(f"link-order: {args.binary} has no symbols (link it with -C strip=none)")
    names, found = ordering(wanted, symbols)
    for name in names:
        print(name)
    share = found / len(wanted) if wanted else 0.0
    print(f"link-order: {found} of {len(wanted)} functions of {args.list} found "
          f"in {args.binary} ({share:.0%})", file=sys.stderr)
    if share < args.min_match:
        sys.exit(f"link-order: fewer than {args.min_match:.0%} found: the list is stale; "
                 "regenerate it with bench/link-order.sh")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("from-callgrind", help="the committed list, from callgrind runs")
    g.add_argument("callgrind", nargs="+", help="callgrind.out files (--demangle=no)")
    g.add_argument("--binary", required=True, help="the unstripped binary callgrind ran")
    g.add_argument("--object", default="wasmgate", help="its file name in callgrind's ob= lines")
    g.add_argument("--nm", default="nm")
    r = sub.add_parser("resolve", help="an lld --symbol-ordering-file for one build")
    r.add_argument("list")
    r.add_argument("binary", help="the build, unstripped")
    r.add_argument("--nm", default="nm")
    r.add_argument("--min-match", type=float, default=0.0,
                   help="fail if a smaller share of the list is found (0 to 1)")
    args = p.parse_args()
    {"from-callgrind": from_callgrind, "resolve": resolve}[args.cmd](args)


if __name__ == "__main__":
    main()
