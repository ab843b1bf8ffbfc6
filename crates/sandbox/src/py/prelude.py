# Runs once per interpreter, before any tool call. Everything here is private to the sandbox:
# user code sees only the effects (captured streams, sliced sleep, exact sum over ranges).
import sys, io, builtins

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

def begin(stdin, limit, fresh_files):
    """Captures the streams; a call outside a session starts with an empty working directory
    (scratch_fs.py) and leaves none behind."""
    global _keep_files
    _keep_files = not fresh_files
    if fresh_files:
        _fs_reset()
    out, err = Capture(limit), Capture(limit)
    sys.stdout, sys.stderr = out, err
    sys.stdin = io.StringIO(stdin)
    return (out, err)

_format_exception = None

def finish(streams, value, exc):
    """Echo a trailing expression, format an exception; returns (kind, stdout, stderr) with kind
    "ok", "error", "output_limit" or "memory_limit". (If this is interrupted, the caller reads
    the streams itself.)"""
    global _format_exception
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
            if _format_exception is None:
                import traceback
                _format_exception = traceback.format_exception
            try:
                text = "".join(_format_exception(exc))
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
    return (kind, out.getvalue(), err.getvalue())

# time.sleep blocks in native code and cannot be interrupted: sleep in short slices instead.
import time as _time
_native_sleep = _time.sleep
def _sliced_sleep(secs):
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    end = _time.monotonic() + secs
    while True:
        left = end - _time.monotonic()
        if left <= 0:
            return None
        _native_sleep(min(left, 0.005))
_time.sleep = _sliced_sleep

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

# A regular expression with a repeat nested in a repeat that can split the same text in many
# ways ((a+)+, (\w+\s?)*, (x+x+)+) backtracks exponentially inside one native call that no
# timeout reaches: refused when compiled. The repeated body is ambiguous when it holds an
# unbounded repeat and nothing else it must match, except a literal that the repeats cannot
# match themselves ((\d+,)* is fine).
import re as _re
from re import _compiler as _re_compiler, _parser as _re_parser, _constants as _re_c
_native_re_compile = _re_compiler.compile
_REPEATS = (_re_c.MAX_REPEAT, _re_c.MIN_REPEAT)
_CHARS = (_re_c.LITERAL, _re_c.NOT_LITERAL, _re_c.IN, _re_c.ANY, _re_c.CATEGORY, _re_c.RANGE)

def _re_body(items, state):
    """(unbounded repeats, characters every match needs) of a sequence, groups flattened."""
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
            for alt in av[1]:
                repeats += _re_body(alt.data, state)[0]
        elif op in _CHARS:
            needed.append((op, av))
    return repeats, needed

def _re_ambiguous(items, state):
    repeats, needed = _re_body(items, state)
    if not repeats:
        return False
    for op, av in needed:
        if op is not _re_c.LITERAL:
            continue
        ch = chr(av)
        if not any(_native_re_compile(r, 0).fullmatch(ch) for r in repeats):
            return False
    return True

def _re_risky(items, state):
    for op, av in items:
        if op in _REPEATS:
            lo, hi, sub = av
            if hi == _re_c.MAXREPEAT and _re_ambiguous(sub.data, state):
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
