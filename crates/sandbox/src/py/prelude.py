# Runs once per interpreter, before any tool call. Everything here is private to the sandbox:
# user code sees only the effects (captured streams, sliced sleep, exact sum over ranges).
import sys, io, builtins

# RustPython is built without threads, so no lock or GC list is shared between the interpreters
# of a process; `_thread` is then its single-threaded stand-in. Starting a thread is refused (as
# it was with threads built in and disallowed), and `threading.local` is a plain object: the
# stand-in's own local hides the methods of subclasses (sympy's global parameters among them).
import _thread
def _no_threads(*args, **kwargs):
    raise RuntimeError("threads are disabled in the sandbox")
_thread.start_new_thread = _thread.start_new = _thread.start_joinable_thread = _no_threads
class _local:
    """Thread-local data, on the only thread there is."""
    __module__ = "_thread"
_thread._local = _local
del _local, _no_threads

class OutputLimitExceeded(BaseException):
    """Raised into user code once a stream passes its hard cap (a print flood).
    A BaseException, so `except Exception` does not swallow it."""

class Capture:
    """A write-only text stream that keeps at most `limit` characters, then raises."""
    __slots__ = ("parts", "size", "limit", "over")
    encoding = "utf-8"
    errors = "strict"
    def __init__(self, limit):
        self.parts = []
        self.size = 0
        self.limit = limit
        self.over = False
    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self.over:
            raise OutputLimitExceeded("output limit exceeded")
        n = len(s)
        room = self.limit - self.size
        if n > room:
            self.parts.append(s[:room])
            self.size = self.limit
            self.over = True
            raise OutputLimitExceeded("output limit exceeded")
        self.parts.append(s)
        self.size += n
        return n
    def writelines(self, lines):
        for line in lines:
            self.write(line)
    def flush(self):
        pass
    def isatty(self):
        return False
    def writable(self):
        return True
    def readable(self):
        return False
    def getvalue(self):
        return "".join(self.parts)

_null = Capture(0)
sys.__stdout__ = sys.__stderr__ = None
sys.stdin = sys.__stdin__ = io.StringIO("")

_keep_files = False

# Whether the working directory is as _fs_reset() leaves it: finish() empties it after every call
# outside a session, so the next call's begin() need not do it again (unless finish() was cut
# short, or a session kept its files).
_fs_clean = False

def begin(stdin, limit, fresh_files, keep_files):
    """Captures the streams; a call outside a session starts with an empty working directory
    (scratch_fs.py) and leaves none behind, a session's first call starts with an empty one
    and keeps it for the session's later calls."""
    global _keep_files, _fs_clean
    _keep_files = keep_files
    if fresh_files and not _fs_clean:
        _fs_reset()
    _fs_clean = False
    out, err = Capture(limit), Capture(limit)
    sys.stdout, sys.stderr = out, err
    sys.stdin = io.StringIO(stdin)
    return (out, err)

# Imported now, and used once, so that formatting a call's error never imports anything: an
# import that a re-armed interrupt cuts short would leave a half-initialized module behind.
import traceback as _traceback
_format_exception = _traceback.format_exception
try:
    raise ValueError("warm-up")
except ValueError as _e:
    _format_exception(_e)
    del _e

# A traceback thousands of frames deep (a raised recursion limit lets one reach 50,000)
# takes RustPython tens of seconds to format: past _TB_FRAMES frames only the first ones are
# formatted, and a last line says how many there were. Shorter ones read as CPython's.
_TB_FRAMES = 2000

def _format_error(exc):
    frames, tb = 0, exc.__traceback__
    while tb is not None and frames <= _TB_FRAMES:
        frames, tb = frames + 1, tb.tb_next
    if tb is None:
        return "".join(_format_exception(exc))
    while tb is not None:
        frames, tb = frames + 1, tb.tb_next
    text = "".join(_format_exception(exc, limit=_TB_FRAMES))
    return text + f"(the sandbox formatted the first {_TB_FRAMES} of this traceback's {frames} frames)\n"

