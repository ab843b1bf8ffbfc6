//! Answers compared by value: a parser for the LaTeX that MATH-style answers use, and an
//! equivalence check that is exact wherever it can be.
//!
//! An answer parses into a structure: a number or expression (fractions `\frac12`, `\dfrac`,
//! `a/b`; roots `\sqrt[n]{x}`; powers; `\pi`; `\cdot`, `\times` and implicit products; sums and
//! signs; scientific notation; `n!`, `\binom`; functions such as `\sin`; `|x|`), a tuple or
//! interval with its brackets, a set or list of solutions (any order; `\pm` expands into one),
//! a union of intervals, a matrix or vector, an equation, a number in a base (`204_5`), or
//! text. Units in `\text{}` after a value, `x =` in front, degrees, percent signs, dollar signs
//! and spacing commands are dropped.
//!
//! Two expressions are equal when both evaluate exactly to the same rational (big integers and
//! rationals: `0.59` is never `16/27`, `440.1` never `440`); when either is irrational or has
//! variables they are evaluated in double precision at seeded random points of their variables
//! and must agree to 1e-9 relative at every point. Tuples and intervals compare in order with
//! their brackets, sets in any order, matrices element-wise, equations as the same relation
//! (one side minus the other equal up to a nonzero constant factor), text after normalization.
//!
//! ```
//! use rstar2_grpo::math::equivalent;
//! assert!(equivalent("\\sqrt2", "\\sqrt{2}"));
//! assert!(equivalent("\\{3, -1\\}", "-1, 3"));
//! assert!(equivalent("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt3"));
//! assert!(!equivalent("0.59", "\\frac{16}{27}"));
//! ```

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An exact number.
    Num(BigRational),
    /// A variable (a letter, possibly with a subscript).
    Var(String),
    /// π.
    Pi,
    /// ∞.
    Infinity,
    /// Sum of terms.
    Add(Vec<Expr>),
    /// Product of factors.
    Mul(Vec<Expr>),
    /// a / b.
    Div(Box<Expr>, Box<Expr>),
    /// -a.
    Neg(Box<Expr>),
    /// a^b.
    Pow(Box<Expr>, Box<Expr>),
    /// n!.
    Factorial(Box<Expr>),
    /// A named function of its arguments (sqrt, root, sin, log, abs, binom, ...).
    Func(String, Vec<Expr>),
    /// a ± b: two values.
    PlusMinus(Box<Expr>, Box<Expr>),
}

/// Longer answers are compared as text only.
const MAX_ANSWER_BYTES: usize = 2000;
/// Deepest nesting of groups the parser follows.
const MAX_DEPTH: usize = 64;
/// Largest exact power, in bits of the result.
const MAX_POW_BITS: u64 = 1 << 20;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A number or expression.
    Expr(Expr),
    /// A number written in a base: (digits, base).
    Based(String, u32),
    /// Tuple or interval: opening bracket, elements, closing bracket.
    Tuple(char, Vec<Answer>, char),
    /// Set or list of values, any order.
    Set(Vec<Answer>),
    /// Union of intervals or sets, any order.
    Union(Vec<Answer>),
    /// Matrix or vector, row by row.
    Matrix(Vec<Vec<Answer>>),
    /// lhs = rhs.
    Equation(Expr, Expr),
    /// Normalized text.
    Text(String),
}

/// Whether two answers are the same (see the module doc). Unparseable answers compare as
/// normalized text.
pub fn equivalent(answer: &str, truth: &str) -> bool {
    // Answers are model output: bounded work per comparison (length here, nesting depth in the
    // parser, sizes of exact powers, factorials and binomials in `exact`).
    if answer.len() > MAX_ANSWER_BYTES || truth.len() > MAX_ANSWER_BYTES {
        let (x, y) = (normalize_text(answer), normalize_text(truth));
        return !x.is_empty() && x == y;
    }
    let (a, b) = (canonical(parse_answer(answer)), canonical(parse_answer(truth)));
    if matches!(a, Answer::Text(_)) || matches!(b, Answer::Text(_)) {
        // Words, choices ("(C)", "\text{(C)}"), or what the parser does not take.
        let (x, y) = (normalize_text(answer), normalize_text(truth));
        return !x.is_empty() && x == y;
    }
    answers_match(&a, &b)
}

/// `a ± b` becomes the set of its values, and inside a list of solutions `x = v` becomes `v`.
fn canonical(a: Answer) -> Answer {
    match a {
        Answer::Expr(e) if has_pm(&e) => Answer::Set(expand_pm(&e).into_iter().map(Answer::Expr).collect()),
        Answer::Equation(Expr::Var(_), r) if has_pm(&r) => Answer::Set(expand_pm(&r).into_iter().map(Answer::Expr).collect()),
        Answer::Set(items) => {
            let mut out = Vec::new();
            for item in items {
                match canonical(item) {
                    Answer::Set(inner) => out.extend(inner),
                    Answer::Equation(Expr::Var(_), r) => out.push(Answer::Expr(r)),
                    other => out.push(other),
                }
            }
            Answer::Set(out)
        }
        Answer::Tuple(o, items, c) => Answer::Tuple(o, items.into_iter().map(canonical).collect(), c),
        Answer::Union(items) => Answer::Union(items.into_iter().map(canonical).collect()),
        Answer::Matrix(rows) => Answer::Matrix(rows.into_iter().map(|r| r.into_iter().map(canonical).collect()).collect()),
        other => other,
    }
}

