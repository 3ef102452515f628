//! `--env-file`: the dotenv format, read at every spawn.
//!
//! Lines are `KEY=VALUE` or `export KEY=VALUE`; blank lines and lines
//! starting with `#` are skipped. Values may be single-quoted (taken
//! literally), double-quoted (`\n`, `\t`, `\"`, `\\` escapes) or bare (a
//! ` #` starts a comment; surrounding space is trimmed). No variable
//! expansion: what is written is what the worker gets.

use std::path::Path;

/// Read and parse a dotenv file. Errors name the line.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::command::os_error(&e))?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", i + 1))?;
        let key = key.trim();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(format!("line {}: `{key}` is not a variable name", i + 1));
        }
        let value = parse_value(value.trim()).map_err(|why| format!("line {}: {why}", i + 1))?;
        vars.push((key.to_string(), value));
    }
    Ok(vars)
}

fn parse_value(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("unterminated single quote")?;
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
        return Err("unterminated double quote".into());
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
        assert_eq!(parse("A=1\nnonsense\n").unwrap_err(), "line 2: expected KEY=VALUE");
        assert_eq!(parse("1A=x").unwrap_err(), "line 1: `1A` is not a variable name");
        assert_eq!(parse("A=\"open").unwrap_err(), "line 1: unterminated double quote");
    }
}
