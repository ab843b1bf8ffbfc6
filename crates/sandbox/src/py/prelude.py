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
