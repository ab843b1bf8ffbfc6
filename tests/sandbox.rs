//! The sandbox as users meet it: CPython-equal output on a corpus of math snippets, errors,
//! every hostile case, isolation, concurrency, sessions, the code-judge HTTP API.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rstar2::sandbox::{IsolationKind, Sandbox, SandboxConfig, Status, ToolCall, ToolResult, WorkerCommand};

fn worker() -> WorkerCommand {
    WorkerCommand::program(env!("CARGO_BIN_EXE_rstar2-sandbox-worker"))
}

/// The default (worker process) sandbox shared by most tests, with a short timeout.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(process_sandbox)
}

/// A new pool configured as the shared one: two worker processes, a 1 s timeout, 1 GiB per call.
fn process_sandbox() -> Sandbox {
    let mut config = SandboxConfig::process(worker());
    config.workers = 2;
    config.interpreter.limits.timeout = Duration::from_millis(1000);
    config.interpreter.limits.memory_bytes = 1 << 30;
    Sandbox::new(config).expect("sandbox starts")
}

fn run(code: &str) -> ToolResult {
    sandbox().run_blocking(ToolCall::new(code))
}

fn cpython_stdout(code: &str) -> String {
    let out = Command::new("python3").args(["-I", "-c", code]).output().expect("python3 is installed");
    assert!(out.status.success(), "CPython failed on {code:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

const CORPUS: &[&str] = &[
    "print(1+1)",
    "print(2**100)",
    "import math\nprint(math.factorial(30), math.comb(50, 25), math.gcd(1071, 462), math.lcm(4, 6, 10))",
    "print(pow(3, 10**18, 10**9 + 7))",
    "from fractions import Fraction\nprint(sum(Fraction(1, k*(k+1)) for k in range(1, 100)))",
    "from decimal import Decimal, getcontext\ngetcontext().prec = 40\nprint(Decimal(1) / Decimal(7))",
    "print(sum(int(d) for d in str(2**1000)))",
    "n = 10**5\nsieve = bytearray([1]) * (n + 1)\nsieve[0:2] = b'\\x00\\x00'\nfor i in range(2, int(n**0.5) + 1):\n    if sieve[i]:\n        sieve[i*i::i] = bytearray(len(sieve[i*i::i]))\nprint(sum(sieve))",
    "def divisors(n):\n    return [d for d in range(1, n + 1) if n % d == 0]\nprint(len(divisors(5040)), sum(divisors(5040)))",
    "a, b = 0, 1\nfor _ in range(500):\n    a, b = b, (a + b) % 1000007\nprint(a)",
    "from itertools import permutations, combinations\nprint(sum(1 for p in permutations(range(7)) if p[0] < p[-1]), len(list(combinations(range(20), 4))))",
    "from collections import Counter\nc = Counter('mississippi')\nprint(sorted(c.items()))",
    "import statistics\nprint(statistics.mean([1, 2, 3, 4]), statistics.median([5, 1, 3]))",
    "print(round(3.14159, 2), 1/3, 2.5e-7, float('inf'), -0.0)",
    "print(divmod(-17, 5), -17 // 5, -17 % 5, 17 ** 0.5)",
    "print('%.6f' % (22/7), f'{1234567:,}', f'{255:#x}', '{:>8}|'.format('ab'))",
    "import json\nprint(json.dumps({'b': [1, 2.5, None], 'a': 'x'}, sort_keys=True))",
    "import random\nrandom.seed(7)\nprint(random.randint(1, 10**6), random.random())",
    "x = [i*i for i in range(10)]\nprint(x[::-1], x[2:5], max(x), min(x))",
    "print(int('1010', 2), bin(37), hex(255), oct(8), chr(65), ord('a'))",
    "print(sorted([(3, 'c'), (1, 'a'), (2, 'b')], key=lambda t: -t[0]))",
    "import heapq\nh = [5, 1, 4, 2]\nheapq.heapify(h)\nprint([heapq.heappop(h) for _ in range(4)])",
    "print({1, 2, 3} & {2, 3, 4}, sorted({'b': 1, 'a': 2}))",
    "s = 0\nfor i in range(1, 1001):\n    if i % 3 == 0 or i % 5 == 0:\n        s += i\nprint(s)",
];

#[test]
fn corpus_stdout_equals_cpython() {
    for code in CORPUS {
        let got = run(code);
        assert_eq!(got.status, Status::Ok, "{code:?}: {got:?}");
        assert_eq!(got.stdout, cpython_stdout(code), "{code:?}");
        assert_eq!(got.stderr, "");
    }
}

/// sum() over a huge range would be a native loop no timeout can stop (CPython itself takes
/// hours); the sandbox uses the exact closed form. Expected values computed here in u128.
#[test]
fn sum_over_huge_ranges_is_exact_and_immediate() {
    let n: u128 = 10u128.pow(12);
    assert_eq!(run("print(sum(range(10**12)))").stdout, format!("{}\n", n * (n - 1) / 2));
    let terms: Vec<u128> = vec![5, 10u128.pow(15), 7];
    let count = (terms[1] - terms[0]).div_ceil(terms[2]);
    let last = terms[0] + (count - 1) * terms[2];
    assert_eq!(run("print(sum(range(5, 10**15, 7), 3))").stdout, format!("{}\n", 3 + (terms[0] + last) * count / 2));
    assert_eq!(run("print(sum(range(10**6, 0, -3)))").stdout, format!("{}\n", (1..=1_000_000u128).rev().step_by(3).sum::<u128>()));
    assert_eq!(run("print(sum([1, 2, 3], 10), sum(x for x in range(5)))").stdout, "16 10\n");
}

#[test]
fn trailing_expression_is_echoed_like_ipython() {
    assert_eq!(run("x = 6 * 7\nx").stdout, "42\n");
    assert_eq!(run("'a' + 'b'").stdout, "'ab'\n");
    assert_eq!(run("from fractions import Fraction\nFraction(3, 6)").stdout, "Fraction(1, 2)\n");
    assert_eq!(run("None").stdout, "");
    assert_eq!(run("print(5)").stdout, "5\n");
    assert_eq!(run("def f():\n    return 1").stdout, "");
    assert_eq!(run("x = 1").stdout, "");
    assert_eq!(run("for i in range(2):\n    i").stdout, "");
}

#[test]
fn stdin_is_served_to_input_and_sys_stdin() {
    let r = sandbox().run_blocking(ToolCall::with_stdin("a = int(input())\nb = int(input())\nprint(a * b)", "6\n7\n"));
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "42\n"));
    let r = sandbox().run_blocking(ToolCall::with_stdin("import sys\nprint(sys.stdin.read().split())", "1 2\n3"));
    assert_eq!(r.stdout, "['1', '2', '3']\n");
    let r = run("input()");
    assert_eq!(r.status, Status::Error);
    assert!(r.stderr.trim_end().ends_with("EOFError: EOF when reading a line"), "{}", r.stderr);
}

