//! The Python `str`/`dict` methods HF chat templates call (`.strip()`, `.startswith()`,
//! `.split()`, `.get()`, `.items()`, ...), which jinja2 gets from Python and minijinja lacks.

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, State, Value};

/// minijinja's unknown-method hook.
pub fn call_method(
    _state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let arg = |i: usize| args.get(i).filter(|v| !v.is_none() && !v.is_undefined());
    let str_arg = |i: usize| -> Result<Option<&str>, Error> {
        arg(i)
            .map(|v| v.as_str().ok_or_else(|| bad_arg(method, "a string")))
            .transpose()
    };
    let value = match method {
        "strip" | "lstrip" | "rstrip" => Value::from(strip(s, method, str_arg(0)?)),
        "lower" => Value::from(s.to_lowercase()),
        "upper" => Value::from(s.to_uppercase()),
        "title" => Value::from(title(s)),
        "capitalize" => Value::from(capitalize(s)),
        "replace" => {
            let (Some(old), Some(new)) = (str_arg(0)?, str_arg(1)?) else {
                return Err(bad_arg(method, "two strings"));
            };
            match arg(2).and_then(Value::as_i64) {
                Some(n) if n >= 0 => {
                    Value::from(s.replacen(old, new, usize::try_from(n).unwrap_or(0)))
                }
                _ => Value::from(s.replace(old, new)),
            }
        }
        "split" => split(s, str_arg(0)?, arg(1).and_then(Value::as_i64)),
        "splitlines" => Value::from_iter(s.lines().map(Value::from)),
        "startswith" | "endswith" => affix(s, method, arg(0))?,
        "find" => Value::from(find(s, str_arg(0)?.unwrap_or_default())),
        "count" => Value::from(count(s, str_arg(0)?.unwrap_or_default())),
        "join" => join(s, arg(0))?,
        "isdigit" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
        "isspace" => Value::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
        "isalpha" => Value::from(!s.is_empty() && s.chars().all(char::is_alphabetic)),
        "isalnum" => Value::from(!s.is_empty() && s.chars().all(char::is_alphanumeric)),
        "islower" => {
            Value::from(s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase))
        }
        "isupper" => {
            Value::from(s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase))
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    };
    Ok(value)
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    let keys = || -> Result<Vec<Value>, Error> { Ok(map.try_iter()?.collect()) };
    match method {
        "get" => {
            let key = args.first().ok_or_else(|| bad_arg(method, "a key"))?;
            let found = map.get_item(key)?;
            Ok(if found.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                found
            })
        }
        "keys" => Ok(Value::from(keys()?)),
        "values" => keys()?
            .iter()
            .map(|k| map.get_item(k))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::from),
        "items" => keys()?
            .into_iter()
            .map(|k| Ok(Value::from(vec![k.clone(), map.get_item(&k)?])))
            .collect::<Result<Vec<_>, Error>>()
            .map(Value::from),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn bad_arg(method: &str, expected: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("str.{method}() expects {expected}"),
    )
}

fn strip<'a>(s: &'a str, method: &str, chars: Option<&str>) -> &'a str {
    let is_stripped = |c: char| chars.map_or(c.is_whitespace(), |set| set.contains(c));
    match method {
        "lstrip" => s.trim_start_matches(is_stripped),
        "rstrip" => s.trim_end_matches(is_stripped),
        _ => s.trim_matches(is_stripped),
    }
}

/// Python's `str.title`: a cased char after another cased char is lowered, else raised.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased && prev_cased {
            out.extend(c.to_lowercase());
        } else if cased {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// Python's `str.split`: no separator splits on whitespace runs and drops empty parts.
fn split(s: &str, sep: Option<&str>, maxsplit: Option<i64>) -> Value {
    let limit = maxsplit
        .and_then(|n| usize::try_from(n).ok())
        .map_or(usize::MAX, |n| n.saturating_add(1));
    match sep {
        Some(sep) if !sep.is_empty() => Value::from_iter(s.splitn(limit, sep).map(Value::from)),
        _ => {
            let mut parts = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if parts.len() + 1 == limit {
                    parts.push(Value::from(rest));
                    break;
                }
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                parts.push(Value::from(&rest[..end]));
                rest = rest[end..].trim_start();
            }
            Value::from(parts)
        }
    }
}

fn affix(s: &str, method: &str, arg: Option<&Value>) -> Result<Value, Error> {
    let test = |p: &str| {
        if method == "startswith" {
            s.starts_with(p)
        } else {
            s.ends_with(p)
        }
    };
    let arg = arg.ok_or_else(|| bad_arg(method, "a string or tuple"))?;
    if let Some(p) = arg.as_str() {
        return Ok(Value::from(test(p)));
    }
    // A tuple/list of candidates, as in Python.
    for candidate in arg.try_iter()? {
        if candidate.as_str().is_some_and(test) {
            return Ok(Value::from(true));
        }
    }
    Ok(Value::from(false))
}

/// Python's `str.find`: a char index, -1 when absent.
fn find(s: &str, sub: &str) -> i64 {
    s.find(sub).map_or(-1, |byte| {
        i64::try_from(s[..byte].chars().count()).unwrap_or(-1)
    })
}

fn count(s: &str, sub: &str) -> i64 {
    let n = if sub.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(sub).count()
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn join(sep: &str, arg: Option<&Value>) -> Result<Value, Error> {
    let items = arg.ok_or_else(|| bad_arg("join", "an iterable"))?;
    let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
    Ok(Value::from(parts.join(sep)))
}
