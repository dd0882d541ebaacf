//! Personal data, one entity at a time.
//!
//! A pattern alone over-reports: every 16-digit number is not a card, every `12.03.2024` is not a
//! phone number. So each entity is a loose candidate pattern plus a validator that does the real
//! check (Luhn, mod-97, SSN area rules, octet ranges) and returns a confidence. Words shortly
//! before a candidate ("call me at", "order no.") move that confidence up or down, and the rule's
//! `min_score` decides. The validators run only on candidates the one-pass scan found.

use super::probe::{Candidate, ProbeSpec};

/// Every entity a `pii` rule may name.
pub const ENTITIES: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ipv4",
    "ipv6",
];

/// The candidate patterns and validators of one entity.
pub fn probes(entity: &str) -> Option<Vec<ProbeSpec>> {
    let p = |pattern: &str| Some(ProbeSpec::new(entity_name(entity)?, pattern));
    Some(match entity {
        "email" => vec![p(
            r"(?-u:\b)[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?-u:\b)",
        )?
        .label("[EMAIL]")
        .validate(email)
        .after(1)],
        "phone" => vec![
            p(r"\+[1-9](?:[ .\-()]{0,2}[0-9]){6,14}")?
                .label("[PHONE]")
                .validate(phone_international)
                .context(PHONE_POSITIVE, PHONE_NEGATIVE)
                .after(2),
            // National numbers: an area or trunk group (in parentheses or not), up to four
            // more groups, and an optional extension: (555) 123-4567 x204, 06-12345678,
            // 07700 900123, 05.53.18.69.64, 0477 82 93 97.
            p(concat!(
                r"(?:\(0?[0-9]{2,5}\)[ .\-]?|(?-u:\b)[0-9]{2,5}[ .\-])",
                r"(?:[0-9]{2,4}[ .\-]){0,3}[0-9]{2,8}",
                r"(?:[ ]?(?:x|ext\.?)[ ]?[0-9]{1,5})?(?-u:\b)"
            ))?
                .label("[PHONE]")
                .validate(phone_national)
                .context(PHONE_POSITIVE, PHONE_NEGATIVE)
                // Enough to see a street name after a house number and postcode.
                .after(24),
        ],
        "credit_card" => vec![p(r"(?-u:\b)(?:[0-9][ \-]?){11,18}[0-9](?-u:\b)")?
            .label("[CREDIT_CARD]")
            .validate(credit_card)
            .context(
                &["card", "visa", "mastercard", "maestro", "amex", "credit", "debit", "cc"],
                &["order", "tracking", "isbn", "invoice", "account id"],
            )
            .after(2)],
        "iban" => vec![p(
            r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)",
        )?
        .label("[IBAN]")
        .validate(iban)],
        "us_ssn" => vec![
            p(r"(?-u:\b)[0-9]{3}[\- ][0-9]{2}[\- ][0-9]{4}(?-u:\b)")?
                .label("[US_SSN]")
                .validate(ssn_formatted)
                .context(SSN_POSITIVE, SSN_NEGATIVE)
                .after(2),
            p(r"(?-u:\b)[0-9]{9}(?-u:\b)")?
                .label("[US_SSN]")
                .validate(ssn_bare)
                .context(SSN_POSITIVE, SSN_NEGATIVE)
                .after(2),
        ],
        "ipv4" => vec![p(r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)")?
            .label("[IP_ADDRESS]")
            .validate(ipv4)
            .context(&["ip", "address", "host", "server", "client"], &["version", "v."])
            .after(2)],
        "ipv6" => vec![p(
            r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3})?",
        )?
        .label("[IP_ADDRESS]")
        .validate(ipv6)
        .after(1)],
        _ => return None,
    })
}

fn entity_name(entity: &str) -> Option<&'static str> {
    ENTITIES.iter().copied().find(|e| *e == entity)
}

