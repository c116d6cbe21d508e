#!/usr/bin/env python3
"""Self cost (Ir) of a callgrind dump grouped by crate or library, roughly.

    python3 loadtest/bench/by-crate.py callgrind.out.rw-proxy-GET [REQUESTS]

A function goes to the first crate other than core/alloc/std named in its demangled symbol
(`<pingora_core::X as tokio::io::AsyncRead>::poll_read` is pingora-core,
`core::ptr::drop_in_place<http::header::map::HeaderMap>` is the header maps), so generic code
lands in the crate of its type, not the one that instantiated it, and with fat LTO whatever was
inlined is counted in its caller. Good for where the bulk goes, not for a few percent.
"""
import re
import sys

# Groups by the function's symbol (matched first) or by the object file it is in.
SYMBOL_GROUPS = [
    ("memcpy/memmove/memset/memcmp", r"mem(cpy|move|set|cmp)|bcmp"),
    ("allocator (mimalloc, malloc)", r"^_?mi_|mimalloc|malloc|^_int_free$|^free$|^cfree|realloc"),
]
CRATE_GROUPS = {
    "http::header": "http header maps",
    "http": "http (other)",
    "httparse": "httparse",
    "pingora_proxy": "pingora-proxy",
    "pingora_core": "pingora-core",
    "tokio": "tokio",
    "tokio_util": "tokio",
    "rw_proxy": "our code (rw_proxy, writer_election)",
    "writer_election": "our code (rw_proxy, writer_election)",
    "bytes": "bytes",
}
OBJECT_GROUPS = [
    ("libc (other)", r"libc\.so"),
    ("OpenSSL (libcrypto)", r"libcrypto"),
    ("dynamic loader", r"ld-linux"),
    ("nginx", r"/nginx$"),
]
PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)")
STD = {"core", "alloc", "std"}


def group_of(func, obj):
    for group, pattern in SYMBOL_GROUPS:
        if re.search(pattern, func):
            return group
    # The first crate named that is not the standard library: the type of `<T as Trait>` or of
    # `drop_in_place<T>`, the crate of a plain path.
    paths = PATH.findall(func)
    crates = [p for p in paths if p[0] not in STD]
    if crates:
        crate, segment = crates[0]
        if crate == "http" and segment == "header":
            return CRATE_GROUPS["http::header"]
        if crate in CRATE_GROUPS:
            return CRATE_GROUPS[crate]
        if crate.startswith("pingora"):
            return "pingora (other crates: http, timeout, pool, ...)"
        return "other crates"
    if paths:
        return "Rust core/alloc/std"
    for group, pattern in OBJECT_GROUPS:
        if re.search(pattern, obj):
            return group
    return f"other ({obj.rsplit('/', 1)[-1]})"


def self_costs(path):
    """(object, function) -> self Ir, read from the dump itself.

    A cost line after `calls=` is the inclusive cost of that call and is skipped. (The self
    view of callgrind_annotate shows the frames that were active across `callgrind_control -z`,
    such as main and each thread's start routine, with the whole count as their own cost; a call
    made before the zero is recorded as `calls=0`. Reading the dump avoids that.)
    """
    names = {"ob": {}, "fn": {}, "fl": {}}
    kind_table = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
    ob, fn, skip, total = "???", "???", False, None
    costs = {}

    def resolve(kind, value):
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        table = names[kind_table[kind]]
        if m[2] is not None:
            table[m[1]] = m[2]
        return table.get(m[1], value)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    key = (ob, fn)
                    costs[key] = costs.get(key, 0) + int(parts[1])
                continue
            key, _, value = line.partition("=")
            if key in ("ob", "fn"):
                v = resolve(key, value)
                if key == "ob":
                    ob = v
                else:
                    fn = v
            elif key in ("cob", "cfn"):
                resolve(key, value)
            elif key == "calls":
                skip = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
    return costs, total


def main(path, requests):
    costs, total = self_costs(path)
    groups = {}
    for (ob, fn), ir in costs.items():
        g = group_of(fn, ob)
        groups[g] = groups.get(g, 0) + ir
    counted = sum(costs.values())
    total = total or counted
    print(f"{'group':<50} {'Ir':>14} {'share':>7} {'Ir/request':>11}")
    for g, ir in sorted(groups.items(), key=lambda kv: -kv[1]):
        per = f"{ir / requests:,.0f}" if requests else ""
        print(f"{g:<50} {ir:>14,} {ir / total:>6.1%} {per:>11}")
    per = f"{counted / requests:,.0f}" if requests else ""
    print(f"{'total':<50} {counted:>14,} {counted / total:>6.1%} {per:>11}")
    print(f"\ntop functions (self Ir):")
    for (ob, fn), ir in sorted(costs.items(), key=lambda kv: -kv[1])[:40]:
        per = f"{ir / requests:8,.0f}/req" if requests else ""
        print(f"{ir / total:6.1%} {per} {fn[:150]}  [{ob.rsplit('/', 1)[-1]}]")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 0)
