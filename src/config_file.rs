//! `--config FILE`: the YAML configuration file.
//!
//! Keys are the long flags with `_` for `-` (`graceful_timeout`), `bind` a
//! list (or one address), `command` a list of strings. Unknown keys, wrong
//! types and duplicate keys are errors with line and column. Booleans are
//! YAML 1.2 only (`true`/`false`: `yes` is not a boolean). Read with
//! serde-saphyr: safe Rust, maintained, budget limits against hostile
//! input (serde_yaml is archived and rests on transpiled C).
//!
//! Values stay raw strings here where the flags' are, so one validation in
//! `config.rs` serves flags, environment and file alike. Precedence is
//! flag > `SUP_*` environment > file > default. The file is read again by
//! the new image at every hot restart.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// The file's contents, as written.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, deserialize_with = "one_or_many")]
    pub bind: Option<Vec<String>>,
    pub workers: Option<u32>,
    pub command: Option<Vec<String>>,
    pub directory: Option<PathBuf>,
    pub stop_signal: Option<String>,
    pub graceful_timeout: Option<String>,
    pub stop_delay: Option<String>,
    pub balance: Option<String>,
    pub stall_timeout: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env_file: Option<PathBuf>,
    pub ready: Option<String>,
    pub boot_timeout: Option<String>,
    pub watchdog: Option<String>,
    pub dump_signal: Option<String>,
    pub dump_grace: Option<String>,
    pub max_surge: Option<u32>,
    pub max_memory: Option<String>,
    pub max_age: Option<String>,
    pub recycle_check: Option<String>,
    pub on_restart: Option<String>,
    pub hook_timeout: Option<String>,
    pub einhorn_ack: Option<bool>,
    pub notify_socket: Option<String>,
    pub hot_restart: Option<String>,
    pub control: Option<String>,
    pub control_token: Option<String>,
    pub log_file: Option<PathBuf>,
    pub worker_output: Option<String>,
    pub worker_output_timestamps: Option<bool>,
}

/// The largest configuration file sup reads (64 KiB: a real one is a few
/// hundred bytes; a bigger one is refused before it costs memory).
pub const MAX_BYTES: u64 = 64 << 10;

/// Why the file was refused; the caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Read(#[from] crate::files::ReadError),
    /// The parser's message, which names the line and column too
    /// (`line 2 column 1: unknown field `wrkers` …`).
    #[error("{message}")]
    Yaml {
        message: String,
        /// (line, column), from 1.
        at: Option<(u64, u64)>,
    },
}

/// Read and parse `path`; the error is one line naming the line and the
/// column.
pub fn read(path: &Path) -> Result<FileConfig, FileError> {
    let text = crate::files::read_capped(path, MAX_BYTES)?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<FileConfig, FileError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<Option<FileConfig>>(text, options)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            // The first line is the message with its position; a source
            // snippet follows, which does not fit one line.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid YAML");
            FileError::Yaml {
                message: first.strip_prefix("error: ").unwrap_or(first).to_string(),
                at: e.location().map(|l| (l.line(), l.column())),
            }
        })
}

/// `bind: 0.0.0.0:3000` and `bind: [0.0.0.0:3000, unix:/run/a.sock]` both.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address or a list of addresses")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(vec![v.to_string()]))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(Some(out))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        let c = parse(
            "bind: [0.0.0.0:3000, unix:/run/app.sock]\nworkers: 4\ndirectory: /var/www/app/current\nready: notify\n\
             command: [bundle, exec, puma, -C, config/puma.rb]\ngraceful_timeout: 30s\neinhorn_ack: true\n",
        )
        .unwrap();
        assert_eq!(c.bind.unwrap(), ["0.0.0.0:3000", "unix:/run/app.sock"]);
        assert_eq!(c.workers, Some(4));
        assert_eq!(c.command.unwrap(), ["bundle", "exec", "puma", "-C", "config/puma.rb"]);
        assert_eq!(c.graceful_timeout.as_deref(), Some("30s"));
        assert_eq!(c.einhorn_ack, Some(true));
    }

    #[test]
    fn one_bind_may_be_a_plain_string_and_numbers_read_as_durations() {
        let c = parse("bind: 127.0.0.1:0\ngraceful_timeout: 30\n").unwrap();
        assert_eq!(c.bind.unwrap(), ["127.0.0.1:0"]);
        assert_eq!(c.graceful_timeout.as_deref(), Some("30"));
        assert_eq!(parse("").unwrap(), FileConfig::default());
        assert_eq!(parse("# only a comment\n").unwrap(), FileConfig::default());
    }

    #[test]
    fn errors_name_the_key_line_and_column() {
        assert!(matches!(
            parse("workers: 2\nwrkers: 3\n").unwrap_err(),
            FileError::Yaml { at: Some((2, 1)), .. }
        ));
        let e = parse("workers: 2\nwrkers: 3\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2 column 1: unknown field `wrkers`"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = parse("einhorn_ack: yes\n").unwrap_err().to_string();
        assert!(e.starts_with("line 1 column 14: invalid boolean"), "{e}");
        let e = parse("workers: 2\nworkers: 3\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("duplicate"), "{e}");
        let e = parse("workers: three\n").unwrap_err().to_string();
        assert!(e.starts_with("line 1 column 10"), "{e}");
    }
}
