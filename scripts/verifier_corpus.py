#!/usr/bin/env python3
"""The verifier's agreement corpus, rebuilt deterministically from MATH-500's gold answers.

    python3 scripts/verifier_corpus.py build     # data/math500.jsonl -> tests/fixtures/verifier_corpus.jsonl
    python3 scripts/verifier_corpus.py compare   # math-verify and `cargo xtask verify` on the corpus

`build` writes, for each gold answer, equivalent rewrites (expected equal) and near misses
(expected different) from fixed rules, each labelled by construction; `cargo xtask fetch-data
math` must have written data/math500.jsonl. `compare` runs the development-time oracle
math-verify (`pip install math-verify`; never a run-time dependency) and this project's verifier
on every pair and prints the agreement with the labels and every disagreement.
"""
import json
import random
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests/fixtures/verifier_corpus.jsonl"

SIMPLE_FRAC = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")
INTEGER = re.compile(r"^-?\d+$")
DECIMAL = re.compile(r"^-?\d+\.\d+$")
# 10,080 and 11,111,111,100: one number, not a list.
THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def is_texty(a):
    return "\\text" in a or "\\mbox" in a or re.search(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", "", a)) is not None


def top_level_commas(a):
    depth, parts, cur = 0, [], ""
    i = 0
    while i < len(a):
        c = a[i]
        if a.startswith("\\{", i) or a.startswith("\\}", i):
            depth += 1 if a[i + 1] == "{" else -1
            cur += a[i:i + 2]
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def exact_value(a):
    """The gold's value when it is an integer, decimal or simple fraction."""
    if INTEGER.match(a) or DECIMAL.match(a):
        return Fraction(a)
    m = SIMPLE_FRAC.match(a)
    if m and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return -v if m.group(1) else v
    return None


def terminating(v):
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def equivalent_rewrites(a):
    out = []
    v = exact_value(a)
    if "\\frac" in a:
        out.append(("dfrac", a.replace("\\frac", "\\dfrac")))
    m = SIMPLE_FRAC.match(a)
    if m:
        out.append(("slash", f"{m.group(1)}{m.group(2)}/{m.group(3)}"))
    if v is not None and v.denominator != 1 and terminating(v):
        out.append(("decimal", str(float(v)) if len(str(float(v))) < 12 else None))
    if v is not None and v.denominator == 1:
        out.append(("x_equals", f"x = {a}"))
        out.append(("units", f"{a}\\text{{ units}}"))
        if abs(v) >= 1000:
            out.append(("thousands", f"{int(v):,}"))
    if re.search(r"\\sqrt\{\d\}", a):
        out.append(("sqrt_no_braces", re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", a)))
    if re.search(r"\d\\sqrt", a):
        out.append(("cdot", re.sub(r"(\d)\\sqrt", r"\1\\cdot\\sqrt", a)))
    if re.search(r"\d\\pi", a):
        out.append(("pi_first", re.sub(r"(\d+)\\pi", r"\\pi \\cdot \1", a, count=1)))
    if a[0] in "([" and a[-1] in ")]" and len(top_level_commas(a[1:-1])) > 1:
        inner = top_level_commas(a[1:-1])
        out.append(("spaces", a[0] + ", ".join(p.strip() for p in inner) + a[-1]))
        if a[0] == "(" and a[-1] == ")":
            out.append(("left_right", "\\left(" + a[1:-1] + "\\right)"))
    elif len(top_level_commas(a)) > 1 and not THOUSANDS.match(re.sub(r"\\!|\\\$|\s", "", a)):
        out.append(("reorder", ", ".join(p.strip() for p in reversed(top_level_commas(a)))))
    if a.startswith("\\{") and a.endswith("\\}"):
        inner = top_level_commas(a[2:-2])
        if len(inner) > 1:
            out.append(("set_reorder", "\\{" + ",".join(reversed(inner)) + "\\}"))
    # a + b\sqrt c -> b\sqrt c + a
    m = re.match(r"^(-?\d+)\s*\+\s*(\d*\\sqrt\{\d+\})$", a)
    if m:
        out.append(("sum_reorder", f"{m.group(2)} + {m.group(1)}"))
    if "pmatrix" in a:
        out.append(("matrix_env", a.replace("pmatrix", "bmatrix")))
    if re.search(r"\\frac\{\d\}\{\d\}", a):
        out.append(("frac_short", re.sub(r"\\frac\{(\d)\}\{(\d)\}", r"\\frac\1\2", a)))
    out.append(("dollars", f"${a}$"))
    return [(r, c) for r, c in out if c and c != a]


def near_misses(a):
    out = []
    v = exact_value(a)
    digits = [i for i, c in enumerate(a) if c.isdigit()]
    if digits and not is_texty(a):
        i = digits[-1]
        out.append(("last_digit", a[:i] + str((int(a[i]) + 1) % 10) + a[i + 1:]))
    if v is not None and v != 0:
        out.append(("negated", a[1:] if a.startswith("-") else "-" + a))
    if v is not None and v.denominator == 1 and v != 0:
        out.append(("times10", a + "0"))
    if a[0] in "([" and a[-1] in ")]":
        inner = top_level_commas(a[1:-1])
        if len(inner) > 1 and len(set(p.strip() for p in inner)) > 1:
            out.append(("swapped", a[0] + ",".join(reversed(inner)) + a[-1]))
        if len(inner) == 2 and a[0] == "(":
            out.append(("bracket", "[" + a[1:]))
    if re.search(r"\\sqrt\{(\d+)\}", a) and not is_texty(a):
        try:
            import math
            expr = a.replace("\\sqrt{", "math.sqrt(").replace("}", ")").replace("\\pi", "math.pi")
            expr = re.sub(r"(\d)(math)", r"\1*\2", expr)
            val = eval(expr, {"math": math})
            out.append(("decimal_approx", f"{val:.4f}"))
        except Exception:
            pass
    if "\\pi" in a and not is_texty(a):
        out.append(("pi_dropped", re.sub(r"(?<=\d)\\pi", "", a).replace("\\pi", "3")))
    m = re.match(r"^(.*\S)\s*([+-])\s*([^+-]+)$", a)
    if m and not a.startswith("(") and not is_texty(a):
        out.append(("term_dropped", m.group(1)))
    return [(r, c) for r, c in out if c and c != a and c.strip()]


def build():
    rows = [json.loads(l) for l in open(ROOT / "data/math500.jsonl")]
    pairs = []
    for r in rows:
        gold = r["answer"]
        rng = random.Random(r["id"])
        eq = equivalent_rewrites(gold)
        nm = near_misses(gold)
        # At most three of each per problem, chosen with a generator seeded by the id.
        for rule, cand in rng.sample(eq, min(3, len(eq))):
            pairs.append({"id": r["id"], "gold": gold, "candidate": cand, "equal": True, "rule": rule})
        for rule, cand in rng.sample(nm, min(3, len(nm))):
            pairs.append({"id": r["id"], "gold": gold, "candidate": cand, "equal": False, "rule": rule})
    with open(CORPUS, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    print(f"{CORPUS}: {len(pairs)} pairs ({sum(p['equal'] for p in pairs)} equivalent, {sum(not p['equal'] for p in pairs)} near misses)")


def ours(pairs):
    lines = "".join(json.dumps({"id": str(i), "response": f"<answer>\\boxed{{{p['candidate']}}}</answer>", "answer": p["gold"]}) + "\n" for i, p in enumerate(pairs))
    tmp = ROOT / "target/verifier_corpus_in.jsonl"
    tmp.write_text(lines)
    out = subprocess.run(["cargo", "xtask", "verify", "--input", str(tmp)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    got = {}
    for line in out.splitlines():
        if line.startswith("{"):
            o = json.loads(line)
            got[int(o["id"])] = o["reward"] == 1
    return [got[i] for i in range(len(pairs))]


def theirs(pairs):
    from math_verify import parse, verify
    verdicts = []
    for p in pairs:
        try:
            g = parse("$" + p["gold"] + "$")
            c = parse("$" + p["candidate"] + "$")
            verdicts.append(bool(verify(g, c)))
        except Exception:
            verdicts.append(False)
    return verdicts


def compare():
    pairs = [json.loads(l) for l in open(CORPUS)]
    a = ours(pairs)
    b = theirs(pairs)
    for name, v in (("rstar2", a), ("math-verify", b)):
        eq = [x for x, p in zip(v, pairs) if p["equal"]]
        ne = [x for x, p in zip(v, pairs) if not p["equal"]]
        print(f"{name:12} equivalent rewrites accepted {sum(eq)}/{len(eq)} ({100 * sum(eq) / len(eq):.1f}%), near misses accepted (false positives) {sum(ne)}/{len(ne)}")
    print("\ndisagreements (label: equal?; rstar2; math-verify):")
    for p, x, y in zip(pairs, a, b):
        if x != y or x != p["equal"]:
            print(f"  {p['rule']:14} gold {p['gold']!r:40} candidate {p['candidate']!r:40} label {p['equal']!s:5} rstar2 {x!s:5} math-verify {y!s:5}")


if __name__ == "__main__":
    {"build": build, "compare": compare}[sys.argv[1] if len(sys.argv) > 1 else "build"]()