const PHONE_POSITIVE: &[&str] = &[
    "phone",
    "telephone",
    "call",
    "tel",
    "mobile",
    "cell",
    "contact",
    "fax",
    "whatsapp",
    "sms",
    "dial",
    "desk",
    "office",
    "landline",
    "reach me",
    "reach you",
    "reach us",
    "text me",
    "answering at",
    "messages to",
];
const PHONE_NEGATIVE: &[&str] = &[
    "order",
    "invoice",
    "tracking",
    "ref",
    "serial",
    "isbn",
    "ticket",
    "#",
    "account",
    "ssn",
    "social security",
];
const SSN_POSITIVE: &[&str] = &["ssn", "social security", "social sec", "taxpayer", "tin"];
const SSN_NEGATIVE: &[&str] = &["phone", "call", "order", "invoice", "zip", "tel"];

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// The candidate continues as a longer dotted, dashed or colon-separated number: a version, a
/// date, a time or an identifier, not the entity.
fn part_of_longer_number(c: &Candidate<'_>) -> bool {
    let after = c.after().as_bytes();
    let before = c.before().as_bytes();
    let sep = |b: u8| matches!(b, b'.' | b'-' | b':' | b'/');
    let cont_after = after.len() >= 2 && sep(after[0]) && after[1].is_ascii_digit();
    let n = before.len();
    let cont_before = n >= 2 && sep(before[n - 1]) && before[n - 2].is_ascii_digit();
    cont_after || cont_before
}

fn email(c: &Candidate<'_>) -> Option<f32> {
    let (local, domain) = c.text().split_once('@')?;
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return None;
    }
    if domain
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return None;
    }
    Some(0.9)
}

fn phone_international(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    let t = c.text();
    let d = digits(t).len();
    if !(8..=15).contains(&d) || t.matches('(').count() != t.matches(')').count() {
        return None;
    }
    Some(0.75)
}

fn phone_national(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    let t = c.text();
    // An extension (`x204`, `ext. 12`) is redacted with the number but is not part of its shape.
    let number = t
        .find(|ch: char| ch.is_ascii_alphabetic())
        .map_or(t, |i| &t[..i]);
    let groups: Vec<&str> = number
        .split(|ch: char| !ch.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if !(2..=5).contains(&groups.len()) {
        return None;
    }
    // Dates (12.03.2024, 2024-03-12, 03/12/2024) anywhere in the run, and dotted quads.
    let num = |g: &str| g.parse::<u32>().unwrap_or(u32::MAX);
    let is_year = |g: &str| g.len() == 4 && (1900..=2100).contains(&num(g));
    let day_or_month = |g: &str| g.len() <= 2 && (1..=31).contains(&num(g));
    let is_date = |w: &[&str]| {
        (day_or_month(w[0]) && day_or_month(w[1]) && is_year(w[2]))
            || (is_year(w[0]) && day_or_month(w[1]) && day_or_month(w[2]))
    };
    if groups.windows(3).any(is_date) {
        return None;
    }
    if groups.len() == 4 && number.contains('.') && groups.iter().all(|g| num(g) <= 255) {
        return None;
    }
    let d = digits(number).len();
    if !(7..=12).contains(&d) {
        return None;
    }
    // Shapes that are phone numbers on their own: North American (555) 123-4567 and
    // 555-123-4567, and national numbers that start with a trunk 0 (06-12345678, 07700 900123,
    // 05.53.18.69.64). Anything else (12 000 000, 2019-2024, 94105-1234) needs a context word.
    // A house number (and postcode) before a street name is an address.
    if c.after()
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(3)
        .any(|w| STREET_WORDS.contains(&w.to_lowercase().as_str()))
    {
        return None;
    }
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let nanp = lens == [3, 3, 4];
    // 123-45-6789 is the shape of a US SSN, never a phone number on its own.
    let ssn_shape = lens == [3, 2, 4];
    let area_code = number.starts_with('(');
    let trunk = number.starts_with('0') && (9..=11).contains(&d);
    Some(if !ssn_shape && (nanp || area_code || trunk) {
        0.6
    } else {
        0.4
    })
}

/// Words that follow a house number in an address.
const STREET_WORDS: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "lane",
    "ln",
    "road",
    "rd",
    "boulevard",
    "blvd",
    "drive",
    "dr",
    "way",
    "court",
    "ct",
    "place",
    "pl",
    "square",
    "sq",
    "terrace",
    "parkway",
    "highway",
    "hwy",
    "rue",
    "strasse",
    "straße",
    "calle",
    "via",
    "suite",
    "apt",
];

