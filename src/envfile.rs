//! `--env-file`: the dotenv format, read at every spawn.
//!
//! Lines are `KEY=VALUE` or `export KEY=VALUE`; blank lines and lines
//! starting with `#` are skipped. Values may be single-quoted (taken
//! literally), double-quoted (`\n`, `\t`, `\"`, `\\` escapes) or bare (a
//! ` #` starts a comment; surrounding space is trimmed). No variable
//! expansion: what is written is what the worker gets.
//!
//! A file is at most [`MAX_BYTES`] (1 MiB: the kernel takes at most 2 MiB of
//! arguments and environment together, and 128 KiB in one variable); it is
//! parsed in one pass, and a variable set twice keeps its last value.

use std::collections::HashMap;
use std::path::Path;

/// The largest env file sup reads.
pub const MAX_BYTES: u64 = 1 << 20;

/// Why an env file was refused. Every error in the text names its line.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error(transparent)]
    Read(#[from] crate::files::ReadError),
    #[error("line {line}: contains a NUL byte")]
    Nul { line: usize },
    #[error("line {line}: expected KEY=VALUE")]
    NoAssignment { line: usize },
    #[error("line {line}: `{key}` is not a variable name")]
    BadName { line: usize, key: String },
    #[error("line {line}: unterminated {quote} quote")]
    Unterminated { line: usize, quote: Quote },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    Single,
    Double,
}

impl std::fmt::Display for Quote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quote::Single => "single",
            Quote::Double => "double",
        })
    }
}

/// Read and parse a dotenv file. Errors name the line.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = crate::files::read_capped(path, MAX_BYTES)?;
    parse(&text)
}

/// The variables in file order, each once (the last assignment wins, at the
/// place of the first).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.contains('\0') {
            return Err(EnvFileError::Nul { line: number });
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or(EnvFileError::NoAssignment { line: number })?;
        let key = key.trim();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(EnvFileError::BadName {
                line: number,
                key: key.to_string(),
            });
        }
        let value = parse_value(value.trim()).map_err(|quote| EnvFileError::Unterminated { line: number, quote })?;
        match seen.get(key) {
            Some(&at) => vars[at].1 = value,
            None => {
                seen.insert(key.to_string(), vars.len());
                vars.push((key.to_string(), value));
            }
        }
    }
    Ok(vars)
}

/// The value, or the quote left open.
fn parse_value(v: &str) -> Result<String, Quote> {
    if let Some(rest) = v.strip_prefix('\'') {
        let end = rest.find('\'').ok_or(Quote::Single)?;
        return Ok(rest[..end].to_string());
    }
    if let Some(rest) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err(Quote::Double);
    }
    let v = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    };
    Ok(v.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_forms() {
        let vars = parse(
            "# comment\n\nA=1\nexport B = two words # trailing\nC='lit $X \\n'\nD=\"x\\ny \\\"q\\\"\"\nE=\nF=a#b\n",
        )
        .unwrap();
        let expect = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "lit $X \\n"),
            ("D", "x\ny \"q\""),
            ("E", ""),
            ("F", "a#b"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn errors_name_the_line() {
        let text = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(text("A=1\nnonsense\n"), "line 2: expected KEY=VALUE");
        assert_eq!(text("1A=x"), "line 1: `1A` is not a variable name");
        assert_eq!(text("A=\"open"), "line 1: unterminated double quote");
        assert_eq!(text("A='open"), "line 1: unterminated single quote");
        assert_eq!(text("A=1\nB=x\0y\n"), "line 2: contains a NUL byte");
        assert!(matches!(
            parse("A=1\nB='x").unwrap_err(),
            EnvFileError::Unterminated {
                line: 2,
                quote: Quote::Single
            }
        ));
    }

    #[test]
    fn a_variable_set_twice_keeps_its_last_value_in_one_pass() {
        let got = parse("A=1\nB=2\nA=3\n").unwrap();
        assert_eq!(
            got,
            [("A".to_string(), "3".to_string()), ("B".to_string(), "2".to_string())]
        );
        // Linear: 200,000 distinct and repeated lines parse in one pass.
        let big: String = (0..200_000).map(|i| format!("V{}=x\n", i % 50_000)).collect();
        assert_eq!(parse(&big).unwrap().len(), 50_000);
    }

    #[test]
    fn a_file_over_the_cap_is_refused_before_it_is_read() {
        let path = std::env::temp_dir().join(format!("sup-envfile-cap-{}", std::process::id()));
        std::fs::write(&path, "A=".to_string() + &"x".repeat(MAX_BYTES as usize)).unwrap();
        let err = read(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            err,
            EnvFileError::Read(crate::files::ReadError::TooLarge { cap: MAX_BYTES })
        ));
        assert_eq!(err.to_string(), "larger than 1024 KiB, the most sup reads");
    }
}