#[test]
fn exceptions_give_cpython_style_tracebacks() {
    for code in [
        "x = 1\ny = 0\nprint('before')\nprint(x / y)",
        "int('abc')",
        "d = {}\nd['k']",
        "[1, 2][5]",
        "def f(n):\n    return g(n)\ndef g(n):\n    raise ValueError(f'bad {n}')\nf(3)",
        "import math\nmath.sqrt(-1)",
    ] {
        let r = run(code);
        assert_eq!(r.status, Status::Error, "{code:?}");
        assert!(r.stderr.starts_with("Traceback (most recent call last):\n"), "{code:?}: {}", r.stderr);
        assert!(r.stderr.contains("File \"<snippet>\", line "), "{}", r.stderr);
        let cpython = Command::new("python3").args(["-I", "-c", code]).output().unwrap();
        let cpython_last = String::from_utf8_lossy(&cpython.stderr).trim_end().lines().last().unwrap().to_string();
        let ours_last = r.stderr.trim_end().lines().last().unwrap().to_string();
        let exc_type = |line: &str| line.split(':').next().unwrap().to_string();
        assert_eq!(exc_type(&ours_last), exc_type(&cpython_last), "{code:?}");
    }
    let r = run("x = 1\nprint('before')\nprint(x / 0)");
    assert_eq!(r.stdout, "before\n");
    assert!(r.stderr.ends_with("ZeroDivisionError: division by zero\n"), "{}", r.stderr);
    assert!(r.stderr.contains("line 3"), "{}", r.stderr);
    let r = run("def f(:\n    pass");
    assert_eq!(r.status, Status::Error);
    assert!(r.stderr.contains("SyntaxError"), "{}", r.stderr);
}

#[test]
fn exit_codes() {
    assert_eq!(run("import sys\nprint('a')\nsys.exit(0)\nprint('b')").status, Status::Ok);
    assert_eq!(run("import sys\nprint('a')\nsys.exit(0)\nprint('b')").stdout, "a\n");
    assert_eq!(run("raise SystemExit").status, Status::Ok);
    assert_eq!(run("import sys\nsys.exit(3)").status, Status::Error);
    let r = run("import sys\nsys.exit('bye')");
    assert_eq!((r.status, r.stderr.as_str()), (Status::Error, "bye\n"));
    let r = run("import os\nos._exit(1)");
    assert_eq!(r.status, Status::Error);
    assert!(r.stderr.contains("AttributeError"), "{}", r.stderr);
    assert_eq!(run("print('still serving')").stdout, "still serving\n");
}

#[test]
fn output_is_truncated_and_floods_are_stopped() {
    let r = run("print('x' * 5000)");
    assert_eq!(r.status, Status::Ok);
    assert!(r.stdout.chars().count() < 1100, "{}", r.stdout.len());
    assert!(r.stdout.contains("characters truncated"));
    let t = Instant::now();
    let r = run("while True:\n    print('x' * 1000)");
    assert_eq!(r.status, Status::OutputLimit, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A flood that swallows the limit exception runs until the deadline, and is still a flood.
    let r = run("import sys\nwhile True:\n    try:\n        sys.stdout.write('y' * 100)\n    except BaseException:\n        pass");
    assert_eq!(r.status, Status::OutputLimit, "{r:?}");
}

/// The in-process sandbox the hostile tests run beside the default one, with the same limits.
fn in_process_sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config = SandboxConfig::in_process();
        config.workers = 2;
        config.interpreter.limits.timeout = Duration::from_millis(1000);
        config.interpreter.limits.memory_bytes = 1 << 30;
        Sandbox::new(config).expect("sandbox starts")
    })
}

