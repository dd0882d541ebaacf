//! `type = "numeric"`: the first number in the answer, within a tolerance of the expected one.
//!
//! Models wrap numbers in prose (`The answer is 1,234.`), so the scorer reads the first number in
//! the answer rather than the whole answer. A number is ASCII digits with an optional sign (`-`,
//! `+` or `−`, when it does not follow a letter or digit: `x-5` is a hyphen), thousands
//! separated by commas in groups of three (`1,234,567`; `12,5` reads as 12, since a decimal comma
//! cannot be told from a list), a decimal point and an exponent (`3e8`). Digits of other scripts
//! and spaces as separators (`12 000`) are not read.

use serde::Deserialize;

use super::Verdict;
use crate::eval::dataset::Case;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericConfig {
    pub name: Option<String>,
    /// Absolute tolerance (default 0: equal).
    pub tolerance: Option<f64>,
    /// Tolerance as a fraction of the expected value (default 0); the larger of the two applies.
    pub relative: Option<f64>,
}

#[derive(Debug)]
pub struct Numeric {
    tolerance: f64,
    relative: f64,
}

// === impl Numeric ===

impl Numeric {
    pub fn new(c: NumericConfig) -> Result<Numeric, String> {
        let check = |key: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => {
                Err(format!("`{key}`: must be a number at least 0"))
            }
            v => Ok(v.unwrap_or(0.0)),
        };
        Ok(Numeric {
            tolerance: check("tolerance", c.tolerance)?,
            relative: check("relative", c.relative)?,
        })
    }

    /// The expected value: `expect.number`, else the first number of the first reference.
    fn expected(case: &Case) -> Option<f64> {
        case.expect
            .number
            .or_else(|| case.references.first().and_then(|r| first_number(r)))
    }

    pub fn applies(&self, case: &Case) -> bool {
        Self::expected(case).is_some()
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        let Some(want) = Self::expected(case) else {
            return Verdict::fail("no expected number");
        };
        let Some(got) = first_number(answer) else {
            return Verdict::fail("no number in the answer");
        };
        let allowed = self.tolerance.max(self.relative * want.abs());
        Verdict::check((got - want).abs() <= allowed, || {
            format!("{got} is not {want} (± {allowed})")
        })
    }
}

/// The first number in `text`, read as the module doc says.
pub fn first_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let start = (0..chars.len()).find(|&i| digit(i) || (chars[i] == '.' && digit(i + 1)))?;
    let mut out = String::new();
    if start > 0 && matches!(chars[start - 1], '-' | '+' | '−') {
        let before = start.checked_sub(2).map(|i| chars[i]);
        if !before.is_some_and(char::is_alphanumeric) {
            out.push(if chars[start - 1] == '+' { '+' } else { '-' });
        }
    }
    let mut i = start;
    while digit(i) {
        out.push(chars[i]);
        i += 1;
    }
    // Thousands groups only after a first group of one to three digits, each exactly three digits.
    let first_group = i - start;
    if (1..=3).contains(&first_group) {
        while chars.get(i) == Some(&',') && (1..=3).all(|k| digit(i + k)) && !digit(i + 4) {
            out.extend(&chars[i + 1..i + 4]);
            i += 4;
        }
    }
    if chars.get(i) == Some(&'.') && digit(i + 1) {
        out.push('.');
        i += 1;
        while digit(i) {
            out.push(chars[i]);
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let sign = usize::from(matches!(chars.get(i + 1), Some('-' | '+')));
        if digit(i + 1 + sign) {
            out.extend(&chars[i..i + 1 + sign]);
            i += 1 + sign;
            while digit(i) {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::Expect;
    use crate::eval::scorers::test_support::*;

    #[test]
    fn reads_the_first_number() {
        assert_eq!(first_number("The answer is 42."), Some(42.0));
        assert_eq!(first_number("1,234,567 people"), Some(1_234_567.0));
        assert_eq!(first_number("$1,234.50 total"), Some(1234.5));
        assert_eq!(first_number("12,5 or 13"), Some(12.0));
        assert_eq!(first_number("1,2345"), Some(1.0));
        assert_eq!(first_number("1234,567"), Some(1234.0));
        assert_eq!(first_number("it is -3 degrees"), Some(-3.0));
        assert_eq!(first_number("−7 (unicode minus)"), Some(-7.0));
        assert_eq!(first_number("COVID-19"), Some(19.0));
        assert_eq!(first_number(".5 of it"), Some(0.5));
        assert_eq!(first_number("c = 3e8 m/s"), Some(3e8));
        assert_eq!(first_number("5e tokens"), Some(5.0));
        assert_eq!(first_number("٣ (Arabic-Indic three)"), None);
        assert_eq!(first_number("no digits here"), None);
        assert_eq!(first_number(""), None);
        assert_eq!(first_number("Ünïcödé 7"), Some(7.0));
    }

    #[test]
    fn tolerance_absolute_and_relative() {
        let e = Expect {
            number: Some(100.0),
            ..Default::default()
        };
        let exact = scorer("type = \"numeric\"").unwrap();
        let c = case(&[], e);
        assert!(exact.score(&c, &answer("It's 100.")).passed);
        assert!(exact.score(&c, &answer("It's 1,00")).passed.eq(&false));
        let v = exact.score(&c, &answer("101"));
        assert!(!v.passed && v.detail.unwrap().contains("101"));
        assert!(!exact.score(&c, &answer("")).passed);
        let abs = scorer("type = \"numeric\"\ntolerance = 1.5").unwrap();
        assert!(abs.score(&c, &answer("101.5")).passed);
        let rel = scorer("type = \"numeric\"\nrelative = 0.05").unwrap();
        assert!(rel.score(&c, &answer("about 104")).passed);
        assert!(!rel.score(&c, &answer("about 106")).passed);
        assert!(scorer("type = \"numeric\"\ntolerance = -1")
            .unwrap_err()
            .contains("tolerance"));
    }

    #[test]
    fn the_reference_gives_the_number() {
        let s = scorer("type = \"numeric\"").unwrap();
        let c = case(&["1,024 bytes"], Expect::default());
        assert!(s.applies(&c));
        assert!(s.score(&c, &answer("1024")).passed);
        assert!(!s.applies(&case(&["many"], Expect::default())));
    }
}
