//! Response ids and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// `<prefix>-<32 hex chars>`, like OpenAI's ids.
pub fn response_id(prefix: &str) -> String {
    let value: u128 = rand::rng().random();
    format!("{prefix}-{value:032x}")
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = response_id("chatcmpl");
        let b = response_id("chatcmpl");
        assert!(a.starts_with("chatcmpl-") && a.len() == "chatcmpl-".len() + 32);
        assert_ne!(a, b);
        assert!(now_unix() > 1_700_000_000);
    }
}