fn credit_card(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    let t = c.text();
    let d = digits(t);
    if !(12..=19).contains(&d.len()) || d.iter().all(|x| *x == d[0]) {
        return None;
    }
    // Separators, where present, are one kind and split the number into groups of 4-6 digits,
    // as cards are printed; a run of single digits separated by spaces is something else.
    let seps: Vec<char> = t.chars().filter(|ch| !ch.is_ascii_digit()).collect();
    if !seps.is_empty() {
        if seps.iter().any(|s| *s != seps[0]) {
            return None;
        }
        if t.split(seps[0]).any(|g| !(3..=6).contains(&g.len())) {
            return None;
        }
    }
    if !luhn(&d) {
        return None;
    }
    let prefix = |n: usize| d[..n].iter().fold(0u32, |acc, x| acc * 10 + u32::from(*x));
    // Only Maestro (50, 56-69) issues 12-digit numbers; many other 12-digit numbers pass Luhn
    // by chance, so those need a context word ("card", "maestro", "cc").
    let maestro = prefix(2) == 50 || (56..=69).contains(&prefix(2));
    if d.len() == 12 {
        return maestro.then_some(0.3);
    }
    let known = matches!(d[0], 4)
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 36 | 38 | 35 | 65 | 62)
        || prefix(4) == 6011
        || maestro;
    Some(if known { 0.9 } else { 0.5 })
}

/// The Luhn checksum over decimal digits.
pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, x)| {
            let x = u32::from(*x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum % 10 == 0
}

fn iban(c: &Candidate<'_>) -> Option<f32> {
    let s: String = c.text().chars().filter(|ch| *ch != ' ').collect();
    let expected = iban_length(&s[..2]);
    match expected {
        Some(n) if s.len() != n => return None,
        None if !(15..=34).contains(&s.len()) => return None,
        _ => {}
    }
    iban_valid(&s).then_some(0.95)
}

/// The ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 = 1.
pub fn iban_valid(s: &str) -> bool {
    if s.len() < 5 || !s.is_ascii() {
        return false;
    }
    let (head, tail) = s.split_at(4);
    let mut rem: u32 = 0;
    for ch in tail.chars().chain(head.chars()) {
        let v = match ch {
            '0'..='9' => u32::from(ch) - u32::from('0'),
            'A'..='Z' => u32::from(ch) - u32::from('A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "NL" | "FO" | "GL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "CR" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" => 22,
        "AE" | "GI" | "IL" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "PT" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" => 28,
        "BR" | "PS" | "QA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" => 31,
        _ => return None,
    })
}

/// Area 001-899 except 666, group 01-99, serial 0001-9999 (SSA rules since 2011).
pub fn ssn_valid(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |acc, x| acc * 10 + u32::from(*x));
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn ssn_formatted(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    let t = c.text().as_bytes();
    if t[3] != t[6] {
        return None;
    }
    ssn_valid(&digits(c.text())).then_some(0.6)
}

fn ssn_bare(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    // Nine bare digits are an SSN only when the context says so.
    ssn_valid(&digits(c.text())).then_some(0.2)
}

fn ipv4(c: &Candidate<'_>) -> Option<f32> {
    if part_of_longer_number(c) {
        return None;
    }
    for octet in c.text().split('.') {
        if octet.len() > 1 && octet.starts_with('0') {
            return None;
        }
        if octet.parse::<u16>().ok()? > 255 {
            return None;
        }
    }
    Some(0.8)
}

fn ipv6(c: &Candidate<'_>) -> Option<f32> {
    let t = c.text();
    let hexish = |ch: char| ch.is_ascii_hexdigit() || ch == ':' || ch == '.' || ch == '_';
    if c.before()
        .chars()
        .next_back()
        .is_some_and(|ch| hexish(ch) || ch.is_alphanumeric())
        || c.after()
            .chars()
            .next()
            .is_some_and(|ch| hexish(ch) || ch.is_alphanumeric())
    {
        return None;
    }
    t.parse::<std::net::Ipv6Addr>().ok()?;
    // `::`, `a::b` and friends parse, but in prose and code they are rarely addresses.
    let groups = t.split(':').filter(|g| !g.is_empty()).count();
    if groups < 3 {
        return None;
    }
    Some(0.85)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("5500005555555559")));
        assert!(!luhn(&digits("4111111111111112")));
    }

    #[test]
    fn iban_mod_97() {
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("GB82WEST12345698765433"));
    }

    #[test]
    fn ssn_area_group_serial() {
        assert!(ssn_valid(&digits("123-45-6789")));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!ssn_valid(&digits(bad)), "{bad}");
        }
    }

    #[test]
    fn every_entity_has_probes() {
        for e in ENTITIES {
            assert!(!probes(e).unwrap().is_empty(), "{e}");
        }
        assert!(probes("nope").is_none());
    }
}
