//! The real `openai` Python client against a real pagedserve (default model, 2 shards).
//! Each test runs one script from `integration-tests/python/`; the scripts print what they
//! check and exit non-zero on the first failed check.

use pagedserve_integration_tests::{Server, ServerOptions, python};

fn server() -> &'static Server {
    Server::shared(|| ServerOptions::new("openai_client"))
}

#[test]
fn chat_completion_answers_with_usage() {
    python::run_script(server(), "chat.py", &[]);
}

#[test]
fn streaming_chat_with_include_usage() {
    python::run_script(server(), "stream.py", &[]);
}

#[test]
fn completions_endpoint() {
    python::run_script(server(), "completions.py", &[]);
}

#[test]
fn n_two_gives_two_choices() {
    python::run_script(server(), "n2.py", &[]);
}

#[test]
fn stop_strings_end_generation() {
    python::run_script(server(), "stop.py", &[]);
}

#[test]
fn same_seed_same_text() {
    python::run_script(server(), "seed.py", &[]);
}

#[test]
fn models_list_and_sdk_errors() {
    python::run_script(server(), "models_and_errors.py", &[]);
}
