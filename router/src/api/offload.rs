//! CPU-heavy request work (chat templates, tokenization) off the async workers.

use crate::error::ApiError;

/// Prompts with less text than this are tokenized in place. Llama-3's tokenizer on this 2-core
/// machine (2026-11-26, English text): 64 KiB in 33 ms, 1 MiB in 0.76 s, so 4 KiB is ~2 ms,
/// about what a request's other work costs; below it a thread hand-off buys nothing and would
/// split requests of one tick (which share one Submit to the shard) for no gain.
pub const OFFLOAD_MIN_BYTES: usize = 4 << 10;

/// Runs `work` (tokenizing `text_bytes` of prompt text) on tokio's blocking pool when the text
/// is large. A prompt of megabytes (the body limit is 32 MiB) takes the tokenizer a second or
/// more; on an async worker that would stall every stream and request the worker serves (2
/// workers on a 2-core machine), as TGI's router avoids with its pool of tokenizer workers.
pub async fn tokenize_off_worker<T, F>(text_bytes: usize, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    if text_bytes < OFFLOAD_MIN_BYTES {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn large_work_runs_off_the_runtime_thread_small_work_in_place() {
        let caller = std::thread::current().id();
        let here = || Ok(std::thread::current().id());
        let big = tokenize_off_worker(OFFLOAD_MIN_BYTES, here)
            .await
            .expect("runs");
        assert_ne!(big, caller, "large work ran on the async thread");
        let small = tokenize_off_worker(OFFLOAD_MIN_BYTES - 1, here)
            .await
            .expect("runs");
        assert_eq!(small, caller, "small work was handed off");
        for bytes in [0, OFFLOAD_MIN_BYTES] {
            let err = tokenize_off_worker::<(), _>(bytes, || Err(ApiError::bad_request("no")))
                .await
                .expect_err("the work's error comes back");
            assert!(matches!(err, ApiError::BadRequest { .. }), "{err:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_task_is_an_internal_error() {
        let err = tokenize_off_worker::<(), _>(OFFLOAD_MIN_BYTES, || panic!("tokenizer bug"))
            .await
            .expect_err("a panic is an error");
        assert!(matches!(err, ApiError::Internal(_)), "{err:?}");
    }
}