def finish(streams, value, exc):
    """Echo a trailing expression, format an exception; returns (kind, stdout, stderr) with kind
    "ok", "error", "output_limit" or "memory_limit". (If this is interrupted, the caller reads
    the streams itself.)"""
    global _fs_clean
    out, err = streams
    kind = "ok"
    try:
        if exc is None:
            if value is not None:
                out.write(repr(value) + "\n")
        elif isinstance(exc, SystemExit):
            code = exc.code
            if code is None or code == 0:
                pass
            elif isinstance(code, int):
                kind = "error"
            else:
                kind = "error"
                err.write(str(code) + "\n")
        else:
            kind = "error"
            if isinstance(exc, MemoryError):
                kind = "memory_limit"
            try:
                text = _format_error(exc)
            except BaseException:
                text = f"{type(exc).__name__}: {exc}\n"
            err.over = False
            err.limit = max(err.limit, err.size + len(text))
            err.write(text)
    except OutputLimitExceeded:
        pass
    except BaseException as e:
        # repr() of the trailing value itself failed: report it like CPython's displayhook would.
        kind = "error"
        err.over = False
        err.limit = max(err.limit, err.size + 200)
        try:
            err.write(f"{type(e).__name__}: {e}\n")
        except BaseException:
            pass
    if out.over or err.over:
        kind = "output_limit"
    sys.stdout = sys.stderr = _null
    sys.stdin = io.StringIO("")
    if not _keep_files:
        _fs_reset()
        _fs_clean = True
    return (kind, out.getvalue(), err.getvalue())

# sum() over a range is a native loop that no timeout can stop: use the closed form (exact).
_native_sum = builtins.sum
def _sum(iterable, /, start=0):
    if type(iterable) is range and len(iterable) > 4096:
        n = len(iterable)
        first = iterable.start
        last = first + (n - 1) * iterable.step
        return start + (first + last) * n // 2
    return _native_sum(iterable, start)
_sum.__name__ = _sum.__qualname__ = "sum"
builtins.sum = _sum

# Integer <-> decimal string conversion is a native loop (845,000 digits take half a second):
# the limit CPython applies by default (4300 digits) may be raised, but not past this.
_MAX_STR_DIGITS = 1_000_000
_native_set_digits = sys.set_int_max_str_digits
def _set_int_max_str_digits(maxdigits):
    maxdigits = int(maxdigits)
    if maxdigits == 0 or maxdigits > _MAX_STR_DIGITS:
        maxdigits = _MAX_STR_DIGITS
    _native_set_digits(maxdigits)
_set_int_max_str_digits.__name__ = _set_int_max_str_digits.__qualname__ = "set_int_max_str_digits"
sys.set_int_max_str_digits = _set_int_max_str_digits

# Freeing a deep Python stack's frames and traceback is native work no interrupt reaches: for
# 200,000 frames (as deep as RustPython goes) 0.12 s idle after the RecursionError was caught,
# and past a timed-out call's grace period with the other cores busy. The recursion limit may be raised, but not past this.
_MAX_RECURSION = 50_000
_native_setrecursionlimit = sys.setrecursionlimit
def _setrecursionlimit(limit):
    _native_setrecursionlimit(min(int(limit), _MAX_RECURSION))
_setrecursionlimit.__name__ = _setrecursionlimit.__qualname__ = "setrecursionlimit"
sys.setrecursionlimit = _setrecursionlimit

# A regular expression with a repeat nested in a repeat that can split the same text in many
# ways ((a+)+, (\w+\s?)*, (x+x+)+) backtracks exponentially inside one native call that no
# timeout reaches: refused when compiled. The repeated body is ambiguous when it holds an
# unbounded repeat and nothing else it must match pins down where the repeats end: a literal
# that they cannot match themselves ((\d+,)* is fine), an anchor ((.+$\n?)*), or an alternation
# each of whose alternatives has such a literal ((\.\w+|\[[^]]+\])* is fine, (a|b+)+ is not).
# The body is also ambiguous when a part of it that may match nothing can also match one
# character that starts what follows it (in the body, or the next repeat): (a|aa)+, which sre's
# parser makes a(?:|a), (.?x)+, (a?a)*; or when two alternatives may both match nothing ((a|a)+ is
# a(?:|)). (ab?)+, (,?\d)+ and ((0x)?[0-9a-f]{2})+ are fine. Character classes are compared on
# sample characters (ASCII and a few others) under the pattern's flags: where unsure, allowed.
import re as _re
from re import _compiler as _re_compiler, _parser as _re_parser, _constants as _re_c
_native_re_compile = _re_compiler.compile
_REPEATS = (_re_c.MAX_REPEAT, _re_c.MIN_REPEAT)
_CHARS = (_re_c.LITERAL, _re_c.NOT_LITERAL, _re_c.IN, _re_c.ANY, _re_c.CATEGORY, _re_c.RANGE)

