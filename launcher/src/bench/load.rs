//! The requests of the run, from the dataset the options name.

use std::path::{Path, PathBuf};

use pagedserve_router::tokenize::ModelTokenizer;

use crate::bench::args::{BenchArgs, DatasetName};
use crate::bench::dataset::{BenchRequest, jsonl, random, sharegpt};
use crate::bench::error::{BenchError, Result};
use crate::bench::fetch;

/// The requests and a one-word description of their source (for the result JSON).
pub async fn requests(
    args: &BenchArgs,
    tokenizer: &ModelTokenizer,
) -> Result<(Vec<BenchRequest>, String)> {
    match args.dataset_name {
        DatasetName::Sharegpt => {
            let path = match &args.dataset_path {
                Some(p) => p.clone(),
                None => fetch::sharegpt().await?,
            };
            let reqs = from_sharegpt(args, &path, tokenizer)?;
            Ok((reqs, format!("sharegpt:{}", path.display())))
        }
        DatasetName::Random => {
            let spec = random::RandomSpec {
                input_len: args.random_input_len,
                output_len: args.random_output_len,
                range_ratio: args.random_range_ratio,
                num_prompts: args.num_prompts,
                seed: args.seed,
            };
            Ok((random::sample(&spec, tokenizer)?, "random".to_owned()))
        }
        DatasetName::Jsonl => {
            let path = args.dataset_path.clone().ok_or_else(|| {
                BenchError::Usage("--dataset-name jsonl needs --dataset-path".into())
            })?;
            let text = read_text(&path)?;
            let prompts = jsonl::parse(&text, &path, args.jsonl_output_len)?;
            let reqs = jsonl::sample(prompts, args.num_prompts, tokenizer)?;
            Ok((reqs, format!("jsonl:{}", path.display())))
        }
    }
}

fn from_sharegpt(
    args: &BenchArgs,
    path: &Path,
    tokenizer: &ModelTokenizer,
) -> Result<Vec<BenchRequest>> {
    let data = std::fs::read(path).map_err(|source| BenchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let records = sharegpt::read_records(&data, path)?;
    let note = if records.truncated {
        " (the file ends mid-record; that partial record was dropped)"
    } else {
        ""
    };
    tracing::info!(
        "ShareGPT {}: kept {} complete conversations{note}",
        path.display(),
        records.conversations.len()
    );
    let reqs = sharegpt::sample(
        &records.conversations,
        args.num_prompts,
        args.seed,
        args.sharegpt_output_len,
        tokenizer,
    )?;
    if reqs.len() < args.num_prompts {
        tracing::warn!(
            "only {} of {} requested prompts passed the length filter",
            reqs.len(),
            args.num_prompts
        );
    }
    Ok(reqs)
}

fn read_text(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.clone(),
        source,
    })
}
