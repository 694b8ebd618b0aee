//! Typed access to config.json's top-level object: each reader names the
//! file and the key in its error, and records the value `check` shows.

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::Error;

/// Typed access to the top-level object with errors that name file and key.
pub(super) struct Keys<'a> {
    pub(super) object: &'a Map<String, Value>,
    pub(super) path: &'a Path,
    /// Every key asked for, with the value `check` shows for it.
    pub(super) effective: RefCell<Map<String, Value>>,
}

impl Keys<'_> {
    /// Records what `check` shows for `key` (replacing what the typed reader
    /// recorded, e.g. a resolved path instead of the text).
    pub(super) fn show(&self, key: &str, value: Value) {
        self.effective.borrow_mut().insert(key.to_owned(), value);
    }

    pub(super) fn error(&self, key: &str, why: &str) -> Error {
        Error::Config(format!("{}: key `{key}`: {why}", self.path.display()))
    }

    pub(super) fn required_string(&self, key: &str) -> Result<String, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Err(self.error(key, "missing (required)")),
            Some(Value::String(s)) if s.trim().is_empty() => Err(self.error(key, "must not be empty")),
            Some(Value::String(s)) => {
                self.show(key, Value::from(s.as_str()));
                Ok(s.clone())
            }
            Some(other) => Err(self.error(key, &format!("expected a string, found {}", kind(other)))),
        }
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, &format!("expected a string, found {}", kind(other)))),
        }
    }

    pub(super) fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.error(key, "expected an array of strings")),
            Some(other) => {
                Err(self.error(key, &format!("expected an array of strings, found {}", kind(other))))
            }
        }
    }

    pub(super) fn boolean(&self, key: &str, default: bool) -> Result<bool, Error> {
        let value = match self.object.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(self.error(key, &format!("expected true or false, found {}", kind(other))))
            }
        };
        self.show(key, Value::from(value));
        Ok(value)
    }

    pub(super) fn integer(&self, key: &str, default: u64, min: u64) -> Result<u64, Error> {
        self.show(key, Value::from(default));
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => match value.as_u64() {
                Some(n) if n >= min => {
                    self.show(key, Value::from(n));
                    Ok(n)
                }
                Some(_) => Err(self.error(key, &format!("must be at least {min}"))),
                None => {
                    Err(self.error(key, &format!("expected a non-negative integer, found {}", kind(value))))
                }
            },
        }
    }

    pub(super) fn integer_at_most(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, Error> {
        match self.integer(key, default, min)? {
            n if n > max => Err(self.error(key, &format!("must be at most {max}"))),
            n => Ok(n),
        }
    }

    pub(super) fn millis(&self, key: &str, default: u64, min: u64) -> Result<Duration, Error> {
        self.integer(key, default, min).map(Duration::from_millis)
    }

    pub(super) fn optional_millis(&self, key: &str) -> Result<Option<Duration>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.millis(key, 0, 1).map(Some),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().unwrap_or(0) < 0 => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