/// Every hostile snippet ends with a status within a bounded time, and the pool keeps serving,
/// in worker processes and in-process alike. In-process the work is stopped, not abandoned:
/// native loops over iterators see the deadline, memory is counted per call, and the native
/// work no interrupt reaches (huge powers, exponential regexes) and bytecode written by hand are
/// refused before they run.
#[test]
fn hostile_code_never_hangs_or_crashes_the_host() {
    assert!(rstar2::sandbox::budgets_enforced(), "the test binary installs BudgetAllocator");
    let bound = Duration::from_secs(5);
    let cases: &[(&str, &[Status])] = &[
        ("while True:\n    pass", &[Status::Timeout]),
        ("while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass", &[Status::Timeout]),
        ("import time\ntime.sleep(100)", &[Status::Timeout]),
        // Refused when compiled: exponential backtracking.
        ("import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')", &[Status::Error]),
        ("import re\nre.findall(r'(\\w+\\s?)*$', 'ab ' * 20 + '!')", &[Status::Error]),
        ("import re\nre.match(r'(a|b+)+$', 'b' * 40 + 'c')", &[Status::Error]),
        // Overlapping alternatives, or an optional part that can start what follows it.
        ("import re\nre.match(r'(a|aa)+$', 'a' * 60 + 'b')", &[Status::Error]),
        ("import re\nre.match(r'(.?x)+$', 'x' * 60 + '!')", &[Status::Error]),
        ("import re\nre.match(r'(\\s*,\\s*)*$', ' , ' * 30 + '!')", &[Status::Error]),
        // Refused before running: about 85 million digits.
        ("x = 7 ** (10**8)", &[Status::MemoryLimit]),
        ("x = 1 << 10**10", &[Status::MemoryLimit]),
        // The conversion limit can be raised to a million digits, not lifted. (A shift builds
        // the 1.1-million-digit number at once; `7 ** 2_900_000` took 0.21 s of native work
        // that no interrupt reaches, and timed out with six busy loops on the two cores.)
        ("import sys\nsys.set_int_max_str_digits(0)\nlen(str(1 << 3_700_000))", &[Status::Error]),
        // Native loops over iterators see the deadline (and RustPython's max() grows memory).
        ("max(range(10**11))", &[Status::Timeout, Status::MemoryLimit]),
        ("import itertools\nlist(itertools.count())", &[Status::Timeout, Status::MemoryLimit]),
        ("max(iter(int, 1))", &[Status::Timeout]),
        ("import collections\ncollections.deque(iter(int, 1), maxlen=0)", &[Status::Timeout]),
        ("import itertools\nsorted(itertools.product(range(10), repeat=12))", &[Status::Timeout, Status::MemoryLimit]),
        ("s = 'a' * 10**10", &[Status::MemoryLimit]),
        ("x = [0] * 10**10", &[Status::MemoryLimit]),
        ("x = bytearray(10**10)", &[Status::MemoryLimit]),
        ("x = list(range(10**10))", &[Status::MemoryLimit]),
        ("x = []\nwhile True:\n    x.append(bytearray(10**8))", &[Status::MemoryLimit]),
        ("x = []\nwhile True:\n    try:\n        x.append(bytearray(10**8))\n    except MemoryError:\n        pass", &[Status::MemoryLimit]),
        // RecursionError, or the 1 s wall-clock limit on a loaded machine (seen in CI runs
        // that shared two cores with a training run).
        ("def f(n):\n    return f(n + 1)\nf(0)", &[Status::Error, Status::Timeout]),
        ("import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)", &[Status::Error, Status::Timeout]),
        // Bytecode written by hand (in-process it once crashed the process a few calls later).
        ("def f():\n    pass\nf.__code__ = f.__code__.replace(co_code=bytes([255, 0] * 8))\nf()", &[Status::Error]),
        ("import types\ntypes.CodeType(0, 0, 0, 0, 0, 0, b'\\xff\\x00', (), (), (), '', '', 0, b'')", &[Status::Error]),
        ("import marshal\nexec(marshal.loads(marshal.dumps(compile('1', 's', 'eval'))))", &[Status::Error]),
        ("import threading\nt = threading.Thread(target=lambda: None)\nt.start()", &[Status::Error]),
        ("eval('(' * 100000 + ')' * 100000)", &[Status::Error]),
        // A syntax tree sharing its nodes has 2^60 paths: the nesting guard's walk of it sees the
        // deadline (RustPython's compile of it would run natively for good).
        (
            "import ast
L = dict(lineno=1, col_offset=0, end_lineno=1, end_col_offset=1)
e = ast.Constant(1, **L)
for _ in range(60):
    e = ast.BinOp(e, ast.Add(), e, **L)
compile(ast.Expression(e), 's', 'eval')",
            &[Status::Timeout],
        ),
    ];
    for (pool, sb) in [("worker processes", sandbox()), ("in-process", in_process_sandbox())] {
        for (code, allowed) in cases {
            let t = Instant::now();
            let r = sb.run_blocking(ToolCall::new(*code));
            assert!(t.elapsed() < bound, "{pool}: {code:?} took {:?}", t.elapsed());
            assert!(allowed.contains(&r.status), "{pool}: {code:?}: {r:?}");
            assert!(!r.stderr.contains("stuck in native code"), "{pool}: {code:?} was abandoned, not stopped: {r:?}");
            if r.status == Status::Error && code.contains("re.") {
                assert!(r.stderr.contains("pattern refused by the sandbox"), "{pool}: {code:?}: {}", r.stderr);
            }
            if code.contains("set_int_max_str_digits") {
                assert!(r.stderr.contains("Exceeds the limit (1000000 digits)"), "{pool}: {code:?}: {}", r.stderr);
            }
            if code.contains("co_code") || code.contains("CodeType") || code.contains("marshal") {
                assert!(r.stderr.contains("disabled in the sandbox"), "{pool}: {code:?}: {}", r.stderr);
            }
            let after = sb.run_blocking(ToolCall::new("print(sum([1, 2, 3]))"));
            assert_eq!((after.status, after.stdout.as_str()), (Status::Ok, "6\n"), "{pool}: after {code:?}");
        }
        assert_eq!(sb.abandoned_threads(), (0, 0), "{pool}");
    }
}

/// Native operations that allocate infallibly past a call's budget end in `memory_limit`, in both
/// pools: less than twice it, the budget grants the request and trips; past twice it the request
/// is refused, which aborts a worker process and, in-process, parks the call's thread instead of
/// ending the host (answered at once, not at the deadline; the pool serves on with a new
/// interpreter). Also the math functions whose results would pass the integer size limit.
#[test]
fn infallible_native_allocations_past_the_budget_end_in_memory_limit() {
    let cases = [
        "x = ''.join(['a' * 10**6] * 300)",
        "x = b''.join([b'a' * 10**6] * 300)",
        "x = 'ab' * (10**8)\ny = x.upper()",
        "x = '\\t' * 100\ny = x.expandtabs(3 * 10**6)",
        "import math\nmath.comb(10**7, 5 * 10**6)",
        "import math\nmath.factorial(10**6)",
        // Past twice the 256 MiB budget: a gigabyte asked at once, and one grown by doubling.
        "x = ''.join(['a' * 10**6] * 1000)",
        "x = 'a' * 10**6\ny = x.replace('a', 'b' * 1000)",
        "x = '\\t' * 100\ny = x.expandtabs(10**7)",
    ];
    for isolation in [IsolationKind::InProcess, IsolationKind::Process] {
        let mut config = match isolation {
            IsolationKind::InProcess => SandboxConfig::in_process(),
            IsolationKind::Process => SandboxConfig::process(worker()),
        };
        config.workers = 1;
        config.interpreter.limits.timeout = Duration::from_secs(10);
        config.interpreter.limits.memory_bytes = 256 << 20;
        let sb = Sandbox::new(config).unwrap();
        for code in cases {
            let r = sb.run_blocking(ToolCall::new(code));
            assert_eq!(r.status, Status::MemoryLimit, "{isolation}: {code:?}: {r:?}");
            assert!(r.stderr.contains("MemoryError"), "{isolation}: {code:?}: {}", r.stderr);
            assert!(r.elapsed_us < 10_000_000, "{isolation}: {code:?}: answered at the deadline: {r:?}");
            let after = sb.run_blocking(ToolCall::new("print(6 * 7)"));
            assert_eq!(after.stdout, "42\n", "{isolation}: after {code:?}: {after:?}");
        }
    }
}

