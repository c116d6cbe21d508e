#!/usr/bin/env python3
"""Self cost (Ir) of a callgrind dump grouped by crate or library, roughly.

    python3 loadtest/bench/by-crate.py callgrind.out.rw-proxy-GET [REQUESTS]

A function goes to the first crate named in its demangled path (`<pingora_core::X as
tokio::io::AsyncRead>::poll_read` is pingora-core), so generic code lands in the crate that
defines it, not the one that instantiated it, and with fat LTO whatever was inlined is counted
in its caller. Good for where the bulk goes, not for a few percent.
"""
import re
import sys

GROUPS = [
    # (group, test on the function name, test on the object file)
    ("memcpy/memmove/memset/memcmp", r"mem(cpy|move|set|cmp)|__memc|bcmp", None),
    ("allocator (mimalloc, malloc)", r"^(_?mi_|mi_)|mimalloc|malloc|_int_free|\bfree\b|cfree|realloc", None),
    ("http header maps", r"^<?http::header::", None),
    ("http (other)", r"^<?http::", None),
    ("httparse", r"^<?httparse::", None),
    ("pingora-proxy", r"^<?pingora_proxy::", None),
    ("pingora-core", r"^<?pingora_core::", None),
    ("pingora (other crates)", r"^<?pingora", None),
    ("tokio", r"^<?tokio(_util)?::", None),
    ("our code (rw_proxy, writer_election)", r"^<?(rw_proxy|writer_election)::", None),
    ("bytes", r"^<?bytes::", None),
    ("Rust core/alloc/std", r"^<?(core|alloc|std)::", None),
    ("libc (other)", None, r"libc\.so"),
    ("OpenSSL (libcrypto)", None, r"libcrypto"),
    ("dynamic loader", None, r"ld-linux"),
    ("nginx", None, r"/nginx\]?$"),
]
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?):(.*?)\s+\[(.*)\]\s*$")
FIRST_CRATE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def group_of(func, obj):
    # `<impl Trait for Type>` / `<Type as Trait>`: the type's crate comes first.
    name = func.lstrip("<&*").replace("mut ", "").replace("dyn ", "")
    for group, f, o in GROUPS:
        if f and re.search(f, name):
            return group
        if o and re.search(o, obj):
            return group
    m = FIRST_CRATE.search(name)
    return f"{m[1]} (other crate)" if m else f"other ({obj.rsplit('/', 1)[-1]})"


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
    print(f"{'group':<40} {'Ir':>14} {'share':>7} {'Ir/request':>11}")
    for g, ir in sorted(groups.items(), key=lambda kv: -kv[1]):
        per = f"{ir / requests:,.0f}" if requests else ""
        print(f"{g:<40} {ir:>14,} {ir / total:>6.1%} {per:>11}")
    per = f"{counted / requests:,.0f}" if requests else ""
    print(f"{'total':<40} {counted:>14,} {counted / total:>6.1%} {per:>11}")
    print(f"\ntop functions (self Ir):")
    for (ob, fn), ir in sorted(costs.items(), key=lambda kv: -kv[1])[:40]:
        per = f"{ir / requests:8,.0f}/req" if requests else ""
        print(f"{ir / total:6.1%} {per} {fn[:150]}  [{ob.rsplit('/', 1)[-1]}]")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 0)
