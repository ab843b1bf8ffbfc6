//! Static look at a snippet before it runs: does it end in a bare expression (echoed like
//! IPython), and could it change state that a later, independent call would see?
//!
//! A warm interpreter shares `sys.modules`, `builtins` and every module object between calls.
//! Copying or diffing all of that per call would cost more than the call itself, so instead a
//! conservative scan marks a snippet as *tainting* when it might mutate shared state; the pool
//! then replaces that interpreter after the call (the caller gets its answer first). Typical math
//! snippets (imports of pure modules, arithmetic, loops, local containers) never taint.

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, ExprContext, Stmt};

/// What the scan learned about one snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Analysis {
    /// The last top-level statement is an expression statement (its value is echoed).
    pub ends_with_expression: bool,
    /// The snippet may change interpreter state shared between calls.
    pub taints: bool,
}

/// Modules whose import cannot by itself leak state between calls (their only mutable state is
/// reached through attribute stores, which the scan catches separately).
const PURE_MODULES: &[&str] = &[
    "math",
    "cmath",
    "fractions",
    "decimal",
    "numbers",
    "itertools",
    "functools",
    "operator",
    "collections",
    "heapq",
    "bisect",
    "string",
    "re",
    "json",
    "typing",
    "copy",
    "enum",
    "datetime",
    "textwrap",
    "statistics",
    "dataclasses",
    "array",
    "struct",
    "time",
    "calendar",
    "unicodedata",
    "sympy",
    "mpmath",
    "random",
    "hashlib",
    "zlib",
    "base64",
    "binascii",
    "pprint",
    "abc",
    "contextlib",
    "types",
    "__future__",
];

/// Names that give access to dynamic code or to objects' namespaces.
const DYNAMIC_NAMES: &[&str] = &["setattr", "delattr", "getattr", "vars", "globals", "locals", "exec", "eval", "compile", "__import__", "__builtins__", "breakpoint"];

/// Attribute names that reach frames, code or namespaces (`gen.gi_frame.f_globals`, ...), or
/// mutate module-level state (`random.seed`).
fn is_introspection_attr(attr: &str) -> bool {
    attr.starts_with('_') || ["f_", "gi_", "cr_", "ag_", "tb_", "co_"].iter().any(|p| attr.starts_with(p)) || matches!(attr, "seed" | "setstate" | "mro" | "register" | "getcontext" | "setcontext")
}

struct Scan {
    taints: bool,
}

impl<'a> Visitor<'a> for Scan {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        if self.taints {
            return;
        }
        match stmt {
            Stmt::Import(import) if import.names.iter().any(|alias| !is_pure_module(alias.name.as_str())) => {
                self.taints = true;
            }
            Stmt::ImportFrom(import) => {
                let pure = import.level == 0 && import.module.as_ref().is_some_and(|m| is_pure_module(m.as_str())) && !import.names.iter().any(|alias| is_introspection_attr(alias.name.as_str()));
                if !pure {
                    self.taints = true;
                }
            }
            _ => {}
        }
        visitor::walk_stmt(self, stmt);
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        if self.taints {
            return;
        }
        match expr {
            Expr::Attribute(attr) if !matches!(attr.ctx, ExprContext::Load) || is_introspection_attr(attr.attr.as_str()) => {
                self.taints = true;
            }
            Expr::Name(name) if DYNAMIC_NAMES.contains(&name.id.as_str()) => {
                self.taints = true;
            }
            // `x[i] = v` on a local list is everyday code; a store whose container is itself
            // reached through an attribute or a call (`mod.table[k] = v`) may be shared.
            Expr::Subscript(sub) if !matches!(sub.ctx, ExprContext::Load) && !matches!(*sub.value, Expr::Name(_) | Expr::Subscript(_)) => {
                self.taints = true;
            }
            _ => {}
        }
        visitor::walk_expr(self, expr);
    }
}

fn is_pure_module(dotted: &str) -> bool {
    let top = dotted.split('.').next().unwrap_or(dotted);
    PURE_MODULES.contains(&top)
}

/// Scans `source`. Code that does not parse is reported as tainting nothing and not ending in
/// an expression: compiling it will raise the SyntaxError the user should see.
pub fn analyze(source: &str) -> Analysis {
    let Ok(parsed) = ruff_python_parser::parse_module(source) else {
        return Analysis { ends_with_expression: false, taints: false };
    };
    let body = &parsed.syntax().body;
    let ends_with_expression = matches!(body.last(), Some(Stmt::Expr(_)));
    let mut scan = Scan { taints: false };
    for stmt in body {
        scan.visit_stmt(stmt);
    }
    Analysis { ends_with_expression, taints: scan.taints }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taints(src: &str) -> bool {
        analyze(src).taints
    }

    #[test]
    fn typical_math_snippets_do_not_taint() {
        for src in [
            "print(1+1)",
            "import math\nprint(math.factorial(20))",
            "from fractions import Fraction\nx = Fraction(1, 3)\nx",
            "sieve = [True]*100\nfor i in range(2, 10):\n    sieve[i*i::i] = [False]*len(sieve[i*i::i])\nprint(sum(sieve))",
            "d = {}\nd['a'] = 1\nm = [[0]*3 for _ in range(3)]\nm[1][2] = 5",
            "from sympy import symbols, solve\nx = symbols('x')\nsolve(x**2 - 4, x)",
            "def f(n):\n    return n if n < 2 else f(n-1) + f(n-2)\nf(10)",
        ] {
            assert!(!taints(src), "{src}");
        }
    }

    #[test]
    fn shared_state_mutations_taint() {
        for src in [
            "import math\nmath.pi = 3",
            "import builtins\nbuiltins.print = None",
            "import sys\nsys.setrecursionlimit(50)",
            "setattr(__import__('math'), 'pi', 3)",
            "vars(math)['pi'] = 3",
            "g = (x for x in [1])\ng.gi_frame.f_builtins['print'] = 0",
            "import decimal\ndecimal.getcontext().prec = 5",
            "import random\nrandom.seed(1)",
            "from random import seed\nseed(1)",
            "import os\nos.environ['A'] = '1'",
            "class A:\n    def __init__(self):\n        self.x = 1",
            "del math.pi",
            "math.__dict__",
            "exec('x=1')",
            "from . import x",
        ] {
            assert!(taints(src), "{src}");
        }
    }

    #[test]
    fn trailing_expression_detection() {
        assert!(analyze("x = 2\nx * 3").ends_with_expression);
        assert!(analyze("print(1)").ends_with_expression);
        assert!(!analyze("x = 2").ends_with_expression);
        assert!(!analyze("def f():\n    return 1").ends_with_expression);
        assert!(!analyze("for i in range(3):\n    i").ends_with_expression);
        assert!(!analyze("x = (").ends_with_expression);
    }
}