/// The guards refuse only what would run away: everyday regexes, powers, shifts, conversions and
/// a caught MemoryError, logging's regexes, `threading.local` and `time.sleep` behave as in CPython
/// (expected output from CPython 3.11).
#[test]
fn guards_leave_ordinary_code_alone() {
    let code = r#"import re, sys, itertools
print(re.findall(r'(\d+,)*\d+', '1,2,3'), re.findall(r'(?:ab+)+', 'abbab'), re.sub(r'\s+', ' ', 'a  b'))
print(re.findall(r'(?>a+)+b', 'aab'), re.findall(r'[a-z]+(?:-[a-z]+)*', 'foo-bar baz'), bool(re.fullmatch(r'(\w+\.)*\w+@\w+', 'a.b@c')))
print(2 ** 1000 % 7, pow(3, 10**18, 1000), (-1) ** (10**20), 0 ** (10**30), 2 ** -3, 1 << 100, len(str(3 ** 8000)) if sys.set_int_max_str_digits(5000) is None else 0)
print(len(str(2 ** 1_000_000)) if sys.set_int_max_str_digits(0) is None else 0, sys.get_int_max_str_digits())
print(max(range(10**5)), sum(1 for _ in itertools.product(range(10), repeat=4)), list(itertools.islice(itertools.count(5), 3)))
import math
print(math.factorial(20), math.comb(40, 20), math.perm(10, 3), math.perm(5), len(str(math.factorial(1000))), math.comb(10, 20))
try:
    s = 'a' * 10**10
except MemoryError:
    print('caught')
import logging, concurrent.futures, threading, time
local = threading.local(); local.n = 4
print(bool(re.fullmatch(r'^(\d+|\w+)(\.\w+|\[[^]]+\])*$', 'a.b[0]')), re.findall(r'(?m)(?:.+$\n?)*', 'ab\ncd')[0] == 'ab\ncd', local.n, logging.getLevelName(20))
t = time.monotonic(); time.sleep(0.05); print(time.monotonic() - t >= 0.05)
print(bool(re.fullmatch(r'([A-Z][a-z]*)+', 'HelloWorld')), bool(re.fullmatch(r'(?:(?:0x)?[0-9a-f]{2}:?)+', '0x1f:2a')), re.findall(r'(?:ab?)+', 'abaab'), re.findall(r'(?:,?\d)+', '1,2,3'), re.findall(r'(?:\r?\n)+', 'a\r\n\nb'), list(iter([0, 3, 2, 1].pop, 0)))
"#;
    let expected = concat!(
        "['2,'] ['abbab'] a b\n",
        "['aab'] ['foo-bar', 'baz'] True\n",
        "2 1 1 0 0.125 1267650600228229401496703205376 3817\n",
        "301030 1000000\n",
        "99999 10000 [5, 6, 7]\n",
        "2432902008176640000 137846528820 720 120 2568 0\n",
        "caught\n",
        "True True 4 INFO\n",
        "True\n",
        "True True ['abaab'] ['1,2,3'] ['\\r\\n\\n'] [1, 2, 3]\n",
    );
    // Not CPython's: the recursion limit may be raised to 50,000, not past it.
    let recursion = "import sys\nsys.setrecursionlimit(3000)\na = sys.getrecursionlimit()\nsys.setrecursionlimit(10**6)\ndef depth(n):\n    return depth(n + 1) if n < 20000 else n\nprint(a, sys.getrecursionlimit(), depth(0))";
    for sb in [sandbox(), in_process_sandbox()] {
        let r = sb.run_blocking(ToolCall::new(code));
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, expected), "{r:?}");
        let r = sb.run_blocking(ToolCall::new(recursion));
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "3000 50000 20000\n"), "{r:?}");
    }
}

#[test]
fn nothing_on_the_host_is_reachable() {
    for (code, expect) in [
        // Paths name files of the call's in-memory working directory, never the host's.
        ("open('/etc/passwd').read()", "FileNotFoundError"),
        ("open('/tmp/rstar2-sandbox-probe', 'w')", "FileNotFoundError"),
        ("import os\nos.listdir('/etc')", "FileNotFoundError"),
        ("import os\nos.open('/etc/passwd', os.O_RDONLY)", "Error"),
        ("import os\nos.system('true')", "AttributeError"),
        ("import socket", "ModuleNotFoundError"),
        ("import subprocess\nsubprocess.run(['ls'])", "Error"),
        ("import ctypes", "ModuleNotFoundError"),
        ("import _interpreters", "ModuleNotFoundError"),
    ] {
        let r = run(code);
        assert_eq!(r.status, Status::Error, "{code:?}: {r:?}");
        assert!(r.stderr.contains(expect), "{code:?}: {}", r.stderr);
    }
    let r = run("import os\nprint(dict(os.environ))");
    assert_eq!(r.stdout, "{}\n");
    assert!(!std::path::Path::new("/tmp/rstar2-sandbox-probe").exists());
}

