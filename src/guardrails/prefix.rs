//! What a pattern could still become.
//!
//! The streaming scanner may release a byte only when no match can ever cover it. A byte can still
//! be covered when some suffix of the text seen so far is a *prefix* of a possible match: `bob@exa`
//! may become an e-mail address, `hello` may not become a credit card number. This module turns a
//! pattern into the regex of its prefixes (its prefix closure), so one reverse search anchored at
//! the end of the buffer finds the earliest byte that must be held back. It also reads the facts
//! about a pattern the policy checker needs: its longest match and whether it uses anchors, which
//! cannot be honoured on a stream seen piecewise.

use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};

/// Facts about a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternFacts {
    /// Longest match in bytes; `None` when unbounded.
    pub max_len: Option<usize>,
    /// Whether the pattern can match the empty string (never allowed: it would match everywhere).
    pub matches_empty: bool,
    /// Whether the pattern can never match anything.
    pub never_matches: bool,
    /// Whether it uses `^`, `$`, `\A` or `\z`, which a streamed text cannot honour.
    pub uses_anchors: bool,
}

/// Parses a pattern with the same syntax and flags as the `regex` crate.
pub fn parse(pattern: &str) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())
}

/// Reads the facts the checker needs.
pub fn facts(hir: &Hir) -> PatternFacts {
    let props = hir.properties();
    let looks = props.look_set();
    let anchors = [
        Look::Start,
        Look::End,
        Look::StartLF,
        Look::EndLF,
        Look::StartCRLF,
        Look::EndCRLF,
    ];
    PatternFacts {
        max_len: props.maximum_len(),
        matches_empty: props.minimum_len() == Some(0),
        never_matches: props.minimum_len().is_none(),
        uses_anchors: anchors.iter().any(|l| looks.contains(*l)),
    }
}

/// The prefix closure of `hir`: every string that is a prefix of some match, including the empty
/// string. Assertions at the end of a prefix are dropped, since the text that would satisfy them
/// has not arrived; that makes the closure a superset, which errs towards holding back.
pub fn closure(hir: &Hir) -> Hir {
    let hir = strip_captures(hir);
    pref(&hir)
}

fn optional(h: Hir) -> Hir {
    Hir::repetition(Repetition {
        min: 0,
        max: Some(1),
        greedy: true,
        sub: Box::new(h),
    })
}

fn pref(h: &Hir) -> Hir {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => Hir::empty(),
        HirKind::Class(_) => optional(h.clone()),
        HirKind::Literal(lit) => {
            // Split at character boundaries: the buffer always ends on one, so a prefix that ends
            // inside a character can never be what is held.
            let pieces: Vec<Hir> = match std::str::from_utf8(&lit.0) {
                Ok(s) => s
                    .chars()
                    .map(|c| Hir::literal(c.to_string().into_bytes()))
                    .collect(),
                Err(_) => lit.0.iter().map(|b| Hir::literal(vec![*b])).collect(),
            };
            nested(&pieces, |p| optional(p.clone()))
        }
        HirKind::Repetition(rep) => {
            if rep.max == Some(0) {
                return Hir::empty();
            }
            let sub = rep.sub.as_ref();
            let lead = Hir::repetition(Repetition {
                min: 0,
                max: rep.max.map(|m| m - 1),
                greedy: true,
                sub: Box::new(sub.clone()),
            });
            Hir::concat(vec![lead, pref(sub)])
        }
        HirKind::Capture(c) => pref(&c.sub),
        HirKind::Concat(items) => nested(items, pref),
        HirKind::Alternation(items) => Hir::alternation(items.iter().map(pref).collect()),
    }
}

/// pref(x1 x2 … xk) = pref(x1) | x1 pref(x2 … xk), built from the end so each item is copied once.
fn nested(items: &[Hir], pref_of: impl Fn(&Hir) -> Hir) -> Hir {
    let mut acc = Hir::empty();
    for (i, item) in items.iter().enumerate().rev() {
        acc = if i == items.len() - 1 {
            pref_of(item)
        } else if let Some(merged) = repetition_then(item, &acc) {
            merged
        } else {
            Hir::alternation(vec![pref_of(item), Hir::concat(vec![item.clone(), acc])])
        };
    }
    acc
}

/// pref(x{m,n}) | x{m,n} w for m < n, with the repetition's copies shared by both sides.
///
/// Written plainly, x{0,n-1} pref(x) | x{m,n} w copies x about 2n times, and a bounded
/// repetition compiles to one NFA state per copy: the closure of a PEM block or a JWT would be
/// twice the size of the pattern, and so would every search cache over it. The same language,
/// by how many copies of x are complete when the prefix ends:
///
///   x{0,m-1} pref(x)                       fewer than m: inside the next copy
/// | x{m} x{0,n-1-m} (pref(x) | x? w)        m to n-1: inside the next copy, or into w after it
///
/// copies x n+m times and w once. `None` for other items, which the plain form handles.
fn repetition_then(item: &Hir, w: &Hir) -> Option<Hir> {
    let HirKind::Repetition(rep) = item.kind() else {
        return None;
    };
    let max = rep.max.filter(|&max| max > rep.min)?;
    let x = rep.sub.as_ref();
    let copies = |min: u32, max: u32| {
        Hir::repetition(Repetition {
            min,
            max: Some(max),
            greedy: true,
            sub: Box::new(x.clone()),
        })
    };
    let px = pref(x);
    let tail = Hir::alternation(vec![
        px.clone(),
        Hir::concat(vec![optional(x.clone()), w.clone()]),
    ]);
    let enough = Hir::concat(vec![
        copies(rep.min, rep.min),
        copies(0, max - 1 - rep.min),
        tail,
    ]);
    Some(match rep.min {
        0 => enough,
        min => Hir::alternation(vec![Hir::concat(vec![copies(0, min - 1), px]), enough]),
    })
}

