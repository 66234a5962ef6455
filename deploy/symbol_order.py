#!/usr/bin/env python3
"""Write lld's --symbol-ordering-file from callgrind profiles of strait.

Usage: symbol_order.py --binary BINARY CALLGRIND_OUT... [--binary ...]
         > proxy/symbol-order.txt

Every function of each BINARY that ran in its profiles, hottest (self
instructions) first, by its link-time (mangled) name: the profiles must
come from `valgrind --tool=callgrind --demangle=no`. Builds made another
way (static, for the image) name the same functions with other hashes, so
each build is profiled and listed: one file serves them all.
"""
import re
import subprocess
import sys

NAMED = re.compile(r"^(ob|cob|fn|cfn)=\((\d+)\)(?: (.*))?$")


def self_costs(path, binary):
    """Self instruction count per function of `binary` in one profile."""
    objects, functions, costs = {}, {}, {}
    current_object, current_fn, skip_next = None, None, False
    with open(path, encoding="utf-8", errors="replace") as profile:
        for line in profile:
            line = line.rstrip("\n")
            named = NAMED.match(line)
            if named:
                kind, ident, name = named.groups()
                table = objects if kind in ("ob", "cob") else functions
                if name:
                    table[ident] = name
                if kind == "ob":
                    current_object = objects[ident]
                elif kind == "fn":
                    ours = current_object is not None and current_object.endswith(binary)
                    current_fn = functions[ident] if ours else None
                continue
            if line.startswith("calls="):
                skip_next = True  # the next cost line is the call's inclusive cost
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                elif current_fn is not None:
                    fields = line.split()
                    if len(fields) >= 2 and fields[1].isdigit():
                        costs[current_fn] = costs.get(current_fn, 0) + int(fields[1])
    return costs


def functions(binary):
    """The function symbols `binary` defines."""
    symbols = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    defined = set()
    for line in symbols.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            defined.add(parts[2])
    return defined


def main():
    builds = []  # [binary, [profile, ...]]
    args = iter(sys.argv[1:])
    for arg in args:
        if arg == "--binary":
            builds.append([next(args), []])
        elif builds:
            builds[-1][1].append(arg)
        else:
            sys.exit(__doc__)
    total = {}
    for binary, profiles in builds:
        defined = functions(binary)
        costs = {}
        for profile in profiles:
            for name, cost in self_costs(profile, binary.rsplit("/", 1)[-1]).items():
                name = re.sub(r"'\d+$", "", name)  # callgrind's recursion marker
                costs[name] = costs.get(name, 0) + cost
        ours = [n for n in costs if n in defined]
        print(f"{binary}: {len(ours)} functions ran", file=sys.stderr)
        for name in ours:
            total[name] = total.get(name, 0) + costs[name]
    listed = sorted(total, key=lambda n: (-total[n], n))
    sys.stdout.write("".join(n + "\n" for n in listed))
    print(f"{len(listed)} names in all", file=sys.stderr)


if __name__ == "__main__":
    main()