/// Each call gets a private in-memory working directory (code-judge gives each submission a
/// temporary folder): files written there can be read back, listed and removed through open,
/// os, os.path and pathlib; escapes land inside it; its size is capped; the next independent
/// call starts empty; a session keeps its files; nothing reaches the host's disk. Both kinds of
/// pool.
#[test]
fn calls_get_a_private_in_memory_working_directory() {
    let mut config = SandboxConfig::in_process();
    config.workers = 1;
    let in_process = Sandbox::new(config).unwrap();
    let probe = format!("/tmp/rstar2-scratch-probe-{}", std::process::id());
    for sb in [sandbox(), &in_process] {
        let code = r#"
import os, pathlib
with open('test.txt', 'w') as f:
    f.write('Hello, world!')
print(open('test.txt').read(), os.getcwd(), os.listdir('.'), os.path.getsize('test.txt'), os.path.isfile('test.txt'))
d = pathlib.Path('data')
d.mkdir()
(d / 'x.bin').write_bytes(b'\x00\x01')
(d / 'y.txt').write_text('line\n')
print(sorted(p.name for p in d.iterdir()), (d / 'x.bin').read_bytes(), (d / 'y.txt').read_text() == 'line\n', pathlib.Path('.').resolve())
open('log', 'a').write('1\n')
open('log', 'a').write('2\n')
print(repr(open('log').read()))
os.remove('log')
print(os.path.exists('log'), sorted(os.listdir('.')))
with open('../escape.txt', 'w') as f:
    f.write('x')
print(sorted(os.listdir('/')))
"#;
        let r = sb.run_blocking(ToolCall::new(code));
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(r.stdout, "Hello, world! /sandbox ['test.txt'] 13 True\n['x.bin', 'y.txt'] b'\\x00\\x01' True /sandbox\n'1\\n2\\n'\nFalse ['data', 'test.txt']\n['escape.txt', 'sandbox']\n");
        // Errors as CPython gives them.
        for (code, expect) in [
            ("open('missing.txt')", "FileNotFoundError: [Errno 2] No such file or directory: 'missing.txt'"),
            ("open('a', 'w').close()\nopen('a', 'x')", "FileExistsError"),
            ("import os\nos.mkdir('d')\nopen('d')", "IsADirectoryError"),
            ("open('a', 'r+')", "FileNotFoundError"),
            ("open('a', 'w').read()", "UnsupportedOperation: not readable"),
            ("open('a', 'rw')", "ValueError: invalid mode"),
            ("open('nested/a.txt', 'w')", "FileNotFoundError"),
        ] {
            let r = sb.run_blocking(ToolCall::new(code));
            assert!(r.status == Status::Error && r.stderr.contains(expect), "{code:?}: {r:?}");
        }
        // 16 MiB in all.
        let r = sb.run_blocking(ToolCall::new("f = open('big', 'wb')\ntry:\n    for i in range(40):\n        f.write(b'x' * (1 << 20))\nexcept OSError as e:\n    print(e.errno, i)"));
        assert_eq!(r.stdout, "28 16\n", "{r:?}");
        // The next call starts empty; the host never saw a file.
        let r = sb.run_blocking(ToolCall::new(format!("import os\nopen('{probe}', 'w') if os.path.isdir('/tmp') else None\nprint(os.listdir('.'), os.path.exists('/escape.txt'))")));
        assert_eq!(r.stdout, "[] False\n", "{r:?}");
        assert!(!std::path::Path::new(&probe).exists() && !std::path::Path::new("/sandbox").exists());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let session = sb.session();
            session.run(ToolCall::new("open('notes.txt', 'w').write('kept')")).await;
            assert_eq!(session.run(ToolCall::new("print(open('notes.txt').read())")).await.stdout, "kept\n");
        });
        assert_eq!(sb.run_blocking(ToolCall::new("import os\nprint(os.listdir('.'))")).stdout, "[]\n");
    }
}

#[test]
fn independent_calls_never_see_each_others_state() {
    // In-process pools use the same taint rule.
    let mut config = SandboxConfig::in_process();
    config.workers = 1;
    let local = Sandbox::new(config).unwrap();
    local.run_blocking(ToolCall::new("import math\nmath.pi = 3"));
    assert_eq!(local.run_blocking(ToolCall::new("import math\nmath.pi")).stdout, "3.141592653589793\n");
    let polluters =
        ["import math\nmath.pi = 3", "import builtins\nbuiltins.print = lambda *a, **k: None", "import sys\nsys.setrecursionlimit(50)", "import decimal\ndecimal.getcontext().prec = 3", "secret = 41"];
    for polluter in polluters {
        // Run on every worker so the next probe cannot dodge a polluted interpreter.
        for _ in 0..4 {
            run(polluter);
        }
        let r = run("import math, sys, decimal\nprint(math.pi, sys.getrecursionlimit(), decimal.getcontext().prec, 'secret' in dir())");
        assert_eq!(r.stdout, "3.141592653589793 1000 28 False\n", "after {polluter:?}");
    }
}

#[test]
fn batches_run_concurrently_and_lose_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let calls: Vec<ToolCall> = (0..300).map(|i| ToolCall::new(format!("print({i} * {i})"))).collect();
    let results = runtime.block_on(sandbox().run_batch(calls));
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.stdout, format!("{}\n", i * i));
    }
}

#[test]
fn sessions_keep_state_until_released() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let session = sandbox().session();
        assert_eq!(session.run(ToolCall::new("x = 20\nimport math")).await.status, Status::Ok);
        assert_eq!(session.run(ToolCall::new("x + math.factorial(3)")).await.stdout, "26\n");
        assert_eq!(session.run(ToolCall::new("def f(n):\n    return n * x")).await.status, Status::Ok);
        assert_eq!(session.run(ToolCall::new("print(f(2))")).await.stdout, "40\n");
        drop(session);
        let r = sandbox().run(ToolCall::new("x")).await;
        assert_eq!(r.status, Status::Error);
        assert!(r.stderr.contains("NameError"), "{}", r.stderr);
    });
}

/// A call that times out, in plain code or inside imports, leaves imports working for the next
/// call, also as each interpreter's first error (the prelude formats it while the interrupt still
/// fires): an interrupt can cut an import short, and the interpreter is rebuilt after it.
#[test]
fn a_timeout_inside_an_import_leaves_imports_working() {
    let importing = "while True:\n    try:\n        import no_such_module_anywhere\n    except ImportError:\n        pass";
    let importing_real = "import sys\nwhile True:\n    import fractions, json\n    del sys.modules['fractions'], sys.modules['json']";
    for round in 0..4 {
        // A fresh pool each round: the timeout is each interpreter's first error.
        let mut config = SandboxConfig::in_process();
        config.workers = 1;
        config.interpreter.limits.timeout = Duration::from_millis(150);
        let sb = Sandbox::new(config).unwrap();
        for code in ["while True:\n    pass", importing, importing_real] {
            let r = sb.run_blocking(ToolCall::new(code));
            assert_eq!(r.status, Status::Timeout, "{r:?}");
            let r = sb.run_blocking(ToolCall::new("import fractions, json\nprint(json.dumps(str(fractions.Fraction(2, 6))))"));
            assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "\"1/3\"\n"), "round {round}: imports broken after a timeout in {code:?}: {r:?}");
        }
    }
}

