//! `--base-url` checked before anything is sent: a malformed one used to surface as a failed
//! model listing with the hint "pass --model", which sent users after the wrong flag.

use crate::bench::error::{BenchError, Result};

/// `raw` without trailing slashes, once it is an `http://host[:port][/prefix]` URL. Only
/// http: reqwest is built without TLS here, so an https URL could never connect.
pub fn parse(raw: &str) -> Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let bad = |reason: String| BenchError::BaseUrl {
        url: raw.to_owned(),
        reason,
    };
    // "localhost:8000" parses as scheme "localhost"; say what is missing instead.
    let url = reqwest::Url::parse(trimmed).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(bad("https is not supported (built without TLS)".into())),
        other => return Err(bad(format!("`{other}:` is not http:// (missing scheme?)"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment cannot be a base URL".into()));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_urls_and_drops_trailing_slashes() {
        assert_eq!(
            parse("http://127.0.0.1:8000/").expect("ok"),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            parse("http://gpu-box/prefix").expect("ok"),
            "http://gpu-box/prefix"
        );
    }

    #[test]
    fn malformed_urls_name_the_flag_not_the_model() {
        for raw in [
            "localhost:8000",
            "127.0.0.1:8000",
            "not a url",
            "",
            "ftp://host",
            "https://host",
            "http://",
            "http://host?x=1",
        ] {
            let err = parse(raw).expect_err(raw).to_string();
            assert!(err.contains("--base-url"), "{raw}: {err}");
            assert!(!err.contains("--model"), "{raw}: {err}");
        }
    }
}
