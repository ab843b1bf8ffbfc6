//! A bound on how deeply Python source nests, found in one pass before anything parses it.
//!
//! The parser, the sandbox's own scan ([`crate::analysis`]), RustPython's symbol table and
//! compiler all recurse once per level of nesting, and none of them counts its native stack: a
//! chain of a few hundred thousand unary minuses, attribute lookups or additions overflows an
//! interpreter thread's stack and ends the whole process. RustPython refuses anything deeper
//! than about a thousand levels anyway ("maximum recursion depth exceeded during compilation"),
//! so source whose bound passes [`DEFAULT_MAX_NESTING`] is refused with that same error before
//! it is parsed, at a depth that every parser path measured here survives with room to spare.
//!
//! The bound never undercounts: every level of an expression or statement comes from an opening
//! bracket, an operator or keyword, a dot, or indentation, and each of those adds one. It
//! overcounts flat constructs (a comparison or `and` chain, `==` counted twice), which only code
//! with thousands of operators between two commas could notice.
//!
//! ```
//! use rstar2_sandbox::depth::nesting_bound;
//! assert_eq!(nesting_bound("print(1)"), 2);
//! assert!(nesting_bound(&format!("{}1", "-".repeat(50_000))) >= 50_000);
//! ```

/// Where source is refused by default: 10x below the shallowest native stack overflow measured
/// on a 16 MiB interpreter thread (100,000 levels of every shape tried compile to a clean error).
pub const DEFAULT_MAX_NESTING: usize = 10_000;

/// The message RustPython (and CPython) give for source nested too deeply to compile.
pub const TOO_DEEP: &str = "maximum recursion depth exceeded during compilation";

/// What the scanner is inside of.
#[derive(Clone, Copy)]
enum Frame {
    /// A bracket pair in code; `chain` counts operators since its last comma.
    Bracket { chain: usize },
    /// The literal part of an f-string (or t-string).
    Interpolated { quote: u8, triple: bool },
    /// The code between an f-string's braces, ended by `}` at this level.
    Replacement { chain: usize },
    /// A format spec after `:` in an f-string's braces.
    Spec,
}