/// Tests that leave an in-process thread stuck in native work take turns (with RustPython built
/// with `threading`, the suite hung, rarely, with several such threads and builds at once).
static STUCK_NATIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// In-process threads left to native work are capped: with the cap at 0 a stuck thread gets no
/// replacement and serves the next call once its native work returns (meanwhile, with every
/// worker stuck, calls are answered with an error at once rather than queued); with 1 it is
/// replaced and counted until it ends. Imports work afterwards.
#[test]
fn in_process_abandoned_threads_are_capped() {
    let _turn = STUCK_NATIVE.lock().unwrap_or_else(|p| p.into_inner());
    // Fibonacci(32)-many backtracking steps (overlapping alternatives under a bounded repeat,
    // which the regex guard lets through: it refuses unbounded ones): about a second, longer
    // than the 200 ms limit plus its 500 ms grace, short enough to end within the test.
    let stuck = "import re\nre.match(r'(a|aa){1,64}$', 'a' * 32 + 'b')";
    for cap in [0, 1] {
        let mut config = SandboxConfig::in_process();
        config.workers = 1;
        config.max_abandoned = cap;
        config.interpreter.limits.timeout = Duration::from_millis(200);
        let sb = Sandbox::new(config).unwrap();
        let r = sb.run_blocking(ToolCall::new(stuck));
        assert_eq!(r.status, Status::Timeout, "{r:?}");
        let (alive, held_back) = sb.abandoned_threads();
        if cap == 0 {
            assert!(r.stderr.contains("serves again when the native call returns"), "{}", r.stderr);
            assert_eq!((alive, held_back), (0, 1));
            // The pool's one worker is stuck: a call now is refused at once, not queued.
            let t = Instant::now();
            let r = sb.run_blocking(ToolCall::new("print('queued')"));
            assert_eq!(r.status, Status::Crashed, "{r:?}");
            assert!(r.stderr.contains("every interpreter of the sandbox is stuck in native code"), "{}", r.stderr);
            assert!(t.elapsed() < Duration::from_millis(100), "answered after {:?}", t.elapsed());
        } else {
            assert!(r.stderr.contains("interpreter abandoned"), "{}", r.stderr);
            assert_eq!((alive, held_back), (1, 0));
        }
        // The pool answers again (cap 0: the same thread, once the regex is done), and the
        // abandoned thread ends.
        let start = Instant::now();
        loop {
            let r = sb.run_blocking(ToolCall::new("print('ok')"));
            if r.stdout == "ok\n" && sb.abandoned_threads().0 == 0 {
                break;
            }
            assert!(matches!(r.status, Status::Ok | Status::Timeout | Status::Crashed), "{r:?}");
            assert!(start.elapsed() < Duration::from_secs(60), "cap {cap}: not recovered: {r:?} {:?}", sb.abandoned_threads());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(sb.abandoned_threads().1, if cap == 0 { 1 } else { 0 });
        let r = sb.run_blocking(ToolCall::new("import fractions\nprint(fractions.Fraction(2, 6))"));
        assert_eq!(r.stdout, "1/3\n", "cap {cap}: imports broken after the stuck call ended: {r:?}");
    }
}

#[test]
fn in_process_pool_runs_and_times_out() {
    let _turn = STUCK_NATIVE.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = SandboxConfig::in_process();
    config.workers = 2;
    config.interpreter.limits.timeout = Duration::from_millis(300);
    let sb = Sandbox::new(config).unwrap();
    assert_eq!(sb.run_blocking(ToolCall::new("print(2**64)")).stdout, "18446744073709551616\n");
    let t = Instant::now();
    let r = sb.run_blocking(ToolCall::new("while True:\n    pass"));
    assert_eq!(r.status, Status::Timeout);
    assert!(t.elapsed() < Duration::from_secs(2));
    // Stuck in native code: the caller is answered after the grace period; a new thread serves.
    // (About two seconds of backtracking, so the abandoned thread ends while the other tests of
    // this process run; it may hold interpreter-wide locks until then.)
    let t = Instant::now();
    let r = sb.run_blocking(ToolCall::new("import re\nre.match(r'(a|aa){1,64}$', 'a' * 33 + 'b')"));
    assert_eq!(r.status, Status::Timeout);
    assert!(t.elapsed() < Duration::from_secs(3));
    // The pool serves again: at once, or (while the abandoned thread still holds the
    // interpreter's locks on a loaded machine) after calls that time out, within bounded time.
    let start = Instant::now();
    loop {
        let r = sb.run_blocking(ToolCall::new("print('ok')"));
        if r.stdout == "ok\n" {
            break;
        }
        assert_eq!(r.status, Status::Timeout, "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(20), "the pool did not recover: {r:?}");
    }
}

/// The sympy + mpmath folder `cargo xtask test` fetches and names in RSTAR2_TEST_PYLIB.
fn test_pylib() -> std::ffi::OsString {
    std::env::var_os("RSTAR2_TEST_PYLIB").expect("RSTAR2_TEST_PYLIB is not set: run the tests with `cargo xtask test`, which fetches sympy and mpmath")
}

#[test]
fn sympy_imports_from_a_read_only_folder() {
    let pylib = test_pylib();
    let mut config = SandboxConfig::process(worker());
    config.workers = 1;
    config.interpreter.pylib = Some(pylib.clone().into());
    config.interpreter.limits.timeout = Duration::from_secs(30);
    let sb = Sandbox::new(config).unwrap();
    let r = sb.run_blocking(ToolCall::new(
        "from sympy import symbols, solve, factorint, isprime, Rational, binomial\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x), factorint(2**64 - 1) == {3: 1, 5: 1, 17: 1, 257: 1, 641: 1, 65537: 1, 6700417: 1}, isprime(2**61 - 1), Rational(3, 9), binomial(100, 50))",
    ));
    assert_eq!(r.status, Status::Ok, "{r:?}");
    assert_eq!(r.stdout, "[2, 3] True True 1/3 100891344545564193334812497256\n");
    let root = std::fs::canonicalize(&pylib).unwrap().display().to_string();
    // The package folder serves imports only: to the code it is not there.
    let r = sb.run_blocking(ToolCall::new(format!("import sympy, os\nos.listdir({root:?})")));
    assert!(r.stderr.contains("FileNotFoundError"), "{r:?}");
    let probe = format!(
        "import _sandbox_fs as fs\nprint(fs.read('/', 'etc/passwd'), fs.read({root:?}, '../../etc/passwd'), fs.read({root:?}, '/etc/passwd'), len(fs.read({root:?}, 'sympy/__init__.py')) > 0)"
    );
    let r = sb.run_blocking(ToolCall::new(probe));
    assert_eq!(r.stdout, "None None None True\n", "{r:?}");
}

/// Preloading sympy takes seconds; it happens before a worker takes calls (at start and after
/// every interpreter rebuild), so a call with a 300 ms limit never pays for it.
#[test]
fn preloads_never_count_against_a_call() {
    let pylib = test_pylib();
    let mut config = SandboxConfig::process(worker());
    config.workers = 1;
    config.interpreter.pylib = Some(pylib.into());
    config.interpreter.preload = vec!["sympy".into()];
    config.interpreter.limits.timeout = Duration::from_millis(300);
    let sb = Sandbox::new(config).unwrap();
    for code in ["print(1)", "import os\nos.environ['X'] = '1'\nprint(2)", "import sympy\nprint(sympy.Integer(2) ** 10)", "print(3)"] {
        let r = sb.run_blocking(ToolCall::new(code));
        assert_eq!(r.status, Status::Ok, "{code:?}: {r:?}");
    }
}

pub(crate) fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response[9..12].parse().unwrap();
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_string())))
}

