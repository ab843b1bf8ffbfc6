//! The reward: 1 iff the final answer equals the ground truth, else 0 (paper Eq. 3).
//!
//! The answer is the last brace-matched `\boxed{...}` (or `\fbox{...}`) inside the last
//! `<answer>...</answer>` (or anywhere, as an option). Both sides are normalized (`\text{}`, `$`,
//! spaces, thousands separators, `^\circ`, `\%`, `x =` prefixes, `\left`/`\right`,
//! `\dfrac`/`\tfrac`) and compared exactly as rationals when both parse as numbers (integers of
//! any size, decimals, fractions, integer powers, scientific notation), else as normalized
//! strings. There is no floating-point tolerance, so near values never match, and no symbolic
//! algebra, so `\pm 2021` never equals `2021`.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};
use serde::{Deserialize, Serialize};

/// Where the answer is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerScope {
    /// The last `\boxed{}` inside the last `<answer>...</answer>` (the rStar2 prompt's contract).
    #[default]
    AnswerTag,
    /// The last `\boxed{}` anywhere in the response (the release's PRIME grader).
    Anywhere,
}

/// The outcome of checking one response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// 1 if correct, else 0.
    pub reward: u8,
    /// The boxed text that was compared, if one was found.
    pub extracted: Option<String>,
}

/// Scores `response` against `ground_truth`. A truncated response (cut by the length budget)
/// scores 0 whatever it contains, as in the paper.
///
/// ```
/// use rstar2_grpo::reward::{verify, AnswerScope};
/// let v = verify("<reason>...</reason><answer>So \\boxed{\\frac{6}{4}}.</answer>", "3/2", AnswerScope::AnswerTag, false);
/// assert_eq!(v.reward, 1);
/// ```
pub fn verify(response: &str, ground_truth: &str, scope: AnswerScope, truncated: bool) -> Verdict {
    let extracted = extract_answer(response, scope);
    let reward = match &extracted {
        Some(answer) if !truncated => u8::from(answers_equal(answer, ground_truth)),
        _ => 0,
    };
    Verdict { reward, extracted }
}

/// The content of the last brace-matched `\boxed{}` or `\fbox{}` in the chosen scope.
pub fn extract_answer(response: &str, scope: AnswerScope) -> Option<String> {
    let region = match scope {
        AnswerScope::Anywhere => response,
        AnswerScope::AnswerTag => {
            let open = response.rfind("<answer>")?;
            let body = &response[open + "<answer>".len()..];
            &body[..body.find("</answer>")?]
        }
    };
    last_boxed(region)
}