fn has_pm(e: &Expr) -> bool {
    match e {
        Expr::PlusMinus(..) => true,
        Expr::Add(t) | Expr::Mul(t) | Expr::Func(_, t) => t.iter().any(has_pm),
        Expr::Div(a, b) | Expr::Pow(a, b) => has_pm(a) || has_pm(b),
        Expr::Neg(a) | Expr::Factorial(a) => has_pm(a),
        Expr::Num(_) | Expr::Var(_) | Expr::Pi | Expr::Infinity => false,
    }
}

/// Parses an answer; text that is not mathematics becomes [`Answer::Text`].
pub fn parse_answer(s: &str) -> Answer {
    let cleaned = clean(s);
    if cleaned.is_empty() {
        return Answer::Text(String::new());
    }
    if let Some(a) = parse_structure(&cleaned) {
        return a;
    }
    Answer::Text(normalize_text(s))
}

fn answers_match(a: &Answer, b: &Answer) -> bool {
    use Answer::*;
    match (a, b) {
        (Text(x), Text(y)) => !x.is_empty() && x == y,
        (Expr(x), Expr(y)) => exprs_match(x, y),
        // `x = 5` against `5`: the value of a variable.
        (Equation(l, r), Expr(y)) | (Expr(y), Equation(l, r)) => matches!(l, crate::math::Expr::Var(_)) && exprs_match(r, y),
        (Equation(l1, r1), Equation(l2, r2)) => equations_match(l1, r1, l2, r2),
        (Based(d1, b1), Based(d2, b2)) => b1 == b2 && based_value(d1, *b1).is_some() && based_value(d1, *b1) == based_value(d2, *b2),
        (Tuple(o1, x, c1), Tuple(o2, y, c2)) => o1 == o2 && c1 == c2 && x.len() == y.len() && x.iter().zip(y).all(|(p, q)| answers_match(p, q)),
        (Set(x), Set(y)) | (Union(x), Union(y)) => same_multiset(x, y),
        (Matrix(x), Matrix(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.len() == q.len() && p.iter().zip(q).all(|(u, v)| answers_match(u, v))),
        // A lone value against a one-element set.
        (Set(x), other) | (other, Set(x)) if x.len() == 1 => answers_match(&x[0], other),
        _ => false,
    }
}

fn same_multiset(x: &[Answer], y: &[Answer]) -> bool {
    if x.len() != y.len() {
        return false;
    }
    let mut used = vec![false; y.len()];
    x.iter().all(|p| {
        let hit = y.iter().enumerate().find(|(i, q)| !used[*i] && answers_match(p, q)).map(|(i, _)| i);
        hit.map(|i| used[i] = true).is_some()
    })
}

fn exprs_match(a: &Expr, b: &Expr) -> bool {
    if has_pm(a) || has_pm(b) {
        return false;
    }
    if let (Some(x), Some(y)) = (exact(a), exact(b)) {
        return x == y;
    }
    numerically_equal(a, b, false)
}

/// Same relation: (l1 - r1) = c (l2 - r2) for a nonzero constant c, at every sample point.
fn equations_match(l1: &Expr, r1: &Expr, l2: &Expr, r2: &Expr) -> bool {
    let d1 = Expr::Add(vec![l1.clone(), Expr::Neg(Box::new(r1.clone()))]);
    let d2 = Expr::Add(vec![l2.clone(), Expr::Neg(Box::new(r2.clone()))]);
    if exprs_match(l1, l2) && exprs_match(r1, r2) {
        return true;
    }
    numerically_equal(&d1, &d2, true)
}

/// Expands every ± into its two values.
fn expand_pm(e: &Expr) -> Vec<Expr> {
    match e {
        Expr::PlusMinus(a, b) => {
            let mut out = Vec::new();
            for x in expand_pm(a) {
                for y in expand_pm(b) {
                    out.push(Expr::Add(vec![x.clone(), y.clone()]));
                    out.push(Expr::Add(vec![x.clone(), Expr::Neg(Box::new(y))]));
                }
            }
            out
        }
        Expr::Add(terms) => {
            let mut out = vec![Vec::new()];
            for t in terms {
                let options = expand_pm(t);
                out = out.into_iter().flat_map(|prefix: Vec<Expr>| options.iter().map(move |o| [prefix.clone(), vec![o.clone()]].concat())).collect();
            }
            out.into_iter().map(Expr::Add).collect()
        }
        Expr::Neg(a) => expand_pm(a).into_iter().map(|x| Expr::Neg(Box::new(x))).collect(),
        _ => vec![e.clone()],
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// The exact rational value, where the expression has one (no variables, π or irrational roots).
pub fn exact(e: &Expr) -> Option<BigRational> {
    Some(match e {
        Expr::Num(n) => n.clone(),
        Expr::Add(t) => t.iter().map(exact).sum::<Option<BigRational>>()?,
        Expr::Mul(f) => f.iter().map(exact).product::<Option<BigRational>>()?,
        Expr::Neg(a) => -exact(a)?,
        Expr::Div(a, b) => {
            let d = exact(b)?;
            if d.is_zero() {
                return None;
            }
            exact(a)? / d
        }
        Expr::Pow(a, b) => {
            let (base, exp) = (exact(a)?, exact(b)?);
            if exp.is_integer() {
                pow_exact(base, exp.to_integer())?
            } else {
                // Rational roots of perfect powers: 8^{1/3} = 2.
                let (num, den) = (exp.numer().to_u32()?, exp.denom().to_u32()?);
                let root = nth_root_exact(&base, den)?;
                pow_exact(root, BigInt::from(num))?
            }
        }
        Expr::Factorial(a) => {
            let n = exact(a)?;
            if !n.is_integer() || n.is_negative() || n > BigRational::from_integer(BigInt::from(5000)) {
                return None;
            }
            let n = n.to_integer().to_u64()?;
            BigRational::from_integer((1..=n).map(BigInt::from).product())
        }
        Expr::Func(name, args) => match (name.as_str(), args.as_slice()) {
            ("sqrt", [x]) => nth_root_exact(&exact(x)?, 2)?,
            ("root", [n, x]) => nth_root_exact(&exact(x)?, exact(n)?.to_integer().to_u32()?)?,
            ("abs", [x]) => exact(x)?.abs(),
            ("binom", [n, k]) => {
                let (n, k) = (exact(n)?, exact(k)?);
                if !n.is_integer() || !k.is_integer() || k.is_negative() || k > n || n.is_negative() {
                    return None;
                }
                let (n, k) = (n.to_integer().to_u64()?, k.to_integer().to_u64()?);
                if k.min(n - k) > 10_000 {
                    return None;
                }
                let mut c = BigInt::one();
                for i in 0..k.min(n - k) {
                    c = c * BigInt::from(n - i) / BigInt::from(i + 1);
                }
                BigRational::from_integer(c)
            }
            _ => return None,
        },
        Expr::Var(_) | Expr::Pi | Expr::Infinity | Expr::PlusMinus(..) => return None,
    })
}

fn pow_exact(base: BigRational, exp: BigInt) -> Option<BigRational> {
    let e: i64 = exp.try_into().ok()?;
    let bits = base.numer().bits().max(base.denom().bits()).max(1);
    if bits.saturating_mul(e.unsigned_abs()) > MAX_POW_BITS || (base.is_zero() && e < 0) {
        return None;
    }
    let b = if e < 0 { base.recip() } else { base };
    Some(num_traits::pow(b, e.unsigned_abs() as usize))
}

fn nth_root_exact(x: &BigRational, n: u32) -> Option<BigRational> {
    if n == 0 || (x.is_negative() && n.is_multiple_of(2)) {
        return None;
    }
    let root = |v: &BigInt| -> Option<BigInt> {
        let r = v.abs().nth_root(n);
        (num_traits::pow(r.clone(), n as usize) == v.abs()).then(|| if v.is_negative() { -r } else { r })
    };
    Some(BigRational::new(root(x.numer())?, root(x.denom())?))
}

fn based_value(digits: &str, base: u32) -> Option<u64> {
    u64::from_str_radix(&digits.to_ascii_lowercase(), base).ok()
}

/// Values at seeded points of the variables agree to 1e-9 relative (with `up_to_factor`: one is
/// a constant nonzero multiple of the other). Points where either side is undefined are skipped;
/// at least three must remain.
fn numerically_equal(a: &Expr, b: &Expr, up_to_factor: bool) -> bool {
    let variables = |e: &Expr| {
        let mut v = Vec::new();
        collect_vars(e, &mut v);
        v.sort();
        v.dedup();
        v
    };
    let (va, vb) = (variables(a), variables(b));
    if !up_to_factor && va != vb {
        return false;
    }
    let mut vars = [va, vb].concat();
    vars.sort();
    vars.dedup();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut ratio: Option<f64> = None;
    let mut checked = 0;
    for _ in 0..12 {
        let env: Vec<(String, f64)> = vars.iter().map(|v| (v.clone(), 0.37 + 2.1 * next())).collect();
        let (x, y) = (eval(a, &env), eval(b, &env));
        if !x.is_finite() || !y.is_finite() {
            if x.is_infinite() && y.is_infinite() && !up_to_factor && x == y {
                checked += 1;
                continue;
            }
            if x.is_nan() || y.is_nan() {
                continue;
            }
            return false;
        }
        if up_to_factor {
            if x.abs() < 1e-12 && y.abs() < 1e-12 {
                continue;
            }
            if x.abs() < 1e-12 || y.abs() < 1e-12 {
                return false;
            }
            let r = x / y;
            match ratio {
                None => ratio = Some(r),
                Some(r0) if close(r, r0) => {}
                _ => return false,
            }
        } else if !close(x, y) {
            return false;
        }
        checked += 1;
        if vars.is_empty() && checked >= 1 {
            return true;
        }
    }
    checked >= 3 || (vars.is_empty() && checked >= 1)
}

fn close(x: f64, y: f64) -> bool {
    let scale = x.abs().max(y.abs());
    (x - y).abs() <= 1e-9 * scale || scale < 1e-300
}

fn collect_vars(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Var(v) => out.push(v.clone()),
        Expr::Add(t) | Expr::Mul(t) | Expr::Func(_, t) => t.iter().for_each(|x| collect_vars(x, out)),
        Expr::Div(a, b) | Expr::Pow(a, b) | Expr::PlusMinus(a, b) => {
            collect_vars(a, out);
            collect_vars(b, out);
        }
        Expr::Neg(a) | Expr::Factorial(a) => collect_vars(a, out),
        Expr::Num(_) | Expr::Pi | Expr::Infinity => {}
    }
}

/// Double-precision value with variables bound (NaN where undefined).
pub fn eval(e: &Expr, env: &[(String, f64)]) -> f64 {
    match e {
        Expr::Num(n) => n.to_f64().unwrap_or(f64::NAN),
        Expr::Var(v) => env.iter().find(|(k, _)| k == v).map_or(f64::NAN, |(_, x)| *x),
        Expr::Pi => std::f64::consts::PI,
        Expr::Infinity => f64::INFINITY,
        Expr::Add(t) => t.iter().map(|x| eval(x, env)).sum(),
        Expr::Mul(f) => f.iter().map(|x| eval(x, env)).product(),
        Expr::Div(a, b) => eval(a, env) / eval(b, env),
        Expr::Neg(a) => -eval(a, env),
        Expr::Pow(a, b) => {
            let (x, y) = (eval(a, env), eval(b, env));
            // Odd roots of negatives: (-8)^{1/3} = -2.
            if x < 0.0 && y.fract() != 0.0 {
                let inv = 1.0 / y;
                if (inv.round() - inv).abs() < 1e-9 && inv.round() as i64 % 2 != 0 {
                    return -(-x).powf(y);
                }
            }
            x.powf(y)
        }
        Expr::Factorial(a) => {
            let n = eval(a, env);
            if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
                return f64::NAN;
            }
            (1..=n as u64).map(|i| i as f64).product()
        }
        Expr::PlusMinus(..) => f64::NAN,
        Expr::Func(name, args) => {
            let v: Vec<f64> = args.iter().map(|x| eval(x, env)).collect();
            match (name.as_str(), v.as_slice()) {
                ("sqrt", [x]) => x.sqrt(),
                ("root", [n, x]) => {
                    if *x < 0.0 && (*n as i64) % 2 != 0 {
                        -(-x).powf(1.0 / n)
                    } else {
                        x.powf(1.0 / n)
                    }
                }
                ("abs", [x]) => x.abs(),
                ("sin", [x]) => x.sin(),
                ("cos", [x]) => x.cos(),
                ("tan", [x]) => x.tan(),
                ("cot", [x]) => 1.0 / x.tan(),
                ("sec", [x]) => 1.0 / x.cos(),
                ("csc", [x]) => 1.0 / x.sin(),
                ("arcsin", [x]) => x.asin(),
                ("arccos", [x]) => x.acos(),
                ("arctan", [x]) => x.atan(),
                ("ln", [x]) => x.ln(),
                ("log", [x]) => x.ln(),
                ("log", [b, x]) => x.ln() / b.ln(),
                ("exp", [x]) => x.exp(),
                ("binom", [n, k]) => {
                    if *k < 0.0 || k.fract() != 0.0 {
                        return f64::NAN;
                    }
                    (0..*k as u64).map(|i| (n - i as f64) / (i + 1) as f64).product()
                }
                _ => f64::NAN,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cleaning and text

/// Notation that never changes the value, removed before parsing.
fn clean(s: &str) -> String {
    // Row breaks (\\) kept apart from the spacing commands below.
    let mut s = s.trim().replace("\\\\", "\u{1}");
    // ",\!" is how MATH writes a thousands separator (11,\! 111,\! 100): one number.
    if s.contains(",\\!") {
        s = s.replace("\\!", "").split(',').map(str::trim).collect::<Vec<_>>().join(",");
    }
    for (from, to) in [
        ("\\displaystyle", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\bigl", ""),
        ("\\bigr", ""),
        ("\\Bigl", ""),
        ("\\Bigr", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\,", " "),
        ("\\!", ""),
        ("\\;", " "),
        ("\\:", " "),
        ("\\quad", " "),
        ("\\qquad", " "),
        ("~", " "),
        ("{,}", ","),
        ("−", "-"),
        ("\\le(", "("),
    ] {
        s = s.replace(from, to);
    }
    // "\ " is a space.
    s = s.replace("\\ ", " ").replace('\u{1}', "\\\\");
    let s = s.trim().trim_end_matches('.').trim().to_string();
    // Markdown bold.
    let mut s = s;
    while let Some(inner) = s.strip_prefix("**").and_then(|t| t.strip_suffix("**")) {
        s = inner.trim().to_string();
    }
    if is_thousands_grouped(&s) {
        s.retain(|c| c != ',');
    }
    s
}

/// `1,234,567` (and with a decimal part): digit groups of three after the first.
fn is_thousands_grouped(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1 && (1..=3).contains(&groups[0].len()) && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit())) && groups[1..].iter().all(|g| g.len() == 3)
}

/// Text answers: commands and braces stripped, lowercase, no spaces.
fn normalize_text(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // Drop the command name (\text, \mathrm, ...), keep what follows.
            while chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                chars.next();
            }
            continue;
        }
        if c == '{' || c == '}' || c == '$' || c.is_whitespace() {
            continue;
        }
        out.extend(c.to_lowercase());
    }
    let out = out.trim_end_matches('.');
    // A choice in parentheses: (c) is c.
    match out.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) if inner.chars().count() == 1 => inner.to_string(),
        _ => out.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Splits at top-level occurrences of `sep` (outside (), [], {}, \{ \}). The scan is over bytes;
/// `sep` and the brackets are ASCII, which never occurs inside a multi-byte character, so every
/// cut is at a character boundary whatever else the text holds.
fn split_top(s: &str, sep: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\\' && i + 1 < bytes.len() && (bytes[i + 1] == b'{' || bytes[i + 1] == b'}') {
            depth += if bytes[i + 1] == b'{' { 1 } else { -1 };
            i += 2;
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && bytes[i..].starts_with(sep.as_bytes()) {
            parts.push(s[start..i].to_string());
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(s[start..].to_string());
    parts
}

fn parse_structure(s: &str) -> Option<Answer> {
    let s = s.trim();
    // Matrices and vectors.
    for env in ["pmatrix", "bmatrix", "matrix", "vmatrix", "Bmatrix"] {
        let open = format!("\\begin{{{env}}}");
        let close = format!("\\end{{{env}}}");
        if let Some(body) = s.strip_prefix(&open).and_then(|b| b.strip_suffix(&close)) {
            let rows: Vec<Vec<Answer>> = split_top(body, "\\\\")
                .iter()
                .filter(|r| !r.trim().is_empty())
                .map(|r| split_top(r, "&").iter().map(|c| parse_structure(c).unwrap_or_else(|| Answer::Text(normalize_text(c)))).collect())
                .collect();
            return Some(Answer::Matrix(rows));
        }
    }
    // "x \in [2, 5)": the set itself.
    if let Some(rest) = s.strip_prefix(|c: char| c.is_ascii_alphabetic()).map(str::trim_start).and_then(|t| t.strip_prefix("\\in"))
        && !rest.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return parse_structure(rest);
    }
    // Unions of intervals or sets.
    let union = split_top(s, "\\cup");
    if union.len() > 1 {
        return union.iter().map(|p| parse_structure(p)).collect::<Option<Vec<_>>>().map(Answer::Union);
    }
    // Sets in braces.
    if let Some(body) = s.strip_prefix("\\{").and_then(|b| b.strip_suffix("\\}")) {
        return split_top(body, ",").iter().map(|p| parse_structure(p)).collect::<Option<Vec<_>>>().map(Answer::Set);
    }
    // A base subscript: 204_5, 1011_{2}, (A3)_{16}.
    if let Some((digits, base)) = s.split_once('_') {
        let base = base.trim_matches(|c| c == '{' || c == '}');
        let digits = digits.trim_matches(|c| c == '(' || c == ')');
        if let Ok(b) = base.parse::<u32>()
            && (2..=36).contains(&b)
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_alphanumeric())
            && based_value(digits, b).is_some()
        {
            return Some(Answer::Based(digits.to_ascii_uppercase(), b));
        }
    }
    // Top-level comma lists: tuples and intervals in brackets, else a list of solutions.
    let first = s.chars().next()?;
    let last = s.chars().last()?;
    if matches!(first, '(' | '[') && matches!(last, ')' | ']') {
        let inner = &s[1..s.len() - 1];
        // Only when the brackets enclose the whole answer.
        if split_top(inner, ",").len() > 1 && bracket_span_is_whole(s) {
            let parts = split_top(inner, ",");
            return parts.iter().map(|p| parse_structure(p)).collect::<Option<Vec<_>>>().map(|v| Answer::Tuple(first, v, last));
        }
    }
    let parts = split_top(s, ",");
    if parts.len() > 1 {
        return parts.iter().map(|p| parse_structure(p)).collect::<Option<Vec<_>>>().map(Answer::Set);
    }
    // Equations: a = b (a chain a = b = c is not taken).
    let sides = split_top(s, "=");
    if sides.len() == 2 {
        let (l, r) = (parse_expr(&sides[0])?, parse_expr(&sides[1])?);
        return Some(Answer::Equation(l, r));
    }
    if sides.len() > 2 {
        return None;
    }
    // Pure text: \text{...} holding words.
    if let Some(inner) = s.strip_prefix("\\text{").or_else(|| s.strip_prefix("\\textbf{")).or_else(|| s.strip_prefix("\\mathrm{")).and_then(|t| t.strip_suffix('}'))
        && inner.chars().any(|c| c.is_ascii_alphabetic())
        && !inner.contains('\\')
    {
        let trimmed = inner.trim();
        if let Some(e) = parse_expr(trimmed).filter(|_| trimmed.chars().any(|c| c.is_ascii_digit())) {
            return Some(Answer::Expr(e));
        }
        return Some(Answer::Text(normalize_text(inner)));
    }
    parse_expr(s).map(Answer::Expr)
}

/// Whether the opening bracket at 0 closes at the very end.
fn bracket_span_is_whole(s: &str) -> bool {
    let mut depth = 0i32;
    let n = s.len();
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 && i + c.len_utf8() != n {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Letter(char),
    Cmd(String),
    Sym(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))) {
                i += 1;
            }
            // 2.5e3, 1E-4.
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '-' || chars[j] == '+') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c == '\\' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            if i == start {
                // \{ \} \| and the like.
                let sym = *chars.get(i)?;
                i += 1;
                out.push(Tok::Cmd(sym.to_string()));
            } else {
                out.push(Tok::Cmd(chars[start..i].iter().collect()));
            }
        } else if c.is_alphabetic() {
            out.push(Tok::Letter(c));
            i += 1;
        } else if "+-*/^_()[]{}|!'".contains(c) || c == '×' || c == '·' {
            out.push(Tok::Sym(match c {
                '×' | '·' => '*',
                other => other,
            }));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

/// Parses one expression (no top-level commas).
pub fn parse_expr(s: &str) -> Option<Expr> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.sum()?;
    // Trailing units: \text{cm}, \mbox{ dollars}, \mathrm{m}.
    while p.pos < p.toks.len() {
        if !p.skip_unit() {
            return None;
        }
    }
    Some(e)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

const FUNCTIONS: &[&str] = &["sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "ln", "log", "exp"];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_cmd(&mut self, name: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Cmd(n)) if n == name) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A unit or word group after the value (`\text{ cm}`, `\mbox{...}`), skipped.
    fn skip_unit(&mut self) -> bool {
        let save = self.pos;
        if let Some(Tok::Cmd(n)) = self.peek()
            && matches!(n.as_str(), "text" | "mbox" | "mathrm" | "textbf" | "textit")
        {
            self.pos += 1;
            if self.skip_group() {
                return true;
            }
        }
        self.pos = save;
        false
    }

    /// Consumes a brace group `{...}` (nested braces included); false, having consumed
    /// nothing, when there is no complete one here.
    fn skip_group(&mut self) -> bool {
        if self.peek() != Some(&Tok::Sym('{')) {
            return false;
        }
        let save = self.pos;
        let mut depth = 0;
        while let Some(t) = self.toks.get(self.pos) {
            self.pos += 1;
            match t {
                Tok::Sym('{') => depth += 1,
                Tok::Sym('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return true;
                    }
                }
                _ => {}
            }
        }
        self.pos = save;
        false
    }

    fn sum(&mut self) -> Option<Expr> {
        self.depth += 1;
        let e = if self.depth > MAX_DEPTH { None } else { self.sum_inner() };
        self.depth -= 1;
        e
    }

    fn sum_inner(&mut self) -> Option<Expr> {
        if self.eat_cmd("pm") || self.eat_cmd("mp") {
            let t = self.product()?;
            return self.sum_rest(vec![], Some(Expr::PlusMinus(Box::new(Expr::Num(BigRational::zero())), Box::new(t))));
        }
        let first = self.product()?;
        self.sum_rest(vec![first], None)
    }

    fn sum_rest(&mut self, mut terms: Vec<Expr>, mut pm: Option<Expr>) -> Option<Expr> {
        loop {
            if self.eat_sym('+') {
                terms.push(self.product()?);
            } else if self.eat_sym('-') {
                terms.push(Expr::Neg(Box::new(self.product()?)));
            } else if self.eat_cmd("pm") || self.eat_cmd("mp") {
                let t = self.product()?;
                let rest = std::mem::take(&mut terms);
                let base = match pm.take() {
                    Some(p) => Expr::Add([vec![p], rest].concat()),
                    None => Expr::Add(rest),
                };
                pm = Some(Expr::PlusMinus(Box::new(base), Box::new(t)));
            } else {
                break;
            }
        }
        match pm {
            Some(p) if terms.is_empty() => Some(p),
            Some(p) => Some(Expr::Add([vec![p], terms].concat())),
            None if terms.len() == 1 => terms.pop(),
            None => Some(Expr::Add(terms)),
        }
    }

    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_) | Tok::Letter(_)) => true,
            Some(Tok::Sym(c)) => matches!(c, '(' | '{' | '['),
            Some(Tok::Cmd(n)) => matches!(n.as_str(), "frac" | "sqrt" | "pi" | "infty" | "binom" | "{" | "|") || FUNCTIONS.contains(&n.as_str()),
            None => false,
        }
    }

    fn product(&mut self) -> Option<Expr> {
        let mut factors = vec![self.unary()?];
        loop {
            if self.eat_sym('*') || self.eat_cmd("cdot") || self.eat_cmd("times") {
                factors.push(self.unary()?);
            } else if self.eat_sym('/') || self.eat_cmd("div") {
                let d = self.unary()?;
                let n = if factors.len() == 1 { factors.pop()? } else { Expr::Mul(std::mem::take(&mut factors)) };
                factors = vec![Expr::Div(Box::new(n), Box::new(d))];
            } else if self.starts_factor() {
                // A mixed number: 2\frac{1}{2} is 2 + 1/2.
                let mixed = factors.len() == 1 && matches!(&factors[0], Expr::Num(n) if n.is_integer() && !n.is_negative()) && matches!(self.peek(), Some(Tok::Cmd(n)) if n == "frac");
                let f = self.power()?;
                if mixed && matches!(&f, Expr::Div(a, b) if matches!(**a, Expr::Num(_)) && matches!(**b, Expr::Num(_))) {
                    let whole = factors.pop()?;
                    factors.push(Expr::Add(vec![whole, f]));
                } else {
                    factors.push(f);
                }
            } else {
                break;
            }
        }
        Some(if factors.len() == 1 { factors.pop()? } else { Expr::Mul(factors) })
    }

    fn unary(&mut self) -> Option<Expr> {
        if self.eat_sym('-') {
            self.depth += 1;
            let e = if self.depth > MAX_DEPTH { None } else { self.unary() };
            self.depth -= 1;
            return Some(Expr::Neg(Box::new(e?)));
        }
        if self.eat_sym('+') {
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Option<Expr> {
        let base = self.postfix()?;
        if self.eat_sym('^') {
            let exp = self.group_or_atom()?;
            let e = Expr::Pow(Box::new(base), Box::new(exp));
            return self.factorials(e);
        }
        Some(base)
    }

    fn postfix(&mut self) -> Option<Expr> {
        let e = self.primary()?;
        self.factorials(e)
    }

    fn factorials(&mut self, mut e: Expr) -> Option<Expr> {
        while self.eat_sym('!') {
            e = Expr::Factorial(Box::new(e));
        }
        Some(e)
    }

    /// `{...}` or a single token (exponents, `\frac12`).
    fn group_or_atom(&mut self) -> Option<Expr> {
        if self.eat_sym('{') {
            let e = self.sum()?;
            return self.eat_sym('}').then_some(e);
        }
        match self.peek()?.clone() {
            Tok::Num(n) => {
                self.pos += 1;
                // One digit only: \frac12, x^23 is x^2 * 3 in LaTeX.
                let first: String = n.chars().take(1).collect();
                if n.len() > 1 {
                    let rest: String = n.chars().skip(1).collect();
                    self.toks.insert(self.pos, Tok::Num(rest));
                }
                number(&first)
            }
            Tok::Sym('-') => {
                self.pos += 1;
                Some(Expr::Neg(Box::new(self.group_or_atom()?)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Option<Expr> {
        let t = self.peek()?.clone();
        self.pos += 1;
        match t {
            Tok::Num(n) => number(&n),
            Tok::Letter(c) => {
                // Subscripted names: x_1, a_{n}.
                let mut name = c.to_string();
                if self.eat_sym('_') {
                    match self.peek()?.clone() {
                        Tok::Num(n) | Tok::Cmd(n) => {
                            self.pos += 1;
                            name += &format!("_{n}");
                        }
                        Tok::Letter(l) => {
                            self.pos += 1;
                            name += &format!("_{l}");
                        }
                        Tok::Sym('{') => {
                            let start = self.pos;
                            if !self.skip_group() {
                                return None;
                            }
                            name += &format!("_{:?}", &self.toks[start..self.pos]);
                        }
                        _ => return None,
                    }
                }
                Some(Expr::Var(name))
            }
            Tok::Sym('(') => {
                let e = self.sum()?;
                self.eat_sym(')').then_some(e)
            }
            Tok::Sym('[') => {
                let e = self.sum()?;
                self.eat_sym(']').then_some(e)
            }
            Tok::Sym('{') => {
                let e = self.sum()?;
                self.eat_sym('}').then_some(e)
            }
            Tok::Sym('|') => {
                let e = self.sum()?;
                self.eat_sym('|').then(|| Expr::Func("abs".into(), vec![e]))
            }
            Tok::Cmd(name) => match name.as_str() {
                "frac" => {
                    let n = self.group_or_atom()?;
                    let d = self.group_or_atom()?;
                    Some(Expr::Div(Box::new(n), Box::new(d)))
                }
                "binom" => {
                    let n = self.group_or_atom()?;
                    let k = self.group_or_atom()?;
                    Some(Expr::Func("binom".into(), vec![n, k]))
                }
                "sqrt" => {
                    if self.eat_sym('[') {
                        let n = self.sum()?;
                        if !self.eat_sym(']') {
                            return None;
                        }
                        let x = self.group_or_atom()?;
                        return Some(Expr::Func("root".into(), vec![n, x]));
                    }
                    let x = self.group_or_atom()?;
                    Some(Expr::Func("sqrt".into(), vec![x]))
                }
                "pi" => Some(Expr::Pi),
                "infty" | "infinity" => Some(Expr::Infinity),
                "|" => {
                    let e = self.sum()?;
                    self.eat_cmd("|").then(|| Expr::Func("abs".into(), vec![e]))
                }
                "text" | "mbox" | "mathrm" | "textbf" | "mathbf" | "operatorname" => {
                    // A number written in text: \text{5}.
                    let e = self.group_or_atom()?;
                    Some(e)
                }
                f if FUNCTIONS.contains(&f) => {
                    // \log_2 x, \sin^2 x, \sin(x), \sin x.
                    let mut args = Vec::new();
                    if f == "log" && self.eat_sym('_') {
                        args.push(self.group_or_atom()?);
                    }
                    let power = if self.eat_sym('^') { Some(self.group_or_atom()?) } else { None };
                    let arg = if matches!(self.peek(), Some(Tok::Sym('('))) { self.primary()? } else { self.power()? };
                    args.push(arg);
                    let call = Expr::Func(f.to_string(), args);
                    Some(match power {
                        Some(p) => Expr::Pow(Box::new(call), Box::new(p)),
                        None => call,
                    })
                }
                _ => None,
            },
            _ => None,
        }
    }
}

fn number(s: &str) -> Option<Expr> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(s[i + 1..].parse::<i64>().ok()?)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: BigInt = format!("{int}{frac}").parse().ok()?;
    let mut v = BigRational::new(digits, num_traits::pow(BigInt::from(10), frac.len()));
    if let Some(e) = exp {
        if e.abs() > 10_000 {
            return None;
        }
        v *= pow_exact(BigRational::from_integer(BigInt::from(10)), BigInt::from(e))?;
    }
    Some(Expr::Num(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_by_value() {
        for (a, b) in [
            ("\\sqrt2", "\\sqrt{2}"),
            ("2\\sqrt{2}", "\\sqrt{8}"),
            ("\\frac12", "0.5"),
            ("\\frac{1}{2}", "1/2"),
            ("3\\cdot 4", "12"),
            ("2\\pi", "\\pi \\cdot 2"),
            ("x^2+2x+1", "(x+1)^2"),
            ("\\{1,2,3\\}", "\\{3,2,1\\}"),
            ("1, 2", "2, 1"),
            ("(1,2)", "(1, 2)"),
            ("[-2, 3)", "[-2,3)"),
            ("x = 5", "5"),
            ("y = 2x + 1", "y = 1 + 2x"),
            ("2x - y = 3", "4x - 2y - 6 = 0"),
            ("\\pm 3", "3, -3"),
            ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2"),
            ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
            ("204_5", "204_{5}"),
            ("5\\text{ cm}", "5"),
            ("\\$18.90", "18.9"),
            ("30^\\circ", "30"),
            ("2\\frac{1}{2}", "\\frac52"),
            ("10!", "3628800"),
            ("\\binom{5}{2}", "10"),
            ("8^{1/3}", "2"),
            ("\\text{(C)}", "(C)"),
            ("\\text{Monday}", "monday"),
            ("(-\\infty, 3]", "(-\\infty,3]"),
            ("(-\\infty, 1) \\cup (2, \\infty)", "(2,\\infty)\\cup(-\\infty,1)"),
            ("1.5\\times10^{3}", "1500"),
            ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt3"),
            ("3+4i", "4i+3"),
            ("\\sqrt[3]{-8}", "-2"),
            ("11,\\! 111,\\! 100", "11111100"),
            ("10{,}080", "10080"),
            ("x \\in [2, 5)", "[2,5)"),
            ("\\frac{x+1}{2}", "(x+1)/2"),
            ("\\dfrac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}"),
            ("2^{-1}", "0.5"),
            ("\\frac{3}{\\sqrt{2}}", "\\frac{3\\sqrt2}{2}"),
            ("\\textbf{(A)}", "A"),
            ("50\\%", "50"),
        ] {
            assert!(equivalent(a, b), "{a:?} should equal {b:?}: {:?} vs {:?}", parse_answer(a), parse_answer(b));
        }
    }

    #[test]
    fn hostile_answers_are_bounded() {
        // Each returns at once instead of computing a huge exact value or recursing without end.
        assert!(!equivalent("2^{2^{2^{30}}}", "1"));
        assert!(!equivalent("(10^{1000})^{100000}", "1"));
        assert!(!equivalent("\\binom{1000000000}{500000000}", "1"));
        assert!(!equivalent("100000000!", "1"));
        assert!(!equivalent(&"{".repeat(100_000), "1"));
        assert!(!equivalent(&format!("{}1{}", "(".repeat(1500), ")".repeat(1500)), "2"));
        assert!(!equivalent(&"-".repeat(1900), "1"));
        assert!(equivalent("(((((1)))))", "1"));
    }

    /// Model text may hold any character (a `cargo xtask train` run once sampled U+FFFD before a
    /// number, and the top-level splitter cut inside it and panicked): splitting and parsing
    /// never cut inside a character, and answers around such characters still compare.
    #[test]
    fn answers_with_multibyte_characters() {
        for text in ["\u{fffd}882", "\u{fffd}8,82", "é & 2", "\\begin{pmatrix} é & 2 \\\\ 3 & ü \\end{pmatrix}", "1, \u{fffd}, 2", "(é, 1]", "x = ü"] {
            let _ = parse_answer(text);
            assert!(!equivalent(text, "883"), "{text:?}");
            assert!(equivalent(text, text), "{text:?} should equal itself");
        }
        assert!(equivalent("1, 2, 3", "3,2,1") && !equivalent("\u{fffd}1, 2", "1, 2"));
    }

    #[test]
    fn different_values_never_match() {
        for (a, b) in [
            ("0.59", "\\frac{16}{27}"),
            ("440.1", "440"),
            ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
            ("(1,2]", "[1,2]"),
            ("\\pm 2021", "2021"),
            ("1,2", "12"),
            ("3x-y+13=0", "3x+4y+14=0"),
            ("(1,2)", "(2,1)"),
            ("\\sqrt2", "1.414"),
            ("x+1", "y+1"),
            ("\\pi", "3.14159"),
            ("204_5", "54"),
            ("3+4i", "3+4j"),
            ("2\\frac{1}{2}", "1"),
            ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
            ("11,\\! 111,\\! 100", "100, 111, 11"),
            ("52_8", "52_9"),
            ("(-\\infty, 0]", "[-\\infty, 0]"),
            (".0000672", ".0000673"),
        ] {
            assert!(!equivalent(a, b), "{a:?} must not equal {b:?}");
        }
    }
}