/// `sandbox serve` over the shared pool on a free loopback port, run by `runtime`.
fn serve_http(runtime: &tokio::runtime::Runtime, sandbox: Sandbox) -> std::net::SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, rstar2::sandbox::http::router(sandbox)).await });
    addr
}

#[test]
fn code_judge_http_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Its own pool, not the one the other tests share: the closing /status asserts an empty queue,
    // which calls of tests running beside it would fill.
    let addr = serve_http(&runtime, process_sandbox());

    assert_eq!(http(addr, "GET", "/ping", ""), (200, serde_json::json!("pong")));
    let (code, r) = http(addr, "POST", "/run", r#"{"type": "python", "solution": "print(int(input()) + 1)", "input": "41", "sub_id": "a1"}"#);
    assert_eq!(code, 200);
    assert_eq!((r["sub_id"].as_str(), r["success"].as_bool(), r["stdout"].as_str(), r["reason"].as_str()), (Some("a1"), Some(true), Some("42\n"), Some("")));
    assert!(r["cost"].as_f64().unwrap() > 0.0);
    let (_, r) = http(addr, "POST", "/run", r#"{"type": "python", "solution": "print(1)", "expected_output": "2"}"#);
    assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(false), Some(true)));
    assert_eq!(r["sub_id"].as_str().unwrap().len(), 32);
    let batch = r#"{"type": "batch", "sub_id": "b", "submissions": [
        {"type": "python", "solution": "print('x')"},
        {"type": "python", "solution": "while True: pass"},
        {"type": "python", "solution": "1/0"},
        {"type": "cpp", "solution": "int main(){}"},
        {"solution": "print(1)"}]}"#;
    for path in ["/run/batch", "/run/long-batch"] {
        let (code, r) = http(addr, "POST", path, batch);
        assert_eq!(code, 200);
        assert_eq!(r["sub_id"], "b");
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        assert_eq!((results[0]["success"].as_bool(), results[0]["stdout"].as_str()), (Some(true), Some("x\n")));
        assert_eq!((results[1]["success"].as_bool(), results[1]["reason"].as_str()), (Some(false), Some("worker_timeout")));
        assert_eq!((results[2]["run_success"].as_bool(), results[2]["reason"].as_str()), (Some(false), Some("")));
        assert!(results[2]["stderr"].as_str().unwrap().contains("ZeroDivisionError"));
        assert_eq!(results[3]["reason"], "invalid_input");
        assert_eq!(results[4]["reason"], "invalid_input");
    }
    // code-judge's own cases (tests/test_main.py, the Python ones), on both route families.
    for route in ["/run", "/judge"] {
        let verdict_only = route == "/judge";
        let post = |body: &str| http(addr, "POST", route, body).1;
        let r = post(r#"{"type": "python", "solution": "print(input())", "input": "a", "expected_output": "a"}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(true), Some(true)), "{r}");
        assert_eq!(r.get("stdout").is_none(), verdict_only, "{r}");
        let r = post(r#"{"type": "python", "solution": "print(input())", "input": "a", "expected_output": "b"}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(false), Some(true)), "{r}");
        let r = post(r#"{"type": "python", "solution": "print(input())", "input": "", "expected_output": "a"}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(false), Some(false)), "{r}");
        let r = post(r#"{"type": "python", "solution": "from time import sleep\nsleep(10)", "input": "a", "expected_output": "a"}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool(), r["reason"].as_str()), (Some(false), Some(false), Some("worker_timeout")), "{r}");
        if !verdict_only {
            assert_eq!(r["stdout"].as_str().unwrap().trim(), "Suicide from timeout.", "{r}");
        }
        // A scratch file in the submission's own working directory; `../` stays inside it.
        let r = post(r#"{"type": "python", "solution": "with open('test.txt', 'w') as f:\n    f.write('Hello, world!')", "input": "", "expected_output": ""}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(true), Some(true)), "{r}");
        let r = post(
            r#"{"type": "python", "solution": "import pathlib\nprint(pathlib.Path('.').resolve())\nwith open('../test.txt', 'w') as f:\n    f.write('Hello, world!')", "input": "", "expected_output": ""}"#,
        );
        assert_eq!(r["run_success"].as_bool(), Some(true), "{r}");
        let r = post(r#"{"type": "python", "solution": "from multiprocessing import Process\np = Process(target=print)\np.start()", "expected_output": "a"}"#);
        assert_eq!((r["success"].as_bool(), r["run_success"].as_bool()), (Some(false), Some(false)), "{r}");
        let r = post(r#"{"type": "cpp", "solution": "int main(){return 0;}", "expected_output": ""}"#);
        assert_eq!((r["run_success"].as_bool(), r["reason"].as_str()), (Some(false), Some("invalid_input")), "{r}");
        for batch in ["batch", "long-batch"] {
            let body = r#"{"type": "batch", "submissions": [
                {"type": "python", "solution": "print(input())", "input": "", "expected_output": "b"},
                {"type": "python", "solution": "print(input())", "input": "a", "expected_output": "a"},
                {"type": "python", "solution": "print(input())", "input": "a", "expected_output": "b"}]}"#;
            let (code, r) = http(addr, "POST", &format!("{route}/{batch}"), body);
            assert_eq!(code, 200, "{r}");
            let got: Vec<(bool, bool, bool)> =
                r["results"].as_array().unwrap().iter().map(|x| (x["success"].as_bool().unwrap(), x["run_success"].as_bool().unwrap(), x.get("stdout").is_some())).collect();
            assert_eq!(got, [(false, false, !verdict_only), (true, true, !verdict_only), (false, true, !verdict_only)], "{route}/{batch}");
        }
    }
    // Bodies that are not a submission: 422 with a JSON detail, as FastAPI answers.
    for (path, body) in [("/run", "not json"), ("/judge", "[1, 2]"), ("/judge/batch", r#"{"type": "batch", "submissions": []}"#), ("/run/batch", r#"{"submissions": 3}"#)] {
        let (code, r) = http(addr, "POST", path, body);
        assert_eq!(code, 422, "{path} {body}: {r}");
        assert!(r["detail"].is_string(), "{path} {body}: {r}");
    }
    let (code, r) = http(addr, "GET", "/status", "");
    assert_eq!((code, r["num_workers"].as_u64(), r["queue"].as_u64()), (200, Some(2), Some(0)), "{r}");
}

/// A sandbox whose calls go to another `sandbox serve` over HTTP answers as the local pool
/// does, and a server that is not there, or not code-judge, is refused with its address.
#[test]
fn remote_sandbox_over_http_answers_like_the_local_one() {
    use rstar2::sandbox::remote::HttpClient;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = serve_http(&runtime, sandbox().clone());

    let client = HttpClient::connect(&format!("http://{addr}/")).unwrap();
    assert_eq!(client.url(), format!("http://{addr}"));
    assert_eq!(client.status().unwrap().1, 2, "the server's two workers");
    let remote = Sandbox::http(client);
    let calls = ["print(6 * 7)", "import math\nmath.comb(10, 3)", "1/0", "while True: pass", "print(input())"];
    let local: Vec<ToolResult> = calls.iter().map(|c| run(c)).collect();
    let answers = runtime.block_on(remote.run_batch(calls.iter().map(|c| ToolCall::new(*c)).collect()));
    assert_eq!(answers.len(), calls.len());
    for ((call, l), r) in calls.iter().zip(&local).zip(&answers) {
        assert_eq!((r.status, &r.stdout), (l.status, &l.stdout), "{call}");
    }
    assert_eq!(answers[0].stdout, "42\n");
    assert_eq!(answers[1].stdout, "120\n");
    assert_eq!(answers[2].status, Status::Error);
    assert!(answers[2].stderr.contains("ZeroDivisionError"), "{}", answers[2].stderr);
    assert_eq!(answers[3].status, Status::Timeout);
    assert_eq!(remote.run_blocking(ToolCall::new("print('blocking')")).stdout, "blocking\n");
    // Sessions keep state on one interpreter, which code-judge's API has no notion of.
    let session = remote.session();
    assert_eq!(runtime.block_on(session.run(ToolCall::new("x = 1"))).status, Status::InvalidInput);

    let e = HttpClient::connect("https://example.org").err().unwrap().to_string();
    assert!(e.contains("plain HTTP"), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let e = HttpClient::connect(&format!("http://{gone}")).err().unwrap().to_string();
    assert!(e.contains(&format!("http://{gone}/ping")), "{e}");
}

/// An interpreter keeps the compiled code of snippets it ran (and the working directory of a
/// call is emptied once, after it): running a snippet again gives exactly what its first run
/// gave, state it builds starts fresh each time, and a file a call wrote is gone for the next.
#[test]
fn a_snippet_run_again_answers_as_it_did_the_first_time() {
    use rstar2::sandbox::{InterpreterConfig, Runner, Watchdog};
    let runner = Runner::new(&InterpreterConfig::default()).expect("interpreter");
    let watchdog = Watchdog::new();
    let run = |code: &str| runner.run(&ToolCall::new(code), &watchdog).0;
    let cases: &[(&str, Status, &str)] = &[
        ("x = [1]\nx.append(2)\nprint(x)", Status::Ok, "[1, 2]\n"),
        ("def f(a=[]):\n    a.append(1)\n    return len(a)\nprint(f(), f())", Status::Ok, "1 2\n"),
        ("6 * 7", Status::Ok, "42\n"),
        ("import os\nprint(os.path.exists('a.txt'))\nopen('a.txt', 'w').write('x')\nprint(os.path.exists('a.txt'))", Status::Ok, "False\nTrue\n"),
        // A handle left open: its write-back when the call's globals go must not reach the next.
        ("import os\nprint(os.listdir('.'))\nf = open('b.bin', 'wb')\nf.write(b'x')", Status::Ok, "[]\n1\n"),
        ("print(", Status::Error, ""),
        ("1 / 0", Status::Error, ""),
    ];
    for round in 0..3 {
        for (code, status, stdout) in cases {
            let r = run(code);
            assert_eq!((r.status, r.stdout.as_str()), (*status, *stdout), "round {round}: {code:?}: {}", r.stderr);
        }
        assert!(run("1 / 0").stderr.contains("ZeroDivisionError: division by zero"));
        assert!(run("print(").stderr.contains("SyntaxError"));
    }
    // More distinct snippets than the interpreter keeps: the first ones are compiled again.
    for i in 0..300 {
        assert_eq!(run(&format!("print({i} * 2)")).stdout, format!("{}\n", i * 2));
    }
    assert_eq!(run(cases[0].0).stdout, "[1, 2]\n");
}