const KEYWORDS: &[&[u8]] = &[
    b"and",
    b"as",
    b"assert",
    b"async",
    b"await",
    b"del",
    b"elif",
    b"else",
    b"except",
    b"for",
    b"from",
    b"global",
    b"if",
    b"import",
    b"in",
    b"is",
    b"lambda",
    b"nonlocal",
    b"not",
    b"or",
    b"raise",
    b"return",
    b"while",
    b"with",
    b"yield",
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// An upper bound on the nesting depth of `source` (bytes of Python source; stops counting
/// once past `usize::MAX / 2`, never in practice).
pub fn nesting_bound(source: &str) -> usize {
    nesting_bound_bytes(source.as_bytes())
}

/// [`nesting_bound`] of source given as bytes (`compile(b"...")`).
pub fn nesting_bound_bytes(src: &[u8]) -> usize {
    let mut s = Scan { frames: Vec::new(), chain: 0, indent: 0, total: 0, max: 0 };
    // End and start of the last word, for string prefixes (`rb"`, `f'`).
    let mut word: (usize, usize) = (usize::MAX, 0);
    let mut i = 0usize;
    let mut line_start = true;
    while i < src.len() {
        if line_start {
            line_start = false;
            s.indent = src[i..].iter().take_while(|&&b| b == b' ' || b == b'\t' || b == b'\x0c').count();
            i += s.indent;
            s.chain = 0;
            s.recount();
            continue;
        }
        let b = src[i];
        match s.frames.last().copied() {
            Some(Frame::Interpolated { quote, triple }) => {
                match b {
                    b'\\' => i += 1,
                    _ if b == quote && (!triple || src[i..].starts_with(&[quote; 3])) => {
                        s.pop();
                        i += if triple { 2 } else { 0 };
                    }
                    b'\n' if !triple => s.pop(),
                    b'{' if src.get(i + 1) == Some(&b'{') => i += 1,
                    b'{' => s.push(Frame::Replacement { chain: 0 }),
                    b'}' if src.get(i + 1) == Some(&b'}') => i += 1,
                    _ => {}
                }
                i += 1;
            }
            Some(Frame::Spec) => {
                match b {
                    b'{' => s.push(Frame::Replacement { chain: 0 }),
                    b'}' => {
                        s.pop();
                        s.pop();
                    }
                    b'\n' => {
                        // An unterminated spec in a one-line f-string (the lexer's error): close it.
                        let keep = s.frames.iter().rposition(|f| matches!(f, Frame::Interpolated { triple: false, .. })).unwrap_or(0);
                        s.frames.truncate(keep);
                        s.recount();
                    }
                    _ => {}
                }
                i += 1;
            }
            _ => {
                match b {
                    b'#' => {
                        while i < src.len() && src[i] != b'\n' {
                            i += 1;
                        }
                        continue;
                    }
                    b'\\' if src.get(i + 1) == Some(&b'\n') => i += 1,
                    b'\\' if src[i + 1..].starts_with(b"\r\n") => i += 2,
                    b'\'' | b'"' => {
                        let prefix = if word.0 == i { &src[word.1..i] } else { &[][..] };
                        let is_prefix = prefix.len() <= 2 && prefix.iter().all(|c| b"rRbBuUfFtT".contains(c));
                        let interpolated = is_prefix && prefix.iter().any(|c| b"fFtT".contains(c));
                        let triple = src[i..].starts_with(&[b; 3]);
                        i += if triple { 3 } else { 1 };
                        if interpolated {
                            s.push(Frame::Interpolated { quote: b, triple });
                            continue;
                        }
                        while i < src.len() {
                            match src[i] {
                                b'\\' => i += 1,
                                q if q == b && (!triple || src[i..].starts_with(&[b; 3])) => {
                                    i += if triple { 3 } else { 1 };
                                    break;
                                }
                                b'\n' if !triple => break,
                                _ => {}
                            }
                            i += 1;
                        }
                        continue;
                    }
                    b'(' | b'[' | b'{' => {
                        s.bump();
                        s.push(Frame::Bracket { chain: 0 });
                    }
                    b')' | b']' if matches!(s.frames.last(), Some(Frame::Bracket { .. })) => s.pop(),
                    b'}' if matches!(s.frames.last(), Some(Frame::Bracket { .. } | Frame::Replacement { .. })) => s.pop(),
                    b':' if matches!(s.frames.last(), Some(Frame::Replacement { .. })) => s.push(Frame::Spec),
                    b',' => s.comma(),
                    b';' if s.frames.is_empty() => s.comma(),
                    b'\n' if s.frames.is_empty() => line_start = true,
                    b'+' | b'-' | b'*' | b'/' | b'%' | b'@' | b'&' | b'|' | b'^' | b'~' | b'<' | b'>' | b'=' | b'!' | b'.' | b':' => s.bump(),
                    _ if is_word_byte(b) => {
                        let start = i;
                        if b.is_ascii_digit() {
                            // A number: digits, letters, `_` and `.` (1.5e3, 0x_ff, 1j).
                            while i < src.len() && (is_word_byte(src[i]) || src[i] == b'.') {
                                i += 1;
                            }
                        } else {
                            while i < src.len() && is_word_byte(src[i]) {
                                i += 1;
                            }
                            if KEYWORDS.contains(&&src[start..i]) {
                                s.bump();
                            }
                        }
                        word = (i, start);
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
    }
    s.max
}

/// The scanner's state: the open frames, the top level's chain and indentation, and `total`,
/// their depth (indentation + chain + the sum over frames of one plus their chain), kept as
/// they change so each byte costs O(1).
struct Scan {
    frames: Vec<Frame>,
    chain: usize,
    indent: usize,
    total: usize,
    max: usize,
}

impl Scan {
    fn note(&mut self) {
        self.max = self.max.max(self.total);
    }

    fn recount(&mut self) {
        self.total = self.indent + self.chain + self.frames.iter().map(|f| 1 + f.chain()).sum::<usize>();
        self.note();
    }

    fn push(&mut self, frame: Frame) {
        self.total += 1 + frame.chain();
        self.frames.push(frame);
        self.note();
    }

    fn pop(&mut self) {
        if let Some(f) = self.frames.pop() {
            self.total -= 1 + f.chain();
        }
    }

    /// One more operator, keyword or bracket in the innermost code.
    fn bump(&mut self) {
        match self.frames.last_mut() {
            Some(Frame::Bracket { chain } | Frame::Replacement { chain }) => *chain += 1,
            _ => self.chain += 1,
        }
        self.total += 1;
        self.note();
    }

    /// A comma (or `;` at the top): what follows starts a new chain.
    fn comma(&mut self) {
        let old = match self.frames.last_mut() {
            Some(Frame::Bracket { chain } | Frame::Replacement { chain }) => std::mem::take(chain),
            _ => std::mem::take(&mut self.chain),
        };
        self.total -= old;
    }
}

impl Frame {
    fn chain(&self) -> usize {
        match *self {
            Frame::Bracket { chain } | Frame::Replacement { chain } => chain,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_counted_bounds() {
        assert_eq!(nesting_bound(""), 0);
        assert_eq!(nesting_bound("x"), 0);
        // `print` then `(` opens one bracket, counted once as the call and once as the bracket.
        assert_eq!(nesting_bound("print(1)"), 2);
        assert_eq!(nesting_bound("---1"), 3);
        assert_eq!(nesting_bound("a.b.c"), 2);
        // Commas end a chain: a long flat list stays shallow.
        let list = format!("[{}]", (0..5000).map(|i| format!("{i}+1")).collect::<Vec<_>>().join(", "));
        assert_eq!(nesting_bound(&list), 3);
        // Indentation counts one per character: the last line is 8 deep; `if y:` is 4 + 2.
        assert_eq!(nesting_bound("if x:\n    if y:\n        z"), 8);
    }

    #[test]
    fn strings_and_comments_hide_their_brackets() {
        assert_eq!(nesting_bound("'((((' + \"))\" # ((((( \n"), 1);
        assert_eq!(nesting_bound("'''\n((((\n'''"), 0);
        assert_eq!(nesting_bound("r'\\'((('"), 0);
        // An f-string's braces hold code, which counts; doubled braces do not.
        assert!(nesting_bound(&format!("f'{{{}1}}'", "-".repeat(100))) >= 100);
        assert_eq!(nesting_bound("f'{{((((}}'"), 1);
        assert!(nesting_bound(&format!("f'{{x:>{{{}}}}}'", "-".repeat(50))) >= 50);
        // PEP 701: the same quote inside the braces.
        assert!(nesting_bound(&format!("f'{{f'{{{}1}}'}}'", "-".repeat(40))) >= 40);
    }

    #[test]
    fn every_chain_shape_counts_at_least_its_length() {
        let n = 20_000;
        for (shape, code) in [
            ("unary", format!("{}1", "-".repeat(n))),
            ("not", format!("{}1", "not ".repeat(n))),
            ("binary", format!("1{}", "+1".repeat(n))),
            ("power", format!("2{}", "**2".repeat(n))),
            ("attribute", format!("a{}", ".b".repeat(n))),
            ("call", format!("f{}", "()".repeat(n))),
            ("subscript", format!("x{}", "[0]".repeat(n))),
            ("lambda", format!("{}1", "lambda:".repeat(n))),
            ("ternary", format!("1{}", " if 1 else 1".repeat(n))),
            ("await", format!("{}x", "await ".repeat(n))),
            ("brackets", format!("{}1{}", "(".repeat(n), ")".repeat(n))),
            ("blocks", (0..n).map(|i| format!("{}if 1:\n", " ".repeat(i / 100))).collect::<String>()),
            ("walrus chain", format!("(a{})", ":=a".repeat(n))),
            ("comparison", format!("1{}", "<1".repeat(n))),
            ("boolean", format!("1{}", " or 1".repeat(n))),
            ("starred", format!("[{}x]", "*".repeat(n))),
        ] {
            let bound = nesting_bound(&code);
            let floor = if shape == "blocks" { n / 100 } else { n };
            assert!(bound >= floor, "{shape}: bound {bound} < {floor}");
        }
    }
}
