//! Excerpts for audit records: where a decision was made, without the data it was made about.
//!
//! An excerpt shows a little of the text either side of a finding, so a reviewer can tell a real
//! leak from a false positive. Masking only the finding's own span (and digits) was not enough:
//! the e-mail address next to a card number went out in the card's excerpt, cut to its local
//! part, and an access key that the window cut in two matched no rule and kept its letters. So
//! the context is scanned again with every rule of the policy that looks for data (each finding
//! there becomes its entity's label too, even one reported by no rule of this request), and what
//! is left is kept only where it is plainly a word: letters only, at most [`MAX_WORD`] of them,
//! lower case or capitalised, and not cut by the window's edge. Anything else (digits, mixed
//! case, `@`, long runs, a word the window cuts) is written as `***`.

use std::ops::Range;
use std::sync::Arc;

use super::compile::{Kind, Policy};
use super::probe::floor_boundary;
use super::scan::Scanner;
use super::{Action, Direction};

/// Bytes of context shown either side of a finding.
const CONTEXT: usize = 24;
/// Bytes beyond the context that are scanned as well, so that a value crossing the context's
/// edge is still recognised (and labelled) rather than shown in part.
const MARGIN: usize = 96;
/// The longest run of letters kept as a word; longer runs may be keys or names run together.
const MAX_WORD: usize = 12;
/// What a masked word is written as (its length is not kept either).
const MASKED: &str = "***";

/// The excerpt of the finding at `start..end` (offsets in the whole text) of `entity`, from
/// `buf`, which holds the text from offset `base`. `more` says the text may go on past `buf`
/// (a stream still open), so its last word may be cut.
pub(crate) fn build(
    policy: &Arc<Policy>,
    dir: Direction,
    buf: &str,
    base: usize,
    span: Range<usize>,
    entity: &str,
    more: bool,
) -> String {
    let s = floor_boundary(buf, span.start.saturating_sub(base));
    let e = floor_boundary(buf, span.end.saturating_sub(base).max(s));
    let from = floor_boundary(buf, s.saturating_sub(CONTEXT));
    let wide_from = floor_boundary(buf, s.saturating_sub(CONTEXT + MARGIN));
    let to = floor_boundary(buf, e + CONTEXT);
    let wide_to = floor_boundary(buf, e + CONTEXT + MARGIN);
    // A word is cut where the window starts or ends inside it (or where the text shown is not
    // all there is: trimmed before `buf`, or still streaming after it).
    let cut_start = if from > 0 {
        !buf[..from].ends_with(char::is_whitespace)
    } else {
        base > 0
    };
    let cut_end = if to < buf.len() {
        !buf[to..].starts_with(char::is_whitespace)
    } else {
        more
    };
    let mut out = String::with_capacity(2 * CONTEXT + entity.len() + 2);
    render(
        policy,
        dir,
        &buf[wide_from..s],
        from - wide_from..s - wide_from,
        (cut_start, false),
        &mut out,
    );
    out.push('[');
    out.push_str(&entity.to_uppercase());
    out.push(']');
    render(
        policy,
        dir,
        &buf[e..wide_to],
        0..to - e,
        (false, cut_end),
        &mut out,
    );
    out
}

/// Writes the part `window` of `text`: every span the policy finds in `text` as its label, the
/// rest masked word by word. `cut` says whether the window's first and last words are cut.
fn render(
    policy: &Arc<Policy>,
    dir: Direction,
    text: &str,
    window: Range<usize>,
    cut: (bool, bool),
    out: &mut String,
) {
    if window.is_empty() {
        return;
    }
    let spans = findings(policy, dir, text);
    let mut at = window.start;
    for (start, end, entity) in spans {
        if end <= window.start || start >= window.end {
            continue;
        }
        let start = start.max(window.start);
        if start > at {
            mask_words(&text[at..start], cut.0 && at == window.start, false, out);
        }
        out.push('[');
        out.push_str(&entity.to_uppercase());
        out.push(']');
        at = at.max(end.min(window.end));
    }
    if at < window.end {
        mask_words(
            &text[at..window.end],
            cut.0 && at == window.start,
            cut.1,
            out,
        );
    }
}