def _re_body(items, state):
    """(unbounded repeats, needs) of a sequence, groups flattened. A need is a character every
    match takes, an anchor, or ("branch", [(repeats, needs) of each alternative])."""
    repeats, needed = [], []
    for op, av in items:
        if op in _REPEATS:
            lo, hi, sub = av
            if hi == _re_c.MAXREPEAT:
                repeats.append(_re_parser.SubPattern(state, list(sub.data)))
            elif lo > 0:
                r, n = _re_body(sub.data, state)
                repeats += r
                needed += n
        elif op is _re_c.SUBPATTERN:
            r, n = _re_body(av[3].data, state)
            repeats += r
            needed += n
        elif op is _re_c.BRANCH:
            needed.append(("branch", [_re_body(alt.data, state) for alt in av[1]]))
        elif op in _CHARS:
            needed.append((op, av))
        elif op is _re_c.AT:
            # ^, $, \b: a place every match must reach, so the repeats cannot end just anywhere.
            needed.append(("anchor", av))
    return repeats, needed

def _re_absorbed(need, repeats):
    """Whether the repeats can match a need themselves (so it does not pin down where they end);
    an alternation is absorbed when one of its alternatives is, with its own repeats."""
    op, av = need
    if op == "branch":
        return any(all(_re_absorbed(n, repeats + r) for n in ns) for r, ns in av)
    if op == "anchor":
        return False
    if not repeats:
        return False
    state = repeats[0].state
    own = (chr(av),) if op is _re_c.LITERAL else ()
    return _re_overlap(_re_matcher([_re_parser.SubPattern(state, [need])], state), _re_matcher(repeats, state), own)

def _re_has_repeats(repeats, needed):
    return bool(repeats) or any(op == "branch" and any(_re_has_repeats(r, ns) for r, ns in av) for op, av in needed)

def _re_ambiguous(items, state):
    repeats, needed = _re_body(items, state)
    return _re_has_repeats(repeats, needed) and all(_re_absorbed(n, repeats) for n in needed)

_RE_SAMPLES = [chr(c) for c in range(1, 128)] + ["\xa0", "\xe9", "\u03a9", "\u2028", "\u4e2d"]

def _re_first(items, state):
    """(chars, nullable) of a sequence: single-character items one of which its first character
    matches, and whether it can match nothing. Zero-width and unknown items match nothing."""
    chars = []
    for op, av in items:
        if op in _CHARS:
            return chars + [(op, av)], False
        if op is _re_c.SUBPATTERN:
            c, nullable = _re_first(av[3].data, state)
        elif op is _re_c.BRANCH:
            firsts = [_re_first(alt.data, state) for alt in av[1]]
            c = [x for f in firsts for x in f[0]]
            nullable = any(f[1] for f in firsts)
        elif op in _REPEATS:
            c, nullable = _re_first(av[2].data, state)
            nullable = nullable or av[0] == 0
        else:
            c, nullable = [], True
        chars += c
        if not nullable:
            return chars, False
    return chars, True

def _re_matcher(alternatives, state):
    """A compiled pattern matching what any of the sub-patterns matches, under the pattern's flags."""
    flags = state.flags & ~_re_c.SRE_FLAG_DEBUG
    return _native_re_compile(_re_parser.SubPattern(state, [(_re_c.BRANCH, (None, list(alternatives)))]), flags)

def _re_overlap(a, b, extra=()):
    """Whether both compiled patterns match some sample character (or one of `extra`) whole."""
    return any(a.fullmatch(ch) and b.fullmatch(ch) for ch in (*extra, *_RE_SAMPLES))

def _re_optional_overlaps(items, state, follow):
    """Whether a part of `items` that may match nothing can start what follows it (`follow`:
    the first characters after the sequence, when the rest of it may match nothing), or holds
    two alternatives that may both match nothing."""
    for j, (op, av) in enumerate(items):
        rest, rest_nullable = _re_first(items[j + 1:], state)
        after = rest + follow if rest_nullable else rest
        if after and _re_first([(op, av)], state)[1]:
            part = _re_matcher([_re_parser.SubPattern(state, [(op, av)])], state)
            if _re_overlap(part, _re_matcher([_re_parser.SubPattern(state, [x]) for x in after], state)):
                return True
        if op is _re_c.SUBPATTERN and _re_optional_overlaps(av[3].data, state, after):
            return True
        if op is _re_c.BRANCH:
            if sum(1 for alt in av[1] if _re_first(alt.data, state)[1]) > 1:
                return True
            if any(_re_optional_overlaps(alt.data, state, after) for alt in av[1]):
                return True
    return False

