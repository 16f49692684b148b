//! A JSONL file of prompts: one `{"prompt": "...", "output_len": N}` object per line
//! (`output_len` optional; blank lines skipped).

use std::path::Path;

use pagedserve_router::tokenize::ModelTokenizer;
use serde::Deserialize;

use super::BenchRequest;
use crate::bench::error::{BenchError, Result};

#[derive(Debug, Deserialize)]
struct Line {
    prompt: String,
    #[serde(default)]
    output_len: Option<usize>,
}

/// The prompts of `text` with their output lengths (`default_output_len` when a line has
/// none); the first `num_prompts` lines are used.
pub fn parse(text: &str, path: &Path, default_output_len: usize) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| BenchError::Dataset {
            path: path.to_owned(),
            message: format!("line {}: {e}", index + 1),
        })?;
        out.push((
            parsed.prompt,
            parsed.output_len.unwrap_or(default_output_len).max(1),
        ));
    }
    Ok(out)
}

pub fn sample(
    prompts: Vec<(String, usize)>,
    num_prompts: usize,
    tokenizer: &ModelTokenizer,
) -> Result<Vec<BenchRequest>> {
    prompts
        .into_iter()
        .take(num_prompts)
        .map(|(prompt, output_len)| {
            let prompt_len = tokenizer.encode(&prompt, true)?.len();
            Ok(BenchRequest {
                prompt,
                prompt_len,
                output_len,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_output_len() {
        let text = "{\"prompt\":\"a\",\"output_len\":7}\n\n{\"prompt\":\"b\",\"x\":1}\n";
        let got = parse(text, Path::new("p.jsonl"), 32).expect("valid");
        assert_eq!(got, vec![("a".to_owned(), 7), ("b".to_owned(), 32)]);
    }

    #[test]
    fn bad_line_names_its_number() {
        let err = parse(
            "{\"prompt\":\"a\"}\n{\"nope\":1}\n",
            Path::new("p.jsonl"),
            8,
        )
        .expect_err("missing prompt");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