fn last_boxed(text: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for marker in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(marker).map(|p| p + from) {
            from = pos + marker.len();
            let rest = &text[from..];
            let trimmed = rest.trim_start();
            let Some(inner) = trimmed.strip_prefix('{') else { continue };
            if let Some(content) = brace_matched(inner)
                && best.as_ref().is_none_or(|(p, _)| pos > *p)
            {
                best = Some((pos, content.to_string()));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// The text up to the `}` that closes an already opened `{`.
fn brace_matched(after_open: &str) -> Option<&str> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in after_open.char_indices() {
        match c {
            '\\' => {
                escaped = !escaped;
                continue;
            }
            '{' if !escaped => depth += 1,
            '}' if !escaped => {
                depth -= 1;
                if depth == 0 {
                    return Some(&after_open[..i]);
                }
            }
            _ => {}
        }
        escaped = false;
    }
    None
}

/// Whether two answers are equal after normalization: exactly as rationals when both are
/// numbers, else as normalized strings.
pub fn answers_equal(answer: &str, ground_truth: &str) -> bool {
    let (a, b) = (normalize(answer), normalize(ground_truth));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    match (parse_number(&a), parse_number(&b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

/// Removes notation that does not change the value.
pub fn normalize(text: &str) -> String {
    let mut s = text.trim().to_string();
    // Unwrap \text{...}, \textbf{...}, \mathrm{...}, \mbox{...}.
    for command in ["\\text", "\\textbf", "\\mathrm", "\\mbox", "\\mathbf"] {
        s = unwrap_command(&s, command);
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\,", ""),
        ("\\!", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("{,}", ","),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("−", "-"),
    ] {
        s = s.replace(from, to);
    }
    s.retain(|c| !c.is_whitespace());
    // Markdown bold around the whole answer.
    while let Some(inner) = s.strip_prefix("**").and_then(|t| t.strip_suffix("**")) {
        s = inner.to_string();
    }
    // "x=5", "n=5": a single-letter variable name before the value.
    let bytes = s.as_bytes();
    if bytes.len() > 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'=' {
        s = s[2..].to_string();
    }
    if let Some(stripped) = s.strip_suffix('.') {
        s = stripped.to_string();
    }
    // Thousands separators, only in the exact 1,234,567 pattern (a list "2,3,4" stays a list).
    if is_thousands_grouped(&s) {
        s.retain(|c| c != ',');
    }
    s
}

fn unwrap_command(s: &str, command: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(command) {
        let after = &rest[pos + command.len()..];
        // Only the command itself, not a longer one (\text vs \textbf).
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&rest[..pos + command.len()]);
            rest = after;
            continue;
        }
        match after.strip_prefix('{').and_then(|inner| brace_matched(inner).map(|c| (c, inner))) {
            Some((content, inner)) => {
                out.push_str(&rest[..pos]);
                out.push_str(content);
                rest = &inner[content.len() + 1..];
            }
            None => {
                out.push_str(&rest[..pos + command.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

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
    groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// Parses a normalized answer as an exact rational: integers, decimals, `a/b`, `\frac{a}{b}`,
/// `\frac12`, integer powers `a^{n}`, `a*10^{n}`, `1.5e3`, with a leading sign.
pub fn parse_number(s: &str) -> Option<BigRational> {
    let s = strip_outer_braces(s);
    if let Some(rest) = s.strip_prefix('-') {
        return parse_number(rest).map(|v| -v);
    }
    if let Some(rest) = s.strip_prefix('+') {
        return parse_number(rest);
    }
    if let Some(rest) = s.strip_prefix("\\frac") {
        let (num, rest) = take_group(rest)?;
        let (den, rest) = take_group(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let den = parse_number(den)?;
        return (!den.is_zero()).then(|| parse_number(num).map(|n| n / den)).flatten();
    }
    if let Some((a, b)) = split_top_level(s, '/') {
        let den = parse_number(b)?;
        return (!den.is_zero()).then(|| parse_number(a).map(|n| n / den)).flatten();
    }
    if let Some((a, b)) = split_top_level(s, '*') {
        return Some(parse_number(a)? * parse_number(b)?);
    }
    if let Some((base, exp)) = split_top_level(s, '^') {
        let base = parse_number(base)?;
        let exp = parse_integer(strip_outer_braces(exp))?;
        return pow_rational(base, exp);
    }
    parse_decimal(s)
}

fn strip_outer_braces(s: &str) -> &str {
    let mut s = s;
    loop {
        if let Some(inner) = s.strip_prefix('{')
            && brace_matched(inner).map(str::len) == Some(inner.len().wrapping_sub(1))
        {
            s = &inner[..inner.len() - 1];
            continue;
        }
        if let Some(inner) = s.strip_prefix('(').and_then(|t| t.strip_suffix(')'))
            && !inner.contains(['(', ')', ','])
        {
            s = inner;
            continue;
        }
        return s;
    }
}

/// One `\frac` argument: `{...}` or a single character (`\frac12`).
fn take_group(s: &str) -> Option<(&str, &str)> {
    if let Some(inner) = s.strip_prefix('{') {
        let content = brace_matched(inner)?;
        Some((content, &inner[content.len() + 1..]))
    } else {
        let c = s.chars().next()?;
        c.is_ascii_digit().then(|| s.split_at(c.len_utf8()))
    }
}

/// Splits at the last occurrence of `op` outside braces/parentheses (left-associative), not at
/// a leading sign.
fn split_top_level(s: &str, op: char) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut found = None;
    for (i, c) in s.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => depth -= 1,
            _ if c == op && depth == 0 && i > 0 => {
                found = Some(i);
                if op == '^' {
                    // Right-associative: the first one.
                    break;
                }
            }
            _ => {}
        }
    }
    found.map(|i| (&s[..i], &s[i + op.len_utf8()..]))
}

fn parse_integer(s: &str) -> Option<BigInt> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: BigInt = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// `12`, `12.50`, `.5`, `1.5e3`, `2E-4`.
fn parse_decimal(s: &str) -> Option<BigRational> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(parse_integer(&s[i + 1..])?)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: BigInt = format!("{int}{frac}").parse().ok()?;
    let mut value = BigRational::new(digits, num_traits::pow(BigInt::from(10), frac.len()));
    if let Some(exp) = exp {
        value = value * pow_rational(BigRational::from_integer(BigInt::from(10)), exp)?;
    }
    Some(value)
}

/// Exact integer power; refuses exponents so large the result would be astronomically big.
fn pow_rational(base: BigRational, exp: BigInt) -> Option<BigRational> {
    let e: i64 = exp.try_into().ok()?;
    if e.unsigned_abs() > 100_000 {
        return None;
    }
    if base.is_zero() && e < 0 {
        return None;
    }
    let mut result = BigRational::one();
    let b = if e < 0 { base.recip() } else { base };
    for _ in 0..e.unsigned_abs() {
        result *= &b;
    }
    Some(result)
}