fn strip_captures(h: &Hir) -> Hir {
    match h.kind() {
        HirKind::Capture(Capture { sub, .. }) => strip_captures(sub),
        HirKind::Repetition(rep) => Hir::repetition(Repetition {
            min: rep.min,
            max: rep.max,
            greedy: rep.greedy,
            sub: Box::new(strip_captures(&rep.sub)),
        }),
        HirKind::Concat(items) => Hir::concat(items.iter().map(strip_captures).collect()),
        HirKind::Alternation(items) => Hir::alternation(items.iter().map(strip_captures).collect()),
        _ => h.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::meta::Regex;

    fn prefix_regex(p: &str) -> Regex {
        let h = closure(&parse(p).unwrap());
        let h = Hir::concat(vec![Hir::look(Look::Start), h, Hir::look(Look::End)]);
        Regex::builder().build_from_hir(&h).unwrap()
    }

    #[test]
    fn closure_accepts_exactly_prefixes() {
        let re = prefix_regex(r"ab(c|de)f{2,3}");
        for yes in [
            "", "a", "ab", "abc", "abd", "abde", "abcf", "abcfff", "abdeff",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in ["b", "ac", "abcffff", "abe", "x"] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    /// The closure as first written, x{0,n-1} pref(x) | x{m,n} w for every repetition.
    fn plain_closure(h: &Hir) -> Hir {
        fn plain(h: &Hir) -> Hir {
            match h.kind() {
                HirKind::Concat(items) => {
                    let mut acc = Hir::empty();
                    for (i, item) in items.iter().enumerate().rev() {
                        acc = if i == items.len() - 1 {
                            plain(item)
                        } else {
                            Hir::alternation(vec![
                                plain(item),
                                Hir::concat(vec![item.clone(), acc]),
                            ])
                        };
                    }
                    acc
                }
                HirKind::Alternation(items) => Hir::alternation(items.iter().map(plain).collect()),
                HirKind::Repetition(rep) if rep.max != Some(0) => Hir::concat(vec![
                    Hir::repetition(Repetition {
                        min: 0,
                        max: rep.max.map(|m| m - 1),
                        greedy: true,
                        sub: rep.sub.clone(),
                    }),
                    plain(&rep.sub),
                ]),
                _ => pref(h),
            }
        }
        plain(&strip_captures(h))
    }

    fn anchored(h: Hir) -> Regex {
        let h = Hir::concat(vec![Hir::look(Look::Start), h, Hir::look(Look::End)]);
        Regex::builder().build_from_hir(&h).unwrap()
    }

    #[test]
    fn shared_repetition_copies_accept_the_same_prefixes_as_the_plain_closure() {
        for p in [
            "a(?:b{1,3}c){0,2}d",
            "x[ab]{2,4}y[ab]{0,2}",
            "(?:ab){1,3}c{2,3}a",
            "a{0,3}b{1,2}",
            "(?:a|bc){2,3}(?:d|a{0,2})c",
        ] {
            let hir = parse(p).unwrap();
            let (shared, plain) = (anchored(closure(&hir)), anchored(plain_closure(&hir)));
            let alphabet: Vec<char> = p.chars().filter(char::is_ascii_lowercase).collect();
            let mut texts = vec![String::new()];
            let mut accepted = 0;
            for _ in 0..8 {
                texts = texts
                    .iter()
                    .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                    .collect();
                for t in &texts {
                    assert_eq!(shared.is_match(t), plain.is_match(t), "{p}: {t:?}");
                    accepted += usize::from(shared.is_match(t));
                }
            }
            assert!(accepted > 8, "{p}: only {accepted} prefixes accepted");
        }
        // And the closure of a long bounded repetition in the middle of a pattern is about the
        // size of the pattern, not twice it.
        let states = |h: &Hir| {
            regex_automata::nfa::thompson::Compiler::new()
                .build_from_hir(h)
                .unwrap()
                .states()
                .len()
        };
        let hir = parse("x[a-z]{8,1024}y").unwrap();
        assert!(states(&closure(&hir)) * 4 < states(&plain_closure(&hir)) * 3);
    }

    #[test]
    fn trailing_word_boundary_is_assumed_satisfiable() {
        let re = prefix_regex(r"\bcat\b");
        assert!(re.is_match("cat"));
        assert!(re.is_match("ca"));
        assert!(!re.is_match("dog"));
    }

    #[test]
    fn multibyte_literals_split_on_characters() {
        let re = prefix_regex("héllo");
        assert!(re.is_match("hé"));
        assert!(!re.is_match("hx"));
    }

    #[test]
    fn facts_report_bounds_and_anchors() {
        let f = facts(&parse(r"[0-9]{3}-[0-9]{4}").unwrap());
        assert_eq!(f.max_len, Some(8));
        assert!(!f.uses_anchors && !f.matches_empty && !f.never_matches);
        assert_eq!(facts(&parse(r"a+").unwrap()).max_len, None);
        assert!(facts(&parse(r"^a").unwrap()).uses_anchors);
        assert!(facts(&parse(r"(?m)a$").unwrap()).uses_anchors);
        assert!(facts(&parse(r"a*").unwrap()).matches_empty);
        assert!(facts(&parse(r"[^\x00-\x{10FFFF}]").unwrap()).never_matches);
    }
}