/// Every span of `text` that a data-finding rule of `policy` matches, merged where they
/// overlap, in text order: (start, end, entity).
fn findings(policy: &Arc<Policy>, dir: Direction, text: &str) -> Vec<(usize, usize, &'static str)> {
    if text.is_empty() {
        return Vec::new();
    }
    // Every rule that looks for data, redacting, whatever this request's scope or the rule's own
    // action; injection signals are phrases, not data, and limits are not patterns.
    let actions = policy
        .rules
        .iter()
        .map(|r| {
            (r.applies_to(dir) && !matches!(r.kind, Kind::Limits | Kind::Injection))
                .then_some(Action::Redact)
        })
        .collect();
    let mut found: Vec<(usize, usize, &'static str)> =
        Scanner::scan_text_without_excerpts(Arc::clone(policy), dir, actions, text)
            .into_iter()
            .map(|f| (f.start, f.end, f.entity))
            .collect();
    found.sort_by_key(|f| (f.0, std::cmp::Reverse(f.1)));
    let mut merged: Vec<(usize, usize, &'static str)> = Vec::with_capacity(found.len());
    for f in found {
        match merged.last_mut() {
            Some(last) if f.0 < last.1 => last.1 = last.1.max(f.1),
            _ => merged.push(f),
        }
    }
    merged
}

/// Writes `text` with every word that could be data replaced by [`MASKED`]; control characters
/// become spaces. `first_cut` and `last_cut` mark the first and last words as cut.
fn mask_words(text: &str, first_cut: bool, last_cut: bool, out: &mut String) {
    let mut words = text.split_inclusive(|c: char| c.is_whitespace()).peekable();
    let mut first = true;
    while let Some(piece) = words.next() {
        let last = words.peek().is_none();
        let word = piece.trim_end_matches(char::is_whitespace);
        let gap = &piece[word.len()..];
        if !word.is_empty() {
            let cut = (first && first_cut) || (last && last_cut && gap.is_empty());
            if !cut && plain_word(word) {
                out.push_str(word);
            } else {
                out.push_str(MASKED);
            }
        }
        out.extend(gap.chars().map(|_| ' '));
        first = false;
    }
}

/// Whether `word` is plainly a word: punctuation around letters only, at most [`MAX_WORD`] of
/// them, lower case or capitalised. A run of punctuation alone is kept too.
fn plain_word(word: &str) -> bool {
    let core = word.trim_matches(|c: char| c.is_ascii_punctuation());
    if core.is_empty() {
        return word.chars().all(|c| c.is_ascii_punctuation());
    }
    let mut chars = core.chars();
    let Some(head) = chars.next() else {
        return false;
    };
    head.is_alphabetic()
        && core.chars().count() <= MAX_WORD
        && chars.all(|c| c.is_alphabetic() && !c.is_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Arc<Policy> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guardrails");
        Arc::new(Policy::load(&dir).unwrap())
    }

    fn excerpt_of(text: &str, needle: &str, entity: &str) -> String {
        let start = text.find(needle).unwrap();
        build(
            &policy(),
            Direction::Input,
            text,
            0,
            start..start + needle.len(),
            entity,
            false,
        )
    }

    #[test]
    fn neighbouring_findings_are_labelled_not_shown() {
        let text = "pay 4111 1111 1111 1111 owner johnqpublicsecret@corp.example";
        let ex = excerpt_of(text, "4111 1111 1111 1111", "credit_card");
        assert_eq!(ex, "pay [CREDIT_CARD] owner [EMAIL]");
    }

    #[test]
    fn a_value_cut_by_the_window_is_masked_letters_too() {
        // The key is 30 bytes after the address: found by the wider scan, shown as its label.
        let text = "mail bob@example.com then key AKIAIOSFODNN7EXAMPLE ok";
        let ex = excerpt_of(text, "bob@example.com", "email");
        assert!(!ex.contains("AKIA") && !ex.contains("IOSF"), "{ex}");
        // A long token the policy does not know, cut by the window's edge, is masked whole.
        let text = "token xQzvTrwpLmnbVcxZaSdFgHjKlqWeRtYuIoP then mail bob@example.com";
        let ex = excerpt_of(text, "bob@example.com", "email");
        assert!(!ex.contains("TrwpL") && !ex.contains("IoP"), "{ex}");
        assert!(ex.ends_with("[EMAIL]"), "{ex}");
    }

    #[test]
    fn plain_words_stay_readable() {
        let text = "Please send the invoice to bob@example.com before Friday, thanks";
        let ex = excerpt_of(text, "bob@example.com", "email");
        assert_eq!(ex, "*** send the invoice to [EMAIL] before Friday, thanks");
    }

    #[test]
    fn word_rules() {
        for w in ["hello", "Hello", "owner:", "(and)", "-", "café"] {
            assert!(plain_word(w), "{w}");
        }
        for w in [
            "4111",
            "IAQEGUKW",
            "abc123",
            "johnqpublicsecret",
            "a@b",
            "hEllo",
            "x9",
        ] {
            assert!(!plain_word(w), "{w}");
        }
    }
}
