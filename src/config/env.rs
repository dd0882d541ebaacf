//! `${VAR}` and `${VAR:-default}` interpolation.
//!
//! Secrets live in the environment, not in files. Interpolation runs on the parsed TOML values, not
//! the raw text, so a `${…}` inside a comment is never expanded and an error can name the key whose
//! value referred to a missing variable. `$${` writes a literal `${`.

use std::fmt;

/// A variable was referenced without a default and is not set, or the syntax is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${NAME}` with `NAME` unset and no default.
    Unset(String),
    /// `${` without a closing `}`, or an empty name.
    Syntax(String),
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpolationError::Unset(name) => write!(
                f,
                "environment variable `{name}` is not set (write `${{{name}:-}}` to allow it to be empty)"
            ),
            InterpolationError::Syntax(s) => write!(f, "bad interpolation syntax in `{s}`"),
        }
    }
}

/// Expands `${VAR}` / `${VAR:-default}` in `input`, looking variables up with `lookup`.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| InterpolationError::Syntax(input.to_owned()))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(InterpolationError::Syntax(input.to_owned()));
            }
            match (lookup(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (Some(v), None) => out.push_str(&v),
                (None, None) => return Err(InterpolationError::Unset(name.to_owned())),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string inside a TOML value in place. On failure, returns the dotted path of
/// the offending key with the error.
pub fn interpolate_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, InterpolationError)> {
    match value {
        toml::Value::String(s) => {
            *s = interpolate(s, lookup).map_err(|e| (path.join("."), e))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_value(item, path, lookup)?;
                path.pop();
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                path.push(k.clone());
                interpolate_value(v, path, lookup)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(interpolate("a ${SET} b", &env).unwrap(), "a value b");
        assert_eq!(interpolate("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(interpolate("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(interpolate("$${SET}", &env).unwrap(), "${SET}");
    }

    #[test]
    fn unset_without_default_is_an_error() {
        assert_eq!(
            interpolate("${NOPE}", &env),
            Err(InterpolationError::Unset("NOPE".into()))
        );
        assert!(matches!(
            interpolate("${OPEN", &env),
            Err(InterpolationError::Syntax(_))
        ));
        assert!(matches!(
            interpolate("${bad name}", &env),
            Err(InterpolationError::Syntax(_))
        ));
    }

    #[test]
    fn error_names_the_key() {
        let mut v: toml::Value = toml::from_str("[backends.up]\napi_key = \"${NOPE}\"").unwrap();
        let err = interpolate_value(&mut v, &mut Vec::new(), &env).unwrap_err();
        assert_eq!(err.0, "backends.up.api_key");
    }
}