def _re_risky(items, state):
    for op, av in items:
        if op in _REPEATS:
            lo, hi, sub = av
            if hi == _re_c.MAXREPEAT and (_re_ambiguous(sub.data, state) or _re_optional_overlaps(sub.data, state, _re_first(sub.data, state)[0])):
                return True
            if _re_risky(sub.data, state):
                return True
        elif op is _re_c.SUBPATTERN:
            if _re_risky(av[3].data, state):
                return True
        elif op is _re_c.BRANCH:
            if any(_re_risky(alt.data, state) for alt in av[1]):
                return True
        elif op in (_re_c.ASSERT, _re_c.ASSERT_NOT):
            if _re_risky(av[1].data, state):
                return True
    return False

def _guarded_re_compile(p, flags=0):
    if _re_compiler.isstring(p):
        parsed = _re_parser.parse(p, flags)
        try:
            risky = _re_risky(parsed.data, parsed.state)
        except Exception:
            risky = False
        if risky:
            raise _re.error(
                "pattern refused by the sandbox: a repeat inside a repeat that can match the same "
                "text in many ways (like (a+)+) takes exponential time; use an atomic group "
                "(?>...) or a possessive quantifier (a++)")
    return _native_re_compile(p, flags)
_re_compiler.compile = _guarded_re_compile

# factorial, comb and perm build their results natively (math.comb(10**7, 5 * 10**6) runs for
# minutes): refused when the result would pass the sandbox's integer size limit (guards.rs,
# 2**23 bits), as ** and << are. The size comes from lgamma, before anything is computed.
import math as _math
_MAX_INT_BITS = 1 << 23
def _log2_factorial(n):
    return _math.lgamma(n + 1) / _math.log(2) if n > 1 else 0.0
def _int_guard(fn, bits):
    def guarded(*args):
        try:
            size = bits(*args)
        except Exception:
            size = 0.0
        if size > _MAX_INT_BITS:
            raise MemoryError(
                f"math.{fn.__name__} refused by the sandbox: the result would have about "
                f"{size * 0.30103:.3e} decimal digits, more than its limit of {_MAX_INT_BITS * 0.30103:.3e}")
        return fn(*args)
    guarded.__name__ = guarded.__qualname__ = fn.__name__
    guarded.__doc__ = fn.__doc__
    return guarded
def _comb_bits(n, k):
    n, k = int(n), int(k)
    if k < 0 or k > n:
        return 0.0
    return _log2_factorial(n) - _log2_factorial(k) - _log2_factorial(n - k)
def _perm_bits(n, k=None):
    n = int(n)
    if k is None:
        return _log2_factorial(n)
    k = int(k)
    if k < 0 or k > n:
        return 0.0
    return _log2_factorial(n) - _log2_factorial(n - k)
_math.factorial = _int_guard(_math.factorial, lambda n: _log2_factorial(int(n)))
_math.comb = _int_guard(_math.comb, _comb_bits)
_math.perm = _int_guard(_math.perm, _perm_bits)

# Code objects from bytes would run bytecode written by hand, which RustPython does not verify
# (guards.rs refuses building them the other ways). Modules are compiled from source, never read
# from .pyc files (a cache tag of None makes importlib skip them), so nothing legitimate loads
# code through marshal here.
import marshal as _marshal
sys.implementation.cache_tag = None
_native_marshal_loads = _marshal.loads
def _holds_code(obj, depth=0):
    if isinstance(obj, type(_holds_code.__code__)):
        return True
    if depth < 32 and isinstance(obj, (tuple, list, frozenset, set)):
        return any(_holds_code(x, depth + 1) for x in obj)
    if depth < 32 and isinstance(obj, dict):
        return any(_holds_code(k, depth + 1) or _holds_code(v, depth + 1) for k, v in obj.items())
    return False
def _marshal_loads(data, /, *args, **kwargs):
    obj = _native_marshal_loads(data, *args, **kwargs)
    if _holds_code(obj):
        raise ValueError("marshal.loads of code objects is disabled in the sandbox: bytecode written by hand can crash the interpreter")
    return obj
_marshal_loads.__name__ = _marshal_loads.__qualname__ = "loads"
_marshal.loads = _marshal_loads
def _marshal_load(file, /, *args, **kwargs):
    return _marshal_loads(file.read(), *args, **kwargs)
_marshal_load.__name__ = _marshal_load.__qualname__ = "load"
_marshal.load = _marshal_load
