//! Credentials by format.
//!
//! Most issued credentials announce themselves with a fixed prefix (`AKIA`, `ghp_`, `xoxb-`,
//! `sk_live_`), so a literal-led pattern finds them cheaply and precisely. What has no prefix, a
//! password or key pasted as `api_key = "…"`, is found by the key-like name it is assigned to, and
//! kept only when the value looks random enough (Shannon entropy), so `password = "changeme"` in a
//! tutorial is not reported as a leak. Only the value is redacted, not the name.

use super::probe::{Candidate, ProbeSpec};

/// Every secret type a `secrets` rule may name.
pub const SECRETS: &[&str] = &[
    "aws_access_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "stripe_key",
    "openai_key",
    "private_key",
    "jwt",
    "generic_secret",
];

/// Entropy a generic value needs unless the rule says otherwise.
pub const DEFAULT_MIN_ENTROPY: f32 = 3.0;

/// The probes for one secret type. `min_entropy` applies to `generic_secret`.
pub fn probes(kind: &str, min_entropy: f32) -> Option<Vec<ProbeSpec>> {
    let name = SECRETS.iter().copied().find(|s| *s == kind)?;
    let p = |pattern: &str| ProbeSpec::new(name, pattern).label("[SECRET]");
    Some(match kind {
        "aws_access_key" => vec![p(r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA)[0-9A-Z]{16}(?-u:\b)")],
        "github_token" => vec![p(
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
        )],
        "gitlab_token" => vec![p(r"(?-u:\b)(?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_\-]{20,64}")],
        "slack_token" => vec![
            p(r"(?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,250}"),
            p(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,120}"),
        ],
        "stripe_key" => vec![p(r"(?-u:\b)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}(?-u:\b)")],
        "openai_key" => vec![p(
            r"(?-u:\b)sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_\-]{20,200}",
        )
        .validate(token_like)],
        // The body is matched line by line up to the END line or the first line that is not
        // key material, so a block the model never closes is still covered.
        "private_key" => vec![p(
            r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----(?:\r?\n[A-Za-z0-9+/=:, \-]{1,80}){0,64}(?:\r?\n-----END (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----)?",
        )
        .label("[PRIVATE_KEY]")],
        "jwt" => vec![p(
            r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,1024}\.eyJ[A-Za-z0-9_\-]{8,2048}\.[A-Za-z0-9_\-]{0,512}",
        )],
        "generic_secret" => {
            let spec = p(r#"(?i)(?-u:\b)(?:[a-z0-9]{1,32}[_\-.])?(?:api[_\-]?key|apikey|secret(?:[_\-]?key)?|client[_\-]?secret|access[_\-]?token|auth[_\-]?token|bearer[_\-]?token|token|password|passwd|pwd|private[_\-]?key)["']?[ \t]{0,3}[:=][ \t]{0,3}["']?(?P<value>[A-Za-z0-9/+_.=~!@#$%^&*\-]{8,128})"#);
            vec![spec.min_entropy(min_entropy)]
        }
        _ => return None,
    })
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f32 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f32;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

/// An API key mixes letters and digits; `sk-learn-is-a-python-library` does not.
fn token_like(c: &Candidate<'_>) -> Option<f32> {
    let t = c.text();
    let has_digit = t.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = t.bytes().any(|b| b.is_ascii_alphabetic());
    (has_digit && has_alpha && entropy(t) >= 3.5).then_some(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_orders_random_above_words() {
        assert!(entropy("aaaaaaaa") < 0.1);
        assert!(entropy("changeme") < 3.0);
        assert!(entropy("q8Zr2LxW9pTb4Nv7") > 3.5);
    }

    #[test]
    fn every_secret_has_probes() {
        for s in SECRETS {
            assert!(!probes(s, DEFAULT_MIN_ENTROPY).unwrap().is_empty(), "{s}");
        }
    }
}
